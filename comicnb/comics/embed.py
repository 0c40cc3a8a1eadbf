"""Text vectors of COMICS panels and candidates from a frozen sentence encoder (the packaged all-MiniLM-L6-v2).

A COMICS sample enters comicnb as text-only panels: each context panel is its text boxes joined in reading order,
encoded once; a panel without text is a zero vector (the vision part is absent, so masked). With
``context_tokens="box"`` (speech per balloon) every text box is a token of its own instead, in reading order, so
the model can tell the last line of a panel from its first (the COMICS folds give no box positions, so a box token
is its text vector and its place in the sequence). A text-cloze candidate
is its text box. A character-coherence candidate is one order of the answer panel's two boxes; as a vector it is
(``pair_vectors``) either its first box (``first_box``, the default: the two candidates are then the two boxes, and
the model tells which one is read first) or its two boxes joined in order with `` / `` (``joined``: a frozen
sentence vector barely changes when two boxes swap, and a model trained on such vectors scored chance, see
docs/comics.md). The zero-shot baseline always reads the joined text. Vectors are
L2-normalised and cached by text in memory and, where a cache file is given, on disk (float16, keyed by the SHA-1
of the text, refused when it was made by another encoder).
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from comicnb.comics.reader import ComicsSample
from comicnb.comics.settings import CONTEXT_TOKENS, PAIR_VECTORS

PACKAGED = "packaged all-MiniLM-L6-v2"
BOX_JOIN = " "  # boxes of one context panel, read in order
PAIR_JOIN = " / "  # the two boxes of a character-coherence candidate, in the candidate's order
TINY_SEED = 0  # the "tiny" test encoder is random: seeded so fit and eval build the same one


def model_label(name: str | None) -> str:
    """How a text model is named in manifests and caches."""
    return name or PACKAGED


def load_encoder(name: str | None):
    """A sentence-transformers model: None the packaged MiniLM, 'tiny' the seeded random test encoder, else a
    folder or hub id (see comicnb.stage3.encoders.load_sentence_transformer)."""
    import torch

    from comicnb.stage3.encoders import load_sentence_transformer

    if name == "tiny":
        with torch.random.fork_rng():
            torch.manual_seed(TINY_SEED)
            return load_sentence_transformer("tiny")
    return load_sentence_transformer(name)


def text_key(text: str) -> bytes:
    """The cache key of a text."""
    return hashlib.sha1(text.encode("utf-8")).digest()


class TextVectors:
    """Normalised sentence vectors of texts, each text encoded once; ``cache``: an .npz file kept across runs."""

    def __init__(self, name: str | None = None, cache: str | Path | None = None, batch_size: int = 128) -> None:
        self.name = name
        self.label = model_label(name)
        self.cache = Path(cache) if cache else None
        self.batch_size = batch_size
        self._model = None
        self._vectors: dict[bytes, np.ndarray] = {}
        self._dirty = False
        self.encoded = 0  # texts encoded by this object (not found in a cache)
        if self.cache and self.cache.is_file():
            self._load_cache()

    @property
    def model(self):
        """The encoder, loaded on first use."""
        if self._model is None:
            self._model = load_encoder(self.name)
        return self._model

    @property
    def dim(self) -> int:
        """Width of the vectors."""
        if self._vectors:
            return len(next(iter(self._vectors.values())))
        return int(self.model.get_embedding_dimension())

    def _load_cache(self) -> None:
        with np.load(self.cache, allow_pickle=False) as data:
            made_by = str(data["model"])
            if made_by != self.label:
                raise ValueError(f"the text cache {self.cache} holds vectors of {made_by}, not {self.label}")
            keys = data["keys"]  # (N, 20) uint8 SHA-1 digests (a bytes dtype would drop trailing zero bytes)
            self._vectors = {key.tobytes(): vector for key, vector in zip(keys, data["vectors"])}

    def save(self) -> None:
        """Write the cache file, if one is set and new texts were encoded."""
        if not self.cache or not self._dirty:
            return
        self.cache.parent.mkdir(parents=True, exist_ok=True)
        keys = np.frombuffer(b"".join(self._vectors), dtype=np.uint8).reshape(-1, 20)
        vectors = np.stack(list(self._vectors.values())).astype(np.float16)
        partial = self.cache.with_name(self.cache.name + ".partial.npz")
        np.savez(partial, model=np.array(self.label), keys=keys, vectors=vectors)
        partial.replace(self.cache)
        self._dirty = False

    def __call__(self, texts: Sequence[str]) -> np.ndarray:
        """(N, dim) float32 unit vectors; an empty text gives a zero vector."""
        keys = [text_key(t) for t in texts]
        missing = {k: t for k, t in zip(keys, texts) if t and k not in self._vectors}
        if missing:
            new = self.model.encode(
                list(missing.values()),
                batch_size=self.batch_size,
                convert_to_numpy=True,
                normalize_embeddings=True,
                show_progress_bar=False,
            )
            self._vectors.update(zip(missing, np.asarray(new, dtype=np.float16)))
            self.encoded += len(missing)
            self._dirty = True
        out = np.zeros((len(texts), self.dim), dtype=np.float32)
        for i, (key, text) in enumerate(zip(keys, texts)):
            if text:
                out[i] = self._vectors[key]
        return out


def panel_text(boxes: Sequence[str]) -> str:
    """A context panel's text: its boxes in reading order."""
    return BOX_JOIN.join(boxes)


