"""The baselines every Stage 4 model must beat, scored on every task set, per task, split and difficulty.

A Stage 4 result means something only against what needs no narrative understanding (architecture, "Stage 4 task
protocols"). Every baseline sees exactly the inputs a model sees, rebuilt from the same stored parts the sample names
(``comicnb.stage4.tasks``), and none reads the ground truth in ``built_from``:

- ``chance``: a uniform guess, one over the candidates (reading order: one over the permutations, pairwise 0.5);
- ``geometry``: a tiny MLP fitted on the *training* samples of the task that sees composition alone: the boxes of the
  context panels and, per candidate, the box of its ``composition_from`` panel (None: no geometry). When the
  samplers keep their rule (a candidate enters without its own composition, or with its slot's) every candidate
  looks the same to it and it lands exactly at chance; reading order is where layout legitimately helps;
- ``colour_histogram``: no learning, the candidate whose crop's colour histogram is closest to the context's mean
  (crops from the page image, or its text-free twin where the candidate is shown text-free);
- ``stage3_cosine``: no learning, the candidate (re-fused from its stated parts through the frozen Stage 3 fusion)
  nearest the mean of the context's fused vectors; caption relevance queries with the caption as a text-only query;
- ``text_similarity``: the packaged MiniLM's cosine between a candidate's text and the context's texts (or the
  caption), for the tasks whose candidates differ in text;
- ``yx_sort`` / ``yx_sort_direction``: reading order as the naive (top, left) sort, blind to the book's direction or
  right-to-left where the sample says ``rtl``.

Ties are scored as a uniform random pick among the tied candidates, so a baseline that cannot tell candidates apart
scores exactly chance on every sample rather than whatever slot its argmax happens to prefer. Heavy inputs (store
arrays of the pages the sets name, the model, crop histograms, sentence embeddings) live in one ``BaselineInputs``,
loaded once and cached across task sets.
"""

from __future__ import annotations

import math
import warnings
from collections import defaultdict
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from statistics import NormalDist
from typing import Any

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn

from comicnb.corpus.composition import COMPOSITION_FEATURES, composition_features
from comicnb.corpus.crops import crop_panels
from comicnb.corpus.tables import load_run_pages
from comicnb.evaluation import metrics
from comicnb.stage3.model import PanelFeatureExtractor, model_from_checkpoint
from comicnb.stage4.tasks import TEXT_TASKS, Candidate, TaskSample, TaskSet, panels_of
from comicnb.store.reader import check_checkpoint, load_metadata, open_embeddings
from comicnb.store.schema import (
    EMBEDDINGS,
    MODALITY_EMBEDDINGS,
    MODALITY_MASKS,
    STORE_NAME,
    TEXT_FREE_MASKS,
    TEXT_FREE_VISION,
)

BASELINES = (
    "chance",
    "geometry",
    "colour_histogram",
    "stage3_cosine",
    "text_similarity",
    "yx_sort",
    "yx_sort_direction",
)
READING_ORDER = "reading_order"
# Caption relevance is not a text task (its candidates are whole panels), but its input is a text: whether the
# caption's words already find the next panel's dialogue is the shortcut this baseline measures there.
TEXT_SIMILARITY_TASKS = (*TEXT_TASKS, "caption_relevance")
SUMMARY_COLUMNS = [
    "task",
    "split",
    "difficulty",
    "baseline",
    "n",
    "accuracy",
    "low",
    "high",
    "chance",
    "pairwise",
    "kendall_tau",
]
ALL = "all"  # the difficulty of a summary row over every difficulty of a set that has several
HISTOGRAM_BINS = 8  # per channel: 512 colour cells, coarse enough that JPEG noise does not split a flat colour
CROP_MIN_SIDE = 32  # JPEG pages decode at a reduced scale as long as every crop keeps this many pixels
TIE = dict(rtol=1e-6, atol=1e-6)  # scores this close count as a tie: batched float maths is not bit-exact per row


# ----------------------------------------------------------------------------------------------------------------
# Intervals


def accuracy_interval(
    correct: Sequence[float] | np.ndarray,
    level: float = 0.95,
    method: str = "wilson",
    resamples: int = 2000,
    seed: int = 0,
) -> tuple[float, float, float]:
    """(accuracy, low, high): the mean of per-sample correctness in [0, 1] and its ``level`` interval.

    ``wilson`` is the score interval of a binomial proportion (fractional successes allowed: a tie scored as a
    fractional hit); ``bootstrap`` is the percentile interval of ``resamples`` resampled means. NaNs with no samples.
    """
    values = np.asarray(correct, dtype=np.float64).reshape(-1)
    n = len(values)
    if n == 0:
        return math.nan, math.nan, math.nan
    accuracy = float(values.mean())
    if method == "bootstrap":
        means = values[np.random.default_rng(seed).integers(0, n, size=(resamples, n))].mean(axis=1)
        tail = (1 - level) / 2
        low, high = np.quantile(means, [tail, 1 - tail])
        return accuracy, float(min(low, accuracy)), float(max(high, accuracy))
    if method != "wilson":
        raise ValueError(f"method must be wilson or bootstrap, not {method!r}")
    z = NormalDist().inv_cdf(0.5 + level / 2)
    centre = (accuracy + z * z / (2 * n)) / (1 + z * z / n)
    half = z / (1 + z * z / n) * math.sqrt(accuracy * (1 - accuracy) / n + z * z / (4 * n * n))
    low = 0.0 if accuracy == 0 else max(0.0, centre - half)  # exact bounds where rounding would leave 1e-17
    high = 1.0 if accuracy == 1 else min(1.0, centre + half)
    return accuracy, low, high


