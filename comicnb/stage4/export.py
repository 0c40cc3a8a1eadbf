"""The Stage 5 export: every stored page through a trained Stage 4 model, and "pages like this one" from it.

``export_stage4(run_dir)`` writes ``<run>/stage4_embeddings.zarr`` (zarr v3; P pages, N = the Stage 3 store's
max_panels, d = the model's d_model), the seed's "Output to Stage 5":

    contextualized_panels  (P, N, d) float32  the model's contextual panel states, reading order as stored; padding
                                              slots exactly zero
    strip_embeddings       (P, d)    float32  the model's pooled page ("strip") embedding; zero for a page with no panel
    panel_masks            (P, N)    bool     real panels (the Stage 3 store's)
    done                   (P,)      bool     pages written; what a resumed export still has to do
    metadata.json                             a copy of the Stage 3 store's page records (book_id, page_name, ...)

It exports exactly ``model(panel_embeddings, panel_mask)`` on the stored pages (no boxes: it is how the strip term
trains the strip embedding), each page entering with the modalities its checkpoint was trained on (an ablation's).
The attributes record the Stage 4 checkpoint (path and SHA-256), the Stage 3 store it read (path, the store's own
checkpoint SHA-256 and metadata hash), the model and training config, the git revision, comicnb's version and the
creation time.

Like the Stage 3 store (``comicnb.store.writer``), the export is written in chunks of ``pages_per_chunk`` pages (one
zarr chunk and one forward batch each), a chunk's arrays before its ``done`` flags; a killed export, run again,
computes only the chunks not done, in the same batches, and ends identical to an uninterrupted one. An existing export
made from another Stage 4 checkpoint, another store or other settings is refused (``StoreMismatchError`` naming
both); ``overwrite`` replaces it, and never deletes a folder that is not a Stage 4 export.

``search_strips(export, page_index, k)`` answers "pages like this one": cosine over the strip embeddings, the query
page left out, one row per hit with book, page name, score and the page image.
"""

from __future__ import annotations

import json
import shutil
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
import zarr

from comicnb import __version__
from comicnb.checkpoint import load_checkpoint
from comicnb.paths import git_revision
from comicnb.search import exact_topk
from comicnb.stage3.batches import page_chunks
from comicnb.stage4.batches import BatchBuilder
from comicnb.stage4.config import checkpoints
from comicnb.stage4.model import Stage4SequenceModel
from comicnb.stage4.scoring import load_stage4_model, trained_balloons, trained_modalities
from comicnb.stage4.view import RunView, open_run
from comicnb.store.reader import load_metadata, open_embeddings
from comicnb.store.schema import DONE, EMBEDDINGS, MASKS, METADATA, STORE_NAME, StoreMismatchError, file_sha256
from comicnb.store.writer import ArraySpec, create_arrays, remove_lock, store_lock, write_chunk

EXPORT_NAME = "stage4_embeddings.zarr"
CONTEXTUALIZED = "contextualized_panels"  # the seed's names
STRIPS = "strip_embeddings"
FORMAT = "comicnb.stage4_embeddings"  # the ``format`` attribute: what overwrite may delete
DEFAULT_PAGES_PER_CHUNK = 16
OVERWRITE = "overwrite=True"  # how the Python API replaces an export; the command line: --overwrite
EXPORT_COMMAND = "`python -m comicnb export-stage4 --run-dir {run}`"
# Attributes that define the export's content: an export is resumed only when all of them match.
CONTENT_ATTRS = (
    "checkpoint_sha256",
    "store_checkpoint_sha256",
    "store_metadata_sha256",
    "max_panels",
    "d_model",
    "modalities",
    "pages_per_chunk",
)
SEARCH_COLUMNS = ["rank", "page_index", "book_id", "page_name", "score"]


def _jsonable(value: Any) -> Any:
    """``value`` as plain JSON types (tuples as lists, anything else JSON lacks as its string)."""
    return json.loads(json.dumps(value, default=str))


def export_attrs(
    checkpoint_path: Path,
    config: dict[str, Any],
    store_path: Path,
    store_attrs: dict[str, Any],
    max_panels: int,
    modalities: tuple[str, ...],
    pages_per_chunk: int,
    device: str = "cpu",
) -> dict[str, Any]:
    """Attributes of a new export: what defines its content (CONTENT_ATTRS) and where it came from."""
    return dict(
        format=FORMAT,
        checkpoint_sha256=file_sha256(checkpoint_path),
        store_checkpoint_sha256=store_attrs.get("checkpoint_sha256"),
        store_metadata_sha256=store_attrs.get("metadata_sha256"),
        max_panels=int(max_panels),
        d_model=int(config["model"]["d_model"]),
        modalities=list(modalities),
        pages_per_chunk=int(pages_per_chunk),
        checkpoint=str(checkpoint_path),
        store=str(store_path),
        store_checkpoint=store_attrs.get("checkpoint"),
        data_root=store_attrs.get("data_root"),
        model=_jsonable(config["model"]),
        train=_jsonable(config.get("train", {})),
        git_revision=git_revision(),
        comicnb_version=__version__,
        created=datetime.now(UTC).isoformat(timespec="seconds"),
        device=device,
    )


