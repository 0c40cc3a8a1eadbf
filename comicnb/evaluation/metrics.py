"""Retrieval and agreement metrics, one home for both stages and for notebooks 02, 03 and 05."""

from __future__ import annotations

from collections.abc import Callable, Mapping

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from numpy.typing import ArrayLike
from torch import Tensor

from comicnb.search import exact_topk


def page_index(panel_mask: Tensor) -> Tensor:
    """(P,) page number of each valid panel of a (B, N) mask, in row-major order like `x[panel_mask]`."""
    pages = torch.arange(panel_mask.shape[0], device=panel_mask.device)
    return pages[:, None].expand_as(panel_mask)[panel_mask]


def recall_at_k(queries: Tensor, keys: Tensor, ks: tuple[int, ...] = (1, 5, 10)) -> dict[str, float]:
    """Recall@k of query i finding key i among all Q keys, by cosine, expected under uniform tie-breaking: keys that
    tie with the true one share its places, so collapsed embeddings (every score equal) score k / Q, chance, not 1."""
    scores = F.normalize(queries, dim=-1) @ F.normalize(keys, dim=-1).T  # (Q, Q)
    true = scores.diagonal()[:, None]
    above = (scores > true).sum(dim=1)  # (Q,) keys scoring above the true one
    tied = (scores == true).sum(dim=1)  # (Q,) the true key and the keys tying with it
    return {f"recall@{k}": float(((k - above) / tied).clamp(0, 1).mean()) for k in ks if k <= len(queries)}


@torch.no_grad()
def collapse_diagnostics(embeddings: Tensor, panel_mask: Tensor) -> dict[str, float]:
    """Mean cosine between panels of one page, between panels of different pages, and the gap (NaN if no pairs)."""
    valid = panel_mask.bool()  # (B, N)
    panels = F.normalize(embeddings[valid].float(), dim=-1)  # (P, D)
    page_ids = page_index(valid)  # (P,)
    cosine = panels @ panels.T  # (P, P)
    same = page_ids[:, None] == page_ids[None, :]
    self_pair = torch.eye(len(page_ids), dtype=torch.bool, device=valid.device)
    within, between = cosine[same & ~self_pair].mean().item(), cosine[~same].mean().item()
    return {"within_page_cosine": within, "between_page_cosine": between, "gap": within - between}


@torch.no_grad()
def same_panel_retrieval(emb_view1: Tensor, emb_view2: Tensor) -> float:
    """Recall@1 of each panel's first view finding its own second view among all second views."""
    cosine = F.normalize(emb_view1.float(), dim=-1) @ F.normalize(emb_view2.float(), dim=-1).T  # (P, P)
    return (cosine.argmax(dim=1) == torch.arange(len(cosine), device=cosine.device)).float().mean().item()


def overlap_recall(found: np.ndarray, truth: np.ndarray) -> float:
    """Mean share of each row of true ids (Q, k) that the found ids (Q, k) contain: an index against exact search."""
    found, truth = np.atleast_2d(found), np.atleast_2d(truth)
    return float(np.mean([len(set(f.tolist()) & set(t.tolist())) / t.shape[0] for f, t in zip(found, truth)]))


def neighbour_agreement(vectors: np.ndarray, page: np.ndarray, labels: pd.DataFrame, k: int = 5) -> pd.DataFrame:
    """How often a panel's k nearest panels on *other* pages share its label, per label column, against chance.

    Chance is the probability that a random panel of another page shares the label (from the label frequencies).
    """
    extra = int(np.bincount(page).max())  # enough hits to still have k after dropping the panel's own page
    _, ids = exact_topk(vectors, vectors, k + extra)
    other = page[ids] != page[:, None]  # (M, k + extra)
    ranks = np.cumsum(other, axis=1) <= k
    keep = other & ranks  # the first k hits on other pages
    rows = []
    for column in labels.columns:
        values = labels[column].to_numpy()
        agree = (values[ids] == values[:, None]) & keep
        share = labels[column].value_counts(normalize=True)
        rows.append(dict(label=column, agreement=agree.sum() / keep.sum(), chance=float((share**2).sum())))
    return pd.DataFrame(rows).set_index("label")


