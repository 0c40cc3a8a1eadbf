"""Reading order of detected boxes: cut the page into tiers and columns along lines no box crosses.

The page is read top to bottom by tiers (groups of boxes that a horizontal line separates from the rest), and a tier
from its starting side (left for ``ltr`` books, right for ``rtl``) by columns that a vertical line separates; each
part is read the same way again. A group that no straight line divides (panels that interlock) is read by the tops
of its boxes, rows of boxes whose tops lie within ``row_slack`` of the group's median height counting as one row.

A regular grid is read across its rows. Whether a grid is read down its columns instead is not in its boxes (the
story decides; docs/corpus.md), so detection gets those pages wrong by design.
"""

from __future__ import annotations

from collections.abc import Sequence

Box = Sequence[float]  # x1, y1, x2, y2
DIRECTIONS = ("ltr", "rtl")


def reading_order(boxes: Sequence[Box], direction: str = "ltr", slack: float = 0.15) -> list[int]:
    """Indices of ``boxes`` in reading order."""
    if direction not in DIRECTIONS:
        raise ValueError(f"direction {direction!r} is not one of {DIRECTIONS}")
    return _order(list(range(len(boxes))), boxes, direction, slack)


def _order(ids: list[int], boxes: Sequence[Box], direction: str, slack: float) -> list[int]:
    if len(ids) <= 1:
        return ids
    for axis in (1, 0):  # tiers first (a horizontal cut), then columns
        groups = _split(ids, boxes, axis, slack)
        if len(groups) > 1:
            if axis == 0 and direction == "rtl":
                groups = groups[::-1]
            if axis == 0 and _staggered(groups, boxes, slack):  # rows whose gutters do not line up: read across
                return [group[r] for r in range(len(groups[0])) for group in groups]
            return [i for group in groups for i in _order(group, boxes, direction, slack)]
    return by_rows(ids, boxes, direction, slack)


def _split(ids: list[int], boxes: Sequence[Box], axis: int, slack: float) -> list[list[int]]:
    """The boxes grouped by the lines across ``axis`` (1: horizontal lines, 0: vertical) that none of them crosses.

    Boxes may overlap their neighbour by ``slack`` of the smaller one's extent (a balloon or a slightly wide
    detection) and still count as separated.
    """
    lo, hi = axis, axis + 2
    spans = sorted(ids, key=lambda i: (boxes[i][lo], boxes[i][hi]))
    groups: list[list[int]] = []
    end = None
    for i in spans:
        start, stop = boxes[i][lo], boxes[i][hi]
        tolerance = slack * (stop - start)
        if end is None or start >= end - tolerance:
            groups.append([i])
            end = stop
        else:
            groups[-1].append(i)
            end = max(end, stop)
    return groups


def _staggered(groups: list[list[int]], boxes: Sequence[Box], slack: float) -> bool:
    """Whether columns hold the same number (two or more) of stacked boxes each: rows of panels whose gutters are
    at different heights, which a page reads across, row by row."""
    counts = {len(group) for group in groups}
    if len(counts) != 1 or counts.pop() < 2:
        return False
    stacks = [sorted(group, key=lambda i: boxes[i][1]) for group in groups]
    if any(len(_split(stack, boxes, 1, slack)) != len(stack) for stack in stacks):
        return False
    for group, stack in zip(groups, stacks):
        group[:] = stack
    return True


def by_rows(ids: Sequence[int], boxes: Sequence[Box], direction: str, slack: float) -> list[int]:
    """``ids`` read by rows: boxes whose tops lie within ``slack`` of the median height of the first box of a row
    join it; rows top to bottom, each from the book's side."""
    heights = sorted(boxes[i][3] - boxes[i][1] for i in ids)
    tolerance = slack * heights[len(heights) // 2]
    rows: list[list[int]] = []
    for i in sorted(ids, key=lambda i: boxes[i][1]):
        if rows and boxes[i][1] - boxes[rows[-1][0]][1] <= tolerance:
            rows[-1].append(i)
        else:
            rows.append([i])
    sign = -1 if direction == "rtl" else 1
    return [i for row in rows for i in sorted(row, key=lambda i: sign * boxes[i][0])]
