"""comicnb.corpus on small corpora drawn here by hand: formats, every problem class, features, crops, splits."""

from __future__ import annotations

import json
import struct
import zlib
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image, ImageDraw

from comicnb.corpus import (
    COMPOSITION_FEATURES,
    PAGE_COLUMNS,
    SPLITS,
    Corpus,
    bbox_fit,
    clean_text,
    composition_features,
    composition_table,
    crop_panels,
    load_corpus,
    load_pages,
    load_run_pages,
    repair_box,
    save_corpus,
    save_pages,
    split_books,
    split_counts,
    synth,
    to_rgb,
)

W, H = 120, 160
COLOURS = [(200, 30, 30), (30, 200, 30), (30, 30, 200), (200, 200, 30), (30, 200, 200), (200, 30, 200)]
# Two-by-two grid of (x1, y1, x2, y2) boxes with a margin, as Stage 1 lists them (reading order).
GRID = [[5, 5, 58, 78], [62, 5, 115, 78], [5, 82, 58, 155], [62, 82, 115, 155]]


def draw_page(boxes: list[list[float]], size: tuple[int, int] = (W, H)) -> Image.Image:
    """White page with each box filled in its own colour."""
    img = Image.new("RGB", size, "white")
    pen = ImageDraw.Draw(img)
    for i, (x1, y1, x2, y2) in enumerate(boxes):
        pen.rectangle([x1, y1, x2 - 1, y2 - 1], fill=COLOURS[i % len(COLOURS)])
    return img


def as_format(box: list[float], bbox_format: str) -> list[float]:
    """An xyxy box written in bbox_format."""
    x1, y1, x2, y2 = box
    return [x1, y1, x2 - x1, y2 - y1] if bbox_format == "xywh" else [x1, y1, x2, y2]


def write_page(
    root: Path,
    book: str,
    page: str,
    boxes: list[list[float]] | None = None,
    texts: list[str] | None = None,
    bbox_format: str = "xywh",
    suffix: str = ".png",
) -> None:
    """Draw one page image and write its Stage 1 JSON (boxes given as xyxy)."""
    boxes = GRID if boxes is None else boxes
    texts = texts if texts is not None else [f"{book} {page} line {i}" for i in range(len(boxes))]
    (root / book).mkdir(parents=True, exist_ok=True)
    draw_page([b for b in boxes if b[2] > b[0] and b[3] > b[1]]).save(root / book / f"{page}{suffix}")
    panels = [{"bbox": as_format(b, bbox_format), "text": t, "confidence": 0.9} for b, t in zip(boxes, texts)]
    write_json(root / book / f"{page}.json", {"image_width": W, "image_height": H, "panels": panels})


def write_json(path: Path, doc: object) -> None:
    """UTF-8 JSON file."""
    path.write_text(json.dumps(doc), encoding="utf-8")


def make_corpus(root: Path, books: int = 3, pages: int = 2, bbox_format: str = "xywh", flat: bool = False) -> Path:
    """books x pages narrative pages plus one cover per book, and its PSS labels in nested or flat form."""
    labels: dict[str, dict[str, str]] = {}
    for b in range(books):
        book = f"book_{b:03d}"
        for p in range(pages + 1):
            boxes = [[x1 + b, y1 + p, x2, y2] for x1, y1, x2, y2 in GRID[: 2 + (b + p) % 3]]
            write_page(root, book, f"page_{p:03d}", boxes, bbox_format=bbox_format)
            labels.setdefault(book, {})[f"page_{p:03d}"] = "cover" if p == 0 else "narrative"
    write_labels(root, labels, flat)
    return root


def write_labels(root: Path, labels: dict[str, dict[str, str]], flat: bool = False) -> None:
    """pss_labels.json in the nested form, or in CoSMo's flat form with 'story' for 'narrative'."""
    if flat:
        labels = {
            f"{b}/{p}": ("story" if v == "narrative" else v) for b, pages in labels.items() for p, v in pages.items()
        }
    write_json(root / "pss_labels.json", labels)


def labels_of(root: Path) -> dict:
    """The corpus's nested PSS labels."""
    return json.loads((root / "pss_labels.json").read_text())


def problems_of(corpus: Corpus, problem: str) -> pd.DataFrame:
    """Rows of one problem class."""
    return corpus.problems[corpus.problems["problem"] == problem]


@pytest.fixture
def corpus_root(tmp_path: Path) -> Path:
    return make_corpus(tmp_path / "corpus")


