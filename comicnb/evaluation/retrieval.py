"""Retrieval and strips on held-out pages (notebook 05): does masking beat v1's zero-filling, and do strips help?

Panels. For the test split's panels (``split_panels``), each method gives per query kind a query vector and keys:

- ``stage3 masked`` (``query_variants``): keys are the stored fused vectors; ``multimodal`` queries are the same
  vectors, ``image_only`` / ``text_only`` queries are that modality's stored embedding alone through the frozen
  fusion, the others masked (``refuse`` with a one-hot mask), as ``PanelFeatureExtractor.encode_image_only`` makes
  them;
- ``v1 zero-filled`` (``query_variants``): v1's input, the same fusion fed zeros in every modality slot a query
  lacks while the mask says all three are present. ``AdaptiveFusion`` zeroes a masked slot after its LayerNorm and
  gives it gate weight exactly zero, so a masked query is its present modality alone; a zero-filled slot is present,
  so its LayerNorm turns the zeros into the norm's bias, the gate gives that constant weight and it is mixed into
  every query alike (the seed's "dummy input contamination"). Keys are zero-filled too where a panel lacks a
  modality (``v1_keys="zero_filled"``, what a v1 system would have stored), or the stored vectors (``"stored"``).
  It is the trained Stage 3 fusion fed v1's view, not a v1 model trained that way;
- ``raw pretrained`` (``raw_backbone_features``, optional: it decodes every crop): the frozen backbones' own
  features before any learned layer, the crop through the visual backbone(s) pooled and the text through the
  sentence-transformer; image-only against raw image keys, text-only against raw text keys, multimodal the
  concatenation of the two L2-normalised (zeros where a panel has no text).

``retrieval_table`` scores every kind and method by cosine against every key of the set, the query's own panel left
out, with recall@k (a key of the query's label among the first k) and mAP for the labels "same character" (the
panel's first character) and "same scene"; ``claim_check`` tests whether image-only retrieval gains the seed's
"+30 %" over v1, and ``seed_claim`` says it in words. Pages and strips are ``comicnb.evaluation.strips``.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from PIL import Image

from comicnb.corpus.crops import crop_panels
from comicnb.corpus.truth import panel_labels
from comicnb.metrics import MIN_BOOKS, mean_average_precision, recall_at_k_labels
from comicnb.stage4.inputs import refuse_chunked
from comicnb.stage4.view import RunView

KINDS = ("image_only", "text_only", "multimodal")
STAGE3, V1, RAW = "stage3 masked", "v1 zero-filled", "raw pretrained"
PANEL_LABELS = ("character", "scene")  # what "same character" and "same scene" compare
UNLABELLED = ("", "none")  # panel_labels' "none": a panel with no character
TABLE_COLUMNS = ["query", "method", "label", "map", "queries", "skipped", "unlabelled", "no_match"]
CLAIM = 0.30  # the seed's "+30 % image-only retrieval accuracy vs v1" (stage3-panel-features.md, benchmarks)
VISION, TEXT, COMPOSITION = 0, 1, 2  # the stored modalities' order (comicnb.stage3.fusion.MODALITIES)


# ----------------------------------------------------------------------------------------------------------------
# Held-out panels and pages with their labels


def split_panels(metadata: pd.DataFrame, data_root: str | Path, split: str = "test") -> pd.DataFrame:
    """One row per stored panel of the pages of ``split``, in store order: ``panel_id`` (flat store id),
    ``page_index`` (store page row), ``slot``, then ``panel_labels``' columns (book_id, and on the synthetic corpus
    character and scene). A split with no page is an error naming the splits there are."""
    if "split" not in metadata:
        raise ValueError("the store's metadata has no split column: there is no held-out split to evaluate on")
    labels = panel_labels(metadata, data_root).reset_index(drop=True)
    ids = np.concatenate([np.asarray(i, dtype=np.int64) for i in metadata.embedding_indices])
    pages = np.repeat(np.arange(len(metadata)), metadata.num_panels.to_numpy())
    slots = np.concatenate([np.arange(n) for n in metadata.num_panels.to_numpy()])
    if not len(ids) == len(labels) == len(pages):
        raise ValueError(f"{len(labels)} panel labels for {len(ids)} stored panels: labels and store disagree")
    table = pd.DataFrame(dict(panel_id=ids, page_index=pages, slot=slots)).join(labels)
    keep = metadata.split.to_numpy()[pages] == split
    if not keep.any():
        raise ValueError(f"no stored page is in split {split!r}; the store has {sorted(set(metadata.split))}")
    return table[keep].reset_index(drop=True)


def is_labelled(values: Sequence | np.ndarray | pd.Series) -> np.ndarray:
    """(n,) bool: a real label, not None, NaN, "" or "none"."""
    series = pd.Series(values, dtype=object)
    return (series.notna() & ~series.astype(str).str.strip().str.lower().isin(UNLABELLED)).to_numpy()


# ----------------------------------------------------------------------------------------------------------------
# Query and key vectors


@dataclass
class RetrievalSpace:
    """One method's vectors over a panel set of K panels, rows aligned with the panels table.

    ``queries[kind]`` (K, D) is each panel's query of that kind, ``keys[kind]`` (K, D') the keys it is scored against
    (every panel of the set), ``asks[kind]`` (K,) the panels that can pose it (those that have the modality).
    """

    method: str
    queries: dict[str, np.ndarray]
    keys: dict[str, np.ndarray]
    asks: dict[str, np.ndarray]


def _gather(view: RunView, panel_ids: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(K, D) stored fused vectors, (K, 3, D) per-modality embeddings (zeroed where masked) and (K, 3) masks."""
    pages, slots = view.locate(panel_ids)
    mask = view.modality_masks[pages, slots].astype(bool)
    parts = np.where(mask[..., None], view.modalities[pages, slots], 0.0).astype(np.float32)
    return view.fused[pages, slots].astype(np.float32), parts, mask


