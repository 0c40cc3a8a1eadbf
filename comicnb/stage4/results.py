"""Per-sample results of any method on a task set (a baseline or a trained model), and the one table they make.

A ``Result`` holds one method's correctness on every sample of a set (reading order: the exact page order, with its
pairwise accuracy and Kendall tau). ``result_table`` turns any results into one row per method, task, split and
difficulty (``ALL`` over every sample, and each difficulty where a set has several) with accuracy and its interval:
Wilson per sample (notebook 04's validation bar) or a bootstrap that resamples books (notebook 05's test figures;
below ``metrics.MIN_BOOKS`` books at least the samples' own interval, its ``interval`` column ``few_books``, and
``comparison`` draws no verdict from it).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from comicnb.metrics import MIN_BOOKS, accuracy_interval, clustered_interval, expected_hit, order_agreement
from comicnb.stage4.config import MODELS
from comicnb.stage4.tasks import TASKS, TaskSet

ALL = "all"  # the difficulty of a table row over every sample of a set
READING_ORDER = "reading_order"
SAMPLE_COLUMNS = [
    "method",
    "task",
    "split",
    "sample_id",
    "book_id",
    "difficulty",
    "correct",
    "chance",
    "pairwise",
    "kendall_tau",
]
COLUMNS = [
    "method",
    "task",
    "split",
    "difficulty",
    "n",
    "books",
    "accuracy",
    "low",
    "high",
    "interval",
    "chance",
    "pairwise",
    "kendall_tau",
]


@dataclass
class Result:
    """One method on one task set: per-sample predictions and correctness, for intervals and per-sample reports."""

    method: str
    task: str
    split: str
    sample_ids: list[str]
    book_ids: list[str]
    difficulty: list[str]
    correct: np.ndarray  # (S,) expected exact-answer hit under uniform tie-breaking, in [0, 1]
    chance: np.ndarray  # (S,) the sample's chance accuracy
    predictions: list[Any]  # picked candidate (the first of a partial tie; -1: all tie), or the predicted order
    scores: list[np.ndarray]  # per-candidate scores; reading order: per-panel predicted position
    pairwise: np.ndarray | None = None  # (S,) reading order: fraction of panel pairs in the right order
    kendall_tau: np.ndarray | None = None  # (S,) reading order: Kendall's tau between predicted and true order

    def frame(self) -> pd.DataFrame:
        """One row per sample (SAMPLE_COLUMNS)."""
        n = len(self.sample_ids)
        return pd.DataFrame(
            dict(
                method=self.method,
                task=self.task,
                split=self.split,
                sample_id=self.sample_ids,
                book_id=self.book_ids,
                difficulty=self.difficulty,
                correct=np.asarray(self.correct, dtype=np.float64),
                chance=np.asarray(self.chance, dtype=np.float64),
                pairwise=self.pairwise if self.pairwise is not None else np.full(n, np.nan),
                kendall_tau=self.kendall_tau if self.kendall_tau is not None else np.full(n, np.nan),
            ),
            columns=SAMPLE_COLUMNS,
        )


def make_result(
    method: str, task_set: TaskSet, correct: Sequence[float], predictions: list, scores: list, **extra: Any
) -> Result:
    """A Result over every sample of ``task_set``, in order."""
    samples = task_set.samples
    return Result(
        method=method,
        task=task_set.task,
        split=task_set.split,
        sample_ids=[s.sample_id for s in samples],
        book_ids=[s.book_id for s in samples],
        difficulty=[s.difficulty for s in samples],
        correct=np.asarray(correct, dtype=np.float64),
        chance=np.array([s.chance for s in samples], dtype=np.float64),
        predictions=predictions,
        scores=scores,
        **extra,
    )


def picking_result(method: str, task_set: TaskSet, scores: Sequence[np.ndarray]) -> Result:
    """The result of a method that scores candidates (higher is better); ties count as a uniform pick."""
    hits = [expected_hit(s, sample.answer) for s, sample in zip(scores, task_set.samples)]
    scored = [np.asarray(s, dtype=np.float64) for s in scores]
    return make_result(method, task_set, [h for h, _ in hits], [p for _, p in hits], scored)


def choice_result(method: str, task_set: TaskSet, picked: Sequence[int]) -> Result:
    """The result of a method that picks one candidate per sample (a trained model's argmax)."""
    picked = [int(p) for p in picked]
    correct = [float(p == s.answer) for p, s in zip(picked, task_set.samples, strict=True)]
    scores = [np.eye(len(s.candidates))[p] for p, s in zip(picked, task_set.samples, strict=True)]
    return make_result(method, task_set, correct, picked, scores)


def order_result(method: str, task_set: TaskSet, orders: Sequence[Sequence[int]]) -> Result:
    """The result of a reading-order method: exact match (as correctness), pairwise accuracy and Kendall tau."""
    orders = [np.asarray(o, dtype=np.int64).reshape(-1) for o in orders]
    pairs = zip(orders, task_set.samples, strict=True)
    measures = np.array([order_agreement(o, s.order or []) for o, s in pairs]).reshape(-1, 3)
    return make_result(
        method,
        task_set,
        measures[:, 0],
        [o.tolist() for o in orders],
        [o.astype(np.float64) for o in orders],
        pairwise=measures[:, 1],
        kendall_tau=measures[:, 2],
    )


def sample_frame(results: Iterable[Result]) -> pd.DataFrame:
    """One row per method and sample of every result (SAMPLE_COLUMNS)."""
    frames = [result.frame() for result in results]
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(columns=SAMPLE_COLUMNS)


def result_table(
    results: Iterable[Result] | pd.DataFrame,
    interval: str = "wilson",
    level: float = 0.95,
    n_resamples: int = 2000,
    seed: int = 0,
    by_difficulty: bool = True,
) -> pd.DataFrame:
    """One row per method, task, split and difficulty (COLUMNS): ``ALL`` over a set's samples, and each difficulty
    where the set has several; accuracy with its ``interval`` (``wilson``, or ``bootstrap`` over books), mean chance,
    and for reading order mean pairwise accuracy and Kendall tau."""
    samples = results if isinstance(results, pd.DataFrame) else sample_frame(results)
    rows = []
    for (method, task, split), part in samples.groupby(["method", "task", "split"], sort=False):
        kinds = sorted(set(part.difficulty) - {"-"})
        groups = [(ALL, part)]
        if by_difficulty and len(kinds) > 1:
            groups += [(kind, part[part.difficulty == kind]) for kind in kinds]
        for difficulty, chosen in groups:
            head = dict(method=method, task=task, split=split, difficulty=difficulty)
            rows.append({**head, **interval_row(chosen, interval, level, n_resamples, seed)})
    return pd.DataFrame(rows, columns=COLUMNS)


def interval_row(part: pd.DataFrame, interval: str, level: float, n_resamples: int, seed: int) -> dict[str, Any]:
    """n, books, accuracy and its interval with the kind it is (``wilson``; ``bootstrap`` over books, or ``few_books``
    below MIN_BOOKS: see ``metrics.clustered_interval``), mean chance, pairwise and tau of some samples
    (SAMPLE_COLUMNS rows)."""
    correct = part.correct.to_numpy(dtype=np.float64)
    books = part.book_id.to_numpy()
    if interval == "bootstrap":
        accuracy, low, high, kind = clustered_interval(correct, books, level, n_resamples, seed)
    else:
        (accuracy, low, high), kind = accuracy_interval(correct, level, interval, books, n_resamples, seed), interval
    return dict(
        n=len(part),
        books=int(part.book_id.nunique()),
        accuracy=accuracy,
        low=low,
        high=high,
        interval=kind,
        chance=float(part.chance.mean()) if len(part) else math.nan,
        pairwise=float(part.pairwise.mean()) if part.pairwise.notna().any() else math.nan,
        kendall_tau=float(part.kendall_tau.mean()) if part.kendall_tau.notna().any() else math.nan,
    )


COUNTS = ("n", "books")  # columns that count, shown as integers


def by_split(table: pd.DataFrame, index: Sequence[str], values: Sequence[str]) -> pd.DataFrame:
    """A result table's ``values`` side by side per split (``index`` rows, (value, split) columns), the values in the
    order given (an interval reads accuracy, low, high) and counts as integers: what notebooks show."""
    wide = table.pivot_table(index=list(index), columns="split", values=list(values), aggfunc="first")
    wide = wide[[v for v in values if v in wide.columns.get_level_values(0)]]
    counts = [column for column in wide.columns if column[0] in COUNTS]
    return wide.astype({column: "Int64" for column in counts})


def overall(table: pd.DataFrame) -> pd.DataFrame:
    """The ``ALL`` rows of a result table: one per method, task and split."""
    return table[table.difficulty == ALL].reset_index(drop=True)


def comparison(table: pd.DataFrame, split: str | None = None, models: Sequence[str] = MODELS) -> pd.DataFrame:
    """Per task (``ALL`` rows of ``split``, or of the table's only split): the main model's accuracy and interval
    beside chance, its best baseline (``best_baselines``) and each ablation, and whether its interval's low end
    clears them (``above_best_baseline``, ``above_ablations``); ``verdict`` is False where the held-out books are
    fewer than MIN_BOOKS (``books``): no interval over samples that few clusters supports one, and those two columns
    then say nothing."""
    rows = overall(table)
    rows = rows[rows.split == split] if split is not None else rows
    best = best_baselines(rows, models).reset_index(level="split", drop=True)
    out = []
    for task in [t for t in TASKS if t in set(rows.task)]:
        part = rows[rows.task == task].set_index("method")
        books = int(part.books.max())
        entry: dict[str, Any] = dict(task=task, chance=float(part.chance.iloc[0]), n=int(part.n.max()), books=books)
        if task in best.index:
            entry.update(
                best_baseline=best.loc[task, "method"], best_baseline_accuracy=float(best.loc[task, "accuracy"])
            )
        entry.update({name: float(part.loc[name, "accuracy"]) for name in models if name in part.index})
        if models[0] in part.index:
            main = part.loc[models[0]]
            entry.update(low=float(main.low), high=float(main.high))
            entry["above_best_baseline"] = bool(main.low > entry.get("best_baseline_accuracy", -1.0))
            ablations = [entry[m] for m in models[1:] if m in entry]
            entry["above_ablations"] = bool(ablations) and bool(main.low > max(ablations))
            entry["verdict"] = books >= MIN_BOOKS
        out.append(entry)
    return pd.DataFrame(out)


def best_baselines(table: pd.DataFrame, models: Sequence[str] = MODELS) -> pd.DataFrame:
    """Per task and split, the most accurate method of a result table's ``ALL`` rows that is neither chance nor a
    trained model: the bar a model's figure must clear to mean something. Indexed by (task, split)."""
    rows = overall(table)
    rows = rows[~rows.method.isin([*models, "chance"])]
    if rows.empty:
        return rows.set_index(["task", "split"])
    best = rows.loc[rows.groupby(["task", "split"], sort=False).accuracy.idxmax()]
    return best.set_index(["task", "split"])
