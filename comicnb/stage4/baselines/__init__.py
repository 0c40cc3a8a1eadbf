"""The baselines every Stage 4 model must beat, scored on every task set, per task, split and difficulty.

A Stage 4 result means something only against what needs no narrative understanding (architecture, "Stage 4 task
protocols"). Every baseline sees exactly the inputs a model sees, rebuilt from the same stored parts the sample names
(``comicnb.stage4.inputs``), and none reads the ground truth in ``built_from``:

- ``chance``: a uniform guess, one over the candidates (reading order: one over the permutations, pairwise 0.5);
- ``geometry`` (``baselines.geometry``): a tiny MLP fitted on the *training* samples of the task that sees
  composition alone; at chance on every candidate task when the samplers keep their rules;
- ``shape`` (``baselines.shape``): the same small model on each candidate's shape and size as its image embedding
  shows them (a linear probe) beside the slot's box; at chance on every candidate task when no negative differs from
  the answer in shape;
- ``colour_histogram``: the candidate whose crop's colour histogram is closest to the context's mean (crops from the
  page image, or its text-free twin where the candidate is shown text-free);
- ``stage3_cosine``: the candidate (re-fused from its stated parts through the frozen Stage 3 fusion) nearest the
  mean of the context's fused vectors; caption relevance queries with the caption as a text-only query;
- ``text_similarity``: the packaged MiniLM's cosine between a candidate's text and the context's texts (or the
  caption), for the tasks whose candidates differ in text;
- ``named_addressee`` (character coherence): a line that names its own speaker (``Bolt: Was that a raindrop,
  Bolt?``) is wrong; the candidate with fewer such lines wins. Neither context nor image: how much of the task a
  speaker's name in the line decides;
- ``yx_sort`` / ``yx_sort_direction``: reading order as the naive (top, left) sort, blind to the book's direction or
  right-to-left where the sample says ``rtl``.

``run_baselines(sets, view)`` gives every baseline's per-sample ``Result`` on every set it applies to;
``score_baselines`` their table (``comicnb.stage4.results.result_table``).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

import pandas as pd

from comicnb.stage4.baselines.geometry import GeometryBaseline
from comicnb.stage4.baselines.no_learning import (
    chance_baseline,
    colour_histogram_baseline,
    named_addressee_baseline,
    stage3_cosine_baseline,
    text_similarity_baseline,
    yx_sort_baseline,
)
from comicnb.stage4.baselines.shape import ShapeBaseline
from comicnb.stage4.results import READING_ORDER, Result, result_table
from comicnb.stage4.tasks import TEXT_TASKS, TaskSet
from comicnb.stage4.view import RunView

BASELINES = (
    "chance",
    "geometry",
    "shape",
    "colour_histogram",
    "stage3_cosine",
    "text_similarity",
    "named_addressee",
    "yx_sort",
    "yx_sort_direction",
)
# Caption relevance is not a text task (its candidates are whole panels), but its input is a text: whether the
# caption's words already find the next panel's dialogue is the shortcut this baseline measures there.
TEXT_SIMILARITY_TASKS = (*TEXT_TASKS, "caption_relevance")

LEARNED: dict[str, type[GeometryBaseline]] = {"geometry": GeometryBaseline, "shape": ShapeBaseline}
_NO_LEARNING: dict[str, Callable[[TaskSet, RunView], Result]] = {
    "chance": chance_baseline,
    "colour_histogram": colour_histogram_baseline,
    "stage3_cosine": stage3_cosine_baseline,
    "text_similarity": text_similarity_baseline,
    "named_addressee": named_addressee_baseline,
    "yx_sort": yx_sort_baseline,
    "yx_sort_direction": lambda task_set, view: yx_sort_baseline(task_set, view, use_direction=True),
}


def applies(baseline: str, task: str) -> bool:
    """Whether a baseline is scored on a task."""
    if baseline in ("chance", "geometry"):
        return True
    if baseline == "shape":
        return task != READING_ORDER
    if baseline in ("yx_sort", "yx_sort_direction"):
        return task == READING_ORDER
    if baseline == "text_similarity":
        return task in TEXT_SIMILARITY_TASKS
    if baseline == "named_addressee":
        return task == "character_coherence"
    return task != READING_ORDER


def run_baselines(
    task_sets: Iterable[TaskSet] | Mapping[Any, TaskSet],
    view: RunView,
    baselines: Sequence[str] = BASELINES,
    geometry: GeometryBaseline | None = None,
) -> list[Result]:
    """Every baseline on every non-training set it applies to; each learned one (LEARNED) is fitted once per task on
    that task's ``train`` set (``geometry`` sets their hyper-parameters) and skipped, with a warning, where there is
    none."""
    unknown = set(baselines) - set(BASELINES)
    if unknown:
        raise ValueError(f"unknown baselines {sorted(unknown)}: choose from {', '.join(BASELINES)}")
    sets = list(task_sets.values() if isinstance(task_sets, Mapping) else task_sets)
    train = {s.task: s for s in sets if s.split == "train"}
    fitted: dict[tuple[str, str], GeometryBaseline | None] = {}
    results = []
    for task_set in (s for s in sets if s.split != "train"):
        for name in (b for b in baselines if applies(b, task_set.task)):
            if name not in LEARNED:
                results.append(_NO_LEARNING[name](task_set, view))
                continue
            key = (name, task_set.task)
            if key not in fitted:
                fitted[key] = _fit_learned(name, train.get(task_set.task), task_set.task, view, geometry)
            if fitted[key] is not None:
                results.append(fitted[key].predict(task_set, view))
    return results


def _fit_learned(
    name: str, train: TaskSet | None, task: str, view: RunView, settings: GeometryBaseline | None
) -> GeometryBaseline | None:
    """A fresh learned baseline of ``settings``' hyper-parameters fitted on a task's training set; None (with a
    warning) without training samples."""
    if train is None or not len(train):
        view.warn_once(f"{name}:{task}", f"no {task} training samples: the {name} baseline is not scored")
        return None
    template = settings or GeometryBaseline()
    fresh = LEARNED[name](template.hidden, template.steps, template.lr, template.weight_decay, template.seed)
    return fresh.fit(train, view)


def score_baselines(
    task_sets: Iterable[TaskSet] | Mapping[Any, TaskSet],
    view: RunView,
    baselines: Sequence[str] = BASELINES,
    level: float = 0.95,
) -> pd.DataFrame:
    """Notebook 04's baselines table: every baseline on every validation and test set (``train`` sets only fit the
    geometry model) with Wilson ``level`` intervals, one row per method, task, split and difficulty."""
    return result_table(run_baselines(task_sets, view, baselines), "wilson", level)
