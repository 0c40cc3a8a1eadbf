"""Does a task need the sequence, and does a model read it? Accuracy when the context is changed.

Every sample of a task set is scored again with its context (the panels a model is given before the answer):

- ``given``: as built;
- ``shuffled``: the same panels in another order (panel picking keeps its masked place where it was);
- ``nearest``: only the panel nearest the answer (the one before it; panel picking: the one before the masked place,
  or after it when the place is the first);
- ``other_page``: as many panels, in reading order, of another page of the same book that holds none of the
  sample's panels (a sample whose book has no such page is skipped and counted);
- ``removed``: no context at all.

Candidates, captions and the answer panel are never changed, so a drop from ``given`` is what the context was worth.
A task whose accuracy does not move under any change does not test the sequence (a model answers from the
candidates alone), whatever the model; a task that moves for Stage 4 but not for the no-transformer ablation is one
the transformer reads. Caption relevance has no context (``NO_CONTEXT``). Reading order's context is the page itself,
so it is changed differently (``ORDER_CONDITIONS``): its panels' content removed (boxes only) or its boxes removed
(content only), which says whether the order is read from the layout or from the story.

Differences are paired (the same samples) with a bootstrap interval that resamples books.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import torch
from torch import Tensor

from comicnb.metrics import MIN_BOOKS, accuracy_interval
from comicnb.stage4 import probes
from comicnb.stage4.audit import audit, leaks
from comicnb.stage4.baselines import run_baselines
from comicnb.stage4.batches import BatchBuilder, reduced_builders
from comicnb.stage4.config import MAIN
from comicnb.stage4.model import Stage4SequenceModel
from comicnb.stage4.results import READING_ORDER, sample_frame
from comicnb.stage4.scoring import builder_for, load_stage4_model, predict_sets, trained_models
from comicnb.stage4.tasks import TaskSample, TaskSet, read_manifest, task_dir
from comicnb.stage4.view import RunView

CONDITIONS = ("given", "shuffled", "nearest", "other_page", "removed")
ORDER_CONDITIONS = ("given", "content_removed", "layout_removed")
CONDITION_TITLES = {
    "given": "context as given",
    "shuffled": "context shuffled",
    "nearest": "only the panel nearest the answer",
    "other_page": "context from another page of the same book",
    "removed": "no context",
    "content_removed": "panels' content removed (boxes only)",
    "layout_removed": "panels' boxes removed (content only)",
}
NO_CONTEXT = ("caption_relevance",)  # tasks whose samples have no context to change
DIAGNOSED = ("no_transformer",)  # ablations diagnosed beside the main model
COLUMNS = ["method", "task", "condition", "n", "skipped", "accuracy", "low", "high", "lost", "lost_low", "lost_high"]


@dataclass
class Diagnostics:
    """Per-sample correctness under every condition (``samples``: SAMPLE_COLUMNS of the results plus ``condition``
    and ``context_length``) and the samples each condition had to skip, per task."""

    samples: pd.DataFrame
    skipped: dict[tuple[str, str], int]


# --------------------------------------------------------------------------------------------- changed contexts


def book_pages(view: RunView) -> dict[str, list[int]]:
    """book -> its store pages that have panels, in store order."""
    pages = view.split_pages()
    books = view.page_labels(pages).book_id.to_numpy()
    found: dict[str, list[int]] = {}
    for page, book in zip(pages, books):
        found.setdefault(str(book), []).append(int(page))
    return found


def page_panels(view: RunView, page: int) -> list[int]:
    """Flat ids of a page's stored panels, in reading order (store slot order)."""
    slots = np.flatnonzero(view.modality_masks[page].any(axis=-1))
    return [page * view.max_panels + int(slot) for slot in slots]


