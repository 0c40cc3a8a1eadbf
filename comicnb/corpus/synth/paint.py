"""Painting pages: text and balloons, each kind of panel on its own canvas, and the framed page.

A page is painted with its text or as its *text-free twin*: the same drawing with every balloon, caption box and
title box still there but empty (advertisement and prose text simply left out). The twin is the same drawing calls
minus the text calls, so the two images differ only where text was drawn.
"""

from __future__ import annotations

import unicodedata
from dataclasses import dataclass, field
from functools import cache

from PIL import Image, ImageDraw, ImageFont

from comicnb.corpus.synth.actors import PROPS, draw_character, positions
from comicnb.corpus.synth.layouts import spans
from comicnb.corpus.synth.primitives import INK, PAPER, WHITE, dot, tint
from comicnb.corpus.synth.scenery import backdrop
from comicnb.corpus.synth.story import COLOURS


@cache
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


Area = tuple[float, float, float, float]  # x0, y0, x1, y1


@dataclass
class _Pen:
    """What a painter writes: whether it draws text, the areas that hold text, and the box of each of the panel's
    lines (its balloon, caption or title box and its rows, joined) by line number (all in panel canvas pixels)."""

    text: bool = True
    areas: list[Area] = field(default_factory=list)
    line: int | None = None  # the line being drawn: what ``note`` adds to
    line_boxes: dict[int, Area] = field(default_factory=dict)

    def note(self, area: Area) -> None:
        """An area that holds text, part of the current line's box."""
        self.areas.append(area)
        if self.line is not None:
            old = self.line_boxes.get(self.line, area)
            self.line_boxes[self.line] = (
                min(old[0], area[0]),
                min(old[1], area[1]),
                max(old[2], area[2]),
                max(old[3], area[3]),
            )

    def write(self, draw: ImageDraw.ImageDraw, xy: tuple[float, float], row: str, font) -> None:
        """Draw one row of text, unless this is the text-free twin; its extent is a text area either way."""
        # The row's own extent counts as well as its box: a word wider than its balloon is drawn past the edge.
        self.note(draw.textbbox(xy, row, font=font))
        if self.text:
            draw.text(xy, row, font=font, fill=INK)


def _canvas(size: tuple[int, int], fill=PAPER) -> tuple[Image.Image, ImageDraw.ImageDraw]:
    """A blank panel canvas and its drawing context."""
    img = Image.new("RGB", size, fill)
    return img, ImageDraw.Draw(img)


def _caption_box(draw: ImageDraw.ImageDraw, text: str, top: int, w: int, font, pen: _Pen) -> int:
    """A narration box across the panel top; return its bottom."""
    rows, lh = _wrap(text, font, w - 18), _line_height(font)
    bottom = top + lh * len(rows) + 6
    draw.rectangle((4, top, w - 5, bottom), fill=(255, 236, 150), outline=INK, width=1)
    pen.note((4, top, w - 4, bottom + 1))
    for i, row in enumerate(rows):
        pen.write(draw, (9, top + 3 + i * lh), row, font)
    return bottom


def _balloon(
    draw: ImageDraw.ImageDraw, text: str, slot: tuple[int, int, int], speaker: tuple[float, float], font, pen: _Pen
) -> None:
    """An ellipse round the wrapped text, its tail pointing at the speaker's head."""
    x0, y0, x1 = slot
    rows, lh = _wrap(text, font, 0.68 * (x1 - x0)), _line_height(font)
    cx, bottom = (x0 + x1) / 2, y0 + 1.45 * lh * len(rows) + 8
    dy = max(speaker[1] - bottom, 1.0)
    reach = max(8.0, min(0.7 * dy, 4.0 * lh))  # aims at the head but stays a tail, however far the speaker
    tip = (cx + (speaker[0] - cx) * min(1.0, reach / dy), bottom + reach)
    draw.polygon([(cx - 7, bottom - 8), (cx + 7, bottom - 8), tip], fill=WHITE, outline=INK)
    draw.ellipse((x0, y0, x1, bottom), fill=WHITE, outline=INK, width=2)
    pen.note((x0, y0, x1 + 1, bottom + 1))
    ty = (y0 + bottom - lh * len(rows)) / 2
    for i, row in enumerate(rows):
        pen.write(draw, (cx - font.getlength(row) / 2, ty + i * lh), row, font)