def test_clean_corpus_has_every_narrative_page_and_panel(corpus_root: Path) -> None:
    corpus = load_corpus(corpus_root)
    pages = corpus.pages
    assert corpus.problems.empty
    assert set(PAGE_COLUMNS) <= set(pages.columns)
    assert len(pages) == 3 * 2 and pages["page_id"].is_unique
    assert (pages["page_name"] != "page_000").all()  # covers are not narrative
    row = pages.set_index("page_id").loc["book_001/page_002"]
    assert row["image_path"] == "book_001/page_002.png" and (row["image_width"], row["image_height"]) == (W, H)
    assert row["boxes"] == [[x1 + 1.0, y1 + 2.0, x2, y2] for x1, y1, x2, y2 in GRID[:2]]
    assert row["texts"] == ["book_001 page_002 line 0", "book_001 page_002 line 1"]
    assert row["num_panels"] == 2 and row["panel_index"] == [0, 1] and row["part"] == 0
    assert corpus.summary()["panels"].sum() == pages["num_panels"].sum()


def test_both_pss_forms_give_the_same_pages(tmp_path: Path) -> None:
    nested = load_corpus(make_corpus(tmp_path / "nested")).pages
    flat = load_corpus(make_corpus(tmp_path / "flat", flat=True)).pages
    assert set(flat["label"]) == {"story"} and set(nested["label"]) == {"narrative"}
    pd.testing.assert_frame_equal(nested.drop(columns="label"), flat.drop(columns="label"))


def test_labels_given_as_mapping_and_by_file_name(corpus_root: Path) -> None:
    by_file = {f"{b}/{p}.png": v for b, pages in labels_of(corpus_root).items() for p, v in pages.items()}
    pd.testing.assert_frame_equal(load_corpus(corpus_root, by_file).pages, load_corpus(corpus_root).pages)


def test_both_bbox_forms_give_the_same_boxes(tmp_path: Path) -> None:
    xywh_root = make_corpus(tmp_path / "xywh", bbox_format="xywh")
    xyxy_root = make_corpus(tmp_path / "xyxy", bbox_format="xyxy")
    xywh = load_corpus(xywh_root, bbox_format="xywh").pages
    xyxy = load_corpus(xyxy_root, bbox_format="xyxy").pages
    assert xywh["boxes"].tolist() == xyxy["boxes"].tolist()
    assert bbox_fit(xywh_root)["fit"].idxmax() == "xywh" and bbox_fit(xyxy_root)["fit"].idxmax() == "xyxy"
    fit = bbox_fit(xywh_root)
    assert fit.loc["xywh", "fit"] == 1.0 and fit.loc["xyxy", "fit"] < 0.5 and fit.loc["xywh", "boxes"] == 3 * 3 * 3


def test_composition_features_known_box() -> None:
    feats = composition_features([[10, 20, 50, 100]], 100, 200)
    expected = [0.3, 0.3, 0.4, 0.4, np.log(40 / 80), 40 * 80 / (100 * 200), 10 / 100]
    assert feats.shape == (1, len(COMPOSITION_FEATURES)) and feats.dtype == np.float32
    np.testing.assert_allclose(feats[0], expected, rtol=1e-6)
    assert composition_features([], 100, 200).shape == (0, 7)


def test_composition_features_over_a_corpus(corpus_root: Path) -> None:
    pages = load_corpus(corpus_root).pages
    feats = np.concatenate([composition_features(r.boxes, r.image_width, r.image_height) for r in pages.itertuples()])
    assert feats.shape == (pages["num_panels"].sum(), 7) and np.isfinite(feats).all()
    assert (feats.std(axis=0) > 0).all(), "a feature is constant across the corpus"
    assert ((feats[:, [0, 1, 2, 3, 5]] > 0) & (feats[:, [0, 1, 2, 3, 5]] <= 1)).all()
    assert ((feats[:, 6] >= 0) & (feats[:, 6] <= 0.5)).all()


def test_composition_features_follow_the_boxes_not_their_order() -> None:
    boxes = np.array(GRID, dtype=float)
    perm = np.array([2, 0, 3, 1])
    np.testing.assert_array_equal(composition_features(boxes[perm], W, H), composition_features(boxes, W, H)[perm])


def test_crop_panels_shapes_and_content() -> None:
    page = draw_page(GRID)
    crops = crop_panels(page, [[5, 5, 58, 78], [62.4, 82.6, 114.2, 150.1]])
    assert [c.size for c in crops] == [(53, 73), (53, 69)]  # float edges round outwards
    assert crops[0].getpixel((20, 20)) == COLOURS[0] and crops[1].getpixel((20, 20)) == COLOURS[3]
    resized = crop_panels(page, GRID, size=32) + crop_panels(page, GRID[:1], size=(40, 20))
    assert [c.size for c in resized] == [(32, 32)] * 4 + [(40, 20)] and {c.mode for c in resized} == {"RGB"}
    assert crop_panels(page, [[0, 0, 0.2, 0.2]])[0].size == (1, 1)


