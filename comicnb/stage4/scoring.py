"""Scoring trained Stage 4 models: load a checkpoint, predict on task sets, and one table for the main model and its
ablations. Inference only: nothing here imports the trainer or Accelerate's training loop.

``score_models(run_dir, split="test")`` loads each trained model's checkpoint (``best_model.pt`` by default: picked on
the validation sets, so only other splits score it fairly), feeds it the inputs it was trained on (an ablation's
modalities) and returns the result table (``comicnb.stage4.results.result_table``) with the model's name as
``method``, so it concatenates with the baselines' table of the same sets.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from torch import Tensor

from comicnb.checkpoint import load_checkpoint
from comicnb.stage3.fusion import MODALITIES
from comicnb.stage4.batches import BatchBuilder
from comicnb.stage4.config import ABLATIONS, MAIN, checkpoints
from comicnb.stage4.model import Stage4SequenceModel
from comicnb.stage4.results import READING_ORDER, Result, choice_result, order_result, result_table
from comicnb.stage4.task_sets import read_sets
from comicnb.stage4.tasks import TASKS, TaskSet
from comicnb.stage4.view import RunView, open_run


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


def trained_modalities(config: Mapping[str, Any]) -> tuple[str, ...]:
    """The stored parts a checkpoint's panels entered with (its ``train`` config's; all three by default)."""
    given = config.get("train", {}).get("modalities") or MODALITIES
    return tuple(m for m in MODALITIES if m in given)


def trained_balloons(config: Mapping[str, Any]) -> bool:
    """Whether a checkpoint's model reads balloon tokens (its ``model`` config's ``balloon_tokens``)."""
    return bool(config.get("model", {}).get("balloon_tokens", False))


def builder_for(view: RunView, config: Mapping[str, Any]) -> BatchBuilder:
    """The batch builder of the inputs a checkpoint's model was trained with: its modalities, and balloon tokens
    where it reads them."""
    return BatchBuilder(view, trained_modalities(config), trained_balloons(config))


def trained_models(run_dir: str | Path, which: str = "best") -> dict[str, Path]:
    """The run's trained Stage 4 models that exist: ``stage4`` and each ablation, by name -> checkpoint file
    (``which``: ``best`` or ``last``)."""
    if which not in ("best", "last"):
        raise ValueError(f"which must be 'best' or 'last', not {which!r}")
    names = {MAIN: checkpoints(run_dir), **{name: checkpoints(run_dir, name) for name in ABLATIONS}}
    found = {name: getattr(files, which) for name, files in names.items()}
    return {name: path for name, path in found.items() if path.is_file()}


@torch.no_grad()
def predict_sets(
    model: Stage4SequenceModel,
    task_sets: Mapping[Any, TaskSet] | Sequence[TaskSet],
    builder: BatchBuilder,
    batch_size: int = 64,
    name: str = MAIN,
) -> list[Result]:
    """The model's per-sample predictions and correctness on each (non-empty) task set, as results named ``name``."""
    sets = list(task_sets.values()) if isinstance(task_sets, Mapping) else list(task_sets)
    mode = model.training
    model.eval()
    device = next(model.parameters()).device
    results = []
    for task_set in sets:
        if not len(task_set):
            continue
        predictions: list[Any] = []
        for start in range(0, len(task_set), batch_size):
            batch = builder.collate(task_set, task_set.samples[start : start + batch_size])
            batch = {k: v.to(device) if isinstance(v, Tensor) else v for k, v in batch.items()}
            predictions.extend(model.predict(task_set.task, batch))
        made = order_result if task_set.task == READING_ORDER else choice_result
        results.append(made(name, task_set, predictions))
    model.train(mode)
    return results


@torch.no_grad()
def page_strips(model: Stage4SequenceModel, builder: BatchBuilder, pages: Sequence[int]) -> np.ndarray:
    """(P, d_model) strip embeddings of store pages, each page's panels in reading order (eval mode)."""
    panels, mask = builder.pages(pages)
    device = next(model.parameters()).device
    mode = model.training
    strips = model.eval().encode_strip(panels.to(device), mask.to(device)).float().cpu().numpy()
    model.train(mode)
    return strips


def evaluate(
    model: Stage4SequenceModel,
    task_sets: Mapping[Any, TaskSet] | Sequence[TaskSet],
    builder: BatchBuilder,
    batch_size: int = 64,
    level: float = 0.95,
    name: str = MAIN,
) -> pd.DataFrame:
    """The model's accuracy on each task set with Wilson ``level`` intervals: the result table, method ``name``.
    Reading order: exact page order as accuracy, plus pairwise accuracy and Kendall tau."""
    return result_table(predict_sets(model, task_sets, builder, batch_size, name), "wilson", level)


def model_results(
    run_dir: str | Path,
    split: str = "test",
    view: RunView | None = None,
    which: str = "best",
    models: Mapping[str, Path] | None = None,
    sets: Mapping[str, TaskSet] | None = None,
) -> list[Result]:
    """Per-sample results of every trained model of the run (or ``models``: name -> checkpoint) on the run's fixed
    ``split`` sets (or ``sets``, e.g. sets drawn without the ground truth), each result named after its model; none
    when there is no model. The run's sets must be the ones built from this store (TaskSetsMissingError names the
    command that builds them)."""
    models = trained_models(run_dir, which) if models is None else models
    if not models:
        return []
    view = view or open_run(run_dir)
    sets = read_sets(run_dir, view, TASKS, split) if sets is None else sets
    builders: dict[tuple[tuple[str, ...], bool], BatchBuilder] = {}
    results = []
    for name, path in models.items():
        model, config = load_stage4_model(path)
        key = (trained_modalities(config), trained_balloons(config))
        if key not in builders:
            builders[key] = builder_for(view, config)
        results.extend(predict_sets(model, sets, builders[key], name=name))
    return results


def score_models(
    run_dir: str | Path,
    split: str = "test",
    view: RunView | None = None,
    which: str = "best",
    models: Mapping[str, Path] | None = None,
    level: float = 0.95,
) -> pd.DataFrame:
    """``model_results`` in the result table, Wilson ``level`` intervals; an empty table when there is no model."""
    results = model_results(run_dir, split, view, which, models)
    return result_table(results, "wilson", level) if results else pd.DataFrame()
