"""What the Stage 3 and Stage 4 trainers share: the step's optimisation and reseeding, the checkpoint cadence, the
best-checkpoint rule, writing and restoring the loop's state, and the history they log.

``EpochLoop`` is a mixin: the trainer that uses it sets ``cfg`` (with ``seed``, ``grad_clip``, ``checkpoint_every``),
``accelerator``, ``wrapped`` (the prepared module), ``optimizer``, ``scheduler``, ``step``, ``steps_per_epoch``,
``best``, ``history`` and ``rng``. Each step's random draws come from a generator state seeded for that step at the
end of the step before (``step_seed``) and kept on the trainer, so a checkpoint written between steps resumes the
same draws (see ``comicnb.stage3.trainer``).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd
import torch
from torch import Tensor, nn

from comicnb.checkpoint import rng_state, save_checkpoint
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
        params = [p for p in trainable.parameters() if p.requires_grad]
        optimizer = torch.optim.AdamW(params, lr=self.cfg.lr, weight_decay=self.cfg.weight_decay)
        self.wrapped, self.optimizer = self.accelerator.prepare(trainable, optimizer)
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(
            optimizer, warmup_cosine(self.total_steps, self.cfg.warmup_fraction)
        )
        self.step = 0
        self.best = {}  # {"metric", "value", "epoch", "step"} of best_model.pt
        self.history = History()
        with isolated_rng():  # this trainer's own stream: another trainer in the process cannot shift it
            torch.manual_seed(step_seed(self.cfg.seed, 0))  # the first step's draws
            self.rng = rng_state()

    def optimise(self, total: Tensor) -> None:
        """Backward, clip, step the optimiser and the schedule, then seed the next step's draws."""
        self.accelerator.backward(total)
        if self.cfg.grad_clip > 0:
            self.accelerator.clip_grad_norm_(self.wrapped.parameters(), self.cfg.grad_clip)
        self.optimizer.step()
        self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.step += 1
        torch.manual_seed(step_seed(self.cfg.seed, self.step))  # the next step's draws
        self.rng = rng_state()  # what a checkpoint written now stores

    def mid_epoch_checkpoint_due(self) -> bool:
        """Every ``checkpoint_every`` steps inside an epoch; an epoch's last step waits for validation (end_epoch)."""
        every = self.cfg.checkpoint_every
        return bool(every) and self.step % every == 0 and self.step % self.steps_per_epoch != 0

    def update_best(self, scalars: Mapping[str, float], epoch: int, metric: str) -> bool:
        """Whether this epoch's ``metric`` beats the best so far (higher is better; NaN never wins)."""
        value = scalars.get(metric, math.nan)
        if math.isnan(value) or (self.best and value <= self.best["value"]):
            return False
        self.best = dict(metric=metric, value=float(value), epoch=epoch, step=self.step)
        return True

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
        self.optimizer.load_state_dict(checkpoint["optimizer_state_dict"])
        self.scheduler.load_state_dict(checkpoint["scheduler_state_dict"])
        self.step = checkpoint["step"]
        self.best = dict(checkpoint.get("best", {}))
        self.history = History(list(checkpoint["history"]["steps"]), list(checkpoint["history"]["epochs"]))
        self.rng = checkpoint["rng"]
