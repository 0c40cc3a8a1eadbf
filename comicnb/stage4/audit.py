"""Auditing task sets: does anything a model can read off a candidate, besides the story, pick the answer?

Each check scores a set's candidates by one property and nothing else, as a baseline does, so its accuracy beside
chance says whether that property tells the answer apart. Three kinds (``CHECKS``):

- *readable*: what a model can get at through its inputs; each must stay at chance on every set it applies to:
  - ``shape``: the shape baseline (``comicnb.stage4.baselines.shape``): a crop's shape and size, probed from its
    image embedding, beside the slot's box;
  - ``text_length``: text tasks show the answer panel with empty balloons, whose size says how much text it held: a
    probe from that image to its text's length, beside each candidate text's length (learned like the shape baseline);
  - ``balloons``: the candidate text with as many text boxes as the answer panel shows empty balloons;
  - ``length_median``: the candidate text whose length is the candidates' median (a window centred on the answer's
    length would make it so);
  - ``shape_median``: the candidate whose probed shape is nearest the candidates' median (the same, for shapes);
  - ``answer_slot``: always the answer index the set uses most (the samplers deal it evenly);
  - ``vision_kind``: the candidate shown text-free (a twin drawn without its text) where others are shown in full
    (every sample shows all its candidates one way);
- *story*: what the story itself gives, recorded beside the baselines that read it, not required at chance:
  - ``word_overlap``: the candidate text sharing the most words with the caption (caption relevance) or with the
    context's text (text tasks), what text similarity reads semantically;
- *available*: properties a model cannot see but a sampler could have let correlate with the answer; they say what
  the sets leave to be read, and are recorded, not required at chance:
  - ``aspect_exact``: the candidate whose box's aspect ratio is nearest the slot's;
  - ``aspect_within`` / ``area_within``: the same, blind to differences within the tolerance of
    ``tasks.SHAPE_TOLERANCES`` the sample's negatives were drawn with;
  - ``same_page``: a candidate drawn on a page of the context (what a page's look, paper or palette, could give away).

``audit(sets, view, train)`` gives one row per set and check (method, task, split, accuracy, interval, chance, n);
``docs/stage4-tasks.md`` records the figures.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from comicnb.stage4.baselines.geometry import GeometryBaseline
from comicnb.stage4.baselines.shape import RidgeProbe, ShapeBaseline, box_shape, probed_shapes, split_images
from comicnb.stage4.inputs import candidate_parts, per_sample
from comicnb.stage4.results import READING_ORDER, Result, overall, picking_result, result_table
from comicnb.stage4.tasks import SHAPE_TOLERANCES, TEXT_TASKS, TaskSet, log_length
from comicnb.stage4.view import RunView

READABLE = ("shape", "text_length", "balloons", "length_median", "shape_median", "answer_slot", "vision_kind")
STORY = ("word_overlap",)
AVAILABLE = ("aspect_exact", "aspect_within", "area_within", "same_page")
CHECKS = (*READABLE, *STORY, *AVAILABLE)
TEXT_LENGTH_FEATURES = ("probe_log_length", "has_image", "candidate_log_length", "diff", "abs_diff")


def text_length_probe(view: RunView) -> RidgeProbe | None:
    """The view's probe from a text-free image embedding to its panel's log text length, fitted on the training
    panels' twins once; None for a store without twins."""
    if "text_length_probe" not in view.memo:
        vectors, ids = split_images(view, "train", vision="text_free")
        texts = view.panels.set_index("panel_id").text.loc[ids]
        targets = np.array([[log_length(t)] for t in texts])
        view.memo["text_length_probe"] = RidgeProbe().fit(vectors, targets) if len(ids) > 1 else None
    return view.memo["text_length_probe"]


