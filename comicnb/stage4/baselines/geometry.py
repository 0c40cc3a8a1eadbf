"""The geometry baseline: a tiny model fitted on a task's training samples that sees composition alone.

Per candidate it sees the box of the candidate's ``composition_from`` panel (None: no geometry) among the context's
boxes; per reading-order pair the pair's box geometry (``comicnb.stage4.geometry``, the features the Stage 4 model
reads too). When the samplers keep their rule (a candidate enters without its own composition, or with its slot's)
every candidate looks the same to it and it lands exactly at chance; reading order is where layout legitimately helps.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from comicnb.corpus.composition import COMPOSITION_FEATURES
from comicnb.stage4.geometry import PAIR_FEATURES, SMALL_HIDDEN, page_pair_features, small_mlp
from comicnb.stage4.results import READING_ORDER, Result, order_result, picking_result
from comicnb.stage4.tasks import Candidate, TaskSample, TaskSet
from comicnb.stage4.view import RunView

# Per candidate: its composition_from box's own features, how it sits among the context boxes, and where it lies
# from the panels around the answer (the slot's neighbours in panel picking, else the last context panel).
GEOMETRY_FEATURES = (
    *COMPOSITION_FEATURES,
    "has_geometry",
    "max_iou",
    "covered",
    "dx_prev",
    "dy_prev",
    "has_prev",
    "dx_next",
    "dy_next",
    "has_next",
)


def candidate_geometry(sample: TaskSample, candidate: Candidate, view: RunView) -> np.ndarray:
    """(len(GEOMETRY_FEATURES),) what composition tells about a candidate: zero when it enters without any."""
    features = np.zeros(len(GEOMETRY_FEATURES))
    if candidate.composition_from is None:
        return features
    box = view.box(candidate.composition_from)
    context = np.array([view.box(p) for p in sample.context]).reshape(-1, 4)
    prev, after = _neighbours(sample)
    overlap = _intersections(box, context)  # (K,)
    area = _area(box)
    iou = overlap / np.maximum(area + _area(context) - overlap, 1e-12) if len(context) else np.zeros(1)
    features[: len(COMPOSITION_FEATURES)] = view.composition(candidate.composition_from)
    features[len(COMPOSITION_FEATURES) : len(COMPOSITION_FEATURES) + 3] = [
        1.0,
        iou.max(initial=0.0),
        min(overlap.sum() / max(area, 1e-12), 1.0),
    ]
    features[-6:-3] = _offset(box, view.box(prev)) if prev is not None else 0.0
    features[-3:] = _offset(box, view.box(after)) if after is not None else 0.0
    return features


def _neighbours(sample: TaskSample) -> tuple[int | None, int | None]:
    """The context panels just before and after the answer's place: around the masked slot, else after the last."""
    if sample.slot is None:
        return (sample.context[-1] if sample.context else None), None
    before = sample.context[sample.slot - 1] if 0 < sample.slot <= len(sample.context) else None
    after = sample.context[sample.slot] if 0 <= sample.slot < len(sample.context) else None
    return before, after


def _offset(box: np.ndarray, other: np.ndarray) -> list[float]:
    """[dx, dy, 1] from the other box's centre to this one's (the 1 says the neighbour exists)."""
    return [(box[0] + box[2] - other[0] - other[2]) / 2, (box[1] + box[3] - other[1] - other[3]) / 2, 1.0]


def _area(boxes: np.ndarray) -> np.ndarray:
    """Area of (..., 4) boxes."""
    return np.clip(boxes[..., 2] - boxes[..., 0], 0, None) * np.clip(boxes[..., 3] - boxes[..., 1], 0, None)


def _intersections(box: np.ndarray, boxes: np.ndarray) -> np.ndarray:
    """(K,) intersection area of one box with each of (K, 4) boxes."""
    low = np.maximum(box[:2], boxes[:, :2])
    high = np.minimum(box[2:], boxes[:, 2:])
    return np.prod(np.clip(high - low, 0, None), axis=1)


