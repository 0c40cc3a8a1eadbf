"""The held-out COMICS study of notebook 05: both shared dev folds, books kept apart across files, one scorer per task.

``held_out_study(folder, out)`` trains a scorer per task on the books of folds other than 0 (``scorer.fit``, the same
book fold in every file) and scores each on its file's fold-0 books (``evaluate.evaluate``), beside the zero-shot
baseline; it returns the evaluations and the ``comics`` section of ``metrics.json`` with its protocol.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import pandas as pd

from comicnb.comics.embed import TextVectors
from comicnb.comics.evaluate import Evaluation, evaluate
from comicnb.comics.folds import DEFAULT_FOLDS, book_fold, unit_hash
from comicnb.comics.reader import CHAR_COHERENCE, TEXT_CLOZE, ComicsTable, read_comics
from comicnb.comics.scorer import fit
from comicnb.comics.settings import FitSettings

COMICS_FILES = {TEXT_CLOZE: "text_cloze_dev_easy.csv", CHAR_COHERENCE: "char_coherence_dev.csv"}  # the shared folds
SCORED_FOLD = 0


def missing_files(folder: str | Path | None) -> list[str]:
    """The shared COMICS files ``folder`` lacks (all of them for no folder)."""
    return [name for name in COMICS_FILES.values() if folder is None or not (Path(folder) / name).is_file()]


def subset_books(tables: Mapping[str, ComicsTable], max_rows: int, seed: int = 0) -> dict[str, ComicsTable]:
    """A seeded subset of whole books of about ``max_rows`` rows in the largest file, the same books in every file
    that has them; the tables as they are for ``max_rows`` 0."""
    if not max_rows:
        return dict(tables)
    share = max_rows / max(len(t) for t in tables.values())
    books = {s.book_id for t in tables.values() for s in t.samples}
    keep = {b for b in books if unit_hash(f"subset:{seed}:{b}") < share}
    return {task: t.subset([s for s in t.samples if s.book_id in keep]) for task, t in tables.items()}


def held_out_study(
    folder: str | Path,
    out: str | Path,
    settings: FitSettings | None = None,
    folds: int = DEFAULT_FOLDS,
    max_rows: int = 0,
) -> tuple[dict[str, Evaluation], dict]:
    """Train and score one scorer per shared file (see the module) with ``settings`` (FitSettings' defaults where
    None); models and the text-vector cache go under ``out``. Returns (task -> Evaluation, the ``comics`` section:
    each evaluation as a dict and the protocol)."""
    settings = settings or FitSettings()
    out = Path(out)
    vectors = TextVectors(cache=out / "text_vectors.npz")
    tables = {task: read_comics(Path(folder) / name, task) for task, name in COMICS_FILES.items()}
    tables = subset_books(tables, max_rows, settings.seed)
    evaluations, trained = {}, set()
    for task, table in tables.items():
        manifest = fit(
            table,
            out / task,
            settings,
            hold_out=[SCORED_FOLD],
            folds=folds,
            overwrite=True,
            vectors=vectors,
            log=lambda line: None,
        )
        trained |= set(manifest["trained_books"])
        evaluations[task] = evaluate(out / task, table, vectors=vectors)
    vectors.save()
    held_out = {s.book_id for t in tables.values() for s in t.samples if book_fold(s.book_id, folds) == SCORED_FOLD}
    if held_out & trained:  # the fold is a function of the book alone, so this cannot happen unless that changes
        raise RuntimeError(f"{len(held_out & trained)} held-out books were trained on")
    section: dict = {task: e.as_dict() for task, e in evaluations.items()}
    section["protocol"] = dict(
        folds=folds,
        scored_fold=SCORED_FOLD,
        unit="book, the same fold in every file (a hash of the book id)",
        rows={task: len(t) for task, t in tables.items()},
        max_rows=max_rows,
        held_out_books=len(held_out),
        trained_books=len(trained),
    )
    return evaluations, section


def scores_frame(evaluations: Mapping[str, Evaluation]) -> pd.DataFrame:
    """One row per task and scorer: accuracy, its interval, rows and books."""
    rows = [
        dict(task=task, method=s.name, accuracy=s.accuracy, low=s.low, high=s.high, n=s.n, books=s.books)
        for task, evaluation in evaluations.items()
        for s in evaluation.scores
    ]
    return pd.DataFrame(rows)
