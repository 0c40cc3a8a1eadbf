"""The Stage 3 embedding store: every panel of a run's pages table through the trained encoder, into one zarr v3 store.

Layout of ``panel_embeddings.zarr`` (P pages, N = max_panels slots, D = feature_dim, M = 3 modalities):

    embeddings      (P, N, D) float32  fused, L2-normalised panel embeddings; padding slots exactly zero
    panel_masks     (P, N)    bool     real panels
    modalities      (P, N, M, D) float32  per-modality embeddings before fusion (vision, text, composition), zero
                                       where masked: Stage 4 re-fuses a panel's image with another panel's text
    modality_masks  (P, N, M) bool     which modalities each panel has
    done            (P,)      bool     pages written; what a resumed or sharded run still has to do
    metadata.json                      one record per page: the seed's book_id, page_name, num_panels and
                                       embedding_indices (flat panel ids, page * N + slot), plus split and more

The unit of work is a *chunk*: ``pages_per_chunk`` consecutive pages, one zarr chunk along the page axis and one
forward batch (the panels of all its pages together). A chunk's arrays are written before its ``done`` flags, and
zarr writes every chunk atomically, so a killed run loses at most the chunks in flight; run again, it computes only
the chunks not done, in the same batches, so the store equals an uninterrupted run's. Shards (``shard=(i, n)``, or
one per process under ``accelerate launch``) take every n-th chunk: disjoint regions of the same store.

The metadata and the attributes are written when the store is created, before any panel is encoded. A store that
exists is resumed only when it was made from the same checkpoint, pages and content settings; otherwise it is an
error (``overwrite=True`` replaces it explicitly).
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import shutil
import time
from collections.abc import Iterator, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
import zarr
from accelerate import PartialState

from comicnb import __version__
from comicnb.data import load_run_pages
from comicnb.dataset import page_chunks, page_loader
from comicnb.fusion import MODALITIES
from comicnb.model import PanelFeatureExtractor
from comicnb.paths import git_revision
from comicnb.search import EMBEDDINGS, MASKS, METADATA, exact_topk
from comicnb.training import CHECKPOINT_NAME, load_checkpoint, model_from_checkpoint, tensors_only

STORE_NAME = "panel_embeddings.zarr"
# Attributes that define the store's content: a store is resumed only when all of them match.
CONTENT_ATTRS = ("checkpoint_sha256", "metadata_sha256", "feature_dim", "max_panels", "pages_per_chunk", "precision")


class StoreMismatchError(RuntimeError):
    """A store exists at the path but was made from another checkpoint, other pages or other settings."""


@dataclass
class EmbedConfig:
    """How to generate a store (what changes its content is recorded in its attributes)."""

    pages_per_chunk: int = 16  # pages per forward batch and per zarr chunk: the unit of resume and of sharding
    num_workers: int = 0  # DataLoader processes decoding and cropping pages while the model runs
    precision: str = "auto"  # "auto": bf16 autocast on a GPU that supports it, else fp32; or "fp32" / "bf16"

    def resolved_precision(self, device: torch.device) -> str:
        """The precision actually used on ``device``."""
        if self.precision not in ("auto", "fp32", "bf16"):
            raise ValueError(f"precision must be auto, fp32 or bf16, not {self.precision!r}")
        if self.precision != "auto":
            return self.precision
        return "bf16" if device.type == "cuda" and torch.cuda.is_bf16_supported() else "fp32"


def file_sha256(path: str | Path) -> str:
    """Hex SHA-256 of a file, read in 1 MiB blocks."""
    digest = hashlib.sha256()
    with open(path, "rb") as stream:
        for block in iter(lambda: stream.read(2**20), b""):
            digest.update(block)
    return digest.hexdigest()


def store_metadata(pages: pd.DataFrame, max_panels: int) -> list[dict[str, Any]]:
    """One record per page, in store order: the seed's fields (embedding_indices = flat panel ids) and provenance."""
    records = []
    for index, page in enumerate(pages.itertuples(index=False)):
        records.append(dict(book_id=page.book_id, page_name=page.page_name, num_panels=int(page.num_panels),
                            embedding_indices=[index * max_panels + slot for slot in range(page.num_panels)],
                            page_index=index, page_id=page.page_id, part=int(page.part), split=page.split,
                            image_path=page.image_path, panel_index=[int(i) for i in page.panel_index]))
    return records


