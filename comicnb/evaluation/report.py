"""Notebook 05's task figures: per-sample results of every model and baseline -> accuracy with a book-level bootstrap
interval per task and difficulty, a ComicsPAP-style total, the reading-order breakdown, and ``metrics.json``.

Samples of one book are not independent (one story, one artist, one cast), so every interval here resamples books,
not samples (``metrics.bootstrap_interval``). A method's per-sample results come from
``comicnb.stage4.baselines.run_baselines`` and ``comicnb.stage4.scoring.model_results`` (both ``BaselineResult``);
``sample_frame`` puts them in one long table, one row per method and sample.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from comicnb.evaluation.metrics import bootstrap_interval, total_accuracy
from comicnb.stage4.baselines import BaselineResult
from comicnb.stage4.config import ABLATIONS
from comicnb.stage4.scoring import MAIN
from comicnb.stage4.tasks import TASKS, TaskSet

ALL = "all"
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
TASK_COLUMNS = [
    "method",
    "task",
    "difficulty",
    "n",
    "books",
    "accuracy",
    "low",
    "high",
    "chance",
    "pairwise",
    "kendall_tau",
]
MODEL_NAMES = (MAIN, *ABLATIONS)  # the main model, then its ablations
NOT_BASELINES = frozenset(MODEL_NAMES)


def sample_frame(results: Iterable[BaselineResult], sets: Mapping[Any, TaskSet] | Iterable[TaskSet]) -> pd.DataFrame:
    """One row per method and sample (SAMPLE_COLUMNS): the method's correctness (reading order: exact page order,
    with its pairwise accuracy and Kendall tau), the sample's chance and its book."""
    task_sets = list(sets.values()) if isinstance(sets, Mapping) else list(sets)
    books = {s.sample_id: s.book_id for task_set in task_sets for s in task_set.samples}
    frames = []
    for result in results:
        n = len(result.sample_ids)
        missing = [i for i in result.sample_ids if i not in books]
        if missing:
            raise KeyError(f"{result.baseline} scored samples the given sets do not hold, e.g. {missing[0]!r}")
        frames.append(
            pd.DataFrame(
                dict(
                    method=result.baseline,
                    task=result.task,
                    split=result.split,
                    sample_id=result.sample_ids,
                    book_id=[books[i] for i in result.sample_ids],
                    difficulty=result.difficulty,
                    correct=np.asarray(result.correct, dtype=np.float64),
                    chance=np.asarray(result.chance, dtype=np.float64),
                    pairwise=result.pairwise if result.pairwise is not None else np.full(n, np.nan),
                    kendall_tau=result.kendall_tau if result.kendall_tau is not None else np.full(n, np.nan),
                )
            )
        )
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(columns=SAMPLE_COLUMNS)


def interval_row(part: pd.DataFrame, level: float, n_resamples: int, seed: int) -> dict[str, float]:
    """n, books, accuracy and its book-level bootstrap interval, mean chance, pairwise and tau of some samples."""
    correct = part.correct.to_numpy(dtype=np.float64)
    low, high = bootstrap_interval(correct, part.book_id.to_numpy(), level=level, n_resamples=n_resamples, seed=seed)
    return dict(
        n=len(part),
        books=int(part.book_id.nunique()),
        accuracy=float(correct.mean()),
        low=low,
        high=high,
        chance=float(part.chance.mean()),
        pairwise=float(part.pairwise.mean()) if part.pairwise.notna().any() else math.nan,
        kendall_tau=float(part.kendall_tau.mean()) if part.kendall_tau.notna().any() else math.nan,
    )


