"""Stage 4 batches: task samples turned into the tensors ``Stage4SequenceModel`` reads, from the embedding store.

A ``BatchBuilder`` reads the run's view (``comicnb.stage4.view``: the stored vectors and the frozen Stage 3 model of the
store's checkpoint), so a model is fed exactly what the baselines score. Candidates are rebuilt from the parts each one
names and re-fused by the frozen fusion (``comicnb.stage4.inputs``). ``modalities`` keeps only some parts
everywhere (context, candidates, the answer panel, strips): ``("text",)`` and ``("vision",)`` are the text-only and
vision-only ablations. A caption (caption relevance) is the task's input, not a panel's part, and always enters.

``collate(task_set, samples)`` gives, for B samples, L context places and C candidates (D = the store's width):

- ``context`` (B, L, D) float32 and ``context_mask`` (B, L) bool: the context panels in the sample's order; panel
  picking inserts its masked place as a zero row at ``slot``, marked valid (it is a place on the page);
- ``slot`` (B,) long: the masked place, -1 where the answer follows the context;
- ``candidates`` (B, C, D), ``candidate_mask`` (B, C), ``answer`` (B,) long (-1 for reading order);
- ``query`` (B, D): caption relevance's caption as a Stage 3 text-only query, zero elsewhere;
- ``answer_panel`` (B, D): the text tasks' answer panel as every candidate shows it (text-free image, the slot's
  composition) without a text, zero elsewhere; candidates of a text task differ only in their text;
- ``boxes`` (B, L, 4) float32: each context panel's box as fractions of its page ([x1, y1, x2, y2]); zero for the
  masked place and padding;
- ``order`` (B, L) long: reading order's target positions, -1 padding; ``direction`` (B,) long: the book's
  direction (``comicnb.stage4.geometry.DIRECTIONS``: 0 unlabelled, 1 rtl, 2 ltr);
- with ``balloons`` (a builder for a model with balloon tokens, text among its modalities): ``balloons`` (B, L, K, D)
  each context panel's text boxes as text-only vectors, ``balloon_boxes`` (B, L, K, 4) their places inside the
  panel and ``balloon_mask`` (B, L, K) (``comicnb.stage4.balloons``); none for the masked place; and where
  candidates give their text per text box (character coherence), ``candidate_balloons`` (B, C, K, D),
  ``candidate_balloon_boxes`` (B, C, K, 4) and ``candidate_balloon_mask`` (B, C, K).

``pages(indices)`` gives whole stored pages for the strip term, ``page_indices(split)`` the pages of a split.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence

import numpy as np
import torch
from torch import Tensor

from comicnb.stage3.fusion import MODALITIES
from comicnb.stage4.balloons import PanelBalloons, candidate_balloons, panel_balloons
from comicnb.stage4.geometry import direction_code
from comicnb.stage4.inputs import candidate_parts, refuse, refuse_chunked
from comicnb.stage4.tasks import TEXT_TASKS, Candidate, TaskSample, TaskSet
from comicnb.stage4.view import RunView

TEXT = MODALITIES.index("text")


class BatchBuilder:
    """Task samples and stored pages as model batches (see the module), from one run's view."""

    def __init__(self, view: RunView, modalities: Sequence[str] = MODALITIES, balloons: bool = False) -> None:
        """Batches of ``view``'s panels entering with ``modalities`` (all three, or an ablation's part); with
        ``balloons``, each context panel's text boxes too (only where the text enters)."""
        unknown = set(modalities) - set(MODALITIES)
        if unknown or not modalities:
            raise ValueError(f"modalities must be a non-empty subset of {MODALITIES}, not {tuple(modalities)}")
        self.view = view
        self.modalities = tuple(m for m in MODALITIES if m in modalities)
        self.keep = np.array([m in self.modalities for m in MODALITIES])  # (3,) parts that enter
        self.panel_masks = view.modality_masks.any(axis=-1)  # (P, N) real panels
        self.vectors = self._panel_vectors()  # (P, N, D) every stored panel under the kept modalities
        self.captions: dict[str, np.ndarray] = {}
        self.balloons: PanelBalloons | None = panel_balloons(view) if balloons and "text" in self.modalities else None
        self.box_texts: dict[str, np.ndarray] = {}  # candidates' per-box texts, each encoded once

    def with_balloons(self, balloons: bool) -> BatchBuilder:
        """The same builder (its vectors shared) giving balloon tokens or not."""
        other = copy.copy(self)
        other.balloons = panel_balloons(self.view) if balloons and "text" in self.modalities else None
        return other

    @property
    def feature_dim(self) -> int:
        """Width D of every vector a batch holds (the model's ``input_dim``)."""
        return int(self.view.fused.shape[-1])

    @property
    def model(self) -> torch.nn.Module:
        """The frozen Stage 3 model of the store's checkpoint."""
        return self.view.model

    def _panel_vectors(self) -> np.ndarray:
        """The stored fused vectors when every modality is kept (exactly what the baselines compare with), else
        the stored parts re-fused without the left-out ones."""
        if self.keep.all():
            return self.view.fused.astype(np.float32, copy=False)
        parts, masks = self.view.modalities, self.view.modality_masks & self.keep
        flat_parts, flat_masks = parts.reshape(-1, *parts.shape[-2:]), masks.reshape(-1, masks.shape[-1])
        return refuse_chunked(flat_parts, flat_masks, self.model).reshape(parts.shape[0], parts.shape[1], -1)

    # ------------------------------------------------------------------------------------------------ samples

    def collate(self, task_set: TaskSet, samples: Sequence[TaskSample] | None = None) -> dict[str, Tensor]:
        """One batch of samples of ``task_set`` (all of them when None); see the module for the keys."""
        samples = list(task_set.samples if samples is None else samples)
        batch = self._contexts(samples)
        batch.update(self._candidates(task_set, samples))
        batch["query"] = torch.from_numpy(self._queries(samples))
        batch["direction"] = torch.tensor([direction_code(s.direction) for s in samples], dtype=torch.long)
        return batch

    def _contexts(self, samples: Sequence[TaskSample]) -> dict[str, Tensor]:
        """context, context_mask, boxes, slot and order."""
        places = [_places(s) for s in samples]
        length = max([1, *(len(p) for p in places)])  # never 0 wide: caption relevance has no context
        context = np.zeros((len(samples), length, self.feature_dim), dtype=np.float32)
        mask = np.zeros((len(samples), length), dtype=bool)
        boxes = np.zeros((len(samples), length, 4), dtype=np.float32)
        order = np.full((len(samples), length), -1, dtype=np.int64)
        for b, (sample, ids) in enumerate(zip(samples, places)):
            mask[b, : len(ids)] = True
            real = [k for k, i in enumerate(ids) if i is not None]
            if real:
                pages, slots = self.view.locate([ids[k] for k in real])
                context[b, real] = self.vectors[pages, slots]
                boxes[b, real] = [self.view.box(ids[k]) for k in real]
            if sample.order is not None:
                order[b, : len(sample.order)] = sample.order
        slot = [s.slot if s.task == "panel_picking" and s.slot is not None else -1 for s in samples]
        batch = dict(
            context=torch.from_numpy(context),
            context_mask=torch.from_numpy(mask),
            boxes=torch.from_numpy(boxes),
            slot=torch.tensor(slot, dtype=torch.long),
            order=torch.from_numpy(order),
        )
        if self.balloons is not None:
            batch.update(self._balloons(places, length))
        return batch

    def _balloons(self, places: Sequence[Sequence[int | None]], length: int) -> dict[str, Tensor]:
        """balloons, balloon_boxes and balloon_mask of the context places (none for the masked place)."""
        table = self.balloons
        width, dim = table.width, self.feature_dim
        vectors = np.zeros((len(places), length, width, dim), dtype=np.float32)
        boxes = np.zeros((len(places), length, width, 4), dtype=np.float32)
        mask = np.zeros((len(places), length, width), dtype=bool)
        for b, ids in enumerate(places):
            real = [k for k, i in enumerate(ids) if i is not None]
            if real:
                pages, slots = self.view.locate([ids[k] for k in real])
                vectors[b, real] = table.vectors[pages, slots]
                boxes[b, real] = table.boxes[pages, slots]
                mask[b, real] = table.mask[pages, slots]
        return dict(
            balloons=torch.from_numpy(vectors),
            balloon_boxes=torch.from_numpy(boxes),
            balloon_mask=torch.from_numpy(mask),
        )

    def _candidates(self, task_set: TaskSet, samples: Sequence[TaskSample]) -> dict[str, Tensor]:
        """candidates, candidate_mask, answer and answer_panel, every candidate of the batch re-fused in one pass."""
        width = max([1, *(len(s.candidates) for s in samples)])
        flat = [c for s in samples for c in s.candidates]
        parts, masks = candidate_parts(flat, self.view, task_set.texts)  # (K, 3, D), (K, 3)
        vectors = refuse(parts, masks & self.keep, self.model)  # (K, D)
        firsts = np.cumsum([0] + [len(s.candidates) for s in samples])[:-1]
        shown = np.array([s.task in TEXT_TASKS and len(s.candidates) > 0 for s in samples])
        # What every candidate of a text task shares: the answer's image and place, its text masked.
        panel_masks = masks[firsts[shown]] & self.keep
        panel_masks[:, TEXT] = False
        panels = np.zeros((len(samples), self.feature_dim), dtype=np.float32)
        panels[shown] = refuse(parts[firsts[shown]], panel_masks, self.model)
        candidates = np.zeros((len(samples), width, self.feature_dim), dtype=np.float32)
        candidate_mask = np.zeros((len(samples), width), dtype=bool)
        for b, (sample, first) in enumerate(zip(samples, firsts)):
            count = len(sample.candidates)
            candidates[b, :count] = vectors[first : first + count]
            candidate_mask[b, :count] = True
        batch = dict(
            candidates=torch.from_numpy(candidates),
            candidate_mask=torch.from_numpy(candidate_mask),
            answer=torch.tensor([s.answer if s.candidates else -1 for s in samples], dtype=torch.long),
            answer_panel=torch.from_numpy(panels),
        )
        if self.balloons is not None and any(c.text_boxes for c in flat):
            batch.update(self._candidate_balloons(flat, firsts, samples, width))
        return batch

    def _candidate_balloons(
        self, flat: Sequence[Candidate], firsts: np.ndarray, samples: Sequence[TaskSample], width: int
    ) -> dict[str, Tensor]:
        """candidate_balloons (B, C, K, D), candidate_balloon_boxes (B, C, K, 4), candidate_balloon_mask (B, C, K):
        each candidate's own text boxes (``comicnb.stage4.balloons.candidate_balloons``)."""
        vectors, boxes, mask = candidate_balloons(flat, self.balloons, self.view, self.box_texts)
        k, dim = vectors.shape[1], vectors.shape[2]
        out_vectors = np.zeros((len(samples), width, k, dim), dtype=np.float32)
        out_boxes = np.zeros((len(samples), width, k, 4), dtype=np.float32)
        out_mask = np.zeros((len(samples), width, k), dtype=bool)
        for b, (sample, first) in enumerate(zip(samples, firsts)):
            count = len(sample.candidates)
            out_vectors[b, :count] = vectors[first : first + count]
            out_boxes[b, :count] = boxes[first : first + count]
            out_mask[b, :count] = mask[first : first + count]
        return dict(
            candidate_balloons=torch.from_numpy(out_vectors),
            candidate_balloon_boxes=torch.from_numpy(out_boxes),
            candidate_balloon_mask=torch.from_numpy(out_mask),
        )

    @torch.no_grad()
    def _queries(self, samples: Sequence[TaskSample]) -> np.ndarray:
        """(B, D) captions as text-only queries in the fused space (as stage3_cosine queries), each encoded once."""
        new = sorted({s.query_text for s in samples if s.query_text and s.query_text not in self.captions})
        if new:
            encoded = self.model.encode_texts(new).float().cpu().numpy()
            self.captions.update(zip(new, encoded))
        queries = np.zeros((len(samples), self.feature_dim), dtype=np.float32)
        for b, sample in enumerate(samples):
            if sample.query_text:
                queries[b] = self.captions[sample.query_text]
        return queries

    # -------------------------------------------------------------------------------------------------- pages

    def page_indices(self, split: str | None = None) -> np.ndarray:
        """Store pages (of one split) that have at least one panel."""
        return self.view.split_pages(split)

    def pages(self, indices: Sequence[int] | np.ndarray) -> tuple[Tensor, Tensor]:
        """(panel_embeddings (B, N, D), panel_mask (B, N) bool) of store pages, N their most panels, reading
        order as stored; the input of ``Stage4SequenceModel.strip_loss``."""
        pages = np.asarray(indices, dtype=np.int64)
        masks = self.panel_masks[pages]
        width = max(1, int(masks.sum(axis=1).max(initial=0)))
        return torch.from_numpy(np.ascontiguousarray(self.vectors[pages, :width])), torch.from_numpy(masks[:, :width])


def _places(sample: TaskSample) -> list[int | None]:
    """The context's panel ids in order; panel picking's masked place inserted as None at ``slot``."""
    if sample.task == "panel_picking" and sample.slot is not None:
        return [*sample.context[: sample.slot], None, *sample.context[sample.slot :]]
    return list(sample.context)


def reduced_builders(view: RunView, balloons: bool = False) -> dict[str, BatchBuilder]:
    """Batch builders that leave one content modality out, by the one left out (every panel keeps its box; balloon
    tokens, where asked, go with the text): modality dropout's inputs in training, and what
    ``diagnostics.modality_reliance`` scores a trained model with."""
    kept = {left: tuple(m for m in MODALITIES if m != left) for left in ("vision", "text")}
    return {left: BatchBuilder(view, modalities, balloons) for left, modalities in kept.items()}