def parse_shard(text: str) -> tuple[int, int]:
    """'i/n' (0-based i) -> (i, n)."""
    try:
        index, count = (int(part) for part in text.split("/"))
    except ValueError as err:
        raise ValueError(f"shard {text!r} is not i/n, e.g. 0/2") from err
    if not 0 <= index < count:
        raise ValueError(f"shard {text!r}: need 0 <= i < n")
    return index, count


@contextlib.contextmanager
def store_lock(store: Path) -> Iterator[None]:
    """Hold an exclusive lock on the store while shards create or check it; the lock file lies beside the store,
    since creating the store empties its folder."""
    store.parent.mkdir(parents=True, exist_ok=True)
    with open(store.parent / f".{store.name}.lock", "w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _create_arrays(group: zarr.Group, pages: int, max_panels: int, dim: int, chunk: int) -> None:
    """The store's arrays, all zero (fill value), chunked by whole chunks of pages.

    Embeddings are stored uncompressed: float32 embeddings barely compress, and search streams them at memory speed.
    """
    modalities = len(MODALITIES)
    group.create_array(EMBEDDINGS, shape=(pages, max_panels, dim), chunks=(chunk, max_panels, dim), dtype="float32",
                       fill_value=0.0, compressors=None)
    group.create_array(MASKS, shape=(pages, max_panels), chunks=(chunk, max_panels), dtype="bool", fill_value=False)
    group.create_array("modalities", shape=(pages, max_panels, modalities, dim),
                       chunks=(chunk, max_panels, modalities, dim), dtype="float32", fill_value=0.0, compressors=None)
    group.create_array("modality_masks", shape=(pages, max_panels, modalities),
                       chunks=(chunk, max_panels, modalities), dtype="bool", fill_value=False)
    group.create_array("done", shape=(pages,), chunks=(chunk,), dtype="bool", fill_value=False)


def open_store(path: Path, metadata: list[dict], attrs: dict[str, Any], overwrite: bool = False) -> zarr.Group:
    """Create the store (metadata and attributes first), or reopen it for resuming when its content attrs match."""
    if overwrite and path.exists():
        shutil.rmtree(path)
    with store_lock(path):
        if (path / "zarr.json").is_file():
            group = zarr.open_group(str(path), mode="r+")
            differ = {k: (group.attrs.get(k), attrs[k]) for k in CONTENT_ATTRS if group.attrs.get(k) != attrs[k]}
            if differ:
                detail = "; ".join(f"{k}: store has {old!r}, this run {new!r}" for k, (old, new) in differ.items())
                raise StoreMismatchError(f"{path} holds another store ({detail}); choose another store path or "
                                         f"pass overwrite=True to replace it")
        else:
            group = zarr.open_group(str(path), mode="w", attributes=attrs)
            _create_arrays(group, len(metadata), attrs["max_panels"], attrs["feature_dim"], attrs["pages_per_chunk"])
        if not (path / METADATA).is_file():  # equal content (metadata_sha256 matched) if a creation was cut short
            (path / METADATA).write_text(json.dumps(metadata, ensure_ascii=False) + "\n", encoding="utf-8")
        return group


def store_attrs(checkpoint: Mapping[str, Any], checkpoint_path: Path, metadata: list[dict], cfg: EmbedConfig,
                max_panels: int, precision: str) -> dict[str, Any]:
    """Attributes of a new store: what defines its content (CONTENT_ATTRS) and where it came from."""
    model_config = dict(checkpoint["config"]["model"])
    return dict(
        checkpoint_sha256=file_sha256(checkpoint_path),
        metadata_sha256=hashlib.sha256(json.dumps(metadata, sort_keys=True).encode()).hexdigest(),
        feature_dim=int(model_config["feature_dim"]), max_panels=max_panels, pages_per_chunk=cfg.pages_per_chunk,
        precision=precision, modalities=list(MODALITIES), checkpoint=str(checkpoint_path), model=model_config,
        seed=checkpoint["config"].get("train", {}).get("seed"), params=asdict(cfg), git_revision=git_revision(),
        comicnb_version=__version__, created=datetime.now(timezone.utc).isoformat(timespec="seconds"))


def encode_chunk(model: PanelFeatureExtractor, batch: Mapping[str, Any], device: torch.device,
                 precision: str) -> dict[str, np.ndarray]:
    """The arrays of one chunk of pages, from one forward pass over all their panels."""
    inputs = tensors_only(batch, device)
    autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=precision == "bf16")
    with torch.inference_mode(), autocast:
        encoding = model.encode(inputs)
    return {EMBEDDINGS: encoding.fused.float().cpu().numpy(), MASKS: encoding.panel_mask.cpu().numpy(),
            "modalities": encoding.modalities.float().cpu().numpy(),
            "modality_masks": encoding.modality_mask.cpu().numpy()}


