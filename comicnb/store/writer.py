"""Writing the embedding store: every panel of a run's pages table through the trained Stage 3 encoder.

The unit of work is a *chunk*: ``pages_per_chunk`` consecutive pages, one zarr chunk along the page axis and one
forward batch (the panels of all its pages together). A chunk's arrays are written before its ``done`` flags, and
zarr writes every chunk atomically, so a killed run loses at most the chunks in flight; run again, it computes only
the chunks not done, in the same batches, so the store equals an uninterrupted run's. Shards (``shard=(i, n)``, or
one per process under ``accelerate launch``) take every n-th chunk: disjoint regions of the same store.

Pages that have a text-free twin (the pages table's ``text_free_path``) get a second, vision-only pass over the
twin's crops (``comicnb.store.text_free``), written with the chunk's other arrays.

The metadata and the attributes are written when the store is created, before any panel is encoded. A store that
exists is resumed only when it was made from the same checkpoint, pages and content settings; otherwise it is an
error (``--overwrite`` replaces it explicitly). The layout is in ``comicnb.store.schema``.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import shutil
import time
from collections.abc import Iterator, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import IO, Any, NamedTuple

import numpy as np
import pandas as pd
import torch
import yaml
import zarr

from comicnb import __version__
from comicnb.checkpoint import BEST_NAME, LAST_NAME, StageCheckpoints, load_checkpoint
from comicnb.corpus.checks import checked_run_pages
from comicnb.corpus.tables import corpus_record
from comicnb.paths import git_revision
from comicnb.precision import autocast, resolve_precision
from comicnb.stage3 import checkpoints
from comicnb.stage3.batches import page_chunks, page_loader, tensors_only
from comicnb.stage3.fusion import MODALITIES
from comicnb.stage3.model import PanelFeatureExtractor, model_from_checkpoint
from comicnb.store.schema import (
    CONTENT_ATTRS,
    DONE,
    EMBEDDINGS,
    MASKS,
    METADATA,
    MODALITY_EMBEDDINGS,
    MODALITY_MASKS,
    STORE_NAME,
    TEXT_FREE_MASKS,
    TEXT_FREE_VISION,
    StoreMismatchError,
    file_sha256,
    store_metadata,
    text_free_sha256,
    text_free_sources,
)
from comicnb.store.text_free import encode_text_free, text_free_loader


@dataclass
class EmbedConfig:
    """How to generate a store (what changes its content is recorded in its attributes)."""

    pages_per_chunk: int = 16  # pages per forward batch and per zarr chunk: the unit of resume and of sharding
    num_workers: int = 0  # DataLoader processes decoding and cropping pages while the model runs
    precision: str = "auto"  # comicnb.precision: auto (bf16 on a GPU that has it, else fp32), fp32, bf16, fp16
    text_free: str = "twin"  # each panel's picture without words: "twin" (the corpus's), "blank" (blanked), "none"


OVERWRITE = "overwrite=True"  # how the Python API (and notebook 03) replaces a store; the command line: --overwrite
DEFAULT_PAGES_PER_CHUNK = EmbedConfig.pages_per_chunk
EMBED_NOTEBOOK = "03"  # the notebook whose parameters params.yaml records under its stem


def run_pages_per_chunk(run_dir: str | Path, store: str | Path | None = None, overwrite: bool = False) -> int:
    """The pages_per_chunk a run's store is made with when none is given: the existing store's (so resuming it
    never fails on this setting; not when it is to be overwritten), else what notebook 03 was given in the run's
    params.yaml (written by ``comicnb run``), else the default."""
    run_dir = Path(run_dir)
    store = Path(store) if store else run_dir / STORE_NAME
    if not overwrite and (store / "zarr.json").is_file():
        chunk = zarr.open_group(str(store), mode="r").attrs.get("pages_per_chunk")
        if chunk:
            return int(chunk)
    params = run_dir / "params.yaml"
    if params.is_file():
        resolved = yaml.safe_load(params.read_text(encoding="utf-8")) or {}
        for stem, values in resolved.items():
            if str(stem).startswith(f"{EMBED_NOTEBOOK}_") and (values or {}).get("pages_per_chunk"):
                return int(values["pages_per_chunk"])
    return DEFAULT_PAGES_PER_CHUNK


def parse_shard(text: str) -> tuple[int, int]:
    """'i/n' (0-based i) -> (i, n)."""
    try:
        index, count = (int(part) for part in text.split("/"))
    except ValueError as err:
        raise ValueError(f"shard {text!r} is not i/n, e.g. 0/2") from err
    if not 0 <= index < count:
        raise ValueError(f"shard {text!r}: need 0 <= i < n")
    return index, count


def lock_path(store: Path) -> Path:
    """The lock file of a store: beside it, since creating the store empties its folder."""
    return store.parent / f".{store.name}.lock"


def _locked(path: Path, flags: int) -> IO[str] | None:
    """An open handle holding ``flock(flags)`` on the file now at ``path`` (created if missing); None where a
    non-blocking attempt finds it held. A lock taken on a file that was unlinked (or replaced) meanwhile is dropped
    and taken again on the file now there, so removing the lock file under the lock is safe."""
    while True:
        handle = open(path, "a")
        try:
            fcntl.flock(handle, flags)
        except BlockingIOError:
            handle.close()
            return None
        try:
            same = os.stat(path).st_ino == os.fstat(handle.fileno()).st_ino
        except FileNotFoundError:
            same = False
        if same:
            return handle
        handle.close()


@contextlib.contextmanager
def store_lock(store: Path) -> Iterator[None]:
    """Hold an exclusive lock on the store while shards create or check it (the lock file lies beside the store)."""
    store.parent.mkdir(parents=True, exist_ok=True)
    handle = _locked(lock_path(store), fcntl.LOCK_EX)
    assert handle is not None  # a blocking attempt always ends holding the lock
    with handle:
        yield


def remove_lock(store: Path) -> None:
    """Remove the store's lock file unless another shard holds it right now (that one removes it when it ends)."""
    path = lock_path(store)
    if not path.exists():
        return
    handle = _locked(path, fcntl.LOCK_EX | fcntl.LOCK_NB)
    if handle is not None:
        with handle:
            path.unlink(missing_ok=True)  # under the lock: a shard waiting on this file retries on a new one


