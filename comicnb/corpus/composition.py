"""Composition features: where a panel sits on its page and what shape it has, from its box alone."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd

# One row per panel from composition_features, in this order.
COMPOSITION_FEATURES = (
    "centre_x",  # box centre x / page width, in [0, 1]
    "centre_y",  # box centre y / page height, in [0, 1]
    "width",  # box width / page width, in (0, 1]
    "height",  # box height / page height, in (0, 1]
    "log_aspect",  # log(box width / box height) in pixels, any finite value
    "area",  # box area / page area, in (0, 1]
    "edge_distance",  # distance from the box to the nearest page edge / min(page width, page height), in [0, 0.5]
)


def composition_features(boxes: Sequence[Sequence[float]], width: float, height: float) -> np.ndarray:
    """(N, 7) float32 layout features of each [x1, y1, x2, y2] box on its page, named in COMPOSITION_FEATURES.

    Each row depends only on its own box and the page size, never on the box's position in the list.
    """
    xyxy = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)  # (panels, 4)
    x1, y1, x2, y2 = xyxy.T
    w, h = x2 - x1, y2 - y1
    edge = np.minimum.reduce([x1, y1, width - x2, height - y2])
    feats = [
        (x1 + x2) / 2 / width,
        (y1 + y2) / 2 / height,
        w / width,
        h / height,
        np.log(w / h),
        w * h / (width * height),
        np.clip(edge, 0, None) / min(width, height),
    ]
    return np.stack(feats, axis=1).astype(np.float32)  # (panels, 7)


def composition_table(pages: pd.DataFrame) -> pd.DataFrame:
    """The composition features of every panel of the pages table, one row a panel, columns COMPOSITION_FEATURES."""
    blocks = [composition_features(p.boxes, p.image_width, p.image_height) for p in pages.itertuples(index=False)]
    values = np.concatenate(blocks) if blocks else np.zeros((0, len(COMPOSITION_FEATURES)), np.float32)
    return pd.DataFrame(values, columns=list(COMPOSITION_FEATURES))
