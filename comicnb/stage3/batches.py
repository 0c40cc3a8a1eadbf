"""PyTorch access to the pages table: one item per page, panels cropped from one decode, padded into batches."""

from __future__ import annotations

import functools
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import pandas as pd
import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset
from torchvision import transforms

from comicnb.corpus.composition import composition_features
from comicnb.corpus.crops import crop_panels
from comicnb.corpus.reader import load_corpus, read_labels
from comicnb.stage3.fusion import MODALITIES  # the order of the last axis of modality_mask

_ITEM_COLUMNS = ["page_id", "image_path", "image_width", "image_height", "boxes", "texts"]


def default_transform(image_size: int = 224) -> Callable[[Image.Image], torch.Tensor]:
    """Resize a panel crop to image_size x image_size and turn it into a (3, H, W) float tensor in [0, 1]."""
    return transforms.Compose([transforms.Resize((image_size, image_size)), transforms.ToTensor()])


class PanelPageDataset(Dataset):
    """Pages of a pages table; item = panel crops of one page (images, texts, comp_feats, page_id).

    image_size is the default transform's output side and the shortest crop side kept when a JPEG page is decoded
    at reduced scale (see crop_panels); pass the backbone's input size along with its transform.
    """

    def __init__(
        self,
        pages: pd.DataFrame,
        data_root: str | Path,
        transform: Callable[[Image.Image], torch.Tensor] | None = None,
        image_size: int = 224,
        max_panels: int = 12,
    ) -> None:
        too_long = pages.loc[pages["num_panels"] > max_panels, "page_id"].tolist()
        if too_long:
            # Cutting panels here would lose them silently; load_corpus(max_panels=...) splits pages instead.
            raise ValueError(f"{len(too_long)} pages exceed max_panels={max_panels}, e.g. {too_long[:3]}")
        # Plain records, not the DataFrame: cheaper per item and cheap to pickle into DataLoader workers.
        self.records = pages[_ITEM_COLUMNS].to_dict("records")
        self.data_root = Path(data_root)
        self.transform = transform or default_transform(image_size)
        self.image_size = image_size
        self.max_panels = max_panels

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, index: int) -> dict[str, Any]:
        """Decode the page once, crop its panels, transform each crop."""
        record = self.records[index]
        with Image.open(self.data_root / record["image_path"]) as page:
            crops = crop_panels(page, record["boxes"], min_side=self.image_size)
        images = torch.stack([self.transform(crop) for crop in crops])  # (panels, 3, H, W)
        feats = composition_features(record["boxes"], record["image_width"], record["image_height"])
        return dict(
            images=images, texts=list(record["texts"]), comp_feats=torch.from_numpy(feats), page_id=record["page_id"]
        )


class Stage3PanelDataset(PanelPageDataset):
    """The seed's dataset: reads a corpus folder itself, keeping its narrative pages (by the PSS labels).

    ``Stage3PanelDataset(root_dir, pss_labels_path, only_narrative=True)`` as in the seed; the reader's problems
    table is kept as ``.corpus.problems``. Notebook 01's pages table (``PanelPageDataset``) is the usual route.
    """

    def __init__(
        self,
        root_dir: str | Path,
        pss_labels_path: str | Path | None = None,
        only_narrative: bool = True,
        transform: Callable[[Image.Image], torch.Tensor] | None = None,
        image_size: int = 224,
        max_panels: int = 12,
        bbox_format: str = "xywh",
    ) -> None:
        root = Path(root_dir)
        labels_path = Path(pss_labels_path) if pss_labels_path else root / "pss_labels.json"
        kept = ("narrative", "story") if only_narrative else set(read_labels(labels_path).values())
        self.corpus = load_corpus(
            root, labels_path, narrative_labels=kept, max_panels=max_panels, bbox_format=bbox_format
        )
        super().__init__(self.corpus.pages, root, transform, image_size, max_panels)