class ArraySpec(NamedTuple):
    """One per-page array of a store: the shape of one page's entry and its dtype."""

    shape: tuple[int, ...]
    dtype: str  # float32 (stored uncompressed, fill 0.0) or bool (fill False)


def create_arrays(group: zarr.Group, pages: int, chunk: int, specs: Mapping[str, ArraySpec]) -> None:
    """Arrays of ``pages`` rows, all at their fill value, chunked by whole chunks of ``chunk`` pages.

    Float arrays are stored uncompressed: float32 embeddings barely compress, and search streams them at memory speed.
    """
    for name, spec in specs.items():
        floats = spec.dtype == "float32"
        group.create_array(
            name,
            shape=(pages, *spec.shape),
            chunks=(chunk, *spec.shape),
            dtype=spec.dtype,
            fill_value=0.0 if floats else False,
            **({"compressors": None} if floats else {}),
        )


def store_arrays(max_panels: int, dim: int) -> dict[str, ArraySpec]:
    """The embedding store's arrays (comicnb.store.schema), the text-free twins' included."""
    return {
        EMBEDDINGS: ArraySpec((max_panels, dim), "float32"),
        MASKS: ArraySpec((max_panels,), "bool"),
        MODALITY_EMBEDDINGS: ArraySpec((max_panels, len(MODALITIES), dim), "float32"),
        MODALITY_MASKS: ArraySpec((max_panels, len(MODALITIES)), "bool"),
        **text_free_arrays(max_panels, dim),
        DONE: ArraySpec((), "bool"),
    }


def text_free_arrays(max_panels: int, dim: int) -> dict[str, ArraySpec]:
    """The text-free vision embeddings and their masks."""
    return {
        TEXT_FREE_VISION: ArraySpec((max_panels, dim), "float32"),
        TEXT_FREE_MASKS: ArraySpec((max_panels,), "bool"),
    }


def open_store(
    path: Path, metadata: list[dict], attrs: dict[str, Any], overwrite: bool = False, overwrite_hint: str = OVERWRITE
) -> zarr.Group:
    """Create the store (metadata and attributes first), or reopen it for resuming when its content attrs match.

    A store of other content is a StoreMismatchError naming the fix as the caller spells it (``overwrite_hint``).
    """
    if overwrite and path.exists():
        shutil.rmtree(path)
    with store_lock(path):
        if (path / "zarr.json").is_file():
            group = zarr.open_group(str(path), mode="r+")
            differ = {k: (group.attrs.get(k), attrs[k]) for k in CONTENT_ATTRS if group.attrs.get(k) != attrs[k]}
            if differ:
                detail = "; ".join(f"{k}: store has {old!r}, this run {new!r}" for k, (old, new) in differ.items())
                raise StoreMismatchError(
                    f"{path} holds another store ({detail}); choose another store path or pass {overwrite_hint} "
                    f"to replace it"
                )
            if TEXT_FREE_VISION not in group:  # made before twins existed, of a corpus without them: all absent
                pages, max_panels, dim = group[EMBEDDINGS].shape
                create_arrays(group, pages, group[EMBEDDINGS].chunks[0], text_free_arrays(max_panels, dim))
                group.attrs["text_free"] = False
        else:
            group = zarr.open_group(str(path), mode="w", attributes=attrs)
            arrays = store_arrays(attrs["max_panels"], attrs["feature_dim"])
            create_arrays(group, len(metadata), attrs["pages_per_chunk"], arrays)
        if not (path / METADATA).is_file():  # equal content (metadata_sha256 matched) if a creation was cut short
            (path / METADATA).write_text(json.dumps(metadata, ensure_ascii=False) + "\n", encoding="utf-8")
        return group