def changed_sample(
    sample: TaskSample, condition: str, rng: np.random.Generator, view: RunView, books: Mapping[str, list[int]]
) -> TaskSample | None:
    """The sample with its context changed by ``condition`` (CONDITIONS); None where it cannot be (other_page with no
    other page in the book). Candidates, answer, caption and text rows are the sample's own."""
    context, slot = list(sample.context), sample.slot
    if condition == "given":
        return sample
    if condition == "shuffled":
        if len(context) > 1:
            order = rng.permutation(len(context))
            while np.array_equal(order, np.arange(len(context))):
                order = rng.permutation(len(context))
            context = [context[i] for i in order]
    elif condition == "nearest":
        if slot is None:
            context = context[-1:]
        elif context:
            context, slot = ([context[slot - 1]], 1) if slot > 0 else ([context[0]], 0)
    elif condition == "other_page":
        used = {int(p) for p in view.locate([*context, *(c.panel_id for c in sample.candidates)])[0]}
        others = [p for p in books.get(str(sample.book_id), []) if p not in used]
        if not others:
            return None
        panels = page_panels(view, int(rng.choice(others)))
        start = int(rng.integers(0, max(1, len(panels) - len(context) + 1)))
        context = panels[start : start + len(context)]
        slot = None if slot is None else min(slot, len(context))
    elif condition == "removed":
        context, slot = [], (None if slot is None else 0)
    else:
        raise ValueError(f"unknown condition {condition!r}: one of {', '.join(CONDITIONS)}")
    return replace(sample, context=context, slot=slot)


def changed_set(
    task_set: TaskSet, condition: str, view: RunView, seed: int = 0, books: Mapping[str, list[int]] | None = None
) -> tuple[TaskSet, int]:
    """(the set with every sample's context changed, samples skipped); the same seed draws the same changes."""
    books = book_pages(view) if books is None else books
    rng = np.random.default_rng([seed, CONDITIONS.index(condition)])
    changed = [changed_sample(s, condition, rng, view, books) for s in task_set.samples]
    kept = [s for s in changed if s is not None]
    return replace(task_set, samples=kept), len(changed) - len(kept)


class ChangedBuilder:
    """A BatchBuilder whose reading-order batches lose their panels' content or their boxes (ORDER_CONDITIONS)."""

    def __init__(self, builder: BatchBuilder, condition: str) -> None:
        if condition not in ORDER_CONDITIONS:
            raise ValueError(f"unknown reading-order condition {condition!r}: one of {', '.join(ORDER_CONDITIONS)}")
        self.builder, self.condition = builder, condition

    def collate(self, task_set: TaskSet, samples: Sequence[TaskSample] | None = None) -> dict[str, Tensor]:
        batch = self.builder.collate(task_set, samples)
        if self.condition == "content_removed":
            batch["context"] = torch.zeros_like(batch["context"])
        elif self.condition == "layout_removed":
            batch["boxes"] = torch.zeros_like(batch["boxes"])
        return batch


# ------------------------------------------------------------------------------------------------------ scoring


def diagnose(
    models: Mapping[str, tuple[Stage4SequenceModel, BatchBuilder]],
    sets: Mapping[str, TaskSet],
    view: RunView,
    seed: int = 0,
    batch_size: int = 64,
) -> Diagnostics:
    """Every model (name -> (model, its batch builder)) on every set under every condition that applies to it."""
    books = book_pages(view)
    frames, skipped = [], {}
    for task, task_set in sets.items():
        if task in NO_CONTEXT or not len(task_set):
            continue
        conditions = ORDER_CONDITIONS if task == READING_ORDER else CONDITIONS
        for condition in conditions:
            if task == READING_ORDER:
                changed, skips = task_set, 0
            else:
                changed, skips = changed_set(task_set, condition, view, seed, books)
            skipped[(task, condition)] = skips
            if not len(changed):
                continue
            lengths = dict(zip((s.sample_id for s in changed.samples), (len(s.context) for s in changed.samples)))
            for name, (model, builder) in models.items():
                used = ChangedBuilder(builder, condition) if task == READING_ORDER else builder
                frame = sample_frame(predict_sets(model, [changed], used, batch_size, name))  # type: ignore[arg-type]
                frame["condition"] = condition
                frame["context_length"] = frame.sample_id.map(lengths)
                frames.append(frame)
    samples = pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()
    return Diagnostics(samples, skipped)


