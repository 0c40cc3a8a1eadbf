"""Stage 4 training: redrawn task samples -> interleaved task batches -> weighted losses -> checkpoints, via Accelerate.

``python -m comicnb train stage4`` and notebook 04 both call :func:`train_stage4`. Every epoch redraws each task's
training samples from the training books (``samplers.training_samples``: new negatives, answer slots, shuffles),
cuts each task's draw into batches of ``batch_size`` samples and interleaves the batches of all tasks in a seeded
order: one step, one task. The step's loss is that task's weighted loss plus ``strip_weight`` times the strip
term over a batch of training pages. After each epoch the model is scored on the fixed validation sets
(``<run>/tasks/val/``): accuracy per task (reading order: the exact page order, and pairwise) and their mean, which
picks ``best_model.pt``.

Determinism, as in Stage 3 (``comicnb.stage3.trainer``): an epoch's draws and batch order are functions of
``(seed, epoch)`` only, and each step's torch draws (dropout) of ``(seed, step)``; after each step the generator is
seeded for the next, so its state between steps is the next step's seed. A checkpoint stores it with the step; a
resumed run redraws the checkpoint's epoch, skips the steps already taken (the offset) and continues exactly as
the uninterrupted run would. The number of samples per task is fixed by the first epoch's draw (later draws are cut
or topped up to it), so every epoch has the same number of steps and the learning-rate schedule is known up front.
"""

from __future__ import annotations

import math
import time
import warnings
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from accelerate import Accelerator, DistributedDataParallelKwargs
from torch import Tensor, nn

from comicnb.checkpoint import (
    StageCheckpoints,
    load_checkpoint,
    resume_conflicts,
    set_rng_state,
)
from comicnb.loop import EpochLoop, History
from comicnb.precision import accelerate_mixed_precision
from comicnb.schedule import epoch_batches, shard_batches
from comicnb.seed import isolated_rng, set_seed
from comicnb.stage4.baselines import ALL, BaselineResult, order_agreement, summarize
from comicnb.stage4.batches import SampleEncoder
from comicnb.stage4.config import (
    ABLATIONS,
    RESUMABLE_CHANGES,
    Stage4TrainConfig,
    config_dicts,
    split_stage4_settings,
)
from comicnb.stage4.model import Stage4ModelConfig, Stage4SequenceModel
from comicnb.stage4.samplers import TaskContext, TaskUnavailable, load_context, training_samples
from comicnb.stage4.tasks import MANIFEST, TASKS, TaskSample, TaskSet, read_manifest, read_task_set, task_dir

STAGE = "stage4"
VAL_SEED = 1234  # fixed draws for validation, whatever the training seed
BEST_METRIC = "val_mean_accuracy"  # mean over the validated tasks of their accuracy (reading order: exact order)
READING_ORDER = "reading_order"
ORDER_STREAM = len(TASKS)  # the generator key of an epoch's batch order, beside the tasks' draw keys 0..6
# What the fixed sets' manifest records of the store; a set built from another store scores other inputs.
PROVENANCE_KEYS = ("store_checkpoint_sha256", "store_metadata_sha256", "truth_sha256")
TASKS_COMMAND = "`python -m comicnb tasks --run-dir {run}`"


def checkpoints(run_dir: str | Path, ablation: str | None = None) -> StageCheckpoints:
    """The Stage 4 checkpoint files of a run: ``<run_dir>/stage4/checkpoint.pt`` and ``best_model.pt``; an
    ablation's (``config.ABLATIONS``) under ``<run_dir>/stage4/ablations/<name>/``."""
    if ablation is None:
        return StageCheckpoints(Path(run_dir), STAGE)
    if ablation not in ABLATIONS:
        raise ValueError(f"unknown ablation {ablation!r}: one of {', '.join(ABLATIONS)}")
    return StageCheckpoints(Path(run_dir), f"{STAGE}/ablations/{ablation}")


