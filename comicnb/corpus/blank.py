"""Blanking a page's text: its words painted over with the colour of the balloon around them, as COMICS blanks the
text boxes of the panel it asks about. Where a corpus has no text-free twin of a page, this makes one from the page
and its text boxes (the page JSON's ``text_box_bboxes``, kept as the pages table's ``text_box_boxes``).

Within each text box, the balloon's colour is the median of its lighter half of pixels (a balloon holds more paper
than ink). The words are the pixels far from that colour that form shapes *not touching the box's edge*: a balloon's
outline, its tail, a caption's frame and whatever art shows in the box's corners all reach the edge and are kept, so
only the glyphs are painted over (with a pixel of margin for their anti-aliased rims). Pixels outside every text box
are never changed.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import numpy as np
from PIL import Image
from scipy import ndimage

INK_DISTANCE = 90  # a pixel this far (max over RGB) from the balloon's colour is ink
GROW = 1  # pixels of margin painted round each glyph (its anti-aliased rim)


def page_text_boxes(
    boxes: Sequence[Sequence[float]], text_box_boxes: Sequence[Sequence[Sequence[float]] | None]
) -> list[list[float]]:
    """Every text box of a page in page pixels [x1, y1, x2, y2], from its panels' boxes and each panel's text boxes
    as fractions of the panel (the pages table's ``boxes`` and ``text_box_boxes``; a panel with None has none)."""
    out = []
    for (x1, y1, x2, y2), places in zip(boxes, text_box_boxes, strict=True):
        for a, b, c, d in places or ():
            out.append([x1 + a * (x2 - x1), y1 + b * (y2 - y1), x1 + c * (x2 - x1), y1 + d * (y2 - y1)])
    return out


def blank_text_boxes(
    image: Image.Image, boxes: Iterable[Sequence[float]], ink: int = INK_DISTANCE, grow: int = GROW
) -> Image.Image:
    """An RGB copy of ``image`` with the words inside each text box (page pixels [x1, y1, x2, y2], cut to the image;
    boxes with no area are passed over) painted in the box's balloon colour (see the module)."""
    pixels = np.array(image.convert("RGB"))
    height, width = pixels.shape[:2]
    for x1, y1, x2, y2 in boxes:
        left, top = max(0, int(x1)), max(0, int(y1))
        right, bottom = min(width, int(np.ceil(x2))), min(height, int(np.ceil(y2)))
        if right - left < 3 or bottom - top < 3:
            continue
        _blank_region(pixels[top:bottom, left:right], ink, grow)
    return Image.fromarray(pixels)


def _blank_region(region: np.ndarray, ink: int, grow: int) -> None:
    """Paint the glyphs of one text box (an (h, w, 3) view into the page) in its balloon colour, in place."""
    grey = region.mean(axis=2)
    paper = np.median(region[grey >= np.median(grey)], axis=0)
    dark = np.abs(region.astype(np.int16) - paper.astype(np.int16)).max(axis=2) > ink
    labels, count = ndimage.label(dark)
    if count == 0:
        return
    touching = np.unique(np.concatenate([labels[0], labels[-1], labels[:, 0], labels[:, -1]]))
    glyphs = np.isin(labels, np.setdiff1d(np.arange(1, count + 1), touching))
    if grow > 0:
        glyphs = ndimage.binary_dilation(glyphs, iterations=grow)
    region[glyphs] = np.round(paper).astype(np.uint8)
