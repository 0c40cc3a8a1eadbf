"""The embedded corpus: determinism, the docs/corpus.md contract, story truth, layouts and injected defects."""

from __future__ import annotations

import argparse
import hashlib
import json
import re
import unicodedata
import warnings
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from comicnb.corpus import synth
from comicnb.corpus.synth import layouts, story

SMALL = (320, 480)  # tiny pages keep the test corpora fast
ALL_PROBLEMS = {
    "corrupt_image",
    "truncated_image",
    "huge_image",
    "missing_json",
    "invalid_json",
    "bad_json_shape",
    "no_panels",
    "missing_image",
    "bbox_out_of_bounds",
    "bbox_outside_page",
    "bbox_negative",
    "bbox_zero_area",
    "too_many_panels",
    "label_without_page",
    "page_without_label",
    "image_mode",
    "text_encoding",
    "text_unicode",
    "duplicate_image",
    "duplicate_json",
}


def _make(root: Path, name: str, **kwargs) -> Path:
    """Generate a small corpus under root/name."""
    args = {"books": 3, "pages": 6, "seed": 1, "page_size": SMALL, "rtl_fraction": 0.4} | kwargs
    synth.generate(root / name, **args)
    return root / name


@pytest.fixture(scope="module")
def corpora(tmp_path_factory) -> dict[str, Path]:
    """The corpora the tests read, generated once."""
    root = tmp_path_factory.mktemp("corpora")
    return {
        "clean": _make(root, "clean"),
        "twin": _make(root, "twin"),
        "seed2": _make(root, "seed2", seed=2),
        "xyxy": _make(root, "xyxy", books=2, pages=4, bbox_format="xyxy"),
        "noisy": _make(root, "noisy", books=1, pages=4, ocr_noise=0.3),
        "dirty": _make(root, "dirty", books=4, pages=8, seed=3, dirty=True),
    }


def _digest(root: Path) -> dict[str, str]:
    """sha256 of every file under root, by relative path."""
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


def _truth(root: Path) -> dict:
    """The ground-truth sidecar."""
    return json.loads((root / "ground_truth.json").read_text(encoding="utf-8"))


def _pages(root: Path) -> Iterator[tuple[str, str, dict]]:
    """(book_id, page_name, page truth) for every page in the sidecar."""
    for b, book in _truth(root)["books"].items():
        for p, page in book["pages"].items():
            yield b, p, page


def _image(root: Path, b: str, p: str) -> Path | None:
    """The page's image file (the first by name), if any."""
    found = sorted(f for f in (root / b).glob(f"{p}.*") if f.suffix.lower() != ".json")
    return found[0] if found else None


def _doc(root: Path, b: str, p: str) -> dict:
    """The page's Stage 1 JSON."""
    return json.loads((root / b / f"{p}.json").read_text(encoding="utf-8"))


def _xyxy(bbox: list[int], fmt: str) -> tuple[int, int, int, int]:
    """A JSON bbox as (x0, y0, x1, y1)."""
    x, y, a, b = bbox
    return (x, y, a, b) if fmt == "xyxy" else (x, y, x + a, y + b)


