"""What a stored panel is known to be: its book, and on the synthetic corpus its character and scene."""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import pandas as pd


def panel_labels(metadata: pd.DataFrame, data_root: str | Path) -> pd.DataFrame:
    """Labels of each stored panel, in store order: book, and the ground truth's first character and scene where the
    corpus has a sidecar (the synthetic corpus); real data has only the book.

    A sidecar that does not describe every stored page (a corpus renamed or rearranged after it was drawn) is not
    used: the labels fall back to the book, with a warning naming the first page it lacks.
    """
    by_book = pd.DataFrame({"book_id": np.repeat(metadata.book_id.to_numpy(), metadata.num_panels.to_numpy())})
    if not (Path(data_root) / "ground_truth.json").is_file():
        return by_book
    from comicnb.corpus.synth import panel_truth  # the synthetic corpus's reader, only needed where there is one

    try:
        return panel_truth(data_root, metadata)[["book_id", "character", "scene"]]
    except (KeyError, IndexError) as missing:
        warnings.warn(
            f"{Path(data_root) / 'ground_truth.json'} does not describe this corpus (no entry for {missing}): "
            f"panels are labelled by book only",
            stacklevel=2,
        )
        return by_book