def task_table(
    samples: pd.DataFrame, level: float = 0.95, n_resamples: int = 2000, seed: int = 0, by_difficulty: bool = True
) -> pd.DataFrame:
    """One row per method, task and difficulty (``all`` over every difficulty, and each one where a task has
    several): accuracy with its book-level bootstrap interval (TASK_COLUMNS)."""
    rows = []
    for (method, task), part in samples.groupby(["method", "task"], sort=False):
        rows.append(dict(method=method, task=task, difficulty=ALL, **interval_row(part, level, n_resamples, seed)))
        kinds = sorted(set(part.difficulty) - {"-"})
        if by_difficulty and len(kinds) > 1:
            for kind in kinds:
                chosen = part[part.difficulty == kind]
                rows.append(
                    dict(method=method, task=task, difficulty=kind, **interval_row(chosen, level, n_resamples, seed))
                )
    return pd.DataFrame(rows, columns=TASK_COLUMNS)


def comparison(table: pd.DataFrame, models: Sequence[str] = MODEL_NAMES) -> pd.DataFrame:
    """Per task (``all`` rows): the main model's accuracy and interval beside chance, its best baseline (the most
    accurate method that is not a trained model or chance) and each ablation, and whether its interval clears
    them."""
    rows = table[table.difficulty == ALL]
    out = []
    for task in [t for t in TASKS if t in set(rows.task)]:
        part = rows[rows.task == task].set_index("method")
        baselines = part[~part.index.isin(list(NOT_BASELINES) + ["chance"])]
        entry: dict[str, Any] = dict(task=task, chance=float(part.chance.iloc[0]), n=int(part.n.max()))
        if len(baselines):
            best = baselines.accuracy.idxmax()
            entry.update(best_baseline=best, best_baseline_accuracy=float(baselines.loc[best, "accuracy"]))
        for name in models:
            if name in part.index:
                entry[name] = float(part.loc[name, "accuracy"])
        if models[0] in part.index:
            main = part.loc[models[0]]
            entry.update(low=float(main.low), high=float(main.high))
            entry["above_best_baseline"] = bool(main.low > entry.get("best_baseline_accuracy", -1.0))
            ablations = [entry[m] for m in models[1:] if m in entry]
            entry["above_ablations"] = bool(ablations) and bool(main.low > max(ablations))
        out.append(entry)
    return pd.DataFrame(out)


def totals(table: pd.DataFrame, tasks: Sequence[str] | None = None) -> pd.DataFrame:
    """A ComicsPAP-style total per method, pooled over the samples of the tasks it was scored on (their ``all``
    rows; ``metrics.total_accuracy``), with the number of tasks; compare methods with the same task count."""
    rows = table[table.difficulty == ALL]
    if tasks is not None:
        rows = rows[rows.task.isin(tasks)]
    out = []
    for method, part in rows.groupby("method", sort=False):
        accuracy = dict(zip(part.task, part.accuracy))
        counts = dict(zip(part.task, part.n.astype(int)))
        out.append(dict(method=method, tasks=len(part), n=int(part.n.sum()), total=total_accuracy(accuracy, counts)))
    return pd.DataFrame(out).sort_values(["tasks", "total"], ascending=False, ignore_index=True)


# ----------------------------------------------------------------------------------------------- reading order


def page_truth(data_root: str | Path | None) -> dict[str, dict[str, Any]]:
    """``"book/page"`` -> the sidecar's page truth (layout, reading_direction, naive_order_correct) of a synthetic
    corpus; empty for a corpus without a sidecar (real data)."""
    path = Path(data_root) / "ground_truth.json" if data_root else None
    if path is None or not path.is_file():
        return {}
    truth = json.loads(path.read_text(encoding="utf-8"))
    return {
        f"{book_id}/{name}": {k: page.get(k) for k in ("layout", "reading_direction", "naive_order_correct")}
        for book_id, book in truth.get("books", {}).items()
        for name, page in book.get("pages", {}).items()
    }


