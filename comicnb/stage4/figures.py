"""Notebook 04's and 05's Stage 4 figures: a sample as a researcher reads it (the context, the candidates, the answer
marked), reading orders on the page, accuracy bars beside the baselines, training curves, maps of strip embeddings."""

from __future__ import annotations

import textwrap
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
from PIL import Image

from comicnb.corpus.crops import crop_panels
from comicnb.stage4.results import overall
from comicnb.stage4.tasks import TASKS, Candidate, TaskSample, TaskSet

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


def draw_order_pairs(pairs: Sequence[tuple[TaskSample, dict[str, list[int]]]], refs: dict[int, PanelRef]) -> None:
    """``draw_orders`` of each (sample, orders) pair, shown one after another."""
    for sample, orders in pairs:
        draw_orders(sample, refs, orders)
        plt.show()


# ---------------------------------------------------------------------------------------------- notebook 04's figures


def draw_examples(sets: Mapping[str, TaskSet], refs: dict[int, PanelRef]) -> None:
    """The first sample of each task's set (by task), drawn and shown one after another."""
    for task in TASKS:
        task_set = sets.get(task)
        if task_set is None or not task_set.samples:
            print(f"{task}: no sample")
            continue
        draw_sample(task_set.samples[0], refs)
        plt.show()


def accuracy_bars(table: pd.DataFrame, split: str, colours: Mapping[str, str] | None = None) -> plt.Figure:
    """One panel per task: each method's accuracy on ``split`` (``ALL`` rows of a result table) with its interval,
    chance dotted; ``colours`` by method (grey otherwise)."""
    rows = overall(table)
    rows = rows[rows.split == split]
    tasks = [t for t in TASKS if t in set(rows.task)]
    fig, axes = plt.subplots(1, len(tasks), figsize=(2.7 * len(tasks), 3.6), sharey=True, squeeze=False)
    for ax, task in zip(axes[0], tasks):
        part = rows[rows.task == task]
        colour = [(colours or {}).get(m, "tab:grey") for m in part.method]
        error = [part.accuracy - part.low, part.high - part.accuracy]
        ax.bar(range(len(part)), part.accuracy, color=colour, yerr=error, capsize=2)
        ax.set_xticks(range(len(part)), part.method, rotation=75, fontsize=7)
        ax.axhline(float(part.chance.iloc[0]), color="black", linestyle=":", linewidth=1)
        ax.set_title(task.replace("_", " "), fontsize=9)
    axes[0][0].set_ylabel(f"{split} accuracy (reading order: exact page order)")
    fig.tight_layout()
    return fig


def training_curves(steps: pd.DataFrame, epochs: pd.DataFrame, tasks: Sequence[str]) -> plt.Figure:
    """Each task's training loss (running mean) by step, and its validation accuracy by epoch (0: untrained)."""
    fig, (loss_ax, acc_ax) = plt.subplots(1, 2, figsize=(12, 3.6))
    for task in tasks:
        column = f"loss_{task}"
        if column in steps:
            series = steps[column].dropna()
            loss_ax.plot(series.index, series.rolling(max(1, len(series) // 20), min_periods=1).mean(), label=task)
        if f"val_{task}" in epochs:
            acc_ax.plot(epochs.epoch, epochs[f"val_{task}"], marker="o", label=task)
    loss_ax.set(xlabel="step", ylabel="task loss (running mean)", title="training loss per task")
    acc_ax.set(xlabel="epoch", ylabel="validation accuracy", title="validation accuracy per task (epoch 0: untrained)")
    for ax in (loss_ax, acc_ax):
        ax.legend(fontsize=7, ncol=2)
    fig.tight_layout()
    return fig


PLATEAU_TOLERANCE = 0.005  # a rise of mean validation accuracy smaller than this is not an improvement


def learning_curve(epochs: pd.DataFrame, samples_per_epoch: int, metric: str = "val_mean_accuracy") -> pd.DataFrame:
    """(epoch, samples seen, ``metric``) of a trainer's epoch history (epoch 0: untrained, 0 samples)."""
    curve = epochs[["epoch", metric]].dropna().copy()
    curve.insert(1, "samples_seen", curve.epoch * samples_per_epoch)
    return curve.reset_index(drop=True)


def plateau(curve: pd.DataFrame, metric: str = "val_mean_accuracy", tolerance: float = PLATEAU_TOLERANCE) -> dict:
    """Whether training stopped improving: ``improving`` when the last epoch is the best and rose by more than
    ``tolerance`` over the one before (train longer), else the epoch it stopped at."""
    values = curve[metric].to_numpy()
    best = int(values.argmax())
    rising = len(values) > 1 and best == len(values) - 1 and values[-1] - values[-2] > tolerance
    return dict(
        best_epoch=int(curve.epoch.iloc[best]),
        best=float(values[best]),
        last_epoch=int(curve.epoch.iloc[-1]),
        samples_at_best=int(curve.samples_seen.iloc[best]),
        improving=bool(rising),
    )


def plateau_line(name: str, verdict: dict) -> str:
    """One sentence on a model's learning curve."""
    head = f"{name}: best mean validation accuracy {verdict['best']:.3f} at epoch {verdict['best_epoch']}"
    head += f" ({verdict['samples_at_best']:,} training samples seen)"
    if verdict["improving"]:
        return head + f"; still rising at the last epoch ({verdict['last_epoch']}): train longer"
    return head + f"; no better in the epochs after it (to epoch {verdict['last_epoch']}): it has stopped improving"


def learning_curves(curves: Mapping[str, pd.DataFrame], metric: str = "val_mean_accuracy") -> plt.Figure:
    """Mean validation accuracy against training samples seen, one line per model (the main model in red)."""
    fig, ax = plt.subplots(figsize=(6.5, 3.6))
    for name, curve in curves.items():
        colour = "tab:red" if name == "stage4" else None
        ax.plot(curve.samples_seen, curve[metric], marker="o", label=name, color=colour)
    ax.set(xlabel="training samples seen", ylabel="mean validation accuracy", title="learning curves")
    ax.legend(fontsize=8)
    fig.tight_layout()
    return fig
