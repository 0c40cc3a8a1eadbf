"""The baselines that learn nothing: chance, colour histogram, Stage 3 cosine, text similarity, named addressee and the
(y, x) sorts.

Each takes a task set and the run's view and returns a ``Result``; ties are scored as a uniform pick among the tied
candidates (``comicnb.metrics.expected_hit``), so a baseline that cannot tell candidates apart scores exactly chance.
Crop histograms and sentence vectors are computed once per view (``view.memo``).
"""

from __future__ import annotations

import re
from collections import defaultdict
from collections.abc import Iterable, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from comicnb.corpus.crops import crop_panels
from comicnb.stage4.inputs import candidate_parts, per_sample, refuse
from comicnb.stage4.results import READING_ORDER, Result, order_result, picking_result
from comicnb.stage4.tasks import Candidate, TaskSample, TaskSet
from comicnb.stage4.view import RunView

HISTOGRAM_BINS = 8  # per channel: 512 colour cells, coarse enough that JPEG noise does not split a flat colour


def chance_baseline(task_set: TaskSet, view: RunView | None = None) -> Result:
    """A uniform guess: per sample its chance accuracy (reading order: pairwise 0.5, Kendall tau 0)."""
    if task_set.task == READING_ORDER:
        result = order_result("chance", task_set, [np.arange(len(s.context)) for s in task_set.samples])
        result.correct = result.chance.copy()
        result.pairwise = np.full(len(task_set), 0.5)
        result.kendall_tau = np.zeros(len(task_set))
        return result
    return picking_result("chance", task_set, [np.zeros(len(s.candidates)) for s in task_set.samples])


# ----------------------------------------------------------------------------------------------- colour histogram


def colour_histogram(crop: Image.Image, bins: int = HISTOGRAM_BINS) -> np.ndarray:
    """(bins^3,) normalised joint RGB histogram of an RGB crop."""
    pixels = np.asarray(crop.convert("RGB"), dtype=np.int64).reshape(-1, 3) * bins // 256  # (pixels, 3) channel cells
    cells = (pixels[:, 0] * bins + pixels[:, 1]) * bins + pixels[:, 2]
    counts = np.bincount(cells, minlength=bins**3).astype(np.float64)
    return counts / max(counts.sum(), 1.0)


def crop_histograms(view: RunView, keys: Iterable[tuple[int, str]]) -> np.ndarray:
    """(K, bins^3) colour histograms of (panel id, vision) crops; each page image is opened once per call and every
    histogram is kept in the view.

    Pages are decoded at full size. A JPEG decoded at a reduced scale (``crop_panels``' ``min_side``) gets a scale
    chosen by the smallest panel of its page, so every crop of a page would share a blur that crops of other pages
    lack: a page's mark the baseline read (panel picking, whose answer comes from the context's page, 0.634 on the
    demo's test books with it, 0.463 without; docs/results.md, "Issue 23")."""
    cache = view.memo.setdefault("histograms", {})
    keys = list(keys)
    todo: dict[tuple[int, str], list[int]] = defaultdict(list)
    for panel_id, vision in {k for k in keys if k not in cache}:
        todo[(int(view.locate(panel_id)[0]), vision)].append(panel_id)
    for (page, vision), ids in todo.items():
        boxes = [view.pages.iloc[page]["boxes"][int(view.locate(i)[1])] for i in ids]
        with Image.open(view.image_file(page, vision)) as image:
            crops = crop_panels(image, boxes)
        cache.update({(i, vision): colour_histogram(c) for i, c in zip(ids, crops)})
    return np.stack([cache[k] for k in keys]) if keys else np.zeros((0, HISTOGRAM_BINS**3))


def colour_histogram_baseline(task_set: TaskSet, view: RunView) -> Result:
    """The candidate whose crop's colour histogram is closest (histogram intersection) to the mean of the context
    crops' histograms; a candidate without an image, or a sample without context, scores 0."""
    keys = sorted({(c.panel_id, c.vision) for s in task_set.samples for c in s.candidates if c.vision != "none"})
    keys += sorted({(p, "full") for s in task_set.samples for p in s.context})
    crop_histograms(view, keys)  # one pass over the pages for the whole set
    scores = []
    for sample in task_set.samples:
        if not sample.context:
            scores.append(np.zeros(len(sample.candidates)))
            continue
        reference = crop_histograms(view, [(p, "full") for p in sample.context]).mean(axis=0)
        scores.append(np.array([_intersection(view, c, reference) for c in sample.candidates]))
    return picking_result("colour_histogram", task_set, scores)


def _intersection(view: RunView, candidate: Candidate, reference: np.ndarray) -> float:
    """Histogram intersection of a candidate's crop with the reference histogram (0 without an image)."""
    if candidate.vision == "none":
        return 0.0
    return float(np.minimum(crop_histograms(view, [(candidate.panel_id, candidate.vision)])[0], reference).sum())


# ----------------------------------------------------------------------------------------------- Stage 3 cosine


@torch.no_grad()
def stage3_cosine_baseline(task_set: TaskSet, view: RunView) -> Result:
    """The candidate, re-fused from its stated parts, nearest the mean of the context's fused vectors; caption
    relevance queries with its caption as a text-only query."""
    samples = task_set.samples
    flat = [c for s in samples for c in s.candidates]
    vectors = refuse(*candidate_parts(flat, view, task_set.texts), view.model)  # (all candidates, D)
    queries = _cosine_queries(samples, view)  # (S, D)
    scores = [block @ query for block, query in zip(per_sample(vectors, samples), queries)]
    return picking_result("stage3_cosine", task_set, scores)