def _opens(path: Path) -> bool:
    """Whether PIL can fully decode the image."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            with Image.open(path) as img:
                img.load()
        return True
    except Exception:  # noqa: BLE001 - any decoding failure counts
        return False


def test_same_seed_gives_identical_bytes(corpora):
    assert len(_digest(corpora["clean"])) > 30
    assert _digest(corpora["clean"]) == _digest(corpora["twin"])


def test_different_seed_gives_different_corpus(corpora):
    a, b = _digest(corpora["clean"]), _digest(corpora["seed2"])
    assert sum(a.get(k) != b.get(k) for k in a) > len(a) // 2


@pytest.mark.parametrize("name", ["clean", "xyxy", "noisy"])
def test_page_json_follows_the_contract_and_matches_the_truth(corpora, name):
    root = corpora[name]
    truth = _truth(root)
    for b, p, page in _pages(root):
        doc, image = _doc(root, b, p), _image(root, b, p)
        assert set(doc) == {"image_width", "image_height", "panels"}
        with Image.open(image) as img:
            assert img.size == (doc["image_width"], doc["image_height"]) and img.mode == "RGB"
        assert len(doc["panels"]) == len(page["panels"]) >= 1
        for i, (panel, true) in enumerate(zip(doc["panels"], page["panels"])):
            assert len(panel["bbox"]) == 4 and all(isinstance(v, int) for v in panel["bbox"])
            assert isinstance(panel["text"], str) and 0 < panel["confidence"] <= 1
            assert len(panel["text_boxes"]) == len(true["lines"]) and panel["text"] == " ".join(panel["text_boxes"])
            assert panel["description"] == true["caption"] and true["reading_position"] == i
            # One box per text box, in the panels' format, inside the panel (version 5).
            fmt = "xyxy" if name == "xyxy" else "xywh"
            px0, py0, px1, py1 = _xyxy(panel["bbox"], fmt)
            assert len(panel["text_box_bboxes"]) == len(panel["text_boxes"])
            for bbox in panel["text_box_bboxes"]:
                x0, y0, x1, y1 = _xyxy(bbox, fmt)
                assert all(isinstance(v, int) for v in bbox) and px0 <= x0 < x1 <= px1 and py0 <= y0 < y1 <= py1
    assert truth["bbox_format"] == ("xyxy" if name == "xyxy" else "xywh") and truth["version"] == synth.VERSION == 5


@pytest.mark.parametrize("name", ["clean", "xyxy"])
def test_clean_boxes_lie_inside_the_page_and_do_not_overlap(corpora, name):
    fmt = "xyxy" if name == "xyxy" else "xywh"
    for b, p, _ in _pages(corpora[name]):
        doc = _doc(corpora[name], b, p)
        boxes = [_xyxy(panel["bbox"], fmt) for panel in doc["panels"]]
        for x0, y0, x1, y1 in boxes:
            assert 0 <= x0 < x1 <= doc["image_width"] and 0 <= y0 < y1 <= doc["image_height"]
        for i, a in enumerate(boxes):
            for c in boxes[i + 1 :]:
                assert min(a[2], c[2]) <= max(a[0], c[0]) or min(a[3], c[3]) <= max(a[1], c[1])


def test_clean_text_is_the_truth_lines(corpora):
    for b, p, page in _pages(corpora["clean"]):
        for panel, true in zip(_doc(corpora["clean"], b, p)["panels"], page["panels"]):
            assert panel["text_boxes"] == [line["text"] for line in true["lines"]]


def test_ocr_noise_damages_json_text_only(corpora):
    changed = 0
    for b, p, page in _pages(corpora["noisy"]):
        for panel, true in zip(_doc(corpora["noisy"], b, p)["panels"], page["panels"]):
            clean = " ".join(line["text"] for line in true["lines"])
            changed += panel["text"] != clean
            assert panel["description"] == true["caption"]
    assert changed > 5


def test_naive_order_on_hand_made_pages():
    grid = [(0, 0, 10, 10), (10, 0, 20, 10), (0, 10, 10, 20), (10, 10, 20, 20)]  # a 2 x 2 grid, read left to right
    assert synth.naive_order_correct(grid, "ltr") and not synth.naive_order_correct(grid, "rtl")
    manga = [grid[1], grid[0], grid[3], grid[2]]  # the same grid read right to left
    assert synth.naive_order_correct(manga, "rtl") and not synth.naive_order_correct(manga, "ltr")
    staggered = [(0, 2, 10, 10), (10, 0, 20, 10)]  # the right panel's top edge sits higher: (top, left) sorts it first
    assert not synth.naive_order_correct(staggered, "ltr")


def test_naive_order_flag_matches_the_written_boxes_and_is_sometimes_false(corpora):
    flags = []
    for name in ("clean", "xyxy", "seed2"):
        fmt = "xyxy" if name == "xyxy" else "xywh"
        for b, p, page in _pages(corpora[name]):
            boxes = [_xyxy(panel["bbox"], fmt) for panel in _doc(corpora[name], b, p)["panels"]]
            assert page["naive_order_correct"] == synth.naive_order_correct(boxes, page["reading_direction"])
            flags.append(page["naive_order_correct"])
    assert False in flags and True in flags


def test_tall_panel_beside_a_stack_defeats_the_naive_sort():
    boxes = layouts._tall(np.random.default_rng(0), (0, 0, 300, 400), 10, 12, "right")
    assert not synth.naive_order_correct(boxes, "ltr")
    assert not synth.naive_order_correct(synth.mirror(boxes, 300), "rtl")


def test_grids_read_down_their_columns_hold_the_story_in_that_order():
    """A share of grid pages reads down the columns: the same boxes as a grid read across, listed column by column,
    so only the content says which; the choice draws from its own generator, so nothing else of the book changes."""
    plan = synth.plan_corpus(30, 8, seed=1, page_size=SMALL)
    across = synth.plan_corpus(30, 8, seed=1, page_size=SMALL, down_share=0.0)
    readings = {"fixed": 0, "across": 0, "down": 0}
    for b, book in plan["books"].items():
        for p, page in book["pages"].items():
            other = across["books"][b]["pages"][p]
            readings[page["reading"]] += 1
            assert page["panels"] == other["panels"] and page["layout"] == other["layout"]
            if page["reading"] == "down":
                cols = layouts.AMBIGUOUS[page["layout"]]
                assert sorted(page["boxes"]) == sorted(other["boxes"]) and page["boxes"] != other["boxes"]
                assert page["boxes"] == layouts.down_the_columns(other["boxes"], cols)
                first = [box[0] for box in page["boxes"][: len(page["boxes"]) // cols]]  # one column's left edges
                assert len(set(first)) == 1
                assert not page["naive_order_correct"]
            else:
                assert page["boxes"] == other["boxes"]
                assert (page["reading"] == "across") == (page["layout"] in layouts.AMBIGUOUS)
    assert readings["down"] > 0 and readings["across"] > 0 and readings["fixed"] > 0
    assert {page["reading"] for book in across["books"].values() for page in book["pages"].values()} <= {
        "fixed",
        "across",
    }


def test_right_to_left_books_read_from_the_right(corpora):
    truth = _truth(corpora["clean"])
    directions = {book["direction"] for book in truth["books"].values()}
    assert directions == {"ltr", "rtl"}
    for b, p, page in _pages(corpora["clean"]):
        boxes = [_xyxy(panel["bbox"], "xywh") for panel in _doc(corpora["clean"], b, p)["panels"]]
        assert page["reading_direction"] == truth["books"][b]["direction"]
        if page["reading_direction"] == "rtl":
            assert boxes[0][2] == max(box[2] for box in boxes)
        else:
            assert boxes[0][0] == min(box[0] for box in boxes)


def test_no_rtl_books_when_fraction_is_zero():
    plan = synth.plan_corpus(4, 3, seed=5, rtl_fraction=0.0, page_size=SMALL)
    assert {book["direction"] for book in plan["books"].values()} == {"ltr"}


def test_labels_cover_first_and_match_the_truth(corpora):
    labels = json.loads((corpora["clean"] / "pss_labels.json").read_text())
    seen = Counter()
    for b, p, page in _pages(corpora["clean"]):
        assert labels[b][p] == page["label"]
        assert (page["label"] == "cover") == (p == "page_000")
        seen[page["label"]] += 1
    assert set(seen) == {"cover", "narrative", "advertisement", "text"}


def test_characters_recur_with_a_stable_identity(corpora):
    truth = _truth(corpora["clean"])
    looks = {(c["body"], c["accessory"]) for c in truth["characters"].values()}
    assert len(looks) == len(truth["characters"]) == 8
    for book in truth["books"].values():
        pages_of = Counter(
            c
            for page in book["pages"].values()
            if page["label"] == "narrative"
            for c in {c for panel in page["panels"] for c in panel["characters"]}
        )
        assert 3 <= len(book["pages"]["page_000"]["panels"][0]["characters"]) <= 5
        assert set(pages_of) <= set(truth["characters"]) and max(pages_of.values()) >= 2


def test_actions_progress_over_consecutive_panels(corpora):
    for book in _truth(corpora["clean"])["books"].values():
        # A cutaway interrupts a beat, which resumes after it: the action progresses over the panels of its story line.
        stream = [
            panel
            for page in book["pages"].values()
            if page["label"] == "narrative"
            for panel in page["panels"]
            if not panel["cutaway"]
        ]
        for before, panel in zip([None] + stream, stream):
            assert 0 <= panel["action_step"] < panel["action_steps"]
            if panel["action_step"] > 0:
                assert before["action"] == panel["action"] and before["action_step"] == panel["action_step"] - 1
                assert before["scene"] == panel["scene"] and before["characters"] == panel["characters"]


def test_dialogue_has_speakers_in_the_panel_and_silent_panels_exist(corpora):
    panels = [
        panel for _, _, page in _pages(corpora["clean"]) if page["label"] == "narrative" for panel in page["panels"]
    ]
    assert any(panel["lines"] for panel in panels) and any(not panel["lines"] for panel in panels)
    for panel in panels:
        for line in panel["lines"]:
            assert (line["kind"] == "caption") == (line["speaker"] is None)
            assert line["speaker"] is None or line["speaker"] in panel["characters"]


def test_answers_follow_their_questions_and_need_the_context():
    plan = synth.plan_corpus(6, 10, seed=7, page_size=SMALL)
    answered = Counter()
    for book in plan["books"].values():
        spoken = [
            (panel, line)
            for page in book["pages"].values()
            if page["label"] == "narrative"
            for panel in page["panels"]
            if not panel.get("cutaway")  # a question before a cutaway is answered after it
            for line in panel["lines"]
            if line["kind"] == "speech"
        ]
        for (_, question), (panel, answer) in zip(spoken, spoken[1:]):
            if question["text"].startswith(("What colour", "Is the", "How many", "Are there", "Where shall")):
                assert answer["speaker"] != question["speaker"] and answer["speaker"] in panel["characters"]
            if question["text"].startswith(("What colour", "Is the")):
                answered["colour"] += panel["props"]["colour"] in answer["text"]
                assert panel["props"]["colour"] in answer["text"]  # drawn on the prop, never in the question
            if question["text"].startswith(("How many", "Are there")):
                answered["count"] += 1
                assert story.NUMBERS[panel["props"]["birds"]] in answer["text"]  # the birds drawn in the sky
    assert answered["colour"] and answered["count"]


def test_balloons_and_action_steps_change_the_drawing():
    plan = synth.plan_corpus(1, 4, seed=3, page_size=SMALL)
    book = plan["books"]["book_000"]
    page = next(page for page in book["pages"].values() if page["label"] == "narrative")
    silent = {**page, "panels": [{**panel, "lines": []} for panel in page["panels"]]}
    assert synth.render_page(page, book).tobytes() != synth.render_page(silent, book).tobytes()
    first = {**page, "boxes": page["boxes"][:1], "panels": page["panels"][:1]}
    later = {**first, "panels": [{**page["panels"][0], "action_step": page["panels"][0]["action_steps"] - 1}]}
    assert synth.render_page(first, book).tobytes() != synth.render_page(later, book).tobytes()


def test_both_image_formats_are_written(corpora):
    suffixes = Counter(_image(corpora["clean"], b, p).suffix for b, p, _ in _pages(corpora["clean"]))
    assert suffixes[".jpg"] > suffixes[".png"] > 0


def test_page_sizes_vary_between_books(corpora):
    sizes = {
        (d["image_width"], d["image_height"])
        for b, p, _ in _pages(corpora["clean"])
        for d in [_doc(corpora["clean"], b, p)]
    }
    assert len(sizes) > 1


def test_max_panels_is_respected_in_clean_mode():
    plan = synth.plan_corpus(3, 8, seed=4, max_panels=5, page_size=SMALL)
    counts = [
        len(page["panels"])
        for book in plan["books"].values()
        for page in book["pages"].values()
        if page["label"] == "narrative"
    ]
    assert max(counts) <= 5 and min(counts) >= 3


def test_dirty_corpus_lists_every_problem_once_per_page(corpora):
    dirty = _truth(corpora["dirty"])["dirty"]
    assert {d["problem"] for d in dirty} == ALL_PROBLEMS
    places = [(d["book_id"], d["page_name"]) for d in dirty]
    assert len(places) == len(set(places))
    modes = {_mode(corpora["dirty"], d) for d in dirty if d["problem"] == "image_mode"}
    assert modes == {"L", "CMYK", "RGBA", "I;16"}


def _mode(root: Path, d: dict) -> str:
    """The PIL mode of the listed page's image."""
    with Image.open(_image(root, d["book_id"], d["page_name"])) as img:
        return img.mode


