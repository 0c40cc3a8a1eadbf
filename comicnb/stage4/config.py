"""Stage 4's settings, each with its one default: the sequence model's (``Stage4ModelConfig``) and training's
(``Stage4TrainConfig``), the ablations, and where a run's Stage 4 checkpoints live.

A checkpoint stores both configs as dicts under ``config`` (``model``, ``train``) and the model is rebuilt from it;
notebook 04's parameters and a ``--params`` file are one flat mapping, split here by field name
(``comicnb.settings``). The defaults are the small configuration a bare run trains: notebook 04's parameters repeat
them (a test keeps them equal), ``comicnb train stage4`` without ``--params`` trains the same model, and a profile's
params file states what it changes (the study's model is larger; ``SEED_SIZE`` is the seed's).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from comicnb import settings
from comicnb.checkpoint import StageCheckpoints
from comicnb.precision import PRECISIONS
from comicnb.settings import UnknownSettingError, check_known, did_you_mean, names, pick
from comicnb.stage3.fusion import MODALITIES
from comicnb.stage4.tasks import TASKS

__all__ = [
    "ABLATIONS",
    "DERIVED",
    "MAIN",
    "MODELS",
    "NOTEBOOK_KEYS",
    "RESUMABLE_CHANGES",
    "SEED_SIZE",
    "SEED_TASK_WEIGHTS",
    "SETTING_KEYS",
    "STAGE",
    "Stage4ModelConfig",
    "Stage4TrainConfig",
    "UnknownSettingError",
    "WRITTEN_BEFORE",
    "ablation_settings",
    "checkpoints",
    "config_dicts",
    "settings_from",
    "split_stage4_settings",
]

STAGE = "stage4"
# Model settings a checkpoint written before they existed was trained without (their value then, not today's default).
WRITTEN_BEFORE = {"layout_prior": False, "balloon_tokens": False}
SEED_SIZE = dict(d_model=512, nhead=8, num_layers=6, dim_feedforward=2048)  # the seed's train_stage4.py defaults
# The seed's multi-task table (docs/stage4 README, "Training Tasks"). Its flag example sets
# `--reading_order_weight 0.3`, which contradicts the table's 0.7; the table is the seed's stated design, so 0.7 it is.
SEED_TASK_WEIGHTS: dict[str, float] = {
    "panel_picking": 1.0,
    "visual_closure": 0.8,
    "text_closure": 0.8,
    "reading_order": 0.7,
    "character_coherence": 0.5,
    "caption_relevance": 0.5,
    "text_cloze": 1.0,
}


@dataclass
class Stage4ModelConfig:
    """Size of the Stage 4 model (see the module for where its defaults are used); ``SEED_SIZE`` is the seed's."""

    input_dim: int = 512  # width of the Stage 3 vectors (the store's feature_dim; the trainer takes it from the store)
    d_model: int = 128  # width of the sequence transformer
    nhead: int = 4  # attention heads
    num_layers: int = 2  # transformer layers
    dim_feedforward: int = 256  # feed-forward width
    dropout: float = 0.1  # dropout inside the transformer
    use_transformer: bool = True  # False: the ablation with no encoder layers
    input_prior: bool = True  # a candidate logit adds the learned-weight cosine of the raw inputs (see CandidateHead)
    layout_prior: bool = True  # reading order adds the geometry baseline, fitted on the training pages and held
    balloon_tokens: bool = False  # text boxes enter as tokens of their own (context, per-box candidates; .balloons)


@dataclass
class Stage4TrainConfig:
    """How Stage 4 trains (the model carries its own config)."""

    epochs: int = 2  # passes over freshly drawn training samples
    batch_size: int = 16  # samples per task batch (one task per optimisation step); also pages per strip term
    lr: float = 1e-3  # peak learning rate of AdamW (the seed's: 1e-4)
    weight_decay: float = 0.01
    warmup_fraction: float = 0.1  # share of all steps spent warming the learning rate up from zero
    grad_clip: float = 1.0
    precision: str = "auto"  # comicnb.precision: auto (bf16 on a GPU that has it, else fp32), fp32, bf16, fp16
    seed: int = 0  # model initialisation, each epoch's training draws, batch order and every step's dropout
    train_samples: int = 300  # training samples per task drawn afresh each epoch (0: every sample the task gives)
    strip_weight: float = 0.5  # the seed's contrastive weight: panels of one page vs other pages (strip embedding)
    strip_temperature: float = 0.1
    task_weights: dict[str, float] = field(default_factory=lambda: dict(SEED_TASK_WEIGHTS))  # 0 leaves a task out
    checkpoint_every: int = 0  # also write the last checkpoint every this many steps inside an epoch (0: epoch ends)
    modalities: list[str] = field(default_factory=lambda: list(MODALITIES))  # stored parts a panel enters with
    # Modality dropout: each training batch enters without its images with this probability, and without its texts
    # with the same probability (every panel keeps its box), so the model learns to do without either (0: off).
    modality_dropout: float = 0.0
    eval_batch_size: int = 64  # samples per forward pass in validation (no effect on the result)

    def __post_init__(self) -> None:
        if self.precision not in PRECISIONS:
            raise ValueError(f"precision must be one of {', '.join(PRECISIONS)}, not {self.precision!r}")
        # A partial mapping overrides the seed's table task by task: {reading_order: 0.3} keeps the other six.
        weights = dict(self.task_weights or {})
        unknown = [k for k in weights if k not in TASKS]
        if unknown:
            raise UnknownSettingError(did_you_mean("Stage 4 task in task_weights", unknown, TASKS, "the tasks"))
        self.task_weights = {task: float(weights.get(task, SEED_TASK_WEIGHTS[task])) for task in TASKS}
        if any(w < 0 for w in self.task_weights.values()):
            raise ValueError(f"task weights must be >= 0: {self.task_weights}")
        if isinstance(self.modalities, str):
            self.modalities = [m.strip() for m in self.modalities.split(",") if m.strip()]
        self.modalities = list(self.modalities)
        wrong = [m for m in self.modalities if m not in MODALITIES]
        if wrong or not self.modalities:
            raise ValueError(f"modalities must be a non-empty subset of {MODALITIES}, not {self.modalities}")
        if not 0.0 <= self.modality_dropout <= 0.5:
            raise ValueError(
                f"modality_dropout must be within [0, 0.5] (per modality left out), not {self.modality_dropout}"
            )
        if self.modality_dropout and set(self.modalities) != set(MODALITIES):
            raise ValueError(f"modality_dropout needs every modality ({', '.join(MODALITIES)}), not {self.modalities}")
        if self.batch_size < 1 or self.epochs < 0 or self.train_samples < 0:
            raise ValueError("batch_size must be >= 1, epochs and train_samples >= 0")

    @property
    def active_tasks(self) -> tuple[str, ...]:
        """The tasks trained (weight above zero), in TASKS order."""
        return tuple(task for task in TASKS if self.task_weights[task] > 0)


