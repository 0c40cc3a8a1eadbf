"""Text-free twins: drawn beside every synthetic page, read as the page's twin, embedded into the store."""

from __future__ import annotations

import hashlib
import json
import math
import shutil
from pathlib import Path

import numpy as np
import PIL
import pytest
import torch
import zarr
from PIL import Image

from comicnb import checkpoint
from comicnb.corpus import crop_panels, load_corpus, load_pages, load_run_pages, save_corpus, save_pages, synth
from comicnb.corpus.reader import TEXT_FREE, text_free_name
from comicnb.search import PanelSearch
from comicnb.stage3 import checkpoints
from comicnb.stage3.model import PanelFeatureExtractor, model_from_checkpoint
from comicnb.store import (
    MODALITY_EMBEDDINGS,
    STORE_NAME,
    TEXT_FREE_MASKS,
    TEXT_FREE_VISION,
    EmbedConfig,
    StoreMismatchError,
    generate,
    open_embeddings,
    text_free_vision,
    verify_store,
)

SMALL = (320, 480)
CORPUS = dict(books=3, pages=6, seed=3, page_size=SMALL)
# sha256 of the sorted (path, sha256) pairs of every file but the sidecar of generate(**CORPUS) (PIL 13.0.0, the locked
# version): the pages stayed the bytes drawn before twins existed until the version 4 generator (cutaways, issue 21)
# changed the stories; version 5 added each text box's box to the page JSON (its images the same bytes as version
# 4's); any later change to what is drawn must be as deliberate.
PAGES_DIGEST = "a2ab309aa8ee02157e19f16af5e1e25c5635332e528f3f25323245813fb1ba07"
PIL_OF_THAT_DIGEST = "13.0.0"
MCU = 16  # a JPEG's coding block at 4:2:0 chroma subsampling, PIL's default