# ----------------------------------------------------------------------------------------------------------------
# Results


@dataclass
class BaselineResult:
    """One baseline on one task set: per-sample predictions and correctness, for intervals and per-sample reports."""

    baseline: str
    task: str
    split: str
    sample_ids: list[str]
    difficulty: list[str]
    correct: np.ndarray  # (S,) expected exact-answer hit under uniform tie-breaking, in [0, 1]
    chance: np.ndarray  # (S,) the sample's chance accuracy
    predictions: list[Any]  # picked candidate (the first of a partial tie; -1: all tie), or the predicted order
    scores: list[np.ndarray]  # per-candidate scores; reading order: per-panel predicted position
    pairwise: np.ndarray | None = None  # (S,) reading order: fraction of panel pairs in the right order
    kendall_tau: np.ndarray | None = None  # (S,) reading order: Kendall's tau between predicted and true order

    def table(self) -> pd.DataFrame:
        """One row per sample: ids, difficulty, prediction, correctness (and the reading-order measures)."""
        rows = dict(
            baseline=self.baseline,
            task=self.task,
            split=self.split,
            sample_id=self.sample_ids,
            difficulty=self.difficulty,
            prediction=self.predictions,
            correct=self.correct,
            chance=self.chance,
        )
        if self.pairwise is not None:
            rows.update(pairwise=self.pairwise, kendall_tau=self.kendall_tau)
        return pd.DataFrame(rows)


def expected_hit(scores: np.ndarray, answer: int) -> tuple[float, int]:
    """(chance of hitting the answer when picking uniformly among the top-scored, picked index or -1 if all tie)."""
    scores = np.asarray(scores, dtype=np.float64)
    top = np.flatnonzero(np.isclose(scores, scores.max(), **TIE))
    hit = 1.0 / len(top) if answer in top else 0.0
    return hit, int(top[0]) if len(top) < len(scores) or len(scores) == 1 else -1


def _result(
    name: str, task_set: TaskSet, correct: np.ndarray, predictions: list, scores: list, **extra: Any
) -> BaselineResult:
    """A BaselineResult over every sample of ``task_set``, in order."""
    return BaselineResult(
        baseline=name,
        task=task_set.task,
        split=task_set.split,
        sample_ids=[s.sample_id for s in task_set.samples],
        difficulty=[s.difficulty for s in task_set.samples],
        correct=np.asarray(correct, dtype=np.float64),
        chance=np.array([s.chance for s in task_set.samples], dtype=np.float64),
        predictions=predictions,
        scores=scores,
        **extra,
    )


def picking_result(name: str, task_set: TaskSet, scores: Sequence[np.ndarray]) -> BaselineResult:
    """The result of a baseline that scores candidates (higher is better)."""
    hits = [expected_hit(s, sample.answer) for s, sample in zip(scores, task_set.samples)]
    return _result(
        name, task_set, [h for h, _ in hits], [p for _, p in hits], [np.asarray(s, dtype=np.float64) for s in scores]
    )


def order_agreement(predicted: Sequence[int], true: Sequence[int]) -> tuple[float, float, float]:
    """(exact match, pairwise accuracy, Kendall tau) of a predicted order against the true one (both permutations:
    order[i] = reading position of context[i]; anything else is a ValueError), by ``comicnb.evaluation.metrics``."""
    return (
        float(metrics.exact_order(predicted, true)),
        metrics.pairwise_accuracy(predicted, true),
        metrics.kendall_tau(predicted, true),
    )


def order_result(name: str, task_set: TaskSet, orders: Sequence[np.ndarray]) -> BaselineResult:
    """The result of a reading-order baseline: exact match (as correctness), pairwise accuracy and Kendall tau."""
    measures = np.array([order_agreement(o, s.order or []) for o, s in zip(orders, task_set.samples)]).reshape(-1, 3)
    return _result(
        name,
        task_set,
        measures[:, 0],
        [np.asarray(o).tolist() for o in orders],
        [np.asarray(o, dtype=np.float64) for o in orders],
        pairwise=measures[:, 1],
        kendall_tau=measures[:, 2],
    )


# ----------------------------------------------------------------------------------------------------------------
# Inputs


