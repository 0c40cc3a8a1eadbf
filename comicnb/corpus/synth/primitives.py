"""Drawing basics shared by the painters: paper and ink colours, tints, outlined dots, fixed scatter patterns."""

from __future__ import annotations

from PIL import ImageDraw

PAPER, INK, WHITE = (250, 247, 238), (20, 20, 20), (255, 255, 255)


def tint(rgb, f: float) -> tuple[int, int, int]:
    """A colour moved a fraction f towards white."""
    return tuple(int(c + (255 - c) * f) for c in rgb)


def dot(draw: ImageDraw.ImageDraw, x: float, y: float, r: float, fill) -> None:
    """An outlined disc."""
    draw.ellipse((x - r, y - r, x + r, y + r), fill=fill, outline=INK, width=2)


def scatter(n: int, offset: float = 0.0) -> list[tuple[float, float]]:
    """n well-spread points in the unit square (R2 sequence): fixed patterns that need no generator."""
    return [((0.5 + offset + i * 0.7548777) % 1, (0.5 + offset + i * 0.5698403) % 1) for i in range(n)]
