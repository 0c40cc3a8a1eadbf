"""Reading-order metrics: ``positions[i]`` is the reading position of panel i, a permutation of 0..K-1."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from numpy.typing import ArrayLike


def _positions(predicted: ArrayLike, true: ArrayLike) -> tuple[np.ndarray, np.ndarray]:
    """Both position arrays as (K,) int64, after checking each is a permutation of 0..K-1 and the lengths agree."""
    checked = []
    for name, order in (("predicted", predicted), ("true", true)):
        positions = np.asarray(order)
        if positions.ndim != 1:
            raise ValueError(f"{name} must be one-dimensional (K,), got shape {positions.shape}")
        if not np.array_equal(np.sort(positions), np.arange(len(positions))):
            raise ValueError(f"{name} is not a permutation of 0..{len(positions) - 1}: {positions.tolist()}")
        checked.append(positions.astype(np.int64))
    if len(checked[0]) != len(checked[1]):
        raise ValueError(f"predicted and true differ in length: {len(checked[0])} against {len(checked[1])}")
    return checked[0], checked[1]


def _discordant(predicted: np.ndarray, true: np.ndarray) -> tuple[int, int]:
    """(discordant pairs, all unordered pairs) of two position arrays."""
    i, j = np.triu_indices(len(true), k=1)
    flipped = np.sign(predicted[i] - predicted[j]) != np.sign(true[i] - true[j])
    return int(flipped.sum()), len(i)


def exact_order(predicted: ArrayLike, true: ArrayLike) -> bool:
    """Whether the predicted reading positions (K,) equal the true ones exactly."""
    predicted, true = _positions(predicted, true)
    return bool(np.array_equal(predicted, true))


def pairwise_accuracy(predicted: ArrayLike, true: ArrayLike) -> float:
    """Share of the K(K-1)/2 unordered panel pairs that the prediction puts in the true relative order.

    1.0 by convention when K < 2 (no pair to get wrong).
    """
    discordant, pairs = _discordant(*_positions(predicted, true))
    return 1.0 if pairs == 0 else 1 - discordant / pairs


def kendall_tau(predicted: ArrayLike, true: ArrayLike) -> float:
    """Kendall's tau between predicted and true positions: 1 - 2 * discordant / pairs, in [-1, 1].

    1 is the true order, -1 its reverse; 1.0 by convention when K < 2.
    """
    discordant, pairs = _discordant(*_positions(predicted, true))
    return 1.0 if pairs == 0 else 1 - 2 * discordant / pairs


def order_agreement(predicted: Sequence[int], true: Sequence[int]) -> tuple[float, float, float]:
    """(exact match, pairwise accuracy, Kendall tau) of a predicted order against the true one (both permutations;
    anything else is a ValueError)."""
    return float(exact_order(predicted, true)), pairwise_accuracy(predicted, true), kendall_tau(predicted, true)
