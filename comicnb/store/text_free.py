"""The text-free pass of the writer: each panel's crop from its page's text-free picture, through the vision encoder.

A page's text-free picture is its twin (docs/corpus.md, "Text-free pages": the same drawing with its balloons and
caption boxes empty), or the page with its text boxes blanked (``comicnb.corpus.blank``), as the store's setting
``text_free`` says (``comicnb.store.schema.text_free_sources``). Its crops are cut with the page's own boxes, decoded
and transformed exactly as the page's, and encoded by the same vision pathway as the stored
``modalities[..., 0, :]``, so Stage 4 can offer a panel's picture without its words. Pages without one cost nothing:
no decode, no forward.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from PIL import Image
from torch.utils.data import DataLoader

from comicnb.corpus.blank import blank_text_boxes, page_text_boxes
from comicnb.corpus.crops import crop_panels
from comicnb.precision import autocast
from comicnb.stage3.batches import PanelPageDataset
from comicnb.stage3.model import PanelFeatureExtractor, modality_only
from comicnb.store.schema import BLANK, TEXT_FREE_MASKS, TEXT_FREE_VISION, text_free_sources


class TextFreePages(PanelPageDataset):
    """The pages' text-free pictures: item = their panel crops (the page's boxes), or no images."""

    def __init__(
        self,
        pages: pd.DataFrame,
        data_root: str | Path,
        transform: Any,
        image_size: int,
        max_panels: int,
        sources: list[str] | None = None,
    ) -> None:
        super().__init__(pages, data_root, transform, image_size, max_panels)
        self.sources = text_free_sources(pages) if sources is None else sources

    def __getitem__(self, index: int) -> dict[str, Any]:
        """The text-free picture's crops, decoded once; a page without one is not opened at all."""
        source, record = self.sources[index], self.records[index]
        if not source:
            return {"images": None}
        if source.startswith(BLANK):
            with Image.open(self.data_root / record["image_path"]) as page:
                blanked = blank_text_boxes(page, page_text_boxes(record["boxes"], json.loads(source[len(BLANK) :])))
            crops = crop_panels(blanked, record["boxes"])
            return {"images": torch.stack([self.transform(crop) for crop in crops])}
        with Image.open(self.data_root / source) as twin:
            crops = crop_panels(twin, record["boxes"], min_side=self.image_size)
        return {"images": torch.stack([self.transform(crop) for crop in crops])}


def collate_text_free(items: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """The crops of a chunk's twins as one flat batch: images (T, 3, H, W) or None, and each crop's page row in the
    chunk and slot."""
    rows: list[int] = []
    slots: list[int] = []
    images = []
    for row, item in enumerate(items):
        if item["images"] is not None:
            count = len(item["images"])
            rows += [row] * count
            slots += range(count)
            images.append(item["images"])
    return dict(
        images=torch.cat(images) if images else None,
        rows=torch.tensor(rows, dtype=torch.long),
        slots=torch.tensor(slots, dtype=torch.long),
        pages=len(items),
    )


def text_free_loader(
    pages: pd.DataFrame,
    data_root: str | Path,
    model: PanelFeatureExtractor,
    batches: Sequence[Sequence[int]],
    max_panels: int,
    num_workers: int = 0,
    sources: list[str] | None = None,
) -> DataLoader:
    """Batches of the text-free pictures (``sources``, default the twins) of the same page rows as ``page_loader``'s
    batches, cropped with the model's transform."""
    dataset = TextFreePages(pages, data_root, model.image_transform, model.visual.image_size, max_panels, sources)
    return DataLoader(dataset, batch_sampler=batches, collate_fn=collate_text_free, num_workers=num_workers)


def encode_text_free(
    model: PanelFeatureExtractor,
    batch: Mapping[str, Any],
    max_panels: int,
    device: torch.device,
    precision: str,
) -> dict[str, np.ndarray]:
    """The text-free arrays of one chunk: (pages, N, D) vision embeddings of the twin crops, zero where absent, and
    their (pages, N) masks."""
    vectors = np.zeros((batch["pages"], max_panels, model.feature_dim), dtype=np.float32)
    masks = np.zeros((batch["pages"], max_panels), dtype=bool)
    if batch["images"] is not None:
        images = batch["images"].to(device)
        # The model's own encode with only vision present: the same path, dtype and autocast as modalities[..., 0].
        inputs = {"images": images, "modality_mask": modality_only("vision", len(images), device)}
        with torch.inference_mode(), autocast(precision, device):
            vision = model.encode(inputs).modalities[:, 0]
        rows, slots = batch["rows"].numpy(), batch["slots"].numpy()
        vectors[rows, slots] = vision.float().cpu().numpy()
        masks[rows, slots] = True
    return {TEXT_FREE_VISION: vectors, TEXT_FREE_MASKS: masks}
