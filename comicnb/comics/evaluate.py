"""Score COMICS cloze rows: a trained scorer on the books it never saw, the zero-shot text-similarity baseline, chance.

The zero-shot baseline needs no training: the packaged MiniLM's cosine between each candidate's text and the context's
texts joined in reading order (Stage 4's ``text_similarity`` baseline). Ties score as a uniform pick among the tied
candidates, so a scorer that cannot tell candidates apart scores chance.

Intervals are 95 % percentile bootstrap intervals that resample whole books
(``comicnb.metrics.bootstrap_interval``, groups = book id): samples of one book are not independent (one
story, one letterer, neighbouring windows share panels and answers), so an interval over samples would be too narrow.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from comicnb.comics.embed import TextVectors, candidate_text, context_text, sample_vectors
from comicnb.comics.folds import split_seen
from comicnb.comics.heads import model_scores
from comicnb.comics.reader import TEXT_CLOZE, ComicsSample, ComicsTable
from comicnb.comics.scorer import load_scorer
from comicnb.metrics import bootstrap_interval, expected_hits

LEVEL = 0.95
INTERVAL_NOTES = {"book bootstrap": "95 % bootstrap interval resampling whole books"}
CITATION = "Iyyer et al. 2017, CVPR, github.com/miyyer/comics README; trained on COMICS' train fold"
# (model, figure) per task; text cloze figures are "easy / hard" folds.
PUBLISHED = {
    TEXT_CLOZE: (
        ("text only", "63.4 easy / 52.9 hard"),
        ("image only", "51.7 / 49.4"),
        ("image + text", "68.6 / 61.0"),
    ),
    "char_coherence": (("text only", "68.2"), ("image only", "70.9"), ("image + text", "69.3")),
}


@dataclass
class Score:
    """One scorer's accuracy on a set of rows."""

    name: str
    n: int
    books: int
    accuracy: float
    low: float
    high: float
    interval: str = "book bootstrap"  # how low and high were found (INTERVAL_NOTES)

    def line(self) -> str:
        """``name  accuracy [low, high]`` in percent."""
        if not self.n:
            return f"  {self.name:<22} no rows"
        return f"  {self.name:<22} {100 * self.accuracy:5.1f} %  [{100 * self.low:.1f}, {100 * self.high:.1f}]"


def interval(correct: np.ndarray, books: Sequence[str]) -> tuple[float, float, str]:
    """(low, high, method): the book-level bootstrap interval."""
    low, high = bootstrap_interval(correct, np.asarray(books), level=LEVEL)
    return low, high, "book bootstrap"


def score(name: str, correct: np.ndarray, samples: Sequence[ComicsSample]) -> Score:
    """A Score from per-sample correctness in [0, 1] of samples."""
    correct = np.asarray(correct, dtype=np.float64)
    books = [s.book_id for s in samples]
    if not len(correct):
        return Score(name, 0, 0, float("nan"), float("nan"), float("nan"))
    low, high, method = interval(correct, books)
    return Score(name, len(correct), len(set(books)), float(correct.mean()), low, high, method)


def zero_shot_scores(samples: Sequence[ComicsSample], vectors: TextVectors) -> np.ndarray:
    """(N, C) cosine of each candidate's text to the context's texts joined in reading order (no context: all 0)."""
    if not samples:
        return np.zeros((0, 0))
    queries = vectors([context_text(s) for s in samples])  # (N, D)
    candidates = vectors([candidate_text(c) for s in samples for c in s.candidates])
    candidates = candidates.reshape(len(samples), len(samples[0].candidates), -1)
    return np.einsum("nd,ncd->nc", queries, candidates)


def zero_shot(samples: Sequence[ComicsSample], vectors: TextVectors) -> np.ndarray:
    """(N,) expected hits of the zero-shot baseline."""
    answers = np.array([s.answer for s in samples], dtype=np.int64)
    return expected_hits(zero_shot_scores(samples, vectors), answers) if samples else np.zeros(0)