# Settings that cannot change a run's result: a run may resume with other values.
RESUMABLE_CHANGES = frozenset({"checkpoint_every", "eval_batch_size"})
DERIVED = frozenset({"input_dim"})  # the model's input width is the store's feature_dim
# Notebook 04's own parameters: where the run and store are and how its fixed task sets were built. A params file
# of the notebook holds them beside the training settings; they are not training settings.
NOTEBOOK_KEYS = frozenset({"run_dir", "store", "max_samples", "rebuild_tasks", "ablations", "resume", "overwrite"})
# The ablations, each the main model's settings with these changed, trained the same way into
# <run>/stage4/ablations/<name>/: what the transformer buys (the same heads on the projected Stage 3 vectors) and what
# each content modality buys (a panel enters with its text only, or its image only; its box, the panel's place on the
# page, enters every variant).
ABLATIONS: dict[str, dict[str, Any]] = {
    "no_transformer": {"use_transformer": False},
    "text_only": {"modalities": ["text"]},
    "vision_only": {"modalities": ["vision"]},
    # Not a part taken away but one added: the main model with each context panel's text boxes as tokens of their
    # own (comicnb.stage4.balloons), trained the same way so the two compare directly.
    "balloon_tokens": {"balloon_tokens": True},
}
MAIN = "stage4"  # the main model's name in result tables; an ablation's is its name in ABLATIONS
MODELS = (MAIN, *ABLATIONS)  # every trained model of a run, the main one first
SETTING_KEYS = frozenset((*names(Stage4ModelConfig), *names(Stage4TrainConfig)))
WHERE = "the settings are notebook 04's training parameters"


def settings_from(namespace: Mapping[str, Any]) -> dict[str, Any]:
    """The training settings among a namespace's names (a notebook's parameters: ``settings_from(globals())``)."""
    return settings.settings_from(namespace, SETTING_KEYS)


def split_stage4_settings(given: Mapping[str, Any]) -> tuple[Stage4ModelConfig, Stage4TrainConfig]:
    """Flat settings (a params file, notebook 04's parameters) -> the two configs; unknown keys are an error.

    ``input_dim`` keeps its default here: the trainer sets it from the store (and refuses a store of another width).
    """
    check_known(given, SETTING_KEYS, "Stage 4 setting", WHERE)
    return pick(Stage4ModelConfig, given), pick(Stage4TrainConfig, given)


def config_dicts(model: Stage4ModelConfig, train: Stage4TrainConfig) -> dict[str, dict]:
    """The ``config`` entry of a checkpoint."""
    return settings.config_dicts(model=model, train=train)


def ablation_settings(given: Mapping[str, Any], ablation: str | None) -> dict[str, Any]:
    """The settings of an ablation: the main model's with the ablation's changes (the settings as given for None)."""
    if ablation is not None and ablation not in ABLATIONS:
        raise ValueError(f"unknown ablation {ablation!r}: one of {', '.join(ABLATIONS)}")
    return {**given, **(ABLATIONS[ablation] if ablation else {})}


def checkpoints(run_dir: str | Path, ablation: str | None = None) -> StageCheckpoints:
    """The Stage 4 checkpoint files of a run: ``<run_dir>/stage4/checkpoint.pt`` and ``best_model.pt``; an
    ablation's (ABLATIONS) under ``<run_dir>/stage4/ablations/<name>/``."""
    if ablation is None:
        return StageCheckpoints(Path(run_dir), STAGE)
    if ablation not in ABLATIONS:
        raise ValueError(f"unknown ablation {ablation!r}: one of {', '.join(ABLATIONS)}")
    return StageCheckpoints(Path(run_dir), f"{STAGE}/ablations/{ablation}")