def store_attrs(
    checkpoint: Mapping[str, Any],
    checkpoint_path: Path,
    metadata: list[dict],
    cfg: EmbedConfig,
    max_panels: int,
    precision: str,
    data_root: Path | None = None,
    twin_paths: list[str] | None = None,
) -> dict[str, Any]:
    """Attributes of a new store: what defines its content (CONTENT_ATTRS) and where it came from (data_root: the
    folder the metadata's image paths are relative to; twin_paths: each page's text-free source, "" where none)."""
    model_config = dict(checkpoint["config"]["model"])
    twins = twin_paths or []
    return dict(
        checkpoint_sha256=file_sha256(checkpoint_path),
        metadata_sha256=hashlib.sha256(json.dumps(metadata, sort_keys=True).encode()).hexdigest(),
        feature_dim=int(model_config["feature_dim"]),
        max_panels=max_panels,
        pages_per_chunk=cfg.pages_per_chunk,
        precision=precision,
        text_free_sha256=text_free_sha256(twins),
        text_free=any(twins),
        text_free_source=cfg.text_free,
        modalities=list(MODALITIES),
        checkpoint=str(checkpoint_path),
        data_root=None if data_root is None else str(data_root),
        model=model_config,
        seed=checkpoint["config"].get("train", {}).get("seed"),
        params=asdict(cfg),
        git_revision=git_revision(),
        comicnb_version=__version__,
        created=datetime.now(UTC).isoformat(timespec="seconds"),
    )


def encode_chunk(
    model: PanelFeatureExtractor, batch: Mapping[str, Any], device: torch.device, precision: str
) -> dict[str, np.ndarray]:
    """The arrays of one chunk of pages, from one forward pass over all their panels."""
    inputs = tensors_only(batch, device)
    with torch.inference_mode(), autocast(precision, device):
        encoding = model.encode(inputs)
    return {
        EMBEDDINGS: encoding.fused.float().cpu().numpy(),
        MASKS: encoding.panel_mask.cpu().numpy(),
        MODALITY_EMBEDDINGS: encoding.modalities.float().cpu().numpy(),
        MODALITY_MASKS: encoding.modality_mask.cpu().numpy(),
    }


def write_chunk(group: zarr.Group, region: slice, arrays: Mapping[str, np.ndarray]) -> None:
    """Write one chunk's arrays, then its done flags: a chunk counts as written only once all its arrays are."""
    for name, values in arrays.items():
        group[name][region] = values
    group[DONE][region] = True


def prefetch(batches: Iterator[Any]) -> Iterator[Any]:
    """The same items, the next one prepared in a background thread while the caller works on the current one."""
    with ThreadPoolExecutor(max_workers=1) as worker:
        upcoming = worker.submit(next, batches, _END)
        while (item := upcoming.result()) is not _END:
            upcoming = worker.submit(next, batches, _END)
            yield item


_END = object()


def max_panels_of(run_dir: Path, pages: pd.DataFrame) -> int:
    """Panel slots per page: notebook 01's max_panels, or the most panels any page has."""
    options = corpus_record(run_dir).get("options", {})
    return int(options.get("max_panels") or pages.num_panels.max())