def test_crop_panels_decodes_jpeg_at_reduced_scale(tmp_path: Path) -> None:
    boxes = [[0, 0, 800, 390], [0, 410, 400, 800], [400, 410, 800, 800]]
    draw_page(boxes, size=(800, 800)).save(tmp_path / "page.jpg", quality=95)
    draw_page(boxes, size=(800, 800)).save(tmp_path / "page.png")
    with Image.open(tmp_path / "page.jpg") as jpeg:
        crops = crop_panels(jpeg, boxes, min_side=90)
        assert jpeg.size == (200, 200)  # 1/4: the shortest box side, 390, still gives >= 90 pixels
    assert [c.size for c in crops] == [(200, 98), (100, 98), (100, 98)]
    assert all(np.abs(np.subtract(c.getpixel((50, 50)), COLOURS[i])).max() < 8 for i, c in enumerate(crops))
    with Image.open(tmp_path / "page.png") as png:
        assert [c.size for c in crop_panels(png, boxes, min_side=90)] == [(800, 390), (400, 390), (400, 390)]
    with Image.open(tmp_path / "page.jpg") as jpeg:
        assert [c.size for c in crop_panels(jpeg, boxes, min_side=300)] == [(800, 390), (400, 390), (400, 390)]


def test_to_rgb_modes() -> None:
    grey = Image.new("L", (4, 4), 77)
    assert to_rgb(grey).mode == "RGB" and to_rgb(grey).getpixel((0, 0)) == (77, 77, 77)
    assert to_rgb(Image.new("CMYK", (4, 4), (0, 255, 255, 0))).getpixel((0, 0)) == (255, 0, 0)
    half_red = Image.new("RGBA", (4, 4), (255, 0, 0, 128))
    assert to_rgb(half_red).getpixel((0, 0)) == (255, 127, 127)  # composited on white, not on black
    wide = Image.fromarray(np.array([[0, 257 * 100, 32896, 65535]], dtype=np.uint16))
    assert wide.mode == "I;16"
    assert np.asarray(to_rgb(wide))[0, :, 0].tolist() == [0, 100, 128, 255]  # scaled, not clipped at 255
    palette = Image.new("P", (4, 4), 1)
    palette.putpalette([0, 0, 0, 10, 20, 30] + [0] * 762)
    assert to_rgb(palette).getpixel((0, 0)) == (10, 20, 30)
    rgb = Image.new("RGB", (2, 2))
    assert to_rgb(rgb) is rgb


def test_clean_text() -> None:
    assert clean_text("Cafe\u0301 \u200bnow\u202e!\x07") == "Café now!"
    assert clean_text("  two\n\tlines  \u00a0here ") == "two lines here"
    assert clean_text("bad \ud800 surrogate") == "bad surrogate"


@pytest.mark.parametrize(
    "bbox, expected",
    [
        ([10, 10, 20, 20], ([10, 10, 30, 30], None, "")),
        ([100, 150, 40, 40], ([100, 150, W, H], "bbox_out_of_bounds", "repaired")),
        ([W + 5, 10, 20, 20], (None, "bbox_outside_page", "skipped_panel")),
        ([-10, 5, 30, 20], ([0, 5, 20, 25], "bbox_negative", "repaired")),
        ([10, 5, -30, 20], (None, "bbox_negative", "skipped_panel")),
        ([-50, 5, 30, 20], (None, "bbox_negative", "skipped_panel")),
        ([10, 10, 0, 20], (None, "bbox_zero_area", "skipped_panel")),
    ],
)
def test_repair_box(bbox: list[float], expected: tuple) -> None:
    box, problem, action, _ = repair_box(bbox, W, H, "xywh")
    assert (box, problem, action) == expected


def bad_page_corpus(root: Path, damage: Callable[[Path], None]) -> Corpus:
    """A 3-book corpus where damage(book_000 folder) breaks something; returns the loaded corpus."""
    make_corpus(root, pages=1)
    damage(root / "book_000")
    return load_corpus(root)


