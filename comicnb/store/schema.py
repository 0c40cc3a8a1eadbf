"""The embedding store's layout, defined once: array names, what defines a store's content, page metadata.

Layout of ``panel_embeddings.zarr`` (P pages, N = max_panels slots, D = feature_dim, M = 3 modalities):

    panel_embeddings  (P, N, D) float32     fused, L2-normalised panel embeddings; padding slots exactly zero
    panel_masks       (P, N)    bool        real panels
    modalities        (P, N, M, D) float32  per-modality embeddings before fusion (vision, text, composition), zero
                                            where masked: Stage 4 re-fuses a panel's image with another panel's text
    modality_masks    (P, N, M) bool        which modalities each panel has
    text_free_vision  (P, N, D) float32     the vision embedding (as modalities[..., 0, :]) of the panel's crop from
                                            its page's text-free twin (same box, balloons empty); zero where absent
    text_free_masks   (P, N)    bool        panels that have it: the real panels of pages with a twin
    done              (P,)      bool        pages written; what a resumed or sharded run still has to do
    metadata.json                           one record per page: the seed's book_id, page_name, num_panels and
                                            embedding_indices (flat panel ids, page * N + slot), plus split,
                                            image_path and, per stored panel, panel_index, texts and boxes

Attributes: ``text_free`` (bool) says whether any page had a text-free twin; ``text_free_sha256`` (the twins' paths,
hashed; None without twins) is part of what defines the content, so adding twins to a corpus is never resumed into a
store made without them. A store made before twins existed lacks both arrays and reads as a store without twins
(``comicnb.store.reader.text_free_vision``).

Two words for a panel's place, never mixed: its *slot* is its position in the store's page row (0..N-1, what
flat ids count), its *panel_index* is its position in the page JSON's panel list. They differ after the reader
skipped a panel (bad box) or split a long page into parts.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

import pandas as pd

from comicnb.checkpoint import file_sha256 as file_sha256  # re-exported: the store records checkpoints by it

EMBEDDINGS = "panel_embeddings"  # the fused array, named as in both seeds
MASKS = "panel_masks"
MODALITY_EMBEDDINGS = "modalities"
MODALITY_MASKS = "modality_masks"
TEXT_FREE_VISION = "text_free_vision"
TEXT_FREE_MASKS = "text_free_masks"
DONE = "done"
METADATA = "metadata.json"


STORE_NAME = "panel_embeddings.zarr"


# Attributes that define the store's content: a store is resumed only when all of them match.
CONTENT_ATTRS = (
    "checkpoint_sha256",
    "metadata_sha256",
    "feature_dim",
    "max_panels",
    "pages_per_chunk",
    "precision",
    "text_free_sha256",
)


class StoreMismatchError(RuntimeError):
    """A store exists at the path but was made from another checkpoint, other pages or other settings."""


def text_free_paths(pages: pd.DataFrame) -> list[str]:
    """Each page's text-free twin (relative to data_root), "" where it has none or the table predates twins."""
    if "text_free_path" not in pages.columns:
        return [""] * len(pages)
    return ["" if not isinstance(path, str) else path for path in pages["text_free_path"]]


TEXT_FREE_SOURCES = ("twin", "blank", "none")  # where a panel's text-free picture comes from (EmbedConfig.text_free)
BLANK = "blank:"  # a source that blanks the page's text boxes: "blank:" + the JSON of its text boxes' places


def text_free_sources(pages: pd.DataFrame, mode: str = "twin") -> list[str]:
    """Each page's text-free source under ``mode``, "" where it has none.

    - ``twin``: the page's text-free twin (its path), where the corpus has one;
    - ``blank``: the page itself with its text boxes blanked (``comicnb.corpus.blank``; ``BLANK`` + the places of
      its text boxes), where every panel that has text has its text boxes' places (a page without text is its own
      text-free picture); a twin, where there is one, is not used, so blanking can be compared with it;
    - ``none``: no page.
    """
    if mode not in TEXT_FREE_SOURCES:
        raise ValueError(f"text_free={mode!r}: use one of {', '.join(TEXT_FREE_SOURCES)}")
    if mode == "none":
        return [""] * len(pages)
    if mode == "twin":
        return text_free_paths(pages)
    places = pages["text_box_boxes"] if "text_box_boxes" in pages.columns else [None] * len(pages)
    sources = []
    for texts, boxes in zip(pages["texts"], places):
        boxes = list(boxes) if boxes is not None else [None] * len(texts)
        covered = all(
            not str(text).strip() or (place is not None and len(place) > 0) for text, place in zip(texts, boxes)
        )
        plain = [[[round(float(v), 6) for v in box] for box in place] if place is not None else None for place in boxes]
        sources.append(BLANK + json.dumps(plain) if covered else "")
    return sources


def text_free_sha256(paths: list[str]) -> str | None:
    """What the text-free pictures contribute to a store's content: the hash of every page's source (its twin's path,
    or its blanked boxes), None when none has one (so a store made before twins existed still matches a corpus
    without them)."""
    if not any(paths):
        return None
    return hashlib.sha256(json.dumps(paths).encode()).hexdigest()


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
