"""Stage 4 task samples: one schema for all seven tasks, and the fixed files that hold them.

A sample names panels by their flat id in the embedding store (``page * max_panels + slot``, see
``comicnb.store.schema``). What a model is given is the *context* (panel ids in reading order) and the *candidates*;
each candidate says which stored parts enter it, so every model and baseline rebuilds exactly the same inputs:

- ``vision``: which image embedding of ``panel_id`` enters: ``"full"`` (the page as drawn), ``"text_free"`` (its
  text-free twin, balloons empty: text tasks) or ``"none"``;
- ``text_from``: the panel whose stored text embedding enters, or ``text_row`` for a text that is in no panel (a
  panel's lines with their speakers swapped), encoded by the frozen Stage 3 text pathway when the set was built and
  kept in the set's ``texts`` array; neither: no text;
- ``composition_from``: the panel whose composition enters (the slot the candidate is offered for), or None: a
  candidate's own place on its page must not give it away.

A part a candidate does not name is masked. Context panels enter as stored (all their parts). Per task (the samplers,
``comicnb.stage4.samplers``, build them so):

- panel picking: ``context`` is the page without the masked panel, ``slot`` where it goes; candidates are full panels
  with their own text and the masked slot's composition;
- visual closure: candidates are images only (text-free where stored), with the next slot's composition;
- text closure, text-cloze, character coherence: every candidate is the answer panel (text-free, or ``"none"`` where
  the store has no twin) in its own slot, with a different text;
- caption relevance: ``query_text`` is the input and ``context`` is empty; candidates are full panels with their own
  text and no composition;
- reading order: no candidates; ``context`` is the page shuffled (each panel with its own composition), ``order``
  the answer.

Validation and test sets are written once (``write_task_set``) under ``<run>/tasks/<split>/``: ``<task>.jsonl``
(one sample a line), ``<task>.texts.npy`` (the extra text embeddings, rows of ``text_row``) and ``manifest.json``
(what the sets were built from, with counts; ``comicnb.stage4.task_sets`` writes and checks them). Ground truth
chooses negatives and scores; it is recorded under ``built_from`` for reports and never part of a model's input.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

# Text lengths: every negative text's length lies in the answer's cell of a fixed grid (comicnb.corpus.lengths).
from comicnb.corpus.lengths import TEXT_LENGTH_TOLERANCE as TEXT_LENGTH_TOLERANCE
from comicnb.corpus.lengths import length_cell as length_cell
from comicnb.corpus.lengths import log_length as log_length

TASKS = (
    "panel_picking",
    "character_coherence",
    "visual_closure",
    "text_closure",
    "caption_relevance",
    "text_cloze",
    "reading_order",
)
TEXT_TASKS = ("character_coherence", "text_closure", "text_cloze")
CANDIDATES = {  # candidates per sample of each candidate task
    "panel_picking": 5,
    "character_coherence": 2,
    "visual_closure": 5,
    "text_closure": 4,
    "caption_relevance": 4,
    "text_cloze": 3,
}
MAX_CONTEXT = 4  # preceding panels given in text closure and character coherence
MIN_CONTEXT = 2  # fewest context panels of a sequence task: one panel shows no progression
CLOZE_CONTEXT = 3  # text-cloze gives exactly three preceding panels, as COMICS does
# A crop's shape and size survive in its image embedding (squashed to a square, the aspect ratio shows as
# distortion; the size as sharpness): where candidates are different panels' images (offered for one slot, or with
# no slot at all, where a learned shape prior still reads them), every negative's box is within a tolerance of the
# answer's (|log aspect ratio|, |log area| in page pixels), the tightest of these that finds enough negatives
# (docs/stage4-tasks.md, "Shape"). Chosen on the study's validation books, where they leave the shape baseline at
# chance (the first alone takes 73 % of panel picking's samples); a small corpus has too few panels of one shape for
# the first, and falls back.
SHAPE_TOLERANCES = (
    {"log_aspect": 0.03, "log_area": 0.05},
    {"log_aspect": 0.06, "log_area": 0.1},
    {"log_aspect": 0.1, "log_area": 0.3},
)
SHAPE_MATCHED = ("panel_picking", "visual_closure", "caption_relevance")
# Raised whenever a sampler draws differently for the same store and seed: sets built under other rules are rebuilt,
# not reused (1: scene negatives and text-free answers, issue 10; 2: shape-matched negatives, text negatives of the
# answer's box count and length cell, issue 18; 3: the long-range probes written beside the sets, issue 21; 4:
# character coherence's candidates keep their text per text box, for balloon tokens; 5: without ground truth,
# character coherence, visual closure and caption relevance are drawn from the pages alone, issue 22).
RULES_VERSION = 5
VISIONS = ("full", "text_free", "none")
DIFFICULTIES = ("hard", "easy", "-")
TASKS_DIR = "tasks"
MANIFEST = "manifest.json"


@dataclass
class Candidate:
    """One candidate answer, as the stored parts that make it (see the module)."""

    panel_id: int  # the stored panel whose image enters (see vision)
    vision: str = "full"  # full, text_free or none
    text_from: int | None = None  # stored panel whose text embedding enters
    text_row: int | None = None  # row of the set's extra text embeddings (a text that is in no panel)
    text: str | None = None  # the candidate's text as words, for reports and text baselines
    composition_from: int | None = None  # stored panel whose composition enters; None: no composition
    # The text once per text box of panel_id (character coherence: each line with its speaker's name), in the order
    # of the panel's boxes: what balloon tokens read (comicnb.stage4.balloons); None: the text is one block.
    text_boxes: list[str] | None = None

    def __post_init__(self) -> None:
        if self.vision not in VISIONS:
            raise ValueError(f"vision must be one of {VISIONS}, not {self.vision!r}")
        if self.text_from is not None and self.text_row is not None:
            raise ValueError("a candidate's text comes from a stored panel or from the set's texts, not both")


@dataclass
class TaskSample:
    """One sample of one task: context, candidates, the answer's index, and what it was built from."""

    task: str
    sample_id: str
    split: str
    book_id: str
    context: list[int]  # panel ids the model is given, in reading order (reading order: shuffled)
    candidates: list[Candidate] = field(default_factory=list)
    answer: int = -1  # index of the right candidate (reading order: -1, see order)
    difficulty: str = "-"  # hard, easy, or - where the task has one kind
    slot: int | None = None  # panel picking: the masked panel's place (context[:slot] + [it] + context[slot:]);
    # None: the answer follows the context
    query_text: str | None = None  # caption relevance: the caption given as input
    order: list[int] | None = None  # reading order: order[i] = reading position of context[i]
    direction: str | None = None  # reading order: the book's direction (ltr/rtl) where the corpus labels it
    built_from: dict[str, Any] = field(default_factory=dict)  # pages, negative rule, scene, beat: for reports only

    def __post_init__(self) -> None:
        if self.task not in TASKS:
            raise ValueError(f"unknown task {self.task!r}: one of {', '.join(TASKS)}")
        if self.difficulty not in DIFFICULTIES:
            raise ValueError(f"difficulty must be one of {DIFFICULTIES}, not {self.difficulty!r}")
        self.candidates = [c if isinstance(c, Candidate) else Candidate(**c) for c in self.candidates]

    @property
    def chance(self) -> float:
        """Accuracy of a uniform guess on this sample (reading order: one over the permutations)."""
        if self.task == "reading_order":
            return 1.0 / float(np.prod(np.arange(1, len(self.context) + 1)))
        return 1.0 / len(self.candidates)

    def to_json(self) -> str:
        """One line of a task file."""
        return json.dumps(asdict(self), ensure_ascii=False, sort_keys=True)

    @classmethod
    def from_json(cls, line: str) -> TaskSample:
        """A sample read back from one line."""
        return cls(**json.loads(line))


