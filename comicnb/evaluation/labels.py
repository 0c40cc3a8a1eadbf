"""What a stored panel is known to be: its book, and on the synthetic corpus its character and scene."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd


def panel_labels(metadata: pd.DataFrame, data_root: str | Path) -> pd.DataFrame:
    """Labels of each stored panel, in store order: book, and the ground truth's first character and scene where the
    corpus has a sidecar (the synthetic corpus); real data has only the book."""
    if (Path(data_root) / "ground_truth.json").is_file():
        from comicnb.corpus.synth import panel_truth  # the synthetic corpus's reader, only needed where there is one

        return panel_truth(data_root, metadata)[["book_id", "character", "scene"]]
    return pd.DataFrame({"book_id": np.repeat(metadata.book_id.to_numpy(), metadata.num_panels.to_numpy())})
