"""Stage 4's text-cloze and character-coherence heads on COMICS samples: the batch of text-only panels, building the
model from its config, and its candidate scores (inference; training is ``comicnb.comics.training``)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
import torch
from torch import Tensor

from comicnb.checkpoint import file_sha256
from comicnb.comics.reader import CHAR_COHERENCE, TEXT_CLOZE

STAGE4_TASK = {TEXT_CLOZE: "text_cloze", CHAR_COHERENCE: "character_coherence"}


def make_batch(context: Tensor, candidates: Tensor, answer: Tensor, tokens: str = "panel") -> dict[str, Tensor]:
    """A Stage 4 candidate-task batch of text-only panels: with panel tokens every context panel is present (a panel
    without text is a zero vector); with box tokens (``tokens="box"``) the empty places after a panel's boxes are
    masked; every candidate is present, the query slot is appended (slot -1), no caption, left-to-right."""
    batch_size, length, dim = context.shape
    present = context.abs().sum(dim=-1) > 0 if tokens == "box" else torch.ones(batch_size, length, dtype=torch.bool)
    return {
        "context": context,
        "context_mask": present,
        "slot": torch.full((batch_size,), -1, dtype=torch.long),
        "candidates": candidates,
        "candidate_mask": torch.ones(candidates.shape[:2], dtype=torch.bool),
        "answer": answer.long(),
        "query": torch.zeros(batch_size, dim),
        "direction": torch.zeros(batch_size, dtype=torch.long),
    }


def stage4_model_sha256() -> str:
    """SHA-256 of comicnb/stage4/model.py: a saved model names the code it was trained with."""
    from comicnb.stage4 import model

    return file_sha256(model.__file__)


def build_model(config: Mapping[str, Any]):
    """A Stage4SequenceModel from its config dict."""
    from comicnb.stage4.model import Stage4SequenceModel

    return Stage4SequenceModel.from_config(dict(config))


@torch.no_grad()
def model_scores(
    model, task: str, context: np.ndarray, candidates: np.ndarray, batch_size: int = 256, tokens: str = "panel"
) -> np.ndarray:
    """(N, C) candidate logits of a trained model (eval mode) for text vectors of samples (``tokens``: the
    context's, as ``make_batch`` takes them)."""
    model.eval()
    out = []
    for start in range(0, len(context), batch_size):
        ctx = torch.from_numpy(context[start : start + batch_size])
        cand = torch.from_numpy(candidates[start : start + batch_size])
        batch = make_batch(ctx, cand, torch.zeros(len(ctx), dtype=torch.long), tokens)
        out.append(model.task_logits(STAGE4_TASK[task], batch).float().numpy())
    return np.concatenate(out) if out else np.zeros((0, candidates.shape[1] if candidates.ndim == 3 else 0))