@dataclass
class TaskSet:
    """The samples of one task and split, with the extra text embeddings their candidates point at."""

    task: str
    split: str
    samples: list[TaskSample]
    texts: np.ndarray = field(default_factory=lambda: np.zeros((0, 0), dtype=np.float32))  # (T, D) text embeddings

    def __len__(self) -> int:
        return len(self.samples)


def task_dir(run_dir: str | Path, split: str) -> Path:
    """``<run>/tasks/<split>/``."""
    return Path(run_dir) / TASKS_DIR / split


def write_task_set(folder: str | Path, task_set: TaskSet) -> Path:
    """Write ``<task>.jsonl`` and ``<task>.texts.npy`` into ``folder``; return the jsonl path."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{task_set.task}.jsonl"
    tmp = path.with_suffix(".jsonl.tmp")
    tmp.write_text("".join(s.to_json() + "\n" for s in task_set.samples), encoding="utf-8")
    np.save(folder / f"{task_set.task}.texts.npy", np.asarray(task_set.texts, dtype=np.float32))
    tmp.replace(path)
    return path


def read_task_set(folder: str | Path, task: str) -> TaskSet:
    """The task set written by write_task_set; a missing file names the notebook that writes it."""
    folder = Path(folder)
    path = folder / f"{task}.jsonl"
    if not path.is_file():
        entry = read_manifest(folder).get("tasks", {}).get(task, {}) if (folder / MANIFEST).is_file() else {}
        if entry.get("built") is False:
            raise FileNotFoundError(f"no {task} samples at {path}: {entry.get('reason', 'not built for this corpus')}")
        raise FileNotFoundError(f"no {task} samples at {path}: build the task sets first (notebook 04, 'The tasks')")
    lines = path.read_text(encoding="utf-8").splitlines()
    samples = [TaskSample.from_json(line) for line in lines if line.strip()]
    texts_path = folder / f"{task}.texts.npy"
    texts = np.load(texts_path) if texts_path.is_file() else np.zeros((0, 0), dtype=np.float32)
    split = samples[0].split if samples else folder.name
    return TaskSet(task, split, samples, texts)


def write_manifest(folder: str | Path, manifest: Mapping[str, Any]) -> Path:
    """``manifest.json``: the store, checkpoint, seed and counts the sets of one split were built from."""
    path = Path(folder) / MANIFEST
    path.write_text(json.dumps(dict(manifest), indent=1, sort_keys=True), encoding="utf-8")
    return path


def read_manifest(folder: str | Path) -> dict[str, Any]:
    """The manifest of one split's sets (what they were built from, per-task counts, skips and tasks not built)."""
    path = Path(folder) / MANIFEST
    if not path.is_file():
        raise FileNotFoundError(f"no {MANIFEST} in {folder}: build the task sets first (notebook 04, 'The tasks')")
    return json.loads(path.read_text(encoding="utf-8"))