def assert_one_problem(corpus: Corpus, problem: str, action: str, page: str = "page_001") -> pd.Series:
    """Exactly one row of problem, on book_000/page, with action; returns it."""
    rows = problems_of(corpus, problem)
    assert len(rows) == 1, corpus.problems
    row = rows.iloc[0]
    assert (row["action"], row["book_id"], row["page_name"]) == (action, "book_000", page)
    return row


def corrupt(book: Path) -> None:
    """Random bytes in place of a PNG."""
    (book / "page_001.png").write_bytes(np.random.default_rng(0).integers(0, 256, 3000, dtype=np.uint8).tobytes())


def truncate_jpeg(book: Path) -> None:
    """Replace the PNG by a JPEG that lacks its last 200 bytes."""
    (book / "page_001.png").unlink()
    buffer = book / "page_001.jpg"
    draw_page(GRID).save(buffer, quality=90)
    buffer.write_bytes(buffer.read_bytes()[:-200])


def truncate_png(book: Path) -> None:
    """Cut the end (last IDAT data and IEND) off the PNG."""
    png = book / "page_001.png"
    png.write_bytes(png.read_bytes()[:-60])


def bomb(book: Path) -> None:
    """A tiny PNG whose header claims 20000 x 20000 pixels (past PIL's own decompression-bomb limit)."""
    png = bytearray((book / "page_001.png").read_bytes())
    ihdr = bytes(png[12:16]) + struct.pack(">II", 20000, 20000) + bytes(png[24:29])
    png[16:33] = ihdr[4:] + struct.pack(">I", zlib.crc32(ihdr))
    (book / "page_001.png").write_bytes(bytes(png))


def rewrite_json(doc_or_bytes: object) -> Callable[[Path], None]:
    """A damage function that replaces page_001's JSON with a document or raw bytes."""

    def damage(book: Path) -> None:
        target = book / "page_001.json"
        if isinstance(doc_or_bytes, bytes):
            target.write_bytes(doc_or_bytes)
        else:
            write_json(target, doc_or_bytes)

    return damage


@pytest.mark.parametrize(
    "problem, damage",
    [
        ("corrupt_image", corrupt),
        ("truncated_image", truncate_jpeg),
        ("truncated_image", truncate_png),
        ("huge_image", bomb),
        ("missing_json", lambda book: (book / "page_001.json").unlink()),
        ("missing_image", lambda book: (book / "page_001.png").unlink()),
        ("invalid_json", rewrite_json(b'{"panels": [')),
        ("invalid_json", rewrite_json(b"")),
        ("bad_json_shape", rewrite_json([1, 2])),
        ("bad_json_shape", rewrite_json({"image_width": W})),
        ("bad_json_shape", rewrite_json({"panels": [{"bbox": [1, 2, 3]}]})),
        ("bad_json_shape", rewrite_json({"panels": [{"bbox": [1, 2, 3, "4"]}]})),
        ("bad_json_shape", rewrite_json(b'{"panels": [{"bbox": [1, 2, NaN, 4]}]}')),
        ("bad_json_shape", rewrite_json({"panels": [{"bbox": [1, 2, 3, 4], "text": ["a"]}]})),
        ("no_panels", rewrite_json({"image_width": W, "image_height": H, "panels": []})),
    ],
)
def test_unusable_page_is_skipped_with_a_row(tmp_path: Path, problem: str, damage: Callable[[Path], None]) -> None:
    corpus = bad_page_corpus(tmp_path, damage)
    row = assert_one_problem(corpus, problem, "skipped_page")
    assert row["detail"] and pd.isna(row["panel"])
    assert "book_000/page_001" not in set(corpus.pages["page_id"]) and len(corpus.pages) == 2
    assert len(corpus.problems) == 1


def test_huge_image_by_parameter(corpus_root: Path) -> None:
    corpus = load_corpus(corpus_root, max_image_pixels=W * H - 1)
    assert corpus.pages.empty and set(corpus.problems["problem"]) == {"huge_image"} and len(corpus.problems) == 6


def test_bad_boxes_are_repaired_or_skipped_per_panel(tmp_path: Path) -> None:
    boxes = [[-10, 5, 58, 78], [62, 5, 130, 78], [5, 82, 5, 155], [200, 82, 260, 155], [62, 82, 115, 155]]
    make_corpus(tmp_path, pages=1)
    write_page(tmp_path, "book_000", "page_001", boxes, texts=list("abcde"))
    corpus = load_corpus(tmp_path)
    found = corpus.problems.set_index("panel")[["problem", "action"]].to_dict("index")
    assert found == {
        0: {"problem": "bbox_negative", "action": "repaired"},
        1: {"problem": "bbox_out_of_bounds", "action": "repaired"},
        2: {"problem": "bbox_zero_area", "action": "skipped_panel"},
        3: {"problem": "bbox_outside_page", "action": "skipped_panel"},
    }
    page = corpus.pages.set_index("page_id").loc["book_000/page_001"]
    assert page["boxes"] == [[0, 5, 58, 78], [62, 5, W, 78], [62, 82, 115, 155]]
    assert page["panel_index"] == [0, 1, 4] and page["texts"] == ["a", "b", "e"]


