"""The Stage 3 embedding store: schema, resumable sharded writer, reader and verification.

``from comicnb.store import generate, open_embeddings, verify_store``. The writer (which needs the Stage 3 model,
and through transformers, Accelerate) is imported on first use of its names, so reading, verifying and searching a
store load neither the model nor training code.
"""

import importlib
from typing import Any

from comicnb.store.reader import first_panel_ids, load_metadata, open_embeddings, sample_query_pages, text_free_vision
from comicnb.store.schema import (
    CONTENT_ATTRS,
    DONE,
    EMBEDDINGS,
    MASKS,
    METADATA,
    MODALITY_EMBEDDINGS,
    MODALITY_MASKS,
    STORE_NAME,
    TEXT_FREE_MASKS,
    TEXT_FREE_VISION,
    StoreMismatchError,
    file_sha256,
    store_metadata,
)
from comicnb.store.verify import verify_store

__all__ = [
    "CONTENT_ATTRS",
    "DONE",
    "EMBEDDINGS",
    "MASKS",
    "METADATA",
    "MODALITY_EMBEDDINGS",
    "MODALITY_MASKS",
    "STORE_NAME",
    "TEXT_FREE_MASKS",
    "TEXT_FREE_VISION",
    "EmbedConfig",
    "StoreMismatchError",
    "file_sha256",
    "first_panel_ids",
    "generate",
    "load_metadata",
    "open_embeddings",
    "parse_shard",
    "sample_query_pages",
    "store_metadata",
    "text_free_vision",
    "verify_store",
]

WRITER_NAMES = frozenset({"EmbedConfig", "generate", "parse_shard"})


def __getattr__(name: str) -> Any:
    """The writer's names, imported when first asked for."""
    if name in WRITER_NAMES:
        return getattr(importlib.import_module("comicnb.store.writer"), name)
    raise AttributeError(f"module 'comicnb.store' has no attribute {name!r}")
