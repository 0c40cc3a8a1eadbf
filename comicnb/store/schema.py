"""The embedding store's layout, defined once: array names, what defines a store's content, page metadata.

Layout of ``panel_embeddings.zarr`` (P pages, N = max_panels slots, D = feature_dim, M = 3 modalities):

    panel_embeddings  (P, N, D) float32     fused, L2-normalised panel embeddings; padding slots exactly zero
    panel_masks       (P, N)    bool        real panels
    modalities        (P, N, M, D) float32  per-modality embeddings before fusion (vision, text, composition), zero
                                            where masked: Stage 4 re-fuses a panel's image with another panel's text
    modality_masks    (P, N, M) bool        which modalities each panel has
    done              (P,)      bool        pages written; what a resumed or sharded run still has to do
    metadata.json                           one record per page: the seed's book_id, page_name, num_panels and
                                            embedding_indices (flat panel ids, page * N + slot), plus split,
                                            image_path and, per stored panel, panel_index, texts and boxes

Two words for a panel's place, never mixed: its *slot* is its position in the store's page row (0..N-1, what
flat ids count), its *panel_index* is its position in the page JSON's panel list. They differ after the reader
skipped a panel (bad box) or split a long page into parts.
"""

from __future__ import annotations

from typing import Any

import pandas as pd

from comicnb.checkpoint import file_sha256 as file_sha256  # re-exported: the store records checkpoints by it

EMBEDDINGS = "panel_embeddings"  # the fused array, named as in both seeds
MASKS = "panel_masks"
MODALITY_EMBEDDINGS = "modalities"
MODALITY_MASKS = "modality_masks"
DONE = "done"
METADATA = "metadata.json"


STORE_NAME = "panel_embeddings.zarr"


# Attributes that define the store's content: a store is resumed only when all of them match.
CONTENT_ATTRS = ("checkpoint_sha256", "metadata_sha256", "feature_dim", "max_panels", "pages_per_chunk", "precision")


class StoreMismatchError(RuntimeError):
    """A store exists at the path but was made from another checkpoint, other pages or other settings."""


def store_metadata(pages: pd.DataFrame, max_panels: int) -> list[dict[str, Any]]:
    """One record per page, in store order: the seed's fields (embedding_indices = flat panel ids) and provenance."""
    records = []
    for index, page in enumerate(pages.itertuples(index=False)):
        records.append(
            dict(
                book_id=page.book_id,
                page_name=page.page_name,
                num_panels=int(page.num_panels),
                embedding_indices=[index * max_panels + slot for slot in range(page.num_panels)],
                page_index=index,
                page_id=page.page_id,
                part=int(page.part),
                split=page.split,
                image_path=page.image_path,
                panel_index=[int(i) for i in page.panel_index],
                texts=[str(text) for text in page.texts],  # one per stored panel: a search hit reads without look-up
                boxes=[[float(v) for v in box] for box in page.boxes],  # [x1, y1, x2, y2] on the page image
            )
        )
    return records