def test_page_whose_panels_are_all_unusable_is_skipped(tmp_path: Path) -> None:
    make_corpus(tmp_path, pages=1)
    write_page(tmp_path, "book_000", "page_001", [[5, 5, 5, 50], [300, 5, 350, 50]])
    corpus = load_corpus(tmp_path)
    assert_one_problem(corpus, "no_panels", "skipped_page")
    assert len(problems_of(corpus, "bbox_zero_area")) == len(problems_of(corpus, "bbox_outside_page")) == 1


def test_too_many_panels_split_into_consecutive_parts(tmp_path: Path) -> None:
    boxes = [[x, y, x + 20, y + 30] for y in (5, 45, 85, 125) for x in (5, 35, 65, 95)][:13]
    make_corpus(tmp_path, pages=1)
    write_page(tmp_path, "book_000", "page_001", boxes)
    corpus = load_corpus(tmp_path, max_panels=6)
    assert_one_problem(corpus, "too_many_panels", "split")
    parts = corpus.pages[corpus.pages["page_id"].str.startswith("book_000/page_001")].set_index("page_id")
    assert list(parts.index) == ["book_000/page_001#0", "book_000/page_001#1", "book_000/page_001#2"]
    assert parts["part"].tolist() == [0, 1, 2] and parts["num_panels"].tolist() == [5, 4, 4]
    assert sum(parts["panel_index"], []) == list(range(13))
    assert sum(parts["boxes"], []) == [list(map(float, b)) for b in boxes]
    assert (corpus.pages["num_panels"] <= 6).all()


def test_label_without_page_is_noted(corpus_root: Path) -> None:
    labels = labels_of(corpus_root)
    labels["book_000"]["page_099"] = "narrative"
    labels["book_777"] = {"page_000": "cover"}
    write_labels(corpus_root, labels)
    corpus = load_corpus(corpus_root)
    assert len(corpus.pages) == 6
    assert set(map(tuple, problems_of(corpus, "label_without_page")[["book_id", "page_name", "action"]].values)) == {
        ("book_000", "page_099", "noted"),
        ("book_777", "page_000", "noted"),
    }


def test_page_without_label_skipped_or_kept(corpus_root: Path) -> None:
    write_page(corpus_root, "book_002", "page_050")
    skipped = load_corpus(corpus_root)
    row = problems_of(skipped, "page_without_label").iloc[0]
    assert (row["action"], row["page_name"], len(skipped.pages)) == ("skipped_page", "page_050", 6)
    kept = load_corpus(corpus_root, unlabelled="narrative")
    assert problems_of(kept, "page_without_label")["action"].tolist() == ["noted"]
    assert "book_002/page_050" in set(kept.pages["page_id"]) and len(kept.pages) == 7


def test_non_rgb_image_is_noted_as_converted(tmp_path: Path) -> None:
    corpus = bad_page_corpus(
        tmp_path, lambda book: Image.open(book / "page_001.png").convert("L").save(book / "page_001.png")
    )
    assert_one_problem(corpus, "image_mode", "converted")
    assert corpus.pages.set_index("page_id").loc["book_000/page_001", "image_mode"] == "L"


def test_cp1252_json_is_decoded(tmp_path: Path) -> None:
    doc = {"image_width": W, "image_height": H, "panels": [{"bbox": [5, 5, 50, 50], "text": "Café “quoted”"}]}
    corpus = bad_page_corpus(tmp_path, rewrite_json(json.dumps(doc, ensure_ascii=False).encode("cp1252")))
    assert_one_problem(corpus, "text_encoding", "repaired")
    assert corpus.pages.set_index("page_id").loc["book_000/page_001", "texts"] == ["Café “quoted”"]


def test_unicode_text_is_cleaned_per_panel(tmp_path: Path) -> None:
    texts = ["Cafe\u0301", "plain  text\n", "hid\u200bden\u202e"]
    make_corpus(tmp_path, pages=1)
    write_page(tmp_path, "book_000", "page_001", GRID[:3], texts=texts)
    corpus = load_corpus(tmp_path)
    assert problems_of(corpus, "text_unicode")["panel"].tolist() == [0, 2]
    assert set(problems_of(corpus, "text_unicode")["action"]) == {"repaired"}
    assert corpus.pages.set_index("page_id").loc["book_000/page_001", "texts"] == ["Café", "plain text", "hidden"]


