"""Notebook 05's task figures: every method's results on the test books in one table with book-level intervals, the
verdicts against the best baseline and the ablations, a ComicsPAP-style total, the reading-order breakdown, and
``metrics.json`` with its provenance.

Samples of one book are not independent (one story, one artist, one cast), so every interval here resamples books,
not samples (``comicnb.metrics.bootstrap_interval``). The per-sample results come from
``comicnb.stage4.baselines.run_baselines`` and ``comicnb.stage4.scoring.model_results`` (both ``Result``s);
``comicnb.stage4.results`` makes the table.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import yaml

from comicnb.checkpoint import file_sha256
from comicnb.metrics import MIN_BOOKS, total_accuracy
from comicnb.paths import git_revision
from comicnb.stage4.config import MAIN, MODELS
from comicnb.stage4.results import ALL, READING_ORDER, Result, interval_row
from comicnb.stage4.tasks import TASKS, TaskSample, TaskSet


def verdicts(compare: pd.DataFrame, books: int) -> list[str]:
    """One line per task of a ``comparison``: whether the main model's interval clears its best baseline and its
    ablations, or no verdict where the held-out books are fewer than MIN_BOOKS; and a last line then saying why."""
    lines = []
    for row in compare.itertuples(index=False):
        figure = f"{row.task}: {row.stage4:.3f} [{row.low:.3f}, {row.high:.3f}]"
        bar = f"({row.best_baseline} {row.best_baseline_accuracy:.3f})"
        if not getattr(row, "verdict", True):
            lines.append(f"{figure}, best baseline {bar}: no verdict on {row.books} books")
        elif row.above_best_baseline and row.above_ablations:
            lines.append(f"{figure} clears its best baseline {bar} and the ablations")
        elif row.above_best_baseline:
            lines.append(
                f"{figure} clears its best baseline {bar} but not every ablation: the transformer is not what helps"
            )
        else:
            lines.append(f"{figure} does NOT clear its best baseline {bar}: not a result")
    if books < MIN_BOOKS:
        lines.append(
            f"\nOnly {books} held-out books: a book-level interval needs at least {MIN_BOOKS}, so the intervals above "
            "are the samples' own (they count every panel as independent, which panels of one book are not) and no "
            "verdict is drawn. The study profile (`make demo PROFILE=study`, 45 test books) is the one to quote; its "
            "figures are in docs/results.md."
        )
    return lines


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


def reading_order_samples(samples: pd.DataFrame, task_set: TaskSet, truth: Mapping[str, Mapping]) -> pd.DataFrame:
    """The reading-order rows of ``samples`` with what splits them: ``layout`` and ``reading`` (the sidecar's page
    truth, "unknown" without one), ``page_kind`` (regular or ambiguous, PAGE_KINDS), ``direction`` (the book's,
    "unlabelled" where the corpus does not say), ``naive_sort_right`` (whether the direction-aware (y, x) sort gets
    the page's exact order, from that baseline's own rows) and ``all`` (one group of every page)."""
    order = samples[samples.task == READING_ORDER].copy()
    by_id = {s.sample_id: s for s in task_set.samples}
    pages = {i: s.built_from.get("page", "") for i, s in by_id.items()}
    order["layout"] = [str(truth.get(pages[i], {}).get("layout") or "unknown") for i in order.sample_id]
    order["reading"] = [str(truth.get(pages[i], {}).get("reading") or "unknown") for i in order.sample_id]
    order["page_kind"] = [PAGE_KINDS.get(reading, "unknown") for reading in order.reading]
    order["direction"] = [by_id[i].direction or "unlabelled" for i in order.sample_id]
    naive = samples[(samples.task == READING_ORDER) & (samples.method == "yx_sort_direction")]
    right = dict(zip(naive.sample_id, naive.correct > 0.5))
    order["naive_sort_right"] = [right.get(i) for i in order.sample_id]
    order["all"] = "all pages"
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
    reading-order samples split by the column ``by`` (all, layout, direction or naive_sort_right)."""
    rows = []
    for (value, method), part in order[order.method.isin(methods)].groupby([by, "method"], sort=True):
        rows.append({by: value, "method": method, **interval_row(part, "bootstrap", level, n_resamples, seed)})
    return pd.DataFrame(rows)


READING_ORDER_METHODS = ("yx_sort", "yx_sort_direction", "geometry", *MODELS)
SPLITS_OF_ORDER = ("all", "page_kind", "reading", "naive_sort_right", "layout", "direction")
# A page whose layout admits one reading order is regular; a grid, read across its rows or down its columns with
# nothing in the boxes to say which, is ambiguous: only the content orders it (sidecar version 3).
PAGE_KINDS = {"fixed": "regular", "across": "ambiguous", "down": "ambiguous"}


def reading_order_tables(
    order: pd.DataFrame, level: float = 0.95, n_resamples: int = 2000, seed: int = 0
) -> dict[str, pd.DataFrame]:
    """``reading_order_table`` of every method scored on reading order, split each way of SPLITS_OF_ORDER."""
    methods = [m for m in READING_ORDER_METHODS if m in set(order.method)]
    return {by: reading_order_table(order, methods, by, level, n_resamples, seed) for by in SPLITS_OF_ORDER}


def disagreements(
    results: Sequence[Result], task_set: TaskSet, method: str = MAIN, other: str = "yx_sort_direction"
) -> list[tuple[TaskSample, dict[str, list[int]]]]:
    """The reading-order samples where ``method``'s predicted order differs from ``other``'s, with both orders:
    a list of (sample, {method: order, other: order})."""
    predicted = {r.method: dict(zip(r.sample_ids, r.predictions)) for r in results if r.task == READING_ORDER}
    mine, theirs = predicted.get(method, {}), predicted.get(other, {})
    return [
        (s, {method: list(mine[s.sample_id]), other: list(theirs[s.sample_id])})
        for s in task_set.samples
        if s.sample_id in mine and s.sample_id in theirs and list(mine[s.sample_id]) != list(theirs[s.sample_id])
    ]


