"""Panel boxes from a page image by classical computer vision: the ink that is not paper, its connected regions, and
the gutters between them. No weights, no training.

1. The paper colour is the median colour of the page's outer ring of pixels; ink is every pixel far from it.
2. The ink is closed (small gaps in frames and hatching joined). A region whose box is smaller than ``min_area`` of
   the page (a page number, a stray mark, a caption between panels) is not a panel.
3. The page is cut along its gutters, recursively (an XY cut); two panels joined by a balloon or a drawing that
   crosses their gutter are still cut apart. A gutter is a band of rows (or columns) of at least ``min_gutter`` of
   the page, nearly empty of ink (at most ``gutter_ink`` of the band's length) and empty at both of its ends, so a
   framed panel (whose frame crosses every band) is never cut; and a cut is made only where both sides are at
   least ``min_side`` of the page across, so the ground under a frameless drawing stays with it. Each part is cut
   again, the wider gutters first.
4. In each cell of the page (a part that no gutter divides) the large connected regions are settled: a cell with no
   framed region (three edges of its box ink on ``frame_cover`` of their length) is one frameless panel, drawn in
   pieces; otherwise each framed region is a panel, one inside another is an inset, an unframed region inside a
   framed box is part of its drawing, and other unframed regions are panels of their own.

What it does not handle: panels that are not separated by paper (art running across the whole page with no
gutter), slanted gutters (the box of a slanted panel covers its neighbours' corners), and pages whose outer ring is
not paper on most of its length (a full-bleed page is one panel).
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

Box = tuple[int, int, int, int]  # x1, y1, x2, y2 in page pixels, x2 and y2 exclusive


@dataclass(frozen=True)
class PanelSettings:
    """The detector's knobs, as fractions of the page so that they do not depend on its resolution."""

    work_side: int = 1200  # the page is read at most this many pixels on its longer side
    ink: int = 40  # a pixel is ink when a channel differs from the paper by more than this (0-255)
    min_area: float = 0.01  # a panel's box covers at least this share of the page
    min_gutter: float = 0.006  # a gutter is at least this share of the page's shorter side
    gutter_ink: float = 0.2  # a gutter band holds at most this share of ink along its length
    min_side: float = 0.08  # a cut leaves panels at least this share of the page's shorter side across
    frame_cover: float = 0.85  # an inset's box edge is ink on at least this share of its length
    merge_overlap: float = 0.3  # two unframed regions sharing this share of the smaller box are one panel


def paper_colour(rgb: np.ndarray) -> np.ndarray:
    """The median colour of the page's outer ring (2 % of the shorter side wide, at least one pixel)."""
    h, w = rgb.shape[:2]
    r = max(1, int(round(0.02 * min(h, w))))
    ring = np.concatenate(
        [rgb[:r].reshape(-1, 3), rgb[-r:].reshape(-1, 3), rgb[:, :r].reshape(-1, 3), rgb[:, -r:].reshape(-1, 3)]
    )
    return np.median(ring, axis=0)


def ink_mask(rgb: np.ndarray, settings: PanelSettings = PanelSettings()) -> np.ndarray:
    """Boolean mask of the pixels far from the paper colour."""
    diff = np.abs(rgb.astype(np.int16) - paper_colour(rgb).astype(np.int16)).max(axis=2)
    return diff > settings.ink


def detect_panels(rgb: np.ndarray, settings: PanelSettings = PanelSettings()) -> list[Box]:
    """The panel boxes of one page (RGB array, height x width x 3), in no particular order; [] when none is found."""
    h, w = rgb.shape[:2]
    scale = min(1.0, settings.work_side / max(h, w))
    small = cv2.resize(rgb, (max(1, round(w * scale)), max(1, round(h * scale))), interpolation=cv2.INTER_AREA)
    mask = ink_mask(small, settings)
    k = max(3, int(round(0.004 * max(small.shape[:2]))) | 1)
    closed = cv2.morphologyEx(mask.astype(np.uint8), cv2.MORPH_CLOSE, np.ones((k, k), np.uint8))
    sh, sw = closed.shape
    page_area = sh * sw
    gutter = max(2, int(round(settings.min_gutter * min(sh, sw))))
    least = max(3 * gutter, int(round(settings.min_side * min(sh, sw))))
    boxes: list[Box] = []
    for x1, y1, x2, y2 in _cut(closed.astype(bool), gutter, least, settings):
        cell = closed[y1:y2, x1:x2]
        count, _, stats, _ = cv2.connectedComponentsWithStats(cell, connectivity=8)
        regions = [
            (x1 + x, y1 + y, x1 + x + bw, y1 + y + bh)
            for x, y, bw, bh, _ in stats[1:count]
            if bw * bh >= settings.min_area * page_area
        ]
        boxes += _settle(regions, closed.astype(bool), settings)
    return [
        (
            int(np.floor(a / scale)),
            int(np.floor(b / scale)),
            min(w, int(np.ceil(c / scale))),
            min(h, int(np.ceil(d / scale))),
        )
        for a, b, c, d in boxes
    ]