def run_models(
    run_dir: str | Path, view: RunView, names: Sequence[str] = (MAIN, *DIAGNOSED), which: str = "best"
) -> dict[str, tuple[Stage4SequenceModel, BatchBuilder]]:
    """The run's trained models of these names (those it has), each with the batch builder of its inputs: what
    ``diagnose`` and ``attention_figures`` take, loaded once."""
    found = trained_models(run_dir, which)
    models: dict[str, tuple[Stage4SequenceModel, BatchBuilder]] = {}
    for name in names:
        if name in found:
            model, config = load_stage4_model(found[name])
            models[name] = (model, builder_for(view, config))
    return models


def diagnostic_table(
    diagnostics: Diagnostics, level: float = 0.95, n_resamples: int = 2000, seed: int = 0
) -> pd.DataFrame:
    """One row per method, task and condition (COLUMNS): accuracy with its book-bootstrap interval, and ``lost``,
    the accuracy lost against ``given`` on the same samples, with a paired book-bootstrap interval."""
    samples = diagnostics.samples
    rows = []
    for (method, task), part in samples.groupby(["method", "task"], sort=False):
        given = part[part.condition == "given"].set_index("sample_id")
        for condition, chosen in part.groupby("condition", sort=False):
            accuracy, low, high = accuracy_interval(
                chosen.correct.to_numpy(), level, "bootstrap", chosen.book_id.to_numpy(), n_resamples, seed
            )
            row = dict(method=method, task=task, condition=condition, n=len(chosen), accuracy=accuracy)
            row.update(low=low, high=high, skipped=diagnostics.skipped.get((task, condition), 0))
            if condition != "given":
                paired = chosen.set_index("sample_id").join(given.correct.rename("given"), how="inner")
                drop = (paired.given - paired.correct).to_numpy()
                point, drop_low, drop_high = accuracy_interval(
                    drop, level, "bootstrap", paired.book_id.to_numpy(), n_resamples, seed
                )
                row.update(lost=point, lost_low=drop_low, lost_high=drop_high)
            rows.append(row)
    return pd.DataFrame(rows, columns=COLUMNS)


def moved(row: pd.Series) -> bool:
    """Whether a condition changed accuracy beyond its paired interval (the interval of ``lost`` excludes zero)."""
    return bool(pd.notna(row.lost) and (row.lost_low > 0 or row.lost_high < 0))


def sequence_verdicts(
    table: pd.DataFrame, main: str = MAIN, ablation: str = "no_transformer", books: Mapping[str, int] | None = None
) -> list[str]:
    """One sentence per task: which changes of context move its accuracy (signed: the change in accuracy) for the
    main model and the no-transformer ablation, and what that says. ``books``: held-out books per task; below
    MIN_BOOKS no verdict is drawn (the intervals that resample books are too narrow to trust)."""
    lines = []
    for task, part in table.groupby("task", sort=False):
        said, lower, higher = [], {}, {}
        for method in (main, ablation):
            rows = part[(part.method == method) & (part.condition != "given")]
            if rows.empty:
                continue
            hits = [r for _, r in rows.iterrows() if moved(r)]
            lower[method] = [r.condition for r in hits if r.lost > 0]
            higher[method] = [r.condition for r in hits if r.lost < 0]
            given = part[(part.method == method) & (part.condition == "given")].accuracy
            head = f"{method} {given.iloc[0]:.3f} as given" if len(given) else method
            changes = ", ".join(f"{r.condition} {-r.lost:+.3f}" for r in hits) or "none"
            said.append(f"{head}; moved by {changes}")
        if not said:
            continue
        count = (books or {}).get(task)
        if count is not None and count < MIN_BOOKS:
            verdict = f"no verdict: {count} held-out books (fewer than {MIN_BOOKS})"
        elif task == READING_ORDER:
            layout = "layout_removed" in lower.get(main, [])
            content = "content_removed" in lower.get(main, [])
            verdict = f"read {'from the layout' if layout else 'without the layout'}"
            verdict += ", and from the panels' content" if content else ", not from the panels' content"
        elif not any(lower.values()) and not any(higher.values()):
            verdict = "does not test the sequence: no change of context moves it, so no sequence model can help"
        elif "shuffled" in lower.get(main, []):
            reads = "shuffled" not in lower.get(ablation, [])
            verdict = "reads the sequence: its order matters to the main model" + (
                " and not to the ablation" if reads else ""
            )
        elif lower.get(main):
            verdict = "uses its context, not its order: shuffling does not move it"
        elif higher.get(main):
            verdict = "the context misleads the model: it does better with less of it"
        else:
            verdict = "the context matters to the ablation only"
        lines.append(f"{task}: {verdict} ({'; '.join(said)})")
    return lines


