"""Retrieval metrics: recall@k of paired views, collapse diagnostics, and recall@k / mAP over shared labels.

Stage 3's training (validation recall, collapse monitor), the store's search benchmark and notebook 05's retrieval all
score with these, so they sit below the stages.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from numpy.typing import ArrayLike
from torch import Tensor


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