def reading_order_samples(samples: pd.DataFrame, task_set: TaskSet, truth: Mapping[str, Mapping]) -> pd.DataFrame:
    """The reading-order rows of ``samples`` with what splits them: ``layout`` (the sidecar's, "unknown" without
    one), ``direction`` (the book's, "unlabelled" where the corpus does not say), and ``naive_sort_right`` (whether
    the direction-aware (y, x) sort gets the page's exact order, from that baseline's own rows)."""
    order = samples[samples.task == READING_ORDER].copy()
    by_id = {s.sample_id: s for s in task_set.samples}
    pages = {i: s.built_from.get("page", "") for i, s in by_id.items()}
    order["layout"] = [str(truth.get(pages[i], {}).get("layout") or "unknown") for i in order.sample_id]
    order["direction"] = [by_id[i].direction or "unlabelled" for i in order.sample_id]
    naive = samples[(samples.task == READING_ORDER) & (samples.method == "yx_sort_direction")]
    right = dict(zip(naive.sample_id, naive.correct > 0.5))
    order["naive_sort_right"] = [right.get(i) for i in order.sample_id]
    return order


def reading_order_table(
    order: pd.DataFrame,
    methods: Sequence[str],
    by: str,
    level: float = 0.95,
    n_resamples: int = 2000,
    seed: int = 0,
) -> pd.DataFrame:
    """Exact page order (with its book-level interval), pairwise accuracy and Kendall tau of ``methods`` on the
    reading-order samples split by the column ``by`` (layout, direction or naive_sort_right)."""
    rows = []
    for (value, method), part in order[order.method.isin(methods)].groupby([by, "method"], sort=True):
        rows.append({by: value, "method": method, **interval_row(part, level, n_resamples, seed)})
    return pd.DataFrame(rows)


# -------------------------------------------------------------------------------------------------- metrics.json


def tasks_section(table: pd.DataFrame, models: Sequence[str] = MODEL_NAMES) -> dict[str, Any]:
    """``metrics.json``'s ``tasks``: per task the main model's accuracy, ci95, chance, every baseline, the
    ablations, n and the accuracy per difficulty."""
    rows = table[table.difficulty == ALL]
    section: dict[str, Any] = {}
    for task in [t for t in TASKS if t in set(rows.task)]:
        part = rows[rows.task == task].set_index("method")
        entry: dict[str, Any] = dict(
            chance=_number(part.chance.iloc[0]),
            baselines={m: _number(part.loc[m, "accuracy"]) for m in part.index if m not in NOT_BASELINES},
            n=int(part.n.max()),
            books=int(part.books.max()),
        )
        if models[0] in part.index:
            main = part.loc[models[0]]
            entry.update(accuracy=_number(main.accuracy), ci95=[_number(main.low), _number(main.high)])
            kinds = table[(table.task == task) & (table.method == models[0]) & (table.difficulty != ALL)]
            entry["difficulty"] = {k: _number(a) for k, a in zip(kinds.difficulty, kinds.accuracy)}
        for name in models[1:]:
            if name in part.index:
                entry[name] = _number(part.loc[name, "accuracy"])
        if task == READING_ORDER:
            entry["pairwise"] = {m: _number(part.loc[m, "pairwise"]) for m in part.index}
            entry["kendall_tau"] = {m: _number(part.loc[m, "kendall_tau"]) for m in part.index}
        section[task] = entry
    return section


def write_metrics(path: str | Path, sections: Mapping[str, Any]) -> Path:
    """Write ``metrics.json`` (sections: tasks, reading_order, retrieval, comics, provenance, ...) with NaN as null,
    so any JSON reader takes it."""
    path = Path(path)
    path.write_text(json.dumps(_plain(dict(sections)), indent=2, sort_keys=False) + "\n", encoding="utf-8")
    return path


def _number(value: Any) -> float | None:
    """A float, or None for NaN (JSON has no NaN)."""
    value = float(value)
    return None if math.isnan(value) else value


def _plain(value: Any) -> Any:
    """Numpy and pandas scalars, tuples and NaN turned into what json writes."""
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple | np.ndarray):
        return [_plain(v) for v in value]
    if isinstance(value, bool | np.bool_):
        return bool(value)
    if isinstance(value, int | np.integer):
        return int(value)
    if isinstance(value, float | np.floating):
        return _number(value)
    if isinstance(value, pd.DataFrame):
        return _plain(value.to_dict("records"))
    return value