def _cosine_queries(samples: Sequence[TaskSample], view: RunView) -> np.ndarray:
    """(S, D) unit queries: the caption as a text-only query where a sample has one, else the context's mean fused
    vector; zero (every candidate ties) with neither."""
    queries = np.zeros((len(samples), view.fused.shape[-1]), dtype=np.float32)
    captions = [i for i, s in enumerate(samples) if s.query_text]
    if captions:
        encoded = view.model.encode_texts([samples[i].query_text for i in captions])
        queries[captions] = encoded.float().cpu().numpy()
    for i, sample in enumerate(samples):
        if not sample.query_text and sample.context:
            pages, slots = view.locate(sample.context)
            queries[i] = view.fused[pages, slots].mean(axis=0)
    return F.normalize(torch.from_numpy(queries), dim=1).numpy()


# ----------------------------------------------------------------------------------------------- text similarity


def sentence_embeddings(view: RunView, texts: Sequence[str], text_model: str | None = None) -> np.ndarray:
    """(T, E) L2-normalised sentence embeddings of texts (``text_model``: None = the packaged MiniLM), each encoded
    once per view."""
    cache = view.memo.setdefault(("sentences", text_model), {})
    missing = sorted({t for t in texts if t not in cache})
    if missing:
        models = view.memo.setdefault("sentence_models", {})
        if text_model not in models:
            from comicnb.stage3.encoders import load_sentence_transformer

            models[text_model] = load_sentence_transformer(text_model)
        vectors = models[text_model].encode(missing, convert_to_numpy=True, normalize_embeddings=True)
        cache.update(zip(missing, np.asarray(vectors, dtype=np.float32)))
    dim = next(iter(cache.values())).shape[0] if cache else 0
    return np.stack([cache[t] for t in texts]) if texts else np.zeros((0, dim), np.float32)


def text_similarity_baseline(task_set: TaskSet, view: RunView, text_model: str | None = None) -> Result:
    """The candidate whose text is closest (MiniLM cosine) to the context's texts, joined in reading order, or to the
    caption where the sample has one."""
    samples = task_set.samples
    queries = [s.query_text or " ".join(t for t in (view.text(p) for p in s.context) if t) for s in samples]
    texts = [[candidate_text(c, view) for c in s.candidates] for s in samples]
    embedded = sentence_embeddings(view, queries + [t for ts in texts for t in ts], text_model)
    query_vectors, candidate_vectors = embedded[: len(samples)], embedded[len(samples) :]
    bounds = np.cumsum([0] + [len(ts) for ts in texts])
    scores = [candidate_vectors[bounds[i] : bounds[i + 1]] @ query_vectors[i] for i in range(len(samples))]
    return picking_result("text_similarity", task_set, scores)


def self_named_lines(candidate: Candidate) -> int:
    """Lines of a candidate given per text box (``Candidate.text_boxes``) that name their own speaker: ``Bolt: Was
    that a raindrop, Bolt?``."""
    count = 0
    for line in candidate.text_boxes or ():
        speaker, said, words = line.partition(": ")
        speaker = speaker.strip()
        if said and speaker and re.search(rf"\b{re.escape(speaker)}\b", words):
            count += 1
    return count


def named_addressee_baseline(task_set: TaskSet, view: RunView | None = None) -> Result:
    """Character coherence from the names alone: a line that names its own speaker (someone addressing themselves)
    is taken as wrong, and the candidate with fewer such lines wins (ties, and candidates without per-box texts: a
    uniform pick). It reads neither the context nor the image: what a speaker's name in the line gives away."""
    scores = [np.array([-self_named_lines(c) for c in s.candidates], dtype=np.float64) for s in task_set.samples]
    return picking_result("named_addressee", task_set, scores)


def candidate_text(candidate: Candidate, view: RunView) -> str:
    """A candidate's text as words: its own ``text``, else the stored text of ``text_from``, else none ("")."""
    if candidate.text is not None:
        return candidate.text
    return view.text(candidate.text_from) if candidate.text_from is not None else ""


# ----------------------------------------------------------------------------------------------- (y, x) sorts


def yx_order(boxes: np.ndarray, direction: str | None = None) -> np.ndarray:
    """Reading position of each box by the naive sort: top edge first, then left edge (right edge, right to left,
    when direction is ``rtl``)."""
    boxes = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
    across = -boxes[:, 2] if direction == "rtl" else boxes[:, 0]
    ranked = np.lexsort((across, boxes[:, 1]))  # last key is the primary one
    return np.argsort(ranked)  # position of each box


def yx_sort_baseline(task_set: TaskSet, view: RunView, use_direction: bool = False) -> Result:
    """Reading order by the (y, x) sort; ``use_direction`` reads right to left where the sample's book is ``rtl``."""
    orders = []
    for sample in task_set.samples:
        boxes = np.array([view.box(p) for p in sample.context]).reshape(-1, 4)
        orders.append(yx_order(boxes, sample.direction if use_direction else None))
    return order_result("yx_sort_direction" if use_direction else "yx_sort", task_set, orders)
