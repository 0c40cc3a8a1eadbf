"""Speech per balloon: every stored panel's text boxes (balloons and captions) as Stage 4 tokens of their own.

A panel enters Stage 4 as one fused vector, its text one sentence vector of all its boxes joined; who says which line,
and where on the panel it is said, is lost there. With balloon tokens (``Stage4ModelConfig.balloon_tokens``) each
context panel also brings one token per text box: the box's text as a Stage 3 text-only vector in the fused space
(the frozen model's ``encode_texts``, as a caption enters) and the box's place inside its panel (fractions of the
panel's box, from the page JSON's ``text_box_bboxes``; zero where the corpus gives none, so the box is still a token
of its own). The model adds its panel's reading position and page box to each, so a balloon is tied to its panel.

``panel_balloons(view)`` builds the arrays once per view (memoised): every distinct text is encoded once. A panel
with more than ``MAX_BALLOONS`` boxes keeps its first ones in reading order, and the view warns with the count.

A candidate whose text is given per text box (``Candidate.text_boxes``: character coherence, each line with its
speaker's name) brings its own balloon tokens too (``candidate_balloons``): its k-th text in its panel's k-th box, so
the model reads each line beside the place it is said, against the context.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from comicnb.stage4.tasks import Candidate
from comicnb.stage4.view import RunView

MAX_BALLOONS = 6  # text boxes a panel brings as tokens (the embedded corpus draws at most 3)
BALLOON_BOX = 4  # a text box's place as [x1, y1, x2, y2] fractions of its panel's box
MEMO = "balloons"


@dataclass(frozen=True)
class PanelBalloons:
    """Every stored panel's text boxes: ``vectors`` (P, N, K, D) float32 text-only vectors, ``boxes`` (P, N, K, 4)
    their places in the panel, ``mask`` (P, N, K) the boxes that exist; ``placed`` how many boxes had a place,
    ``dropped`` how many lay past ``MAX_BALLOONS``."""

    vectors: np.ndarray
    boxes: np.ndarray
    mask: np.ndarray
    placed: int
    dropped: int

    @property
    def width(self) -> int:
        """K, the most text boxes a panel brings (at least 1, so batches never have a zero-wide axis)."""
        return int(self.mask.shape[-1])


def panel_balloons(view: RunView) -> PanelBalloons:
    """The view's panels' text boxes as token arrays (see the module), built on first use and kept in its memo."""
    if MEMO not in view.memo:
        view.memo[MEMO] = _build(view)
    return view.memo[MEMO]


def _build(view: RunView) -> PanelBalloons:
    """panel_balloons without the memo."""
    panels = view.panels
    pages, slots = view.modality_masks.shape[:2]
    texts = panels["text_boxes"].tolist() if "text_boxes" in panels else [None] * len(panels)
    places = panels["balloon_boxes"].tolist() if "balloon_boxes" in panels else [None] * len(panels)
    most = max([1, *(len(t) for t in texts if isinstance(t, list))])
    width = min(most, MAX_BALLOONS)
    boxes = np.zeros((pages, slots, width, BALLOON_BOX), dtype=np.float32)
    mask = np.zeros((pages, slots, width), dtype=bool)
    rows: list[tuple[int, int, int, str]] = []
    placed = dropped = 0
    for page, slot, words, where in zip(panels.page_index, panels.slot, texts, places, strict=True):
        if not isinstance(words, list):
            continue
        dropped += max(0, len(words) - width)
        where = where if isinstance(where, list) and len(where) == len(words) else None
        for k, text in enumerate(words[:width]):
            if not str(text).strip():
                continue
            rows.append((int(page), int(slot), k, str(text)))
            mask[page, slot, k] = True
            if where is not None:
                boxes[page, slot, k] = where[k]
                placed += 1
    if dropped:
        view.warn_once(
            "balloons_dropped",
            f"{dropped} text boxes lie past the first {MAX_BALLOONS} of their panel and enter no balloon token "
            "(their words still enter the panel's text)",
        )
    vectors = np.zeros((pages, slots, width, view.feature_dim or view.fused.shape[-1]), dtype=np.float32)
    if rows:
        unique = sorted({r[3] for r in rows})
        encoded = _encode(view, unique)
        index = {text: i for i, text in enumerate(unique)}
        p, s, k = (np.array([r[i] for r in rows]) for i in range(3))
        vectors[p, s, k] = encoded[[index[r[3]] for r in rows]]
    return PanelBalloons(vectors, boxes, mask, placed, dropped)


def candidate_balloons(
    candidates: Sequence[Candidate], table: PanelBalloons, view: RunView, cache: dict[str, np.ndarray]
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(C, K, D) text vectors, (C, K, 4) places and (C, K) mask of candidates' own text boxes: candidate c's k-th
    text (``Candidate.text_boxes``) in its panel's k-th box. A candidate without them, or whose count differs from
    its panel's boxes, has none (its text still enters whole). ``cache`` keeps each text's vector across batches."""
    width, dim = table.width, table.vectors.shape[-1]
    vectors = np.zeros((len(candidates), width, dim), dtype=np.float32)
    boxes = np.zeros((len(candidates), width, BALLOON_BOX), dtype=np.float32)
    mask = np.zeros((len(candidates), width), dtype=bool)
    new = sorted({t for c in candidates for t in (c.text_boxes or ()) if t not in cache})
    if new:  # one text at a time: its numbers never depend on what else a batch met first (a resumed run's equal)
        cache.update(zip(new, _encode(view, new, batch_size=1), strict=True))
    for i, c in enumerate(candidates):
        page, slot = divmod(int(c.panel_id), view.max_panels)
        texts = c.text_boxes or []
        if not texts or len(texts) != int(table.mask[page, slot].sum()) or len(texts) > width:
            continue
        vectors[i, : len(texts)] = [cache[t] for t in texts]
        boxes[i, : len(texts)] = table.boxes[page, slot, : len(texts)]
        mask[i, : len(texts)] = True
    return vectors, boxes, mask


@torch.no_grad()
def _encode(view: RunView, texts: list[str], batch_size: int = 256) -> np.ndarray:
    """(T, D) text-only vectors in the fused space of distinct texts, through the frozen Stage 3 model."""
    model = view.model
    pieces = [
        model.encode_texts(texts[i : i + batch_size]).float().cpu().numpy() for i in range(0, len(texts), batch_size)
    ]
    return np.concatenate(pieces).astype(np.float32)
