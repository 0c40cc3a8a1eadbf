"""Scene backdrops: sky or wall, ground, and each scene's pattern and landmark."""

from __future__ import annotations

from PIL import ImageDraw

from comicnb.corpus.synth.primitives import INK, WHITE, dot, scatter
from comicnb.corpus.synth.story import COLOURS, SCENES


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
    for fx, _ in scatter(6):
        x = fx * w
        draw.polygon(
            [(x, hy - 0.3 * h), (x + 0.08 * w, hy + 2), (x - 0.08 * w, hy + 2)], fill=(40, 95, 50), outline=INK
        )
    draw.rectangle((0.86 * w, hy - 0.22 * h, 0.9 * w, hy + 0.05 * h), fill=(110, 70, 40), outline=INK)
    draw.ellipse((0.76 * w, hy - 0.42 * h, w, hy - 0.16 * h), fill=(60, 130, 55), outline=INK, width=2)


def _city(draw: ImageDraw.ImageDraw, w: int, h: int, hy: int) -> None:
    """A skyline with lit windows and a clock tower."""
    for i, (_, fy) in enumerate(scatter(7)):
        x0, top = i * w / 7, hy - (0.12 + 0.2 * fy) * h
        draw.rectangle((x0, top, x0 + w / 7 - 3, hy), fill=(150, 150, 165), outline=INK)
        for wy in range(int(top) + 6, hy - 8, 14):
            draw.rectangle((x0 + 5, wy, x0 + 10, wy + 6), fill=(250, 240, 170))
    draw.rectangle((0.82 * w, 0.15 * h, 0.94 * w, hy), fill=(170, 130, 100), outline=INK, width=2)
    dot(draw, 0.88 * w, 0.21 * h, 0.045 * w, WHITE)


def _desert(draw: ImageDraw.ImageDraw, w: int, h: int, hy: int) -> None:
    """A hot sun, dune ridges and a tall cactus."""
    dot(draw, 0.12 * w, 0.1 * h, 0.06 * w, (250, 170, 40))
    for fx, fy in scatter(4):
        x, y = fx * w, hy + fy * (h - hy)
        draw.arc((x - 0.2 * w, y - 12, x + 0.2 * w, y + 12), 180, 360, fill=(200, 150, 80), width=3)
    for box in [(0.86, hy / h - 0.25, 0.91, hy / h + 0.03), (0.81, hy / h - 0.17, 0.86, hy / h - 0.13)]:  # trunk, arm
        draw.rounded_rectangle(
            (box[0] * w, box[1] * h, box[2] * w, box[3] * h), 0.008 * w, fill=(50, 140, 60), outline=INK, width=2
        )


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
    for fx, fy in scatter(14):
        x, y = fx * w, fy * hy * 0.9
        draw.ellipse((x - 1.5, y - 1.5, x + 1.5, y + 1.5), fill=(250, 250, 210))
    dot(draw, 0.14 * w, 0.12 * h, 0.05 * w, (245, 240, 200))
    draw.rectangle((0.84 * w, hy - 0.16 * h, 0.92 * w, hy), fill=(150, 60, 50), outline=INK, width=2)


def _beach(draw: ImageDraw.ImageDraw, w: int, h: int, hy: int) -> None:
    """The sea behind the sand, the sun and a pier on posts."""
    draw.rectangle((0, hy - 0.08 * h, w, hy), fill=(60, 140, 200))
    dot(draw, 0.14 * w, 0.1 * h, 0.06 * w, (250, 220, 60))
    draw.rectangle((0.72 * w, hy - 0.1 * h, w, hy - 0.07 * h), fill=(140, 100, 60), outline=INK)
    for x in (0.76, 0.86, 0.96):
        draw.rectangle((x * w, hy - 0.07 * h, x * w + 4, hy), fill=(110, 80, 50))


def _garden(draw: ImageDraw.ImageDraw, w: int, h: int, hy: int) -> None:
    """Flowers in the grass and a fountain."""
    colours = list(COLOURS.values())
    for i, (fx, fy) in enumerate(scatter(12)):
        x, y = fx * w, hy + fy * (h - hy)
        draw.ellipse((x - 3, y - 3, x + 3, y + 3), fill=colours[i % len(colours)])
    draw.ellipse((0.78 * w, hy - 0.03 * h, 0.98 * w, hy + 0.05 * h), fill=(180, 180, 190), outline=INK, width=2)
    draw.line((0.88 * w, hy, 0.88 * w, hy - 0.15 * h), fill=(90, 160, 230), width=4)
    draw.arc((0.82 * w, hy - 0.18 * h, 0.94 * w, hy - 0.05 * h), 180, 360, fill=(90, 160, 230), width=3)


_SCENERY = {
    "harbour": _harbour,
    "forest": _forest,
    "city": _city,
    "desert": _desert,
    "kitchen": _kitchen,
    "rooftop": _rooftop,
    "beach": _beach,
    "garden": _garden,
}


def backdrop(draw: ImageDraw.ImageDraw, scene: str, w: int, h: int) -> None:
    """Sky (or wall) above the horizon, ground below, then the scene's pattern and landmark."""
    look = SCENES[scene]
    hy = int(look["horizon"] * h)
    draw.rectangle((0, 0, w, hy), fill=look["sky"])
    draw.rectangle((0, hy, w, h), fill=look["ground"])
    _SCENERY[scene](draw, w, h, hy)
