"""Reading a finished embedding store: its arrays and its page metadata."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import zarr

from comicnb.store.schema import METADATA


def open_embeddings(store: str | Path) -> zarr.Group:
    """A finished store, read-only; an unfinished one is an error naming how many pages are missing."""
    group = zarr.open_group(str(store), mode="r")
    missing = int((~np.asarray(group["done"][:])).sum())
    if missing:
        raise RuntimeError(
            f"{store} is unfinished: {missing} of {group['done'].shape[0]} pages not yet encoded; "
            f"run the generation again to resume it"
        )
    return group


def load_metadata(store: str | Path) -> pd.DataFrame:
    """The page table of a store: metadata.json inside the store folder, or beside it, one row per page."""
    store = Path(store)
    path = next((p for p in (store / METADATA, store.parent / METADATA) if p.is_file()), None)
    if path is None:
        raise FileNotFoundError(f"no {METADATA} in or beside {store}")
    return pd.DataFrame(json.loads(path.read_text()))