def candidate_text(boxes: Sequence[str]) -> str:
    """A candidate's text: its box, or its boxes joined in order."""
    return PAIR_JOIN.join(boxes)


def context_text(sample: ComicsSample) -> str:
    """All the context's text in reading order (the zero-shot baseline's query)."""
    return BOX_JOIN.join(b for panel in sample.context for b in panel)


def candidate_vector_text(boxes: Sequence[str], pair_vectors: str = "first_box") -> str:
    """The text a candidate's vector is made from (``pair_vectors``: see the module)."""
    if pair_vectors not in PAIR_VECTORS:
        raise ValueError(f"pair_vectors must be one of {', '.join(PAIR_VECTORS)}, not {pair_vectors!r}")
    return boxes[0] if pair_vectors == "first_box" else candidate_text(boxes)


def sample_vectors(
    samples: Sequence[ComicsSample], vectors: TextVectors, pair_vectors: str = "first_box", tokens: str = "panel"
) -> tuple[np.ndarray, np.ndarray]:
    """(context (N, T, D), candidates (N, C, D)) text vectors of samples. ``tokens="panel"``: a token per context
    panel, its boxes joined (a panel without text is zeros); ``"box"``: a token per text box, each panel given the
    most boxes any panel has (B), panel p's box b at p * B + b, the places after its boxes zeros."""
    if tokens not in CONTEXT_TOKENS:
        raise ValueError(f"context tokens must be one of {', '.join(CONTEXT_TOKENS)}, not {tokens!r}")
    n = len(samples)
    n_panels = len(samples[0].context) if n else 0
    n_candidates = len(samples[0].candidates) if n else 0
    width = max([1, *(len(p) for s in samples for p in s.context)]) if tokens == "box" else 1
    if tokens == "panel":
        texts = [panel_text(p) for s in samples for p in s.context]
    else:
        texts = [p[b] if b < len(p) else "" for s in samples for p in s.context for b in range(width)]
    candidates = [candidate_vector_text(c, pair_vectors) for s in samples for c in s.candidates]
    filled = [i for i, t in enumerate(texts) if t] if tokens == "box" else list(range(len(texts)))
    embedded = vectors([texts[i] for i in filled] + candidates)
    context = np.zeros((len(texts), embedded.shape[1] if len(embedded) else 0), dtype=np.float32)
    context[filled] = embedded[: len(filled)]
    return context.reshape(n, n_panels * width, -1), embedded[len(filled) :].reshape(n, n_candidates, -1)
