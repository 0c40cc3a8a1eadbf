"""Stage 3's settings as three dataclasses, each defined once: the model's, the objective's and training's.

A checkpoint stores each as a dict under ``config`` (``model``, ``objective``, ``train``) and the model is rebuilt
from it; notebook 02's parameters and a ``--params`` file are one flat mapping, split here by field name
(``comicnb.settings``). The defaults here are the only ones: notebook 02's parameters repeat them (a test keeps them
equal), and a profile's params file states what it changes.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from comicnb import settings
from comicnb.precision import PRECISIONS
from comicnb.settings import UnknownSettingError, check_known, names, pick

__all__ = [
    "DERIVED",
    "RESUMABLE_CHANGES",
    "SETTING_KEYS",
    "ObjectiveConfig",
    "PanelModelConfig",
    "TrainConfig",
    "UnknownSettingError",
    "config_dicts",
    "settings_from",
    "split_settings",
]


@dataclass
class PanelModelConfig:
    """The panel encoder: backbones, text model, width and what is frozen."""

    visual_backbone: str | list[str] = "efficientnet_lite0"  # registry name, alias (resnet, both), timm name or list
    visual_fusion: str = "attention"  # how several backbones combine: concat, attention or gate
    feature_dim: int = 512  # width of every panel embedding
    freeze_backbones: bool = True  # pretrained encoders fixed (eval mode, no gradients); adapters still train
    text_model: str | None = None  # sentence-transformers hub id or folder; None means the packaged MiniLM
    comp_dim: int = 7  # composition features per panel
    backbone_weights: dict[str, str] = field(default_factory=dict)  # {backbone: local weights file or folder}
    tiny: bool = False  # tiny randomly initialised encoders (tests)
    max_text_length: int = 64  # tokens kept of a panel's text
    fusion_dropout: float = 0.3  # training only: chance of hiding each present modality from fusion (never all)
    fusion_residual: float = 0.2  # share of the fused mix given equally to the present modalities, beside the gate

    def __post_init__(self) -> None:
        if isinstance(self.visual_backbone, str) and "," in self.visual_backbone:
            self.visual_backbone = [name.strip() for name in self.visual_backbone.split(",")]
        elif not isinstance(self.visual_backbone, str):
            self.visual_backbone = list(self.visual_backbone)
        self.text_model = self.text_model or ("tiny" if self.tiny else None)  # "" means the packaged default
        self.backbone_weights = dict(self.backbone_weights or {})


GATE_TERMS = ("contrastive", "reconstruction", "instance", "modality", "neighbourhood")  # the terms that read fusion


@dataclass
class ObjectiveConfig:
    """The Stage 3 losses: weights of the five terms and the instance term's feature augmentation."""

    feature_dim: int = 512  # taken from the model
    temperature: float = 0.07  # softmax temperature of every contrastive term
    contrastive_weight: float = 1.0
    reconstruction_weight: float = 0.5
    alignment_weight: float = 0.3
    instance_weight: float = 1.0
    modality_weight: float = 0.0  # fused vector finds its single-modality queries; off: at 0.5 it over-weights vision
    gate_terms: list[str] = field(default_factory=list)  # terms that may move the gate (none: it holds the prior)
    neighbourhood_weight: float = 0.0  # fused and single-modality vectors keep the pretrained encoders' neighbours
    max_panels: int = 64  # panel positions the reconstruction head knows; taken from training's max_panels
    feature_noise: float = 0.1  # instance view: Gaussian noise, relative to each embedding's spread
    feature_dropout: float = 0.1  # instance view: dropout on the per-modality embeddings
    modality_drop: float = 0.3  # instance view: chance of hiding each modality (never all of a panel's)

    def __post_init__(self) -> None:
        self.gate_terms = [self.gate_terms] if isinstance(self.gate_terms, str) else list(self.gate_terms)
        unknown = sorted(set(self.gate_terms) - set(GATE_TERMS))
        if unknown:
            raise ValueError(f"gate_terms names {unknown}; the terms that read the fused vector are {GATE_TERMS}")


@dataclass
class TrainConfig:
    """How to train (the model and objective carry their own configs)."""

    epochs: int = 8  # passes over the training pages
    batch_size: int = 4  # pages per optimisation step
    lr: float = 1e-3
    weight_decay: float = 0.01
    warmup_fraction: float = 0.1  # share of all steps spent warming the learning rate up from zero
    grad_clip: float = 1.0
    precision: str = "auto"  # comicnb.precision: auto (bf16 on a GPU that has it, else fp32), fp32, bf16, fp16
    seed: int = 0
    max_panels: int = 12
    cache_features: bool = True  # with frozen backbones, run them once per panel and reuse the features
    num_workers: int = 0
    encode_batch_pages: int = 16  # pages per forward pass when filling the feature cache
    checkpoint_every: int = 0  # also write the last checkpoint every this many steps inside an epoch (0: epoch ends)
    best_metric: str = "image_to_text_recall@5"  # validation figure that picks best_model.pt (higher is better)
    min_gate_weight: float = 0.05  # warn when a present modality's mean validation gate weight falls below this
    center_features: bool = True  # centre image features on their training-set mean before the adapter
    gate_prior: bool = True  # start fusion's gate from how well each modality alone finds a panel's page-mates

    def __post_init__(self) -> None:
        if self.precision not in PRECISIONS:
            raise ValueError(f"precision must be one of {', '.join(PRECISIONS)}, not {self.precision!r}")


# Settings that cannot change a run's result: a run may resume with other values.
RESUMABLE_CHANGES = frozenset({"num_workers", "encode_batch_pages", "checkpoint_every", "min_gate_weight"})
DERIVED = frozenset({"feature_dim", "max_panels"})  # objective fields taken from the model and from training


SETTING_KEYS = frozenset((*names(PanelModelConfig), *names(ObjectiveConfig), *names(TrainConfig)))
WHERE = "the settings are notebook 02's parameters"


def settings_from(namespace: Mapping[str, Any]) -> dict[str, Any]:
    """The training settings among a namespace's names (a notebook's parameters: ``settings_from(globals())``)."""
    return settings.settings_from(namespace, SETTING_KEYS)


def split_settings(given: Mapping[str, Any]) -> tuple[PanelModelConfig, ObjectiveConfig, TrainConfig]:
    """Flat settings (a params file, notebook 02's parameters) -> the three configs; unknown keys are an error."""
    check_known(given, SETTING_KEYS, "Stage 3 setting", WHERE)
    model, train = pick(PanelModelConfig, given), pick(TrainConfig, given)
    objective = pick(ObjectiveConfig, given, feature_dim=model.feature_dim, max_panels=train.max_panels)
    return model, objective, train


def config_dicts(model: PanelModelConfig, objective: ObjectiveConfig, train: TrainConfig) -> dict[str, dict]:
    """The ``config`` entry of a checkpoint."""
    return settings.config_dicts(model=model, objective=objective, train=train)
