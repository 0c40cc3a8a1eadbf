"""Page geometry: margins, the panel layouts, right-to-left mirroring, the naive reading order, bbox formats."""

from __future__ import annotations

from functools import partial

import numpy as np

from comicnb.corpus.synth.story import pick

Box = tuple[int, int, int, int]  # x0, y0, x1, y1 in page pixels; x1 and y1 exclusive


def spans(lo: int, hi: int, weights, gap: int) -> list[tuple[int, int]]:
    """Cut [lo, hi) into spans proportional to weights, gap pixels apart."""
    free = hi - lo - gap * (len(weights) - 1)
    edges = np.concatenate([[0.0], np.cumsum(weights)]) / np.sum(weights) * free
    return [(lo + int(round(edges[i])) + i * gap, lo + int(round(edges[i + 1])) + i * gap) for i in range(len(weights))]


def _rows(rng: np.random.Generator, area: Box, gap: int, counts: list[int]) -> list[Box]:
    """Rows of unequal heights, each cut into panels of unequal widths; read row by row."""
    x0, y0, x1, y1 = area
    rows = spans(y0, y1, rng.uniform(0.75, 1.3, len(counts)), gap)
    return [
        (a, top, b, bottom)
        for (top, bottom), n in zip(rows, counts)
        for a, b in spans(x0, x1, rng.uniform(0.6, 1.4, n), gap)
    ]


def _grid(rng: np.random.Generator, area: Box, gap: int, limit: int, cols: int, rows: int) -> list[Box]:
    """A regular grid of cols x rows panels."""
    x0, y0, x1, y1 = area
    return [
        (a, top, b, bottom) for top, bottom in spans(y0, y1, [1] * rows, gap) for a, b in spans(x0, x1, [1] * cols, gap)
    ]


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
    cuts = spans(y0, y1, [1, 2.2] if strip_first else [2.2, 1], gap) if strip else [(y0, y1)]
    top, bottom = cuts[-1] if strip_first else cuts[0]
    (la, lb), (ra, rb) = spans(x0, x1, rng.uniform(0.8, 1.25, 2), gap)
    (u0, u1), (d0, d1) = spans(top, bottom, [1, 1], gap)
    block = (
        [(la, top, lb, bottom), (ra, u0, rb, u1), (ra, d0, rb, d1)]
        if side == "left"
        else [(la, u0, lb, u1), (la, d0, lb, d1), (ra, top, rb, bottom)]
    )
    if not strip:
        return block
    s0, s1 = cuts[0] if strip_first else cuts[-1]
    row = [(a, s0, b, s1) for a, b in spans(x0, x1, rng.uniform(0.7, 1.3, strip), gap)]
    return row + block if strip_first else block + row


def _splash(rng: np.random.Generator, area: Box, gap: int, limit: int) -> list[Box]:
    """A splash panel with a strip of two to four panels below or above it."""
    x0, y0, x1, y1 = area
    first = rng.random() < 0.6
    cuts = spans(y0, y1, [1.8, 1] if first else [1, 1.8], gap)
    (p0, p1), (s0, s1) = cuts if first else cuts[::-1]
    strip = [(a, s0, b, s1) for a, b in spans(x0, x1, rng.uniform(0.7, 1.3, int(rng.integers(2, 5))), gap)]
    return [(x0, p0, x1, p1)] + strip if first else strip + [(x0, p0, x1, p1)]


def _staggered(rng: np.random.Generator, area: Box, gap: int, limit: int) -> list[Box]:
    """Columns whose row gutters sit at different heights: a panel's top may rise above its predecessor's."""
    x0, y0, x1, y1 = area
    cols, rows = pick(rng, [s for s in [(2, 2), (2, 3), (3, 2), (2, 4), (3, 3)] if s[0] * s[1] <= limit])
    xs = spans(x0, x1, rng.uniform(0.8, 1.2, cols), gap)
    row_h, half = (y1 - y0) / rows, gap // 2
    cuts = [
        [y0] + [int(round(y0 + (r + rng.uniform(-0.22, 0.22)) * row_h)) for r in range(1, rows)] + [y1]
        for _ in range(cols)
    ]
    return [
        (a, cuts[c][r] + (half if r else 0), b, cuts[c][r + 1] - (half if r < rows - 1 else 0))
        for r in range(rows)
        for c, (a, b) in enumerate(xs)
    ]


def dense(rng: np.random.Generator, area: Box, gap: int, n: int) -> list[Box]:
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


# Layouts that admit two reading orders: a regular grid (name: its number of columns) is read across its rows or down
# its columns, and nothing in the boxes says which; only the story does (docs/corpus.md, "Reading order").
AMBIGUOUS = {"grid_2x2": 2, "grid_2x3": 2, "grid_3x3": 3}
READINGS = ("fixed", "across", "down")  # a page's reading: its layout admits one order, or a grid read either way


def down_the_columns(boxes: list[Box], cols: int) -> list[Box]:
    """A grid's boxes, given across its rows, in the order that reads down each column (left column first)."""
    return [boxes[r * cols + c] for c in range(cols) for r in range(len(boxes) // cols)]


def page_area(size: tuple[int, int]) -> tuple[Box, int]:
    """The area inside the page margins, and the gutter width."""
    w, h = size
    m = int(round(0.045 * w))
    return (m, m, w - m, h - m), max(4, int(round(0.022 * w)))


def choose_layout(rng: np.random.Generator, size: tuple[int, int], limit: int) -> tuple[str, list[Box]]:
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


def page_plan(
    label: str, layout: str, boxes: list[Box], panels: list[dict], book: dict, fmt: str, reading: str = "fixed"
) -> dict:
    """A planned page; boxes are given left-to-right and mirrored here for right-to-left books (a grid read down its
    columns then starts with the right-hand column). ``reading``: one of READINGS."""
    direction = book["direction"]
    boxes = mirror(boxes, book["size"][0]) if direction == "rtl" else boxes
    return {
        "label": label,
        "layout": layout,
        "reading": reading,
        "reading_direction": direction,
        "naive_order_correct": naive_order_correct(boxes, direction),
        "scene": panels[0]["scene"] if panels else None,
        "panels": panels,
        "boxes": boxes,
        "format": fmt,
        "defect": None,
    }


def to_bbox(box: Box, bbox_format: str) -> list[int]:
    """A box as written in page JSON: [x, y, w, h] or [x1, y1, x2, y2]."""
    x0, y0, x1, y1 = box
    return [x0, y0, x1, y1] if bbox_format == "xyxy" else [x0, y0, x1 - x0, y1 - y0]
