"""Figures and tables the notebooks show: pages with their boxes, per-panel statistics."""

from __future__ import annotations

from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
from PIL import Image

from comicnb.corpus.crops import crop_panels, to_rgb


def panel_table(pages: pd.DataFrame) -> pd.DataFrame:
    """One row per panel of the pages table: its page, split, text length, relative area and log2 aspect ratio."""
    rows = []
    for page in pages.itertuples(index=False):
        page_area = page.image_width * page.image_height
        for (x1, y1, x2, y2), text in zip(page.boxes, page.texts):
            rows.append(
                dict(
                    page_id=page.page_id,
                    book_id=page.book_id,
                    split=page.split,
                    text_chars=len(text),
                    has_text=bool(text),
                    area=(x2 - x1) * (y2 - y1) / page_area,
                    log2_aspect=float(np.log2((x2 - x1) / max(y2 - y1, 1e-9))),
                )
            )
    return pd.DataFrame(rows)


def draw_page(ax: plt.Axes, image_path: str | Path, boxes: list, title: str = "") -> None:
    """Show a page with its panel boxes and their reading-order numbers (the order of the list)."""
    with Image.open(image_path) as img:
        ax.imshow(np.asarray(to_rgb(img)))
    for order, (x1, y1, x2, y2) in enumerate(boxes, start=1):
        ax.add_patch(plt.Rectangle((x1, y1), x2 - x1, y2 - y1, fill=False, edgecolor="crimson", linewidth=1.5))
        ax.text(
            (x1 + x2) / 2,
            (y1 + y2) / 2,
            str(order),
            color="white",
            fontsize=12,
            ha="center",
            va="center",
            bbox=dict(boxstyle="circle", facecolor="crimson", edgecolor="none"),
        )
    ax.set_title(title, fontsize=8)
    ax.axis("off")