def test_pages_in_natural_order_and_duplicates_noted(corpus_root: Path) -> None:
    labels = labels_of(corpus_root)
    for name in ("page_10", "page_9"):
        write_page(corpus_root, "book_000", name)
        labels["book_000"][name] = "narrative"
    write_labels(corpus_root, labels)
    draw_page(GRID).save(corpus_root / "book_000" / "page_9.jpg")
    corpus = load_corpus(corpus_root)
    book = corpus.pages[corpus.pages["book_id"] == "book_000"]
    assert book["page_name"].tolist() == ["page_001", "page_002", "page_9", "page_10"]
    assert corpus.problems[["file", "problem", "action"]].values.tolist() == [
        ["book_000/page_9.png", "duplicate_image", "noted"]
    ]
    assert book["image_path"].tolist()[2] == "book_000/page_9.jpg"


def test_images_and_json_matched_in_their_own_book_only(corpus_root: Path) -> None:
    (corpus_root / "book_001" / "page_001.json").unlink()
    (corpus_root / "book_002" / "page_001.png").rename(corpus_root / "book_002" / "page_001.JPEG")
    (corpus_root / "book_002" / "notes.txt").write_text("not a page")
    (corpus_root / ".ipynb_checkpoints").mkdir()
    (corpus_root / "empty_book").mkdir()
    corpus = load_corpus(corpus_root)
    assert sorted(corpus.problems[["book_id", "problem", "file"]].values.tolist()) == [
        ["book_001", "missing_json", "book_001/page_001.png"],
        ["book_002", "unused_file", "book_002/notes.txt"],
    ]
    assert corpus.pages.set_index("page_id").loc["book_002/page_001", "image_path"] == "book_002/page_001.JPEG"


def test_split_is_by_book_and_deterministic(tmp_path: Path) -> None:
    books = [f"book_{i:03d}" for i in range(20)]
    first, again, other = split_books(books, seed=3), split_books(reversed(books), seed=3), split_books(books, seed=4)
    assert first == again and first != other
    assert [list(first.values()).count(s) for s in SPLITS] == [16, 2, 2]
    assert split_counts(1) == [1, 0, 0] and split_counts(2) == [1, 1, 0] and split_counts(3) == [1, 1, 1]
    assert split_counts(4, (0.1, 0.45, 0.45)) == [1, 1, 2] and split_counts(10, (0.8, 0.2, 0)) == [8, 2, 0]
    pages = load_corpus(make_corpus(tmp_path, books=5, pages=2), seed=1).pages
    assert (pages.groupby("book_id")["split"].nunique() == 1).all() and set(pages["split"]) == set(SPLITS)


def test_pages_table_round_trip(tmp_path: Path) -> None:
    make_corpus(tmp_path / "c", pages=1)
    write_page(tmp_path / "c", "book_000", "page_001", texts=["", "naïve “quote”", "a\u200bb", "line"])
    pages = load_corpus(tmp_path / "c", max_panels=3).pages
    loaded = load_pages(save_pages(pages, tmp_path / "out" / "pages.jsonl"))
    pd.testing.assert_frame_equal(loaded, pages)
    assert isinstance(loaded.loc[0, "boxes"][0], list)


def test_run_artefacts_round_trip_with_their_data_root(corpus_root: Path, tmp_path: Path) -> None:
    corpus = load_corpus(corpus_root)
    save_corpus(corpus, tmp_path / "run")
    pages, root = load_run_pages(tmp_path / "run")
    pd.testing.assert_frame_equal(pages, corpus.pages)
    assert root == corpus_root.resolve() and (root / pages.image_path[0]).is_file()
    assert len(pd.read_csv(tmp_path / "run" / "problems.csv")) == len(corpus.problems)
    with pytest.raises(FileNotFoundError, match="run notebook 01"):
        load_run_pages(tmp_path / "elsewhere")


