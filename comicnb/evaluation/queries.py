"""Choosing query panels for search demonstrations and checks, from held-out books where there are any."""

from __future__ import annotations

import numpy as np
import pandas as pd


def sample_query_pages(metadata: pd.DataFrame, split: str = "test", n: int = 2, seed: int = 0) -> np.ndarray:
    """``n`` distinct store page indices drawn (seeded) from the pages of ``split``; from all pages when a small
    corpus has none in that split."""
    candidates = metadata.index[metadata.split == split] if "split" in metadata else metadata.index[:0]
    if len(candidates) == 0:
        candidates = metadata.index
    return np.random.default_rng(seed).choice(candidates, size=min(n, len(candidates)), replace=False)


def first_panel_ids(metadata: pd.DataFrame, page_indices: np.ndarray) -> np.ndarray:
    """The flat id of the first stored panel of each page."""
    return np.array([metadata.embedding_indices[p][0] for p in page_indices])
