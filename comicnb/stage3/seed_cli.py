"""The seed's ``train_stage3.py`` command line, mapped onto comicnb: flags, label files and run folder.

``python -m comicnb train stage3 --data_root D --train_pss_labels T --val_pss_labels V [...]`` reads the corpus the
way notebook 01 does, takes the split from the two label files (a page's split is the file that labels it), writes
the run folder ``<output_dir>/<run_name>/`` with notebook 01's artefacts, then trains as notebook 02 does.
"""

from __future__ import annotations

import argparse
import json
import warnings
from collections.abc import Mapping
from datetime import datetime
from pathlib import Path
from typing import Any

from comicnb.corpus.reader import load_corpus, read_labels
from comicnb.corpus.tables import save_corpus
from comicnb.settings import add_flag, add_setting_flags, defaults, given_flags
from comicnb.stage3.config import PanelModelConfig, TrainConfig

# The seed's model and training flags, with the comicnb setting each one sets.
SEED_SETTINGS = {
    "visual_backbone": ("visual_backbone", str),
    "visual_fusion": ("visual_fusion", str),
    "feature_dim": ("feature_dim", int),
    "batch_size": ("batch_size", int),
    "epochs": ("epochs", int),
    "lr": ("lr", float),
}
WANDB_MESSAGE = (
    "--use_wandb: wandb is not installed in comicnb's environment and nothing is sent anywhere; every "
    "loss term per step and every validation figure per epoch go to the checkpoint's history "
    "(<run>/stage3/checkpoint.pt) and the table printed at the end, and notebook 02 plots them"
)


def add_seed_arguments(parser: argparse.ArgumentParser) -> None:
    """The seed's flags (underscore spelling, as in the seed; the dashed spelling works too)."""
    seed = parser.add_argument_group("the seed's train_stage3.py flags")
    add_setting_flags(seed, SEED_SETTINGS, {**defaults(PanelModelConfig), **defaults(TrainConfig)})
    add_flag(
        seed,
        "data_root",
        default=None,
        help="corpus folder (book/page.jpg + page.json): read it into a new run folder first",
    )
    add_flag(
        seed,
        "train_pss_labels",
        default=None,
        help="PSS labels of the training pages (with --data_root; default <data_root>/pss_labels.json split by book)",
    )
    add_flag(seed, "val_pss_labels", default=None, help="PSS labels of the validation pages (with --train_pss_labels)")
    add_flag(seed, "output_dir", default="outputs", help="folder the run folder is made in (with --data_root)")
    add_flag(seed, "run_name", default=None, help="run folder name under --output_dir (default stage3-<time>)")
    add_flag(
        seed,
        "use_wandb",
        action="store_true",
        help="accepted for the seed's sake: wandb is not installed; says what is logged instead",
    )


def seed_overrides(args: argparse.Namespace) -> dict[str, Any]:
    """The settings the seed's flags give on the command line."""
    return given_flags(args, SEED_SETTINGS)


def split_labels(train: Mapping, val: Mapping) -> tuple[dict, dict[tuple[str, str], str]]:
    """Merged labels, and the split of each labelled page from the file that labels it (train wins a tie)."""
    split = {**{page: "val" for page in val}, **{page: "train" for page in train}}
    shared = {book for book, _ in train} & {book for book, _ in val}
    if shared:
        warnings.warn(
            f"{len(shared)} books have pages in both label files (e.g. {sorted(shared)[:3]}): validation "
            f"then measures pages of books seen in training, not unseen books",
            stacklevel=2,
        )
    return {**val, **train}, split


def prepare_run(args: argparse.Namespace, settings: Mapping[str, Any]) -> Path:
    """Read ``--data_root`` into ``<output_dir>/<run_name>/`` as notebook 01 would; returns the run folder."""
    root = Path(args.data_root)
    if not root.is_dir():
        raise FileNotFoundError(f"--data_root {root} is not a folder")
    run_dir = Path(args.output_dir) / (args.run_name or f"stage3-{datetime.now():%Y%m%d-%H%M%S}")
    options = dict(max_panels=settings.get("max_panels", 12))
    if args.train_pss_labels:
        if not args.val_pss_labels:
            raise ValueError("--train_pss_labels needs --val_pss_labels too (or give neither and split by book)")
        labels, split = split_labels(read_labels(args.train_pss_labels), read_labels(args.val_pss_labels))
        corpus = load_corpus(root, labels, **options)
        corpus.pages["split"] = [split[(b, p)] for b, p in zip(corpus.pages.book_id, corpus.pages.page_name)]
        corpus.options.update(train_pss_labels=str(args.train_pss_labels), val_pss_labels=str(args.val_pss_labels))
    else:
        corpus = load_corpus(root, **options)
    save_corpus(corpus, run_dir)
    splits = json.dumps(corpus.pages.split.value_counts().to_dict())
    print(
        f"[comicnb] read {len(corpus.pages)} narrative pages ({splits}), {len(corpus.problems)} problem rows "
        f"-> {run_dir}/"
    )
    return run_dir
