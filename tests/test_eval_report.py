"""Notebook 05's task figures on hand-made results: the long per-sample table, book-level intervals, the comparison
with the best baseline and the ablations, the verdicts, the pooled total, the reading-order split and metrics.json."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from comicnb.corpus.truth import read_truth
from comicnb.evaluation.report import (
    reading_order_samples,
    reading_order_table,
    tasks_section,
    totals,
    verdicts,
    write_metrics,
)
from comicnb.metrics import bootstrap_interval, wilson_interval
from comicnb.stage4.results import Result, comparison, result_table, sample_frame
from comicnb.stage4.tasks import Candidate, TaskSample, TaskSet


def picking_set(books: list[str]) -> TaskSet:
    """Panel picking samples, one per entry of ``books``, five candidates each."""
    samples = [
        TaskSample(
            task="panel_picking",
            sample_id=f"panel_picking/{i}",
            split="test",
            book_id=book,
            context=[1, 2],
            candidates=[Candidate(panel_id=k) for k in range(5)],
            answer=0,
            difficulty="hard" if i % 2 else "easy",
            slot=1,
        )
        for i, book in enumerate(books)
    ]
    return TaskSet("panel_picking", "test", samples)


def result(name: str, task_set: TaskSet, correct: list[float], **extra: object) -> Result:
    return Result(
        method=name,
        task=task_set.task,
        split=task_set.split,
        sample_ids=[s.sample_id for s in task_set.samples],
        book_ids=[s.book_id for s in task_set.samples],
        difficulty=[s.difficulty for s in task_set.samples],
        correct=np.asarray(correct, dtype=float),
        chance=np.array([s.chance for s in task_set.samples]),
        predictions=[0] * len(task_set),
        scores=[np.zeros(1)] * len(task_set),
        **extra,
    )


BOOKS = ["a", "a", "b", "b", "c", "c", "d", "d"]


@pytest.fixture()
def picking() -> TaskSet:
    return picking_set(BOOKS)


def test_the_sample_frame_carries_books(picking: TaskSet) -> None:
    frame = sample_frame([result("stage4", picking, [1] * 8)])
    assert frame.book_id.tolist() == BOOKS and set(frame.method) == {"stage4"}
    assert frame.chance.tolist() == [0.2] * 8 and frame.pairwise.isna().all()


def test_intervals_resample_books(picking: TaskSet) -> None:
    # Books a and b right on both samples, c and d wrong: accuracy 0.5; drawing 4 books with replacement can give 0
    # or 4 right books (each with chance 1/16), so a 95 % book-level interval spans [0, 1].
    clustered = [1, 1, 1, 1, 0, 0, 0, 0]
    table = result_table([result("stage4", picking, clustered)], "bootstrap", n_resamples=4000)
    row = table[table.difficulty == "all"].iloc[0]
    assert (row.n, row.books, row.accuracy) == (8, 4, 0.5)
    assert row.low == 0.0 and row.high == 1.0
    # Per difficulty: easy are samples 0, 2, 4, 6 (two right), hard 1, 3, 5, 7 (two right).
    kinds = table[table.difficulty != "all"].set_index("difficulty")
    assert kinds.loc["easy", "accuracy"] == 0.5 and kinds.loc["hard", "n"] == 4


def test_comparison_names_the_best_baseline_and_checks_the_ablations(picking: TaskSet) -> None:
    results = [
        result("stage4", picking, [1, 1, 1, 1, 1, 1, 1, 0]),  # 0.875
        result("no_transformer", picking, [1, 1, 0, 0, 1, 0, 0, 0]),  # 0.375
        result("stage3_cosine", picking, [1, 0, 1, 0, 1, 0, 0, 0]),  # 0.375
        result("colour_histogram", picking, [1, 0, 0, 0, 0, 0, 0, 0]),  # 0.125
        result("chance", picking, [0.2] * 8),
    ]
    table = result_table(results, "bootstrap", n_resamples=500)
    row = comparison(table).iloc[0]
    assert row.best_baseline == "stage3_cosine" and row.best_baseline_accuracy == 0.375
    assert row.stage4 == 0.875 and row.no_transformer == 0.375 and row.chance == pytest.approx(0.2)
    assert row.low > 0.375 and bool(row.above_best_baseline) and bool(row.above_ablations)
    # Four held-out books are too few for a book-level interval or a verdict: the line gives the figures only.
    assert row.books == 4 and not row.verdict
    lines = verdicts(comparison(table), books=4)
    assert len(lines) == 2 and "no verdict on 4 books" in lines[0] and "clears" not in lines[0]
    assert "Only 4 held-out books" in lines[1] and "at least 10" in lines[1]
    # Pooled total: picking has 8 samples at 0.875; a second task of 2 samples at 0 pulls it to 7 / 10.
    second = TaskSet("visual_closure", "test", [])
    extra = pd.DataFrame(
        dict(method="stage4", task="visual_closure", split="test", difficulty="all", n=2, books=1, accuracy=0.0)
        | dict(low=0.0, high=0.0)
        | dict(chance=0.2, pairwise=math.nan, kendall_tau=math.nan),
        index=[0],
    )
    assert len(second) == 0
    pooled = totals(pd.concat([table, extra], ignore_index=True)).set_index("method")
    assert pooled.loc["stage4", "total"] == pytest.approx(0.7) and pooled.loc["stage4", "tasks"] == 2


def test_by_split_keeps_the_interval_order_and_counts_whole(picking: TaskSet) -> None:
    from comicnb.stage4.results import by_split

    table = result_table([result("stage4", picking, [1] * 8), result("chance", picking, [0.2] * 8)])
    wide = by_split(table[table.difficulty == "all"], ["task", "method"], ["accuracy", "low", "high", "n"])
    assert list(dict.fromkeys(wide.columns.get_level_values(0))) == ["accuracy", "low", "high", "n"]
    assert str(wide[("n", "test")].dtype) == "Int64" and wide[("n", "test")].tolist() == [8, 8]


MANY_BOOKS = [f"book{i}" for i in range(12) for _ in range(2)]  # 12 books of two samples


def test_verdicts_from_enough_books() -> None:
    many = picking_set(MANY_BOOKS)
    right = [1] * 22 + [0] * 2  # 0.917
    baseline = [1, 0] * 12  # 0.5
    table = result_table([result("stage4", many, right), result("stage3_cosine", many, baseline)], "bootstrap")
    row = comparison(table).iloc[0]
    assert row.books == 12 and row.verdict and bool(row.above_best_baseline)
    assert set(table.interval) == {"bootstrap"}
    lines = verdicts(comparison(table), books=12)
    assert len(lines) == 1 and "clears its best baseline (stage3_cosine 0.500)" in lines[0]
    behind = result_table([result("stage4", many, [0, 1] * 12), result("stage3_cosine", many, right)], "bootstrap")
    assert "does NOT clear its best baseline" in verdicts(comparison(behind), books=12)[0]


def test_two_books_give_an_interval_at_least_as_wide_as_the_samples_own() -> None:
    # The demo's case: two held-out books of similar accuracy. A bootstrap over two books can only mix the two
    # books' accuracies, so it comes out far narrower than the samples' own Wilson interval; the table reports at
    # least the latter and marks it.
    two = picking_set(["a"] * 20 + ["b"] * 20)
    correct = [1] * 11 + [0] * 9 + [1] * 12 + [0] * 8  # 0.55 and 0.6
    raw = bootstrap_interval(np.asarray(correct, float), np.repeat(["a", "b"], 20))
    wilson = wilson_interval(np.asarray(correct, float))
    assert raw[1] - raw[0] < 0.1 < wilson[1] - wilson[0]  # the narrow interval the demo used to print
    row = result_table([result("stage4", two, correct)], "bootstrap").iloc[0]
    assert row.interval == "few_books" and row.books == 2
    assert row.low <= wilson[0] and row.high >= wilson[1] and row.low <= raw[0] and row.high >= raw[1]
    section = tasks_section(result_table([result("stage4", two, correct), result("chance", two, [0.2] * 40)]))
    assert section["panel_picking"]["verdict"] is False


def test_reading_order_splits_by_layout_direction_and_naive_sort(tmp_path: Path) -> None:
    truth = {
        "characters": {},
        "books": {
            "a": {"pages": {"p1": {"layout": "grid", "reading_direction": "ltr", "naive_order_correct": True}}},
            "b": {
                "pages": {
                    "p1": {
                        "layout": "staggered",
                        "reading": "down",
                        "reading_direction": "rtl",
                        "naive_order_correct": False,
                    }
                }
            },
        },
    }
    (tmp_path / "ground_truth.json").write_text(json.dumps(truth))
    samples = [
        TaskSample(
            task="reading_order",
            sample_id=f"reading_order/{book}/p1",
            split="test",
            book_id=book,
            context=[0, 1, 2],
            order=[0, 1, 2],
            direction=direction,
            built_from={"page": f"{book}/p1"},
        )
        for book, direction in (("a", "ltr"), ("b", "rtl"))
    ]
    order_set = TaskSet("reading_order", "test", samples)
    results = [
        result("stage4", order_set, [1, 1], pairwise=np.array([1.0, 1.0]), kendall_tau=np.array([1.0, 1.0])),
        result(
            "yx_sort_direction", order_set, [1, 0], pairwise=np.array([1.0, 2 / 3]), kendall_tau=np.array([1, 1 / 3])
        ),
    ]
    truth = read_truth(tmp_path, pd.DataFrame(columns=["book_id", "page_name"]))  # no stored page: the page truth
    frame = reading_order_samples(sample_frame(results), order_set, truth.pages)
    assert frame[frame.method == "stage4"].layout.tolist() == ["grid", "staggered"]
    # A version 2 sidecar has no reading: its page kind is unknown, not taken for regular.
    assert frame[frame.method == "stage4"].page_kind.tolist() == ["unknown", "ambiguous"]
    assert frame[frame.method == "stage4"].naive_sort_right.tolist() == [True, False]
    split = reading_order_table(frame, ["stage4", "yx_sort_direction"], "naive_sort_right", n_resamples=200)
    wrong = split[~split.naive_sort_right.astype(bool)].set_index("method")
    assert wrong.loc["stage4", "accuracy"] == 1.0 and wrong.loc["yx_sort_direction", "accuracy"] == 0.0
    assert wrong.loc["yx_sort_direction", "pairwise"] == pytest.approx(2 / 3)
    assert read_truth(tmp_path / "nowhere", []).pages == {}


def test_metrics_json_holds_the_task_section_without_nan(picking: TaskSet, tmp_path: Path) -> None:
    results = [
        result("stage4", picking, [1, 1, 1, 1, 1, 1, 1, 0]),
        result("no_transformer", picking, [1, 1, 0, 0, 1, 0, 0, 0]),
        result("stage3_cosine", picking, [1, 0, 1, 0, 1, 0, 0, 0]),
        result("chance", picking, [0.2] * 8),
    ]
    section = tasks_section(result_table(results, "bootstrap", n_resamples=200))
    entry = section["panel_picking"]
    assert entry["accuracy"] == 0.875 and entry["baselines"] == {"stage3_cosine": 0.375, "chance": 0.2}
    assert entry["no_transformer"] == 0.375 and entry["n"] == 8 and entry["books"] == 4
    assert entry["interval"] == "few_books" and entry["verdict"] is False  # 4 books: below metrics.MIN_BOOKS
    assert set(entry["difficulty"]) == {"easy", "hard"} and len(entry["ci95"]) == 2
    assert set(entry["intervals"]) == {"stage4", "no_transformer", "stage3_cosine", "chance"}
    assert entry["intervals"]["stage4"] == entry["ci95"]
    low, high = entry["intervals"]["no_transformer"]
    assert low <= 0.375 <= high and high - low > 0  # the ablations' intervals, which the table quotes beside it
    path = write_metrics(tmp_path / "metrics.json", {"tasks": section, "retrieval": {"x": float("nan")}})
    text = path.read_text()
    assert "NaN" not in text and json.loads(text)["retrieval"]["x"] is None