def generate(
    run_dir: str | Path,
    checkpoint: str | Path | None = None,
    store: str | Path | None = None,
    *,
    cfg: EmbedConfig | None = None,
    shard: tuple[int, int] | None = None,
    overwrite: bool = False,
    overwrite_hint: str = OVERWRITE,
) -> dict[str, Any]:
    """Encode the pages table of ``run_dir`` into the store (default ``run_dir/panel_embeddings.zarr``).

    Resumes a store made from the same checkpoint and pages, computing only the chunks not yet done. ``shard``
    (i, n) takes every n-th chunk; under ``accelerate launch`` each process takes its own shard by default.
    ``overwrite_hint`` is how the caller's user replaces a store, for the error that refuses one of other content.
    Returns a summary: pages, panels, chunks computed and skipped, panels encoded (and from text-free twins),
    seconds, panels per second.
    """
    run_dir = Path(run_dir)
    checkpoint_path = Path(checkpoint) if checkpoint else checkpoints(run_dir).pick("best")
    if checkpoint_path.is_dir():  # a run's stage3/ folder: its best checkpoint, else its last
        try:
            checkpoint_path = StageCheckpoints(checkpoint_path.parent, checkpoint_path.name).pick("best")
        except FileNotFoundError:
            raise FileNotFoundError(
                f"{checkpoint_path} is a folder without a Stage 3 checkpoint ({BEST_NAME} or {LAST_NAME}): give the "
                f"file, or {checkpoints(run_dir).how_to_train}"
            ) from None
    if not checkpoint_path.is_file():
        raise FileNotFoundError(f"checkpoint {checkpoint_path} does not exist: {checkpoints(run_dir).how_to_train}")
    store_path = Path(store) if store else run_dir / STORE_NAME
    try:
        return _generate(run_dir, checkpoint_path, store_path, cfg or EmbedConfig(), shard, overwrite, overwrite_hint)
    finally:
        remove_lock(store_path)  # no stray lock file once the last shard has finished (or failed)


def _generate(
    run_dir: Path,
    checkpoint_path: Path,
    store_path: Path,
    cfg: EmbedConfig,
    shard: tuple[int, int] | None,
    overwrite: bool,
    overwrite_hint: str,
) -> dict[str, Any]:
    """generate, once the paths are resolved."""
    from accelerate import PartialState  # only a writer needs the process group; readers never import it

    state = PartialState()
    shard = shard or (state.process_index, state.num_processes)
    pages, data_root = checked_run_pages(run_dir)
    max_panels = max_panels_of(run_dir, pages)
    loaded = load_checkpoint(checkpoint_path)
    model_config = loaded.get("config", {}).get("model", {}) if isinstance(loaded, dict) else {}
    if "feature_dim" not in model_config:
        kind = "a Stage 4 checkpoint" if "d_model" in model_config else "not a Stage 3 checkpoint"
        raise ValueError(
            f"{checkpoint_path} is {kind}: the store is made by the Stage 3 panel encoder, "
            f"<run>/stage3/{BEST_NAME} (notebook 02 or `comicnb train stage3`)"
        )
    precision = resolve_precision(cfg.precision, state.device)
    metadata = store_metadata(pages, max_panels)
    sources = text_free_sources(pages, cfg.text_free)
    attrs = store_attrs(loaded, checkpoint_path, metadata, cfg, max_panels, precision, data_root, sources)
    group = open_store(store_path, metadata, attrs, overwrite, overwrite_hint)
    model = model_from_checkpoint(loaded).to(state.device)
    chunks = page_chunks(len(pages), cfg.pages_per_chunk)[shard[0] :: shard[1]]
    done = np.asarray(group[DONE][:])
    todo = [chunk for chunk in chunks if not done[chunk].all()]
    start, panels, twin_panels = time.perf_counter(), 0, 0
    loader = zip(
        page_loader(pages, data_root, model, todo, max_panels, cfg.num_workers),
        text_free_loader(pages, data_root, model, todo, max_panels, cfg.num_workers, sources),
    )
    # One writer thread keeps the chunks' order while the model runs (zarr's I/O releases the GIL). On a GPU another
    # thread decodes the next chunk meanwhile; on the CPU it would steal cycles from the model's own threads and stall
    # them: measured on 2 cores, a decoding thread made generation slower, not faster.
    batches = prefetch(loader) if state.device.type != "cpu" else loader
    with ThreadPoolExecutor(max_workers=1) as writer:
        writes = []
        for chunk, (batch, twins) in zip(todo, batches, strict=True):
            arrays = encode_chunk(model, batch, state.device, precision)
            arrays.update(encode_text_free(model, twins, max_panels, state.device, precision))
            writes.append(writer.submit(write_chunk, group, slice(chunk[0], chunk[-1] + 1), arrays))
            panels += int(arrays[MASKS].sum())
            twin_panels += int(arrays[TEXT_FREE_MASKS].sum())
        for write in writes:
            write.result()  # re-raise a failed write
    seconds = time.perf_counter() - start
    return dict(
        store=str(store_path),
        shard=f"{shard[0]}/{shard[1]}",
        pages=len(pages),
        panels=int(pages.num_panels.sum()),
        chunks=len(chunks),
        computed_chunks=len(todo),
        skipped_chunks=len(chunks) - len(todo),
        encoded_panels=panels,
        text_free_panels=twin_panels,
        seconds=seconds,
        panels_per_s=panels / seconds if seconds > 0 else float("nan"),
        precision=precision,
        complete=bool(np.asarray(group[DONE][:]).all()),
    )