def _box(root: Path, d: dict) -> tuple[int, int, int, int, int, int]:
    """The defective panel's box (xyxy) and the page size."""
    doc = _doc(root, d["book_id"], d["page_name"])
    return (*_xyxy(doc["panels"][d["panel"]]["bbox"], "xywh"), doc["image_width"], doc["image_height"])


FILE_PROBLEMS = {
    "corrupt_image",
    "truncated_image",
    "huge_image",
    "image_mode",
    "missing_json",
    "missing_image",
    "duplicate_image",
    "duplicate_json",
}
PAGE_PROBLEMS = {
    "invalid_json",
    "bad_json_shape",
    "no_panels",
    "too_many_panels",
    "label_without_page",
    "page_without_label",
}


def _check_file_defect(root: Path, d: dict) -> None:
    """Assert that the listed page's files really have the listed image, missing-file or duplicate defect."""
    b, p, problem = d["book_id"], d["page_name"], d["problem"]
    image = _image(root, b, p)
    if problem in ("corrupt_image", "truncated_image"):
        assert image.suffix == ".jpg" and image.read_bytes()[:2] == b"\xff\xd8" and not _opens(image)
    elif problem == "huge_image":
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            with Image.open(image) as img:
                assert img.width * img.height > 89_478_485
        assert image.stat().st_size < 200_000
    elif problem == "image_mode":
        assert _opens(image) and _mode(root, d) != "RGB"
    elif problem.startswith("duplicate_"):
        first, second = (".jpeg", ".jpg") if problem == "duplicate_image" else (".JSON", ".json")
        assert (root / b / f"{p}{first}").read_bytes() == (root / b / f"{p}{second}").read_bytes()
    else:
        assert (image is None) == (root / b / f"{p}.json").exists() == (problem == "missing_image")