def _fuse(parts: np.ndarray, mask: np.ndarray, view: RunView, batch: int) -> np.ndarray:
    """(K, D) vectors of parts under a mask through the frozen Stage 3 fusion, ``batch`` panels at a time."""
    if view.model.training:
        raise ValueError("the Stage 3 model is in training mode (fusion dropout would hide modalities): call .eval()")
    return refuse_chunked(parts, mask, view.model, batch)


def one_hot(modality: int, count: int) -> np.ndarray:
    """(count, 3) mask with only ``modality`` present."""
    mask = np.zeros((count, 3), dtype=bool)
    mask[:, modality] = True
    return mask


def query_variants(
    view: RunView, panel_ids: Sequence[int] | np.ndarray, v1_keys: str = "zero_filled", batch: int = 4096
) -> dict[str, RetrievalSpace]:
    """The ``stage3 masked`` and ``v1 zero-filled`` spaces of the given panels (flat store ids) of the run's
    ``view`` (``comicnb.stage4.view.open_run``), see the module."""
    if v1_keys not in ("zero_filled", "stored"):
        raise ValueError(f"v1_keys must be zero_filled or stored, not {v1_keys!r}")
    ids = np.asarray(panel_ids, dtype=np.int64)
    fused, parts, mask = _gather(view, ids)
    count = len(ids)
    asks = dict(image_only=mask[:, VISION], text_only=mask[:, TEXT], multimodal=mask.any(axis=1))
    masked = dict(
        image_only=_fuse(parts, one_hot(VISION, count), view, batch),
        text_only=_fuse(parts, one_hot(TEXT, count), view, batch),
        multimodal=fused,
    )
    present = np.ones((count, 3), dtype=bool)  # v1: every slot "present", the missing ones holding zeros
    alone = {
        kind: np.where(one_hot(m, count)[..., None], parts, 0.0)
        for kind, m in (("image_only", VISION), ("text_only", TEXT))
    }
    filled = _fuse(parts, present, view, batch) if v1_keys == "zero_filled" else fused
    zero_filled = dict(
        image_only=_fuse(alone["image_only"].astype(np.float32), present, view, batch),
        text_only=_fuse(alone["text_only"].astype(np.float32), present, view, batch),
        multimodal=filled,
    )
    return {
        STAGE3: RetrievalSpace(STAGE3, masked, dict.fromkeys(KINDS, fused), dict(asks)),
        V1: RetrievalSpace(V1, zero_filled, dict.fromkeys(KINDS, filled), dict(asks)),
    }


