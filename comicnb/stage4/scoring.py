"""Scoring trained Stage 4 models on a run's fixed task sets: the main model and its ablations, one table.

``score_models(run_dir, split="test")`` loads each trained model's checkpoint (``best_model.pt`` by default: picked
on the validation sets, so only other splits score it fairly), feeds it the inputs it was trained on (an ablation's
modalities) and returns the baselines' table (``baselines.SUMMARY_COLUMNS``) with the model's name as ``baseline``,
so it concatenates with ``baselines.score_baselines``' table of the same sets.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pandas as pd

from comicnb.checkpoint import load_checkpoint
from comicnb.stage3.fusion import MODALITIES
from comicnb.stage4.baselines import BaselineResult, summarize
from comicnb.stage4.batches import SampleEncoder
from comicnb.stage4.config import ABLATIONS
from comicnb.stage4.model import Stage4SequenceModel
from comicnb.stage4.samplers import load_context
from comicnb.stage4.tasks import TASKS
from comicnb.stage4.trainer import checkpoints, predict_sets, read_val_sets

MAIN = "stage4"  # the main model's name in tables; an ablation's is its name in config.ABLATIONS


def load_stage4_model(path: str | Path) -> tuple[Stage4SequenceModel, dict[str, Any]]:
    """A Stage 4 model from a checkpoint, in eval mode, and the checkpoint's config (``model`` and ``train``)."""
    state = load_checkpoint(path)
    config = state.get("config") or {}
    if "model" not in config or "model_state_dict" not in state:
        raise ValueError(f"{path} is not a Stage 4 checkpoint (no model config or weights)")
    model = Stage4SequenceModel.from_config(config["model"])
    try:
        model.load_state_dict(state["model_state_dict"])
    except RuntimeError as err:
        raise ValueError(
            f"{path} was written by another version of the Stage 4 model; train it again "
            f"(`python -m comicnb train stage4 ... --overwrite`): {str(err).splitlines()[0]}"
        ) from err
    return model.eval(), config


def trained_models(run_dir: str | Path, which: str = "best") -> dict[str, Path]:
    """The run's trained Stage 4 models that exist: ``stage4`` and each ablation, by name -> checkpoint file
    (``which``: ``best`` or ``last``)."""
    if which not in ("best", "last"):
        raise ValueError(f"which must be 'best' or 'last', not {which!r}")
    names = {MAIN: checkpoints(run_dir), **{name: checkpoints(run_dir, name) for name in ABLATIONS}}
    found = {name: getattr(files, which) for name, files in names.items()}
    return {name: path for name, path in found.items() if path.is_file()}


def model_results(
    run_dir: str | Path,
    split: str = "test",
    store: str | Path | None = None,
    which: str = "best",
    models: dict[str, Path] | None = None,
) -> list[BaselineResult]:
    """Per-sample results of every trained model of the run (or ``models``: name -> checkpoint) on the run's fixed
    ``split`` sets, each result named after its model; none when there is no model. The sets must be the ones built
    from this store (TaskSetsMissingError names the command that builds them)."""
    models = trained_models(run_dir, which) if models is None else models
    if not models:
        return []
    ctx = load_context(run_dir, store)
    sets = read_val_sets(run_dir, ctx, TASKS, split)
    encoders: dict[tuple[str, ...], SampleEncoder] = {}
    results = []
    for name, path in models.items():
        model, config = load_stage4_model(path)
        modalities = tuple(config.get("train", {}).get("modalities") or MODALITIES)
        if modalities not in encoders:
            encoders[modalities] = SampleEncoder(run_dir, store, modalities=modalities)
        results.extend(predict_sets(model, sets, encoders[modalities], name=name))
    return results


def score_models(
    run_dir: str | Path,
    split: str = "test",
    store: str | Path | None = None,
    which: str = "best",
    models: dict[str, Path] | None = None,
    level: float = 0.95,
) -> pd.DataFrame:
    """``model_results`` summarised: the baselines' table, one row per model, task and difficulty, with Wilson
    ``level`` intervals; an empty table when there is no model."""
    results = model_results(run_dir, split, store, which, models)
    return summarize(results, level) if results else pd.DataFrame()