@dataclass
class TextLengthBaseline(GeometryBaseline):
    """The geometry baseline's model on TEXT_LENGTH_FEATURES: the length the answer panel's text-free image suggests
    (its empty balloons), each candidate text's length, and their difference (text tasks)."""

    name = "text_length"
    FEATURES = TEXT_LENGTH_FEATURES

    def candidate_features(self, task_set: TaskSet, view: RunView) -> list[np.ndarray]:
        """Per sample, (C, len(TEXT_LENGTH_FEATURES))."""
        flat = [c for s in task_set.samples for c in s.candidates]
        parts, mask = candidate_parts(flat, view, task_set.texts)
        probe = text_length_probe(view)
        seen = mask[:, 0] & (probe is not None)
        probed = np.where(seen, probe.predict(parts[:, 0])[:, 0] if probe is not None else 0.0, 0.0)
        lengths = np.array([log_length(candidate_text(c, view)) for c in flat])
        diff = np.where(seen, probed - lengths, 0.0)
        rows = np.stack([probed, seen.astype(float), lengths, diff, np.abs(diff)], axis=1)
        return per_sample(rows, task_set.samples)


def candidate_text(candidate: Any, view: RunView) -> str:
    """A candidate's text as words ("" without one)."""
    if candidate.text is not None:
        return candidate.text
    return view.text(candidate.text_from) if candidate.text_from is not None else ""


# ------------------------------------------------------------------------------------------------- the pickers


def _scores(task_set: TaskSet, score: Callable[[Any], np.ndarray]) -> list[np.ndarray]:
    """Per sample, the property's score of each candidate."""
    return [np.asarray(score(s), dtype=np.float64) for s in task_set.samples]


def _box_distance(view: RunView, sample: Any, column: int, within: bool) -> np.ndarray:
    """Minus the distance of each candidate's own box to the slot's in log aspect (0) or log area (1); ``within``:
    differences within the sample's shape tolerance counted as none."""
    slot = sample.candidates[sample.answer].composition_from
    if slot is None:
        return np.zeros(len(sample.candidates))
    level = sample.built_from.get("shape_tolerance")
    tolerance = SHAPE_TOLERANCES[level][("log_aspect", "log_area")[column]] if within and level is not None else 0.0
    own = box_shape(view, [c.panel_id for c in sample.candidates])[:, column]
    return -np.maximum(np.abs(own - box_shape(view, [slot])[0, column]) - tolerance, 0.0)


def _balloons(view: RunView, sample: Any) -> np.ndarray:
    """1 for a candidate whose text comes from a panel with as many text boxes as the answer panel, else 0; all 0
    where the counts are unknown or the candidate texts are in no panel."""
    boxes = view.panels.set_index("panel_id").n_boxes
    shown = boxes.get(sample.candidates[sample.answer].panel_id, -1)
    sources = [c.text_from for c in sample.candidates]
    if shown < 0 or any(s is None for s in sources):
        return np.zeros(len(sources))
    return np.array([float(boxes.get(s, -1) == shown) for s in sources])


def _median_closeness(values: np.ndarray) -> np.ndarray:
    """Minus each row's distance to the column-wise median of (C, Q) values, summed over the columns."""
    values = np.asarray(values, dtype=np.float64).reshape(len(values), -1)
    return -np.abs(values - np.median(values, axis=0)).sum(axis=1)


def _probed_shapes(view: RunView, task_set: TaskSet) -> list[np.ndarray]:
    """Per sample, (C, 2) the probed log aspect ratio and log area of each candidate's image as it is shown."""
    return per_sample(probed_shapes(task_set, view)[0], task_set.samples)


def _same_page(view: RunView, sample: Any) -> np.ndarray:
    """1 for a candidate whose image is drawn on a page of the context, else 0."""
    pages = set(view.locate(sample.context)[0].tolist()) if sample.context else set()
    return np.array([float(int(view.locate([c.panel_id])[0][0]) in pages) for c in sample.candidates])


def _vision_kind(sample: Any) -> np.ndarray:
    """1 for a candidate shown text-free, else 0."""
    return np.array([float(c.vision == "text_free") for c in sample.candidates])