def test_composition_table_known_values_and_position_independence() -> None:
    # Page 0 (100 x 200): a 40 x 80 box 10 px from the left edge, then the whole page; page 1 (200 x 100): its right
    # half. Expected rows are worked out by hand from the feature definitions.
    pages = pd.DataFrame(
        [
            dict(boxes=[[10, 20, 50, 100], [0, 0, 100, 200]], image_width=100, image_height=200),
            dict(boxes=[[100, 0, 200, 100]], image_width=200, image_height=100),
        ]
    )
    table = composition_table(pages)
    assert list(table.columns) == list(COMPOSITION_FEATURES) and len(table) == 3
    expected = [  # centre x, centre y, width, height, log aspect, area, edge distance
        [0.3, 0.3, 0.4, 0.4, np.log(0.5), 0.16, 0.1],
        [0.5, 0.5, 1.0, 1.0, np.log(0.5), 1.0, 0.0],
        [0.75, 0.5, 0.5, 1.0, 0.0, 0.5, 0.0],
    ]
    np.testing.assert_allclose(table.to_numpy(), expected, rtol=1e-6, atol=1e-7)
    # A panel's row depends on its own box and page only, not on where the panel or its page sits in the table.
    reordered = pd.DataFrame(
        [
            dict(boxes=[[100, 0, 200, 100]], image_width=200, image_height=100),
            dict(boxes=[[0, 0, 100, 200], [10, 20, 50, 100]], image_width=100, image_height=200),
        ]
    )
    np.testing.assert_array_equal(composition_table(reordered).to_numpy(), table.to_numpy()[[2, 1, 0]])
    assert composition_table(pages.head(0)).shape == (0, len(COMPOSITION_FEATURES))


def test_empty_corpus(tmp_path: Path) -> None:
    write_json(tmp_path / "pss_labels.json", {})
    corpus = load_corpus(tmp_path)
    assert corpus.pages.empty and corpus.problems.empty and list(corpus.pages.columns) == list(PAGE_COLUMNS)
    assert load_pages(save_pages(corpus.pages, tmp_path / "p.jsonl")).empty


# ------------------------------------------------------------------ on corpora written by comicnb.corpus.synth


