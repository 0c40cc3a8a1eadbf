"""``comicspap fit``: the Stage 4 model for ComicsPAP, trained on its train split or taken as it is (zero-shot).

Fine-tuning starts from the run's own Stage 4 model (``init="run"``; a fresh one of the same size where the run has
none, or with ``init="fresh"``) and trains every head ComicsPAP has a skill for on the encoded train split, one task
per step, in a shuffled order of all the split's batches. A share of the train split (``hold_out``, by a stable hash
of each sample id) is kept out for early stopping, so ComicsPAP's validation split stays unseen until ``eval``: its
pooled accuracy after each epoch keeps the best weights, and ``patience`` epochs without a better one stop the run.

``zero_shot`` copies the run's Stage 4 model unchanged: its heads were trained on the run's own corpus only.

Both write ``<run>/comicspap/model/best_model.pt`` (a Stage 4 checkpoint) and ``fit.json`` (how it was made, the
samples it saw, the history).
"""

from __future__ import annotations

import json
import math
import shutil
import time
import zlib
from collections.abc import Callable, Iterator, Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from comicnb import checkpoint
from comicnb.comicspap.encode import open_split, read_split_sets
from comicnb.comicspap.scores import MODEL_FILE, model_path
from comicnb.loop import EpochLoop, SingleProcess
from comicnb.seed import set_seed
from comicnb.stage4.batches import BatchBuilder
from comicnb.stage4.config import Stage4ModelConfig
from comicnb.stage4.config import checkpoints as stage4_checkpoints
from comicnb.stage4.model import Stage4SequenceModel, gain_groups
from comicnb.stage4.scoring import load_stage4_model, trained_modalities
from comicnb.stage4.tasks import TaskSet

FIT_RECORD = "fit.json"
INITS = ("run", "fresh")


@dataclass
class FitSettings:
    """How the Stage 4 model is fitted to ComicsPAP's train split."""

    epochs: int = 20
    batch_size: int = 32
    lr: float = 5e-4
    weight_decay: float = 0.01
    grad_clip: float = 1.0
    warmup_fraction: float = 0.0
    checkpoint_every: int = 0
    patience: int = 3  # epochs without a better held-out accuracy before stopping
    hold_out: float = 0.1  # share of the train split's samples kept out for early stopping
    seed: int = 0
    init: str = "run"  # run: start from the run's Stage 4 model; fresh: a new one of its size

    def __post_init__(self) -> None:
        if self.init not in INITS:
            raise ValueError(f"init must be one of {', '.join(INITS)}, not {self.init!r}")
        if not 0 < self.hold_out < 1:
            raise ValueError(f"hold_out must be a share between 0 and 1, not {self.hold_out}")


def held_out(sample_id: str, share: float) -> bool:
    """Whether a train sample is kept out for early stopping (a stable hash of its id)."""
    return zlib.crc32(sample_id.encode("utf-8")) % 10_000 < share * 10_000


def split_train(sets: Mapping[str, TaskSet], share: float) -> tuple[dict[str, TaskSet], dict[str, TaskSet]]:
    """(training, early-stopping) parts of the train split's sets."""
    train, stop = {}, {}
    for task, task_set in sets.items():
        out = [s for s in task_set.samples if held_out(s.sample_id, share)]
        kept = [s for s in task_set.samples if not held_out(s.sample_id, share)]
        if kept:
            train[task] = TaskSet(task, "train", kept, task_set.texts)
        if out:
            stop[task] = TaskSet(task, "train", out, task_set.texts)
    return train, stop