@dataclass
class RawFeatures:
    """The frozen pretrained encoders' own features of K panels: ``image`` (K, sum of backbone widths) pooled
    backbone features of each crop, ``text`` (K, sentence dim) sentence embeddings, zero where a panel has no text;
    ``has_image`` / ``has_text`` (K,)."""

    image: np.ndarray
    text: np.ndarray
    has_image: np.ndarray
    has_text: np.ndarray


@torch.no_grad()
def raw_backbone_features(
    view: RunView, panel_ids: Sequence[int] | np.ndarray, batch: int = 64, vision: str = "full"
) -> RawFeatures:
    """The panels' features from the Stage 3 model's frozen backbones, before any learned layer.

    Images are cropped and transformed as the store's writer does (each page decoded once, crops at the model's
    transform) and run through ``model.visual.backbone_features``, ``batch`` crops at a time; texts (the stored
    texts) go through the model's own sentence-transformer (``model.text.sentence_features``). Nothing is cached on
    disk. ``vision="text_free"`` crops each page's text-free twin instead, where it has one.
    """
    model = view.model
    ids = np.asarray(panel_ids, dtype=np.int64)
    _, _, mask = _gather(view, ids)
    has_image, has_text = mask[:, VISION], mask[:, TEXT]
    image = np.zeros((len(ids), sum(model.visual.feature_widths)), np.float32)
    text = np.zeros((len(ids), model.text.sentence_dim), np.float32)
    device = model.device

    def flush(rows: list[int], crops: list[torch.Tensor]) -> None:
        if rows:
            features = model.visual.backbone_features(torch.stack(crops).to(device))
            image[rows] = features.float().cpu().numpy()
            rows.clear()
            crops.clear()

    by_page: dict[int, list[int]] = defaultdict(list)
    pages, slots = view.locate(ids)
    for row in np.flatnonzero(has_image):
        by_page[int(pages[row])].append(int(row))
    pending_rows: list[int] = []
    pending: list[torch.Tensor] = []
    for page, rows in sorted(by_page.items()):
        boxes = [view.pages["boxes"].iat[page][int(slots[r])] for r in rows]
        with Image.open(view.image_file(page, vision)) as picture:
            crops = crop_panels(picture, boxes, min_side=model.visual.image_size)
        for row, crop in zip(rows, crops):
            pending_rows.append(row)
            pending.append(model.image_transform(crop))
            if len(pending) >= batch:
                flush(pending_rows, pending)
    flush(pending_rows, pending)

    with_text = np.flatnonzero(has_text)
    for start in range(0, len(with_text), batch):
        rows = with_text[start : start + batch]
        tokens = model.text.tokenize([view.text(int(ids[r])) for r in rows])
        features = model.text.sentence_features(tokens["input_ids"].to(device), tokens["attention_mask"].to(device))
        text[rows] = features.float().cpu().numpy()
    return RawFeatures(image, text, has_image, has_text)


def unit(vectors: np.ndarray) -> np.ndarray:
    """Rows L2-normalised; all-zero rows stay zero."""
    vectors = np.asarray(vectors, dtype=np.float32)
    norms = np.linalg.norm(vectors, axis=-1, keepdims=True)
    return np.divide(vectors, norms, out=np.zeros_like(vectors), where=norms > 0)


def raw_space(raw: RawFeatures) -> RetrievalSpace:
    """The ``raw pretrained`` space: each kind's queries are its own keys (image, text, their concatenation)."""
    both = np.concatenate([unit(raw.image), unit(raw.text)], axis=1)
    vectors = dict(image_only=raw.image, text_only=raw.text, multimodal=both)
    asks = dict(image_only=raw.has_image, text_only=raw.has_text, multimodal=raw.has_image | raw.has_text)
    return RetrievalSpace(RAW, vectors, dict(vectors), asks)