def _describe(attrs: dict[str, Any]) -> str:
    """Where an export came from, in a few words: its Stage 4 checkpoint and Stage 3 store (with short hashes)."""
    sha = str(attrs.get("checkpoint_sha256") or "?")[:12]
    store_sha = str(attrs.get("store_checkpoint_sha256") or "?")[:12]
    return (
        f"Stage 4 checkpoint {attrs.get('checkpoint', '?')} (sha256 {sha}…) over the store {attrs.get('store', '?')} "
        f"(its Stage 3 checkpoint sha256 {store_sha}…)"
    )


def export_arrays(max_panels: int, d_model: int) -> dict[str, ArraySpec]:
    """The export's arrays per page (all zero at first): float32 uncompressed, as the Stage 3 store's (embeddings
    barely compress, and search streams them)."""
    return {
        CONTEXTUALIZED: ArraySpec((max_panels, d_model), "float32"),
        STRIPS: ArraySpec((d_model,), "float32"),
        MASKS: ArraySpec((max_panels,), "bool"),
        DONE: ArraySpec((), "bool"),
    }


def _remove_export(path: Path, hint: str) -> None:
    """Delete an existing export for ``overwrite``; a folder that is not one (a Stage 3 store, anything else that
    is not empty) is refused, never deleted."""
    if not path.exists():
        return
    is_export = (path / "zarr.json").is_file() and zarr.open_group(str(path), mode="r").attrs.get("format") == FORMAT
    if not is_export and (not path.is_dir() or any(path.iterdir())):
        raise StoreMismatchError(
            f"{path} exists and is not a Stage 4 export: {hint} replaces only an earlier export; choose another path"
        )
    shutil.rmtree(path)


def open_export(
    path: Path, metadata_file: Path, pages: int, attrs: dict[str, Any], overwrite: bool, hint: str
) -> zarr.Group:
    """Create the export (attributes and metadata copy first), or reopen it for resuming when its content matches.

    An export of other content is a StoreMismatchError naming what it was made from, what this export is of, and
    the fix (``hint``: how the caller's user passes overwrite)."""
    if overwrite:
        _remove_export(path, hint)
    with store_lock(path):
        if (path / "zarr.json").is_file():
            group = zarr.open_group(str(path), mode="r+")
            old = dict(group.attrs)
            if old.get("format") != FORMAT:
                raise StoreMismatchError(f"{path} is a zarr group but not a Stage 4 export; choose another path")
            differ = [k for k in CONTENT_ATTRS if old.get(k) != attrs[k]]
            if differ or group[DONE].shape[0] != pages:
                detail = "; ".join(
                    f"{k} differs" if k.endswith("sha256") else f"{k}: export has {old.get(k)!r}, this run {attrs[k]!r}"
                    for k in differ
                )
                raise StoreMismatchError(
                    f"{path} holds an export of {_describe(old)}, not of {_describe(attrs)} "
                    f"({detail or 'page count'}); choose another export path or pass {hint} to replace it"
                )
        else:
            if path.exists() and (not path.is_dir() or any(path.iterdir())):
                raise StoreMismatchError(
                    f"{path} exists and is not a Stage 4 export; choose another path (nothing was deleted)"
                )
            group = zarr.open_group(str(path), mode="w", attributes=attrs)
            create_arrays(group, pages, attrs["pages_per_chunk"], export_arrays(attrs["max_panels"], attrs["d_model"]))
        if not (path / METADATA).is_file():  # the store's page records, byte for byte (its hash matched)
            shutil.copyfile(metadata_file, path / METADATA)
        return group


def check_trained_on(checkpoint_path: Path, store_path: Path, store_attrs: dict[str, Any]) -> None:
    """Refuse a Stage 4 checkpoint trained on another store: its ``data`` records the store's checkpoint and
    metadata hashes (a checkpoint that records none is taken as it is)."""
    data = load_checkpoint(checkpoint_path).get("data") or {}
    pairs = {"store_checkpoint_sha256": "checkpoint_sha256", "store_metadata_sha256": "metadata_sha256"}
    differ = [k for k, s in pairs.items() if data.get(k) and store_attrs.get(s) and data[k] != store_attrs[s]]
    if differ:
        raise StoreMismatchError(
            f"{checkpoint_path} was trained on another embedding store than {store_path} ({', '.join(differ)} differ): "
            f"its panel vectors live in another space. Export with that store, or train Stage 4 on this one"
        )