def _draw_lines(draw: ImageDraw.ImageDraw, lines: list[dict], stage: dict, w: int, rtl: bool, font, pen: _Pen) -> None:
    """Caption boxes across the top, then balloons side by side in reading order."""
    top = 4
    for i, line in enumerate(lines):
        if line["kind"] == "caption":
            pen.line = i
            top = _caption_box(draw, line["text"], top, w, font, pen)
    spoken = [(i, line) for i, line in enumerate(lines) if line["kind"] == "speech"]
    slots = spans(4, w - 4, [1] * len(spoken), 6) if spoken else []
    for (x0, x1), (i, line) in zip(slots[::-1] if rtl else slots, spoken):
        pen.line = i
        _balloon(draw, line["text"], (x0, top + 4, x1), stage[line["speaker"]], font, pen)


def _paint_story(panel: dict, size: tuple[int, int], rtl: bool, fs: int, pen: _Pen) -> Image.Image:
    """A narrative panel: backdrop, the action at its step, characters, birds, then captions and balloons."""
    img, draw = _canvas(size)
    w, h = size
    backdrop(draw, panel["scene"], w, h)
    t = panel["action_step"] / (panel["action_steps"] - 1) if panel["action_steps"] > 1 else 1.0
    if panel["action"] == "nightfall":  # the light fades on the backdrop only; the cast stays visible
        img.paste((10, 12, 40), (0, 0, w, h), Image.new("L", size, int(170 * t)))
    s = min(0.45 * h, 0.4 * w)
    stage = [draw_character(draw, cid, x * w, 0.95 * h, s) for cid, x in zip(panel["characters"], positions(panel, t))]
    PROPS[panel["action"]](draw, panel, stage, t, size, s)
    for i in range(panel["props"]["birds"]):
        x, y, d = (0.15 + 0.14 * i) * w, (0.38 + 0.04 * (i % 2)) * h, 0.025 * w
        draw.line([(x - d, y - d / 2), (x, y), (x + d, y - d / 2)], fill=INK, width=2)
    _draw_lines(draw, panel["lines"], dict(zip(panel["characters"], stage)), w, rtl, _font(fs), pen)
    return img


def _centred(draw: ImageDraw.ImageDraw, text: str, y: float, w: int, font, pen: _Pen) -> float:
    """Text wrapped and centred from y down; return the y below it."""
    lh = _line_height(font)
    for row in _wrap(text, font, 0.86 * w):
        pen.write(draw, ((w - font.getlength(row)) / 2, y), row, font)
        y += lh
    return y


def _paint_cover(panel: dict, size: tuple[int, int], rtl: bool, fs: int, pen: _Pen) -> Image.Image:
    """A cover: the book's cast large in a scene, under a title box."""
    img, draw = _canvas(size)
    w, h = size
    backdrop(draw, panel["scene"], w, h)
    n = len(panel["characters"])
    for i, cid in enumerate(panel["characters"]):
        draw_character(draw, cid, (i + 1) / (n + 1) * w, 0.93 * h, min(0.4 * h, 1.3 * w / (n + 1)))
    font = _font(2 * fs)
    bottom = 0.05 * h + _line_height(font) * len(_wrap(panel["lines"][0]["text"], font, 0.86 * w)) + 16
    draw.rectangle((0.05 * w, 0.05 * h, 0.95 * w, bottom), fill=WHITE, outline=INK, width=3)
    pen.line = 0
    pen.note((0.05 * w, 0.05 * h, 0.95 * w + 1, bottom + 1))
    _centred(draw, panel["lines"][0]["text"], 0.05 * h + 8, w, font, pen)
    return img


