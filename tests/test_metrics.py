"""The floor metrics (comicnb.metrics) on tiny hand-made cases; every expected number is worked out in a comment."""

import numpy as np
import pytest

from comicnb.metrics import (
    accuracy,
    book_accuracy_interval,
    bootstrap_interval,
    exact_order,
    kendall_tau,
    mean_average_precision,
    mean_task_accuracy,
    pairwise_accuracy,
    recall_at_k_labels,
    total_accuracy,
)

# ----------------------------------------------------------------------------------------------------------------
# Accuracy


def test_accuracy_of_bool_and_fractional_hits():
    assert accuracy(np.array([True, False, True, True])) == 0.75  # 3 hits of 4
    assert accuracy([1.0, 0.5, 0.0]) == 0.5  # (1 + 0.5 + 0) / 3, a tie credited as half a hit


@pytest.mark.parametrize(
    "bad, message",
    [([], "empty"), ([[1, 0]], "one-dimensional"), ([1, 2], r"\[0, 1\]"), ([1.0, np.nan], "NaN")],
)
def test_accuracy_rejects_bad_input(bad, message):
    with pytest.raises(ValueError, match=message):
        accuracy(bad)


# ----------------------------------------------------------------------------------------------------------------
# Book-level bootstrap


def test_group_bootstrap_is_wider_than_sample_bootstrap_when_books_agree_internally():
    # Four books of five samples; books a and b are all right, c and d all wrong: accuracy 10/20 = 0.5.
    values = np.repeat([1.0, 1.0, 0.0, 0.0], 5)
    books = np.repeat(["a", "b", "c", "d"], 5)
    # Drawing books: the mean is (right books drawn) / 4, Binomial(4, 1/2) / 4, so P(0) = P(1) = 1/16 = 6.25%, well
    # above the 2.5% tails: the 95% interval is [0, 1] (125 of 2000 expected draws at each end, the 2.5% quantile
    # sits at about the 50th).
    assert bootstrap_interval(values, books) == (0.0, 1.0)
    # Treating each sample as its own group ignores the clustering: the mean of 20 coin flips, whose Wilson 95%
    # interval is 0.5 -+ 0.2007 (z = 1.96, n = 20), width 0.401; the naive bootstrap lands close to that.
    low, high = bootstrap_interval(values, np.arange(20))
    assert 0.3 < high - low < 0.5
    assert low < 0.5 < high


def test_group_bootstrap_contains_the_point_and_repeats_with_a_seed():
    values = np.array([1, 1, 1, 0, 1, 0, 0], dtype=float)  # point 4/7, books of 4, 2 and 1 samples
    books = np.array(["a", "a", "a", "a", "b", "b", "c"])
    low, high = bootstrap_interval(values, books, seed=3)
    assert low <= 4 / 7 <= high
    assert bootstrap_interval(values, books, seed=3) == (low, high)
    # The seed is what varies: with few resamples, seeds 0 and 1 land on different upper percentiles.
    assert bootstrap_interval(values, books, n_resamples=200, seed=0) != bootstrap_interval(
        values, books, n_resamples=200, seed=1
    )


def test_a_group_drawn_twice_counts_twice():
    # Groups of 1 and 3 samples; statistic = resample size. Two draws give aa (size 2, p 1/4), ab or ba (4, p 1/2)
    # or bb (6, p 1/4): both 2.5% tails fall inside the 25% ends, so the interval is (2, 6) around the point 4.
    values = np.array([0.0, 1.0, 1.0, 1.0])
    groups = np.array([0, 1, 1, 1])
    assert bootstrap_interval(values, groups, statistic=len) == (2.0, 6.0)


def test_one_group_gives_a_degenerate_interval():
    # Every resample is the single book itself, so both ends are its mean 2/3.
    assert bootstrap_interval([1.0, 0.0, 1.0], ["x", "x", "x"]) == (2 / 3, 2 / 3)


@pytest.mark.parametrize(
    "values, groups, options, message",
    [
        ([1.0, 0.0], ["a"], {}, "differ in length"),
        ([], [], {}, "empty"),
        ([1.0, np.nan], ["a", "b"], {}, "NaN"),
        ([1.0, 0.0], ["a", "b"], dict(level=1.5), "level"),
        ([1.0, 0.0], ["a", "b"], dict(n_resamples=0), "n_resamples"),
    ],
)
def test_bootstrap_rejects_bad_input(values, groups, options, message):
    with pytest.raises(ValueError, match=message):
        bootstrap_interval(values, groups, **options)


