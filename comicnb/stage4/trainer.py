"""Stage 4 training: redrawn task samples -> interleaved task batches -> weighted losses -> checkpoints, via Accelerate.

``python -m comicnb train stage4`` and notebook 04 both call :func:`train_stage4`. Every epoch redraws each task's
training samples from the training books (``task_sets.training_samples``: new negatives, answer slots, shuffles),
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
import warnings
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from accelerate import Accelerator, DistributedDataParallelKwargs
from torch import Tensor, nn

from comicnb.checkpoint import StageCheckpoints, load_checkpoint, resume_conflicts
from comicnb.loop import EpochLoop
from comicnb.precision import accelerate_mixed_precision
from comicnb.schedule import epoch_batches, shard_batches
from comicnb.seed import isolated_rng, set_seed
from comicnb.stage4.baselines.geometry import GeometryBaseline
from comicnb.stage4.batches import BatchBuilder, reduced_builders
from comicnb.stage4.config import (
    MAIN,
    RESUMABLE_CHANGES,
    Stage4ModelConfig,
    Stage4TrainConfig,
    ablation_settings,
    checkpoints,
    config_dicts,
    split_stage4_settings,
)
from comicnb.stage4.drafts import TaskUnavailable
from comicnb.stage4.model import Stage4SequenceModel, fit_prior_weight, gain_groups, input_prior
from comicnb.stage4.results import READING_ORDER, overall
from comicnb.stage4.scoring import evaluate
from comicnb.stage4.task_sets import PROVENANCE_KEYS, read_sets, sampling_rules, training_samples
from comicnb.stage4.tasks import TASKS, TaskSample, TaskSet
from comicnb.stage4.view import RunView, open_run

VAL_SEED = 1234  # fixed draws for validation, whatever the training seed
BEST_METRIC = "val_mean_accuracy"  # mean over the validated tasks of their accuracy (reading order: exact order)
ORDER_STREAM = len(TASKS)  # the generator key of an epoch's batch order, beside the tasks' draw keys 0..6
MODALITY_STREAM = len(TASKS) + 1  # the key of a step's modality dropout draw


class NonFiniteLossError(FloatingPointError):
    """A loss that is NaN or infinite: training stops before the step is taken; the message names step and task."""


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
        view: RunView,
        builder: BatchBuilder,
        val_sets: Mapping[str, TaskSet],
        data: Mapping[str, Any] | None = None,
    ) -> None:
        set_seed(cfg.seed)
        self.cfg, self.view, self.builder = cfg, view, builder
        balloons = builder.balloons is not None
        self.without = reduced_builders(view, balloons) if cfg.modality_dropout else {}  # modality dropout's inputs
        self.val_sets = dict(val_sets)
        self.data = dict(data or {})  # what the run trains on (store hashes), checked on resume
        self.accelerator = Accelerator(
            mixed_precision=accelerate_mixed_precision(cfg.precision),
            # One task a step: the other tasks' heads get no gradient, and DDP must not wait for them.
            kwargs_handlers=[DistributedDataParallelKwargs(find_unused_parameters=True)],
        )
        self.trainable = Stage4Trainable(model, cfg)
        self.trainable.to(self.accelerator.device)
        self.train_pages = [int(p) for p in view.split_pages("train")]
        self.skipped: dict[str, str] = {}  # task -> why it is not trained
        self.counts: dict[str, int] = {}  # task -> samples per epoch, fixed by the first epoch's draw
        self.plans: dict[int, EpochPlan] = {}
        with isolated_rng():  # drawing the first epoch (and encoding its new texts) draws nothing from torch's stream
            first = self.draw(0)
        if model.cfg.layout_prior and READING_ORDER in first:
            # The layout branch starts as the geometry baseline fitted on the first epoch's training pages (its own
            # seeded generator: nothing is drawn from torch's stream), so reading order starts where geometry reads.
            layout = GeometryBaseline(seed=cfg.seed).fit(first[READING_ORDER], view)
            model.reading_order_head.set_layout(layout.net, layout.mean, layout.std)
        # Each task's input prior starts at the multiple that fits the first epoch's samples (fit_prior_weight).
        with isolated_rng():
            self.prior_weights = fit_input_priors(model, builder, first) if model.cfg.input_prior else {}
        self.counts = {task: len(s) for task, s in first.items()}
        if not self.counts:
            reasons = "; ".join(f"{t}: {why}" for t, why in self.skipped.items()) or "every task weight is 0"
            raise ValueError(f"no Stage 4 task gives training samples ({reasons})")
        self.plans[0] = self.plan(0, first)
        self.steps_per_epoch = math.ceil(len(self.plans[0].steps) / self.accelerator.num_processes)
        self.start_loop(self.trainable)
        self.last_validation = pd.DataFrame()

    def parameter_groups(self, trainable: nn.Module) -> list[dict[str, Any]]:
        """The heads' scalar gains in their own group (``gain_groups``)."""
        return gain_groups(trainable, self.cfg.lr)

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
                drawn = training_samples(self.view, task, rng, limit=self.cfg.train_samples or None)
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

    def first_validation(self) -> dict[str, float]:
        """The untrained model's validation figures: the no-learning reference of epoch 0."""
        return self.validate()

    def epoch_steps(self, epoch: int, offset: int, count: int) -> Iterator[None]:
        """The epoch's task batches from ``offset`` (its draws made first: an epoch's time includes them)."""
        plan = self.plan(epoch)
        rank, world = self.accelerator.process_index, self.accelerator.num_processes
        mine = shard_batches(plan.steps, rank, world)
        if len(mine) != self.steps_per_epoch:  # draw() keeps the counts fixed; a mismatch would never end
            raise RuntimeError(f"epoch {epoch + 1} has {len(mine)} steps, not {self.steps_per_epoch}")
        for index in range(offset, min(len(mine), offset + count)):
            task, rows = mine[index]
            self.train_step(epoch, task, plan.sets[task], rows, self.strip_pages(epoch, index * world + rank))
            yield

    def end_epoch(self, epoch: int, seconds: float, files: StageCheckpoints | None) -> None:
        """Validate, record the epoch, and write the last checkpoint and, when the figure improved, the best."""
        self.record_epoch(epoch, seconds, self.validate(), BEST_METRIC, files)

    def batch_on_device(
        self, task_set: TaskSet, samples: Sequence[TaskSample], builder: BatchBuilder | None = None
    ) -> dict[str, Tensor]:
        """The samples as model inputs on this process's device (from ``builder``, else the trainer's)."""
        batch = (builder or self.builder).collate(task_set, list(samples))
        return {k: v.to(self.accelerator.device) if isinstance(v, Tensor) else v for k, v in batch.items()}

    def train_step(
        self, epoch: int, task: str, task_set: TaskSet, rows: Sequence[int], pages: Sequence[int] | None
    ) -> dict[str, Any]:
        """One optimisation step on one task batch (and the strip term); its random draws come from the generator
        state seeded for it (see the module). A non-finite loss stops the run before the step is taken."""
        self.wrapped.train()
        batch = self.batch_on_device(task_set, [task_set.samples[i] for i in rows], self.dropped_builder(epoch))
        page_inputs = None
        if pages is not None:
            embeddings, mask = self.builder.pages(list(pages))
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

    def dropped_builder(self, epoch: int) -> BatchBuilder | None:
        """Modality dropout: the builder of the batch at this step when it leaves a modality out (its own seeded
        draw per step), else None (every modality)."""
        if not self.without:
            return None
        draw = float(np.random.default_rng([self.cfg.seed, epoch, MODALITY_STREAM, self.step]).random())
        p = self.cfg.modality_dropout
        return self.without["vision"] if draw < p else self.without["text"] if draw < 2 * p else None

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
                table = evaluate(self.model, self.val_sets, self.builder, self.cfg.eval_batch_size)
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
            prior_fit=dict(self.prior_weights),  # each task's fitted starting prior multiple
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