def _check_page_defect(root: Path, d: dict, labels: dict, truth: dict) -> None:
    """Assert that the listed page's JSON or label really has the listed defect."""
    b, p, problem = d["book_id"], d["page_name"], d["problem"]
    if problem == "invalid_json":
        with pytest.raises(json.JSONDecodeError):
            json.loads((root / b / f"{p}.json").read_text(encoding="utf-8"))
    elif problem == "bad_json_shape":
        panels = _doc(root, b, p)["panels"]
        assert not isinstance(panels, list) or any("bbox" not in panel for panel in panels)
    elif problem in ("no_panels", "too_many_panels"):
        n = len(_doc(root, b, p)["panels"])
        assert n == len(truth["books"][b]["pages"][p]["panels"]) == (0 if problem == "no_panels" else 12 + 3)
    elif problem == "label_without_page":
        assert p in labels[b] and not list((root / b).glob(f"{p}.*"))
    else:
        assert p not in labels[b] and _opens(_image(root, b, p))


def _check_text_or_box_defect(root: Path, d: dict, truth: dict) -> None:
    """Assert that the listed page's text or panel box really has the listed defect."""
    b, p, problem = d["book_id"], d["page_name"], d["problem"]
    if problem == "text_encoding":
        raw = (root / b / f"{p}.json").read_bytes()
        with pytest.raises(UnicodeDecodeError):
            raw.decode("utf-8")
        panels = json.loads(raw.decode("cp1252"))["panels"]
        assert any(ord(ch) > 127 for panel in panels for ch in panel["text"])
        for panel, true in zip(panels, truth["books"][b]["pages"][p]["panels"]):
            assert panel["text"] == " ".join(line["text"] for line in true["lines"])
        return
    if problem == "text_unicode":
        text = _doc(root, b, p)["panels"][d["panel"]]["text"]
        assert any(unicodedata.category(ch) in ("Cc", "Cf") for ch in text)
        assert not unicodedata.is_normalized("NFC", text)
        repaired = "".join(
            ch for ch in unicodedata.normalize("NFC", text) if unicodedata.category(ch) not in ("Cc", "Cf")
        )
        lines = truth["books"][b]["pages"][p]["panels"][d["panel"]]["lines"]
        assert repaired == " ".join(line["text"] for line in lines)
        return
    x0, y0, x1, y1, w, h = _box(root, d)
    inside = (max(x0, 0), max(y0, 0), min(x1, w), min(y1, h))
    area = max(0, inside[2] - inside[0]) * max(0, inside[3] - inside[1])
    expected = {
        "bbox_out_of_bounds": lambda: area > 0 and (x1 > w or y1 > h),
        "bbox_outside_page": lambda: area == 0 and x1 > x0 and y1 > y0,
        "bbox_negative": lambda: min(x0, y0) < 0 and area > 0,
        "bbox_zero_area": lambda: x1 == x0 or y1 == y0,
    }
    assert expected[problem](), (problem, (x0, y0, x1, y1, w, h))