def fusion_against_modalities(
    fused: np.ndarray,
    modalities: np.ndarray,
    modality_mask: np.ndarray,
    page: np.ndarray,
    labels: pd.DataFrame,
    names: tuple[str, ...],
    k: int = 5,
) -> pd.DataFrame:
    """Neighbour agreement of the fused vectors against each single modality's, on the panels that have it.

    fused (M, D), modalities (M, len(names), D), modality_mask (M, len(names)), page (M,), labels (M rows). One row
    per (modality, label): `modality` is that modality's own vectors, `fused` the fused vectors of the same panels,
    `chance` as in neighbour_agreement; `fused_loses` where fusion scores below the modality alone.
    """
    rows = []
    for i, name in enumerate(names):
        rows_with = np.flatnonzero(modality_mask[:, i])
        if len(np.unique(page[rows_with])) < 2:  # no other page to find neighbours on
            continue
        subset = labels.iloc[rows_with].reset_index(drop=True)
        alone = neighbour_agreement(modalities[rows_with, i], page[rows_with], subset, k)
        together = neighbour_agreement(fused[rows_with], page[rows_with], subset, k)
        for label in subset.columns:
            rows.append(
                dict(
                    input=name,
                    label=label,
                    panels=len(rows_with),
                    modality=alone.loc[label, "agreement"],
                    fused=together.loc[label, "agreement"],
                    chance=alone.loc[label, "chance"],
                )
            )
    table = pd.DataFrame(rows, columns=["input", "label", "panels", "modality", "fused", "chance"])
    table["fused_loses"] = table.fused < table.modality
    return table.set_index(["label", "input"]).sort_index()


def fusion_losses(table: pd.DataFrame, label: str, margin: float = 0.0) -> pd.DataFrame:
    """Rows of a fusion_against_modalities table where, for ``label``, the fused vectors score below the best
    single modality by more than ``margin`` (empty when fusion matches or beats its best input)."""
    if label not in table.index.get_level_values("label"):
        return table.iloc[:0]
    rows = table.loc[label]
    best = rows.modality.max()
    return rows[(rows.modality == best) & (rows.fused < best - margin)]


def fusion_loss_warnings(table: pd.DataFrame, label: str, margin: float = 0.0) -> list[str]:
    """One message per input that beats the fused vectors on ``label`` by more than ``margin`` (see fusion_losses)."""
    return [
        f"fusion loses to its best input on {label}: fused {row.fused:.3f} against {name} alone {row.modality:.3f} "
        f"(chance {row.chance:.3f}); see notebook 02's gate weights and docs/modality-collapse.md"
        for name, row in fusion_losses(table, label, margin).iterrows()
    ]


# ----------------------------------------------------------------------------------------------------------------
# Accuracy, book-level intervals and task totals (notebook 05)


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


def bootstrap_interval(
    values: ArrayLike,
    groups: ArrayLike,
    statistic: Callable[[np.ndarray], float] = np.mean,
    level: float = 0.95,
    n_resamples: int = 2000,
    seed: int = 0,
) -> tuple[float, float]:
    """(low, high) percentile bootstrap interval of ``statistic`` over (S,) ``values``, resampling whole groups.

    ``groups`` (S,) names each sample's group (its book): samples of one book are not independent, so each resample
    draws as many groups as there are, with replacement, and concatenates all their values (a group drawn twice
    counts twice). The interval is widened to take in the point value where the percentiles miss it. With a single
    group every resample is the data itself, so the interval is degenerate: the point value at both ends. The same
    ``seed`` gives the same interval.
    """
    values = np.asarray(values, dtype=np.float64)
    groups = np.asarray(groups)
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


# ----------------------------------------------------------------------------------------------------------------
# Reading order: positions[i] is the reading position of panel i, a permutation of 0..K-1


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


# ----------------------------------------------------------------------------------------------------------------
# Retrieval by shared label: scores (Q, K) similarities, higher first; ties keep key order