def test_book_accuracy_interval():
    # Books a (both right) and b (both wrong): accuracy 0.5. Resampled means are 1 (aa, p 1/4), 0.5 (ab, ba) and
    # 0 (bb, p 1/4); both 2.5% tails fall in the 25% ends, so the interval is [0, 1].
    found = book_accuracy_interval([True, True, False, False], ["a", "a", "b", "b"])
    assert found == dict(accuracy=0.5, low=0.0, high=1.0, n=4, books=2)


# ----------------------------------------------------------------------------------------------------------------
# Totals over tasks


def test_total_accuracy_pools_samples_like_comicspap():
    # Task a: 1 of 2 right (0.5); task b: 6 of 6 (1.0). Pooled: 7 of 8 = 0.875; unweighted: (0.5 + 1.0) / 2 = 0.75.
    per_task, counts = dict(a=0.5, b=1.0), dict(a=2, b=6)
    assert total_accuracy(per_task, counts) == 0.875
    assert total_accuracy(per_task, counts) == accuracy([1, 0, 1, 1, 1, 1, 1, 1])
    assert mean_task_accuracy(per_task) == 0.75


@pytest.mark.parametrize(
    "per_task, counts, message",
    [
        ({}, {}, "empty"),
        (dict(a=0.5), dict(b=3), "different tasks"),
        (dict(a=0.5), dict(a=0), "positive sample count"),
        (dict(a=1.2), dict(a=3), r"\[0, 1\]"),
    ],
)
def test_total_accuracy_rejects_bad_input(per_task, counts, message):
    with pytest.raises(ValueError, match=message):
        total_accuracy(per_task, counts)


def test_mean_task_accuracy_rejects_bad_input():
    with pytest.raises(ValueError, match="empty"):
        mean_task_accuracy({})
    with pytest.raises(ValueError, match="NaN"):
        mean_task_accuracy(dict(a=float("nan")))


# ----------------------------------------------------------------------------------------------------------------
# Reading order (positions: order[i] is panel i's reading position)


def test_exact_order():
    assert exact_order([0, 1, 2], [0, 1, 2])
    assert not exact_order([1, 0, 2], [0, 1, 2])
    assert exact_order([], [])


@pytest.mark.parametrize(
    "predicted, true, pairwise, tau",
    [
        # 6 pairs; only panels 1 and 2 are swapped: 5/6 agree, tau = 1 - 2 * 1/6 = 2/3.
        ([0, 2, 1, 3], [0, 1, 2, 3], 5 / 6, 2 / 3),
        # Reversed: all 6 pairs disagree, tau = 1 - 2 = -1.
        ([3, 2, 1, 0], [0, 1, 2, 3], 0.0, -1.0),
        # Pairs (0,1) agree, (0,2) and (1,2) disagree: 1/3, tau = 1 - 4/3 = -1/3.
        ([1, 2, 0], [0, 1, 2], 1 / 3, -1 / 3),
        # Identical orders, with true not the identity: all 3 pairs agree.
        ([2, 0, 1], [2, 0, 1], 1.0, 1.0),
        # No pair at all: 1.0 by convention.
        ([0], [0], 1.0, 1.0),
        ([], [], 1.0, 1.0),
    ],
)
def test_pairwise_accuracy_and_kendall_tau(predicted, true, pairwise, tau):
    assert pairwise_accuracy(predicted, true) == pytest.approx(pairwise)
    assert kendall_tau(predicted, true) == pytest.approx(tau)


@pytest.mark.parametrize(
    "predicted, true, message",
    [
        ([0, 0, 1], [0, 1, 2], "predicted is not a permutation"),
        ([0, 1, 2], [1, 2, 3], "true is not a permutation"),
        ([0, 1], [0, 1, 2], "differ in length"),
        ([[0, 1]], [0, 1], "one-dimensional"),
    ],
)
@pytest.mark.parametrize("metric", [exact_order, pairwise_accuracy, kendall_tau])
def test_order_metrics_reject_bad_input(metric, predicted, true, message):
    with pytest.raises(ValueError, match=message):
        metric(predicted, true)


# ----------------------------------------------------------------------------------------------------------------
# Retrieval by shared label

KEY_LABELS = np.array(["a", "b", "a", "c", "b"])
QUERY_LABELS = np.array(["a", "b", "c", "d"])
SCORES = np.array(
    [
        [0.9, 0.8, 0.1, 0.7, 0.3],  # ranks keys 0 1 3 4 2: label a at ranks 1 and 5
        [0.5, 0.2, 0.9, 0.6, 0.4],  # ranks keys 2 3 0 4 1: label b at ranks 4 and 5
        [0.1, 0.2, 0.3, 0.4, 0.5],  # ranks keys 4 3 2 1 0: label c at rank 2
        [0.5, 0.4, 0.3, 0.2, 0.1],  # label d: no key has it, so the query is skipped
    ]
)


