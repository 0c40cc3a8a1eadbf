"""Notebook 05's galleries: a query page beside its nearest pages, by Stage 4 strip embedding and by mean Stage 3
vector, each hit marked same / other book and scene."""

from __future__ import annotations

from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
from PIL import Image

from comicnb.evaluation.strips import strip_neighbours
from comicnb.stage4.view import RunView


def strip_gallery(query: int, hits: pd.DataFrame, images: dict[int, Path]) -> plt.Figure:
    """One row per method of ``hits`` (``strip_neighbours``): the query page, then its nearest pages by rank."""
    methods = list(dict.fromkeys(hits.method))
    width = int(hits.groupby("method").size().max()) + 1
    fig, axes = plt.subplots(len(methods), width, figsize=(1.6 * width, 2.5 * len(methods)), squeeze=False)
    for row, method in zip(axes, methods):
        row[0].imshow(Image.open(images[query]))
        row[0].set_title(f"query page {query}", fontsize=7)
        for ax, hit in zip(row[1:], hits[hits.method == method].itertuples()):
            ax.imshow(Image.open(images[hit.page_index]))
            book = "same book" if hit.same_book else "other book"
            # Scenes come from the corpus's ground truth: a corpus without one (real pages) has books only.
            scene = "" if not hasattr(hit, "same_scene") else ", same scene" if hit.same_scene else ", other scene"
            ax.set_title(f"{method} #{hit.rank}\n{book}{scene}", fontsize=6)
        for ax in row:
            ax.set_xticks([])
            ax.set_yticks([])
    fig.tight_layout()
    return fig


def strip_galleries(
    view: RunView,
    strip_vectors: np.ndarray,
    mean_vectors: np.ndarray,
    pages: pd.DataFrame,
    queries: int = 2,
    k: int = 5,
    seed: int = 0,
) -> None:
    """``queries`` query pages drawn (seeded) from ``pages`` (``split_pages``), each shown with its gallery."""
    images = {int(i): view.image_file(int(i)) for i in pages.page_index}
    chosen = np.random.default_rng(seed).choice(pages.page_index.to_numpy(), min(queries, len(pages)), replace=False)
    for page in chosen:
        strip_gallery(int(page), strip_neighbours(int(page), strip_vectors, mean_vectors, pages, k=k), images)
        plt.show()