def write_chunk(group: zarr.Group, region: slice, arrays: Mapping[str, np.ndarray]) -> None:
    """Write one chunk's arrays, then its done flags: a chunk counts as written only once all its arrays are."""
    for name, values in arrays.items():
        group[name][region] = values
    group["done"][region] = True


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
    options = json.loads((run_dir / "corpus.json").read_text(encoding="utf-8")).get("options", {})
    return int(options.get("max_panels") or pages.num_panels.max())


def generate(run_dir: str | Path, checkpoint: str | Path | None = None, store: str | Path | None = None, *,
             cfg: EmbedConfig | None = None, shard: tuple[int, int] | None = None,
             overwrite: bool = False) -> dict[str, Any]:
    """Encode the pages table of ``run_dir`` into the store (default ``run_dir/panel_embeddings.zarr``).

    Resumes a store made from the same checkpoint and pages, computing only the chunks not yet done. ``shard``
    (i, n) takes every n-th chunk; under ``accelerate launch`` each process takes its own shard by default.
    Returns a summary: pages, panels, chunks computed and skipped, seconds, panels per second.
    """
    run_dir, cfg = Path(run_dir), cfg or EmbedConfig()
    checkpoint_path = Path(checkpoint) if checkpoint else run_dir / CHECKPOINT_NAME
    store_path = Path(store) if store else run_dir / STORE_NAME
    state = PartialState()
    shard = shard or (state.process_index, state.num_processes)
    pages, data_root = load_run_pages(run_dir)
    max_panels = max_panels_of(run_dir, pages)
    loaded = load_checkpoint(checkpoint_path)
    precision = cfg.resolved_precision(state.device)
    metadata = store_metadata(pages, max_panels)
    group = open_store(store_path, metadata, store_attrs(loaded, checkpoint_path, metadata, cfg, max_panels, precision),
                       overwrite)
    model = model_from_checkpoint(loaded).to(state.device)
    chunks = page_chunks(len(pages), cfg.pages_per_chunk)[shard[0]::shard[1]]
    done = np.asarray(group["done"][:])
    todo = [chunk for chunk in chunks if not done[chunk].all()]
    start, panels = time.perf_counter(), 0
    loader = iter(page_loader(pages, data_root, model, todo, max_panels, cfg.num_workers))
    # One writer thread keeps the chunks' order while the model runs (zarr's I/O releases the GIL). On a GPU another
    # thread decodes the next chunk meanwhile; on the CPU it would steal cycles from the model's own threads and stall
    # them: measured on 2 cores, a decoding thread made generation slower, not faster.
    batches = prefetch(loader) if state.device.type != "cpu" else loader
    with ThreadPoolExecutor(max_workers=1) as writer:
        writes = []
        for chunk, batch in zip(todo, batches, strict=True):
            arrays = encode_chunk(model, batch, state.device, precision)
            writes.append(writer.submit(write_chunk, group, slice(chunk[0], chunk[-1] + 1), arrays))
            panels += int(arrays[MASKS].sum())
        for write in writes:
            write.result()  # re-raise a failed write
    seconds = time.perf_counter() - start
    return dict(store=str(store_path), shard=f"{shard[0]}/{shard[1]}", pages=len(pages),
                panels=int(pages.num_panels.sum()), chunks=len(chunks), computed_chunks=len(todo),
                skipped_chunks=len(chunks) - len(todo), encoded_panels=panels, seconds=seconds,
                panels_per_s=panels / seconds if seconds > 0 else float("nan"), precision=precision,
                complete=bool(np.asarray(group["done"][:]).all()))


