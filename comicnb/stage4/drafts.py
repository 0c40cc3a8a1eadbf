"""From drawn candidates to task samples: drafts, balanced answer slots, seeded subsets, new texts numbered; and the
per-panel columns, truth checks and text rules the samplers share."""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from comicnb.stage4.negatives import SCENE_COLUMNS
from comicnb.stage4.tasks import CANDIDATES, Candidate, TaskSample
from comicnb.stage4.view import RunView

TRUTH_COLUMNS = {
    "character_coherence": ("lines",),
    "visual_closure": ("beat", "action_step"),
    "caption_relevance": ("description", "caption_unique"),
}
NEEDS_SCENE = ("visual_closure", "caption_relevance")  # also need scene_run or scene
PENDING_ROW = -1  # text_row of a draft's new text, numbered when the set is final (number_texts)


class TaskUnavailable(RuntimeError):
    """A task this corpus cannot give (no ground truth, for the tasks that need it); the message says why."""


class TruthColumnsMissing(ValueError):
    """The corpus has ground truth but panel_truth lacks a column a task needs: the truth reader is out of date."""


@dataclass
class Draft:
    """A sample before its answer index is dealt: the answer, the negatives and the other TaskSample fields."""

    answer: Candidate
    negatives: list[Candidate]
    fields: dict[str, Any]


def subsample(items: Sequence[Any], rng: np.random.Generator, limit: int | None) -> list[Any]:
    """At most ``limit`` of the items, a seeded subset kept in its original order."""
    if limit is None or len(items) <= limit:
        return list(items)
    return [items[i] for i in np.sort(rng.choice(len(items), size=limit, replace=False))]


def balanced_slots(count: int, width: int, rng: np.random.Generator) -> np.ndarray:
    """Answer indices for ``count`` samples of ``width`` candidates: dealt round-robin from a random start over a
    shuffled order, so every index is used equally often, give or take one, and none is favoured."""
    return rng.permutation((np.arange(count) + rng.integers(width)) % width)


def finish(
    task: str, split: str, drafts: Sequence[Draft], rng: np.random.Generator, limit: int | None
) -> list[TaskSample]:
    """The final samples: a seeded subset of at most ``limit`` drafts, the answer placed at a balanced index among
    the shuffled negatives, and the new texts numbered."""
    drafts = subsample(drafts, rng, limit)
    samples = []
    for draft, at in zip(drafts, balanced_slots(len(drafts), CANDIDATES[task], rng), strict=True):
        shuffle = rng.permutation(len(draft.negatives))
        candidates = [draft.negatives[i] for i in shuffle]
        candidates.insert(int(at), draft.answer)
        rules = draft.fields["built_from"].get("negatives")
        if rules:  # each negative's rule, in the negatives' order among the candidates
            draft.fields["built_from"]["negatives"] = [rules[i] for i in shuffle]
        samples.append(TaskSample(task=task, split=split, candidates=candidates, answer=int(at), **draft.fields))
    number_texts(samples)
    return samples


def number_texts(samples: Sequence[TaskSample]) -> None:
    """Give the candidates' new texts their rows in the set's texts array, in order of first appearance."""
    rows: dict[str, int] = {}
    for sample in samples:
        for candidate in sample.candidates:
            if candidate.text_row is not None:
                candidate.text_row = rows.setdefault(str(candidate.text), len(rows))


def texts_of(samples: Sequence[TaskSample]) -> list[str]:
    """The new texts of a set by row (the strings the set's texts array encodes)."""
    rows = {c.text_row: str(c.text) for s in samples for c in s.candidates if c.text_row is not None}
    return [rows[i] for i in range(len(rows))]


def plain(value: Any) -> Any:
    """A truth value as plain JSON (numpy scalars and arrays to Python, NaN to None)."""
    if isinstance(value, dict):
        return {str(k): plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple, np.ndarray)):
        return [plain(v) for v in value]
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and (np.isnan(value) or value.is_integer()):
        return None if np.isnan(value) else int(value)  # pandas holds None-able truth numbers as floats
    return value


class PanelColumns:
    """Column access by row for the samplers (plain Python values, no pandas per lookup)."""

    def __init__(self, view: RunView) -> None:
        self.view = view
        self.columns = {c: view.panels[c].tolist() for c in view.panels.columns}

    def __getitem__(self, column: str) -> list:
        return self.columns[column]

    def ids(self, rows: Sequence[int]) -> list[int]:
        """Store panel ids of rows."""
        return [int(self.columns["panel_id"][r]) for r in rows]

    def pid(self, row: int) -> int:
        """Store panel id of one row."""
        return int(self.columns["panel_id"][row])

    def whole(self, row: int, slot_of: int | None = None) -> Candidate:
        """A panel as drawn with its own text, and the composition of the slot it is offered for (or none)."""
        pid = self.pid(row)
        return Candidate(pid, "full", text_from=pid, composition_from=None if slot_of is None else self.pid(slot_of))

    def fields(
        self, task: str, answer: int, context: Sequence[int], names: Sequence[str], difficulty: str, **extra: Any
    ) -> dict[str, Any]:
        """TaskSample fields besides the candidates: ids, context, difficulty and what the sample was built from."""
        truth = {c: plain(self.columns[c][answer]) for c in ("scene_run", "scene", "beat") if c in self.columns}
        pages = sorted({self.columns["page_id"][r] for r in [*context, answer]})
        built = dict(answer_panel=self.pid(answer), pages=pages, negatives=list(names), **truth)
        built.update(extra.pop("built_from", {}))
        suffix = extra.pop("suffix", "")
        return dict(
            sample_id=f"{task}/{self.pid(answer)}{suffix}",
            book_id=self.columns["book_id"][answer],
            context=self.ids(context),
            difficulty=difficulty,
            built_from=built,
            **extra,
        )


def counter(skips: Counter | None) -> Counter:
    """The caller's skip counter, or a fresh one."""
    return skips if skips is not None else Counter()


def require_truth(view: RunView, task: str) -> None:
    """TaskUnavailable where the corpus has no truth; TruthColumnsMissing where the truth lacks a needed column."""
    needed = [*TRUTH_COLUMNS.get(task, ()), *(("scene_run or scene",) if task in NEEDS_SCENE else ())]
    if view.truth is None:
        raise TaskUnavailable(
            f"{task} needs ground truth ({', '.join(needed)}), which this corpus lacks: {view.truth_note}"
        )
    missing = [c for c in TRUTH_COLUMNS.get(task, ()) if c not in view.panels]
    if task in NEEDS_SCENE and not any(c in view.panels for c in SCENE_COLUMNS):
        missing.append("scene_run or scene")
    if missing:
        raise TruthColumnsMissing(
            f"{task} needs the truth columns {missing}, which comicnb.corpus.synth.panel_truth does not give "
            f"(it gives {sorted(set(view.panels.columns))}): update the corpus package"
        )


def text_vision(view: RunView, row: int) -> str:
    """How a text task shows its answer panel: its text-free twin where stored, else no image at all."""
    return "text_free" if bool(view.panels.text_free[row]) else "none"


def text_key(text: str) -> str:
    """What makes two candidate texts the same (case and spacing aside)."""
    return " ".join(str(text).lower().split())