def ablation_settings(settings: Mapping[str, Any], ablation: str | None) -> dict[str, Any]:
    """The settings of an ablation: the main model's with the ablation's changes (the settings as given for None)."""
    if ablation is not None and ablation not in ABLATIONS:
        raise ValueError(f"unknown ablation {ablation!r}: one of {', '.join(ABLATIONS)}")
    return {**settings, **(ABLATIONS[ablation] if ablation else {})}


class NonFiniteLossError(FloatingPointError):
    """A loss that is NaN or infinite: training stops before the step is taken; the message names step and task."""


class TaskSetsMissingError(FileNotFoundError):
    """The fixed validation sets are not built (or were built from another store)."""


class Stage4Trainable(nn.Module):
    """The model with its loss weights, so a distributed wrapper sees one forward that returns the loss terms."""

    def __init__(self, model: Stage4SequenceModel, cfg: Stage4TrainConfig) -> None:
        super().__init__()
        self.model = model
        self.weights = dict(cfg.task_weights)
        self.strip_weight = cfg.strip_weight
        self.strip_temperature = cfg.strip_temperature

    def forward(self, task: str, batch: Mapping[str, Tensor], pages: tuple[Tensor, Tensor] | None) -> dict[str, Tensor]:
        """``task_loss``, ``strip`` (where pages are given) and their weighted ``total``."""
        task_loss = self.model.task_loss(task, batch)
        terms = {"task_loss": task_loss}
        total = self.weights[task] * task_loss
        if pages is not None and self.strip_weight > 0:
            strip = self.model.strip_loss(pages[0], pages[1], temperature=self.strip_temperature)
            terms["strip"] = strip
            total = total + self.strip_weight * strip
        terms["total"] = total
        return terms


@dataclass
class EpochPlan:
    """One epoch's training draws and the order of its steps."""

    sets: dict[str, TaskSet]  # each task's samples of this epoch (exactly the fixed count)
    steps: list[tuple[str, list[int]]]  # (task, sample indices into sets[task]) of each step, in order


# ---------------------------------------------------------------------------------------------------- the loop


