"""Accuracy and its intervals, ties scored as a uniform pick, and totals over tasks: one implementation for Stage 4's
baselines and models, notebook 05's report and the COMICS scorer.

Intervals: ``wilson`` (a binomial proportion's score interval, per sample) and ``bootstrap`` (percentile bootstrap
resampling *groups*: a sample's book, since samples of one book share a story, an artist and a cast; each sample its
own group where no groups are given). A bootstrap over fewer than MIN_BOOKS groups resamples a handful of clusters
and comes out far narrower than the truth (two books: every resample is one of three mixes of the same two
accuracies); ``clustered_interval`` then reports at least the samples' own Wilson interval and says so.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from statistics import NormalDist

import numpy as np
from numpy.typing import ArrayLike

INTERVALS = ("wilson", "bootstrap")
MIN_BOOKS = 10  # fewer held-out books than this: no book-level interval, and no verdict drawn from one
FEW_BOOKS = "few_books"  # the interval kind reported below MIN_BOOKS (see clustered_interval)
TIE = dict(rtol=1e-6, atol=1e-6)  # scores this close count as a tie: batched float maths is not bit-exact per row


def accuracy(correct: ArrayLike) -> float:
    """Mean of a (S,) correctness array: bool, 0/1, or fractional credit in [0, 1] (a tie scored as a share)."""
    values = np.asarray(correct, dtype=np.float64)
    if values.ndim != 1:
        raise ValueError(f"correct must be one-dimensional (S,), got shape {values.shape}")
    if len(values) == 0:
        raise ValueError("correct is empty: accuracy needs at least one sample")
    if np.isnan(values).any() or (values < 0).any() or (values > 1).any():
        raise ValueError("correct must hold values in [0, 1] and no NaN")
    return float(values.mean())


def expected_hits(scores: ArrayLike, answers: ArrayLike) -> np.ndarray:
    """(N,) chance of hitting each row's answer when picking uniformly among its top-scored candidates, for (N, C)
    scores: a scorer that cannot tell candidates apart scores chance, not whatever index its argmax prefers."""
    scores = np.asarray(scores, dtype=np.float64)
    answers = np.asarray(answers, dtype=np.int64)
    top = np.isclose(scores, scores.max(axis=1, keepdims=True), **TIE)
    return top[np.arange(len(answers)), answers] / top.sum(axis=1)


def expected_hit(scores: ArrayLike, answer: int) -> tuple[float, int]:
    """(expected_hits of one sample, the picked index: the first of the top-scored, -1 where every candidate ties)."""
    scores = np.asarray(scores, dtype=np.float64).reshape(1, -1)
    top = np.flatnonzero(np.isclose(scores[0], scores.max(), **TIE))
    hit = float(expected_hits(scores, [answer])[0]) if 0 <= answer < scores.shape[1] else 0.0
    return hit, int(top[0]) if len(top) < scores.shape[1] or scores.shape[1] == 1 else -1


def wilson_interval(correct: ArrayLike, level: float = 0.95) -> tuple[float, float]:
    """(low, high) score interval of a binomial proportion; fractional successes allowed (a tie as a share)."""
    values = np.asarray(correct, dtype=np.float64).reshape(-1)
    n, accuracy = len(values), float(values.mean())
    z = NormalDist().inv_cdf(0.5 + level / 2)
    centre = (accuracy + z * z / (2 * n)) / (1 + z * z / n)
    half = z / (1 + z * z / n) * math.sqrt(accuracy * (1 - accuracy) / n + z * z / (4 * n * n))
    low = 0.0 if accuracy == 0 else max(0.0, centre - half)  # exact bounds where rounding would leave 1e-17
    high = 1.0 if accuracy == 1 else min(1.0, centre + half)
    return low, high


def bootstrap_interval(
    values: ArrayLike,
    groups: ArrayLike | None = None,
    statistic: Callable[[np.ndarray], float] = np.mean,
    level: float = 0.95,
    n_resamples: int = 2000,
    seed: int = 0,
) -> tuple[float, float]:
    """(low, high) percentile bootstrap interval of ``statistic`` over (S,) ``values``, resampling whole groups.

    ``groups`` (S,) names each sample's group (its book): samples of one book are not independent, so each resample
    draws as many groups as there are, with replacement, and concatenates all their values (a group drawn twice
    counts twice); None makes each sample its own group. The interval is widened to take in the point value where
    the percentiles miss it. With a single group every resample is the data itself, so the interval is degenerate:
    the point value at both ends. The same ``seed`` gives the same interval.
    """
    values = np.asarray(values, dtype=np.float64)
    groups = np.arange(len(values)) if groups is None else np.asarray(groups)
    if values.ndim != 1 or groups.ndim != 1:
        raise ValueError(f"values and groups must be one-dimensional, got shapes {values.shape} and {groups.shape}")
    if len(values) != len(groups):
        raise ValueError(f"values and groups differ in length: {len(values)} against {len(groups)}")
    if len(values) == 0:
        raise ValueError("values is empty: a bootstrap needs at least one sample")
    if np.isnan(values).any():
        raise ValueError("values contain NaN")
    if not 0 < level < 1:
        raise ValueError(f"level must lie strictly between 0 and 1, got {level}")
    if n_resamples < 1:
        raise ValueError(f"n_resamples must be at least 1, got {n_resamples}")
    _, group_of = np.unique(groups, return_inverse=True)
    members = np.split(np.argsort(group_of, kind="stable"), np.cumsum(np.bincount(group_of))[:-1])  # one per group
    drawn = np.random.default_rng(seed).integers(0, len(members), size=(n_resamples, len(members)))
    stats = np.array([statistic(values[np.concatenate([members[g] for g in row])]) for row in drawn])
    point = float(statistic(values))
    tail = (1 - level) / 2
    low, high = np.quantile(stats, [tail, 1 - tail])
    return float(min(low, point)), float(max(high, point))


def accuracy_interval(
    correct: ArrayLike,
    level: float = 0.95,
    method: str = "wilson",
    groups: ArrayLike | None = None,
    n_resamples: int = 2000,
    seed: int = 0,
) -> tuple[float, float, float]:
    """(accuracy, low, high) of per-sample correctness in [0, 1]: ``wilson``, or ``bootstrap`` over ``groups`` (each
    sample its own group where None); NaNs with no samples."""
    if method not in INTERVALS:
        raise ValueError(f"method must be one of {', '.join(INTERVALS)}, not {method!r}")
    values = np.asarray(correct, dtype=np.float64).reshape(-1)
    if len(values) == 0:
        return math.nan, math.nan, math.nan
    if method == "wilson":
        low, high = wilson_interval(values, level)
    else:
        low, high = bootstrap_interval(values, groups, np.mean, level, n_resamples, seed)
    return float(values.mean()), low, high


def clustered_interval(
    correct: ArrayLike, groups: ArrayLike, level: float = 0.95, n_resamples: int = 2000, seed: int = 0
) -> tuple[float, float, float, str]:
    """(accuracy, low, high, kind) of per-sample correctness clustered in ``groups`` (books): the group bootstrap
    (kind ``bootstrap``) from MIN_BOOKS groups up; below that, the union of the bootstrap's interval and the samples'
    own Wilson interval (kind FEW_BOOKS), never narrower than either, and still narrower than the truth when the
    books differ: no verdict should rest on it."""
    values = np.asarray(correct, dtype=np.float64).reshape(-1)
    accuracy, low, high = accuracy_interval(values, level, "bootstrap", groups, n_resamples, seed)
    if len(values) == 0 or len(np.unique(np.asarray(groups))) >= MIN_BOOKS:
        return accuracy, low, high, "bootstrap"
    wilson_low, wilson_high = wilson_interval(values, level)
    return accuracy, min(low, wilson_low), max(high, wilson_high), FEW_BOOKS


def book_accuracy_interval(
    correct: ArrayLike, books: ArrayLike, level: float = 0.95, n_resamples: int = 2000, seed: int = 0
) -> dict[str, float]:
    """Accuracy of (S,) ``correct`` with its book-level bootstrap interval (see bootstrap_interval).

    Keys: accuracy, low, high, n (samples) and books (distinct books).
    """
    point = accuracy(correct)
    low, high = bootstrap_interval(correct, books, np.mean, level, n_resamples, seed)
    return dict(accuracy=point, low=low, high=high, n=len(np.asarray(books)), books=len(np.unique(books)))


def total_accuracy(per_task: Mapping[str, float], counts: Mapping[str, int]) -> float:
    """ComicsPAP's overall accuracy: per-task accuracies weighted by their sample counts, i.e. pooled over samples.

    This is what llabres/ComicsPAP (evaluate.py, random_baseline.py) reports as ``overall_accuracy``:
    sum(count * accuracy) / sum(count), so a large task weighs more. See mean_task_accuracy for the unweighted mean.
    """
    if not per_task:
        raise ValueError("per_task is empty: a total needs at least one task")
    if set(per_task) != set(counts):
        raise ValueError(f"per_task and counts name different tasks: {sorted(per_task)} against {sorted(counts)}")
    scores = np.array([per_task[t] for t in per_task], dtype=np.float64)
    weights = np.array([counts[t] for t in per_task], dtype=np.float64)
    _check_task_accuracies(scores)
    if (weights < 1).any():
        raise ValueError(f"every task needs a positive sample count, got {dict(counts)}")
    return float((scores * weights).sum() / weights.sum())


def mean_task_accuracy(per_task: Mapping[str, float]) -> float:
    """Unweighted mean of per-task accuracies: every task counts once, however many samples it has."""
    if not per_task:
        raise ValueError("per_task is empty: a mean needs at least one task")
    scores = np.array(list(per_task.values()), dtype=np.float64)
    _check_task_accuracies(scores)
    return float(scores.mean())


def _check_task_accuracies(scores: np.ndarray) -> None:
    """Raise unless every per-task accuracy lies in [0, 1] (no NaN)."""
    if np.isnan(scores).any() or (scores < 0).any() or (scores > 1).any():
        raise ValueError(f"per-task accuracies must lie in [0, 1] with no NaN, got {scores.tolist()}")
