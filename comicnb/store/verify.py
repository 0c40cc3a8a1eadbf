"""Checks of a finished store against the pages table it was made from."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from comicnb.store.reader import open_embeddings, text_free_vision
from comicnb.store.schema import EMBEDDINGS, MASKS, text_free_sources


def verify_store(store: str | Path, pages: pd.DataFrame) -> dict[str, Any]:
    """Counts against the pages table, exact-zero padding and unit norms of a finished store; text-free panels are
    the real panels of the pages with a text-free source (a twin, or blanked boxes, as the store was made), and their
    vectors are zero everywhere else."""
    group = open_embeddings(store)
    masks = np.asarray(group[MASKS][:])  # (P, N)
    counts_match = len(masks) == len(pages) and masks.sum(axis=1).tolist() == pages.num_panels.tolist()
    twin_vectors, twin_masks = text_free_vision(group)
    mode = group.attrs.get("text_free_source", "twin")  # stores made before the setting existed used twins
    has_twin = np.array([bool(source) for source in text_free_sources(pages, mode)], dtype=bool)
    twins_match = len(twin_masks) == len(pages) and np.array_equal(twin_masks, masks & has_twin[:, None])
    padding_nonzero, norm_min, norm_max = 0, np.inf, 0.0
    for start in range(0, len(masks), group[EMBEDDINGS].chunks[0]):  # one chunk at a time: memory stays flat
        block = np.asarray(group[EMBEDDINGS][start : start + group[EMBEDDINGS].chunks[0]])
        real = masks[start : start + len(block)]
        padding_nonzero += int(np.count_nonzero(block[~real]))
        norms = np.linalg.norm(block[real], axis=1)
        norm_min = min(norm_min, float(norms.min(initial=np.inf)))
        norm_max = max(norm_max, float(norms.max(initial=0)))
    return dict(
        pages=len(masks),
        panels=int(masks.sum()),
        expected_panels=int(pages.num_panels.sum()),
        counts_match=counts_match,
        padding_slots=int((~masks).sum()),
        padding_nonzero_values=padding_nonzero,
        norm_min=norm_min,
        norm_max=norm_max,
        text_free_panels=int(twin_masks.sum()),
        text_free_match=bool(twins_match),
        text_free_nonzero_absent=int(np.count_nonzero(twin_vectors[~twin_masks])),
    )