def held_out_books(diagnostics: Diagnostics) -> dict[str, int]:
    """Held-out books per task among the diagnosed samples."""
    samples = diagnostics.samples
    return samples.groupby("task").book_id.nunique().to_dict() if len(samples) else {}


def by_context_length(diagnostics: Diagnostics, condition: str = "given") -> pd.DataFrame:
    """Accuracy by the number of context panels (samples as given): task x length rows, one column per method."""
    samples = diagnostics.samples
    chosen = samples[(samples.condition == condition) & (samples.task != READING_ORDER)]
    table = chosen.pivot_table(index=["task", "context_length"], columns="method", values="correct", aggfunc="mean")
    table.insert(0, "n", chosen.groupby(["task", "context_length"]).sample_id.nunique())
    return table


# ---------------------------------------------------------------------------------------------------- attention


@torch.no_grad()
def query_attention(
    model: Stage4SequenceModel, builder: BatchBuilder, task_set: TaskSet, samples: Sequence[TaskSample]
) -> list[np.ndarray]:
    """Per sample, the scored slot's attention over its sequence (context panels, caption, query slot) averaged over
    heads and layers; [] for a model without a transformer."""
    if model.encoder is None or not samples:
        return []
    batch = builder.collate(task_set, samples)
    maps, index, valid = model.attention_maps(task_set.task, batch)  # (B, layers, T, T), (B,), (B, T)
    rows = maps.mean(dim=1)[torch.arange(len(index)), index]  # (B, T)
    return [row[mask].cpu().numpy() for row, mask in zip(rows, valid)]


def token_names(sample: TaskSample) -> list[str]:
    """Names of a sample's sequence tokens as ``query_attention`` returns them (padding dropped)."""
    names = [f"panel {i + 1}" for i in range(len(sample.context))]
    if sample.slot is not None:
        names.insert(sample.slot, "masked place")
    if sample.query_text:
        names.append("caption")
    if sample.slot is None:
        names.append("query slot")
    return names


def draw_attention(rows: Sequence[np.ndarray], samples: Sequence[TaskSample], title: str) -> plt.Figure:
    """One bar chart per sample: where the scored slot attends (mean over heads and layers)."""
    figure, axes = plt.subplots(1, len(rows), figsize=(3.2 * len(rows), 2.6), squeeze=False)
    for ax, row, sample in zip(axes[0], rows, samples):
        names = token_names(sample)[: len(row)]
        ax.bar(range(len(row)), row, color="tab:red")
        ax.set_xticks(range(len(row)), names, rotation=60, ha="right", fontsize=7)
        ax.set_ylim(0, 1)
        ax.set_title(sample.sample_id, fontsize=8)
    axes[0][0].set_ylabel("attention")
    figure.suptitle(title, fontsize=10)
    figure.tight_layout()
    return figure


def summary(table: pd.DataFrame) -> list[dict[str, Any]]:
    """The table as records for metrics.json."""
    return table.replace({np.nan: None}).to_dict("records")