def _ranked_relevance(
    scores: ArrayLike, query_labels: ArrayLike, key_labels: ArrayLike, exclude_self: ArrayLike | None
) -> tuple[np.ndarray, np.ndarray]:
    """(Q, K) relevance in rank order and (Q, K) 1-based rank of each position (0 where the key is excluded)."""
    scores = np.asarray(scores, dtype=np.float64)
    query_labels, key_labels = np.asarray(query_labels), np.asarray(key_labels)
    if scores.ndim != 2 or scores.size == 0:
        raise ValueError(f"scores must be a non-empty (Q, K) matrix, got shape {scores.shape}")
    queries, keys = scores.shape
    if query_labels.shape != (queries,) or key_labels.shape != (keys,):
        raise ValueError(
            f"labels must be ({queries},) for queries and ({keys},) for keys, "
            f"got {query_labels.shape} and {key_labels.shape}"
        )
    if np.isnan(scores).any():
        raise ValueError("scores contain NaN")
    kept = np.ones((queries, keys), dtype=bool)
    if exclude_self is not None:
        own = np.asarray(exclude_self)
        if own.shape != (queries,) or not np.issubdtype(own.dtype, np.integer):
            raise ValueError(f"exclude_self must be ({queries},) integer key indices, got {own.dtype} {own.shape}")
        if ((own < 0) | (own >= keys)).any():
            raise ValueError(f"exclude_self holds key indices outside 0..{keys - 1}")
        kept[np.arange(queries), own] = False
    order = np.argsort(-scores, axis=1, kind="stable")
    relevant = np.take_along_axis((query_labels[:, None] == key_labels[None, :]) & kept, order, axis=1)
    kept = np.take_along_axis(kept, order, axis=1)
    return relevant, np.cumsum(kept, axis=1) * kept


def recall_at_k_labels(
    scores: ArrayLike,
    query_labels: ArrayLike,
    key_labels: ArrayLike,
    ks: tuple[int, ...] = (1, 5, 10),
    exclude_self: ArrayLike | None = None,
) -> dict[str, float]:
    """Share of queries with a key of their own label among their top k, for each k.

    ``exclude_self`` (Q,) names the key that is the query itself; it is dropped from that query's ranking. Queries
    with no key of their label are skipped (they could never hit). Like recall_at_k, a k larger than the keys each
    query ranks is left out. Keys: ``recall@k``, ``queries`` (counted) and ``skipped``.
    """
    relevant, rank = _ranked_relevance(scores, query_labels, key_labels, exclude_self)
    counted = relevant.any(axis=1)
    if not counted.any():
        raise ValueError("no query has a key of its own label: recall is undefined")
    ranked = int(rank.max(axis=1).min())
    first = np.where(relevant, rank, np.iinfo(np.int64).max).min(axis=1)[counted]  # rank of the first relevant key
    found = {f"recall@{k}": float((first <= k).mean()) for k in ks if k <= ranked}
    return found | dict(queries=int(counted.sum()), skipped=int((~counted).sum()))


def mean_average_precision(
    scores: ArrayLike, query_labels: ArrayLike, key_labels: ArrayLike, exclude_self: ArrayLike | None = None
) -> dict[str, float]:
    """Mean over queries of average precision, the keys sharing the query's label being the relevant ones.

    AP of one query is the mean, over its relevant keys, of the precision of the ranking cut at that key.
    ``exclude_self`` as in recall_at_k_labels. Queries with no relevant key are skipped. Keys: ``map``,
    ``queries`` (counted) and ``skipped``.
    """
    relevant, rank = _ranked_relevance(scores, query_labels, key_labels, exclude_self)
    counted = relevant.any(axis=1)
    if not counted.any():
        raise ValueError("no query has a key of its own label: mean average precision is undefined")
    relevant, rank = relevant[counted], rank[counted]
    precision = np.cumsum(relevant, axis=1) / np.maximum(rank, 1)  # at excluded positions the value is unused
    average = (precision * relevant).sum(axis=1) / relevant.sum(axis=1)
    return dict(map=float(average.mean()), queries=int(counted.sum()), skipped=int((~counted).sum()))