class Stage4Trainer(EpochLoop):
    """Trains a Stage4SequenceModel on redrawn training samples and scores it on the fixed validation sets."""

    def __init__(
        self,
        model: Stage4SequenceModel,
        cfg: Stage4TrainConfig,
        ctx: TaskContext,
        encoder: SampleEncoder,
        val_sets: Mapping[str, TaskSet],
        data: Mapping[str, Any] | None = None,
    ) -> None:
        set_seed(cfg.seed)
        self.cfg, self.ctx, self.encoder = cfg, ctx, encoder
        self.val_sets = dict(val_sets)
        self.data = dict(data or {})  # what the run trains on (store hashes), checked on resume
        self.accelerator = Accelerator(
            mixed_precision=accelerate_mixed_precision(cfg.precision),
            # One task a step: the other tasks' heads get no gradient, and DDP must not wait for them.
            kwargs_handlers=[DistributedDataParallelKwargs(find_unused_parameters=True)],
        )
        self.trainable = Stage4Trainable(model, cfg)
        self.trainable.to(self.accelerator.device)
        self.train_pages = [int(p) for p in encoder.page_indices("train")]
        self.skipped: dict[str, str] = {}  # task -> why it is not trained
        self.counts: dict[str, int] = {}  # task -> samples per epoch, fixed by the first epoch's draw
        self.plans: dict[int, EpochPlan] = {}
        with isolated_rng():  # drawing the first epoch (and encoding its new texts) draws nothing from torch's stream
            first = self.draw(0)
        self.counts = {task: len(s) for task, s in first.items()}
        if not self.counts:
            reasons = "; ".join(f"{t}: {why}" for t, why in self.skipped.items()) or "every task weight is 0"
            raise ValueError(f"no Stage 4 task gives training samples ({reasons})")
        self.plans[0] = self.plan(0, first)
        self.steps_per_epoch = math.ceil(len(self.plans[0].steps) / self.accelerator.num_processes)
        self.start_loop(self.trainable)
        self.last_validation = pd.DataFrame()

    @property
    def model(self) -> Stage4SequenceModel:
        """The sequence model being trained."""
        return self.trainable.model

    # ------------------------------------------------------------------------------------------------ the draws

    def draw(self, epoch: int) -> dict[str, TaskSet]:
        """Each trained task's samples of ``epoch``, from its own generator keyed by (seed, epoch, task): adding or
        leaving out a task changes no other task's draw. After the first epoch each draw is cut to the first epoch's
        count by a seeded subset, or topped up by seeded repeats, so every epoch takes the same steps."""
        first = not self.counts
        sets = {}
        for task in self.cfg.active_tasks if first else tuple(self.counts):
            rng = np.random.default_rng([self.cfg.seed, epoch, TASKS.index(task)])
            try:
                drawn = training_samples(self.ctx, task, rng, limit=self.cfg.train_samples or None)
            except TaskUnavailable as why:
                if not first:
                    raise
                self.skipped[task] = str(why)
                continue
            if not len(drawn):
                if not first:  # the first epoch had samples: the sampler, not the corpus, changed
                    raise RuntimeError(f"{task} gave training samples in the first epoch but none in epoch {epoch + 1}")
                self.skipped[task] = "no training samples in the training split"
                continue
            want = self.counts.get(task, len(drawn))
            if len(drawn) != want:
                keep = (
                    np.sort(rng.choice(len(drawn), want, replace=False))
                    if len(drawn) > want
                    else np.concatenate([np.arange(len(drawn)), rng.choice(len(drawn), want - len(drawn))])
                )
                drawn = TaskSet(task, drawn.split, [drawn.samples[i] for i in keep], drawn.texts)
            sets[task] = drawn
        if first and self.skipped and self.accelerator.is_main_process:
            for task, why in self.skipped.items():
                warnings.warn(f"Stage 4: {task} is not trained: {why}", stacklevel=3)
        return sets

    def plan(self, epoch: int, sets: Mapping[str, TaskSet] | None = None) -> EpochPlan:
        """The epoch's draws and step order: each task's samples permuted and cut into batches, then every batch of
        every task in one seeded order."""
        if epoch in self.plans:
            return self.plans[epoch]
        if sets is None:
            with isolated_rng():
                sets = self.draw(epoch)
        rng = np.random.default_rng([self.cfg.seed, epoch, ORDER_STREAM])
        steps: list[tuple[str, list[int]]] = []
        for task, task_set in sets.items():
            order = rng.permutation(len(task_set)).tolist()
            size = self.cfg.batch_size
            steps.extend((task, order[i : i + size]) for i in range(0, len(order), size))
        steps = [steps[i] for i in rng.permutation(len(steps))]
        self.plans = {epoch: EpochPlan(dict(sets), steps)}  # only the current epoch's draws are kept
        return self.plans[epoch]

    def strip_pages(self, epoch: int, index: int) -> list[int] | None:
        """The training pages of the strip term at step ``index`` of ``epoch``: ``batch_size`` pages in a seeded
        order of the epoch, wrapping around, so every step has a full batch whatever the number of pages."""
        if self.cfg.strip_weight <= 0 or len(self.train_pages) < 2:
            return None
        order = epoch_batches(len(self.train_pages), len(self.train_pages), self.cfg.seed, epoch)[0]
        size = min(self.cfg.batch_size, len(order))
        start = index * size
        return [self.train_pages[order[(start + j) % len(order)]] for j in range(size)]

    # ------------------------------------------------------------------------------------------------ training

    def train(self, until_step: int | None = None, files: StageCheckpoints | None = None) -> History:
        """Train to the end (or to ``until_step``), validating after each epoch.

        With ``files`` the last checkpoint is written after every epoch (and every ``checkpoint_every`` steps), and
        ``best_model.pt`` whenever the mean validation accuracy improves; an interrupted run resumes (``resume``)
        from the last one and still ends exactly where the uninterrupted run would.
        """
        stop = self.total_steps if until_step is None else min(until_step, self.total_steps)
        set_rng_state(self.rng)
        if self.step == 0 and not self.history.epochs:  # the untrained model: the no-learning reference
            scalars = self.validate()
            self.history.epochs.append({"epoch": 0, "step": 0, "train_seconds": 0.0, **scalars})
        while self.step < stop:
            epoch, offset = divmod(self.step, self.steps_per_epoch)
            start = time.perf_counter()  # the epoch's time includes its draw (the first epoch's was drawn at init)
            plan = self.plan(epoch)
            rank, world = self.accelerator.process_index, self.accelerator.num_processes
            mine = shard_batches(plan.steps, rank, world)
            if len(mine) != self.steps_per_epoch:  # draw() keeps the counts fixed; a mismatch would never end
                raise RuntimeError(f"epoch {epoch + 1} has {len(mine)} steps, not {self.steps_per_epoch}")
            for index in range(offset, min(len(mine), offset + stop - self.step)):
                task, rows = mine[index]
                self.train_step(epoch, task, plan.sets[task], rows, self.strip_pages(epoch, index * world + rank))
                if files is not None and self.mid_epoch_checkpoint_due():
                    self.save(files.last)
            seconds = time.perf_counter() - start
            if self.step % self.steps_per_epoch == 0:
                self.end_epoch(epoch + 1, seconds, files)
        if files is not None:
            self.save(files.last)
        return self.history

    def end_epoch(self, epoch: int, seconds: float, files: StageCheckpoints | None) -> None:
        """Validate, record the epoch, and write the last checkpoint and, when the figure improved, the best."""
        self.record_epoch(epoch, seconds, self.validate(), BEST_METRIC, files)

    def batch_on_device(self, task_set: TaskSet, samples: Sequence[TaskSample]) -> dict[str, Tensor]:
        """The samples as model inputs on this process's device."""
        batch = self.encoder.collate(task_set, list(samples))
        return {k: v.to(self.accelerator.device) if isinstance(v, Tensor) else v for k, v in batch.items()}

    def train_step(
        self, epoch: int, task: str, task_set: TaskSet, rows: Sequence[int], pages: Sequence[int] | None
    ) -> dict[str, Any]:
        """One optimisation step on one task batch (and the strip term); its random draws come from the generator
        state seeded for it (see the module). A non-finite loss stops the run before the step is taken."""
        self.wrapped.train()
        batch = self.batch_on_device(task_set, [task_set.samples[i] for i in rows])
        page_inputs = None
        if pages is not None:
            embeddings, mask = self.encoder.pages(list(pages))
            page_inputs = (embeddings.to(self.accelerator.device), mask.to(self.accelerator.device))
        with self.accelerator.autocast():
            terms = self.wrapped(task, batch, page_inputs)
        values = {name: float(value.detach()) for name, value in terms.items()}
        if not math.isfinite(values["total"]):
            raise NonFiniteLossError(non_finite_message(self.step + 1, epoch + 1, task, values))
        self.optimise(terms["total"])
        logged = {
            "step": self.step,
            "epoch": epoch + 1,
            "task": task,
            "lr": self.scheduler.get_last_lr()[0],
            f"loss_{task}": values["task_loss"],
            **values,
        }
        self.history.steps.append(logged)
        return logged

    # ------------------------------------------------------------------------------------------------ validation

    @torch.no_grad()
    def validate(self) -> dict[str, float]:
        """Accuracy on every fixed validation set (deterministic: eval mode, fixed draws), and their mean."""
        if not self.val_sets:
            return {}
        with isolated_rng():
            torch.manual_seed(VAL_SEED)
            self.trainable.eval()
            with self.accelerator.autocast():
                table = evaluate(self.model, self.val_sets, self.encoder, self.cfg.eval_batch_size)
        self.last_validation = table
        return validation_scalars(table)

    # ------------------------------------------------------------------------------------------------ checkpoints

    def configs(self) -> dict[str, dict]:
        """The ``config`` entry of this run's checkpoints."""
        return config_dicts(self.model.cfg, self.cfg)

    def save(self, path: str | Path) -> Path:
        """Write a checkpoint with everything needed to resume and to rebuild the model (atomically)."""
        epoch, offset = divmod(self.step, self.steps_per_epoch)
        checkpoint = dict(
            model_state_dict=self.model.state_dict(),
            config=self.configs(),
            epoch=epoch,
            offset=offset,
            steps_per_epoch=self.steps_per_epoch,
            task_counts=dict(self.counts),
            data=dict(self.data),
            **self.loop_state(),
        )
        return self.write_checkpoint(checkpoint, path)

    def resume(self, checkpoint: Mapping[str, Any] | str | Path) -> None:
        """Continue from a checkpoint of the same run (same store, same configs)."""
        checkpoint = load_checkpoint(checkpoint) if isinstance(checkpoint, (str, Path)) else checkpoint
        differ = resume_conflicts(checkpoint["config"], self.configs(), RESUMABLE_CHANGES)
        differ += [f"data.{k}" for k, v in self.data.items() if checkpoint.get("data", {}).get(k) != v]
        if checkpoint.get("task_counts", self.counts) != self.counts:
            differ.append("training samples per task")
        if differ:
            raise ValueError(
                f"the checkpoint is from another configuration ({', '.join(differ)}); resume with "
                f"the settings and store it was trained with, or start a new run"
            )
        self.model.load_state_dict(checkpoint["model_state_dict"])
        self.restore_loop_state(checkpoint)