@pytest.fixture(scope="module")
def corpora(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The small corpus with twins, the same without them, and a dirty one."""
    root = tmp_path_factory.mktemp("textfree")
    synth.generate(root / "twins", **CORPUS)
    synth.generate(root / "plain", **CORPUS, text_free=False)
    synth.generate(root / "dirty", books=4, pages=8, seed=3, page_size=SMALL, dirty=True)
    return root


def digests(root: Path) -> dict[str, str]:
    """sha256 of every file under root, by relative path."""
    return {
        p.relative_to(root).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


def is_twin(name: str) -> bool:
    """Whether a file name is a text-free twin's."""
    return f".{TEXT_FREE}." in name


def pixels(path: Path) -> np.ndarray:
    """An image file's RGB pixels as ints."""
    with Image.open(path) as img:
        return np.asarray(img.convert("RGB")).astype(int)


def text_cover(areas: list[tuple[float, ...]], shape: tuple[int, ...], block: int) -> np.ndarray:
    """(H, W) True inside the text areas; with block > 1, every block (MCU) they touch and the blocks around it, since
    a JPEG codes each block on its own but its decoder blends colour across neighbouring blocks."""
    cover = np.zeros(shape[:2], dtype=bool)
    for x0, y0, x1, y1 in areas:
        if block == 1:
            cover[math.floor(y0) : math.ceil(y1), math.floor(x0) : math.ceil(x1)] = True
        else:
            top, left = max(0, (math.floor(y0) // block - 1) * block), max(0, (math.floor(x0) // block - 1) * block)
            cover[top : (math.ceil(y1) // block + 2) * block, left : (math.ceil(x1) // block + 2) * block] = True
    return cover


# --- the generator ----------------------------------------------------------------------------------------------


def test_every_page_image_has_a_twin_of_its_size_and_mode(corpora: Path) -> None:
    for name in ("twins", "dirty"):
        for book in sorted(corpora.joinpath(name).glob("book_*")):
            images = {p.name for p in book.iterdir() if p.suffix in (".jpg", ".png") and not is_twin(p.name)}
            twins = {p.name for p in book.iterdir() if is_twin(p.name)}
            assert twins == {text_free_name(image) for image in images}, book
            for image in images if name == "twins" else ():  # the dirty pages' images are broken on purpose
                with Image.open(book / image) as page, Image.open(book / text_free_name(image)) as twin:
                    assert (twin.size, twin.mode) == (page.size, page.mode)
    assert not any(is_twin(name) for name in digests(corpora / "plain"))


def test_pages_are_the_same_bytes_with_and_without_twins(corpora: Path) -> None:
    with_twins, without = digests(corpora / "twins"), digests(corpora / "plain")
    assert {k: v for k, v in with_twins.items() if not is_twin(k)} == without
    assert sum(map(is_twin, with_twins)) == 3 * 6


@pytest.mark.skipif(PIL.__version__ != PIL_OF_THAT_DIGEST, reason="the digest was taken with another PIL's codecs")
def test_pages_are_the_bytes_the_version_5_generator_draws(tmp_path: Path) -> None:
    """With no grid read down its columns (down_share 0, which draws from a generator of its own), every page is the
    bytes the version 5 generator draws: twins and down-reading grids change none of them."""
    synth.generate(tmp_path / "twins", **CORPUS, down_share=0.0)
    files = {k: v for k, v in digests(tmp_path / "twins").items() if not is_twin(k) and k != "ground_truth.json"}
    assert hashlib.sha256(json.dumps(sorted(files.items())).encode()).hexdigest() == PAGES_DIGEST


def test_twin_files_differ_from_their_pages_only_where_text_is(corpora: Path) -> None:
    """Outside the balloons, caption boxes and text rows, a PNG twin is the page's pixels and a JPEG twin differs at
    most in the coding blocks around them."""
    plan = synth.plan_corpus(CORPUS["books"], CORPUS["pages"], CORPUS["seed"], page_size=SMALL)
    changed = 0
    for b, book in plan["books"].items():
        for p, page in book["pages"].items():
            areas: list = []
            synth.render_page(page, book, areas=areas)
            image = corpora / "twins" / b / f"{p}.{page['format']}"
            page_px, twin_px = pixels(image), pixels(image.with_name(text_free_name(image.name)))
            differs = (page_px != twin_px).any(axis=-1)
            outside = differs & ~text_cover(areas, page_px.shape, 1 if page["format"] == "png" else MCU)
            assert not outside.any(), (b, p, int(outside.sum()))
            changed += bool(differs.any())
    assert changed == CORPUS["books"] * CORPUS["pages"]  # every page has some text: a cover its title at least


def test_a_twin_keeps_the_drawing_and_loses_exactly_the_text() -> None:
    """Drawn in memory: the twin differs from the page in every panel with text and in no other, only inside the
    text areas, and it is the same picture whatever the words were."""
    plan = synth.plan_corpus(4, 6, seed=11, page_size=SMALL)
    for book in plan["books"].values():
        for page in book["pages"].values():
            areas: list = []
            drawn = np.asarray(synth.render_page(page, book, areas=areas)).astype(int)
            twin = np.asarray(synth.render_page(page, book, text=False)).astype(int)
            differs = (drawn != twin).any(axis=-1)
            assert not (differs & ~text_cover(areas, drawn.shape, 1)).any()
            for (x0, y0, x1, y1), panel in zip(page["boxes"], page["panels"]):
                assert differs[y0:y1, x0:x1].any() == any(line["text"].strip() for line in panel["lines"])
            if page["label"] == "narrative":  # the twin does not depend on the words inside the balloons
                reworded = [
                    {**panel, "lines": [_same_shape(line) for line in panel["lines"]]} for panel in page["panels"]
                ]
                other = {**page, "panels": reworded}
                assert np.array_equal(np.asarray(synth.render_page(other, book, text=False)).astype(int), twin)


def _same_shape(line: dict) -> dict:
    """A line whose text wraps like the original (same words, each turned into another word of equal letters)."""
    return {**line, "text": " ".join(word[::-1] for word in line["text"].split())}


def test_the_command_line_can_leave_twins_out(tmp_path: Path) -> None:
    import argparse

    parser = argparse.ArgumentParser()
    synth.add_arguments(parser)
    args = parser.parse_args(["--out", str(tmp_path / "c"), "--books", "1", "--pages", "2", "--no-text-free"])
    assert synth.main(args) == 0 and not any(is_twin(name) for name in digests(tmp_path / "c"))
    summary = synth.generate(tmp_path / "d", books=1, pages=2, page_size=SMALL)
    assert summary["text_free_pages"] == 2


# --- the reader -------------------------------------------------------------------------------------------------


def test_the_pages_table_names_each_pages_twin_and_twins_are_no_problem(corpora: Path) -> None:
    for name in ("twins", "dirty"):
        corpus = load_corpus(corpora / name)
        # The twin of the page's stem (the dirty page read from page_x.jpeg beside page_x.jpg has page_x.textfree.jpg).
        stems = [path.rsplit(".", 1)[0] for path in corpus.pages.image_path]
        assert [path.rsplit(".", 2)[0] for path in corpus.pages.text_free_path] == stems
        assert all(is_twin(path) and (corpora / name / path).is_file() for path in corpus.pages.text_free_path)
        assert not corpus.problems.file.dropna().map(is_twin).any()
    plain = load_corpus(corpora / "plain")
    assert (plain.pages.text_free_path == "").all() and plain.problems.empty


# --- the store --------------------------------------------------------------------------------------------------


def make_run(root: Path, text_free: bool) -> Path:
    """Notebook 01's artefacts of the small corpus (pages split past 4 panels) and a tiny-model checkpoint."""
    synth.generate(root / "data", **CORPUS, text_free=text_free)
    save_corpus(load_corpus(root / "data", max_panels=4), root / "run")
    torch.manual_seed(0)
    model = PanelFeatureExtractor(tiny=True, feature_dim=32)
    checkpoint.save_checkpoint(
        {"model_state_dict": model.state_dict(), "config": {"model": model.config, "train": {"seed": 0}}},
        checkpoints(root / "run").last,
    )
    return root / "run"


@pytest.fixture(scope="module")
def twin_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A run of the corpus with twins, and its store."""
    run = make_run(tmp_path_factory.mktemp("twin-run"), text_free=True)
    summary = generate(run, cfg=EmbedConfig(pages_per_chunk=3))
    assert summary["complete"] and summary["text_free_panels"] == summary["panels"]
    return run


@pytest.fixture(scope="module")
def plain_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A run of the same corpus without twins, and its store."""
    run = make_run(tmp_path_factory.mktemp("plain-run"), text_free=False)
    summary = generate(run, cfg=EmbedConfig(pages_per_chunk=3))
    assert summary["complete"] and summary["text_free_panels"] == 0
    return run


def crops_of(path: Path, boxes: list, side: int) -> list[Image.Image]:
    """A page image's panel crops, cut as the store's writer cuts them."""
    with Image.open(path) as image:
        return crop_panels(image, boxes, min_side=side)


def test_the_store_keeps_the_vision_embedding_of_each_twin_crop(twin_run: Path) -> None:
    group = open_embeddings(twin_run / STORE_NAME)
    vectors, masks = text_free_vision(group)
    pages, data_root = load_run_pages(twin_run)
    assert vectors.shape == (len(pages), 4, 32) and vectors.dtype == np.float32 and masks.dtype == bool
    assert masks.sum(axis=1).tolist() == pages.num_panels.tolist() and pages.part.max() > 0
    assert not vectors[~masks].any()
    assert group.attrs["text_free"] is True and group.attrs["text_free_sha256"]
    modalities = np.asarray(group[MODALITY_EMBEDDINGS][:])[..., 0, :]
    model = model_from_checkpoint(checkpoints(twin_run).last)
    same_crop = other_crop = 0
    for row in pages.itertuples():
        twin_crops, page_crops = (
            crops_of(data_root / path, row.boxes, model.visual.image_size)
            for path in (row.text_free_path, row.image_path)
        )
        with torch.no_grad():
            direct = model.visual(torch.stack([model.image_transform(crop) for crop in twin_crops])).numpy()
        stored = vectors[row.Index, : row.num_panels]
        assert np.allclose(stored, direct, atol=1e-5), row.page_id
        for slot, (twin, page) in enumerate(zip(twin_crops, page_crops)):  # a panel without text: the page's vector
            if np.array_equal(np.asarray(twin), np.asarray(page)):
                same_crop += 1
                assert np.allclose(stored[slot], modalities[row.Index, slot], atol=1e-5)
            else:
                other_crop += 1
                assert not np.allclose(stored[slot], modalities[row.Index, slot], atol=1e-4)
    assert same_crop and other_crop
    report = verify_store(twin_run / STORE_NAME, pages)
    assert report["text_free_match"] and report["text_free_panels"] == report["panels"]
    assert report["text_free_nonzero_absent"] == 0


def test_a_corpus_without_twins_still_embeds_and_searches(plain_run: Path) -> None:
    group = open_embeddings(plain_run / STORE_NAME)
    vectors, masks = text_free_vision(group)
    assert not masks.any() and not vectors.any() and vectors.shape == group[MODALITY_EMBEDDINGS].shape[:2] + (32,)
    assert group.attrs["text_free"] is False and group.attrs["text_free_sha256"] is None
    report = verify_store(plain_run / STORE_NAME, load_pages(plain_run / "pages.jsonl"))
    assert report["counts_match"] and report["text_free_match"] and report["text_free_panels"] == 0
    search = PanelSearch(plain_run / STORE_NAME)
    hits = search.neighbours(search.panel_ids[:3], k=1)
    assert (hits.panel_id.to_numpy() == search.panel_ids[:3]).all()


def test_a_store_made_before_twins_reads_and_resumes_as_one_without_them(plain_run: Path, tmp_path: Path) -> None:
    old = tmp_path / "old.zarr"
    shutil.copytree(plain_run / STORE_NAME, old)
    for name in (TEXT_FREE_VISION, TEXT_FREE_MASKS):  # what a store written before this change lacks
        shutil.rmtree(old / name)
    group = zarr.open_group(str(old), mode="r+")
    for attr in ("text_free", "text_free_sha256"):
        del group.attrs[attr]
    assert TEXT_FREE_VISION not in group and "text_free" not in group.attrs
    vectors, masks = text_free_vision(open_embeddings(old))
    assert not masks.any() and not vectors.any() and masks.shape == np.asarray(group["panel_masks"][:]).shape
    resumed = generate(plain_run, store=old, cfg=EmbedConfig(pages_per_chunk=3))
    assert resumed["computed_chunks"] == 0 and resumed["complete"]
    reopened = open_embeddings(old)
    assert reopened.attrs["text_free"] is False and not np.asarray(reopened[TEXT_FREE_MASKS][:]).any()


def test_twins_added_to_a_corpus_are_not_resumed_into_a_store_made_without_them(plain_run: Path) -> None:
    pages_file = plain_run / "pages.jsonl"
    original = pages_file.read_bytes()
    try:
        pages = load_pages(pages_file)
        pages["text_free_path"] = [text_free_name(path) for path in pages.image_path]
        save_pages(pages, pages_file)
        with pytest.raises(StoreMismatchError, match="text_free_sha256"):
            generate(plain_run, cfg=EmbedConfig(pages_per_chunk=3))
    finally:
        pages_file.write_bytes(original)


# --- text-free pictures for a corpus without twins: the page with its text boxes blanked --------------------------


def test_blanked_pages_stand_in_for_missing_twins_in_the_store(plain_run: Path, tmp_path: Path) -> None:
    from comicnb.corpus.blank import blank_text_boxes, page_text_boxes

    store = tmp_path / "blank.zarr"
    summary = generate(plain_run, store=store, cfg=EmbedConfig(pages_per_chunk=3, text_free="blank"))
    assert summary["complete"] and summary["text_free_panels"] == summary["panels"]
    group = open_embeddings(store)
    assert group.attrs["text_free_source"] == "blank" and group.attrs["text_free"] is True
    vectors, masks = text_free_vision(group)
    pages, data_root = load_run_pages(plain_run)
    model = model_from_checkpoint(checkpoints(plain_run).last)
    for row in pages.head(4).itertuples():
        with Image.open(data_root / row.image_path) as page:
            blanked = blank_text_boxes(page, page_text_boxes(row.boxes, row.text_box_boxes))
        crops = crop_panels(blanked, row.boxes)
        with torch.no_grad():
            direct = model.visual(torch.stack([model.image_transform(crop) for crop in crops])).numpy()
        assert np.allclose(vectors[row.Index, : row.num_panels], direct, atol=1e-5), row.page_id
    report = verify_store(store, pages)
    assert report["text_free_match"] and report["text_free_nonzero_absent"] == 0
    with pytest.raises(StoreMismatchError, match="text_free_sha256"):  # twins and blanks are other content
        generate(plain_run, store=store, cfg=EmbedConfig(pages_per_chunk=3, text_free="twin"))


def test_a_page_is_blanked_only_where_every_text_has_its_box() -> None:
    import pandas as pd

    from comicnb.store.schema import BLANK, text_free_sources

    pages = pd.DataFrame(
        {
            "texts": [["Hi!", ""], ["Hi!"], ["", ""], ["Hi!"]],
            "text_box_boxes": [[[[0.1, 0.1, 0.5, 0.3]], None], [None], [None, None], [[]]],
            "text_free_path": ["a.textfree.png", "", "", ""],
        }
    )
    sources = text_free_sources(pages, "blank")
    assert sources[0].startswith(BLANK) and json.loads(sources[0][len(BLANK) :]) == [[[0.1, 0.1, 0.5, 0.3]], None]
    assert sources[1] == "" and sources[2] == BLANK + "[null, null]" and sources[3] == ""
    assert text_free_sources(pages, "twin") == ["a.textfree.png", "", "", ""]
    assert text_free_sources(pages, "none") == [""] * 4
    with pytest.raises(ValueError, match="text_free='both'"):
        text_free_sources(pages, "both")


def test_no_text_free_pictures_when_asked_for_none(twin_run: Path, tmp_path: Path) -> None:
    summary = generate(twin_run, store=tmp_path / "none.zarr", cfg=EmbedConfig(pages_per_chunk=3, text_free="none"))
    assert summary["complete"] and summary["text_free_panels"] == 0
    assert verify_store(tmp_path / "none.zarr", load_run_pages(twin_run)[0])["text_free_match"]