def check_sample(sample: TaskSample) -> list[str]:
    """The rules every sample keeps (empty when it keeps them all), so that only the story can tell the answer:

    - the answer is a candidate exactly once, and no candidate (its image, its text, its composition) comes from the
      context; a text task's texts all differ;
    - the candidates of a sample differ only in what is asked: the same vision kind, text present for all or none, and
      one composition, that of the slot they are offered for (the answer's panel) or none;
    - a text task shows its answer panel text-free or without its image, never with its text drawn in;
    - reading order: ``order`` is a permutation of the context and there are no candidates.
    """
    if sample.task == "reading_order":
        problems = [] if not sample.candidates else ["reading order has candidates"]
        if sorted(sample.order or []) != list(range(len(sample.context))):
            problems.append("order is not a permutation of the context")
        return problems
    if not 0 <= sample.answer < len(sample.candidates):
        return [f"answer {sample.answer} outside {len(sample.candidates)} candidates"]
    candidates, answer = sample.candidates, sample.candidates[sample.answer]
    problems = []
    keys = [candidate_key(c) for c in candidates]
    if keys.count(keys[sample.answer]) != 1:
        problems.append("the answer appears more than once among the candidates")
    in_context = set(sample.context)
    if any(i in in_context for c in candidates for i in (c.panel_id, c.text_from, c.composition_from)):
        problems.append("a candidate's image, text or composition comes from a context panel")
    if len({c.vision for c in candidates}) > 1:
        problems.append("candidates differ in vision kind")
    if len({c.text_from is not None or c.text_row is not None for c in candidates}) > 1:
        problems.append("some candidates have a text and others none")
    if len({c.composition_from for c in candidates}) > 1 or answer.composition_from not in (None, answer.panel_id):
        problems.append("candidates do not share the composition of the slot they are offered for")
    if sample.task in TEXT_TASKS:
        texts = [" ".join(str(c.text).lower().split()) for c in candidates]
        if len(set(texts)) < len(texts):
            problems.append("two candidates have the same text")
        if answer.vision == "full":
            problems.append("the answer panel of a text task shows its text")
    if sample.task == "panel_picking" and not 0 <= (sample.slot if sample.slot is not None else -1) <= len(in_context):
        problems.append(f"masked slot {sample.slot} outside the context")
    return problems


def candidate_key(candidate: Candidate) -> tuple:
    """What makes two candidates the same input."""
    return (candidate.panel_id, candidate.vision, candidate.text_from, candidate.text_row, candidate.text)


def answer_slots(samples: Iterable[TaskSample]) -> np.ndarray:
    """Counts of the answer's index among the candidates (for the uniform-slot check)."""
    sized = [s for s in samples if s.task != "reading_order"]
    width = max((len(s.candidates) for s in sized), default=0)
    return np.bincount([s.answer for s in sized], minlength=width)


def panels_of(samples: Sequence[TaskSample]) -> set[int]:
    """Every stored panel id a set of samples refers to."""
    ids: set[int] = set()
    for s in samples:
        ids.update(s.context)
        for c in s.candidates:
            ids.update(v for v in (c.panel_id, c.text_from, c.composition_from) if v is not None)
    return ids
