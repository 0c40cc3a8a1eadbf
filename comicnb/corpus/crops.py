"""Page images to RGB panel crops."""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
from PIL import Image


def to_rgb(img: Image.Image) -> Image.Image:
    """img as 8-bit RGB: alpha composited on white, 16-bit grey scaled (not clipped) to 0..255, CMYK/L/P converted."""
    if img.mode == "RGB":
        return img
    if img.mode.startswith("I;16") or img.mode == "I":  # 16-bit PNGs open as I;16 (older Pillow: I)
        wide = np.clip(np.asarray(img, dtype=np.int64), 0, 65535)
        return Image.fromarray(((wide * 255 + 32767) // 65535).astype(np.uint8), "L").convert("RGB")
    if img.mode in ("RGBA", "LA", "PA", "RGBa", "La") or "transparency" in img.info:
        white = Image.new("RGBA", img.size, (255, 255, 255, 255))
        return Image.alpha_composite(white, img.convert("RGBA")).convert("RGB")
    return img.convert("RGB")


def crop_panels(
    image: Image.Image,
    boxes: Sequence[Sequence[float]],
    size: int | tuple[int, int] | None = None,
    *,
    min_side: int | None = None,
) -> list[Image.Image]:
    """Convert the page to RGB once and crop each [x1, y1, x2, y2] box; resized to size (w, h or square) if given.

    With min_side, a JPEG not yet decoded is decoded at a reduced DCT scale (1/2, 1/4 or 1/8) as long as every crop
    keeps at least min_side pixels on its short side; boxes are scaled to match.
    """
    sx, sy = _draft_scale(image, boxes, min_side) if min_side else (1.0, 1.0)
    page = to_rgb(image)
    crops = [
        page.crop(_pixel_box([x1 * sx, y1 * sy, x2 * sx, y2 * sy], page.width, page.height)) for x1, y1, x2, y2 in boxes
    ]
    if size is None:
        return crops
    target = (size, size) if isinstance(size, int) else tuple(size)
    return [crop.resize(target, Image.Resampling.BILINEAR) for crop in crops]


def _draft_scale(image: Image.Image, boxes: Sequence[Sequence[float]], min_side: int) -> tuple[float, float]:
    """Ask the decoder for the smallest scale keeping every box's short side >= min_side; (x, y) scale obtained."""
    factor = min(min(x2 - x1, y2 - y1) for x1, y1, x2, y2 in boxes) / min_side if len(boxes) else 1.0
    width, height = image.size
    if factor >= 2:  # PIL picks a scale whose output is at least the requested size; non-JPEGs ignore draft
        image.draft(image.mode, (math.ceil(width / factor), math.ceil(height / factor)))
    return image.width / width, image.height / height


def _pixel_box(box: Sequence[float], width: int, height: int) -> tuple[int, int, int, int]:
    """Integer crop box covering the float box, inside the page and at least one pixel each way."""
    x1 = min(max(math.floor(box[0]), 0), width - 1)
    y1 = min(max(math.floor(box[1]), 0), height - 1)
    return x1, y1, max(min(math.ceil(box[2]), width), x1 + 1), max(min(math.ceil(box[3]), height), y1 + 1)