def export_chunk(
    model: Stage4SequenceModel,
    builder: BatchBuilder,
    pages: list[int],
    max_panels: int,
    d_model: int,
    device: torch.device,
) -> dict[str, np.ndarray]:
    """The arrays of one chunk of pages from one forward pass (``model(panel_embeddings, panel_mask)``); pages with
    no panel get zero rows and an all-False mask, and every padding slot is exactly +0.0."""
    contextualized = np.zeros((len(pages), max_panels, d_model), dtype=np.float32)
    strips = np.zeros((len(pages), d_model), dtype=np.float32)
    masks = np.zeros((len(pages), max_panels), dtype=bool)
    real = [i for i, page in enumerate(pages) if builder.panel_masks[page].any()]
    if real:
        embeddings, mask = builder.pages([pages[i] for i in real])  # (B, W, D), (B, W); W <= max_panels
        with torch.inference_mode():
            out = model(embeddings.to(device), mask.to(device))
        mask_np = mask.numpy()
        width = mask_np.shape[1]
        states = out["contextualized_panels"].float().cpu().numpy()
        contextualized[real, :width] = np.where(mask_np[..., None], states, np.float32(0.0))
        strips[real] = out["strip_embedding"].float().cpu().numpy()
        masks[real, :width] = mask_np
    return {CONTEXTUALIZED: contextualized, STRIPS: strips, MASKS: masks}


def export_stage4(
    run_dir: str | Path,
    checkpoint: str | Path | None = None,
    out: str | Path | None = None,
    *,
    store: str | Path | None = None,
    pages_per_chunk: int | None = None,
    overwrite: bool = False,
    overwrite_hint: str = OVERWRITE,
    device: str | torch.device | None = None,
    view: RunView | None = None,
) -> dict[str, Any]:
    """Export every page of the run's Stage 3 store through a Stage 4 checkpoint (default: the run's best, else
    last) into ``out`` (default ``<run>/stage4_embeddings.zarr``); see the module. ``view``: the run already open.

    ``pages_per_chunk`` None: the existing export's (so resuming never fails on it), else 16. Resumes an export of
    the same checkpoint, store and settings; refuses (StoreMismatchError) one of other content unless ``overwrite``.
    Returns a summary: export path, pages, panels, chunks computed and skipped, seconds, complete.
    """
    run_dir = Path(run_dir)
    checkpoint_path = Path(checkpoint) if checkpoint else checkpoints(run_dir).pick("best")
    if not checkpoint_path.is_file():
        raise FileNotFoundError(
            f"Stage 4 checkpoint {checkpoint_path} does not exist: {checkpoints(run_dir).how_to_train}"
        )
    store_path = Path(store) if store else run_dir / STORE_NAME
    out_path = Path(out) if out else run_dir / EXPORT_NAME
    if out_path.resolve() == store_path.resolve():
        raise ValueError(f"the export path {out_path} is the Stage 3 store itself; choose another path")
    try:
        paths = dict(run_dir=run_dir, checkpoint_path=checkpoint_path, store_path=store_path, out=out_path)
        return _export(
            **paths, pages_per_chunk=pages_per_chunk, overwrite=overwrite, hint=overwrite_hint, device=device, view=view
        )
    finally:
        remove_lock(out_path)


def _existing_chunk(out: Path, overwrite: bool) -> int | None:
    """pages_per_chunk of the export already at ``out`` (None when there is none, or it is to be replaced)."""
    if overwrite or not (out / "zarr.json").is_file():
        return None
    chunk = zarr.open_group(str(out), mode="r").attrs.get("pages_per_chunk")
    return int(chunk) if chunk else None