def retrieval_spaces(
    view: RunView,
    panel_ids: Sequence[int] | np.ndarray,
    raw: bool = False,
    v1_keys: str = "zero_filled",
    batch: int = 64,
) -> dict[str, RetrievalSpace]:
    """Every method's space of the panels: stage3 masked and v1 zero-filled, and raw pretrained with ``raw``."""
    spaces = query_variants(view, panel_ids, v1_keys)
    if raw:
        spaces[RAW] = raw_space(raw_backbone_features(view, panel_ids, batch))
    return spaces


# ----------------------------------------------------------------------------------------------------------------
# Scoring


def label_retrieval(
    queries: np.ndarray,
    keys: np.ndarray,
    labels: Sequence | np.ndarray,
    asks: np.ndarray | None = None,
    ks: tuple[int, ...] = (1, 5, 10),
    chunk: int = 256,
) -> dict[str, float]:
    """Recall@k and mAP of row i of ``queries`` (K, D) against every row of ``keys`` (K, D) but row i, by cosine,
    a key being relevant where its label equals the query's.

    Only rows with ``asks`` pose a query. A query whose label is missing (``unlabelled``) or that no other key shares
    (``no_match``: it could never hit) is skipped; ``skipped`` counts both. Scored ``chunk`` queries at a time.
    """
    queries, keys = np.asarray(queries), np.asarray(keys)
    values = np.asarray(pd.Series(labels, dtype=object).astype(str).to_numpy(), dtype=object)
    if not len(queries) == len(keys) == len(values):
        raise ValueError(f"queries, keys and labels differ in length: {len(queries)}, {len(keys)}, {len(values)}")
    asks = np.ones(len(queries), dtype=bool) if asks is None else np.asarray(asks, dtype=bool)
    labelled = is_labelled(labels)
    key_values = np.where(labelled, values, None)  # an unlabelled key is nobody's match
    counts = pd.Series(key_values[labelled]).value_counts()
    others = np.array([counts.get(v, 0) - 1 if ok else 0 for v, ok in zip(values, labelled)])  # same label, not self
    rows = np.flatnonzero(asks & labelled & (others > 0))
    found: dict[str, float] = dict(
        queries=len(rows),
        skipped=int((asks & ~(labelled & (others > 0))).sum()),
        unlabelled=int((asks & ~labelled).sum()),
        no_match=int((asks & labelled & (others <= 0)).sum()),
    )
    if not len(rows):
        return found | {f"recall@{k}": np.nan for k in ks if k < len(keys)} | dict(map=np.nan)
    normal_keys = unit(keys)
    totals: dict[str, float] = defaultdict(float)
    for start in range(0, len(rows), chunk):
        part = rows[start : start + chunk]
        scores = unit(queries[part]) @ normal_keys.T  # (q, K)
        recall = recall_at_k_labels(scores, values[part], key_values, ks, exclude_self=part)
        average = mean_average_precision(scores, values[part], key_values, exclude_self=part)
        for name, value in (recall | dict(map=average["map"])).items():
            if name.startswith("recall@") or name == "map":
                totals[name] += value * len(part)
    return found | {name: total / len(rows) for name, total in totals.items()}


def retrieval_table(
    spaces: Mapping[str, RetrievalSpace] | Iterable[RetrievalSpace],
    labels: pd.DataFrame,
    ks: tuple[int, ...] = (1, 5, 10),
    label_columns: Sequence[str] | None = None,
) -> pd.DataFrame:
    """One row per query kind, method and label: recall@k for each k, mAP, queries scored and skipped (unlabelled
    or with no other panel of its label), by ``label_retrieval``. ``labels`` has one row per panel of the spaces
    (``split_panels``); ``label_columns`` defaults to character and scene where present, else the book."""
    spaces = list(spaces.values() if isinstance(spaces, Mapping) else spaces)
    columns = list(label_columns or [c for c in PANEL_LABELS if c in labels] or ["book_id"])
    rows = []
    for kind in KINDS:
        for space in spaces:
            if kind not in space.queries:
                continue
            for column in columns:
                scores = label_retrieval(
                    space.queries[kind], space.keys[kind], labels[column].to_numpy(), space.asks[kind], ks
                )
                rows.append(dict(query=kind, method=space.method, label=column, **scores))
    recalls = [f"recall@{k}" for k in ks]
    table = pd.DataFrame(rows)
    return table.reindex(columns=TABLE_COLUMNS[:3] + recalls + TABLE_COLUMNS[3:])