def test_each_listed_defect_is_really_there(corpora):
    root = corpora["dirty"]
    truth, labels = _truth(root), json.loads((root / "pss_labels.json").read_text())
    for d in truth["dirty"]:
        if d["problem"] in FILE_PROBLEMS:
            _check_file_defect(root, d)
        elif d["problem"] in PAGE_PROBLEMS:
            _check_page_defect(root, d, labels, truth)
        else:
            _check_text_or_box_defect(root, d, truth)
        assert (d["panel"] is not None) == (
            d["action"] in ("repaired", "skipped_panel") and d["problem"] != "text_encoding"
        )


def test_dirty_pages_outside_the_list_are_clean(corpora):
    root = corpora["dirty"]
    truth = _truth(root)
    listed = {(d["book_id"], d["page_name"]) for d in truth["dirty"]}
    for b, p, page in _pages(root):
        if (b, p) not in listed:
            assert _opens(_image(root, b, p)) and len(_doc(root, b, p)["panels"]) == len(page["panels"])


def test_dirty_needs_enough_pages(tmp_path):
    with pytest.raises(ValueError, match="narrative pages"):
        synth.generate(tmp_path / "c", books=1, pages=4, dirty=True, page_size=SMALL)
    assert not (tmp_path / "c").exists()


def test_refuses_a_non_empty_folder_unless_overwrite(tmp_path):
    out = tmp_path / "c"
    synth.generate(out, books=1, pages=2, page_size=SMALL)
    (out / "notes.txt").write_text("mine")
    with pytest.raises(FileExistsError, match="overwrite"):
        synth.generate(out, books=1, pages=2, page_size=SMALL)
    synth.generate(out, books=2, pages=2, seed=9, page_size=SMALL, overwrite=True)
    assert (out / "notes.txt").read_text() == "mine"
    assert _truth(out)["seed"] == 9 and sorted(p.name for p in out.glob("book_*")) == ["book_000", "book_001"]