# -------------------------------------------------------------------------------------------------- metrics.json


def tasks_section(table: pd.DataFrame, models: Sequence[str] = MODELS) -> dict[str, Any]:
    """``metrics.json``'s ``tasks``: per task the main model's accuracy, ci95, chance, every baseline, the
    ablations, n, books, the accuracy per difficulty, every method's interval (``intervals``: method -> [low, high]),
    what kind of interval they are (``interval``: ``bootstrap`` over books, ``wilson``, or ``few_books`` below
    MIN_BOOKS books: at least the samples' own interval) and whether a verdict may be drawn (``verdict``)."""
    rows = table[table.difficulty == ALL]
    section: dict[str, Any] = {}
    for task in [t for t in TASKS if t in set(rows.task)]:
        part = rows[rows.task == task].set_index("method")
        entry: dict[str, Any] = dict(
            chance=_number(part.chance.iloc[0]),
            baselines={m: _number(part.loc[m, "accuracy"]) for m in part.index if m not in models},
            n=int(part.n.max()),
            books=int(part.books.max()),
            intervals={m: [_number(part.loc[m, "low"]), _number(part.loc[m, "high"])] for m in part.index},
            interval=str(part.interval.iloc[0]) if "interval" in part else None,
            verdict=int(part.books.max()) >= MIN_BOOKS,
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


def provenance(
    run_dir: Path, split: str, models: Mapping[str, Path], view_provenance: Mapping[str, Any], bootstrap: dict
) -> dict[str, Any]:
    """``metrics.json``'s ``provenance``: the run, its profile (the runner's last invocation) and parameters, the
    scored split, each checkpoint's path and SHA-256, the store's checkpoint hash, the git revision and how the
    intervals were drawn."""
    summary, params = run_dir / "summary.json", run_dir / "params.yaml"
    history = json.loads(summary.read_text()).get("history", []) if summary.is_file() else []
    return dict(
        run=str(run_dir),
        profile=history[-1].get("profile") if history else None,
        split=split,
        git_revision=git_revision(),
        checkpoints={
            name: dict(path=str(path.relative_to(run_dir)), sha256=file_sha256(path)) for name, path in models.items()
        },
        store_checkpoint_sha256=view_provenance.get("store_checkpoint_sha256"),
        params=yaml.safe_load(params.read_text()) if params.is_file() else {},
        bootstrap=dict(bootstrap),
    )


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


def other_run(spec: str, this_run: str | Path, outputs: str | Path) -> Path | None:
    """The run folder to set beside this one: a path, or ``latest:<profile>`` for the newest finished run of that
    profile under ``outputs`` (a folder ``<profile>-*`` with a metrics.json, this run left out); None when none is."""
    if not spec:
        return None
    if spec.startswith("latest:"):
        profile = spec.removeprefix("latest:")
        found = [
            p.parent
            for p in Path(outputs).glob(f"{profile}-*/metrics.json")
            if p.parent.resolve() != Path(this_run).resolve()
        ]
        return max(found, key=lambda p: (p / "metrics.json").stat().st_mtime) if found else None
    path = Path(spec)
    return path if (path / "metrics.json").is_file() else None


def beside(this: Mapping[str, Any], other: Mapping[str, Any], names: tuple[str, str]) -> dict[str, pd.DataFrame]:
    """Two runs' metrics side by side: per task, Stage 4, the no-transformer ablation and the best no-learning
    baseline of each, with Stage 4's difference; per retrieval query, recall@1 and mAP of each with the difference.
    ``names`` label the columns (this run's first)."""
    a, b = names
    rows = []
    for task in dict.fromkeys([*this.get("tasks", {}), *other.get("tasks", {})]):
        row: dict[str, Any] = {"task": task}
        for name, metrics in ((a, this), (b, other)):
            entry = metrics.get("tasks", {}).get(task)
            if entry is None:
                row.update({f"{name} n": 0, f"{name} stage4": None, f"{name} no_transformer": None})
                continue
            baselines = {k: v for k, v in (entry.get("baselines") or {}).items() if k != "chance" and v is not None}
            best = max(baselines, key=baselines.get) if baselines else None
            row.update(
                {
                    f"{name} n": entry.get("n"),
                    f"{name} stage4": entry.get("accuracy"),
                    f"{name} no_transformer": entry.get("no_transformer"),
                    f"{name} best baseline": f"{best} {baselines[best]:.3f}" if best else "",
                }
            )
        if row.get(f"{a} stage4") is not None and row.get(f"{b} stage4") is not None:
            row["stage4 difference"] = row[f"{a} stage4"] - row[f"{b} stage4"]
        rows.append(row)
    keys = ["query", "method", "label"]
    tables = [pd.DataFrame(m.get("retrieval", {}).get("table", [])) for m in (this, other)]
    if all(len(t) for t in tables):
        measures = ["recall@1", "map"]
        retrieval = tables[0][keys + measures].merge(tables[1][keys + measures], on=keys, suffixes=(f" {a}", f" {b}"))
        for m in measures:
            retrieval[f"{m} difference"] = retrieval[f"{m} {a}"] - retrieval[f"{m} {b}"]
    else:
        retrieval = pd.DataFrame()
    return {"tasks": pd.DataFrame(rows), "retrieval": retrieval}