def _paint_advert(panel: dict, size: tuple[int, int], rtl: bool, fs: int, pen: _Pen) -> Image.Image:
    """An advertisement: product name, the product, slogan and price on a loud background."""
    colour = COLOURS[panel["props"]["colour"]]
    img, draw = _canvas(size, tint(colour, 0.6))
    w, h = size
    pen.line = 0
    y = _centred(draw, panel["lines"][0]["text"], 0.06 * h, w, _font(round(2.4 * fs)), pen)
    pen.line = 1
    _centred(draw, panel["lines"][1]["text"], y + 10, w, _font(round(1.4 * fs)), pen)
    dot(draw, 0.5 * w, 0.5 * h, 0.22 * w, colour)
    pen.line = 2
    _centred(draw, panel["lines"][2]["text"], 0.82 * h, w, _font(round(1.6 * fs)), pen)
    return img


def _paint_prose(panel: dict, size: tuple[int, int], rtl: bool, fs: int, pen: _Pen) -> Image.Image:
    """A text page: paragraphs of prose."""
    img, draw = _canvas(size, (245, 238, 220))
    font, y = _font(fs), 0.05 * size[1]
    for i, line in enumerate(panel["lines"]):
        pen.line = i
        for row in _wrap(line["text"], font, 0.9 * size[0]):
            pen.write(draw, (0.05 * size[0], y), row, font)
            y += _line_height(font)
        y += _line_height(font)
    return img


_PAINTERS = {"narrative": _paint_story, "cover": _paint_cover, "advertisement": _paint_advert, "text": _paint_prose}


def render_page(
    page: dict,
    book: dict,
    *,
    text: bool = True,
    areas: list[Area] | None = None,
    line_boxes: list[list[Area | None]] | None = None,
) -> Image.Image:
    """Draw a planned page: paper, each panel painted on its own canvas (so nothing spills over), framed.

    text=False draws the page's text-free twin (balloons, caption and title boxes empty). areas, when given, is
    filled with the page-pixel rectangles (x0, y0, x1, y1; x1, y1 exclusive) that hold text: balloons, caption and
    title boxes, and the extent of each row of text (a word wider than its balloon is drawn past its edge); outside
    them the page and its twin are the same pixels. line_boxes, when given, is filled with one list per panel of
    one page-pixel rectangle per line of the panel (its balloon, caption or title box with its rows; None for a line
    that drew nothing): the text boxes' boxes of the page JSON.
    """
    img = Image.new("RGB", book["size"], PAPER)
    draw = ImageDraw.Draw(img)
    fs = max(8, round(book["size"][0] / 46))
    for box, panel in zip(page["boxes"], page["panels"]):
        size, pen = (box[2] - box[0], box[3] - box[1]), _Pen(text)
        img.paste(_PAINTERS[page["label"]](panel, size, page["reading_direction"] == "rtl", fs, pen), box[:2])
        draw.rectangle((box[0], box[1], box[2] - 1, box[3] - 1), outline=INK, width=3)
        if areas is not None:  # canvas to page pixels, cut to the panel: the canvas crops whatever lies outside it
            areas += [_on_page(area, box) for area in pen.areas]
        if line_boxes is not None:
            found = pen.line_boxes
            line_boxes.append([_on_page(found[i], box) if i in found else None for i in range(len(panel["lines"]))])
    return img


def _on_page(area: Area, box: tuple[int, int, int, int]) -> Area:
    """A canvas rectangle in page pixels, clipped to the panel's box."""
    x0, y0, x1, y1 = area
    return (
        min(max(x0 + box[0], box[0]), box[2]),
        min(max(y0 + box[1], box[1]), box[3]),
        min(max(x1 + box[0], box[0]), box[2]),
        min(max(y1 + box[1], box[1]), box[3]),
    )
