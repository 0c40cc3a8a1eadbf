"""The epoch loop every trainer runs (Stage 3, Stage 4, the COMICS scorer): epochs of steps, the step's optimisation
and reseeding, validation after each epoch, the checkpoint cadence, the best rule, early stopping, the loop's state in
and out of a checkpoint, and the history it logs.

``EpochLoop`` is a mixin: the trainer that uses it sets ``cfg`` (with ``seed``, ``lr``, ``weight_decay``,
``warmup_fraction``, ``grad_clip``, ``checkpoint_every``), ``accelerator`` and ``steps_per_epoch``, calls
``start_loop`` once, and provides ``epoch_steps`` (take the steps of an epoch, yielding after each), ``end_epoch``
and ``save``; ``first_validation`` and ``should_stop`` are optional. ``train()`` is the loop.

Determinism: with ``step_seeds`` (the stages), each step's random draws come from a generator state seeded for that
step at the end of the step before (``step_seed``) and kept on the trainer, so a checkpoint written between steps
resumes the same draws (see ``comicnb.stage3.trainer``). A trainer that never resumes (the COMICS scorer) turns it off
and draws from one stream from its start.
"""

from __future__ import annotations

import math
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd
import torch
from torch import Tensor, nn

from comicnb.checkpoint import rng_state, save_checkpoint, set_rng_state
from comicnb.schedule import step_seed, warmup_cosine
from comicnb.seed import isolated_rng


@dataclass
class History:
    """Loss terms per step and validation figures per epoch."""

    steps: list[dict] = field(default_factory=list)
    epochs: list[dict] = field(default_factory=list)

    def frames(self) -> tuple[pd.DataFrame, pd.DataFrame]:
        """(steps, epochs) as DataFrames for plotting."""
        return pd.DataFrame(self.steps), pd.DataFrame(self.epochs)


class SingleProcess:
    """What the loop asks of Accelerate, for a trainer that runs in one CPU process without it (the COMICS scorer):
    the plain torch calls Accelerate makes there."""

    device = torch.device("cpu")
    num_processes = 1
    process_index = 0
    is_main_process = True

    def prepare(self, *objects: Any) -> tuple[Any, ...]:
        """The objects as they are."""
        return objects

    def backward(self, loss: Tensor) -> None:
        """``loss.backward()``."""
        loss.backward()

    def clip_grad_norm_(self, parameters: Any, max_norm: float) -> Tensor:
        """torch's gradient norm clip."""
        return torch.nn.utils.clip_grad_norm_(parameters, max_norm)

    def wait_for_everyone(self) -> None:
        """Nothing to wait for."""


