"""Training one COMICS scorer: the training and validation parts as tensors, and the shared epoch loop
(``comicnb.loop``) in one sitting with early stopping on the validation loss; ``comicnb.comics.scorer.fit`` calls it.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from comicnb.comics.heads import STAGE4_TASK, build_model, make_batch, model_scores
from comicnb.comics.settings import FitSettings
from comicnb.loop import EpochLoop, SingleProcess
from comicnb.metrics import expected_hits
from comicnb.seed import set_seed
from comicnb.stage4.model import fit_prior_weight, gain_groups, input_prior


class Part:
    """Tensors of one part (training or validation)."""

    def __init__(self, context: np.ndarray, candidates: np.ndarray, answers: np.ndarray, tokens: str = "panel") -> None:
        self.tokens = tokens  # the context's tokens: one per panel or one per text box (make_batch)
        self.context = torch.from_numpy(context)
        self.candidates = torch.from_numpy(candidates)
        self.answers = torch.from_numpy(answers)
        self.answers_np = answers

    def __len__(self) -> int:
        return len(self.answers)

    def batch(self, index: Tensor) -> dict[str, Tensor]:
        return make_batch(self.context[index], self.candidates[index], self.answers[index], self.tokens)


def _validate(model, task: str, part: Part) -> tuple[float, float]:
    """(loss, accuracy) on a part, in eval mode."""
    logits = model_scores(model, task, part.context.numpy(), part.candidates.numpy(), tokens=part.tokens)
    log_p = torch.log_softmax(torch.from_numpy(logits).double(), dim=1)
    loss = float(-log_p[torch.arange(len(part)), part.answers].mean())
    return loss, float(expected_hits(logits, part.answers_np).mean())


class ScorerTrainer(EpochLoop):
    """Trains one COMICS scorer in one sitting (``comicnb.loop``): shuffled batches of the training part, AdamW at a
    constant learning rate, the gradient clipped, and after each epoch the validation part's loss, which keeps the
    best epoch's weights in memory and stops the run after ``patience`` epochs without a lower one. It never resumes,
    so its random draws come from one stream seeded once (``step_seeds`` off)."""

    step_seeds = False
    constant_lr = True

    def __init__(
        self, task: str, train: Part, val: Part, settings: FitSettings, log: Callable[[str], None] = print
    ) -> None:
        set_seed(settings.seed)
        self.cfg, self.task, self.train_part, self.val_part, self.log = settings, task, train, val, log
        self.model = build_model(settings.model_config(train.context.shape[-1], task))
        self.accelerator = SingleProcess()  # the scorer trains on the CPU, seeded, without Accelerate
        self.steps_per_epoch = math.ceil(len(train) / settings.batch_size)
        if not self.steps_per_epoch:
            raise ValueError("no training rows: a COMICS scorer needs at least one training sample")
        if self.model.cfg.input_prior:  # the prior's multiple starts where it fits the training part (fit_prior_weight)
            batch = train.batch(torch.arange(len(train)))
            self.prior_weight = fit_prior_weight(
                input_prior(batch, batch["candidates"]), batch["candidate_mask"], batch["answer"]
            )
            getattr(self.model, f"{STAGE4_TASK[task]}_head").set_prior_weight(self.prior_weight)
            log(f"  input prior: weight {self.prior_weight:.2f}, fitted on the training part")
        self.start_loop(self.model)
        self.generator = torch.Generator().manual_seed(settings.seed)  # the epochs' shuffles
        self.best_state: dict[str, Tensor] | None = None
        self.waited = 0  # epochs since the validation loss last fell
        self.losses: list[float] = []  # the current epoch's training losses

    def parameter_groups(self, trainable: torch.nn.Module) -> list[dict[str, Any]]:
        """The heads' scalar gains in their own group, as in Stage 4 (``gain_groups``)."""
        return gain_groups(trainable, self.cfg.lr)

    def epoch_steps(self, epoch: int, offset: int, count: int) -> Iterator[None]:
        """One epoch over the training part in a fresh shuffle, a batch a step (a run in one sitting: offset 0)."""
        self.model.train()
        order = torch.randperm(len(self.train_part), generator=self.generator)
        self.losses = []
        for start in range(0, len(self.train_part), self.cfg.batch_size):
            batch = self.train_part.batch(order[start : start + self.cfg.batch_size])
            loss = self.model.task_loss(STAGE4_TASK[self.task], batch)
            if not torch.isfinite(loss):
                raise FloatingPointError(f"the training loss is {loss.item()} at epoch {epoch + 1}, step {self.step}")
            self.optimise(loss)
            self.losses.append(loss.item())
            yield

    def end_epoch(self, epoch: int, seconds: float, files: Any | None) -> None:
        """Score the validation part; keep the weights when its loss fell (by more than 1e-6)."""
        val_loss, val_accuracy = _validate(self.model, self.task, self.val_part)
        scalars = dict(
            train_loss=float(np.mean(self.losses)) if self.losses else 0.0,
            val_loss=val_loss,
            val_accuracy=val_accuracy,
            neg_val_loss=-val_loss,
        )
        self.history.epochs.append({"epoch": epoch, **scalars, "seconds": seconds})
        self.log(
            f"  epoch {epoch}: train loss {scalars['train_loss']:.4f}, validation loss {val_loss:.4f}, "
            f"accuracy {val_accuracy:.3f} ({seconds:.1f} s)"
        )
        self.keep_if_best(scalars, epoch, "neg_val_loss", min_delta=1e-6)

    def should_stop(self) -> bool:
        """After ``patience`` epochs without a lower validation loss."""
        return self.patience_spent("lower validation loss")

    def save(self, path: str | Path) -> Path:  # the scorer keeps its best weights in memory; fit writes the folder
        raise NotImplementedError("a COMICS scorer is saved by fit(), not checkpointed")


def train_scorer(
    task: str, train: Part, val: Part, settings: FitSettings, log: Callable[[str], None] = print
) -> tuple[Any, list[dict], int]:
    """(model with the best validation state loaded, history per epoch, best epoch)."""
    trainer = ScorerTrainer(task, train, val, settings, log)
    trainer.train()
    if trainer.best_state is not None:
        trainer.model.load_state_dict(trainer.best_state)
    history = [{k: v for k, v in row.items() if k != "neg_val_loss"} for row in trainer.history.epochs]
    return trainer.model.eval(), history, int(trainer.best.get("epoch", 0))
