"""The seed's ``train_stage4.py`` command line, mapped onto ``comicnb train stage4``: its flags, and its stores.

The seed had one zarr store and one metadata file per split; comicnb's store holds every split (its metadata's
``split`` column) and carries its page metadata, so the seed's store flags are accepted and checked against the one
store (``seed_store``).
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from comicnb.settings import add_flag, add_setting_flags, defaults, given_flags
from comicnb.stage4.config import SEED_TASK_WEIGHTS, Stage4ModelConfig, Stage4TrainConfig
from comicnb.store.schema import METADATA, STORE_NAME

# The seed's train_stage4.py flags that set a Stage 4 setting, with the setting each one sets.
SEED_SETTINGS = {
    "d_model": ("d_model", int),
    "nhead": ("nhead", int),
    "num_layers": ("num_layers", int),
    "dim_feedforward": ("dim_feedforward", int),
    "batch_size": ("batch_size", int),
    "epochs": ("epochs", int),
    "lr": ("lr", float),
    "weight_decay": ("weight_decay", float),
    "contrastive_weight": ("strip_weight", float),
}
WANDB_MESSAGE = (
    "--use_wandb: wandb is not installed in comicnb's environment and nothing is sent anywhere; every task loss per "
    "step and every validation accuracy per epoch go to the checkpoint's history (<run>/stage4/checkpoint.pt) and "
    "the table printed at the end"
)
STORE_FLAGS = {
    "train_embeddings": "the embedding store (panel_embeddings.zarr; it holds every split) (default: --store)",
    "train_metadata": "accepted and checked: must be the store's own metadata.json",
    "val_embeddings": "accepted and checked: must be the same store (the split comes from its metadata)",
    "val_metadata": "accepted and checked: must be the store's own metadata.json",
}


def add_seed_arguments(parser: argparse.ArgumentParser) -> None:
    """The seed's flags (underscore spelling, as in the seed; the dashed spelling works too)."""
    seed = parser.add_argument_group(
        "the seed's train_stage4.py flags",
        "underscore spelling as in the seed (the dashed spelling works too); the flags win over the params file",
    )
    add_setting_flags(seed, SEED_SETTINGS, {**defaults(Stage4ModelConfig), **defaults(Stage4TrainConfig)})
    add_flag(
        seed,
        "reading_order_weight",
        type=float,
        default=None,
        help=f"sets task_weights.reading_order (default: the params file's, else "
        f"{SEED_TASK_WEIGHTS['reading_order']}, the seed's task table)",
    )
    for flag, text in STORE_FLAGS.items():
        add_flag(seed, flag, default=None, help=text)
    add_flag(seed, "output_dir", default="outputs", help="folder of --run_name's run folder")
    add_flag(seed, "run_name", default=None, help="run folder OUTPUT_DIR/RUN_NAME, where --run-dir is not given")
    add_flag(
        seed,
        "use_wandb",
        action="store_true",
        help="accepted for the seed's sake: wandb is not installed; says what is logged instead",
    )


def seed_overrides(args: argparse.Namespace, params_weights: dict[str, float] | None = None) -> dict[str, Any]:
    """The settings the seed's Stage 4 flags give on the command line; ``--reading_order_weight`` changes that one
    weight of the params file's ``task_weights`` (``params_weights``), not the others."""
    settings = given_flags(args, SEED_SETTINGS)
    if args.reading_order_weight is not None:
        settings["task_weights"] = {**(params_weights or {}), "reading_order": args.reading_order_weight}
    return settings


def seed_store(args: argparse.Namespace, run_dir: Path, params_store: str | None) -> Path | None:
    """The embedding store the seed's flags name (None: the run's own), checked against them.

    ``--val_embeddings`` must name the same store as ``--train_embeddings``, and either metadata flag must be that
    store's metadata file (or a byte-identical copy).
    """
    given = [Path(p) for p in (args.store, args.train_embeddings) if p]
    if len({p.resolve() for p in given}) > 1:
        raise ValueError(f"--store {args.store} and --train_embeddings {args.train_embeddings} name different stores")
    store = given[0] if given else (Path(params_store) if params_store else None)
    where = store or run_dir / STORE_NAME
    if args.val_embeddings and Path(args.val_embeddings).resolve() != where.resolve():
        raise ValueError(
            f"--val_embeddings {args.val_embeddings} is not the training store {where}: one comicnb store holds "
            f"every split (its metadata's split column), so give the same store or leave the flag out"
        )
    metadata = where / METADATA
    for flag in ("train_metadata", "val_metadata"):
        path = getattr(args, flag)
        if not path:
            continue
        if not Path(path).is_file():
            raise FileNotFoundError(f"--{flag} {path} does not exist")
        if not metadata.is_file():
            raise FileNotFoundError(f"no {METADATA} in the store {where}: make the store first (`comicnb embed`)")
        if Path(path).resolve() != metadata.resolve() and Path(path).read_bytes() != metadata.read_bytes():
            raise ValueError(
                f"--{flag} {path} is not the store's metadata ({metadata}): the store carries its own page "
                f"metadata for every split; give that file or leave the flag out"
            )
    return store