class PapTrainer(EpochLoop):
    """Fits a Stage 4 model on fixed ComicsPAP samples in one sitting (``comicnb.loop``), keeping the epoch with the
    best pooled accuracy on the held-out part."""

    step_seeds = False
    constant_lr = True

    def __init__(
        self,
        model: Stage4SequenceModel,
        builder: BatchBuilder,
        train: Mapping[str, TaskSet],
        stop: Mapping[str, TaskSet],
        settings: FitSettings,
        log: Callable[[str], None] = print,
    ) -> None:
        self.cfg, self.model, self.builder, self.train_sets, self.stop_sets, self.log = (
            settings,
            model,
            builder,
            dict(train),
            dict(stop),
            log,
        )
        self.accelerator = SingleProcess()
        self.batches = [
            (task, start) for task, s in self.train_sets.items() for start in range(0, len(s), settings.batch_size)
        ]
        self.steps_per_epoch = len(self.batches)
        if not self.steps_per_epoch:
            raise ValueError("no training samples: the train split is empty once the early-stopping share is out")
        self.start_loop(model)
        self.generator = np.random.default_rng(settings.seed)
        self.best_state: dict[str, torch.Tensor] | None = None
        self.waited = 0
        self.losses: list[float] = []

    def parameter_groups(self, trainable: torch.nn.Module) -> list[dict[str, Any]]:
        return gain_groups(trainable, self.cfg.lr)

    def first_validation(self) -> dict[str, float]:
        """The starting model's held-out accuracy: epoch 0, the one to beat (its weights kept until one does)."""
        scalars = {"held_out_accuracy": self.held_out_accuracy()}
        self.keep_if_best(scalars, 0, "held_out_accuracy")
        self.waited = 0
        return scalars

    def held_out_accuracy(self) -> float:
        """Pooled accuracy (every held-out sample alike) of the model as it is."""
        from comicnb.stage4.scoring import predict_sets

        results = predict_sets(self.model, self.stop_sets, self.builder)
        correct = np.concatenate([r.correct for r in results]) if results else np.zeros(0)
        return float(correct.mean()) if len(correct) else math.nan

    def epoch_steps(self, epoch: int, offset: int, count: int) -> Iterator[None]:
        """Every training batch once, in a fresh order (tasks mixed; each set's samples reshuffled)."""
        self.model.train()
        shuffled = {t: self.generator.permutation(len(s)) for t, s in self.train_sets.items()}
        self.losses = []
        for i in self.generator.permutation(len(self.batches)):
            task, start = self.batches[i]
            task_set = self.train_sets[task]
            chosen = [task_set.samples[k] for k in shuffled[task][start : start + self.cfg.batch_size]]
            loss = self.model.task_loss(task, self.builder.collate(task_set, chosen))
            if not torch.isfinite(loss):
                raise FloatingPointError(f"the training loss is {loss.item()} at epoch {epoch + 1} ({task})")
            self.optimise(loss)
            self.losses.append(loss.item())
            yield

    def end_epoch(self, epoch: int, seconds: float, files: Any | None) -> None:
        accuracy = self.held_out_accuracy()
        scalars = dict(train_loss=float(np.mean(self.losses)) if self.losses else 0.0, held_out_accuracy=accuracy)
        self.history.epochs.append({"epoch": epoch, **scalars, "seconds": seconds})
        self.log(
            f"  epoch {epoch}: train loss {scalars['train_loss']:.4f}, held-out accuracy {accuracy:.3f} "
            f"({seconds:.1f} s)"
        )
        self.keep_if_best(scalars, epoch, "held_out_accuracy", min_delta=1e-9)

    def should_stop(self) -> bool:
        return self.patience_spent("better held-out accuracy")


def fit(
    run_dir: str | Path,
    settings: FitSettings | None = None,
    zero_shot: bool = False,
    overwrite: bool = False,
    log: Callable[[str], None] = print,
) -> dict[str, Any]:
    """Write the run's ComicsPAP model (see the module); returns the fit record."""
    run_dir = Path(run_dir)
    settings = settings or FitSettings()
    out = model_path(run_dir)
    if out.is_file() and not overwrite:
        raise FileExistsError(f"{out} exists: pass --overwrite to replace it")
    source = stage4_checkpoints(run_dir).best
    source = source if source.is_file() else None
    started = time.perf_counter()
    out.parent.mkdir(parents=True, exist_ok=True)
    if zero_shot:
        if source is None:
            raise FileNotFoundError(f"no Stage 4 model in {run_dir}: train one (notebook 04) for --zero-shot")
        shutil.copyfile(source, out)
        record = dict(zero_shot=True, source=str(source), seconds=round(time.perf_counter() - started, 3))
        (out.parent / "fit.json").write_text(json.dumps(record, indent=1) + "\n", encoding="utf-8")
        return record
    set_seed(settings.seed)
    view = open_split(run_dir, "train")
    sets = {t: s for t, s in read_split_sets(run_dir, "train").items() if len(s)}
    train, stop = split_train(sets, settings.hold_out)
    if not stop:
        raise ValueError(f"the train split has no sample in the early-stopping share {settings.hold_out}")
    loaded, config = load_stage4_model(source) if source is not None else (None, {})
    if settings.init == "run" and loaded is not None:
        model, init = loaded, str(source)
    else:  # a fresh model of the run's size (the defaults' where the run has none)
        model_config = dict(config.get("model") or asdict(Stage4ModelConfig()))
        model = Stage4SequenceModel.from_config({**model_config, "input_dim": int(view.feature_dim)})
        config = {"model": model.config, "train": config.get("train", {})}
        init = "fresh"
    if int(model.cfg.input_dim) != int(view.feature_dim):
        raise ValueError(
            f"the run's Stage 4 model reads {model.cfg.input_dim}-wide panels, the train store holds "
            f"{view.feature_dim}-wide ones (encode with the run's Stage 3 checkpoint, or --init fresh)"
        )
    builder = BatchBuilder(view, trained_modalities(config), balloons=bool(model.cfg.balloon_tokens))
    trainer = PapTrainer(model, builder, train, stop, settings, log)
    trainer.train()
    if trainer.best_state is not None:
        model.load_state_dict(trainer.best_state)
    train_config = dict(config.get("train", {}), comicspap=asdict(settings))
    state = {"config": {"model": model.config, "train": train_config}, "model_state_dict": model.state_dict()}
    checkpoint.save_checkpoint(state, out)
    record = dict(
        zero_shot=False,
        init=init,
        settings=asdict(settings),
        samples={t: len(s) for t, s in train.items()},
        held_out={t: len(s) for t, s in stop.items()},
        best_epoch=int(trainer.best.get("epoch", 0)),
        held_out_accuracy=trainer.best.get("value"),
        history=trainer.history.epochs,
        seconds=round(time.perf_counter() - started, 3),
        model=MODEL_FILE,
    )
    (out.parent / FIT_RECORD).write_text(json.dumps(record, indent=1) + "\n", encoding="utf-8")
    return record