def test_command_line_writes_and_summarises(tmp_path, capsys):
    parser = argparse.ArgumentParser()
    synth.add_arguments(parser)
    args = parser.parse_args(
        [
            "--out",
            str(tmp_path / "c"),
            "--books",
            "1",
            "--pages",
            "3",
            "--seed",
            "2",
            "--bbox-format",
            "xyxy",
            "--ocr-noise",
            "0.1",
            "--page-size",
            "320",
            "480",
        ]
    )
    assert synth.main(args) == 0
    assert "3 pages" in capsys.readouterr().out
    assert _truth(tmp_path / "c")["bbox_format"] == "xyxy"
    assert synth.main(args) == 2 and "not empty" in capsys.readouterr().err


def test_summary_counts(tmp_path):
    summary = synth.generate(tmp_path / "c", books=2, pages=4, page_size=SMALL)
    truth = _truth(tmp_path / "c")
    narrative = [page for _, _, page in _pages(tmp_path / "c") if page["label"] == "narrative"]
    assert summary["books"] == 2 and summary["pages"] == 8 and summary["narrative_pages"] == len(narrative)
    assert summary["panels"] == sum(len(page["panels"]) for page in narrative) and summary["dirty"] == 0
    assert truth["dirty"] == []


# --- the story structure of the sidecar (version 2) -------------------------------------------------------------


@pytest.fixture(scope="module")
def twelve_books() -> dict:
    """The sidecar of a 12-book corpus of 10 pages, planned only (nothing drawn)."""
    return synth.ground_truth(synth.plan_corpus(12, 10, seed=0), "xywh")


def _story(book: dict) -> list[tuple[str, dict]]:
    """(page_name, panel) of a sidecar book's story panels, in reading order."""
    return [(p, panel) for p, page in book["pages"].items() if page["label"] == "narrative" for panel in page["panels"]]


def _runs_are_numbered_in_order(numbers: list[int]) -> bool:
    """Whether numbers go 0, 1, 2, ... each value once as one unbroken run (so each spans consecutive positions)."""
    starts = [n for i, n in enumerate(numbers) if i == 0 or n != numbers[i - 1]]
    return starts == list(range(len(starts)))


