"""The actors of a narrative panel: cast members drawn from their looks, where they stand, each action's prop."""

from __future__ import annotations

import numpy as np
from PIL import ImageDraw

from comicnb.corpus.synth.primitives import INK, dot, scatter, tint
from comicnb.corpus.synth.story import CAST, COLOURS

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
                xy, fill=colour, outline=INK, width=2
            )


def draw_character(draw: ImageDraw.ImageDraw, cid: str, cx: float, feet: float, s: float) -> tuple[float, float]:
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
    dot(draw, x0 + (x1 - x0) * t, y, 0.08 * s, COLOURS[panel["props"]["colour"]])


def _kite(draw: ImageDraw.ImageDraw, panel: dict, stage: list, t: float, size: tuple[int, int], s: float) -> None:
    """The kite climbing from the actor's hand into the sky on its string."""
    w, h = size
    hand = (stage[0][0] + 0.2 * s, 0.95 * h - 0.3 * s)
    kx = min(stage[0][0] + (0.1 + 0.35 * t) * w, 0.92 * w)
    ky, d = hand[1] - 0.1 * s - t * (hand[1] - 0.1 * s - 0.12 * h), 0.09 * s
    draw.line([hand, (kx, ky + d)], fill=INK, width=1)
    draw.polygon(
        [(kx, ky - d), (kx + 0.7 * d, ky), (kx, ky + d), (kx - 0.7 * d, ky)],
        fill=COLOURS[panel["props"]["colour"]],
        outline=INK,
        width=2,
    )


def _lamp(draw: ImageDraw.ImageDraw, panel: dict, stage: list, t: float, size: tuple[int, int], s: float) -> None:
    """A street lamp between the two, dark until the last step, when it glows in its colour."""
    h = size[1]
    x, top, colour = (stage[0][0] + stage[1][0]) / 2, 0.95 * h - 0.95 * s, COLOURS[panel["props"]["colour"]]
    if t >= 1:
        draw.ellipse((x - 0.35 * s, top - 0.3 * s, x + 0.35 * s, top + 0.25 * s), fill=tint(colour, 0.5))
    draw.line([(x, 0.95 * h), (x, top)], fill=INK, width=3)
    unlit = tuple(c // 2 for c in colour)  # the glass shows its colour, dimly, before it is switched on
    draw.rectangle(
        (x - 0.08 * s, top - 0.12 * s, x + 0.08 * s, top), fill=colour if t >= 1 else unlit, outline=INK, width=2
    )


def _parcel(draw: ImageDraw.ImageDraw, panel: dict, stage: list, t: float, size: tuple[int, int], s: float) -> None:
    """The parcel the approaching partner carries in front of them."""
    x, y, d = stage[1][0] - 0.3 * s, 0.95 * size[1] - 0.3 * s, 0.09 * s
    draw.rectangle((x - d, y - d, x + d, y + d), fill=COLOURS[panel["props"]["colour"]], outline=INK, width=2)


def _rain(draw: ImageDraw.ImageDraw, panel: dict, stage: list, t: float, size: tuple[int, int], s: float) -> None:
    """Raindrops thickening with each step; the actor's furled umbrella opens over both at the end."""
    w, h = size
    for fx, fy in scatter(1 + round(45 * t), 0.3):
        draw.line([(fx * w, fy * h), (fx * w - 3, fy * h + 9)], fill=(70, 110, 200), width=2)
    (ax, top), (bx, _) = stage[:2]
    colour = COLOURS[panel["props"]["colour"]]
    if t < 1:
        x, feet = ax - 0.3 * s, 0.95 * h
        draw.polygon(
            [(x, feet - 0.6 * s), (x + 0.05 * s, feet - 0.1 * s), (x - 0.05 * s, feet - 0.1 * s)],
            fill=colour,
            outline=INK,
            width=2,
        )
        return
    cx, r = (ax + bx) / 2, abs(bx - ax) / 2 + 0.25 * s
    draw.line([(cx, top - 0.1 * r), (cx, top + 0.35 * r)], fill=INK, width=2)
    draw.pieslice((cx - r, top - 0.45 * r, cx + r, top + 0.35 * r), 180, 360, fill=colour, outline=INK, width=2)


def _plant(draw: ImageDraw.ImageDraw, panel: dict, stage: list, t: float, size: tuple[int, int], s: float) -> None:
    """A stem growing from a pot between the two: leaves from mid-way, the flower at the last step."""
    x, base = (stage[0][0] + stage[1][0]) / 2, 0.95 * size[1]
    rim, top = base - 0.15 * s, base - (0.2 + 0.6 * t) * s
    draw.line([(x, rim), (x, top)], fill=(40, 140, 50), width=3)
    draw.polygon(
        [(x - 0.12 * s, rim), (x + 0.12 * s, rim), (x + 0.08 * s, base), (x - 0.08 * s, base)],
        fill=(170, 90, 50),
        outline=INK,
        width=2,
    )
    if t >= 0.3:
        draw.ellipse((x, (rim + top) / 2 - 0.04 * s, x + 0.14 * s, (rim + top) / 2 + 0.04 * s), fill=(60, 170, 70))
    if t >= 1:
        dot(draw, x, top, 0.09 * s, COLOURS[panel["props"]["colour"]])
        dot(draw, x, top, 0.03 * s, (250, 220, 60))


PROPS = {
    "ball_throw": _ball,
    "kite_rise": _kite,
    "nightfall": _lamp,
    "approach": _parcel,
    "rain_start": _rain,
    "plant_grow": _plant,
}


def positions(panel: dict, t: float) -> list[float]:
    """Where actor, partner and bystander stand, as fractions of the panel width."""
    # A bystander stands aside, so the props between actor and partner stay in view.
    xs = [0.28, 0.72] if len(panel["characters"]) < 3 else [0.17, 0.55, 0.86]
    if panel["action"] == "approach":
        xs[1] = 0.92 - 0.5 * t
    return xs[: len(panel["characters"])]