def _export(
    run_dir: Path,
    checkpoint_path: Path,
    store_path: Path,
    out: Path,
    pages_per_chunk: int | None,
    overwrite: bool,
    hint: str,
    device: str | torch.device | None,
    view: RunView | None,
) -> dict[str, Any]:
    """export_stage4, once the paths are resolved."""
    chunk = pages_per_chunk or _existing_chunk(out, overwrite) or DEFAULT_PAGES_PER_CHUNK
    if chunk < 1:
        raise ValueError(f"pages_per_chunk must be at least 1, not {chunk}")
    if not (store_path / "zarr.json").is_file():
        raise FileNotFoundError(
            f"no embedding store at {store_path}: make it with `python -m comicnb embed --run-dir {run_dir}`"
        )
    stored = open_embeddings(store_path)  # an unfinished store is an error naming the fix
    store_attrs = dict(stored.attrs)
    pages, max_panels, width = stored[EMBEDDINGS].shape
    check_trained_on(checkpoint_path, store_path, store_attrs)
    model, config = load_stage4_model(checkpoint_path)
    if width != model.cfg.input_dim:
        raise ValueError(
            f"{checkpoint_path} reads {model.cfg.input_dim}-wide panel vectors, the store {store_path} holds "
            f"{width}-wide ones: train Stage 4 on this store"
        )
    modalities = trained_modalities(config)
    device = torch.device(device) if device else torch.device("cuda" if torch.cuda.is_available() else "cpu")
    attrs = export_attrs(checkpoint_path, config, store_path, store_attrs, max_panels, modalities, chunk, device.type)
    metadata_file = store_path / METADATA if (store_path / METADATA).is_file() else store_path.parent / METADATA
    if not metadata_file.is_file():
        raise FileNotFoundError(f"no {METADATA} in or beside the store {store_path}")
    # The export is checked (and refused) before the store's arrays and the Stage 3 model are loaded.
    group = open_export(out, metadata_file, pages, attrs, overwrite, hint)
    builder = BatchBuilder(view or open_run(run_dir, store_path), modalities, trained_balloons(config))
    model.to(device)
    chunks = page_chunks(pages, chunk)
    done = np.asarray(group[DONE][:])
    todo = [c for c in chunks if not done[c].all()]
    start = time.perf_counter()
    for pages_of_chunk in todo:
        arrays = export_chunk(model, builder, pages_of_chunk, max_panels, attrs["d_model"], device)
        write_chunk(group, slice(pages_of_chunk[0], pages_of_chunk[-1] + 1), arrays)
    seconds = time.perf_counter() - start
    return dict(
        export=str(out),
        checkpoint=str(checkpoint_path),
        pages=pages,
        panels=int(np.asarray(group[MASKS][:]).sum()),
        d_model=attrs["d_model"],
        chunks=len(chunks),
        computed_chunks=len(todo),
        skipped_chunks=len(chunks) - len(todo),
        seconds=seconds,
        complete=bool(np.asarray(group[DONE][:]).all()),
    )


# ---------------------------------------------------------------------------------------------------------- reading


def open_export_group(path: str | Path) -> zarr.Group:
    """A finished Stage 4 export, read-only; a missing or unfinished one is an error naming the command to run."""
    path = Path(path)
    run = path.parent
    if not (path / "zarr.json").is_file():
        raise FileNotFoundError(f"no Stage 4 export at {path}: make it with {EXPORT_COMMAND.format(run=run)}")
    group = zarr.open_group(str(path), mode="r")
    if group.attrs.get("format") != FORMAT:
        raise ValueError(f"{path} is not a Stage 4 export (see comicnb.stage4.export)")
    missing = int((~np.asarray(group[DONE][:])).sum())
    if missing:
        raise RuntimeError(
            f"{path} is unfinished: {missing} of {group[DONE].shape[0]} pages not yet exported; run "
            f"{EXPORT_COMMAND.format(run=run)} again to resume it"
        )
    return group


def search_strips(export: str | Path, page_index: int, k: int = 5) -> pd.DataFrame:
    """ "Pages like this one": the ``k`` pages whose strip embeddings are nearest (cosine) the strip of ``page_index``,
    the page itself left out, best first; pages with no panel never come back.

    One row per hit: rank, page_index, book_id, page_name, score, and image_path where the metadata has it (under the
    store's data_root when it recorded one)."""
    group = open_export_group(export)
    strips = group[STRIPS]
    has_panels = np.asarray(group[MASKS][:]).any(axis=1)  # (P,)
    total = len(has_panels)
    if not 0 <= int(page_index) < total:
        raise ValueError(f"page {page_index} is not in {export}: it holds pages 0 to {total - 1}")
    if not has_panels[page_index]:
        raise ValueError(f"page {page_index} has no panel, so no strip embedding to search with")
    if k < 1:
        raise ValueError(f"k must be at least 1, not {k}")
    candidates = has_panels.copy()
    candidates[page_index] = False
    query = np.asarray(strips[page_index])[None]
    scores, ids = exact_topk(query, strips, k, mask=candidates, normalized=False)
    hit = ids[0] >= 0
    table = pd.DataFrame(dict(rank=np.arange(1, hit.sum() + 1), page_index=ids[0][hit], score=scores[0][hit]))
    pages = load_metadata(export)
    table = table.join(pages[["book_id", "page_name"]], on="page_index")[SEARCH_COLUMNS]
    if "image_path" in pages:
        root = group.attrs.get("data_root")
        paths = pages["image_path"].iloc[table.page_index].tolist()
        table["image_path"] = [None if not isinstance(p, str) else str(Path(root) / p) if root else p for p in paths]
    return table