def build_stage4_trainer(
    run_dir: str | Path,
    settings: Mapping[str, Any],
    store: str | Path | None = None,
    view: RunView | None = None,
) -> Stage4Trainer:
    """A trainer over ``run_dir``'s embedding store (or ``store``, or an open ``view`` of the run) and its fixed
    validation sets."""
    model_cfg, cfg = split_stage4_settings(settings)
    return stage4_trainer_for(run_dir, model_cfg, cfg, store, "input_dim" in settings, view)


def stage4_trainer_for(
    run_dir: str | Path,
    model_cfg: Stage4ModelConfig,
    cfg: Stage4TrainConfig,
    store: str | Path | None = None,
    input_dim_given: bool = False,
    view: RunView | None = None,
) -> Stage4Trainer:
    """A trainer for the two configs; the model's input width is the store's feature_dim."""
    # One text at a time through the frozen text pathway, from an empty cache: a text's embedding then never depends
    # on which other new texts shared its batch (padding length, kernel shapes), so a resumed run encodes the same
    # numbers as the uninterrupted one, and a view that built task sets (64 texts a batch) shares none of its cache.
    view = (view or open_run(run_dir, store)).with_text_batch(1)
    if input_dim_given and model_cfg.input_dim != view.feature_dim:
        raise ValueError(f"input_dim={model_cfg.input_dim}, but the store's panel embeddings have {view.feature_dim}")
    model_cfg = replace(model_cfg, input_dim=view.feature_dim)
    val_sets = read_sets(run_dir, view, cfg.active_tasks)
    builder = BatchBuilder(view, tuple(cfg.modalities), model_cfg.balloon_tokens)
    if cfg.task_weights["caption_relevance"] > 0 or "caption_relevance" in val_sets:
        warm_captions(builder, view, val_sets.values())
    set_seed(cfg.seed)
    model = Stage4SequenceModel(model_cfg)
    # The training samples are drawn by the samplers' rules: a model trained under other rules (a shape leak, say)
    # must not be resumed as if it were this run's.
    data = {**{k: view.provenance.get(k) for k in PROVENANCE_KEYS}, "sampling_rules": sampling_rules()}
    return Stage4Trainer(model, cfg, view, builder, val_sets, data)