def non_finite_message(step: int, epoch: int, task: str, values: Mapping[str, float]) -> str:
    """One line naming the step, the task and which term went non-finite."""
    terms = ", ".join(f"{name} {value:.4g}" for name, value in values.items())
    bad = [name for name, value in values.items() if name != "total" and not math.isfinite(value)]
    which = {"task_loss": f"the {task} loss", "strip": "the strip term"}
    culprit = " and ".join(which.get(b, b) for b in bad) or "the total"
    return (
        f"non-finite Stage 4 loss at step {step} (epoch {epoch}), task {task}: {culprit} ({terms}); the step was "
        f"not taken. Lower lr, keep grad_clip on, or check the store for NaN embeddings"
    )


# ---------------------------------------------------------------------------------------------------- scoring


@torch.no_grad()
def evaluate(
    model: Stage4SequenceModel,
    task_sets: Mapping[Any, TaskSet] | Sequence[TaskSet],
    encoder: SampleEncoder,
    batch_size: int = 64,
    level: float = 0.95,
) -> pd.DataFrame:
    """The model's accuracy on each task set, per task, split and difficulty (and ``all`` where a set has several),
    with Wilson ``level`` intervals: the baselines' table (``baselines.SUMMARY_COLUMNS``), baseline ``stage4``, so
    the two concatenate. Reading order: exact page order as accuracy, plus pairwise accuracy and Kendall tau."""
    return summarize(predict_sets(model, task_sets, encoder, batch_size), level)