@dataclass
class BaselineInputs:
    """What the baselines read, loaded once: page metadata, the store arrays of the pages the sets name, the
    Stage 3 model, and caches of crop histograms and sentence embeddings.

    Panels are flat store ids (``page * max_panels + slot``). ``pages`` has one row per store page, in store order,
    with the metadata's ``book_id``, ``boxes``, ``texts`` and ``image_path``, the page size (``image_width``,
    ``image_height``) and ``text_free_path`` ("" where the page has no text-free twin).
    """

    pages: pd.DataFrame
    max_panels: int
    data_root: Path | None = None
    fused: np.ndarray | None = None  # (K, N, D) stored fused vectors of the loaded pages
    modalities: np.ndarray | None = None  # (K, N, 3, D) stored vision, text, composition embeddings
    modality_masks: np.ndarray | None = None  # (K, N, 3)
    text_free_vision: np.ndarray | None = None  # (K, N, D) image embeddings of the pages' text-free twins
    text_free_masks: np.ndarray | None = None  # (K, N) panels that have one (pages with a twin)
    page_rows: np.ndarray | None = None  # (P,) row in the arrays above of each store page, -1 where not loaded
    model: PanelFeatureExtractor | None = None  # the frozen Stage 3 model the store was made with
    text_model: str | None = None  # sentence-transformers model of text_similarity: None = the packaged MiniLM
    histograms: dict[tuple[int, str], np.ndarray] = field(default_factory=dict, repr=False)
    sentences: dict[str, np.ndarray] = field(default_factory=dict, repr=False)
    _sentence_model: Any = field(default=None, repr=False)
    _warned: set[str] = field(default_factory=set, repr=False)
    _layouts: dict[int, tuple[np.ndarray, np.ndarray]] = field(default_factory=dict, repr=False)

    def locate(self, ids: Sequence[int] | np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(page, slot) of flat panel ids."""
        return np.divmod(np.asarray(ids, dtype=np.int64), self.max_panels)

    def array_rows(self, ids: Sequence[int] | np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(row, slot) of flat ids in the loaded arrays; a page that was not loaded is an error naming it."""
        if self.page_rows is None:
            raise ValueError("these inputs hold no store arrays: load them with load_baseline_inputs")
        pages, slots = self.locate(ids)
        rows = self.page_rows[pages]
        if (rows < 0).any():
            raise KeyError(f"store pages {sorted(set(pages[rows < 0].tolist()))} were not loaded: pass every task set")
        return rows, slots

    def box(self, panel_id: int) -> np.ndarray:
        """(4,) [x1, y1, x2, y2] of a panel as fractions of its page's width and height."""
        page, slot = divmod(int(panel_id), self.max_panels)
        return self._layout(page)[0][slot]

    def composition(self, panel_id: int) -> np.ndarray:
        """(7,) the composition features (COMPOSITION_FEATURES) of a panel's box on its page."""
        page, slot = divmod(int(panel_id), self.max_panels)
        return self._layout(page)[1][slot]

    def text(self, panel_id: int) -> str:
        """The stored text of a panel ("" where it has none)."""
        page, slot = divmod(int(panel_id), self.max_panels)
        return str(self.pages["texts"].iat[page][slot])

    def _layout(self, page: int) -> tuple[np.ndarray, np.ndarray]:
        """(slots, 4) page-fraction boxes and (slots, 7) composition features of a page, computed once (the geometry
        baseline asks for the same boxes many times)."""
        if page not in self._layouts:
            boxes = np.asarray(self.pages["boxes"].iat[page], dtype=np.float64).reshape(-1, 4)
            width, height = float(self.pages["image_width"].iat[page]), float(self.pages["image_height"].iat[page])
            self._layouts[page] = boxes / [width, height, width, height], composition_features(boxes, width, height)
        return self._layouts[page]

    def warn_once(self, key: str, message: str) -> None:
        """A warning shown once per inputs (a notebook runs every set through the same inputs)."""
        if key not in self._warned:
            self._warned.add(key)
            warnings.warn(message, stacklevel=3)

    def image_file(self, page: int, vision: str) -> Path:
        """The image a panel of ``page`` is cropped from: its text-free twin for ``text_free`` where there is one."""
        row = self.pages.iloc[page]
        path = str(row["image_path"])
        if vision == "text_free":
            twin = str(row.get("text_free_path") or "")
            if twin:
                path = twin
            else:
                self.warn_once(
                    "text_free_crop",
                    "pages without a text-free twin (text_free_path): their text-free candidates are cropped from "
                    "the drawn page, text included",
                )
        return Path(path) if self.data_root is None or Path(path).is_absolute() else self.data_root / path

    def crop_histograms(self, keys: Iterable[tuple[int, str]]) -> np.ndarray:
        """(K, bins^3) colour histograms of (panel id, vision) crops; each page image is opened once per call and
        every histogram is cached."""
        keys = list(keys)
        todo: dict[tuple[int, str], list[int]] = defaultdict(list)
        for panel_id, vision in {k for k in keys if k not in self.histograms}:
            todo[(int(self.locate(panel_id)[0]), vision)].append(panel_id)
        for (page, vision), ids in todo.items():
            boxes = [self.pages.iloc[page]["boxes"][int(self.locate(i)[1])] for i in ids]
            with Image.open(self.image_file(page, vision)) as image:
                crops = crop_panels(image, boxes, min_side=CROP_MIN_SIDE)
            self.histograms.update({(i, vision): colour_histogram(c) for i, c in zip(ids, crops)})
        return np.stack([self.histograms[k] for k in keys]) if keys else np.zeros((0, HISTOGRAM_BINS**3))

    def sentence_embeddings(self, texts: Sequence[str]) -> np.ndarray:
        """(T, E) L2-normalised sentence embeddings of texts, encoded once each."""
        missing = sorted({t for t in texts if t not in self.sentences})
        if missing:
            if self._sentence_model is None:
                from comicnb.stage3.encoders import load_sentence_transformer

                self._sentence_model = load_sentence_transformer(self.text_model)
            vectors = self._sentence_model.encode(missing, convert_to_numpy=True, normalize_embeddings=True)
            self.sentences.update(zip(missing, np.asarray(vectors, dtype=np.float32)))
        dim = next(iter(self.sentences.values())).shape[0] if self.sentences else 0
        return np.stack([self.sentences[t] for t in texts]) if texts else np.zeros((0, dim), np.float32)


def colour_histogram(crop: Image.Image, bins: int = HISTOGRAM_BINS) -> np.ndarray:
    """(bins^3,) normalised joint RGB histogram of an RGB crop."""
    pixels = np.asarray(crop.convert("RGB"), dtype=np.int64).reshape(-1, 3) * bins // 256  # (pixels, 3) channel cells
    cells = (pixels[:, 0] * bins + pixels[:, 1]) * bins + pixels[:, 2]
    counts = np.bincount(cells, minlength=bins**3).astype(np.float64)
    return counts / max(counts.sum(), 1.0)


def load_baseline_inputs(
    run_dir: str | Path,
    task_sets: Iterable[TaskSet] | Mapping[Any, TaskSet] = (),
    *,
    store: str | Path | None = None,
    checkpoint: str | Path | None = None,
    text_model: str | None = None,
) -> BaselineInputs:
    """Everything the baselines need from a run: store metadata joined with the pages table (page sizes, text-free
    twins), the store arrays of the pages the task sets name (every page when none are given), and the Stage 3 model
    of the store's checkpoint (``checkpoint`` overrides; a model of another checkpoint is refused)."""
    run_dir = Path(run_dir)
    store = Path(store) if store else run_dir / STORE_NAME
    group = open_embeddings(store)
    attrs = dict(group.attrs)
    max_panels = int(attrs.get("max_panels", group[EMBEDDINGS].shape[1]))
    table, data_root = load_run_pages(run_dir)
    pages = _page_table(load_metadata(store), table)
    wanted = _pages_named(task_sets, max_panels, len(pages))
    page_rows = np.full(len(pages), -1, dtype=np.int64)
    page_rows[wanted] = np.arange(len(wanted))
    arrays = {
        name: np.asarray(group[name].oindex[wanted]) for name in (EMBEDDINGS, MODALITY_EMBEDDINGS, MODALITY_MASKS)
    }
    # A store made before text-free twins existed has neither array: it reads as a store without twins.
    twins = TEXT_FREE_VISION in group
    text_free = np.asarray(group[TEXT_FREE_VISION].oindex[wanted]) if twins else None
    text_free_masks = np.asarray(group[TEXT_FREE_MASKS].oindex[wanted]).astype(bool) if twins else None
    checkpoint = Path(checkpoint or attrs["checkpoint"])
    model = model_from_checkpoint(checkpoint)
    check_checkpoint(store, attrs, model.checkpoint_sha256, checkpoint)
    return BaselineInputs(
        pages=pages,
        max_panels=max_panels,
        data_root=Path(attrs.get("data_root") or data_root),
        fused=arrays[EMBEDDINGS],
        modalities=arrays[MODALITY_EMBEDDINGS],
        modality_masks=arrays[MODALITY_MASKS].astype(bool),
        text_free_vision=text_free,
        text_free_masks=text_free_masks,
        page_rows=page_rows,
        model=model,
        text_model=text_model,
    )


def _page_table(metadata: pd.DataFrame, table: pd.DataFrame) -> pd.DataFrame:
    """The store's metadata with the page size and text-free twin of the pages table (metadata wins where both
    have a column)."""
    extra = [c for c in ("image_width", "image_height", "text_free_path") if c in table and c not in metadata]
    pages = metadata.join(table.set_index("page_id")[extra], on="page_id") if extra else metadata.copy()
    if "text_free_path" not in pages:
        pages["text_free_path"] = ""
    pages["text_free_path"] = pages["text_free_path"].fillna("")
    return pages


def _pages_named(task_sets: Iterable[TaskSet] | Mapping[Any, TaskSet], max_panels: int, total: int) -> np.ndarray:
    """Sorted store pages the sets' samples refer to; every page when there are no sets."""
    sets = _as_list(task_sets)
    if not sets:
        return np.arange(total)
    ids = set().union(*(panels_of(s.samples) for s in sets))
    return np.unique(np.asarray(sorted(ids), dtype=np.int64) // max_panels)


def _as_list(task_sets: Iterable[TaskSet] | Mapping[Any, TaskSet]) -> list[TaskSet]:
    """Task sets given as a list or as a mapping's values."""
    return list(task_sets.values() if isinstance(task_sets, Mapping) else task_sets)


# ----------------------------------------------------------------------------------------------------------------
# No-learning baselines


def chance_baseline(task_set: TaskSet, inputs: BaselineInputs | None = None) -> BaselineResult:
    """A uniform guess: per sample its chance accuracy (reading order: pairwise 0.5, Kendall tau 0)."""
    if task_set.task == READING_ORDER:
        result = order_result("chance", task_set, [np.arange(len(s.context)) for s in task_set.samples])
        result.correct = result.chance.copy()
        result.pairwise = np.full(len(task_set), 0.5)
        result.kendall_tau = np.zeros(len(task_set))
        return result
    return picking_result("chance", task_set, [np.zeros(len(s.candidates)) for s in task_set.samples])


def colour_histogram_baseline(task_set: TaskSet, inputs: BaselineInputs) -> BaselineResult:
    """The candidate whose crop's colour histogram is closest (histogram intersection) to the mean of the context
    crops' histograms; a candidate without an image, or a sample without context, scores 0."""
    keys = sorted({(c.panel_id, c.vision) for s in task_set.samples for c in s.candidates if c.vision != "none"})
    keys += sorted({(p, "full") for s in task_set.samples for p in s.context})
    inputs.crop_histograms(keys)  # one pass over the pages for the whole set
    scores = []
    for sample in task_set.samples:
        if not sample.context:
            scores.append(np.zeros(len(sample.candidates)))
            continue
        reference = inputs.crop_histograms([(p, "full") for p in sample.context]).mean(axis=0)
        scores.append(np.array([_intersection(inputs, c, reference) for c in sample.candidates]))
    return picking_result("colour_histogram", task_set, scores)


def _intersection(inputs: BaselineInputs, candidate: Candidate, reference: np.ndarray) -> float:
    """Histogram intersection of a candidate's crop with the reference histogram (0 without an image)."""
    if candidate.vision == "none":
        return 0.0
    return float(np.minimum(inputs.crop_histograms([(candidate.panel_id, candidate.vision)])[0], reference).sum())


def candidate_parts(
    candidates: Sequence[Candidate], inputs: BaselineInputs, texts: np.ndarray | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """(C, 3, D) per-modality embeddings and (C, 3) mask of candidates, from the parts each one names: the image of
    ``panel_id`` (full or text-free), the text of ``text_from`` or row ``text_row`` of the set's ``texts``, the
    composition of ``composition_from``; a part a candidate does not name is masked."""
    dim = inputs.modalities.shape[-1]
    parts = np.zeros((len(candidates), 3, dim), dtype=np.float32)
    mask = np.zeros((len(candidates), 3), dtype=bool)
    for i, c in enumerate(candidates):
        if c.vision != "none":
            parts[i, 0], mask[i, 0] = _vision(c, inputs)
        if c.text_from is not None:
            parts[i, 1], mask[i, 1] = _stored(inputs, c.text_from, 1)
        elif c.text_row is not None:
            parts[i, 1], mask[i, 1] = texts[c.text_row], True
        if c.composition_from is not None:
            parts[i, 2], mask[i, 2] = _stored(inputs, c.composition_from, 2)
    return parts, mask


def _stored(inputs: BaselineInputs, panel_id: int, modality: int) -> tuple[np.ndarray, bool]:
    """A panel's stored embedding of one modality and whether it has it."""
    (row,), (slot,) = inputs.array_rows([panel_id])
    return inputs.modalities[row, slot, modality], bool(inputs.modality_masks[row, slot, modality])


def _vision(candidate: Candidate, inputs: BaselineInputs) -> tuple[np.ndarray, bool]:
    """The candidate's image embedding: of the text-free twin where the panel has one, else (with a warning) of the
    drawn page, words included."""
    if candidate.vision == "text_free":
        (row,), (slot,) = inputs.array_rows([candidate.panel_id])
        if inputs.text_free_masks is not None and inputs.text_free_masks[row, slot]:
            return inputs.text_free_vision[row, slot], True
        inputs.warn_once(
            "text_free_vision",
            f"panels without a text-free twin in the store ({TEXT_FREE_VISION}): their text-free candidates are "
            "re-fused from the drawn image, text included",
        )
    return _stored(inputs, candidate.panel_id, 0)


@torch.no_grad()
def refuse(parts: np.ndarray, mask: np.ndarray, model: PanelFeatureExtractor) -> np.ndarray:
    """(C, D) fused vectors of (C, 3, D) per-modality parts under a (C, 3) mask, through the frozen Stage 3 fusion."""
    if len(parts) == 0:
        return np.zeros((0, parts.shape[-1]), dtype=np.float32)
    device = model.device
    fused = model.fuse(torch.from_numpy(parts).to(device), torch.from_numpy(mask).to(device))  # (C, D)
    return fused.float().cpu().numpy()


@torch.no_grad()
def stage3_cosine_baseline(task_set: TaskSet, inputs: BaselineInputs) -> BaselineResult:
    """The candidate, re-fused from its stated parts, nearest the mean of the context's fused vectors; caption
    relevance queries with its caption as a text-only query."""
    if inputs.model is None or inputs.model.training:
        raise ValueError(
            "stage3_cosine needs the Stage 3 model in eval mode: load the inputs with load_baseline_inputs"
        )
    samples = task_set.samples
    flat = [c for s in samples for c in s.candidates]
    vectors = refuse(*candidate_parts(flat, inputs, task_set.texts), inputs.model)  # (all candidates, D)
    queries = _cosine_queries(samples, inputs)  # (S, D)
    bounds = np.cumsum([0] + [len(s.candidates) for s in samples])
    scores = [vectors[bounds[i] : bounds[i + 1]] @ queries[i] for i in range(len(samples))]
    return picking_result("stage3_cosine", task_set, scores)


def _cosine_queries(samples: Sequence[TaskSample], inputs: BaselineInputs) -> np.ndarray:
    """(S, D) unit queries: the caption as a text-only query where a sample has one, else the context's mean fused
    vector; zero (every candidate ties) with neither."""
    dim = inputs.fused.shape[-1]
    queries = np.zeros((len(samples), dim), dtype=np.float32)
    captions = [i for i, s in enumerate(samples) if s.query_text]
    if captions:
        encoded = inputs.model.encode_texts([samples[i].query_text for i in captions])
        queries[captions] = encoded.float().cpu().numpy()
    for i, sample in enumerate(samples):
        if not sample.query_text and sample.context:
            rows, slots = inputs.array_rows(sample.context)
            queries[i] = inputs.fused[rows, slots].mean(axis=0)
    return F.normalize(torch.from_numpy(queries), dim=1).numpy()


def text_similarity_baseline(task_set: TaskSet, inputs: BaselineInputs) -> BaselineResult:
    """The candidate whose text is closest (MiniLM cosine) to the context's texts, joined in reading order, or to the
    caption where the sample has one."""
    samples = task_set.samples
    queries = [s.query_text or " ".join(t for t in (inputs.text(p) for p in s.context) if t) for s in samples]
    texts = [[candidate_text(c, inputs) for c in s.candidates] for s in samples]
    embedded = inputs.sentence_embeddings(queries + [t for ts in texts for t in ts])
    query_vectors, candidate_vectors = embedded[: len(samples)], embedded[len(samples) :]
    bounds = np.cumsum([0] + [len(ts) for ts in texts])
    scores = [candidate_vectors[bounds[i] : bounds[i + 1]] @ query_vectors[i] for i in range(len(samples))]
    return picking_result("text_similarity", task_set, scores)


def candidate_text(candidate: Candidate, inputs: BaselineInputs) -> str:
    """A candidate's text as words: its own ``text``, else the stored text of ``text_from``, else none ("")."""
    if candidate.text is not None:
        return candidate.text
    return inputs.text(candidate.text_from) if candidate.text_from is not None else ""


def yx_order(boxes: np.ndarray, direction: str | None = None) -> np.ndarray:
    """Reading position of each box by the naive sort: top edge first, then left edge (right edge, right to left,
    when direction is ``rtl``)."""
    boxes = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
    across = -boxes[:, 2] if direction == "rtl" else boxes[:, 0]
    ranked = np.lexsort((across, boxes[:, 1]))  # last key is the primary one
    return np.argsort(ranked)  # position of each box


def yx_sort_baseline(task_set: TaskSet, inputs: BaselineInputs, use_direction: bool = False) -> BaselineResult:
    """Reading order by the (y, x) sort; ``use_direction`` reads right to left where the sample's book is ``rtl``."""
    orders = []
    for sample in task_set.samples:
        boxes = np.array([inputs.box(p) for p in sample.context]).reshape(-1, 4)
        orders.append(yx_order(boxes, sample.direction if use_direction else None))
    return order_result("yx_sort_direction" if use_direction else "yx_sort", task_set, orders)


# ----------------------------------------------------------------------------------------------------------------
# Geometry only

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
# Per ordered pair of reading-order panels (i, j): offsets of centres and edges, overlaps, and the book's direction.
PAIR_FEATURES = (
    "dx",
    "dy",
    "dx1",
    "dy1",
    "dx2",
    "dy2",
    "x_overlap",
    "y_overlap",
    "direction",
    "direction_dx",
    "direction_dx1",
    "direction_dx2",
)


def candidate_geometry(sample: TaskSample, candidate: Candidate, inputs: BaselineInputs) -> np.ndarray:
    """(len(GEOMETRY_FEATURES),) what composition tells about a candidate: zero when it enters without any."""
    features = np.zeros(len(GEOMETRY_FEATURES))
    if candidate.composition_from is None:
        return features
    box = inputs.box(candidate.composition_from)
    context = np.array([inputs.box(p) for p in sample.context]).reshape(-1, 4)
    prev, after = _neighbours(sample)
    overlap = _intersections(box, context)  # (K,)
    area = _area(box)
    iou = overlap / np.maximum(area + _area(context) - overlap, 1e-12) if len(context) else np.zeros(1)
    features[: len(COMPOSITION_FEATURES)] = inputs.composition(candidate.composition_from)
    features[len(COMPOSITION_FEATURES) : len(COMPOSITION_FEATURES) + 3] = [
        1.0,
        iou.max(initial=0.0),
        min(overlap.sum() / max(area, 1e-12), 1.0),
    ]
    features[-6:-3] = _offset(box, inputs.box(prev)) if prev is not None else 0.0
    features[-3:] = _offset(box, inputs.box(after)) if after is not None else 0.0
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


def pair_geometry(boxes: np.ndarray, direction: str | None) -> np.ndarray:
    """(K, K, len(PAIR_FEATURES)) features of every ordered pair of (K, 4) boxes on one page."""
    b = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
    centre = (b[:, :2] + b[:, 2:]) / 2  # (K, 2)
    dx, dx1, dx2 = _differences(centre[:, 0]), _differences(b[:, 0]), _differences(b[:, 2])
    sign = {"rtl": 1.0, "ltr": -1.0}.get(direction or "", 0.0)  # 0: the corpus does not label the book
    stacked = [dx, _differences(centre[:, 1]), dx1, _differences(b[:, 1]), dx2, _differences(b[:, 3])]
    stacked += [_axis_overlap(b[:, 0], b[:, 2]), _axis_overlap(b[:, 1], b[:, 3])]
    stacked += [np.full_like(dx, sign), sign * dx, sign * dx1, sign * dx2]
    return np.stack(stacked, axis=-1)


def _differences(values: np.ndarray) -> np.ndarray:
    """(K,) -> (K, K): values[i] - values[j]."""
    return values[:, None] - values[None, :]


def _axis_overlap(low: np.ndarray, high: np.ndarray) -> np.ndarray:
    """(K, K) shared extent of two boxes along one axis over the smaller extent: 1 when one spans the other."""
    shared = np.minimum(high[:, None], high[None, :]) - np.maximum(low[:, None], low[None, :])
    extent = high - low
    return np.clip(shared, 0, None) / np.maximum(np.minimum(extent[:, None], extent[None, :]), 1e-12)


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
    over each sample's candidates) or per ordered panel pair (reading order; decoded by counting predicted wins)."""

    hidden: int = 32
    steps: int = 300
    lr: float = 1e-2
    weight_decay: float = 1e-3
    seed: int = 0
    task: str | None = None
    net: nn.Module | None = field(default=None, repr=False)
    mean: np.ndarray | None = field(default=None, repr=False)
    std: np.ndarray | None = field(default=None, repr=False)

    def fit(self, train: TaskSet, inputs: BaselineInputs) -> GeometryBaseline:
        """Fit on the training samples of one task; returns self."""
        self.task = train.task
        if train.task == READING_ORDER:
            features, labels = self._pairs(train, inputs, with_labels=True)
            self._standardise(features)
            self.net = self._train(
                lambda net: F.binary_cross_entropy_with_logits(self._pair_logits(net, features), labels)
            )
        else:
            features, mask = self._candidates(train, inputs)
            self._standardise(features[mask])
            answers = torch.tensor([s.answer for s in train.samples], dtype=torch.long)
            self.net = self._train(lambda net: F.cross_entropy(self._choice_logits(net, features, mask), answers))
        return self

    def predict(self, task_set: TaskSet, inputs: BaselineInputs) -> BaselineResult:
        """Score a set of the task this model was fitted on."""
        if self.net is None or task_set.task != self.task:
            raise ValueError(f"fit the geometry baseline on {task_set.task} training samples first")
        with torch.no_grad(), one_thread():
            if task_set.task == READING_ORDER:
                return order_result("geometry", task_set, [self._order(s, inputs) for s in task_set.samples])
            features, mask = self._candidates(task_set, inputs)
            logits = self._choice_logits(self.net, features, mask).numpy()
        return picking_result("geometry", task_set, [row[m] for row, m in zip(logits, mask)])

    def _candidates(self, task_set: TaskSet, inputs: BaselineInputs) -> tuple[np.ndarray, np.ndarray]:
        """(S, C, F) candidate features, zero-padded to the widest sample, and the (S, C) mask of real candidates."""
        width = max((len(s.candidates) for s in task_set.samples), default=0)
        features = np.zeros((len(task_set), width, len(GEOMETRY_FEATURES)))
        mask = np.zeros((len(task_set), width), dtype=bool)
        for i, sample in enumerate(task_set.samples):
            for j, candidate in enumerate(sample.candidates):
                features[i, j], mask[i, j] = candidate_geometry(sample, candidate, inputs), True
        return features, mask

    def _pairs(self, task_set: TaskSet, inputs: BaselineInputs, with_labels: bool) -> tuple[np.ndarray, torch.Tensor]:
        """(Q, 2, F) features of every ordered pair (i, j), i != j, and (Q,) whether i is read before j."""
        features, labels = [], []
        for sample in task_set.samples:
            pairs = pair_geometry(np.array([inputs.box(p) for p in sample.context]), sample.direction)
            i, j = np.nonzero(~np.eye(len(sample.context), dtype=bool))
            features.append(np.stack([pairs[i, j], pairs[j, i]], axis=1))
            if with_labels:
                order = np.asarray(sample.order)
                labels.append((order[i] < order[j]).astype(np.float32))
        features = np.concatenate(features) if features else np.zeros((0, 2, len(PAIR_FEATURES)))
        return features, torch.from_numpy(np.concatenate(labels) if labels else np.zeros(0, np.float32))

    def _order(self, sample: TaskSample, inputs: BaselineInputs) -> np.ndarray:
        """Predicted reading position of each context panel: panels predicted before more others come first."""
        count = len(sample.context)
        if count < 2:
            return np.arange(count)
        single = TaskSet(READING_ORDER, sample.split, [sample])
        before = torch.sigmoid(self._pair_logits(self.net, self._pairs(single, inputs, with_labels=False)[0]))
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
            net = nn.Sequential(nn.Linear(width, self.hidden), nn.GELU(), nn.Linear(self.hidden, 1))
            optimiser = torch.optim.Adam(net.parameters(), lr=self.lr, weight_decay=self.weight_decay)
            for _ in range(self.steps):
                optimiser.zero_grad()
                loss = loss_of(net)
                if not loss.requires_grad or not torch.isfinite(loss):  # no training samples: leave it untrained
                    break
                loss.backward()
                optimiser.step()
        return net.eval()


# ----------------------------------------------------------------------------------------------------------------
# All baselines, every set


def applies(baseline: str, task: str) -> bool:
    """Whether a baseline is scored on a task."""
    if baseline in ("chance", "geometry"):
        return True
    if baseline in ("yx_sort", "yx_sort_direction"):
        return task == READING_ORDER
    if baseline == "text_similarity":
        return task in TEXT_SIMILARITY_TASKS
    return task != READING_ORDER


def run_baselines(
    task_sets: Iterable[TaskSet] | Mapping[Any, TaskSet],
    inputs: BaselineInputs,
    baselines: Sequence[str] = BASELINES,
    geometry: GeometryBaseline | None = None,
) -> list[BaselineResult]:
    """Every baseline on every non-training set it applies to; the geometry model is fitted once per task on that
    task's ``train`` set (``geometry`` sets its hyper-parameters) and skipped, with a warning, where there is none."""
    unknown = set(baselines) - set(BASELINES)
    if unknown:
        raise ValueError(f"unknown baselines {sorted(unknown)}: choose from {', '.join(BASELINES)}")
    sets = _as_list(task_sets)
    train = {s.task: s for s in sets if s.split == "train"}
    fitted: dict[str, GeometryBaseline] = {}
    results = []
    for task_set in (s for s in sets if s.split != "train"):
        for name in (b for b in baselines if applies(b, task_set.task)):
            if name == "geometry":
                model = _geometry_for(task_set.task, train, inputs, fitted, geometry)
                if model is not None:
                    results.append(model.predict(task_set, inputs))
            else:
                results.append(_NO_LEARNING[name](task_set, inputs))
    return results


def _geometry_for(
    task: str,
    train: Mapping[str, TaskSet],
    inputs: BaselineInputs,
    fitted: dict[str, GeometryBaseline],
    settings: GeometryBaseline | None,
) -> GeometryBaseline | None:
    """The geometry model of a task, fitted on first use; None (with a warning) without training samples."""
    if task not in fitted:
        if task not in train or not len(train[task]):
            inputs.warn_once(f"geometry:{task}", f"no {task} training samples: the geometry baseline is not scored")
            return None
        template = settings or GeometryBaseline()
        fresh = GeometryBaseline(template.hidden, template.steps, template.lr, template.weight_decay, template.seed)
        fitted[task] = fresh.fit(train[task], inputs)
    return fitted[task]


_NO_LEARNING: dict[str, Callable[[TaskSet, BaselineInputs], BaselineResult]] = {
    "chance": chance_baseline,
    "colour_histogram": colour_histogram_baseline,
    "stage3_cosine": stage3_cosine_baseline,
    "text_similarity": text_similarity_baseline,
    "yx_sort": yx_sort_baseline,
    "yx_sort_direction": lambda task_set, inputs: yx_sort_baseline(task_set, inputs, use_direction=True),
}


def summarize(results: Iterable[BaselineResult], level: float = 0.95, method: str = "wilson") -> pd.DataFrame:
    """One row per task, split, difficulty and baseline (plus an ``all`` row where a set has several difficulties):
    n, accuracy with its interval, mean chance, and (reading order) pairwise accuracy and Kendall tau."""
    rows = []
    for result in results:
        difficulty = np.asarray(result.difficulty, dtype=object)
        groups = sorted(set(difficulty.tolist()), key=["hard", "easy", "-"].index)
        for group in groups + ([ALL] if len(groups) > 1 else []):
            keep = np.ones(len(difficulty), bool) if group == ALL else difficulty == group
            accuracy, low, high = accuracy_interval(result.correct[keep], level, method)
            rows.append(
                dict(
                    task=result.task,
                    split=result.split,
                    difficulty=group,
                    baseline=result.baseline,
                    n=int(keep.sum()),
                    accuracy=accuracy,
                    low=low,
                    high=high,
                    chance=float(result.chance[keep].mean()) if keep.any() else math.nan,
                    pairwise=_mean(result.pairwise, keep),
                    kendall_tau=_mean(result.kendall_tau, keep),
                )
            )
    return pd.DataFrame(rows, columns=SUMMARY_COLUMNS)


def _mean(values: np.ndarray | None, keep: np.ndarray) -> float:
    """Mean of the kept values; NaN where the measure does not apply."""
    return float(values[keep].mean()) if values is not None and keep.any() else math.nan


def score_baselines(
    task_sets: Iterable[TaskSet] | Mapping[Any, TaskSet],
    inputs: BaselineInputs,
    baselines: Sequence[str] = BASELINES,
    level: float = 0.95,
    method: str = "wilson",
) -> pd.DataFrame:
    """The baselines table of notebook 04: every baseline on every validation and test set (``train`` sets only fit
    the geometry model), one row per task, split, difficulty and baseline, columns SUMMARY_COLUMNS."""
    return summarize(run_baselines(task_sets, inputs, baselines), level, method)