def test_recall_at_k_labels():
    found = recall_at_k_labels(SCORES, QUERY_LABELS, KEY_LABELS, ks=(1, 2, 5, 10))
    # First relevant ranks 1, 4, 2 over the three counted queries: @1 {q0} 1/3, @2 {q0, q2} 2/3, @5 all; k = 10 is
    # more than the 5 keys, so it is left out.
    assert found == pytest.approx({"recall@1": 1 / 3, "recall@2": 2 / 3, "recall@5": 1.0, "queries": 3, "skipped": 1})


def test_mean_average_precision():
    # q0: (1/1 + 2/5) / 2 = 0.7; q1: (1/4 + 2/5) / 2 = 0.325; q2: 1/2; mean (0.7 + 0.325 + 0.5) / 3 = 0.508333...
    found = mean_average_precision(SCORES, QUERY_LABELS, KEY_LABELS)
    assert found == pytest.approx(dict(map=1.525 / 3, queries=3, skipped=1))


# Four panels searched against themselves, labels a a b b; the diagonal (the panel itself) scores highest.
SELF_LABELS = np.array(["a", "a", "b", "b"])
SELF_SCORES = np.array(
    [
        [1.0, 0.2, 0.6, 0.1],  # without itself: keys 2 1 3, its a-partner (key 1) at rank 2
        [0.2, 1.0, 0.3, 0.4],  # keys 3 2 0, key 0 at rank 3
        [0.6, 0.3, 1.0, 0.7],  # keys 3 0 1, key 3 at rank 1
        [0.1, 0.4, 0.7, 1.0],  # keys 2 1 0, key 2 at rank 1
    ]
)


def test_exclude_self_drops_the_query_from_its_own_ranking():
    own = np.arange(4)
    # First relevant ranks 2, 3, 1, 1: @1 2/4, @2 3/4, @3 4/4; only 3 keys are ranked, so k = 4 is left out.
    found = recall_at_k_labels(SELF_SCORES, SELF_LABELS, SELF_LABELS, ks=(1, 2, 3, 4), exclude_self=own)
    assert found == {"recall@1": 0.5, "recall@2": 0.75, "recall@3": 1.0, "queries": 4, "skipped": 0}
    # One relevant key each: AP 1/2, 1/3, 1, 1; mean 17/6 / 4 = 17/24.
    assert mean_average_precision(SELF_SCORES, SELF_LABELS, SELF_LABELS, own)["map"] == pytest.approx(17 / 24)
    # Left in, every panel finds itself first.
    assert recall_at_k_labels(SELF_SCORES, SELF_LABELS, SELF_LABELS, ks=(1,))["recall@1"] == 1.0


def test_tied_scores_keep_key_order():
    # Both keys score 0.5, so key 0 (label a) ranks first and the b query's key comes second: AP 1/2, no hit at 1.
    scores, queries, keys = np.array([[0.5, 0.5]]), np.array(["b"]), np.array(["a", "b"])
    assert recall_at_k_labels(scores, queries, keys, ks=(1, 2)) == {
        "recall@1": 0.0,
        "recall@2": 1.0,
        "queries": 1,
        "skipped": 0,
    }
    assert mean_average_precision(scores, queries, keys)["map"] == 0.5


@pytest.mark.parametrize(
    "scores, queries, keys, exclude_self, message",
    [
        (SCORES, QUERY_LABELS[:3], KEY_LABELS, None, "labels must be"),
        (SCORES[0], QUERY_LABELS[:1], KEY_LABELS, None, r"\(Q, K\) matrix"),
        (np.array([[np.nan, 0.1]]), np.array(["a"]), np.array(["a", "b"]), None, "NaN"),
        (SCORES, QUERY_LABELS, KEY_LABELS, np.array([0, 1, 2, 5]), "outside"),
        (SCORES, QUERY_LABELS, KEY_LABELS, np.array([0.0, 1.0, 2.0, 3.0]), "integer"),
        (SCORES, QUERY_LABELS, KEY_LABELS, np.array([0, 1]), r"\(4,\)"),
        (SCORES[3:], QUERY_LABELS[3:], KEY_LABELS, None, "no query has a key"),
    ],
)
@pytest.mark.parametrize("metric", [recall_at_k_labels, mean_average_precision])
def test_retrieval_rejects_bad_input(metric, scores, queries, keys, exclude_self, message):
    with pytest.raises(ValueError, match=message):
        metric(scores, queries, keys, exclude_self=exclude_self)