@torch.no_grad()
def predict_sets(
    model: Stage4SequenceModel,
    task_sets: Mapping[Any, TaskSet] | Sequence[TaskSet],
    encoder: SampleEncoder,
    batch_size: int = 64,
    name: str = "stage4",
) -> list[BaselineResult]:
    """The model's per-sample predictions and correctness on each (non-empty) task set, as baseline results named
    ``name``."""
    sets = list(task_sets.values()) if isinstance(task_sets, Mapping) else list(task_sets)
    mode = model.training
    model.eval()
    device = next(model.parameters()).device
    results = []
    for task_set in sets:
        if not len(task_set):
            continue
        predictions: list[Any] = []
        for start in range(0, len(task_set), batch_size):
            chunk = task_set.samples[start : start + batch_size]
            batch = encoder.collate(task_set, chunk)
            batch = {k: v.to(device) if isinstance(v, Tensor) else v for k, v in batch.items()}
            predictions.extend(model.predict(task_set.task, batch))
        results.append(model_result(task_set, predictions, name))
    model.train(mode)
    return results


def model_result(task_set: TaskSet, predictions: Sequence[Any], name: str = "stage4") -> BaselineResult:
    """Per-sample correctness of a model's predictions (candidate index, or reading position of each panel)."""
    samples = task_set.samples
    common = dict(
        baseline=name,
        task=task_set.task,
        split=task_set.split,
        sample_ids=[s.sample_id for s in samples],
        difficulty=[s.difficulty for s in samples],
        chance=np.array([s.chance for s in samples], dtype=np.float64),
    )
    if task_set.task == READING_ORDER:
        orders = [np.asarray(p, dtype=np.int64).reshape(-1) for p in predictions]
        measures = np.array([order_agreement(o, s.order or []) for o, s in zip(orders, samples, strict=True)])
        measures = measures.reshape(-1, 3)
        return BaselineResult(
            **common,
            correct=measures[:, 0],
            predictions=[o.tolist() for o in orders],
            scores=[o.astype(np.float64) for o in orders],
            pairwise=measures[:, 1],
            kendall_tau=measures[:, 2],
        )
    picked = [int(p) for p in predictions]
    return BaselineResult(
        **common,
        correct=np.array([float(p == s.answer) for p, s in zip(picked, samples, strict=True)]),
        predictions=picked,
        scores=[np.eye(len(s.candidates))[p] for p, s in zip(picked, samples, strict=True)],
    )