@torch.no_grad()
def fit_input_priors(
    model: Stage4SequenceModel, builder: BatchBuilder, sets: Mapping[str, TaskSet], chunk: int = 256
) -> dict[str, float]:
    """Start every candidate head's prior multiple at the weight that fits its task's samples (``sets``: the first
    epoch's training draw) best, and return them: the Stage 3 cosine counts as much as it predicts the answer."""
    fitted = {}
    for task, task_set in sets.items():
        if task == READING_ORDER or not len(task_set):
            continue
        priors, masks, answers = [], [], []
        for start in range(0, len(task_set), chunk):
            batch = builder.collate(task_set, task_set.samples[start : start + chunk])
            priors.append(input_prior(batch, batch["candidates"]))
            masks.append(batch["candidate_mask"])
            answers.append(batch["answer"])
        weight = fit_prior_weight(torch.cat(priors), torch.cat(masks), torch.cat(answers))
        getattr(model, f"{task}_head").set_prior_weight(weight)
        fitted[task] = weight
    return fitted


def warm_captions(builder: BatchBuilder, view: RunView, sets: Iterable[TaskSet], chunk: int = 64) -> None:
    """Encode every caption caption relevance can give (the training split's, the fixed sets') once, in sorted
    chunks, before training: the builder caches captions as batches first meet them, and a text's numbers can
    depend on what shares its batch (padding length, kernel shapes), so a resumed run, whose cache starts empty,
    would otherwise encode some captions differently from the uninterrupted run."""
    texts = {s.query_text for task_set in sets for s in task_set.samples if s.query_text}
    if "description" in view.panels:
        train = view.panels[view.panels.split == "train"].description
        texts.update(str(t) for t in train if isinstance(t, str) and t.strip())
    new = sorted(texts - set(builder.captions))
    with torch.no_grad():
        for start in range(0, len(new), chunk):
            part = new[start : start + chunk]
            encoded = builder.model.encode_texts(part).float().cpu().numpy()
            builder.captions.update(zip(part, encoded, strict=True))


def train_stage4(
    run_dir: str | Path,
    settings: Mapping[str, Any],
    resume: bool = False,
    overwrite: bool = False,
    store: str | Path | None = None,
    ablation: str | None = None,
    view: RunView | None = None,
) -> Stage4Trainer:
    """Train Stage 4 on ``run_dir``'s embedding store (or an open ``view`` of the run) into ``run_dir/stage4/``
    (``checkpoint.pt`` written every epoch, ``best_model.pt`` at the best mean validation accuracy); with
    ``ablation`` (a name of ``config.ABLATIONS``), that ablation of the same settings into
    ``run_dir/stage4/ablations/<name>/``.

    A run folder that already holds Stage 4 checkpoints is a CheckpointExistsError unless ``resume`` (continue from
    the last checkpoint) or ``overwrite`` (remove both first, then train anew) says what to do with them; the check
    comes before anything is loaded. The validation sets must exist (TaskSetsMissingError names the command).
    """
    files = checkpoints(run_dir, ablation)
    resuming = files.prepare(resume=resume, overwrite=overwrite)
    trainer = build_stage4_trainer(run_dir, ablation_settings(settings, ablation), store, view)
    if resuming:
        trainer.resume(files.last)
    trainer.train(files=files)
    return trainer


def train_models(
    run_dir: str | Path,
    settings: Mapping[str, Any],
    ablations: Sequence[str] = (),
    resume: bool = False,
    overwrite: bool = False,
    store: str | Path | None = None,
    view: RunView | None = None,
) -> dict[str, Stage4Trainer]:
    """The main model and each ablation of ``ablations``, trained one after another as ``train_stage4`` trains them
    (each from its seed); name -> trainer, the main model as ``MAIN``."""
    names = [None, *ablations]
    return {
        name or MAIN: train_stage4(run_dir, settings, resume, overwrite, store, ablation=name, view=view)
        for name in names
    }


def validation_table(trainers: Mapping[str, Stage4Trainer], sets: Mapping[Any, TaskSet]) -> pd.DataFrame:
    """Each trained model's result table on ``sets`` as it ends training (Wilson intervals), named by its key."""
    tables = [evaluate(t.model, sets, t.builder, t.cfg.eval_batch_size, name=name) for name, t in trainers.items()]
    return pd.concat(tables, ignore_index=True) if tables else pd.DataFrame()


def prior_table(trainers: Mapping[str, Stage4Trainer]) -> pd.DataFrame:
    """Per model and candidate task: the input prior's multiple as fitted on the first epoch's draw (``fitted``) and
    as trained (``trained``), and the learned term's scale (``learned_scale``): how much the Stage 3 cosine counts
    beside what the model learned. Empty for models without the prior."""
    rows = []
    for name, trainer in trainers.items():
        for task, fitted in trainer.prior_weights.items():
            head = getattr(trainer.model, f"{task}_head")
            rows.append(
                dict(
                    model=name,
                    task=task,
                    fitted=fitted,
                    trained=float(head.prior_weight.detach()),
                    learned_scale=float(head.log_scale.detach().exp()),
                )
            )
    return pd.DataFrame(rows, columns=["model", "task", "fitted", "trained", "learned_scale"])