def page_grid(pages: pd.DataFrame, data_root: str | Path, n: int = 6, seed: int = 0, cols: int = 3) -> plt.Figure:
    """A grid of ``n`` pages drawn at random (seeded), boxes and reading order drawn on each."""
    sample = pages.sample(min(n, len(pages)), random_state=seed)
    rows = max(1, -(-len(sample) // cols))
    fig, axes = plt.subplots(rows, cols, figsize=(4 * cols, 5.5 * rows), squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    for ax, page in zip(axes.flat, sample.itertuples(index=False)):
        draw_page(ax, Path(data_root) / page.image_path, page.boxes, f"{page.page_id} ({page.split})")
    fig.tight_layout()
    return fig


def detected_and_true(
    detected: pd.DataFrame, truth: pd.DataFrame, data_root: str | Path, n: int = 4, seed: int = 0
) -> plt.Figure:
    """Pages side by side: the boxes detection found, numbered in the order it reads them, and the true ones.

    Pages where the two differ (another number of panels, a box of IoU under 0.5 with the true box at its place in
    the order, so another order too) are shown first, then others drawn at random (seeded); ``detected`` and
    ``truth`` are pages tables of the same pages (matched on book and page)."""
    from comicnb.detect.quality import iou_matrix

    both = detected.merge(truth[["book_id", "page_name", "part", "boxes"]], on=["book_id", "page_name", "part"])
    both["differs"] = [
        len(a) != len(b) or bool((np.diag(iou_matrix(list(a), list(b))) < 0.5).any())
        for a, b in zip(both.boxes_x, both.boxes_y)
    ]
    sample = pd.concat([both[both.differs], both[~both.differs].sample(frac=1.0, random_state=seed)]).head(n)
    fig, axes = plt.subplots(len(sample), 2, figsize=(8, 5.5 * max(1, len(sample))), squeeze=False)
    for (left, right), page in zip(axes, sample.itertuples(index=False)):
        draw_page(left, Path(data_root) / page.image_path, page.boxes_x, f"{page.page_id}: detected")
        draw_page(right, Path(data_root) / page.image_path, page.boxes_y, f"{page.page_id}: true")
    fig.tight_layout()
    return fig


def loss_curves(steps: pd.DataFrame, epochs: pd.DataFrame, terms: tuple[str, ...]) -> plt.Figure:
    """One panel per loss term: training loss per step (raw and smoothed) and validation loss after each epoch."""
    fig, axes = plt.subplots(1, len(terms), figsize=(4 * len(terms), 3.2), squeeze=False)
    window = max(1, len(steps) // 10)
    for ax, term in zip(axes.flat, terms):
        ax.plot(steps.step, steps[term], color="tab:blue", alpha=0.25, linewidth=1)
        ax.plot(steps.step, steps[term].rolling(window, min_periods=1).mean(), color="tab:blue", label="train")
        if f"val_{term}" in epochs:
            ax.plot(epochs.step, epochs[f"val_{term}"], "o-", color="tab:orange", label="validation")
        ax.set(title=term, xlabel="step", ylabel="loss")
        ax.legend(fontsize=7)  # every panel: a reader may look at one alone
    fig.tight_layout()
    return fig


def gate_weights(weights: np.ndarray, modality_mask: np.ndarray, modalities: tuple[str, ...]) -> plt.Figure:
    """Distribution of each modality's fusion weight over the panels that have that modality."""
    import seaborn as sns

    weights, present = np.asarray(weights), np.asarray(modality_mask).astype(bool)
    table = pd.DataFrame(
        [dict(modality=name, weight=w) for i, name in enumerate(modalities) for w in weights[present[:, i], i]]
    )
    fig, ax = plt.subplots(figsize=(6, 3.2))
    sns.violinplot(table, x="modality", y="weight", cut=0, ax=ax)
    ax.set(ylim=(0, 1), ylabel="fusion weight", title="AdaptiveFusion weight per modality (validation panels)")
    fig.tight_layout()
    return fig


def project_2d(vectors: np.ndarray, method: str = "tsne", seed: int = 0) -> np.ndarray:
    """(M, 2) projection of (M, D) vectors: "pca" (linear, exact) or "tsne" (neighbourhoods, seeded)."""
    from sklearn.decomposition import PCA
    from sklearn.manifold import TSNE

    if method == "pca":
        return PCA(n_components=2, random_state=seed).fit_transform(vectors)
    if method == "tsne":
        perplexity = min(30.0, max(2.0, (len(vectors) - 1) / 3))
        return TSNE(n_components=2, perplexity=perplexity, init="pca", random_state=seed).fit_transform(vectors)
    raise ValueError(f"unknown projection {method!r}: use pca or tsne")


def projection(points: np.ndarray, labels: pd.DataFrame, columns: tuple[str, ...], what: str = "panels") -> plt.Figure:
    """The same 2-D points (``what`` they are) once per label column, coloured by that column's values."""
    import seaborn as sns

    fig, axes = plt.subplots(1, len(columns), figsize=(6.5 * len(columns), 5.5), squeeze=False)
    for ax, column in zip(axes.flat, columns):
        values = labels[column].to_numpy()
        levels = pd.unique(values)
        # Up to 20 values, 20 distinct colours (seaborn's default repeats hues past 10, so books shared colours);
        # beyond that, colours and marker shapes together.
        palette = sns.color_palette("tab20", len(levels)) if len(levels) <= 20 else "husl"
        style = values if len(levels) > 20 else None
        sns.scatterplot(
            x=points[:, 0], y=points[:, 1], hue=values, style=style, palette=palette, s=14, linewidth=0, ax=ax
        )
        ax.set(title=f"{what} coloured by {column}", xticks=[], yticks=[])
        ax.legend(fontsize=7, markerscale=1.2, ncols=2, loc="best")
    fig.tight_layout()
    return fig


def panel_crop(pages: pd.DataFrame, data_root: str | Path, page_index: int, slot: int) -> Image.Image:
    """The crop of one stored panel (page row of the pages table, slot in its boxes)."""
    page = pages.iloc[page_index]
    with Image.open(Path(data_root) / page.image_path) as img:
        return crop_panels(img, [page.boxes[slot]])[0]


def gallery(
    queries: list[tuple[str, Image.Image | str]], hits: pd.DataFrame, pages: pd.DataFrame, data_root: str | Path
) -> plt.Figure:
    """One row per query: the query (a panel crop or a text) and its hits' crops, best first, with their scores."""
    k = int(hits["rank"].max())
    fig, axes = plt.subplots(len(queries), k + 1, figsize=(2.2 * (k + 1), 2.6 * len(queries)), squeeze=False)
    for row, (title, query) in enumerate(queries):
        for ax in axes[row]:
            ax.axis("off")
        if isinstance(query, str):
            axes[row, 0].text(0.5, 0.5, query, wrap=True, ha="center", va="center", fontsize=9)
        else:
            axes[row, 0].imshow(query)
        axes[row, 0].set_title(title, fontsize=9, color="crimson")
        for hit in hits[hits["query"] == row].itertuples(index=False):
            ax = axes[row, hit.rank]
            ax.imshow(panel_crop(pages, data_root, hit.page_index, hit.slot))
            ax.set_title(f"{hit.rank}. {hit.score:.2f}\n{hit.book_id}/{hit.page_name}", fontsize=7)
    fig.tight_layout()
    return fig