def test_beats_and_scene_runs_span_consecutive_story_panels(twelve_books, corpora):
    crossing = 0
    for truth, clean in ((twelve_books, True), (_truth(corpora["clean"]), True), (_truth(corpora["dirty"]), False)):
        for book in truth["books"].values():
            story = _story(book)
            assert _runs_are_numbered_in_order([panel["beat"] for _, panel in story])
            assert _runs_are_numbered_in_order([panel["scene_run"] for _, panel in story])
            for (page, before), (next_page, panel) in zip(story, story[1:]):
                if panel["beat"] == before["beat"]:  # one action by the same cast in one scene, step after step
                    assert (
                        panel["action_step"] == before["action_step"] + 1 and panel["scene_run"] == before["scene_run"]
                    )
                    assert (panel["action"], panel["characters"]) == (before["action"], before["characters"])
                    crossing += page != next_page and truth is twelve_books
                elif clean and not (panel["cutaway"] or before["cutaway"] or panel["resumes"]):
                    assert panel["action_step"] == 0 and before["action_step"] == before["action_steps"] - 1
                if panel["scene_run"] == before["scene_run"]:
                    assert panel["scene"] == before["scene"]
                elif clean:
                    assert panel["scene"] != before["scene"]
            others = [
                panel for page in book["pages"].values() if page["label"] != "narrative" for panel in page["panels"]
            ]
            assert all(panel["beat"] is None and panel["scene_run"] is None for panel in others)
    assert crossing > 0, "no beat crosses a page boundary in 12 books"


def test_speakers_and_caption_unique_follow_the_panels(twelve_books):
    flags = Counter()
    for book in twelve_books["books"].values():
        panels = [panel for page in book["pages"].values() for panel in page["panels"]]
        captions = Counter(panel["caption"] for panel in panels)
        for panel in panels:
            spoken = [line["speaker"] for line in panel["lines"] if line["kind"] == "speech"]
            assert panel["speakers"] == sorted(set(spoken), key=spoken.index)
            assert panel["caption_unique"] == (captions[panel["caption"]] == 1)
            flags[panel["caption_unique"]] += 1
    assert flags[True] and flags[False]


def _metadata_of_every_story_page(truth: dict) -> list[dict]:
    """Store metadata records for every narrative page of a sidecar, every panel stored (12 slots a page)."""
    pages = [(b, p, page) for b, book in truth["books"].items() for p, page in book["pages"].items()]
    story = [(b, p, page) for b, p, page in pages if page["label"] == "narrative"]
    return [
        {
            "book_id": b,
            "page_name": p,
            "page_index": i,
            "embedding_indices": [i * 12 + k for k in range(len(page["panels"]))],
            "panel_index": list(range(len(page["panels"]))),
        }
        for i, (b, p, page) in enumerate(story)
    ]


def _write_sidecar(root: Path, truth: dict) -> Path:
    """A data_root holding only a sidecar."""
    root.mkdir(parents=True, exist_ok=True)
    (root / "ground_truth.json").write_text(json.dumps(truth), encoding="utf-8")
    return root


def test_panel_truth_gives_the_story_columns(twelve_books, tmp_path):
    metadata = _metadata_of_every_story_page(twelve_books)
    table = synth.panel_truth(_write_sidecar(tmp_path / "v2", twelve_books), metadata)
    assert list(table.columns) == list(synth.truth.TRUTH_COLUMNS)
    assert table.panel_id.tolist() == [i for m in metadata for i in m["embedding_indices"]]
    for row in table.sample(40, random_state=0).itertuples():
        panel = twelve_books["books"][row.book_id]["pages"][row.page_name]["panels"][row.panel_id % 12]
        for column in ("beat", "scene_run", "action", "action_step", "action_steps", "lines", "speakers"):
            assert getattr(row, column) == panel[column]
        assert row.caption_unique == panel["caption_unique"] and row.description == panel["caption"]
    assert table.beat.notna().all() and table.groupby(["book_id", "beat"]).scene_run.nunique().max() == 1


def test_panel_truth_derives_the_story_columns_of_a_version_1_sidecar(twelve_books, corpora, tmp_path):
    new_fields = ("beat", "scene_run", "speakers", "caption_unique")
    for name, truth in (("twelve", twelve_books), ("dirty", _truth(corpora["dirty"]))):
        old = json.loads(json.dumps(truth))
        old["version"] = 1
        for book in old["books"].values():
            for page in book["pages"].values():
                page["panels"] = [{k: v for k, v in panel.items() if k not in new_fields} for panel in page["panels"]]
        metadata = _metadata_of_every_story_page(truth)
        derived = synth.panel_truth(_write_sidecar(tmp_path / f"{name}-v1", old), metadata)
        written = synth.panel_truth(_write_sidecar(tmp_path / f"{name}-v2", truth), metadata)
        pd.testing.assert_frame_equal(derived, written)