def words(text: str) -> set[str]:
    """The lower-cased words of a text, punctuation stripped."""
    return {w.strip(".,;:!?\"'()-").lower() for w in str(text).split()} - {""}


def _word_overlap(view: RunView, sample: Any) -> np.ndarray:
    """Each candidate text's share of words found in the caption (caption relevance) or the context's text."""
    given = words(sample.query_text) if sample.query_text else set()
    for pid in sample.context if not sample.query_text else ():
        given |= words(view.text(pid))
    shares = []
    for candidate in sample.candidates:
        own = words(candidate_text(candidate, view))
        shares.append(len(own & given) / len(own) if own else 0.0)
    return np.array(shares)


def _answer_slot(task_set: TaskSet) -> list[np.ndarray]:
    """Each sample's candidates scored by how often the set puts its answer at their index."""
    counts = np.bincount([s.answer for s in task_set.samples], minlength=1)
    return [np.array([counts[i] if i < len(counts) else 0 for i in range(len(s.candidates))]) for s in task_set.samples]


def pickers(task_set: TaskSet, view: RunView) -> list[Result]:
    """The no-learning checks of one candidate set (see the module), each a Result named after its check."""
    checks: dict[str, list[np.ndarray]] = {
        "answer_slot": _answer_slot(task_set),
        "vision_kind": _scores(task_set, _vision_kind),
    }
    if task_set.task in TEXT_TASKS or task_set.task == "caption_relevance":
        checks["word_overlap"] = _scores(task_set, lambda s: _word_overlap(view, s))
    if task_set.task in TEXT_TASKS:
        checks["balloons"] = _scores(task_set, lambda s: _balloons(view, s))
        lengths = lambda s: np.array([log_length(candidate_text(c, view)) for c in s.candidates])  # noqa: E731
        checks["length_median"] = _scores(task_set, lambda s: _median_closeness(lengths(s)))
    else:
        checks["shape_median"] = [_median_closeness(p) for p in _probed_shapes(view, task_set)]
        checks["aspect_exact"] = _scores(task_set, lambda s: _box_distance(view, s, 0, within=False))
        checks["aspect_within"] = _scores(task_set, lambda s: _box_distance(view, s, 0, within=True))
        checks["area_within"] = _scores(task_set, lambda s: _box_distance(view, s, 1, within=True))
        checks["same_page"] = _scores(task_set, lambda s: _same_page(view, s))
    return [picking_result(name, task_set, scores) for name, scores in checks.items()]


def audit(
    task_sets: Iterable[TaskSet] | Mapping[Any, TaskSet], view: RunView, train: Sequence[TaskSet] = ()
) -> pd.DataFrame:
    """One row per set, split and check (``overall`` rows of the result table: accuracy with its Wilson interval,
    chance, n), plus ``kind`` (readable, story or available). The learned checks are fitted on ``train`` (one
    training set per task) and left out where a task has none."""
    sets = [s for s in (task_sets.values() if isinstance(task_sets, Mapping) else task_sets) if s.task != READING_ORDER]
    fitted = {t.task: t for t in train if len(t)}
    results = []
    for task_set in (s for s in sets if len(s)):
        results += pickers(task_set, view)
        learned = [ShapeBaseline] + ([TextLengthBaseline] if task_set.task in TEXT_TASKS else [])
        if task_set.task in fitted:
            results += [kind().fit(fitted[task_set.task], view).predict(task_set, view) for kind in learned]
    table = overall(result_table(results, "wilson"))
    kinds = {**dict.fromkeys(READABLE, "readable"), **dict.fromkeys(STORY, "story")}
    return table.assign(kind=table.method.map(kinds).fillna("available"))


def leaks(table: pd.DataFrame) -> pd.DataFrame:
    """The readable checks of an audit whose interval clears chance: properties a model could read the answer from."""
    readable = table[table.kind == "readable"]
    return readable[readable.low > readable.chance]