def overall(table: pd.DataFrame) -> pd.DataFrame:
    """One row per task and split: the ``all`` row where a set has several difficulties, else its only row."""
    keys = ["task", "split", "baseline"]
    several = table.groupby(keys).difficulty.transform("size") > 1
    return table[~several | (table.difficulty == ALL)].reset_index(drop=True)


def validation_scalars(table: pd.DataFrame) -> dict[str, float]:
    """``val_<task>`` accuracy (and chance), ``val_reading_order_pairwise``, and ``val_mean_accuracy`` over tasks."""
    scalars: dict[str, float] = {}
    rows = overall(table)
    for row in rows.itertuples(index=False):
        scalars[f"val_{row.task}"] = float(row.accuracy)
        scalars[f"val_{row.task}_chance"] = float(row.chance)
        if row.task == READING_ORDER:
            scalars["val_reading_order_pairwise"] = float(row.pairwise)
    scalars[BEST_METRIC] = float(rows.accuracy.mean()) if len(rows) else math.nan
    return scalars


# ---------------------------------------------------------------------------------------------------- one call


def read_val_sets(run_dir: str | Path, ctx: TaskContext, tasks: Sequence[str], split: str = "val") -> dict:
    """The fixed sets of ``split`` for ``tasks`` (those the corpus could build); a missing or stale set is a
    TaskSetsMissingError naming the command that builds it."""
    folder = task_dir(run_dir, split)
    command = TASKS_COMMAND.format(run=run_dir)
    if not (folder / MANIFEST).is_file():
        raise TaskSetsMissingError(
            f"no Stage 4 {split} task sets in {folder}/: build them with {command} (or notebook 04, part 1)"
        )
    manifest = read_manifest(folder)
    stale = [k for k in PROVENANCE_KEYS if manifest.get(k) != ctx.provenance.get(k)]
    if stale:
        raise TaskSetsMissingError(
            f"the {split} task sets in {folder}/ were built from another store ({', '.join(stale)} differ): "
            f"rebuild them with {command} --overwrite (or notebook 04 with rebuild_tasks=True)"
        )
    entries = manifest.get("tasks", {})
    return {t: read_task_set(folder, t) for t in tasks if entries.get(t, {}).get("built") and entries[t].get("samples")}


def build_stage4_trainer(
    run_dir: str | Path, settings: Mapping[str, Any], store: str | Path | None = None
) -> Stage4Trainer:
    """A trainer over ``run_dir``'s embedding store (or ``store``) and its fixed validation sets."""
    model_cfg, cfg = split_stage4_settings(settings)
    return stage4_trainer_for(run_dir, model_cfg, cfg, store, input_dim_given="input_dim" in settings)