class EpochLoop:
    """The step, checkpoint and best-model mechanics of a trainer (see the module for what it expects)."""

    cfg: Any
    accelerator: Any
    wrapped: Any
    optimizer: Any
    scheduler: Any
    step: int
    steps_per_epoch: int
    best: dict[str, Any]
    history: History
    rng: dict[str, Any]
    step_seeds: bool = True  # reseed torch before every step (exact resume); False: one stream from start_loop on
    constant_lr: bool = False  # the learning rate stays at cfg.lr (no warm-up, no decay)

    @property
    def total_steps(self) -> int:
        """Steps of the whole run."""
        return self.cfg.epochs * self.steps_per_epoch

    def start_loop(self, trainable: nn.Module) -> None:
        """AdamW over the trainable parameters, prepared with ``trainable`` by Accelerate; the warm-up cosine schedule
        over ``total_steps``; step 0, no best, an empty history; and the first step's seeded generator state.

        Call once ``steps_per_epoch`` is known. The schedule is not prepared: Accelerate would step it once per
        process, and our steps already count synchronised steps.
        """
        optimizer = torch.optim.AdamW(
            self.parameter_groups(trainable), lr=self.cfg.lr, weight_decay=self.cfg.weight_decay
        )
        self.wrapped, self.optimizer = self.accelerator.prepare(trainable, optimizer)
        schedule = (lambda step: 1.0) if self.constant_lr else warmup_cosine(self.total_steps, self.cfg.warmup_fraction)
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, schedule)
        self.step = 0
        self.best = {}  # {"metric", "value", "epoch", "step"} of best_model.pt
        self.history = History()
        if not self.step_seeds:
            self.rng = rng_state()  # the stream as it is now: train() goes on from here
            return
        with isolated_rng():  # this trainer's own stream: another trainer in the process cannot shift it
            torch.manual_seed(step_seed(self.cfg.seed, 0))  # the first step's draws
            self.rng = rng_state()

    # ------------------------------------------------------------------------------------------------ the loop

    def train(self, until_step: int | None = None, files: Any | None = None) -> History:
        """Train to the end (or to ``until_step``), validating after each epoch.

        With ``files`` (a ``comicnb.checkpoint.StageCheckpoints``) the last checkpoint is written after every epoch
        (and every ``checkpoint_every`` steps), and the best one whenever the validation figure improves; an
        interrupted run resumes (``resume``) from the last one and still ends exactly where the uninterrupted run
        would.
        """
        stop = self.total_steps if until_step is None else min(until_step, self.total_steps)
        set_rng_state(self.rng)
        if self.step == 0 and not self.history.epochs:  # the untrained model: the no-learning reference
            scalars = self.first_validation()
            if scalars is not None:
                self.history.epochs.append({"epoch": 0, "step": 0, "train_seconds": 0.0, **scalars})
        while self.step < stop:
            epoch, offset = divmod(self.step, self.steps_per_epoch)
            start = time.perf_counter()
            for _ in self.epoch_steps(epoch, offset, stop - self.step):
                if files is not None and self.mid_epoch_checkpoint_due():
                    self.save(files.last)
            seconds = time.perf_counter() - start
            if self.step % self.steps_per_epoch == 0:
                self.end_epoch(epoch + 1, seconds, files)
                if self.should_stop():
                    break
        if files is not None:
            self.save(files.last)
        return self.history

    def first_validation(self) -> dict[str, float] | None:
        """The untrained model's validation figures, logged as epoch 0 (None: no such row)."""
        return None

    def epoch_steps(self, epoch: int, offset: int, count: int) -> Iterator[None]:
        """Take up to ``count`` steps of ``epoch`` from its step ``offset`` on, yielding after each."""
        raise NotImplementedError

    def end_epoch(self, epoch: int, seconds: float, files: Any | None) -> None:
        """Validate and record the epoch (``record_epoch``)."""
        raise NotImplementedError

    def should_stop(self) -> bool:
        """Whether to stop after the epoch just recorded (early stopping); never by default."""
        return False

    def optimise(self, total: Tensor) -> None:
        """Backward, clip, step the optimiser and the schedule, then seed the next step's draws."""
        self.accelerator.backward(total)
        if self.cfg.grad_clip > 0:
            self.accelerator.clip_grad_norm_(self.wrapped.parameters(), self.cfg.grad_clip)
        self.optimizer.step()
        self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.step += 1
        if self.step_seeds:
            torch.manual_seed(step_seed(self.cfg.seed, self.step))  # the next step's draws
            self.rng = rng_state()  # what a checkpoint written now stores

    def mid_epoch_checkpoint_due(self) -> bool:
        """Every ``checkpoint_every`` steps inside an epoch; an epoch's last step waits for validation (end_epoch)."""
        every = self.cfg.checkpoint_every
        return bool(every) and self.step % every == 0 and self.step % self.steps_per_epoch != 0

    def update_best(self, scalars: Mapping[str, float], epoch: int, metric: str, min_delta: float = 0.0) -> bool:
        """Whether this epoch's ``metric`` beats the best so far by more than ``min_delta`` (higher is better; NaN
        never wins)."""
        value = scalars.get(metric, math.nan)
        if math.isnan(value) or (self.best and value <= self.best["value"] + min_delta):
            return False
        self.best = dict(metric=metric, value=float(value), epoch=epoch, step=self.step)
        return True

    def keep_if_best(self, scalars: Mapping[str, float], epoch: int, metric: str, min_delta: float = 0.0) -> bool:
        """For a trainer that trains in one sitting and keeps its best weights in memory (``best_state``): when this
        epoch's ``metric`` is the best (``update_best``), copy the model's weights and reset ``waited``; else count
        one more epoch in ``waited``, the epochs since the last best."""
        if self.update_best(scalars, epoch, metric, min_delta):
            self.waited = 0
            self.best_state = {k: v.detach().clone() for k, v in self.model.state_dict().items()}
            return True
        self.waited = getattr(self, "waited", 0) + 1
        return False

    def patience_spent(self, what: str) -> bool:
        """Whether ``cfg.patience`` epochs have passed without a best (``keep_if_best``); says so in the log."""
        if getattr(self, "waited", 0) >= self.cfg.patience:
            self.log(f"  stopped: no {what} for {self.waited} epochs")
            return True
        return False

    def record_epoch(
        self, epoch: int, seconds: float, scalars: Mapping[str, float], metric: str, files: Any | None
    ) -> None:
        """Log an epoch's validation figures; write the last checkpoint, and the best when ``metric`` improved."""
        self.history.epochs.append({"epoch": epoch, "step": self.step, "train_seconds": seconds, **scalars})
        improved = self.update_best(scalars, epoch, metric)
        if files is not None:
            self.save(files.last)
            if improved:
                self.save(files.best)

    def save(self, path: str | Path) -> Path:  # each trainer writes its own checkpoint
        raise NotImplementedError

    def parameter_groups(self, trainable: nn.Module) -> list[dict[str, Any]]:
        """The optimiser's parameter groups: every trainable parameter at ``cfg.lr``; a trainer may split them."""
        return [{"params": [p for p in trainable.parameters() if p.requires_grad]}]

    def loop_state(self) -> dict[str, Any]:
        """The loop's part of a checkpoint: optimiser, schedule, step, RNG, best and history."""
        return dict(
            optimizer_state_dict=self.optimizer.state_dict(),
            scheduler_state_dict=self.scheduler.state_dict(),
            step=self.step,
            rng=self.rng,
            best=dict(self.best),
            history=dict(steps=self.history.steps, epochs=self.history.epochs),
        )

    def write_checkpoint(self, checkpoint: Mapping[str, Any], path: str | Path) -> Path:
        """Write ``checkpoint`` atomically from the main process, once every process has reached this point."""
        self.accelerator.wait_for_everyone()
        if self.accelerator.is_main_process:
            save_checkpoint(checkpoint, path)
        return Path(path)

    def restore_loop_state(self, checkpoint: Mapping[str, Any]) -> None:
        """Put back what ``loop_state`` saved; ``train()`` puts the RNG state in place before the next step."""
        saved = len(checkpoint["optimizer_state_dict"]["param_groups"])
        if saved != len(self.optimizer.param_groups):
            raise ValueError(
                f"the checkpoint's optimiser has {saved} parameter group(s) and this trainer's has "
                f"{len(self.optimizer.param_groups)}: it was written by another version of the trainer; start a new run"
            )
        self.optimizer.load_state_dict(checkpoint["optimizer_state_dict"])
        self.scheduler.load_state_dict(checkpoint["scheduler_state_dict"])
        self.step = checkpoint["step"]
        self.best = dict(checkpoint.get("best", {}))
        self.history = History(list(checkpoint["history"]["steps"]), list(checkpoint["history"]["epochs"]))
        self.rng = checkpoint["rng"]


def parameter_summary(model: nn.Module, depth: int = 2) -> pd.DataFrame:
    """Trainable and frozen parameter counts of each part of a model (its names cut to ``depth`` parts; a Stage 3
    model's backbones one level deeper, one row each), and their total."""
    rows: dict[str, dict[str, int]] = {}
    for name, param in model.named_parameters():
        part = ".".join(name.split(".")[: depth + 1 if name.startswith("visual.backbones") else depth])
        counts = rows.setdefault(part, {"trainable": 0, "frozen": 0})
        counts["trainable" if param.requires_grad else "frozen"] += param.numel()
    table = pd.DataFrame.from_dict(rows, orient="index").rename_axis("part")
    table.loc["total"] = table.sum()
    return table