def open_embeddings(store: str | Path) -> zarr.Group:
    """A finished store, read-only; an unfinished one is an error naming how many pages are missing."""
    group = zarr.open_group(str(store), mode="r")
    missing = int((~np.asarray(group["done"][:])).sum())
    if missing:
        raise RuntimeError(f"{store} is unfinished: {missing} of {group['done'].shape[0]} pages not yet encoded; "
                           f"run the generation again to resume it")
    return group


def verify_store(store: str | Path, pages: pd.DataFrame) -> dict[str, Any]:
    """Counts against the pages table, exact-zero padding and unit norms of a finished store."""
    group = open_embeddings(store)
    masks = np.asarray(group[MASKS][:])  # (P, N)
    counts_match = len(masks) == len(pages) and masks.sum(axis=1).tolist() == pages.num_panels.tolist()
    padding_nonzero, norm_min, norm_max = 0, np.inf, 0.0
    for start in range(0, len(masks), group[EMBEDDINGS].chunks[0]):  # one chunk at a time: memory stays flat
        block = np.asarray(group[EMBEDDINGS][start:start + group[EMBEDDINGS].chunks[0]])
        real = masks[start:start + len(block)]
        padding_nonzero += int(np.count_nonzero(block[~real]))
        norms = np.linalg.norm(block[real], axis=1)
        norm_min = min(norm_min, float(norms.min(initial=np.inf)))
        norm_max = max(norm_max, float(norms.max(initial=0)))
    return dict(pages=len(masks), panels=int(masks.sum()), expected_panels=int(pages.num_panels.sum()),
                counts_match=counts_match, padding_slots=int((~masks).sum()), padding_nonzero_values=padding_nonzero,
                norm_min=norm_min, norm_max=norm_max)


def panel_labels(metadata: pd.DataFrame, data_root: str | Path) -> pd.DataFrame:
    """Labels of each stored panel, in store order: book, and the ground truth's first character and scene where the
    corpus has a sidecar (the synthetic corpus); real data has only the book."""
    if (Path(data_root) / "ground_truth.json").is_file():
        from comicnb.synth import panel_truth  # the synthetic corpus's reader, only needed where there is one

        return panel_truth(data_root, metadata)[["book_id", "character", "scene"]]
    return pd.DataFrame({"book_id": np.repeat(metadata.book_id.to_numpy(), metadata.num_panels.to_numpy())})


def neighbour_agreement(vectors: np.ndarray, page: np.ndarray, labels: pd.DataFrame, k: int = 5) -> pd.DataFrame:
    """How often a panel's k nearest panels on *other* pages share its label, per label column, against chance.

    Chance is the probability that a random panel of another page shares the label (from the label frequencies).
    """
    extra = int(np.bincount(page).max())  # enough hits to still have k after dropping the panel's own page
    _, ids = exact_topk(vectors, vectors, k + extra)
    other = page[ids] != page[:, None]  # (M, k + extra)
    ranks = np.cumsum(other, axis=1) <= k
    keep = other & ranks  # the first k hits on other pages
    rows = []
    for column in labels.columns:
        values = labels[column].to_numpy()
        agree = (values[ids] == values[:, None]) & keep
        share = labels[column].value_counts(normalize=True)
        rows.append(dict(label=column, agreement=agree.sum() / keep.sum(), chance=float((share**2).sum())))
    return pd.DataFrame(rows).set_index("label")