@contextmanager
def one_thread() -> Iterator[None]:
    """Torch on one intra-op thread for a while: the geometry model's tensors are tiny, and on a shared CPU OpenMP's
    spin-waiting threads made each step 50 times slower than one thread (measured: 23 ms against 0.4 ms)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


@dataclass
class GeometryBaseline:
    """A tiny MLP on composition alone, fitted on a task's training samples: per candidate (picking tasks; a softmax
    over each sample's candidates) or per ordered panel pair (reading order; decoded by counting predicted wins).

    Another small learned baseline on other per-candidate features subclasses it: ``name``, ``FEATURES`` and
    ``candidate_features`` (``comicnb.stage4.baselines.shape``)."""

    name = "geometry"
    FEATURES = GEOMETRY_FEATURES

    hidden: int = SMALL_HIDDEN
    steps: int = 300
    lr: float = 1e-2
    weight_decay: float = 1e-3
    seed: int = 0
    task: str | None = None
    net: nn.Module | None = field(default=None, repr=False)
    mean: np.ndarray | None = field(default=None, repr=False)
    std: np.ndarray | None = field(default=None, repr=False)

    def fit(self, train: TaskSet, view: RunView) -> GeometryBaseline:
        """Fit on the training samples of one task; returns self."""
        self.task = train.task
        if train.task == READING_ORDER:
            features, labels = self._pairs(train, view, with_labels=True)
            self._standardise(features)
            self.net = self._train(
                lambda net: F.binary_cross_entropy_with_logits(self._pair_logits(net, features), labels)
            )
        else:
            features, mask = self._candidates(train, view)
            self._standardise(features[mask])
            answers = torch.tensor([s.answer for s in train.samples], dtype=torch.long)
            self.net = self._train(lambda net: F.cross_entropy(self._choice_logits(net, features, mask), answers))
        return self

    def predict(self, task_set: TaskSet, view: RunView) -> Result:
        """Score a set of the task this model was fitted on."""
        if self.net is None or task_set.task != self.task:
            raise ValueError(f"fit the {self.name} baseline on {task_set.task} training samples first")
        with torch.no_grad(), one_thread():
            if task_set.task == READING_ORDER:
                return order_result(self.name, task_set, [self._order(s, view) for s in task_set.samples])
            features, mask = self._candidates(task_set, view)
            logits = self._choice_logits(self.net, features, mask).numpy()
        return picking_result(self.name, task_set, [row[m] for row, m in zip(logits, mask)])

    def candidate_features(self, task_set: TaskSet, view: RunView) -> list[np.ndarray]:
        """Per sample, (C, len(FEATURES)) features of its candidates: what composition tells about each."""
        return [np.array([candidate_geometry(s, c, view) for c in s.candidates]) for s in task_set.samples]

    def _candidates(self, task_set: TaskSet, view: RunView) -> tuple[np.ndarray, np.ndarray]:
        """(S, C, F) candidate features, zero-padded to the widest sample, and the (S, C) mask of real candidates."""
        width = max((len(s.candidates) for s in task_set.samples), default=0)
        features = np.zeros((len(task_set), width, len(self.FEATURES)))
        mask = np.zeros((len(task_set), width), dtype=bool)
        for i, rows in enumerate(self.candidate_features(task_set, view)):
            features[i, : len(rows)], mask[i, : len(rows)] = rows.reshape(len(rows), -1), True
        return features, mask

    def _pairs(self, task_set: TaskSet, view: RunView, with_labels: bool) -> tuple[np.ndarray, torch.Tensor]:
        """(Q, 2, F) features of every ordered pair (i, j), i != j, and (Q,) whether i is read before j."""
        features, labels = [], []
        for sample in task_set.samples:
            pairs = page_pair_features([view.box(p) for p in sample.context], sample.direction).numpy()
            i, j = np.nonzero(~np.eye(len(sample.context), dtype=bool))
            features.append(np.stack([pairs[i, j], pairs[j, i]], axis=1))
            if with_labels:
                order = np.asarray(sample.order)
                labels.append((order[i] < order[j]).astype(np.float32))
        features = np.concatenate(features) if features else np.zeros((0, 2, len(PAIR_FEATURES)))
        return features, torch.from_numpy(np.concatenate(labels) if labels else np.zeros(0, np.float32))

    def _order(self, sample: TaskSample, view: RunView) -> np.ndarray:
        """Predicted reading position of each context panel: panels predicted before more others come first."""
        count = len(sample.context)
        if count < 2:
            return np.arange(count)
        single = TaskSet(READING_ORDER, sample.split, [sample])
        before = torch.sigmoid(self._pair_logits(self.net, self._pairs(single, view, with_labels=False)[0]))
        wins = np.zeros(count)
        i, _ = np.nonzero(~np.eye(count, dtype=bool))  # same pair order as _pairs
        np.add.at(wins, i, before.numpy())
        return np.argsort(np.argsort(-wins, kind="stable"), kind="stable")

    def _standardise(self, rows: np.ndarray) -> None:
        """Feature scaling from the training rows (a constant feature is left unscaled)."""
        rows = rows.reshape(-1, rows.shape[-1])
        self.mean = rows.mean(axis=0) if len(rows) else np.zeros(rows.shape[-1])
        std = rows.std(axis=0) if len(rows) else np.ones(rows.shape[-1])
        self.std = np.where(std > 1e-9, std, 1.0)

    def _scaled(self, features: np.ndarray) -> torch.Tensor:
        """Features standardised with the training statistics, as float32."""
        return torch.from_numpy((features - self.mean) / self.std).float()

    def _choice_logits(self, net: nn.Module, features: np.ndarray, mask: np.ndarray) -> torch.Tensor:
        """(S, C) candidate logits, padding at -inf."""
        logits = net(self._scaled(features)).squeeze(-1)  # (S, C, F) -> (S, C)
        return logits.masked_fill(~torch.from_numpy(mask), -torch.inf)

    def _pair_logits(self, net: nn.Module, features: np.ndarray) -> torch.Tensor:
        """(Q,) logit that i is read before j; antisymmetric by construction, so (i, j) and (j, i) agree."""
        scores = net(self._scaled(features)).squeeze(-1)  # (Q, 2, F) -> (Q, 2)
        return scores[:, 0] - scores[:, 1]

    def _train(self, loss_of: Callable[[nn.Module], torch.Tensor]) -> nn.Module:
        """Full-batch Adam from a seeded start; the global RNG is left as it was."""
        with torch.random.fork_rng(devices=[]), one_thread():
            torch.manual_seed(self.seed)
            width = len(self.mean)
            net = small_mlp(width, self.hidden)
            optimiser = torch.optim.Adam(net.parameters(), lr=self.lr, weight_decay=self.weight_decay)
            for _ in range(self.steps):
                optimiser.zero_grad()
                loss = loss_of(net)
                if not loss.requires_grad or not torch.isfinite(loss):  # no training samples: leave it untrained
                    break
                loss.backward()
                optimiser.step()
        return net.eval()