def test_story_structure_on_a_hand_built_book(tmp_path):
    """Captions A, B / A, C after a cover: A is not unique; beat 0 crosses from page 1 to page 2."""

    def panel(caption: str, beat: int | None, step: int | None, lines: list[dict]) -> dict:
        return {
            "characters": ["c0", "c1"],
            "scene": "harbour",
            "action": "ball_throw" if beat == 0 else "kite_rise",
            "action_step": step,
            "action_steps": 3 if beat == 0 else 1,
            "caption": caption,
            "lines": lines,
            "beat": beat,
            "scene_run": None if beat is None else 0,
        }

    talk = [story.speech("c1", "Hi!"), story.caption("Later."), story.speech("c0", "Ho."), story.speech("c1", "Ha.")]
    page = {"layout": "grid", "reading_direction": "ltr", "naive_order_correct": True, "scene": "harbour"}
    plan = {
        "seed": 0,
        "dirty": [],
        "books": {
            "b": {
                "direction": "ltr",
                "pages": {
                    "p0": {**page, "label": "cover", "panels": [panel("Cover.", None, None, [])]},
                    "p1": {**page, "label": "narrative", "panels": [panel("A", 0, 0, talk), panel("B", 0, 1, [])]},
                    "p2": {**page, "label": "narrative", "panels": [panel("A", 0, 2, []), panel("C", 1, 0, [])]},
                },
            }
        },
    }
    truth = synth.ground_truth(plan, "xywh")
    table = synth.panel_truth(_write_sidecar(tmp_path, truth), _metadata_of_every_story_page(truth))
    assert table.caption.tolist() == ["A", "B", "A", "C"]
    assert table.caption_unique.tolist() == [False, True, False, True]
    assert table.beat.tolist() == [0, 0, 0, 1] and table.scene_run.tolist() == [0, 0, 0, 0]
    assert table.speakers.tolist() == [["c1", "c0"], [], [], []]
    assert truth["books"]["b"]["pages"]["p0"]["panels"][0]["caption_unique"] is True
    assert truth["books"]["b"]["pages"]["p0"]["panels"][0]["beat"] is None


def test_describe_says_what_was_drawn_in_one_sentence():
    from comicnb.corpus.synth import describe

    summary = dict(out="x", books=2, pages=6, narrative_pages=5, panels=20, text_panels=15, dirty=0, seconds=0.5)
    assert describe(summary) == (
        "drew 2 books, 6 pages (5 narrative, 20 panels, 15 with text, 0 injected defects) to x in 0.5 s"
    )


def test_cutaways_interrupt_a_beat_which_resumes_with_the_answer_to_its_question(twelve_books):
    resumed = 0
    for book in twelve_books["books"].values():
        story_panels = [p for _, p in _story(book)]
        for i, panel in enumerate(story_panels):
            if not panel["resumes"]:
                continue
            resumed += 1
            j = i - 1
            while story_panels[j]["cutaway"]:
                j -= 1
            away, before = story_panels[j + 1 : i], story_panels[j]
            assert 1 <= len(away) <= 2 and away[0]["lines"][0]["text"].startswith("Meanwhile, ")
            assert all(not set(a["characters"]) & set(panel["characters"]) for a in away)  # other cast, elsewhere
            assert all(a["scene"] != panel["scene"] for a in away)
            assert (before["action"], before["scene"], before["characters"]) == (
                panel["action"],
                panel["scene"],
                panel["characters"],
            )
            assert before["action_step"] == panel["action_step"] - 1 >= 1  # two or more steps before the cutaway
            question, reply = before["lines"][-1], panel["lines"][0]
            asked = panel["resumes"]["asked"]
            assert any(_fills(q, question["text"]) for q in story.EXCHANGES[asked][0])  # the kind asked
            assert not any(_fills(q, question["text"]) for k, e in story.EXCHANGES.items() if k != asked for q in e[0])
            assert reply["text"] == panel["resumes"]["reply"] and reply["speaker"] != question["speaker"]
            assert set(panel["resumes"]["replies"]) == set(story.EXCHANGES) - {asked}
    assert resumed >= 10, "too few cutaways in 12 books for the long-range probes"


def _fills(template: str, text: str) -> bool:
    """Whether text is template with its {fields} filled in."""
    parts = re.split(r"\{\w+\}", template)
    return re.fullmatch(".+".join(re.escape(part) for part in parts), text) is not None
