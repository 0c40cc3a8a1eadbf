"""The embedded corpus: synthetic comic books drawn with PIL, in the Stage 1/2 formats, with ground truth.

`generate(out, books, pages, seed)` writes (the contract is docs/corpus.md)::

    out/pss_labels.json          {book: {page: label}}, labels cover / narrative / advertisement / text
    out/book_000/page_000.jpg    page image (JPEG; a few PNG)
    out/book_000/page_000.json   {"image_width", "image_height", "panels": [{"bbox", "text", ...}]}
    out/ground_truth.json        cast, per-page layout and per-panel story truth, injected defects

Each book opens with a cover; every second book carries an advertisement and every third a text page. Its
narrative pages tell one story (comicnb.story): a recurring cast drawn the same way everywhere, scenes with
their own backdrop and landmark, actions that progress visibly over consecutive panels, and speech balloons
whose tails point at the speaker. Pages are laid out as grids, unequal rows, a tall panel beside two
stacked ones, a splash with a strip, or staggered gutters, read left-to-right or (some books)
right-to-left, so the naive (top, then left) sort of the boxes is sometimes wrong.

`dirty=True` gives each class of bad input of docs/corpus.md section 2 a narrative page of its own (except
label_without_page, which labels a page that is not there) and lists them in the sidecar with the action a
reader should take.

Every random draw comes from a numpy Generator keyed by (seed, purpose, book, page), so a seed gives
byte-identical files.
"""
from __future__ import annotations

import argparse
import io
import json
import shutil
import sys
import time
import unicodedata
from functools import lru_cache, partial
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image, ImageDraw, ImageFont

from comicnb.story import CAST, COLOURS, SCENES, advert_panel, book_title, cover_panel, pick, plan_story, \
    prose_panel, speech

Box = tuple[int, int, int, int]  # x0, y0, x1, y1 in page pixels; x1 and y1 exclusive

VERSION = 1
PAPER, INK, WHITE = (250, 247, 238), (20, 20, 20), (255, 255, 255)
BOMB_SIDE = 10_000  # 1e8 pixels, above PIL's default MAX_IMAGE_PIXELS (89,478,485)
# Purposes that key the generators, so drawing more numbers for one thing leaves the others unchanged.
_CORPUS, _BOOK, _PAGE, _DEFECT = range(4)


# ----------------------------------------------------------------------------------------------- layouts

def _spans(lo: int, hi: int, weights, gap: int) -> list[tuple[int, int]]:
    """Cut [lo, hi) into spans proportional to weights, gap pixels apart."""
    free = hi - lo - gap * (len(weights) - 1)
    edges = np.concatenate([[0.0], np.cumsum(weights)]) / np.sum(weights) * free
    return [(lo + int(round(edges[i])) + i * gap, lo + int(round(edges[i + 1])) + i * gap)
            for i in range(len(weights))]


def _rows(rng: np.random.Generator, area: Box, gap: int, counts: list[int]) -> list[Box]:
    """Rows of unequal heights, each cut into panels of unequal widths; read row by row."""
    x0, y0, x1, y1 = area
    rows = _spans(y0, y1, rng.uniform(0.75, 1.3, len(counts)), gap)
    return [(a, top, b, bottom) for (top, bottom), n in zip(rows, counts)
            for a, b in _spans(x0, x1, rng.uniform(0.6, 1.4, n), gap)]


def _grid(rng: np.random.Generator, area: Box, gap: int, limit: int, cols: int, rows: int) -> list[Box]:
    """A regular grid of cols x rows panels."""
    x0, y0, x1, y1 = area
    return [(a, top, b, bottom) for top, bottom in _spans(y0, y1, [1] * rows, gap)
            for a, b in _spans(x0, x1, [1] * cols, gap)]