def stage4_trainer_for(
    run_dir: str | Path,
    model_cfg: Stage4ModelConfig,
    cfg: Stage4TrainConfig,
    store: str | Path | None = None,
    input_dim_given: bool = False,
) -> Stage4Trainer:
    """A trainer for the two configs; the model's input width is the store's feature_dim."""
    ctx = load_context(run_dir, store)
    # One text at a time through the frozen text pathway: a text's embedding then never depends on which other new
    # texts share its batch (padding length, kernel shapes), so a resumed run, whose cache starts empty, encodes the
    # same numbers as the uninterrupted one.
    if hasattr(ctx.encoder, "batch_size"):
        ctx.encoder.batch_size = 1
    if input_dim_given and model_cfg.input_dim != ctx.feature_dim:
        raise ValueError(f"input_dim={model_cfg.input_dim}, but the store's panel embeddings have {ctx.feature_dim}")
    model_cfg = replace(model_cfg, input_dim=ctx.feature_dim)
    val_sets = read_val_sets(run_dir, ctx, cfg.active_tasks)
    encoder = SampleEncoder(run_dir, store, modalities=tuple(cfg.modalities))
    if cfg.task_weights["caption_relevance"] > 0 or "caption_relevance" in val_sets:
        warm_captions(encoder, ctx, val_sets.values())
    set_seed(cfg.seed)
    model = Stage4SequenceModel(model_cfg)
    data = {k: ctx.provenance.get(k) for k in PROVENANCE_KEYS}
    return Stage4Trainer(model, cfg, ctx, encoder, val_sets, data)


def warm_captions(encoder: SampleEncoder, ctx: TaskContext, sets: Iterable[TaskSet], chunk: int = 64) -> None:
    """Encode every caption caption relevance can give (the training split's, the fixed sets') once, in sorted
    chunks, before training: the encoder caches captions as batches first meet them, and a text's numbers can
    depend on what shares its batch (padding length, kernel shapes), so a resumed run, whose cache starts empty,
    would otherwise encode some captions differently from the uninterrupted run."""
    texts = {s.query_text for task_set in sets for s in task_set.samples if s.query_text}
    if "description" in ctx.panels:
        train = ctx.panels[ctx.panels.split == "train"].description
        texts.update(str(t) for t in train if isinstance(t, str) and t.strip())
    new = sorted(texts - set(encoder.captions))
    with torch.no_grad():
        for start in range(0, len(new), chunk):
            part = new[start : start + chunk]
            encoded = encoder.model.encode_texts(part).float().cpu().numpy()
            encoder.captions.update(zip(part, encoded, strict=True))


def train_stage4(
    run_dir: str | Path,
    settings: Mapping[str, Any],
    resume: bool = False,
    overwrite: bool = False,
    store: str | Path | None = None,
    ablation: str | None = None,
) -> Stage4Trainer:
    """Train Stage 4 on ``run_dir``'s embedding store into ``run_dir/stage4/`` (``checkpoint.pt`` written every
    epoch, ``best_model.pt`` at the best mean validation accuracy); with ``ablation`` (a name of
    ``config.ABLATIONS``), that ablation of the same settings into ``run_dir/stage4/ablations/<name>/``.

    A run folder that already holds Stage 4 checkpoints is a CheckpointExistsError unless ``resume`` (continue from
    the last checkpoint) or ``overwrite`` (remove both first, then train anew) says what to do with them; the check
    comes before anything is loaded. The validation sets must exist (TaskSetsMissingError names the command).
    """
    files = checkpoints(run_dir, ablation)
    resuming = files.prepare(resume=resume, overwrite=overwrite)
    trainer = build_stage4_trainer(run_dir, ablation_settings(settings, ablation), store)
    if resuming:
        trainer.resume(files.last)
    trainer.train(files=files)
    return trainer