@pytest.fixture(scope="module")
def generated(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Clean (xywh and xyxy) and dirty synthetic corpora; dirty needs one narrative page per injected defect."""
    root = tmp_path_factory.mktemp("synth")
    synth.generate(root / "clean", books=3, pages=4, seed=0)
    synth.generate(root / "xyxy", books=3, pages=4, seed=0, bbox_format="xyxy")
    synth.generate(root / "dirty", books=4, pages=8, seed=0, dirty=True)
    return root


def truth_of(root: Path) -> dict:
    """The corpus's ground_truth.json."""
    return json.loads((root / "ground_truth.json").read_text(encoding="utf-8"))


def narrative_truth(truth: dict) -> dict[tuple[str, str], dict]:
    """Ground truth of the narrative pages, by (book_id, page_name)."""
    return {
        (b, p): page
        for b, book in truth["books"].items()
        for p, page in book["pages"].items()
        if page["label"] == "narrative"
    }


def test_generated_clean_corpus_matches_its_truth(generated: Path) -> None:
    corpus = load_corpus(generated / "clean")
    truth = narrative_truth(truth_of(generated / "clean"))
    assert corpus.problems.empty and set(corpus.summary().index) == set(SPLITS)
    assert set(zip(corpus.pages["book_id"], corpus.pages["page_name"])) == set(truth)
    for row in corpus.pages.itertuples():
        panels = truth[(row.book_id, row.page_name)]["panels"]
        assert row.texts == [" ".join(line["text"] for line in panel["lines"]) for panel in panels]
        assert row.descriptions == [panel["caption"] for panel in panels]
        assert all(0 <= x1 < x2 <= row.image_width and 0 <= y1 < y2 <= row.image_height for x1, y1, x2, y2 in row.boxes)


def test_generated_bbox_formats(generated: Path) -> None:
    xyxy = load_corpus(generated / "xyxy", bbox_format="xyxy").pages
    assert xyxy["boxes"].tolist() == load_corpus(generated / "clean").pages["boxes"].tolist()
    assert bbox_fit(generated / "clean")["fit"].idxmax() == "xywh"
    assert bbox_fit(generated / "xyxy")["fit"].idxmax() == "xyxy"


def test_generated_dirty_corpus_reconciles_with_its_truth(generated: Path) -> None:
    corpus, truth = load_corpus(generated / "dirty"), truth_of(generated / "dirty")
    rows = {
        (r.problem, r.book_id, r.page_name, None if pd.isna(r.panel) else r.panel, r.action)
        for r in corpus.problems.itertuples()
    }
    expected = [(d["problem"], d["book_id"], d["page_name"], d["panel"], d["action"]) for d in truth["dirty"]]
    assert [e for e in expected if e not in rows] == []
    assert set(corpus.problems["problem"]) == {d["problem"] for d in truth["dirty"]}
    pages = narrative_truth(truth)
    skipped_pages = {(d["book_id"], d["page_name"]) for d in truth["dirty"] if d["action"] == "skipped_page"}
    skipped_panels = sum(d["action"] == "skipped_panel" for d in truth["dirty"])
    expected_panels = sum(len(page["panels"]) for key, page in pages.items() if key not in skipped_pages)
    assert corpus.pages["num_panels"].sum() == expected_panels - skipped_panels  # nothing valid lost
    assert set(zip(corpus.pages["book_id"], corpus.pages["page_name"])) == set(pages) - skipped_pages


def test_generated_dirty_pages_are_all_usable(generated: Path) -> None:
    pages = load_corpus(generated / "dirty").pages
    assert pages["page_id"].is_unique and (pages["num_panels"] <= 12).all()
    for row in pages.itertuples():
        with Image.open(generated / "dirty" / row.image_path) as img:
            crops = crop_panels(img, row.boxes, size=16)
        assert len(crops) == row.num_panels and {c.mode for c in crops} == {"RGB"}
        feats = composition_features(row.boxes, row.image_width, row.image_height)
        assert np.isfinite(feats).all() and (feats[:, 2:4] > 0).all()


# ------------------------------------------------------------------ text-free twins (docs/corpus.md, "Text-free pages")


def test_text_free_twins_are_named_by_the_pages_table_and_never_pages(corpus_root: Path) -> None:
    book = corpus_root / "book_000"
    draw_page(GRID).save(book / "page_001.textfree.png")  # the documented name
    draw_page(GRID).save(book / "page_002.TextFree.JPG")  # its marker and suffix in any case, another suffix
    draw_page(GRID).save(book / "page_000.textfree.png")  # a cover's twin: left out with its page
    corpus = load_corpus(corpus_root)
    assert corpus.problems.empty and len(corpus.pages) == 6
    twins = corpus.pages.set_index("page_id").text_free_path
    assert twins["book_000/page_001"] == "book_000/page_001.textfree.png"
    assert twins["book_000/page_002"] == "book_000/page_002.TextFree.JPG"
    assert (twins.drop(["book_000/page_001", "book_000/page_002"]) == "").all()
    assert load_corpus(corpus_root, decode_check=False).pages.text_free_path.tolist() == twins.tolist()


def test_twins_that_cannot_stand_in_for_their_page(corpus_root: Path) -> None:
    book = corpus_root / "book_001"
    draw_page(GRID, size=(W + 1, H)).save(book / "page_001.textfree.png")  # another size: other crops
    (book / "page_002.textfree.PNG").write_bytes(b"\x89PNG\r\n\x1a\n not really")  # first by name: the one used
    draw_page(GRID).save(book / "page_002.textfree.png")  # a second twin of page_002
    draw_page(GRID).save(book / "page_009.textfree.png")  # a twin whose page is not there
    corpus = load_corpus(corpus_root)
    rows = corpus.problems.sort_values("file")[["page_name", "file", "problem", "action"]].values.tolist()
    assert rows == [
        ["page_001", "book_001/page_001.textfree.png", "text_free_unusable", "noted"],
        ["page_002", "book_001/page_002.textfree.PNG", "text_free_unusable", "noted"],
        ["page_002", "book_001/page_002.textfree.png", "duplicate_image", "noted"],
        ["page_009", "book_001/page_009.textfree.png", "unused_file", "noted"],
    ]
    assert "121x160, the page 120x160" in corpus.problems.detail.str.cat()
    assert (corpus.pages.text_free_path == "").all() and len(corpus.pages) == 6


def test_a_labelled_page_with_only_a_twin_is_a_label_without_page(corpus_root: Path) -> None:
    (corpus_root / "book_002" / "page_002.png").rename(corpus_root / "book_002" / "page_002.textfree.png")
    (corpus_root / "book_002" / "page_002.json").unlink()
    corpus = load_corpus(corpus_root)
    assert sorted(corpus.problems[["problem", "file"]].fillna("").values.tolist()) == [
        ["label_without_page", ""],
        ["unused_file", "book_002/page_002.textfree.png"],
    ]


def test_a_pages_table_saved_before_twins_reads_as_twin_less(corpus_root: Path, tmp_path: Path) -> None:
    pages = load_corpus(corpus_root).pages
    old = save_pages(pages.drop(columns="text_free_path"), tmp_path / "old.jsonl")
    pd.testing.assert_frame_equal(load_pages(old), pages)