@dataclass
class Evaluation:
    """What ``comicnb comics eval`` scored and left out."""

    task: str
    csv: str
    sha256: str
    rows: int  # data rows in the file
    bad_rows: dict
    scored: int
    left_out: int
    left_out_books: int
    contaminated: bool  # rows of training books were scored (--include-seen)
    outside_subset: int = 0  # good rows of the file not in the table scored (a subset of whole books, max_rows)
    scores: list[Score] = field(default_factory=list)
    chance: float = float("nan")
    seconds: float = 0.0
    model_dir: str = ""
    trained_on: str = ""

    def lines(self) -> list[str]:
        """The printed report."""
        head = f"[comicnb] comics eval {self.task} on {Path(self.csv).name} with the model in {self.model_dir}"
        bad = sum(self.bad_rows.values())
        subset = f", {self.outside_subset} outside this run's subset of whole books" if self.outside_subset else ""
        out = [head, f"  {self.rows} rows in the file: {bad} bad (skipped){subset}, {self.scored} scored"]
        if self.contaminated:
            out.append(
                f"  CONTAMINATED: --include-seen scores {self.left_out} rows of {self.left_out_books} books the model "
                f"was trained on ({self.trained_on}); these figures are not a held-out score"
            )
        elif self.left_out:
            out.append(
                f"  {self.left_out} rows of {self.left_out_books} books left out: the model was trained on those books "
                f"({self.trained_on}), so it has seen their answers (--include-seen scores them, as contaminated)"
            )
        else:
            out.append("  no rows left out: the model saw none of these books")
        out.append(f"  accuracy ({INTERVAL_NOTES[self.scores[0].interval] if self.scores else 'no rows'}):")
        out.extend(s.line() for s in self.scores)
        out.append(f"  {'chance':<22} {100 * self.chance:5.1f} %")
        books = max((s.books for s in self.scores), default=0)
        out.append(f"  ({self.scored} rows of {books} books)")
        out.extend(published_lines(self.task))
        return out

    def as_dict(self) -> dict:
        """Plain dict for a JSON report."""
        return asdict(self)


def published_lines(task: str) -> list[str]:
    """The published accuracies of a task, with their source."""
    figures = "; ".join(f"{name} {value}" for name, value in PUBLISHED[task])
    return [f"  published ({CITATION}):", f"    {figures}"]


def evaluate(
    model_dir: str | Path,
    table: ComicsTable,
    include_seen: bool = False,
    cache: str | Path | None = None,
    baseline: bool = True,
    vectors: TextVectors | None = None,
) -> Evaluation:
    """Score a trained model on the rows of ``table`` whose books it never saw (all rows with ``include_seen``,
    marked contaminated), beside the zero-shot baseline on the same rows and chance."""
    started = time.perf_counter()
    model, manifest = load_scorer(model_dir)
    if table.task != manifest["task"]:
        raise ValueError(f"the model in {model_dir} scores {manifest['task']}, but {table.path} is a {table.task} fold")
    split = split_seen(table.samples, manifest["trained_books"])
    samples = table.samples if include_seen else split.unseen
    evaluation = Evaluation(
        task=table.task,
        csv=str(table.path),
        sha256=table.sha256,
        rows=table.report.rows,
        bad_rows=dict(table.report.skipped),
        scored=len(samples),
        left_out=len(split.seen),
        left_out_books=len(split.seen_books),
        contaminated=include_seen and bool(split.seen),
        outside_subset=table.report.rows - sum(table.report.skipped.values()) - len(table.samples),
        chance=table.chance,
        model_dir=str(model_dir),
        trained_on=f"{manifest['csv']['name']}, {manifest['rows']['training'] + manifest['rows']['validation']} rows "
        f"of {len(manifest['trained_books'])} books",
    )
    if not samples:
        return evaluation
    vectors = vectors or TextVectors(manifest.get("text_model"), cache)
    if vectors.label != manifest["text_model_label"]:
        raise ValueError(f"the model was trained on {manifest['text_model_label']} vectors, not {vectors.label}")
    pair_vectors = manifest["settings"].get("pair_vectors", "joined")  # models saved before the setting: joined
    tokens = manifest["settings"].get("context_tokens", "panel")  # models saved before the setting: panel
    context, candidates = sample_vectors(samples, vectors, pair_vectors, tokens)
    answers = np.array([s.answer for s in samples], dtype=np.int64)
    logits = model_scores(model, table.task, context, candidates, tokens=tokens)
    evaluation.scores.append(score("trained (text only)", expected_hits(logits, answers), samples))
    if baseline:
        evaluation.scores.append(score(f"zero-shot {short(vectors.label)}", zero_shot(samples, vectors), samples))
    vectors.save()
    evaluation.seconds = time.perf_counter() - started
    return evaluation


def short(label: str) -> str:
    """A text model's label, short enough for a table row."""
    return "MiniLM" if "MiniLM" in label else Path(label).name or label