def attention_figures(
    models: Mapping[str, tuple[Stage4SequenceModel, BatchBuilder]],
    sets: Mapping[str, TaskSet],
    tasks: Sequence[str] = ("panel_picking", "visual_closure", "text_closure"),
    per_task: int = 4,
) -> list[plt.Figure]:
    """For the first ``per_task`` samples of each task, where the main model's scored slot attends (one figure per
    task); none where ``models`` (``run_models``) has no main model or it has no transformer."""
    if MAIN not in models:
        return []
    model, builder = models[MAIN]
    drawn = []
    for task in tasks:
        if task not in sets or not len(sets[task]):
            continue
        chosen = sets[task].samples[:per_task]
        rows = query_attention(model, builder, sets[task], chosen)
        if rows:
            title = f"{task.replace('_', ' ')}: where the scored slot attends (mean over heads and layers)"
            drawn.append(draw_attention(rows, chosen, title))
    return drawn


# ------------------------------------------------------------------------------------------------ long-range probes


def score_probes(
    run_dir: str | Path,
    split: str,
    view: RunView,
    models: Mapping[str, tuple[Stage4SequenceModel, BatchBuilder]],
    train_sets: Sequence[TaskSet],
    seed: int = 0,
    level: float = 0.95,
    n_resamples: int = 2000,
) -> tuple[pd.DataFrame, list[str], pd.DataFrame]:
    """The long-range probes of ``split`` (``comicnb.stage4.probes``): every baseline (learned ones fitted on
    ``train_sets``) and every model under every change of context, as ``probes.probe_table`` and its verdicts, and
    the audit of the probe sets (``audit.audit``: does anything readable off a candidate besides the story pick the
    answer?); empty tables and the reason where the split has no probes."""
    folder = task_dir(run_dir, split)
    manifest = read_manifest(folder)
    sets = probes.read_probes(folder, manifest)
    if not sets:
        entry = manifest.get("probes")
        why = entry.get("reason", "no samples") if entry else "the task sets predate them: rebuild them (notebook 04)"
        return pd.DataFrame(), [f"no long-range probes for {split}: {why}"], pd.DataFrame()
    baselines = sample_frame(run_baselines([*train_sets, *sets.values()], view))
    diagnosis = diagnose(models, sets, view, seed)
    table = probes.probe_table(baselines, diagnosis.samples, level=level, n_resamples=n_resamples, seed=seed)
    audited = audit(sets, view, train_sets)
    found = [
        f"the {r.task} probe's answer is picked by {r.method} ({r.accuracy:.3f}, chance {r.chance:.3f}): a leak"
        for r in leaks(audited).itertuples()
    ]
    clean = "no readable property of a candidate (shape, text length, balloons, medians, slot, vision) picks a probe"
    return table, [*probes.probe_verdicts(table), *(found or [clean])], audited


# ------------------------------------------------------------------------------------------------ modalities


def modality_reliance(
    models: Mapping[str, tuple[Stage4SequenceModel, BatchBuilder]],
    sets: Mapping[str, TaskSet],
    view: RunView,
    batch_size: int = 64,
) -> pd.DataFrame:
    """What each content modality is worth to a trained model, per task: its accuracy with every modality, without
    the images, and without the texts (every panel, context and candidates alike, keeps its box); one row per model,
    input and task (``accuracy``: the mean expected hit; reading order: exact pages). Only models trained on every
    modality are scored."""
    frames, reduced = [], None
    for name, (model, builder) in models.items():
        if len(builder.modalities) < 3:
            continue
        reduced = reduced or {f"without {m}": b for m, b in reduced_builders(view).items()}  # the store re-fused once
        balloons = builder.balloons is not None  # the reduced inputs keep them where the model reads them
        inputs = {"everything": builder, **{k: b.with_balloons(balloons) for k, b in reduced.items()}}
        for label, used in inputs.items():
            frame = sample_frame(predict_sets(model, [s for s in sets.values() if len(s)], used, batch_size, name))
            frame["input"] = label
            frames.append(frame)
    if not frames:
        return pd.DataFrame()
    samples = pd.concat(frames, ignore_index=True)
    return samples.groupby(["method", "input", "task"], sort=False).correct.mean().rename("accuracy").reset_index()
