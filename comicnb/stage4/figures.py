"""Drawing a Stage 4 sample as a researcher reads it: the context, the candidates, the answer marked."""

from __future__ import annotations

import textwrap
from dataclasses import dataclass
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
from PIL import Image

from comicnb.corpus.crops import crop_panels
from comicnb.stage4.tasks import Candidate, TaskSample

TEXT_FREE_SUFFIX = ".textfree"  # <page stem>.textfree.<ext>: the page's text-free twin (docs/corpus.md)
ANSWER_COLOUR = "forestgreen"
WRONG_COLOUR = "crimson"
MAX_CONTEXT_SHOWN = 6


@dataclass(frozen=True)
class PanelRef:
    """Where a stored panel is drawn: its page image, its box on it, its text."""

    image_path: Path
    box: tuple[float, float, float, float]
    text: str

    @property
    def text_free_path(self) -> Path:
        """The page's text-free twin (it may not exist)."""
        return self.image_path.with_name(self.image_path.stem + TEXT_FREE_SUFFIX + self.image_path.suffix)


def panel_refs(metadata: pd.DataFrame, data_root: str | Path) -> dict[int, PanelRef]:
    """Flat panel id -> PanelRef, from a store's metadata (image paths are relative to ``data_root``)."""
    refs = {}
    for page in metadata.itertuples(index=False):
        path = Path(page.image_path)
        path = path if path.is_absolute() else Path(data_root) / path
        for panel_id, box, text in zip(page.embedding_indices, page.boxes, page.texts, strict=True):
            refs[int(panel_id)] = PanelRef(path, tuple(float(v) for v in box), str(text))
    return refs


def panel_image(ref: PanelRef, text_free: bool = False, size: int = 160) -> np.ndarray:
    """The panel's crop as an array (text-free when asked and the twin exists), fitted into size x size."""
    path = ref.text_free_path if text_free and ref.text_free_path.is_file() else ref.image_path
    with Image.open(path) as page:
        crop = crop_panels(page, [ref.box])[0]
    crop.thumbnail((size, size))
    return np.asarray(crop)


def _show(ax: plt.Axes, image: np.ndarray | None, title: str, colour: str | None = None) -> None:
    """One tile: an image (or a blank), a wrapped title, an optional coloured frame."""
    if image is not None:
        ax.imshow(image)
    ax.set_xticks([])
    ax.set_yticks([])
    ax.set_title("\n".join(textwrap.wrap(title, 22)[:4]), fontsize=7)
    for spine in ax.spines.values():
        spine.set_visible(colour is not None or image is None)
        spine.set_edgecolor(colour or "lightgrey")
        spine.set_linewidth(3 if colour else 1)


def candidate_title(candidate: Candidate, refs: dict[int, PanelRef]) -> str:
    """What a candidate says in words: its own text, a stored panel's, or nothing."""
    if candidate.text is not None:
        return candidate.text
    if candidate.text_from is not None:
        return refs[candidate.text_from].text
    return ""


def draw_sample(sample: TaskSample, refs: dict[int, PanelRef], title: str | None = None) -> plt.Figure:
    """One figure row: context (or the shuffled page), then the candidates with the answer framed in green."""
    context = sample.context[-MAX_CONTEXT_SHOWN:] if sample.slot is None else sample.context
    tiles = len(context) + (sample.slot is not None) + len(sample.candidates) + (sample.task == "caption_relevance")
    fig, axes = plt.subplots(1, max(tiles, 1), figsize=(1.6 * max(tiles, 1), 2.4), squeeze=False)
    axes = list(axes[0])
    if sample.task == "caption_relevance":
        _show(axes.pop(0), None, f"caption: {sample.query_text or ''}")
    for position, panel in enumerate(context):
        if sample.slot is not None and position == sample.slot:
            _show(axes.pop(0), None, "? (masked)")
        label = f"#{sample.order[position] + 1}" if sample.order is not None else refs[panel].text
        _show(axes.pop(0), panel_image(refs[panel]), label)
    if sample.slot is not None and sample.slot >= len(context):
        _show(axes.pop(0), None, "? (masked)")
    for index, candidate in enumerate(sample.candidates):
        image = (
            None
            if candidate.vision == "none"
            else panel_image(refs[candidate.panel_id], candidate.vision == "text_free")
        )
        colour = ANSWER_COLOUR if index == sample.answer else None
        _show(
            axes.pop(0),
            image,
            f"{'ANSWER ' if colour else ''}{chr(65 + index)}: {candidate_title(candidate, refs)}",
            colour,
        )
    fig.suptitle(title or f"{sample.task} ({sample.split}, {sample.difficulty})", fontsize=9)
    fig.tight_layout()
    return fig


def draw_orders(
    sample: TaskSample, refs: dict[int, PanelRef], orders: dict[str, list[int]], title: str | None = None
) -> plt.Figure:
    """A reading-order sample's page drawn once per method, each panel's box numbered with the reading position the
    method gives it (``orders``: name -> position of each context panel, ``TaskSample.order``'s convention): green
    where the position is the true one, red where it is not. The first drawing is the truth."""
    if sample.order is None or not sample.context:
        raise ValueError(f"{sample.sample_id} is not a reading-order sample with panels")
    shown = {"truth": list(sample.order), **{name: list(order) for name, order in orders.items()}}
    page = refs[sample.context[0]].image_path
    with Image.open(page) as image:
        picture = np.asarray(image.convert("RGB"))
    fig, axes = plt.subplots(1, len(shown), figsize=(3.2 * len(shown), 4.4), squeeze=False)
    for ax, (name, order) in zip(axes[0], shown.items(), strict=True):
        ax.imshow(picture)
        right = sum(int(a == b) for a, b in zip(order, sample.order, strict=True))
        for panel, position, true in zip(sample.context, order, sample.order, strict=True):
            x1, y1, x2, y2 = refs[panel].box
            colour = ANSWER_COLOUR if position == true else WRONG_COLOUR
            ax.add_patch(plt.Rectangle((x1, y1), x2 - x1, y2 - y1, fill=False, edgecolor=colour, linewidth=2))
            ax.text(
                (x1 + x2) / 2,
                (y1 + y2) / 2,
                str(position + 1),
                color="white",
                fontsize=14,
                ha="center",
                va="center",
                bbox=dict(facecolor=colour, alpha=0.85, boxstyle="circle"),
            )
        ax.set_title(f"{name}: {right}/{len(order)} in place", fontsize=8)
        ax.set_xticks([])
        ax.set_yticks([])
    fig.suptitle(title or f"{sample.sample_id} ({sample.direction or 'direction unlabelled'})", fontsize=9)
    fig.tight_layout()
    return fig
