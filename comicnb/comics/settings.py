"""Model size and training settings of a COMICS scorer (the command line's and notebook 05's defaults).

The model is Stage 4's sequence model: its size defaults are ``Stage4ModelConfig``'s, so a COMICS scorer and a bare
Stage 4 run build the same model; what is COMICS' own (epochs, batch, learning rate, early stopping) is set here.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, fields
from typing import Any

from comicnb.stage4.config import Stage4ModelConfig

PAIR_VECTORS = ("first_box", "joined")  # how a character-coherence candidate becomes a vector (comicnb.comics.embed)
CONTEXT_TOKENS = ("panel", "box")  # a context token per panel (its boxes joined) or per text box (comicnb.comics.embed)


@dataclass
class FitSettings:
    """Model size and training of a COMICS scorer (small: the dev folds hold ~10k samples)."""

    d_model: int = Stage4ModelConfig.d_model
    nhead: int = Stage4ModelConfig.nhead
    num_layers: int = Stage4ModelConfig.num_layers
    dim_feedforward: int = Stage4ModelConfig.dim_feedforward
    dropout: float = Stage4ModelConfig.dropout
    epochs: int = 10
    batch_size: int = 64
    lr: float = 3e-4
    weight_decay: float = 0.01
    grad_clip: float = 1.0  # gradient norm clip (the learning rate is constant: no warm-up, no decay)
    patience: int = 2  # epochs without a lower validation loss before stopping
    validation_share: float = 0.1  # of the training books
    seed: int = 0
    pair_vectors: str = "first_box"  # character coherence: a candidate's vector from its first box, or "joined"
    context_tokens: str = "panel"  # one context token per panel (its boxes joined), or one per text box ("box")
    # Stage 4's input prior (a candidate's raw cosine to the context, added to its logit): None keeps the model's
    # default for text cloze, where that cosine is the zero-shot baseline, and turns it off for character coherence,
    # where both candidates hold the same two boxes and the cosine says nothing about their order.
    input_prior: bool | None = None

    def model_config(self, input_dim: int, task: str) -> dict:
        """The Stage4ModelConfig fields (``input_prior`` only where set or off by the task's default)."""
        keys = ("d_model", "nhead", "num_layers", "dim_feedforward", "dropout")
        config = dict(input_dim=input_dim, **{k: getattr(self, k) for k in keys})
        prior = self.input_prior if self.input_prior is not None else (False if task == "char_coherence" else None)
        if prior is not None:
            config["input_prior"] = prior
        return config


def settings_from(values: Mapping[str, Any]) -> FitSettings:
    """FitSettings from a mapping, ignoring None values; an unknown key is an error."""
    known = {f.name for f in fields(FitSettings)}
    unknown = sorted(set(values) - known)
    if unknown:
        raise ValueError(f"unknown fit settings {unknown}: known are {sorted(known)}")
    return FitSettings(**{k: v for k, v in values.items() if v is not None})
