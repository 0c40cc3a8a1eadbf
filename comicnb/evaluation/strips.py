"""Pages and strips of a held-out split (notebook 05): "pages like this one" by the Stage 4 strip embedding against
the plain alternative, the mean of a page's Stage 3 vectors.

``compare_strips`` scores, for each test page, its k nearest test pages under both (precision@k of same book and same
majority scene), ``strip_comparison`` reads both from a Stage 5 export and its store, and ``strip_neighbours`` lists
one query page's neighbours under both for a figure.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from comicnb.evaluation.retrieval import is_labelled, unit

PAGE_LABELS = ("book_id", "scene")  # a page's book and its majority scene
STRIP, MEAN = "stage4 strip", "mean stage3"


def majority(values: Iterable) -> object:
    """The most frequent real label (ties: the first met), None where there is none."""
    values = list(values)
    counts: dict[object, int] = {}  # insertion order: the first met wins a tie
    for value, ok in zip(values, is_labelled(values)):
        if ok:
            counts[value] = counts.get(value, 0) + 1
    return max(counts, key=counts.__getitem__) if counts else None


def split_pages(panels: pd.DataFrame) -> pd.DataFrame:
    """One row per page of a ``split_panels`` table: ``page_index``, ``book_id``, the majority ``scene`` of its
    labelled panels (where panels have scenes; ties go to the scene met first in reading order) and ``panels``."""
    rows = []
    for page, group in panels.groupby("page_index", sort=True):
        row = dict(page_index=int(page), book_id=group.book_id.iloc[0], panels=len(group))
        if "scene" in group:
            row["scene"] = majority(group.scene)
        rows.append(row)
    return pd.DataFrame(rows)


def nearest_pages(vectors: np.ndarray, k: int = 5) -> tuple[np.ndarray, np.ndarray]:
    """(P, k') cosine scores and row ids of each row's nearest other rows, best first (k' = min(k, P - 1); ties keep
    row order)."""
    vectors = unit(vectors)
    scores = vectors @ vectors.T
    np.fill_diagonal(scores, -np.inf)
    width = min(k, len(vectors) - 1)
    order = np.argsort(-scores, axis=1, kind="stable")[:, :width]
    return np.take_along_axis(scores, order, axis=1), order


def page_neighbours(
    page_vectors: np.ndarray, labels_by_page: pd.DataFrame, k: int = 5, label_columns: Sequence[str] | None = None
) -> pd.DataFrame:
    """Per page (rows aligned with ``page_vectors`` (P, D)), the share of its k nearest other pages that share each
    label (precision@k; NaN where the page's label is missing), and the ids of those pages (``neighbours``)."""
    columns = list(label_columns or [c for c in PAGE_LABELS if c in labels_by_page])
    _, ids = nearest_pages(page_vectors, k)
    table = pd.DataFrame(dict(neighbours=list(ids)))
    for column in columns:
        values = labels_by_page[column].to_numpy(dtype=object)
        labelled = is_labelled(values)
        same = (values[ids] == values[:, None]) & labelled[ids]  # (P, k')
        table[column] = np.where(labelled, same.mean(axis=1) if ids.shape[1] else np.nan, np.nan)
    return table


def chance_precision(values: Sequence | np.ndarray) -> float:
    """Expected precision of a random other page: mean over labelled pages of (pages sharing its label - 1) / (P-1)."""
    values = np.asarray(values, dtype=object)
    labelled = is_labelled(values)
    if len(values) < 2 or not labelled.any():
        return np.nan
    counts = pd.Series(values[labelled]).value_counts()
    return float(np.mean([(counts[v] - 1) / (len(values) - 1) for v in values[labelled]]))


def compare_strips(
    strip_vectors: np.ndarray,
    mean_vectors: np.ndarray,
    pages: pd.DataFrame,
    k: int = 5,
    label_columns: Sequence[str] | None = None,
) -> pd.DataFrame:
    """Precision@k of same book and same scene among each page's k nearest pages, by Stage 4 strip embedding and by
    mean Stage 3 vector: one row per method and label with the mean over labelled pages, pages counted and chance.

    Both vector arrays are indexed by store page (the export's ``strip_embeddings``, ``comicnb.search.page_vectors``
    of the store); ``pages`` (``split_pages``) names the pages taking part (``page_index``) and their labels, and
    neighbours are found among those pages only.
    """
    columns = list(label_columns or [c for c in PAGE_LABELS if c in pages])
    rows = []
    for method, vectors in ((STRIP, strip_vectors), (MEAN, mean_vectors)):
        per_page = page_neighbours(np.asarray(vectors)[pages.page_index.to_numpy()], pages, k, columns)
        for column in columns:
            scored = per_page[column].dropna()
            rows.append(
                {
                    "method": method,
                    "label": column,
                    f"precision@{k}": float(scored.mean()) if len(scored) else np.nan,
                    "pages": len(scored),
                    "chance": chance_precision(pages[column].to_numpy()),
                }
            )
    return pd.DataFrame(rows)


@dataclass
class StripComparison:
    """Pages of a split by Stage 4 strip embedding and by mean Stage 3 vector: ``table`` (``compare_strips``), both
    vector arrays (by store page) and the pages compared (``split_pages``)."""

    table: pd.DataFrame
    strips: np.ndarray
    means: np.ndarray
    pages: pd.DataFrame


def strip_comparison(export: str | Path, store: str | Path, panels: pd.DataFrame, k: int = 5) -> StripComparison:
    """``compare_strips`` of the pages of ``panels`` (``split_panels``), the strips read from a Stage 5 export and the
    mean Stage 3 vectors from its store."""
    from comicnb.search import page_vectors
    from comicnb.stage4.export import open_export_group
    from comicnb.store import open_embeddings

    strips = np.asarray(open_export_group(export)["strip_embeddings"][:])
    means = page_vectors(open_embeddings(store))
    pages = split_pages(panels)
    return StripComparison(compare_strips(strips, means, pages, k), strips, means, pages)


def strip_neighbours(
    page_index: int, strip_vectors: np.ndarray, mean_vectors: np.ndarray, pages: pd.DataFrame, k: int = 5
) -> pd.DataFrame:
    """The k nearest pages of one query page (a store page index among ``pages``) under both methods, for a figure:
    one row per method and rank with page_index, score, the hit's labels and whether each matches the query's."""
    where = np.flatnonzero(pages.page_index.to_numpy() == int(page_index))
    if len(where) == 0:
        raise ValueError(f"page {page_index} is not among the pages compared ({len(pages)} pages)")
    columns = [c for c in PAGE_LABELS if c in pages]
    query = pages.iloc[int(where[0])]
    rows = []
    for method, vectors in ((STRIP, strip_vectors), (MEAN, mean_vectors)):
        scores, ids = nearest_pages(np.asarray(vectors)[pages.page_index.to_numpy()], k)
        for rank, (score, row) in enumerate(zip(scores[where[0]], ids[where[0]]), start=1):
            hit = pages.iloc[int(row)]
            entry = dict(method=method, rank=rank, page_index=int(hit.page_index), score=float(score))
            for column in columns:
                entry[column] = hit[column]
                entry[f"same_{column.removesuffix('_id')}"] = bool(
                    is_labelled([query[column]])[0] and hit[column] == query[column]
                )
            rows.append(entry)
    return pd.DataFrame(rows)
