"""Checkpoint files shared by both stages: where they live, atomic writes, safe loads, RNG state, resume checks.

Loading imports neither a trainer nor Accelerate, so inference and search never pull in training code.
"""

from __future__ import annotations

import hashlib
import os
import random
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

LAST_NAME = "checkpoint.pt"  # the latest state of a run: what --resume continues from
BEST_NAME = "best_model.pt"  # the state with the best validation figure so far (the seed's name)
# The notebook that trains each stage, for messages that name the fix.
STAGE_NOTEBOOKS = {"stage3": "02", "stage4": "04"}


class CheckpointExistsError(FileExistsError):
    """A stage's checkpoint exists where a new training run would write: continue it or replace it, explicitly."""


def file_sha256(path: str | Path) -> str:
    """Hex SHA-256 of a file, read in 1 MiB blocks."""
    digest = hashlib.sha256()
    with open(path, "rb") as stream:
        for block in iter(lambda: stream.read(2**20), b""):
            digest.update(block)
    return digest.hexdigest()


@dataclass(frozen=True)
class StageCheckpoints:
    """The checkpoint files of one stage of a run: ``<run_dir>/<stage>/checkpoint.pt`` and ``best_model.pt``."""

    run_dir: Path
    stage: str

    @property
    def folder(self) -> Path:
        """The stage's checkpoint folder."""
        return Path(self.run_dir) / self.stage

    @property
    def last(self) -> Path:
        """The latest checkpoint (written after every epoch, and every ``checkpoint_every`` steps)."""
        return self.folder / LAST_NAME

    @property
    def best(self) -> Path:
        """The checkpoint with the best validation figure."""
        return self.folder / BEST_NAME

    @property
    def title(self) -> str:
        """The stage's name in prose: ``Stage 3`` for ``stage3``."""
        return self.stage.replace("stage", "Stage ", 1) if self.stage.startswith("stage") else self.stage

    @property
    def how_to_train(self) -> str:
        """What makes this stage's checkpoints: its notebook or its command."""
        notebook = STAGE_NOTEBOOKS.get(self.stage)
        command = f"`comicnb train {self.stage} --run-dir {self.run_dir}`"
        return f"run notebook {notebook} or {command}" if notebook else f"run {command}"

    def pick(self, which: str = "best") -> Path:
        """The ``best`` or ``last`` checkpoint path; ``best`` falls back to ``last`` for a run that has no best yet.

        A run with neither file is a FileNotFoundError naming what trains the stage.
        """
        if which not in ("best", "last"):
            raise ValueError(f"which checkpoint: 'best' or 'last', not {which!r}")
        path = self.best if which == "best" and self.best.is_file() else self.last
        if not path.is_file():
            raise FileNotFoundError(f"no {self.title} checkpoint in {self.folder}/: {self.how_to_train}")
        return path

    def prepare(self, resume: bool = False, overwrite: bool = False, *, remedy: str | None = None) -> bool:
        """Make the stage's files ready for a training run; True when it continues from the last checkpoint.

        With no checkpoint there the run starts fresh. An existing one is continued only with ``resume`` and
        replaced only with ``overwrite``, which first removes both the last and the best checkpoint, so a
        best_model.pt of an earlier run never survives into a new one; with neither it is a CheckpointExistsError
        (``remedy`` phrases the fix for the caller: flags on the command line, a parameter in a notebook).
        Idempotent, and safe to call from every process of a distributed run before training starts.
        """
        if resume and overwrite:
            raise ValueError("resume and overwrite exclude each other: continue the checkpoint, or replace it")
        existing = [path for path in (self.last, self.best) if path.is_file()]
        if not existing or (resume and self.last.is_file()):
            return bool(existing)
        if not overwrite:
            if remedy is None and resume:  # a best_model.pt without the last checkpoint: nothing to continue from
                remedy = f"it has no {LAST_NAME} to resume from; replace it with --overwrite"
            elif remedy is None:
                notebook = STAGE_NOTEBOOKS.get(self.stage, "?")
                remedy = (
                    f"continue it with --resume or replace it with --overwrite (notebook {notebook}: overwrite=True)"
                )
            names = " and ".join(path.name for path in existing)
            raise CheckpointExistsError(f"{self.folder}/ already holds {names} of an earlier run: {remedy}")
        for path in (self.last, self.best):
            for stale in (path, path.with_name(path.name + ".partial")):
                stale.unlink(missing_ok=True)  # another process of the same run may have removed it already
        return False


def save_checkpoint(checkpoint: Mapping[str, Any], path: str | Path) -> Path:
    """Write ``checkpoint`` to ``path`` atomically: a run killed while saving keeps the previous file whole."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(path.name + ".partial")
    torch.save(dict(checkpoint), partial)
    os.replace(partial, path)
    return path


def resume_conflicts(
    saved: Mapping[str, Mapping[str, Any]], current: Mapping[str, Mapping[str, Any]], ignore: Iterable[str] = ()
) -> list[str]:
    """``part.key`` of every setting that differs between a checkpoint's config and this run's (bar ``ignore``)."""
    ignore = set(ignore)
    return sorted(
        f"{part}.{key}"
        for part, config in current.items()
        for key in config
        if key not in ignore and saved.get(part, {}).get(key) != config[key]
    )


def rng_state() -> dict[str, Any]:
    """Every generator's state, in types that torch.load(weights_only=True) accepts."""
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    return dict(
        torch=torch.get_rng_state(),
        cuda=[s for s in torch.cuda.get_rng_state_all()],
        numpy=[kind, torch.from_numpy(keys.astype(np.int64)), pos, has_gauss, cached],
        python=random.getstate(),
    )


def set_rng_state(state: Mapping[str, Any]) -> None:
    """Restore the generators saved by rng_state."""
    torch.set_rng_state(state["torch"])
    if state["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
    kind, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((kind, keys.numpy().astype(np.uint32), pos, has_gauss, cached))
    random.setstate(tuple(item if not isinstance(item, list) else tuple(item) for item in state["python"]))


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """A Stage 3 checkpoint, loaded with weights_only=True (no pickled code runs)."""
    return torch.load(path, map_location=map_location, weights_only=True)
