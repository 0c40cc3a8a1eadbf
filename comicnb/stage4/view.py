"""One view of a run for everything Stage 4 does: its embedding store, page metadata, pages table, ground truth and
frozen Stage 3 model, opened once (``open_run``) and shared by the samplers, the baselines, the model's batches, the
export and notebook 05's retrieval.

Panels are named by their flat store id (``page * max_panels + slot``). What is cheap is read when the view opens:
the store's page records joined with the pages table (page sizes, text-free twins), the modality masks, and the
corpus's ground truth (``comicnb.corpus.truth``); ``panels`` has one row per stored panel for the samplers. What is
large is read on first use: the stored vectors (``fused``, ``modalities``, ``text_free_vision``) and the Stage 3
model of the store's checkpoint (checked against the store), whose frozen text pathway encodes candidate texts that
no panel has (``encode``).

The corpus's folder comes from one place, the run's ``corpus.json`` (notebook 01); the store's attributes record it
too, for a store searched without its run.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from comicnb.corpus.composition import composition_features
from comicnb.corpus.tables import load_run_pages
from comicnb.corpus.truth import SIDECAR, CorpusTruth, read_truth
from comicnb.store.reader import check_checkpoint, load_metadata, open_embeddings
from comicnb.store.schema import (
    EMBEDDINGS,
    MODALITY_EMBEDDINGS,
    MODALITY_MASKS,
    STORE_NAME,
    TEXT_FREE_MASKS,
    TEXT_FREE_VISION,
)

LARGE = {"fused": EMBEDDINGS, "modalities": MODALITY_EMBEDDINGS, "text_free_vision": TEXT_FREE_VISION}


@dataclass(eq=False)  # views hold tables and arrays: compare what they hold, not the views
class RunView:
    """A run's store, pages, truth and frozen Stage 3 model (see the module); build it with ``open_run``."""

    pages: pd.DataFrame  # one row per store page, in store order: the metadata with image size and text-free twin
    max_panels: int
    panels: pd.DataFrame = field(default_factory=pd.DataFrame)  # one row per stored panel (panel_table)
    modality_masks: np.ndarray | None = None  # (P, N, 3) which stored parts each panel has
    text_free_masks: np.ndarray | None = None  # (P, N) panels whose text-free twin is stored; None: a store without
    feature_dim: int = 0
    corpus_truth: CorpusTruth = field(default_factory=CorpusTruth)
    truth: str | None = None  # where the truth came from (relative inside the run); None: the corpus has none
    run_dir: Path | None = None
    store: Path | None = None
    data_root: Path | None = None
    checkpoint: Path | None = None  # the store's Stage 3 checkpoint
    attrs: dict[str, Any] = field(default_factory=dict)  # the store's attributes
    provenance: dict[str, Any] = field(default_factory=dict)  # what task sets built from this view record
    text_pathway: Callable[[Sequence[str]], np.ndarray] | None = None  # new texts -> text-modality vectors (frozen)
    arrays: dict[str, np.ndarray | None] = field(default_factory=dict, repr=False)  # LARGE, once read
    memo: dict[str, Any] = field(default_factory=dict, repr=False)  # features of panels computed once (baselines)
    _model: Any = field(default=None, repr=False)
    _layouts: dict[int, tuple[np.ndarray, np.ndarray]] = field(default_factory=dict, repr=False)
    _warned: set[str] = field(default_factory=set, repr=False)

    # ------------------------------------------------------------------------------------------------ corpus

    @property
    def truth_note(self) -> str:
        """Why the corpus has no ground truth ("" where it has)."""
        return self.corpus_truth.note

    @property
    def directions(self) -> dict[str, str]:
        """book -> ltr / rtl, where the corpus labels it."""
        return self.corpus_truth.directions

    @property
    def speakers(self) -> dict[str, str]:
        """truth speaker id -> the name a text shows."""
        return self.corpus_truth.speakers

    @property
    def text_free(self) -> bool:
        """Whether the store holds text-free twins."""
        return self.text_free_masks is not None and bool(np.any(self.text_free_masks))

    def split_pages(self, split: str | None = None) -> np.ndarray:
        """Store pages (of one split) that have at least one panel."""
        chosen = np.ones(len(self.pages), bool) if split is None else (self.pages["split"] == split).to_numpy()
        return np.flatnonzero(chosen & self.modality_masks.any(axis=(1, 2)))

    def page_labels(self, pages: Sequence[int] | np.ndarray) -> pd.DataFrame:
        """Per store page: its book and the scene most of its panels show ("unknown" without truth)."""
        by_page = self.panels.groupby("page_index")
        books = by_page.book_id.first().reindex(pages).to_numpy()
        if "scene" not in self.panels:
            return pd.DataFrame(dict(book_id=books, scene="unknown"))
        scenes = by_page.scene.agg(lambda s: s.mode().iloc[0] if s.notna().any() else "unknown")
        return pd.DataFrame(dict(book_id=books, scene=scenes.reindex(pages).to_numpy()))

    # ------------------------------------------------------------------------------------------------ panels

    def locate(self, ids: Sequence[int] | np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(page, slot) of flat panel ids."""
        return np.divmod(np.asarray(ids, dtype=np.int64), self.max_panels)

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

    def image_file(self, page: int, vision: str = "full") -> Path:
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

    def warn_once(self, key: str, message: str) -> None:
        """A warning shown once per view (a notebook runs every set through the same view)."""
        if key not in self._warned:
            self._warned.add(key)
            warnings.warn(message, stacklevel=3)

    # ------------------------------------------------------------------------------------------------ vectors

    def _array(self, name: str) -> np.ndarray | None:
        """One of the LARGE arrays, read from the store on first use (None: a store made before text-free twins)."""
        if name not in self.arrays:
            group = open_embeddings(self.store)
            self.arrays[name] = np.asarray(group[LARGE[name]][:]) if LARGE[name] in group else None
        return self.arrays[name]

    @property
    def fused(self) -> np.ndarray:
        """(P, N, D) the stored fused panel vectors."""
        return self._array("fused")

    @property
    def modalities(self) -> np.ndarray:
        """(P, N, 3, D) the stored vision, text and composition embeddings."""
        return self._array("modalities")

    @property
    def text_free_vision(self) -> np.ndarray | None:
        """(P, N, D) image embeddings of the text-free twins' crops, or None for a store without twins."""
        return self._array("text_free_vision")

    @property
    def model(self) -> Any:
        """The frozen Stage 3 model of the store's checkpoint (eval mode), loaded once and checked against the store."""
        if self._model is None:
            from comicnb.stage3.model import model_from_checkpoint

            if self.checkpoint is None or not self.checkpoint.is_file():
                raise FileNotFoundError(
                    f"checkpoint {self.checkpoint} does not exist: the store's Stage 3 model re-fuses candidates and "
                    f"encodes their new texts (give open_run checkpoint=PATH)"
                )
            self._model = model_from_checkpoint(self.checkpoint)
            if self.store is not None:
                check_checkpoint(self.store, self.attrs, self._model.checkpoint_sha256, self.checkpoint)
        return self._model

    def with_text_batch(self, batch_size: int) -> RunView:
        """The same view (its arrays, model and memo shared) with a fresh text pathway of ``batch_size`` texts a
        batch and an empty cache."""
        view = replace(self)
        view.text_pathway = FrozenTextPathway(lambda: view.model, batch_size)
        return view

    def encode(self, texts: Sequence[str]) -> np.ndarray:
        """(T, D) float32 text embeddings of new candidate texts, through the store's frozen text pathway."""
        if not texts:
            return np.zeros((0, self.feature_dim), dtype=np.float32)
        if self.text_pathway is None:
            raise RuntimeError("this view has no text encoder: open it with open_run")
        return np.asarray(self.text_pathway(list(texts)), dtype=np.float32)


class FrozenTextPathway:
    """New candidate texts through the store's frozen Stage 3 text pathway: the sentence model and the text adapter,
    as the store's ``modalities[..., 1]`` were made, so they can be re-fused with stored images (``model.fuse``).

    ``model`` gives the view's Stage 3 model on first use. Encoded texts are cached, so redrawn training samples cost
    nothing twice.
    """

    def __init__(self, model: Callable[[], Any], batch_size: int = 64) -> None:
        self.model, self.batch_size = model, batch_size
        self.cache: dict[str, np.ndarray] = {}

    def __call__(self, texts: Sequence[str]) -> np.ndarray:
        """(T, D) float32 text-modality embeddings of the texts."""
        new = sorted({t for t in texts if t not in self.cache})
        for start in range(0, len(new), self.batch_size):
            chunk = new[start : start + self.batch_size]
            self.cache.update(zip(chunk, self._encode(chunk), strict=True))
        return np.stack([self.cache[t] for t in texts]).astype(np.float32)

    def _encode(self, texts: list[str]) -> np.ndarray:
        """One batch through the model's text rows only (vision and composition masked)."""
        import torch

        from comicnb.stage3.model import modality_only

        model = self.model()
        tokens = model.text.tokenize(texts)
        batch = {k: v.to(model.device) for k, v in tokens.items()}
        batch["modality_mask"] = modality_only("text", len(texts), model.device)
        with torch.inference_mode():
            modalities = model.encode_modalities(batch)  # (T, 3, D), only the text row filled
        return modalities[:, 1].float().cpu().numpy()


# ---------------------------------------------------------------------------------------------------- opening


def open_run(
    run_dir: str | Path, store: str | Path | None = None, checkpoint: str | Path | None = None, truth_free: bool = False
) -> RunView:
    """The view of a run: its store (default ``<run>/panel_embeddings.zarr``), the pages table notebook 01 wrote, and
    the corpus's ground truth where it has a sidecar; ``checkpoint`` overrides the store's Stage 3 checkpoint (a
    model of another checkpoint is refused when first loaded). ``truth_free`` leaves the sidecar unread (the books'
    reading directions kept: a user knows them), so that task sets are drawn as from a corpus without one."""
    run_dir = Path(run_dir)
    store = Path(store) if store else run_dir / STORE_NAME
    group = open_embeddings(store)
    attrs = dict(group.attrs)
    metadata = load_metadata(store)
    table, data_root = load_run_pages(run_dir)
    masks = np.asarray(group[MODALITY_MASKS][:]).astype(bool)
    twins = np.asarray(group[TEXT_FREE_MASKS][:]).astype(bool) if TEXT_FREE_MASKS in group else None
    truth = read_truth(data_root, metadata)
    if truth_free:
        note = "the ground truth is left unread (truth_free): the tasks are drawn from the pages alone"
        truth = CorpusTruth(note=note, directions=truth.directions)
    checkpoint = Path(checkpoint or attrs.get("checkpoint") or "")
    view = RunView(
        pages=page_table(metadata, table),
        max_panels=int(attrs.get("max_panels", group[EMBEDDINGS].shape[1])),
        panels=panel_table(metadata, masks, twins, table, truth.panels),
        modality_masks=masks,
        text_free_masks=twins,
        feature_dim=int(attrs["feature_dim"]),
        corpus_truth=truth,
        truth=_relative(Path(data_root) / SIDECAR, run_dir) if truth.found else None,
        run_dir=run_dir,
        store=store,
        data_root=data_root,
        checkpoint=checkpoint,
        attrs=attrs,
    )
    view.text_pathway = FrozenTextPathway(lambda: view.model)
    view.provenance = dict(
        store=_relative(store, run_dir),
        store_checkpoint_sha256=attrs.get("checkpoint_sha256"),
        store_metadata_sha256=attrs.get("metadata_sha256"),
        checkpoint=_relative(checkpoint, run_dir) if str(checkpoint) not in ("", ".") else None,
        truth_sha256=truth.sha256,
    )
    return view


def page_table(metadata: pd.DataFrame, table: pd.DataFrame) -> pd.DataFrame:
    """The store's page records with the page size and text-free twin of the pages table (the records win where both
    have a column)."""
    extra = [c for c in ("image_width", "image_height", "text_free_path") if c in table and c not in metadata]
    pages = metadata.join(table.set_index("page_id")[extra], on="page_id") if extra else metadata.copy()
    if "text_free_path" not in pages:
        pages["text_free_path"] = ""
    pages["text_free_path"] = pages["text_free_path"].fillna("")
    return pages


def log_box_shape(panels: pd.DataFrame) -> np.ndarray:
    """(P, 2) log aspect ratio and log area (page pixels) of the boxes of ``panel_table`` rows: the shape and size a
    crop keeps in its image embedding."""
    width, height = panels.width.to_numpy(float), panels.height.to_numpy(float)
    return np.stack([np.log(width / height), np.log(width * height)], axis=1)


def panel_table(
    metadata: pd.DataFrame,
    modality_masks: np.ndarray | None = None,
    text_free_masks: np.ndarray | None = None,
    pages: pd.DataFrame | None = None,
    truth: pd.DataFrame | None = None,
) -> pd.DataFrame:
    """One row per stored panel: ids, page, split, text, stream position (and truth columns where given).

    Columns: panel_id, page_index, slot, book_id, page_id, page_name, split, num_panels, page_rank (the page's place
    among its book's narrative pages), book_pos (the panel's place in its book's reading stream), width and height
    (the stored box in page pixels: the crop's shape and size), text, has_text (the store has its text embedding),
    n_boxes (balloons and captions, from the pages table's text_boxes; -1 unknown), text_boxes, balloon_boxes (each
    text box's box as fractions of the panel, from the pages table's text_box_boxes; None unknown), text_free (its
    text-free twin is stored), description (the page JSON's, None where it has none; the truth's where given), plus
    every other column of ``truth`` (joined on panel_id).
    """
    boxes, places = _column(pages, "text_boxes"), _column(pages, "text_box_boxes")
    descriptions = _column(pages, "descriptions")
    rows = []
    for page in metadata.itertuples(index=False):
        page_boxes, page_places = boxes.get(page.page_id), places.get(page.page_id)
        for slot, (panel_id, text) in enumerate(zip(page.embedding_indices, page.texts, strict=True)):
            text_boxes = list(page_boxes[slot]) if page_boxes is not None else None
            balloon_boxes = page_places[slot] if page_places is not None else None
            x1, y1, x2, y2 = (float(v) for v in page.boxes[slot])
            rows.append(
                dict(
                    panel_id=int(panel_id),
                    page_index=int(page.page_index),
                    slot=slot,
                    book_id=page.book_id,
                    page_id=page.page_id,
                    page_name=page.page_name,
                    split=page.split,
                    num_panels=int(page.num_panels),
                    width=x2 - x1,
                    height=y2 - y1,
                    text=str(text),
                    has_text=bool(modality_masks[page.page_index, slot, 1])
                    if modality_masks is not None
                    else bool(str(text).strip()),
                    n_boxes=len(text_boxes) if text_boxes is not None else -1,
                    text_boxes=text_boxes,
                    balloon_boxes=balloon_boxes,
                    description=descriptions[page.page_id][slot] if page.page_id in descriptions else None,
                    text_free=bool(text_free_masks[page.page_index, slot]) if text_free_masks is not None else False,
                )
            )
    table = pd.DataFrame(rows)
    # Pages of a book in store (reading) order; the parts of an over-long page are one page.
    table["page_rank"] = table.groupby("book_id", sort=False).page_name.transform(lambda s: pd.factorize(s)[0])
    table["book_pos"] = table.groupby("book_id", sort=False).cumcount()
    if truth is not None:
        # The sidecar's description is the panel's caption; a page JSON without one (detected pages) keeps it.
        table = table.drop(columns=[c for c in ("description",) if c in truth.columns])
        extra = [c for c in truth.columns if c == "panel_id" or c not in table.columns]
        table = table.merge(truth[extra], on="panel_id", how="left", validate="one_to_one")
    return table.reset_index(drop=True)


def _column(pages: pd.DataFrame | None, column: str) -> dict[str, Any]:
    """page_id -> a list column's value of the pages table, for the pages that have it."""
    if not _has(pages, column):
        return {}
    return {p: v for p, v in zip(pages.page_id, pages[column]) if isinstance(v, list)}


def _has(table: pd.DataFrame | None, column: str) -> bool:
    """Whether a table is given and has a column."""
    return table is not None and column in table


def _relative(path: Path, run_dir: Path) -> str:
    """A path as a manifest records it: relative to the run where it lies inside, so a copied run reads the same."""
    try:
        return Path(path).resolve().relative_to(run_dir.resolve()).as_posix()
    except ValueError:
        return str(path)