def claim_check(
    table: pd.DataFrame, metric: str = "recall@1", labels: Sequence[str] | None = None, claim: float = CLAIM
) -> pd.DataFrame:
    """Whether image-only retrieval with masked fusion beats the v1-style zero-filled input by the seed's "+30 %":
    one row per label with the queries, both figures of ``metric``, the relative change (masked / v1 - 1; NaN where
    v1 scores 0), the absolute one, and ``confirms`` (True, False, or None where either figure is missing).

    ``recall@1`` by default: the seed speaks of retrieval *accuracy*, the share of queries whose first hit is right.
    With v1 at 0 the claim holds exactly when masked fusion finds anything.
    """
    rows = table[table["query"] == "image_only"]
    out = []
    for label in list(labels or dict.fromkeys(rows.label)):
        pick = {m: rows[(rows.method == m) & (rows.label == label)] for m in (STAGE3, V1)}
        row: dict = dict(label=label, queries=None, masked=np.nan, v1=np.nan, change=np.nan, absolute=np.nan)
        if any(p.empty or pd.isna(p[metric].iloc[0]) for p in pick.values()):
            out.append({**row, "confirms": None})
            continue
        masked, v1 = float(pick[STAGE3][metric].iloc[0]), float(pick[V1][metric].iloc[0])
        change = masked / v1 - 1 if v1 else np.nan
        confirms = change >= claim if v1 else masked > 0
        queries = int(pick[STAGE3]["queries"].iloc[0])
        out.append({**row, "queries": queries, "masked": masked, "v1": v1, "change": change, "absolute": masked - v1})
        out[-1]["confirms"] = bool(confirms)
    return pd.DataFrame(out, columns=["label", "queries", "masked", "v1", "change", "absolute", "confirms"])


def seed_claim(
    table: pd.DataFrame,
    metric: str = "recall@1",
    labels: Sequence[str] | None = None,
    claim: float = CLAIM,
    books: int | None = None,
) -> str:
    """``claim_check`` in words, one sentence per label, for the report; with fewer than ``metrics.MIN_BOOKS``
    held-out ``books`` the figures are given and no verdict is drawn (queries of one book are not independent)."""
    sentences = []
    few = books is not None and books < MIN_BOOKS
    for row in claim_check(table, metric, labels, claim).itertuples(index=False):
        if row.confirms is None:
            sentences.append(f"Same {row.label}: no image-only {metric} of both masked fusion and v1 to compare.")
            continue
        verdict = "confirms" if row.confirms else "refutes"
        if few:
            sentences.append(
                f"Same {row.label}, image-only {metric} over {row.queries} queries of {books} held-out books: masked "
                f"fusion {row.masked:.3f}, v1-style zero-filling {row.v1:.3f}: no verdict on the seed's "
                f"'{claim:+.0%}' from {books} books (it needs at least {MIN_BOOKS})."
            )
            continue
        head = (
            f"Same {row.label}, image-only {metric} over {row.queries} held-out queries: masked fusion "
            f"{row.masked:.3f}, v1-style zero-filling {row.v1:.3f}"
        )
        if np.isnan(row.change):
            sentences.append(f"{head}; v1 finds nothing, so no relative change: this {verdict} the seed's claim.")
        else:
            sentences.append(
                f"{head}, a relative change of {row.change:+.0%} ({row.absolute:+.3f} absolute): this {verdict} the "
                f"seed's '{claim:+.0%} image-only retrieval over v1'."
            )
    sentences.append(
        "(v1 here is the trained Stage 3 fusion fed v1's zero-filled inputs, not a model trained on them.)"
    )
    return " ".join(sentences)