def _unequal_rows(rng: np.random.Generator, area: Box, gap: int, limit: int) -> list[Box]:
    """Two to four rows of one to three panels, 3 to 9 panels in all."""
    n = int(rng.integers(3, min(9, limit) + 1))
    counts = [1] * int(rng.integers(max(2, -(-n // 3)), min(4, n) + 1))
    for _ in range(n - len(counts)):
        counts[pick(rng, [i for i, c in enumerate(counts) if c < 3])] += 1
    return _rows(rng, area, gap, counts)


def _tall(rng: np.random.Generator, area: Box, gap: int, limit: int, side: str) -> list[Box]:
    """A panel spanning two rows beside two stacked ones, with an optional strip above or below."""
    # The stacked column is read before a tall panel on its right, so there the naive sort, which takes the
    # tall panel second, is wrong; a tall panel on the left is read first.
    x0, y0, x1, y1 = area
    strip = int(rng.integers(0, 4))
    strip_first = strip > 0 and rng.random() < 0.3
    spans = _spans(y0, y1, [1, 2.2] if strip_first else [2.2, 1], gap) if strip else [(y0, y1)]
    top, bottom = spans[-1] if strip_first else spans[0]
    (la, lb), (ra, rb) = _spans(x0, x1, rng.uniform(0.8, 1.25, 2), gap)
    (u0, u1), (d0, d1) = _spans(top, bottom, [1, 1], gap)
    block = ([(la, top, lb, bottom), (ra, u0, rb, u1), (ra, d0, rb, d1)] if side == "left"
             else [(la, u0, lb, u1), (la, d0, lb, d1), (ra, top, rb, bottom)])
    if not strip:
        return block
    s0, s1 = spans[0] if strip_first else spans[-1]
    row = [(a, s0, b, s1) for a, b in _spans(x0, x1, rng.uniform(0.7, 1.3, strip), gap)]
    return row + block if strip_first else block + row


def _splash(rng: np.random.Generator, area: Box, gap: int, limit: int) -> list[Box]:
    """A splash panel with a strip of two to four panels below or above it."""
    x0, y0, x1, y1 = area
    first = rng.random() < 0.6
    spans = _spans(y0, y1, [1.8, 1] if first else [1, 1.8], gap)
    (p0, p1), (s0, s1) = spans if first else spans[::-1]
    strip = [(a, s0, b, s1) for a, b in _spans(x0, x1, rng.uniform(0.7, 1.3, int(rng.integers(2, 5))), gap)]
    return [(x0, p0, x1, p1)] + strip if first else strip + [(x0, p0, x1, p1)]


def _staggered(rng: np.random.Generator, area: Box, gap: int, limit: int) -> list[Box]:
    """Columns whose row gutters sit at different heights: a panel's top may rise above its predecessor's."""
    x0, y0, x1, y1 = area
    cols, rows = pick(rng, [s for s in [(2, 2), (2, 3), (3, 2), (2, 4), (3, 3)] if s[0] * s[1] <= limit])
    xs = _spans(x0, x1, rng.uniform(0.8, 1.2, cols), gap)
    row_h, half = (y1 - y0) / rows, gap // 2
    cuts = [[y0] + [int(round(y0 + (r + rng.uniform(-0.22, 0.22)) * row_h)) for r in range(1, rows)] + [y1]
            for _ in range(cols)]
    return [(a, cuts[c][r] + (half if r else 0), b, cuts[c][r + 1] - (half if r < rows - 1 else 0))
            for r in range(rows) for c, (a, b) in enumerate(xs)]


def _dense(rng: np.random.Generator, area: Box, gap: int, n: int) -> list[Box]:
    """Rows of up to four panels holding n panels (the too-many-panels page)."""
    n_rows = -(-n // 4)
    return _rows(rng, area, gap, [n // n_rows + (i < n % n_rows) for i in range(n_rows)])


# name: (builder, weight, most panels it draws; None where it adapts to max_panels). Grids are cols x rows.
LAYOUTS = {
    "grid_2x2": (partial(_grid, cols=2, rows=2), 1.0, 4),
    "grid_2x3": (partial(_grid, cols=2, rows=3), 1.5, 6),
    "grid_3x3": (partial(_grid, cols=3, rows=3), 0.7, 9),
    "rows": (_unequal_rows, 2.0, None),
    "tall_left": (partial(_tall, side="left"), 1.0, 6),
    "tall_right": (partial(_tall, side="right"), 1.0, 6),
    "splash": (_splash, 0.8, 5),
    "staggered": (_staggered, 1.5, None),
}


def page_area(size: tuple[int, int]) -> tuple[Box, int]:
    """The area inside the page margins, and the gutter width."""
    w, h = size
    m = int(round(0.045 * w))
    return (m, m, w - m, h - m), max(4, int(round(0.022 * w)))


def _layout(rng: np.random.Generator, size: tuple[int, int], limit: int) -> tuple[str, list[Box]]:
    """A narrative page's layout name and its boxes in reading order (left-to-right)."""
    names = [name for name, (_, _, most) in LAYOUTS.items() if most is None or most <= limit]
    weights = np.array([LAYOUTS[name][1] for name in names])
    name = names[int(rng.choice(len(names), p=weights / weights.sum()))]
    area, gap = page_area(size)
    return name, LAYOUTS[name][0](rng, area, gap, limit)


def mirror(boxes: list[Box], width: int) -> list[Box]:
    """Boxes flipped left-right; the list order (reading order) stays, as in a right-to-left book."""
    return [(width - x1, y0, width - x0, y1) for x0, y0, x1, y1 in boxes]


def naive_order_correct(boxes, direction: str) -> bool:
    """Whether sorting boxes (x, y first, either bbox format) by y, then x (x descending for rtl) keeps their order."""
    sign = -1 if direction == "rtl" else 1
    order = sorted(range(len(boxes)), key=lambda i: (boxes[i][1], sign * boxes[i][0]))
    return order == list(range(len(boxes)))


# ------------------------------------------------------------------------------------------------ planning

def plan_corpus(books: int = 12, pages: int = 10, seed: int = 0, dirty: bool = False, *,
                page_size: tuple[int, int] = (640, 960), rtl_fraction: float = 0.2, max_panels: int = 12) -> dict:
    """The whole corpus as plain dicts (books, pages, boxes, story truth, labels, defects); nothing drawn."""
    rng = np.random.default_rng([seed, _CORPUS])
    # A fixed share rather than a coin per book, so a small corpus with rtl_fraction > 0 has a right-to-left book.
    n_rtl = min(books, max(round(books * rtl_fraction), int(rtl_fraction > 0)))
    rtl = {int(b) for b in rng.choice(books, n_rtl, replace=False)}
    plan = {"seed": seed, "dirty": [], "books": {
        f"book_{b:03d}": _plan_book(seed, b, pages, page_size, "rtl" if b in rtl else "ltr", max_panels)
        for b in range(books)}}
    plan["labels"] = {b: {p: page["label"] for p, page in book["pages"].items()}
                      for b, book in plan["books"].items()}
    if dirty:
        _plan_defects(plan, np.random.default_rng([seed, _DEFECT]), pages, max_panels)
    return plan


def _page_labels(rng: np.random.Generator, b: int, pages: int) -> list[str]:
    """Cover first; every second book an advertisement, every third a text page, somewhere after page 1."""
    labels = ["cover"] + ["narrative"] * (pages - 1)
    extras = (["advertisement"] if b % 2 == 1 and pages >= 5 else []) + (["text"] if b % 3 == 2 and pages >= 6 else [])
    for label, at in zip(extras, rng.choice(np.arange(2, pages), len(extras), replace=False)):
        labels[int(at)] = label
    return labels


def _image_format(b: int, p: int, pages: int) -> str:
    """PNG for about one page in eleven (spread over books and positions), JPEG otherwise."""
    return "png" if (b * pages + p) % 11 == 3 else "jpg"


def _plan_book(seed: int, b: int, pages: int, page_size: tuple[int, int], direction: str, limit: int) -> dict:
    """One book: page size, cast, page kinds and layouts, and its story cut into the narrative pages."""
    rng = np.random.default_rng([seed, _BOOK, b])
    size = tuple(2 * int(round(s * rng.uniform(0.94, 1.06) / 2)) for s in page_size)
    cast = [str(c) for c in rng.choice(list(CAST), int(rng.integers(3, 6)), replace=False)]
    labels = _page_labels(rng, b, pages)
    layouts = [_layout(rng, size, limit) if label == "narrative" else (label, []) for label in labels]
    story = plan_story(rng, cast, sum(len(boxes) for _, boxes in layouts))
    book = {"direction": direction, "size": size, "cast": cast, "title": book_title(rng, cast), "pages": {}}
    cursor = 0
    for p, (label, (layout, boxes)) in enumerate(zip(labels, layouts)):
        if label == "narrative":
            panels, cursor = story[cursor:cursor + len(boxes)], cursor + len(boxes)
        else:
            boxes, panels = [page_area(size)[0]], [_single_panel(rng, label, book, story[:cursor])]
        book["pages"][f"page_{p:03d}"] = _page(label, layout, boxes, panels, book, _image_format(b, p, pages))
    return book


def _single_panel(rng: np.random.Generator, label: str, book: dict, story_so_far: list[dict]) -> dict:
    """The one panel of a cover, advertisement or text page."""
    if label == "cover":
        return cover_panel(rng, book["cast"], book["title"])
    return advert_panel(rng) if label == "advertisement" else prose_panel(story_so_far)


def _page(label: str, layout: str, boxes: list[Box], panels: list[dict], book: dict, fmt: str) -> dict:
    """A planned page; boxes are given left-to-right and mirrored here for right-to-left books."""
    direction = book["direction"]
    boxes = mirror(boxes, book["size"][0]) if direction == "rtl" else boxes
    return {"label": label, "layout": layout, "reading_direction": direction,
            "naive_order_correct": naive_order_correct(boxes, direction),
            "scene": panels[0]["scene"] if panels else None, "panels": panels, "boxes": boxes, "format": fmt,
            "defect": None}


# ------------------------------------------------------------------------------------------------- defects

# (problem, variant, expected reader action) as in docs/corpus.md section 2; each gets a page of its own.
DEFECTS = [
    ("corrupt_image", "garbage", "skipped_page"), ("truncated_image", "cut", "skipped_page"),
    ("huge_image", "bomb", "skipped_page"), ("missing_json", "missing_json", "skipped_page"),
    ("missing_image", "missing_image", "skipped_page"), ("invalid_json", "invalid_json", "skipped_page"),
    ("bad_json_shape", "panels_dict", "skipped_page"), ("bad_json_shape", "panel_without_bbox", "skipped_page"),
    ("no_panels", "no_panels", "skipped_page"), ("bbox_out_of_bounds", "partly_outside", "repaired"),
    ("bbox_outside_page", "wholly_outside", "skipped_panel"), ("bbox_negative", "negative", "repaired"),
    ("bbox_zero_area", "zero_area", "skipped_panel"), ("too_many_panels", "too_many", "split"),
    ("page_without_label", "unlabelled", "skipped_page"), ("image_mode", "L", "converted"),
    ("image_mode", "CMYK", "converted"), ("image_mode", "RGBA", "converted"), ("image_mode", "I;16", "converted"),
    ("text_encoding", "cp1252", "repaired"), ("text_unicode", "odd_unicode", "repaired"),
    ("duplicate_image", "second_image", "noted"), ("duplicate_json", "second_json", "noted"),
]
# Defects of one panel: the sidecar names its index. panel_without_bbox and cp1252 also touch one panel,
# but the reader's action concerns the whole page, so the sidecar says null for them.
PANEL_DEFECTS = {"partly_outside", "wholly_outside", "negative", "zero_area", "odd_unicode"}
_ONE_PANEL = PANEL_DEFECTS | {"panel_without_bbox", "cp1252"}
_FORMAT_OF = {"garbage": "jpg", "cut": "jpg", "L": "jpg", "CMYK": "jpg", "RGBA": "png", "I;16": "png", "bomb": "png",
              "second_image": "jpg"}
ACCENTED = ["Un café, s'il vous plaît!", "Déjà vu at the pier, señor?", "Crème brûlée for everyone!",
            "Voilà, the piñata is here!"]


def _plan_defects(plan: dict, rng: np.random.Generator, pages: int, max_panels: int) -> None:
    """Give each defect its own narrative page, adjust that page's plan, and list it in plan['dirty']."""
    targets = [(b, p) for b, book in plan["books"].items() for p, page in book["pages"].items()
               if page["label"] == "narrative"]
    if len(targets) < len(DEFECTS):
        raise ValueError(f"dirty=True needs {len(DEFECTS)} narrative pages and this corpus has {len(targets)}: "
                         "ask for more books or pages")
    for (problem, variant, action), i in zip(DEFECTS, rng.choice(len(targets), len(DEFECTS), replace=False)):
        b, p = targets[int(i)]
        panel = _break_plan(rng, plan["books"][b], plan["books"][b]["pages"][p], variant, max_panels)
        plan["dirty"].append({"problem": problem, "book_id": b, "page_name": p, "panel": panel, "action": action})
        if variant == "unlabelled":
            del plan["labels"][b][p]
    b, ghost = pick(rng, list(plan["books"])), f"page_{pages:03d}"
    plan["labels"][b][ghost] = "narrative"
    plan["dirty"].append({"problem": "label_without_page", "book_id": b, "page_name": ghost, "panel": None,
                          "action": "noted"})
    plan["dirty"].sort(key=lambda d: (d["book_id"], d["page_name"]))


def _break_plan(rng: np.random.Generator, book: dict, page: dict, variant: str, max_panels: int) -> int | None:
    """Change a page's plan for its defect; return the defective panel's index where the sidecar names one."""
    area, gap = page_area(book["size"])
    if variant == "too_many":
        n = max_panels + 3
        page.update(_page("narrative", "dense", _dense(rng, area, gap, n), plan_story(rng, book["cast"], n), book,
                          page["format"]))
    elif variant == "no_panels":
        page.update(_page("narrative", "empty", [], [], book, page["format"]))
    k = _defect_panel(rng, page, variant) if variant in _ONE_PANEL else None
    if variant in ("cp1252", "odd_unicode"):
        text = pick(rng, ACCENTED) + (" \U0001F642" if variant == "odd_unicode" else "")
        page["panels"][k]["lines"] = [speech(page["panels"][k]["characters"][0], text)]
    page.update(defect={"variant": variant, "panel": k}, format=_FORMAT_OF.get(variant, page["format"]))
    return k if variant in PANEL_DEFECTS else None


def _defect_panel(rng: np.random.Generator, page: dict, variant: str) -> int:
    """The index of the panel to damage."""
    boxes, panels = page["boxes"], page["panels"]
    silent = [i for i, panel in enumerate(panels) if not panel["lines"]]
    # A box on the right edge is pushed past it and one on the left edge below zero; new text goes into a
    # silent panel where there is one, so that no question loses its answer.
    choices = {"partly_outside": [i for i, box in enumerate(boxes) if box[2] == max(b[2] for b in boxes)],
               "negative": [i for i, box in enumerate(boxes) if box[0] == min(b[0] for b in boxes)],
               "cp1252": silent, "odd_unicode": silent}.get(variant)
    return pick(rng, choices or list(range(len(boxes))))


# ------------------------------------------------------------------------------------------------- drawing

@lru_cache(maxsize=None)
def _font(size: int) -> ImageFont.FreeTypeFont | ImageFont.ImageFont:
    """PIL's default font at a size (without FreeType, its one-size bitmap font)."""
    return ImageFont.load_default(size)


def _line_height(font) -> int:
    """Pixels from one text row to the next."""
    return font.getbbox("Ag")[3] + 3


def _wrap(text: str, font, width: float) -> list[str]:
    """Greedy word wrap to a pixel width (a word longer than the width keeps its own row)."""
    # PIL's default font has ASCII glyphs only: accents are dropped and other characters left out rather than
    # drawn as empty boxes.
    plain = "".join(ch for ch in unicodedata.normalize("NFKD", text) if ch.isascii())
    rows, current = [], ""
    for word in plain.split():
        trial = f"{current} {word}".strip()
        if current and font.getlength(trial) > width:
            rows, current = rows + [current], word
        else:
            current = trial
    return rows + [current] if current else rows


def _canvas(size: tuple[int, int], fill=PAPER) -> tuple[Image.Image, ImageDraw.ImageDraw]:
    """A blank panel canvas and its drawing context."""
    img = Image.new("RGB", size, fill)
    return img, ImageDraw.Draw(img)


def _tint(rgb, f: float) -> tuple[int, int, int]:
    """A colour moved a fraction f towards white."""
    return tuple(int(c + (255 - c) * f) for c in rgb)


def _dot(draw: ImageDraw.ImageDraw, x: float, y: float, r: float, fill) -> None:
    """An outlined disc."""
    draw.ellipse((x - r, y - r, x + r, y + r), fill=fill, outline=INK, width=2)


def _scatter(n: int, offset: float = 0.0) -> list[tuple[float, float]]:
    """n well-spread points in the unit square (R2 sequence): fixed patterns that need no generator."""
    return [((0.5 + offset + i * 0.7548777) % 1, (0.5 + offset + i * 0.5698403) % 1) for i in range(n)]


def _harbour(draw: ImageDraw.ImageDraw, w: int, h: int, hy: int) -> None:
    """Waves on the water and a lighthouse."""
    for i in range(3):
        y = hy + (i + 0.5) * (h - hy) / 3
        for x in range(-10, w, 26):
            draw.arc((x, y - 5, x + 26, y + 5), 180, 360, fill=(190, 220, 245), width=2)
    draw.polygon([(0.83 * w, hy), (0.95 * w, hy), (0.93 * w, 0.22 * h), (0.85 * w, 0.22 * h)], fill=WHITE, outline=INK)
    draw.rectangle((0.845 * w, 0.36 * h, 0.935 * w, 0.42 * h), fill=(200, 40, 40))
    draw.rectangle((0.85 * w, 0.14 * h, 0.93 * w, 0.22 * h), fill=(250, 230, 120), outline=INK, width=2)


def _forest(draw: ImageDraw.ImageDraw, w: int, h: int, hy: int) -> None:
    """Pines along the horizon and a broad old oak."""
    for fx, _ in _scatter(6):
        x = fx * w
        draw.polygon([(x, hy - 0.3 * h), (x + 0.08 * w, hy + 2), (x - 0.08 * w, hy + 2)], fill=(40, 95, 50),
                     outline=INK)
    draw.rectangle((0.86 * w, hy - 0.22 * h, 0.9 * w, hy + 0.05 * h), fill=(110, 70, 40), outline=INK)
    draw.ellipse((0.76 * w, hy - 0.42 * h, w, hy - 0.16 * h), fill=(60, 130, 55), outline=INK, width=2)


def _city(draw: ImageDraw.ImageDraw, w: int, h: int, hy: int) -> None:
    """A skyline with lit windows and a clock tower."""
    for i, (_, fy) in enumerate(_scatter(7)):
        x0, top = i * w / 7, hy - (0.12 + 0.2 * fy) * h
        draw.rectangle((x0, top, x0 + w / 7 - 3, hy), fill=(150, 150, 165), outline=INK)
        for wy in range(int(top) + 6, hy - 8, 14):
            draw.rectangle((x0 + 5, wy, x0 + 10, wy + 6), fill=(250, 240, 170))
    draw.rectangle((0.82 * w, 0.15 * h, 0.94 * w, hy), fill=(170, 130, 100), outline=INK, width=2)
    _dot(draw, 0.88 * w, 0.21 * h, 0.045 * w, WHITE)


def _desert(draw: ImageDraw.ImageDraw, w: int, h: int, hy: int) -> None:
    """A hot sun, dune ridges and a tall cactus."""
    _dot(draw, 0.12 * w, 0.1 * h, 0.06 * w, (250, 170, 40))
    for fx, fy in _scatter(4):
        x, y = fx * w, hy + fy * (h - hy)
        draw.arc((x - 0.2 * w, y - 12, x + 0.2 * w, y + 12), 180, 360, fill=(200, 150, 80), width=3)
    for box in [(0.86, hy / h - 0.25, 0.91, hy / h + 0.03), (0.81, hy / h - 0.17, 0.86, hy / h - 0.13)]:  # trunk, arm
        draw.rounded_rectangle((box[0] * w, box[1] * h, box[2] * w, box[3] * h), 0.008 * w, fill=(50, 140, 60),
                               outline=INK, width=2)


def _kitchen(draw: ImageDraw.ImageDraw, w: int, h: int, hy: int) -> None:
    """Tiled wall, a window and the stove."""
    for x in range(0, w, 22):
        draw.line((x, 0, x, hy), fill=(225, 212, 180))
    for y in range(0, hy, 22):
        draw.line((0, y, w, y), fill=(225, 212, 180))
    draw.rectangle((0.08 * w, 0.12 * h, 0.3 * w, 0.4 * h), fill=(170, 215, 245), outline=INK, width=3)
    draw.rectangle((0.8 * w, hy - 0.2 * h, 0.98 * w, hy + 0.04 * h), fill=(235, 235, 235), outline=INK, width=2)
    for x in (0.85 * w, 0.93 * w):
        draw.ellipse((x - 0.03 * w, hy - 0.22 * h, x + 0.03 * w, hy - 0.19 * h), fill=INK)


def _rooftop(draw: ImageDraw.ImageDraw, w: int, h: int, hy: int) -> None:
    """Stars, the moon and a chimney."""
    for fx, fy in _scatter(14):
        x, y = fx * w, fy * hy * 0.9
        draw.ellipse((x - 1.5, y - 1.5, x + 1.5, y + 1.5), fill=(250, 250, 210))
    _dot(draw, 0.14 * w, 0.12 * h, 0.05 * w, (245, 240, 200))
    draw.rectangle((0.84 * w, hy - 0.16 * h, 0.92 * w, hy), fill=(150, 60, 50), outline=INK, width=2)


def _beach(draw: ImageDraw.ImageDraw, w: int, h: int, hy: int) -> None:
    """The sea behind the sand, the sun and a pier on posts."""
    draw.rectangle((0, hy - 0.08 * h, w, hy), fill=(60, 140, 200))
    _dot(draw, 0.14 * w, 0.1 * h, 0.06 * w, (250, 220, 60))
    draw.rectangle((0.72 * w, hy - 0.1 * h, w, hy - 0.07 * h), fill=(140, 100, 60), outline=INK)
    for x in (0.76, 0.86, 0.96):
        draw.rectangle((x * w, hy - 0.07 * h, x * w + 4, hy), fill=(110, 80, 50))


def _garden(draw: ImageDraw.ImageDraw, w: int, h: int, hy: int) -> None:
    """Flowers in the grass and a fountain."""
    colours = list(COLOURS.values())
    for i, (fx, fy) in enumerate(_scatter(12)):
        x, y = fx * w, hy + fy * (h - hy)
        draw.ellipse((x - 3, y - 3, x + 3, y + 3), fill=colours[i % len(colours)])
    draw.ellipse((0.78 * w, hy - 0.03 * h, 0.98 * w, hy + 0.05 * h), fill=(180, 180, 190), outline=INK, width=2)
    draw.line((0.88 * w, hy, 0.88 * w, hy - 0.15 * h), fill=(90, 160, 230), width=4)
    draw.arc((0.82 * w, hy - 0.18 * h, 0.94 * w, hy - 0.05 * h), 180, 360, fill=(90, 160, 230), width=3)


_SCENERY = {"harbour": _harbour, "forest": _forest, "city": _city, "desert": _desert, "kitchen": _kitchen,
            "rooftop": _rooftop, "beach": _beach, "garden": _garden}


def _backdrop(draw: ImageDraw.ImageDraw, scene: str, w: int, h: int) -> None:
    """Sky (or wall) above the horizon, ground below, then the scene's pattern and landmark."""
    look = SCENES[scene]
    hy = int(look["horizon"] * h)
    draw.rectangle((0, 0, w, hy), fill=look["sky"])
    draw.rectangle((0, hy, w, h), fill=look["ground"])
    _SCENERY[scene](draw, w, h, hy)


_BODY_SIZE = {"tall": (0.3, 0.62), "wide": (0.62, 0.42)}  # (width, height) in character heights
_BODY_POLYGONS = {
    "triangle": lambda cx, x0, x1, y0, y1: [(cx, y0), (x1, y1), (x0, y1)],
    "diamond": lambda cx, x0, x1, y0, y1: [(cx, y0), (x1, (y0 + y1) / 2), (cx, y1), (x0, (y0 + y1) / 2)],
    "bell": lambda cx, x0, x1, y0, y1: [(cx - (x1 - x0) / 4, y0), (cx + (x1 - x0) / 4, y0), (x1, y1), (x0, y1)],
}
# Accessory primitives, points in head radii around the head's centre (y down).
_ACCESSORIES = {
    "hat": [("rect", ((-0.65, -1.9), (0.65, -0.75))), ("rect", ((-1.25, -0.95), (1.25, -0.7)))],
    "antenna": [("line", ((0, -1), (0, -2))), ("ellipse", ((-0.25, -2.4), (0.25, -1.9)))],
    "scarf": [("rect", ((-0.9, 0.75), (0.9, 1.15))), ("rect", ((0.3, 0.9), (0.65, 1.9)))],
    "glasses": [("ring", ((-0.7, -0.5), (-0.05, 0.15))), ("ring", ((0.05, -0.5), (0.7, 0.15)))],
    "backpack": [("rect", ((1.25, 1.3), (1.95, 2.9)))],
    "bow": [("poly", ((0.6, -0.9), (1.4, -1.5), (1.4, -0.4))), ("poly", ((0.6, -0.9), (0.1, -1.7), (-0.1, -0.9)))],
    "crown": [("poly", ((-0.8, -0.75), (-0.8, -1.7), (-0.4, -1.2), (0, -1.8), (0.4, -1.2), (0.8, -1.7), (0.8, -0.75)))],
    "cape": [("poly", ((-0.7, 1.0), (-2.0, 3.7), (-1.2, 3.7))), ("poly", ((0.7, 1.0), (2.0, 3.7), (1.2, 3.7)))],
}


def _draw_body(draw: ImageDraw.ImageDraw, shape: str, cx: float, feet: float, s: float, colour) -> float:
    """Draw a body standing on feet; return the y of its neck."""
    bw, bh = (f * s for f in _BODY_SIZE.get(shape, (0.42, 0.52)))
    x0, y0, x1 = cx - bw / 2, feet - bh, cx + bw / 2
    style = {"fill": colour, "outline": INK, "width": 2}
    if shape in ("round", "pear"):
        draw.ellipse((x0, y0 + (0.35 * bh if shape == "pear" else 0), x1, feet), **style)
        if shape == "pear":
            draw.ellipse((cx - 0.3 * bw, y0, cx + 0.3 * bw, y0 + 0.55 * bh), **style)
    elif shape in _BODY_POLYGONS:
        draw.polygon(_BODY_POLYGONS[shape](cx, x0, x1, y0, feet), **style)
    else:
        draw.rounded_rectangle((x0, y0, x1, feet), int(0.12 * bw), **style)
    return y0


def _draw_accessory(draw: ImageDraw.ImageDraw, name: str, cx: float, hy: float, r: float, colour) -> None:
    """Draw an accessory from its primitives."""
    for kind, points in _ACCESSORIES[name]:
        xy = [(cx + dx * r, hy + dy * r) for dx, dy in points]
        if kind == "line":
            draw.line(xy, fill=INK, width=2)
        elif kind == "ring":
            draw.ellipse(xy, outline=colour, width=2)
        else:
            {"rect": draw.rectangle, "ellipse": draw.ellipse, "poly": draw.polygon}[kind](
                xy, fill=colour, outline=INK, width=2)


def _draw_character(draw: ImageDraw.ImageDraw, cid: str, cx: float, feet: float, s: float) -> tuple[float, float]:
    """Draw a cast member about s pixels tall standing at (cx, feet); return the top of its head."""
    look = CAST[cid]
    body, skin, extra = (tuple(c) for c in look["palette"])
    r = 0.16 * s
    hy = _draw_body(draw, look["body"], cx, feet, s, body) - 0.85 * r
    draw.ellipse((cx - r, hy - r, cx + r, hy + r), fill=skin, outline=INK, width=2)
    for dx in (-0.35 * r, 0.35 * r):
        draw.ellipse((cx + dx - 0.12 * r, hy - 0.22 * r, cx + dx + 0.12 * r, hy + 0.02 * r), fill=INK)
    _draw_accessory(draw, look["accessory"], cx, hy, r, extra)
    return cx, hy - r


def _ball(draw: ImageDraw.ImageDraw, panel: dict, stage: list, t: float, size: tuple[int, int], s: float) -> None:
    """The ball on its arc from the actor's hand to the partner's."""
    (ax, _), (bx, _) = stage[:2]
    side = 1 if bx >= ax else -1
    x0, x1, hand = ax + 0.25 * s * side, bx - 0.25 * s * side, 0.95 * size[1] - 0.3 * s
    y = hand - np.sin(np.pi * t) * 0.3 * size[1]
    _dot(draw, x0 + (x1 - x0) * t, y, 0.08 * s, COLOURS[panel["props"]["colour"]])


def _kite(draw: ImageDraw.ImageDraw, panel: dict, stage: list, t: float, size: tuple[int, int], s: float) -> None:
    """The kite climbing from the actor's hand into the sky on its string."""
    w, h = size
    hand = (stage[0][0] + 0.2 * s, 0.95 * h - 0.3 * s)
    kx = min(stage[0][0] + (0.1 + 0.35 * t) * w, 0.92 * w)
    ky, d = hand[1] - 0.1 * s - t * (hand[1] - 0.1 * s - 0.12 * h), 0.09 * s
    draw.line([hand, (kx, ky + d)], fill=INK, width=1)
    draw.polygon([(kx, ky - d), (kx + 0.7 * d, ky), (kx, ky + d), (kx - 0.7 * d, ky)],
                 fill=COLOURS[panel["props"]["colour"]], outline=INK, width=2)


def _lamp(draw: ImageDraw.ImageDraw, panel: dict, stage: list, t: float, size: tuple[int, int], s: float) -> None:
    """A street lamp between the two, dark until the last step, when it glows in its colour."""
    h = size[1]
    x, top, colour = (stage[0][0] + stage[1][0]) / 2, 0.95 * h - 0.95 * s, COLOURS[panel["props"]["colour"]]
    if t >= 1:
        draw.ellipse((x - 0.35 * s, top - 0.3 * s, x + 0.35 * s, top + 0.25 * s), fill=_tint(colour, 0.5))
    draw.line([(x, 0.95 * h), (x, top)], fill=INK, width=3)
    unlit = tuple(c // 2 for c in colour)  # the glass shows its colour, dimly, before it is switched on
    draw.rectangle((x - 0.08 * s, top - 0.12 * s, x + 0.08 * s, top), fill=colour if t >= 1 else unlit,
                   outline=INK, width=2)


def _parcel(draw: ImageDraw.ImageDraw, panel: dict, stage: list, t: float, size: tuple[int, int], s: float) -> None:
    """The parcel the approaching partner carries in front of them."""
    x, y, d = stage[1][0] - 0.3 * s, 0.95 * size[1] - 0.3 * s, 0.09 * s
    draw.rectangle((x - d, y - d, x + d, y + d), fill=COLOURS[panel["props"]["colour"]], outline=INK, width=2)


def _rain(draw: ImageDraw.ImageDraw, panel: dict, stage: list, t: float, size: tuple[int, int], s: float) -> None:
    """Raindrops thickening with each step; the actor's furled umbrella opens over both at the end."""
    w, h = size
    for fx, fy in _scatter(1 + round(45 * t), 0.3):
        draw.line([(fx * w, fy * h), (fx * w - 3, fy * h + 9)], fill=(70, 110, 200), width=2)
    (ax, top), (bx, _) = stage[:2]
    colour = COLOURS[panel["props"]["colour"]]
    if t < 1:
        x, feet = ax - 0.3 * s, 0.95 * h
        draw.polygon([(x, feet - 0.6 * s), (x + 0.05 * s, feet - 0.1 * s), (x - 0.05 * s, feet - 0.1 * s)],
                     fill=colour, outline=INK, width=2)
        return
    cx, r = (ax + bx) / 2, abs(bx - ax) / 2 + 0.25 * s
    draw.line([(cx, top - 0.1 * r), (cx, top + 0.35 * r)], fill=INK, width=2)
    draw.pieslice((cx - r, top - 0.45 * r, cx + r, top + 0.35 * r), 180, 360, fill=colour, outline=INK, width=2)


def _plant(draw: ImageDraw.ImageDraw, panel: dict, stage: list, t: float, size: tuple[int, int], s: float) -> None:
    """A stem growing from a pot between the two: leaves from mid-way, the flower at the last step."""
    x, base = (stage[0][0] + stage[1][0]) / 2, 0.95 * size[1]
    rim, top = base - 0.15 * s, base - (0.2 + 0.6 * t) * s
    draw.line([(x, rim), (x, top)], fill=(40, 140, 50), width=3)
    draw.polygon([(x - 0.12 * s, rim), (x + 0.12 * s, rim), (x + 0.08 * s, base), (x - 0.08 * s, base)],
                 fill=(170, 90, 50), outline=INK, width=2)
    if t >= 0.3:
        draw.ellipse((x, (rim + top) / 2 - 0.04 * s, x + 0.14 * s, (rim + top) / 2 + 0.04 * s), fill=(60, 170, 70))
    if t >= 1:
        _dot(draw, x, top, 0.09 * s, COLOURS[panel["props"]["colour"]])
        _dot(draw, x, top, 0.03 * s, (250, 220, 60))


_PROPS = {"ball_throw": _ball, "kite_rise": _kite, "nightfall": _lamp, "approach": _parcel, "rain_start": _rain,
          "plant_grow": _plant}


def _positions(panel: dict, t: float) -> list[float]:
    """Where actor, partner and bystander stand, as fractions of the panel width."""
    # A bystander stands aside, so the props between actor and partner stay in view.
    xs = [0.28, 0.72] if len(panel["characters"]) < 3 else [0.17, 0.55, 0.86]
    if panel["action"] == "approach":
        xs[1] = 0.92 - 0.5 * t
    return xs[:len(panel["characters"])]


def _caption_box(draw: ImageDraw.ImageDraw, text: str, top: int, w: int, font) -> int:
    """A narration box across the panel top; return its bottom."""
    rows, lh = _wrap(text, font, w - 18), _line_height(font)
    bottom = top + lh * len(rows) + 6
    draw.rectangle((4, top, w - 5, bottom), fill=(255, 236, 150), outline=INK, width=1)
    for i, row in enumerate(rows):
        draw.text((9, top + 3 + i * lh), row, font=font, fill=INK)
    return bottom


def _balloon(draw: ImageDraw.ImageDraw, text: str, slot: tuple[int, int, int], speaker: tuple[float, float],
             font) -> None:
    """An ellipse round the wrapped text, its tail pointing at the speaker's head."""
    x0, y0, x1 = slot
    rows, lh = _wrap(text, font, 0.68 * (x1 - x0)), _line_height(font)
    cx, bottom = (x0 + x1) / 2, y0 + 1.45 * lh * len(rows) + 8
    dy = max(speaker[1] - bottom, 1.0)
    reach = max(8.0, min(0.7 * dy, 4.0 * lh))  # aims at the head but stays a tail, however far the speaker
    tip = (cx + (speaker[0] - cx) * min(1.0, reach / dy), bottom + reach)
    draw.polygon([(cx - 7, bottom - 8), (cx + 7, bottom - 8), tip], fill=WHITE, outline=INK)
    draw.ellipse((x0, y0, x1, bottom), fill=WHITE, outline=INK, width=2)
    ty = (y0 + bottom - lh * len(rows)) / 2
    for i, row in enumerate(rows):
        draw.text((cx - font.getlength(row) / 2, ty + i * lh), row, font=font, fill=INK)


def _draw_lines(draw: ImageDraw.ImageDraw, lines: list[dict], stage: dict, w: int, rtl: bool, font) -> None:
    """Caption boxes across the top, then balloons side by side in reading order."""
    top = 4
    for line in lines:
        if line["kind"] == "caption":
            top = _caption_box(draw, line["text"], top, w, font)
    spoken = [line for line in lines if line["kind"] == "speech"]
    slots = _spans(4, w - 4, [1] * len(spoken), 6) if spoken else []
    for (x0, x1), line in zip(slots[::-1] if rtl else slots, spoken):
        _balloon(draw, line["text"], (x0, top + 4, x1), stage[line["speaker"]], font)


def _paint_story(panel: dict, size: tuple[int, int], rtl: bool, fs: int) -> Image.Image:
    """A narrative panel: backdrop, the action at its step, characters, birds, then captions and balloons."""
    img, draw = _canvas(size)
    w, h = size
    _backdrop(draw, panel["scene"], w, h)
    t = panel["action_step"] / (panel["action_steps"] - 1) if panel["action_steps"] > 1 else 1.0
    if panel["action"] == "nightfall":  # the light fades on the backdrop only; the cast stays visible
        img.paste((10, 12, 40), (0, 0, w, h), Image.new("L", size, int(170 * t)))
    s = min(0.45 * h, 0.4 * w)
    stage = [_draw_character(draw, cid, x * w, 0.95 * h, s)
             for cid, x in zip(panel["characters"], _positions(panel, t))]
    _PROPS[panel["action"]](draw, panel, stage, t, size, s)
    for i in range(panel["props"]["birds"]):
        x, y, d = (0.15 + 0.14 * i) * w, (0.38 + 0.04 * (i % 2)) * h, 0.025 * w
        draw.line([(x - d, y - d / 2), (x, y), (x + d, y - d / 2)], fill=INK, width=2)
    _draw_lines(draw, panel["lines"], dict(zip(panel["characters"], stage)), w, rtl, _font(fs))
    return img


def _centred(draw: ImageDraw.ImageDraw, text: str, y: float, w: int, font) -> float:
    """Text wrapped and centred from y down; return the y below it."""
    lh = _line_height(font)
    for row in _wrap(text, font, 0.86 * w):
        draw.text(((w - font.getlength(row)) / 2, y), row, font=font, fill=INK)
        y += lh
    return y


def _paint_cover(panel: dict, size: tuple[int, int], rtl: bool, fs: int) -> Image.Image:
    """A cover: the book's cast large in a scene, under a title box."""
    img, draw = _canvas(size)
    w, h = size
    _backdrop(draw, panel["scene"], w, h)
    n = len(panel["characters"])
    for i, cid in enumerate(panel["characters"]):
        _draw_character(draw, cid, (i + 1) / (n + 1) * w, 0.93 * h, min(0.4 * h, 1.3 * w / (n + 1)))
    font = _font(2 * fs)
    bottom = 0.05 * h + _line_height(font) * len(_wrap(panel["lines"][0]["text"], font, 0.86 * w)) + 16
    draw.rectangle((0.05 * w, 0.05 * h, 0.95 * w, bottom), fill=WHITE, outline=INK, width=3)
    _centred(draw, panel["lines"][0]["text"], 0.05 * h + 8, w, font)
    return img


def _paint_advert(panel: dict, size: tuple[int, int], rtl: bool, fs: int) -> Image.Image:
    """An advertisement: product name, the product, slogan and price on a loud background."""
    colour = COLOURS[panel["props"]["colour"]]
    img, draw = _canvas(size, _tint(colour, 0.6))
    w, h = size
    y = _centred(draw, panel["lines"][0]["text"], 0.06 * h, w, _font(round(2.4 * fs)))
    _centred(draw, panel["lines"][1]["text"], y + 10, w, _font(round(1.4 * fs)))
    _dot(draw, 0.5 * w, 0.5 * h, 0.22 * w, colour)
    _centred(draw, panel["lines"][2]["text"], 0.82 * h, w, _font(round(1.6 * fs)))
    return img


def _paint_prose(panel: dict, size: tuple[int, int], rtl: bool, fs: int) -> Image.Image:
    """A text page: paragraphs of prose."""
    img, draw = _canvas(size, (245, 238, 220))
    font, y = _font(fs), 0.05 * size[1]
    for line in panel["lines"]:
        for row in _wrap(line["text"], font, 0.9 * size[0]):
            draw.text((0.05 * size[0], y), row, font=font, fill=INK)
            y += _line_height(font)
        y += _line_height(font)
    return img


_PAINTERS = {"narrative": _paint_story, "cover": _paint_cover, "advertisement": _paint_advert, "text": _paint_prose}


def render_page(page: dict, book: dict) -> Image.Image:
    """Draw a planned page: paper, each panel painted on its own canvas (so nothing spills over), framed."""
    img = Image.new("RGB", book["size"], PAPER)
    draw = ImageDraw.Draw(img)
    fs = max(8, round(book["size"][0] / 46))
    for box, panel in zip(page["boxes"], page["panels"]):
        size = (box[2] - box[0], box[3] - box[1])
        img.paste(_PAINTERS[page["label"]](panel, size, page["reading_direction"] == "rtl", fs), box[:2])
        draw.rectangle((box[0], box[1], box[2] - 1, box[3] - 1), outline=INK, width=3)
    return img


# ------------------------------------------------------------------------------------------------- writing

_CONFUSIONS = dict(zip("olieasbngt", "01lco5hmqf"))


def ocr_noise(text: str, p: float, rng: np.random.Generator) -> str:
    """OCR-like damage: each character dropped (p/2) or swapped for a look-alike (p/2)."""
    if p <= 0:
        return text
    out = []
    for ch, r in zip(text, rng.random(len(text))):
        if r >= p:
            out.append(ch)
        elif r >= p / 2:
            out.append(_CONFUSIONS.get(ch.lower(), pick(rng, "aeinorst")))
    return "".join(out)


def to_bbox(box: Box, bbox_format: str) -> list[int]:
    """A box as written in page JSON: [x, y, w, h] or [x1, y1, x2, y2]."""
    x0, y0, x1, y1 = box
    return [x0, y0, x1, y1] if bbox_format == "xyxy" else [x0, y0, x1 - x0, y1 - y0]


def page_doc(page: dict, book: dict, bbox_format: str, noise: float, rng: np.random.Generator) -> dict:
    """The Stage 1 JSON of a page: boxes in reading order, texts as OCR would read them, descriptions."""
    if page["defect"] and page["defect"]["variant"] in ("cp1252", "odd_unicode"):
        noise = 0.0  # the defect needs its accented text intact
    panels = []
    for box, panel in zip(page["boxes"], page["panels"]):
        texts = [ocr_noise(line["text"], noise, rng) for line in panel["lines"]]
        panels.append({"bbox": to_bbox(box, bbox_format), "text": " ".join(texts),
                       "confidence": round(float(rng.uniform(0.8, 0.995)), 3), "text_boxes": texts,
                       "description": panel["caption"]})
    return {"image_width": book["size"][0], "image_height": book["size"][1], "panels": panels}


_BOX_DEFECTS = {
    "partly_outside": lambda b, w: (b[0], b[1], w + 40, b[3]),
    "wholly_outside": lambda b, w: (w + 20, b[1], w + 20 + b[2] - b[0], b[3]),
    "negative": lambda b, w: (-30, b[1], b[2], b[3]),
    "zero_area": lambda b, w: (b[0], b[1], b[0], b[3]),
}


def _odd(text: str) -> str:
    """Text as a careless pipeline leaves it: decomposed accents, bidi and zero-width marks, a control char."""
    # NFC plus dropping control (Cc) and format (Cf) characters gives the text back exactly.
    head, _, tail = unicodedata.normalize("NFD", text).partition(" ")
    return f"\u200f{head}\u200b \x07{tail}"


def _break_doc(doc: dict, page: dict, bbox_format: str) -> dict:
    """Apply a JSON-level defect to a page document."""
    if not page["defect"]:
        return doc
    variant, k = page["defect"]["variant"], page["defect"]["panel"]
    if variant in _BOX_DEFECTS:
        doc["panels"][k]["bbox"] = to_bbox(_BOX_DEFECTS[variant](page["boxes"][k], doc["image_width"]), bbox_format)
    elif variant == "panels_dict":
        doc["panels"] = {str(i): panel for i, panel in enumerate(doc["panels"])}
    elif variant == "panel_without_bbox":
        del doc["panels"][k]["bbox"]
    elif variant == "odd_unicode":
        doc["panels"][k]["text_boxes"] = [_odd(text) for text in doc["panels"][k]["text_boxes"]]
        doc["panels"][k]["text"] = " ".join(doc["panels"][k]["text_boxes"])
    return doc


def _break_image(img: Image.Image, variant: str | None) -> Image.Image:
    """Apply an image-level defect: another mode, or a decompression-bomb-sized blank."""
    if variant in ("L", "CMYK"):
        return img.convert(variant)
    if variant == "RGBA":  # transparent margins, so that dropping alpha and compositing it give different paper
        alpha = Image.new("L", img.size, 0)
        alpha.paste(255, page_area(img.size)[0])
        rgba = img.convert("RGBA")
        rgba.putalpha(alpha)
        return rgba
    if variant == "I;16":
        return Image.fromarray(np.asarray(img.convert("L"), dtype=np.uint16) * 257)
    if variant == "bomb":  # 1 bit a pixel and all white: 12 MB in memory, a few kB as PNG
        return Image.new("1", (BOMB_SIDE, BOMB_SIDE), 1)
    return img


def _break_files(files: dict[str, bytes], variant: str | None, image: str, doc: str, rng: np.random.Generator) -> None:
    """Apply a file-level defect: garbage, truncation, a missing file or a second file with the same stem."""
    if variant == "garbage":  # SOI + JFIF APP0 (20 bytes) stay; the rest never contains a 0xFF marker byte
        data = files[image]
        files[image] = data[:20] + rng.integers(0, 255, len(data) - 20, dtype=np.uint8).tobytes()
    elif variant == "cut":
        files[image] = files[image][:len(files[image]) // 2]
    elif variant == "invalid_json":
        files[doc] = files[doc][:len(files[doc]) // 2]
    elif variant in ("missing_json", "missing_image"):
        del files[doc if variant == "missing_json" else image]
    elif variant == "second_image":  # the same bytes, so the page reads the same whichever file is taken
        files[image.replace(".jpg", ".jpeg")] = files[image]
    elif variant == "second_json":  # only the suffix's case differs: a case-insensitive file system keeps one
        files[doc.replace(".json", ".JSON")] = files[doc]


def _encode(img: Image.Image, fmt: str) -> bytes:
    """Image bytes: JPEG at quality 85, or PNG."""
    buf = io.BytesIO()
    img.save(buf, "JPEG", quality=85) if fmt == "jpg" else img.save(buf, "PNG")
    return buf.getvalue()


def page_files(name: str, page: dict, book: dict, bbox_format: str, noise: float,
               rng: np.random.Generator) -> dict[str, bytes]:
    """The files of one page with its defect applied, as {file name: bytes}."""
    variant = page["defect"]["variant"] if page["defect"] else None
    image, doc = f"{name}.{page['format']}", f"{name}.json"
    text = json.dumps(_break_doc(page_doc(page, book, bbox_format, noise, rng), page, bbox_format),
                      ensure_ascii=False)
    files = {image: _encode(_break_image(render_page(page, book), variant), page["format"]),
             doc: text.encode("cp1252" if variant == "cp1252" else "utf-8")}
    _break_files(files, variant, image, doc, rng)
    return files


_PAGE_TRUTH = ("label", "layout", "reading_direction", "naive_order_correct", "scene")
_PANEL_TRUTH = ("characters", "scene", "action", "action_step", "action_steps", "caption", "lines")


def ground_truth(plan: dict, bbox_format: str) -> dict:
    """The sidecar (docs/corpus.md section 3): the plan without its drawing details."""
    books = {b: {"direction": book["direction"], "pages": {
        p: {**{k: page[k] for k in _PAGE_TRUTH}, "panels": [
            {"reading_position": i, **{k: panel[k] for k in _PANEL_TRUTH}} for i, panel in enumerate(page["panels"])]}
        for p, page in book["pages"].items()}} for b, book in plan["books"].items()}
    return {"seed": plan["seed"], "version": VERSION, "bbox_format": bbox_format, "characters": CAST,
            "books": books, "dirty": plan["dirty"]}


def _prepare(out: Path, overwrite: bool) -> None:
    """Make out ready: refuse a non-empty folder unless overwrite, then clear only a previous corpus there."""
    # Only book_* folders and the two corpus JSON files are removed, so a mistaken --out loses nothing else.
    if out.exists() and any(out.iterdir()):
        if not overwrite:
            raise FileExistsError(f"{out} is not empty; pass overwrite=True (--overwrite) to replace the corpus there")
        for entry in out.iterdir():
            if entry.is_dir() and entry.name.startswith("book_"):
                shutil.rmtree(entry)
            elif entry.name in ("pss_labels.json", "ground_truth.json"):
                entry.unlink()
    out.mkdir(parents=True, exist_ok=True)


def _check(books: int, pages: int, bbox_format: str, rtl_fraction: float, ocr_noise: float, max_panels: int) -> None:
    """Reject arguments the generator cannot honour, before anything is written."""
    if bbox_format not in ("xywh", "xyxy"):
        raise ValueError(f"bbox_format must be 'xywh' or 'xyxy', not {bbox_format!r}")
    if books < 1 or pages < 1:
        raise ValueError("books and pages must be at least 1")
    if not (0 <= rtl_fraction <= 1 and 0 <= ocr_noise <= 1):
        raise ValueError("rtl_fraction and ocr_noise are fractions between 0 and 1")
    if max_panels < 4:
        raise ValueError("max_panels must be at least 4 (the smallest grid)")


def _summary(plan: dict, out: Path, seconds: float) -> dict:
    """Counts of what was written."""
    pages = [page for book in plan["books"].values() for page in book["pages"].values()]
    story = [page for page in pages if page["label"] == "narrative"]
    panels = [panel for page in story for panel in page["panels"]]
    return {"out": str(out), "books": len(plan["books"]), "pages": len(pages), "narrative_pages": len(story),
            "panels": len(panels), "text_panels": sum(bool(panel["lines"]) for panel in panels),
            "dirty": len(plan["dirty"]), "seconds": round(seconds, 2)}


def _write_json(path: Path, obj) -> None:
    """UTF-8 JSON, indented for people."""
    path.write_text(json.dumps(obj, ensure_ascii=False, indent=1), encoding="utf-8")


def generate(out: str | Path, books: int = 12, pages: int = 10, seed: int = 0, dirty: bool = False, *,
             page_size: tuple[int, int] = (640, 960), bbox_format: str = "xywh", rtl_fraction: float = 0.2,
             ocr_noise: float = 0.0, max_panels: int = 12, overwrite: bool = False) -> dict:
    """Write a corpus of books x pages to out (docs/corpus.md) and return a summary of what was written."""
    start, out = time.perf_counter(), Path(out)
    _check(books, pages, bbox_format, rtl_fraction, ocr_noise, max_panels)
    plan = plan_corpus(books, pages, seed, dirty, page_size=page_size, rtl_fraction=rtl_fraction,
                       max_panels=max_panels)
    _prepare(out, overwrite)
    for b, (book_id, book) in enumerate(plan["books"].items()):
        (out / book_id).mkdir()
        for p, (name, page) in enumerate(book["pages"].items()):
            rng = np.random.default_rng([seed, _PAGE, b, p])
            for file_name, data in page_files(name, page, book, bbox_format, ocr_noise, rng).items():
                (out / book_id / file_name).write_bytes(data)
    _write_json(out / "pss_labels.json", plan["labels"])
    _write_json(out / "ground_truth.json", ground_truth(plan, bbox_format))
    return _summary(plan, out, time.perf_counter() - start)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The options of `python -m comicnb synth`."""
    parser.add_argument("--out", required=True, help="folder to write the corpus into")
    parser.add_argument("--books", type=int, default=12, help="number of books")
    parser.add_argument("--pages", type=int, default=10, help="pages per book, cover included")
    parser.add_argument("--seed", type=int, default=0, help="same seed, same bytes")
    parser.add_argument("--dirty", action="store_true", help="inject one page of each class of bad input")
    parser.add_argument("--bbox-format", choices=("xywh", "xyxy"), default="xywh", help="box form in page JSON")
    parser.add_argument("--rtl-fraction", type=float, default=0.2, help="share of right-to-left books")
    parser.add_argument("--ocr-noise", type=float, default=0.0,
                        help="per-character drop/substitution probability in the JSON text")
    parser.add_argument("--max-panels", type=int, default=12, help="most panels on a clean page")
    parser.add_argument("--page-size", type=int, nargs=2, default=(640, 960), metavar=("W", "H"),
                        help="nominal page size in pixels (each book varies it by a few percent)")
    parser.add_argument("--overwrite", action="store_true", help="replace a corpus already in --out")


def main(args: argparse.Namespace) -> int:
    """Run `synth` from parsed arguments and print the summary; 2 on a refused output folder or argument."""
    try:
        s = generate(args.out, args.books, args.pages, args.seed, args.dirty, page_size=tuple(args.page_size),
                     bbox_format=args.bbox_format, rtl_fraction=args.rtl_fraction, ocr_noise=args.ocr_noise,
                     max_panels=args.max_panels, overwrite=args.overwrite)
    except (FileExistsError, ValueError) as err:
        print(f"synth: {err}", file=sys.stderr)
        return 2
    print(f"wrote {s['books']} books, {s['pages']} pages ({s['narrative_pages']} narrative, {s['panels']} panels, "
          f"{s['text_panels']} with text, {s['dirty']} injected defects) to {s['out']} in {s['seconds']} s")
    return 0


def panel_truth(data_root: str | Path, metadata: list[dict] | pd.DataFrame) -> pd.DataFrame:
    """The sidecar's truth for each stored panel (one row per panel id of the store's metadata records).

    Columns: panel_id, page_index, book_id, page_name, characters (ids), character (the first one's name, or
    "none"), scene, caption. Only a synthetic corpus has a sidecar; for others this raises FileNotFoundError.
    """
    truth = json.loads((Path(data_root) / "ground_truth.json").read_text(encoding="utf-8"))
    names = {cid: c["name"] for cid, c in truth["characters"].items()}
    records = metadata.to_dict("records") if isinstance(metadata, pd.DataFrame) else metadata
    rows = []
    for page in records:
        panels = truth["books"][page["book_id"]]["pages"][page["page_name"]]["panels"]
        for panel_id, index in zip(page["embedding_indices"], page["panel_index"], strict=True):
            panel = panels[index]
            rows.append(dict(panel_id=panel_id, page_index=page["page_index"], book_id=page["book_id"],
                             page_name=page["page_name"], characters=panel["characters"],
                             character=names[panel["characters"][0]] if panel["characters"] else "none",
                             scene=panel["scene"], caption=panel["caption"]))
    return pd.DataFrame(rows)


if __name__ == "__main__":
    _parser = argparse.ArgumentParser(prog="python -m comicnb.synth", description=__doc__.splitlines()[0])
    add_arguments(_parser)
    sys.exit(main(_parser.parse_args()))

