"""The shape baseline: can a candidate's shape, read off its image, pick the answer?

A crop is squashed to a square before the backbone, so its aspect ratio survives as distortion, and its size (the
resolution it was cropped at) as sharpness: a linear probe reads both off the stored image embedding. This baseline
sees nothing else. ``shape_probe`` is a ridge regression (``RidgeProbe``), fitted on the training books' panels,
from a panel's image embedding to its box's log aspect ratio and log area in page pixels; ``ShapeBaseline`` is the
geometry baseline's small model (fitted on a task's training samples) on each candidate's probed shape beside the
slot's box (the ``composition_from`` every candidate is offered with), their differences, and a flag where there is
no slot or no image. It must sit at chance on every candidate task: a task whose negatives differ from the answer in
shape would let it, and any learned head, pick the answer without the story (``docs/stage4-tasks.md``).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from comicnb.stage4.baselines.geometry import GeometryBaseline
from comicnb.stage4.inputs import candidate_parts, per_sample
from comicnb.stage4.tasks import TaskSet
from comicnb.stage4.view import RunView, log_box_shape

SHAPE_FEATURES = (
    "probe_log_aspect",
    "probe_log_area",
    "has_image",
    "slot_log_aspect",
    "slot_log_area",
    "has_slot",
    "diff_log_aspect",
    "diff_log_area",
    "abs_diff_log_aspect",
    "abs_diff_log_area",
)


def box_shape(view: RunView, panel_ids: np.ndarray) -> np.ndarray:
    """(K, 2) log aspect ratio and log area in page pixels of stored panels' boxes."""
    return log_box_shape(view.panels.set_index("panel_id").loc[np.asarray(panel_ids, dtype=np.int64)])


@dataclass
class RidgeProbe:
    """A ridge regression from image embeddings to a few quantities of their panels (shape, text length...)."""

    alpha: float = 1.0
    weights: np.ndarray | None = None  # (D + 1, Q), bias last
    mean: np.ndarray | None = None  # (D,) embedding mean of the fitting rows

    def fit(self, vectors: np.ndarray, targets: np.ndarray) -> RidgeProbe:
        """Fit (N, D) embeddings to (N, Q) targets."""
        vectors = np.asarray(vectors, dtype=np.float64)
        self.mean = vectors.mean(axis=0)
        design = np.hstack([vectors - self.mean, np.ones((len(vectors), 1))])
        penalty = self.alpha * np.eye(design.shape[1])
        penalty[-1, -1] = 0.0  # the bias is not shrunk
        self.weights = np.linalg.solve(design.T @ design + penalty, design.T @ np.asarray(targets, dtype=np.float64))
        return self

    def predict(self, vectors: np.ndarray) -> np.ndarray:
        """(K, Q) probed quantities of (K, D) embeddings."""
        return (np.asarray(vectors, dtype=np.float64) - self.mean) @ self.weights[:-1] + self.weights[-1]

    def r2(self, vectors: np.ndarray, targets: np.ndarray) -> np.ndarray:
        """(Q,) coefficient of determination of each probed quantity."""
        targets = np.asarray(targets, dtype=np.float64).reshape(len(targets), -1)
        residual = ((targets - self.predict(vectors).reshape(targets.shape)) ** 2).sum(axis=0)
        return 1 - residual / ((targets - targets.mean(axis=0)) ** 2).sum(axis=0)


def split_images(view: RunView, split: str, vision: str = "full") -> tuple[np.ndarray, np.ndarray]:
    """(K, D) image embeddings (the drawn page's, or the text-free twin's for ``text_free``) and (K,) flat ids of the
    panels of ``split`` that have that image."""
    panels = view.panels[(view.panels.split == split).to_numpy()]
    pages, slots = panels.page_index.to_numpy(), panels.slot.to_numpy()
    if vision == "text_free":
        if view.text_free_masks is None:
            return np.zeros((0, view.feature_dim)), np.zeros(0, np.int64)
        present = view.text_free_masks[pages, slots]
        return view.text_free_vision[pages[present], slots[present]], panels.panel_id.to_numpy()[present]
    present = view.modality_masks[pages, slots, 0]
    return view.modalities[pages[present], slots[present], 0], panels.panel_id.to_numpy()[present]


def shape_probe(view: RunView) -> RidgeProbe:
    """The view's shape probe: image embedding -> (log aspect ratio, log area), fitted once on its training panels'
    images, drawn and text-free (candidates are shown either way)."""
    if "shape_probe" not in view.memo:
        drawn, twins = split_images(view, "train"), split_images(view, "train", vision="text_free")
        vectors, ids = np.concatenate([drawn[0], twins[0]]), np.concatenate([drawn[1], twins[1]])
        view.memo["shape_probe"] = RidgeProbe().fit(vectors, box_shape(view, ids))
    return view.memo["shape_probe"]


def probed_shapes(task_set: TaskSet, view: RunView) -> tuple[np.ndarray, np.ndarray]:
    """(K, 2) the probed log aspect ratio and log area of every candidate's image as it is shown (the set's
    candidates sample after sample; zero without an image), and (K,) whether it has one."""
    flat = [c for s in task_set.samples for c in s.candidates]
    parts, mask = candidate_parts(flat, view, task_set.texts)
    return shape_probe(view).predict(parts[:, 0]) * mask[:, :1], mask[:, 0]


@dataclass
class ShapeBaseline(GeometryBaseline):
    """The geometry baseline's model on SHAPE_FEATURES (see the module); candidate tasks only."""

    name = "shape"
    FEATURES = SHAPE_FEATURES

    def candidate_features(self, task_set: TaskSet, view: RunView) -> list[np.ndarray]:
        """Per sample, (C, len(SHAPE_FEATURES)): each candidate's probed shape (as it is shown: full or text-free),
        the slot's box shape, and their differences."""
        flat = [c for s in task_set.samples for c in s.candidates]
        probed, has_image = probed_shapes(task_set, view)
        slots = np.array([-1 if c.composition_from is None else c.composition_from for c in flat], dtype=np.int64)
        has_slot = slots >= 0
        slot = np.zeros((len(flat), 2))
        if has_slot.any():
            slot[has_slot] = box_shape(view, slots[has_slot])
        both = (has_image & has_slot)[:, None]
        diff = np.where(both, probed - slot, 0.0)
        rows = np.hstack([probed, has_image[:, None], slot, has_slot[:, None], diff, np.abs(diff)])
        return per_sample(rows, task_set.samples)
