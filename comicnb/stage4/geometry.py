"""Box geometry of reading order, one implementation for the Stage 4 model and the geometry baseline.

``pair_features`` describes every ordered pair (i, j) of a page's panel boxes ([x1, y1, x2, y2] as fractions of the
page): differences of centres and of edges, the overlap along each axis over the smaller extent, and the book's
reading direction with the horizontal differences signed by it. The direction's sign is +1 right to left, -1 left to
right and 0 where the corpus does not label the book (``direction_sign``): an unlabelled book is not taken for a
left-to-right one.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from torch import Tensor, nn

PAIR_FEATURES = (
    "dx",
    "dy",
    "dx1",
    "dy1",
    "dx2",
    "dy2",
    "x_overlap",
    "y_overlap",
    "direction",
    "direction_dx",
    "direction_dx1",
    "direction_dx2",
)
SMALL_HIDDEN = 32  # width of the geometry baseline's network, which the model's reading-order head also holds


def small_mlp(width: int, hidden: int = SMALL_HIDDEN) -> nn.Sequential:
    """The geometry baseline's network (features -> one score), also the model's reading-order layout branch."""
    return nn.Sequential(nn.Linear(width, hidden), nn.GELU(), nn.Linear(hidden, 1))


DIRECTIONS = {None: 0, "rtl": 1, "ltr": 2}  # a batch's ``direction`` code of a book's direction
SIGNS = (0.0, 1.0, -1.0)  # the pair features' direction sign of each code


def direction_code(direction: str | None) -> int:
    """A batch's code of a book's direction: 0 unlabelled, 1 rtl, 2 ltr."""
    return DIRECTIONS.get(direction, 0)


def direction_sign(codes: Tensor) -> Tensor:
    """(B,) the direction sign of (B,) direction codes: +1 rtl, -1 ltr, 0 unlabelled."""
    return torch.tensor(SIGNS, device=codes.device)[codes.long()]


def pair_features(boxes: Tensor, sign: Tensor) -> Tensor:
    """(B, N, N, len(PAIR_FEATURES)) features of every ordered pair of (B, N, 4) boxes, ``sign`` (B,) the book's
    direction sign; computed in the boxes' floating dtype (float32 for the model, float64 for the baseline)."""
    b = boxes if boxes.is_floating_point() else boxes.float()
    centre = (b[..., :2] + b[..., 2:]) / 2

    def diff(values: Tensor) -> Tensor:  # (B, N) -> (B, N, N): values[i] - values[j]
        return values[:, :, None] - values[:, None, :]

    def overlap(low: Tensor, high: Tensor) -> Tensor:  # shared extent over the smaller one: 1 when one spans the other
        shared = torch.minimum(high[:, :, None], high[:, None, :]) - torch.maximum(low[:, :, None], low[:, None, :])
        extent = high - low
        smaller = torch.minimum(extent[:, :, None], extent[:, None, :]).clamp(min=1e-6)
        return shared.clamp(min=0) / smaller

    dx, dx1, dx2 = diff(centre[..., 0]), diff(b[..., 0]), diff(b[..., 2])
    signs = sign.to(b.device, b.dtype)[:, None, None].expand_as(dx)
    stacked = [dx, diff(centre[..., 1]), dx1, diff(b[..., 1]), dx2, diff(b[..., 3])]
    stacked += [overlap(b[..., 0], b[..., 2]), overlap(b[..., 1], b[..., 3])]
    stacked += [signs, signs * dx, signs * dx1, signs * dx2]
    return torch.stack(stacked, dim=-1)


def page_pair_features(boxes: Sequence[Sequence[float]] | np.ndarray, direction: str | None) -> Tensor:
    """(K, K, len(PAIR_FEATURES)) float64 pair features of one page's (K, 4) boxes and its book's direction."""
    page = torch.from_numpy(np.asarray(boxes, dtype=np.float64).reshape(1, -1, 4))
    return pair_features(page, direction_sign(torch.tensor([direction_code(direction)])))[0]
