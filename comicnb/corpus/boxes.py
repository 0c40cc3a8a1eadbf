"""Panel boxes: the two bbox conventions and the repair of a box against its page."""

from __future__ import annotations

from collections.abc import Sequence

BBOX_FORMATS = ("xywh", "xyxy")


def repair_box(
    bbox: Sequence[float], width: float, height: float, bbox_format: str = "xywh"
) -> tuple[list[float] | None, str | None, str, str]:
    """Box as [x1, y1, x2, y2] clipped to the page (None when skipped), with its problem, action and detail."""
    x1, y1, a, b = (float(v) for v in bbox)
    x2, y2 = (x1 + a, y1 + b) if bbox_format == "xywh" else (a, b)
    given = f"{bbox_format} {list(bbox)}"
    if x2 == x1 or y2 == y1:
        return None, "bbox_zero_area", "skipped_panel", f"{given} has zero width or height"
    clipped = [max(x1, 0.0), max(y1, 0.0), min(x2, float(width)), min(y2, float(height))]
    has_area = clipped[2] > clipped[0] and clipped[3] > clipped[1]
    if min(x1, y1, x2 - x1, y2 - y1) < 0:
        action = "repaired" if has_area else "skipped_panel"
        return (clipped if has_area else None), "bbox_negative", action, f"{given}: negative size or coordinate"
    if not has_area:
        return None, "bbox_outside_page", "skipped_panel", f"{given} lies outside the {width}x{height} page"
    if clipped != [x1, y1, x2, y2]:
        return clipped, "bbox_out_of_bounds", "repaired", f"{given} clipped to the {width}x{height} page"
    return clipped, None, "", ""