def collate_pages(
    items: Sequence[dict[str, Any]], tokenizer: Any = None, max_length: int = 64, max_panels: int | None = None
) -> dict[str, Any]:
    """Pad pages to the batch's most panels (or max_panels); padding is all-zero images, features and masks.

    Keys: images (B, N, 3, H, W), comp_feats (B, N, 7), panel_mask (B, N), modality_mask (B, N, 3) with the
    text flag 0 for empty text, texts (unpadded lists), page_ids; with a Hugging Face tokenizer also input_ids and
    attention_mask (B, N, L), L the longest text in the batch capped at max_length.
    """
    counts = [len(item["texts"]) for item in items]
    n_max = max(counts) if max_panels is None else max_panels
    if max(counts) > n_max:
        raise ValueError(f"a page has {max(counts)} panels, more than max_panels={n_max}")
    B, (C, H, W) = len(items), items[0]["images"].shape[1:]
    images = torch.zeros(B, n_max, C, H, W)
    comp_feats = torch.zeros(B, n_max, items[0]["comp_feats"].shape[1])
    modality_mask = torch.zeros(B, n_max, len(MODALITIES))
    for b, (item, n) in enumerate(zip(items, counts)):
        images[b, :n] = item["images"]
        comp_feats[b, :n] = item["comp_feats"]
        modality_mask[b, :n, 0] = modality_mask[b, :n, 2] = 1.0
        modality_mask[b, :n, 1] = torch.tensor([float(bool(t.strip())) for t in item["texts"]])
    batch = dict(
        images=images,
        comp_feats=comp_feats,
        panel_mask=modality_mask[..., 0].clone(),
        modality_mask=modality_mask,
        texts=[list(item["texts"]) for item in items],
        page_ids=[item["page_id"] for item in items],
    )
    if tokenizer is not None:
        batch.update(_tokenize(batch["texts"], n_max, tokenizer, max_length))
    return batch


def _tokenize(texts: list[list[str]], n_max: int, tokenizer: Any, max_length: int) -> dict[str, torch.Tensor]:
    """input_ids and attention_mask (B, N, L) for every panel slot in one tokenizer call.

    Empty and padding slots are tokenised as "" (just the special tokens): an all-zero attention row would make
    mean pooling divide by zero and attention softmax NaN; modality_mask is what marks them as absent.
    """
    flat = [t for page in texts for t in page + [""] * (n_max - len(page))]
    encoded = tokenizer(flat, padding=True, truncation=True, max_length=max_length, return_tensors="pt")
    B = len(texts)
    return {key: encoded[key].view(B, n_max, -1) for key in ("input_ids", "attention_mask")}  # (B, N, L)


def collate_stage3(items: Sequence[dict[str, Any]], tokenizer: Any = None, max_length: int = 64) -> dict[str, Any]:
    """The seed's collate function: ``collate_pages`` with the packaged MiniLM tokenizer unless another is given."""
    return collate_pages(items, tokenizer if tokenizer is not None else packaged_tokenizer(), max_length)


@functools.cache
def packaged_tokenizer() -> Any:
    """The tokenizer of the packaged all-MiniLM-L6-v2 (the default text model)."""
    from transformers import AutoTokenizer

    from comicnb.stage3.encoders import packaged_minilm

    return AutoTokenizer.from_pretrained(packaged_minilm())


def make_collate(
    tokenizer: Any = None, max_length: int = 64, max_panels: int | None = None
) -> Callable[[Sequence[dict[str, Any]]], dict[str, Any]]:
    """collate_pages with its options bound; picklable, so it works with DataLoader(num_workers > 0)."""
    return functools.partial(collate_pages, tokenizer=tokenizer, max_length=max_length, max_panels=max_panels)


def page_chunks(num_pages: int, pages_per_chunk: int) -> list[list[int]]:
    """Page rows in consecutive runs of pages_per_chunk (the last may be shorter)."""
    return [
        list(range(start, min(start + pages_per_chunk, num_pages))) for start in range(0, num_pages, pages_per_chunk)
    ]


def page_loader(
    pages: pd.DataFrame,
    data_root: str | Path,
    model: Any,
    batches: Sequence[Sequence[int]],
    max_panels: int,
    num_workers: int = 0,
) -> DataLoader:
    """Batches of whole pages for a PanelFeatureExtractor: each page decoded once, cropped with the model's transform,
    tokenised with its tokenizer, padded to max_panels; ``batches`` lists the page rows of each batch."""
    dataset = PanelPageDataset(
        pages, data_root, transform=model.image_transform, image_size=model.visual.image_size, max_panels=max_panels
    )
    collate = make_collate(model.tokenizer, max_length=model.cfg.max_text_length, max_panels=max_panels)
    return DataLoader(dataset, batch_sampler=batches, collate_fn=collate, num_workers=num_workers)


BATCH_TENSOR_KEYS = ("images", "input_ids", "attention_mask", "comp_feats", "modality_mask", "panel_mask")


def tensors_only(batch: Mapping[str, Any], device: torch.device) -> dict[str, torch.Tensor]:
    """The model's tensor inputs of a collated batch, on ``device``."""
    return {key: batch[key].to(device) for key in BATCH_TENSOR_KEYS if key in batch}