def _area(box: Box) -> int:
    return max(0, box[2] - box[0]) * max(0, box[3] - box[1])


def _trim(mask: np.ndarray) -> Box | None:
    """The box of a mask's ink, or None when it has none."""
    rows, cols = np.flatnonzero(mask.any(axis=1)), np.flatnonzero(mask.any(axis=0))
    if not len(rows):
        return None
    return int(cols[0]), int(rows[0]), int(cols[-1]) + 1, int(rows[-1]) + 1


def _cut(mask: np.ndarray, gutter: int, least: int, settings: PanelSettings, depth: int = 0) -> list[Box]:
    """A region's mask cut along its gutters into the boxes of its panels (relative to the mask).

    A cut is made only where both sides keep at least ``least`` pixels across the cut: a strip thinner than that
    (the ground under a frameless drawing, a row of hatching) is part of its panel, not a panel.
    """
    box = _trim(mask)
    if box is None:
        return []
    x1, y1, x2, y2 = box
    mask = mask[y1:y2, x1:x2]
    bands = [
        (hi - lo, axis, lo, hi)
        for axis in (0, 1)  # 0: a horizontal gutter (a band of rows), 1: a vertical one
        for lo, hi in _gutters(mask if axis == 0 else mask.T, gutter, settings)
    ]
    for _, axis, lo, hi in sorted(bands, reverse=True):
        first, second = (mask[:lo], mask[hi:]) if axis == 0 else (mask[:, :lo], mask[:, hi:])
        parts = [_trim(first), _trim(second)]
        if depth > 12 or any(p is None or p[3 - axis] - p[1 - axis] < least for p in parts):
            continue
        shift = (0, hi) if axis == 0 else (hi, 0)
        out = [(a + x1, b + y1, c + x1, d + y1) for a, b, c, d in _cut(first, gutter, least, settings, depth + 1)]
        out += [
            (a + x1 + shift[0], b + y1 + shift[1], c + x1 + shift[0], d + y1 + shift[1])
            for a, b, c, d in _cut(second, gutter, least, settings, depth + 1)
        ]
        return out
    return [box]


def _gutters(mask: np.ndarray, gutter: int, settings: PanelSettings) -> list[tuple[int, int]]:
    """The bands of rows that are gutters: ``gutter`` rows or more, little ink, none at their two ends."""
    h, w = mask.shape
    if h < 3 * gutter or w < 3 * gutter:
        return []
    end = max(1, int(round(0.03 * w)))
    quiet = (mask.sum(axis=1) <= settings.gutter_ink * w) & ~mask[:, :end].any(axis=1) & ~mask[:, -end:].any(axis=1)
    bands, start = [], None
    for row in range(h + 1):
        if row < h and quiet[row]:
            start = row if start is None else start
            continue
        if start is not None:
            if start > 0 and row < h and row - start >= gutter:
                bands.append((start, row))
            start = None
    return bands


def _framed(box: Box, mask: np.ndarray, settings: PanelSettings) -> bool:
    """Whether three of the box's four edges are ink on most of their length (a drawn frame; a balloon or a figure
    breaking out of one side leaves the other three)."""
    x1, y1, x2, y2 = box
    edges = [mask[y1, x1:x2], mask[y2 - 1, x1:x2], mask[y1:y2, x1], mask[y1:y2, x2 - 1]]
    return sum(e.mean() >= settings.frame_cover for e in edges) >= 3


def _settle(regions: list[Box], mask: np.ndarray, settings: PanelSettings) -> list[Box]:
    """The panels of one cell of the page (a part no straight gutter divides) from its large connected regions.

    Without any framed region, the cell is one frameless panel drawn in pieces: the box around them all. Otherwise
    every framed region is a panel (one inside another is an inset), an unframed region inside a framed box is part
    of its drawing, and the other unframed regions are panels, merged where their boxes overlap much.
    """
    if not regions:
        return []
    framed = {box: _framed(box, mask, settings) for box in regions}
    if not any(framed.values()):
        return [
            (
                min(b[0] for b in regions),
                min(b[1] for b in regions),
                max(b[2] for b in regions),
                max(b[3] for b in regions),
            )
        ]
    kept: list[Box] = []
    for box in sorted(regions, key=_area, reverse=True):
        merged = False
        for i, other in enumerate(kept):
            inter = _intersection(box, other)
            if inter == 0:
                continue
            if inter >= 0.9 * _area(box):  # inside the other's box
                merged = not framed[box]  # a piece of the drawing around it, or else an inset
                break
            if not framed[box] and inter >= settings.merge_overlap * _area(box):
                kept[i] = (min(box[0], other[0]), min(box[1], other[1]), max(box[2], other[2]), max(box[3], other[3]))
                merged = True
                break
        if not merged:
            kept.append(box)
    return kept


def _intersection(a: Box, b: Box) -> int:
    return _area((max(a[0], b[0]), max(a[1], b[1]), min(a[2], b[2]), min(a[3], b[3])))
