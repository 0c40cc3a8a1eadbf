"""What a Stage 4 model and a baseline are given of a candidate: the stored parts it names, re-fused through the frozen
Stage 3 fusion, so every model and baseline rebuilds exactly the same input (``comicnb.stage4.tasks`` names the parts).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from comicnb.stage4.tasks import Candidate, TaskSample
from comicnb.stage4.view import RunView
from comicnb.store.schema import TEXT_FREE_VISION


def candidate_parts(
    candidates: Sequence[Candidate], view: RunView, texts: np.ndarray | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """(C, 3, D) per-modality embeddings and (C, 3) mask of candidates, from the parts each one names: the image of
    ``panel_id`` (full or text-free), the text of ``text_from`` or row ``text_row`` of the set's ``texts``, the
    composition of ``composition_from``; a part a candidate does not name is masked."""
    dim = view.modalities.shape[-1]
    parts = np.zeros((len(candidates), 3, dim), dtype=np.float32)
    mask = np.zeros((len(candidates), 3), dtype=bool)
    for i, c in enumerate(candidates):
        if c.vision != "none":
            parts[i, 0], mask[i, 0] = _vision(c, view)
        if c.text_from is not None:
            parts[i, 1], mask[i, 1] = stored_part(view, c.text_from, 1)
        elif c.text_row is not None:
            parts[i, 1], mask[i, 1] = texts[c.text_row], True
        if c.composition_from is not None:
            parts[i, 2], mask[i, 2] = stored_part(view, c.composition_from, 2)
    return parts, mask


def per_sample(rows: np.ndarray, samples: Sequence[TaskSample]) -> list[np.ndarray]:
    """Rows of every sample's candidates, stacked sample after sample, split back into one array per sample."""
    if not samples:
        return []
    return np.split(np.asarray(rows), np.cumsum([len(s.candidates) for s in samples])[:-1])


def stored_part(view: RunView, panel_id: int, modality: int) -> tuple[np.ndarray, bool]:
    """A panel's stored embedding of one modality and whether it has it."""
    page, slot = divmod(int(panel_id), view.max_panels)
    return view.modalities[page, slot, modality], bool(view.modality_masks[page, slot, modality])


def _vision(candidate: Candidate, view: RunView) -> tuple[np.ndarray, bool]:
    """The candidate's image embedding: of the text-free twin where the panel has one, else (with a warning) of the
    drawn page, words included."""
    if candidate.vision == "text_free":
        page, slot = divmod(int(candidate.panel_id), view.max_panels)
        if view.text_free_masks is not None and view.text_free_masks[page, slot]:
            return view.text_free_vision[page, slot], True
        view.warn_once(
            "text_free_vision",
            f"panels without a text-free twin in the store ({TEXT_FREE_VISION}): their text-free candidates are "
            "re-fused from the drawn image, text included",
        )
    return stored_part(view, candidate.panel_id, 0)


@torch.no_grad()
def refuse(parts: np.ndarray, mask: np.ndarray, model: Any) -> np.ndarray:
    """(C, D) fused vectors of (C, 3, D) per-modality parts under a (C, 3) mask, through the frozen Stage 3 fusion."""
    if len(parts) == 0:
        return np.zeros((0, parts.shape[-1]), dtype=np.float32)
    device = model.device
    fused = model.fuse(torch.from_numpy(parts).to(device), torch.from_numpy(mask).to(device))  # (C, D)
    return fused.float().cpu().numpy()


def refuse_chunked(parts: np.ndarray, mask: np.ndarray, model: Any, chunk: int = 4096) -> np.ndarray:
    """``refuse`` ``chunk`` panels at a time: bounds memory on a large store."""
    pieces = [refuse(parts[i : i + chunk], mask[i : i + chunk], model) for i in range(0, len(parts), chunk)]
    return np.concatenate(pieces) if pieces else np.zeros((0, parts.shape[-1]), np.float32)
