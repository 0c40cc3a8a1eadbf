"""Settings shared by both stages: config dataclasses read from one flat mapping, and the seed's command-line flags.

A stage's settings are the fields of its config dataclasses, each with its one default there; a notebook's parameters
and a ``--params`` file are one flat mapping, split by field name (``pick``), and a key no config has is an error that
names the closest known keys (``check_known``). The seed's command lines spell their flags with underscores; comicnb
accepts both spellings (``add_flag``).
"""

from __future__ import annotations

import argparse
import difflib
from collections.abc import Iterable, Mapping
from dataclasses import asdict, fields
from typing import Any, TypeVar

Config = TypeVar("Config")


class UnknownSettingError(ValueError):
    """A settings key that no config of the stage has."""


def names(config: type) -> tuple[str, ...]:
    """The field names of a config dataclass."""
    return tuple(f.name for f in fields(config))


def defaults(config: type) -> dict[str, Any]:
    """A config dataclass's fields with their defaults (a default factory called)."""
    return asdict(config())


def closest(name: str, known: Iterable[str], n: int = 3, cutoff: float = 0.6) -> list[str]:
    """The known names closest to a misspelt one, closest first (difflib's ratio, at least ``cutoff``)."""
    return difflib.get_close_matches(str(name), sorted(known), n=n, cutoff=cutoff)


def did_you_mean(what: str, unknown: Iterable[str], known: Iterable[str], where: str) -> str:
    """One line naming each unknown key with its closest known ones: ``unknown Stage 4 setting 'lr_rate' (did you
    mean 'lr'?); <where>``."""
    unknown, parts = list(unknown), []
    for key in unknown:
        close = closest(key, known)
        hint = f" (did you mean {' or '.join(repr(c) for c in close)}?)" if close else ""
        parts.append(f"{key!r}{hint}")
    plural = "s" if len(unknown) > 1 else ""
    return f"unknown {what}{plural} {', '.join(parts)}; {where}"


def check_known(settings: Mapping[str, Any], known: Iterable[str], what: str, where: str) -> None:
    """UnknownSettingError naming every key of ``settings`` that is not ``known``, at once."""
    unknown = sorted(set(settings) - set(known))
    if unknown:
        raise UnknownSettingError(did_you_mean(what, unknown, known, where))


def settings_from(namespace: Mapping[str, Any], known: Iterable[str]) -> dict[str, Any]:
    """The settings among a namespace's names (a notebook's parameters: ``settings_from(globals(), KEYS)``)."""
    known = set(known)
    return {key: value for key, value in namespace.items() if key in known}


def pick(config: type[Config], settings: Mapping[str, Any], **fixed: Any) -> Config:
    """``config`` built from the settings that name its fields (and ``fixed`` values, which win)."""
    return config(**{**{k: settings[k] for k in names(config) if k in settings}, **fixed})


def config_dicts(**configs: Any) -> dict[str, dict]:
    """The ``config`` entry of a checkpoint: each config as a plain dict, under its name."""
    return {name: asdict(config) for name, config in configs.items()}


def add_flag(group: argparse._ActionsContainer, name: str, **options: Any) -> argparse.Action:
    """``--name_with_underscores`` as the seed spells it, and ``--name-with-dashes``, both into ``dest=name``."""
    spellings = dict.fromkeys((f"--{name}", f"--{name.replace('_', '-')}"))  # --lr has one spelling
    return group.add_argument(*spellings, dest=name, **options)


def add_setting_flags(
    group: argparse._ActionsContainer, flags: Mapping[str, tuple[str, type]], default_of: Mapping[str, Any]
) -> None:
    """One flag per entry of ``flags`` (flag -> (the setting it sets, its type)), default None (not given), its help
    naming the setting and its default: the params file's, else ``default_of[setting]`` (the config's)."""
    for flag, (setting, kind) in flags.items():
        help_text = f"sets {setting} (default: the params file's, else {default_of.get(setting)})"
        add_flag(group, flag, type=kind, default=None, help=help_text)


def given_flags(args: argparse.Namespace, flags: Mapping[str, tuple[str, type]]) -> dict[str, Any]:
    """The settings the flags of ``flags`` set on the command line (those given)."""
    return {setting: getattr(args, flag) for flag, (setting, _) in flags.items() if getattr(args, flag) is not None}
