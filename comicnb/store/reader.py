"""Reading a finished embedding store: its arrays, its page metadata, and query pages drawn from a split."""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import zarr

from comicnb.store.schema import MASKS, METADATA, TEXT_FREE_MASKS, TEXT_FREE_VISION, StoreMismatchError


def open_embeddings(store: str | Path) -> zarr.Group:
    """A finished store, read-only; a missing one is an error naming how to make it, an unfinished one an error
    naming how many pages are missing."""
    if not Path(store).is_dir():
        raise FileNotFoundError(
            f"no embedding store at {store}: notebook 03 makes it, or `comicnb embed --run-dir <run>` (for a store "
            "elsewhere, --store PATH)"
        )
    group = zarr.open_group(str(store), mode="r")
    missing = int((~np.asarray(group["done"][:])).sum())
    if missing:
        raise RuntimeError(
            f"{store} is unfinished: {missing} of {group['done'].shape[0]} pages not yet encoded; "
            f"run the generation again to resume it"
        )
    return group


def text_free_vision(group: zarr.Group) -> tuple[np.ndarray, np.ndarray]:
    """The store's text-free vision embeddings (P, N, D) and masks (P, N); a store made before text-free twins
    existed reads as one without twins (zeros, all False)."""
    if TEXT_FREE_VISION in group:
        return np.asarray(group[TEXT_FREE_VISION][:]), np.asarray(group[TEXT_FREE_MASKS][:])
    pages, slots = group[MASKS].shape
    dim = group["panel_embeddings"].shape[-1]
    return np.zeros((pages, slots, dim), dtype=np.float32), np.zeros((pages, slots), dtype=bool)


def load_metadata(store: str | Path) -> pd.DataFrame:
    """The page table of a store: metadata.json inside the store folder, or beside it, one row per page."""
    store = Path(store)
    path = next((p for p in (store / METADATA, store.parent / METADATA) if p.is_file()), None)
    if path is None:
        raise FileNotFoundError(f"no {METADATA} in or beside {store}")
    return pd.DataFrame(json.loads(path.read_text()))


def check_checkpoint(store: str | Path, attrs: Mapping[str, Any], sha256: str | None, checkpoint: Any = None) -> None:
    """Refuse to pair a store with a model from another checkpoint: the store records its checkpoint's SHA-256.

    ``sha256`` is the model's checkpoint file hash (``model.checkpoint_sha256``, set by ``model_from_checkpoint``
    when given a path), ``checkpoint`` names that file in the message. A StoreMismatchError names both files.
    """
    recorded = attrs.get("checkpoint_sha256")
    made_from = attrs.get("checkpoint", "an unrecorded checkpoint")
    if recorded is None:
        raise StoreMismatchError(
            f"{store} records no checkpoint_sha256, so no model can be checked against it: regenerate it with "
            f"`comicnb embed`, or search it with raw vectors (PanelSearch.query)"
        )
    if sha256 is None:
        raise StoreMismatchError(
            f"the model does not say which checkpoint it came from, so it cannot be checked against {store} (made "
            f"from {made_from}): load it with model_from_checkpoint(PATH) or give PanelSearch(store, checkpoint=PATH)"
        )
    if sha256 != recorded:
        raise StoreMismatchError(
            f"{store} was made from {made_from} (sha256 {recorded[:12]}…), not from {checkpoint or 'this model'} "
            f"(sha256 {sha256[:12]}…): its vectors live in another space. Search it with the model of {made_from}, "
            f"or re-embed with `comicnb embed --checkpoint {checkpoint or 'PATH'} --overwrite`"
        )


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
