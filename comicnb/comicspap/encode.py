"""``comicspap encode``: one split of ComicsPAP's parquet files into a run, as an embedding store and comicnb task sets.

The files are read one row group at a time (never a whole split in memory) and cut into chunks of
``rows_per_chunk`` rows. Each row is one sample and one row of the store (its "page"): its context panels take the
first slots, its options the next ones. Every panel is decoded, its text read by the OCR engine of ``comicnb detect``
(``text="ocr"``) or left masked (``text="none"``), and encoded by the run's Stage 3 model as a panel without a place
on a page (the composition modality masked: ComicsPAP's panels come without their pages). The colour histogram of
every panel is kept beside its vectors, for the colour-histogram baseline.

A chunk's arrays are written, then its record (``parts/``: its samples and bad rows, written atomically), then its
``done`` flags: a killed run, run again, computes only the chunks without a record and ends with the same files. When
every chunk is done the records are read in file order into the task sets (``tasks/<task>.jsonl``), the store's page
records (``metadata.json``) and ``manifest.json``: the files with their SHA-256 and hub revision, the rows per skill,
the samples per task, every bad row by reason, and the rows per second of the computing.

Everything lies under ``<run>/comicspap/<split>/``; ``open_split`` opens it as a ``RunView`` so the Stage 4 model and
the baselines read ComicsPAP exactly as they read the run's own task sets.
"""

from __future__ import annotations

import hashlib
import io
import json
import re
import shutil
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import torch
import zarr
from PIL import Image

from comicnb import __version__
from comicnb.checkpoint import file_sha256
from comicnb.comicspap.format import (
    HIDDEN,
    SKILLS,
    TASK_OF,
    Row,
    check_schema,
    find_files,
    group_starts,
    known_revision,
    read_group,
    revision_of,
    row_problem,
)
from comicnb.stage3.batches import make_collate, tensors_only
from comicnb.stage4.baselines.no_learning import HISTOGRAM_BINS, colour_histogram
from comicnb.stage4.tasks import Candidate, TaskSample, TaskSet, read_task_set, write_task_set
from comicnb.stage4.view import FrozenTextPathway, RunView, page_table, panel_table
from comicnb.store.schema import (
    DONE,
    EMBEDDINGS,
    MASKS,
    METADATA,
    MODALITY_EMBEDDINGS,
    MODALITY_MASKS,
)

FOLDER = "comicspap"
STORE = "panels.zarr"
PARTS = "parts"
TASKS = "tasks"
MANIFEST = "manifest.json"
HISTOGRAMS = "colour_histograms"
TEXT_MODES = ("ocr", "none")
COMPOSITION = 2  # the composition row of a modality mask: always off here
BAD_REASONS = (
    "no_sample_id",
    "no_options",
    "index_out_of_range",
    "solution_index_out_of_range",
    "missing_image",
    "undecodable_image",
    "too_many_panels",
    "duplicate_sample_id",
)


@dataclass
class EncodeSettings:
    """How a split is encoded (part of what defines the store: another setting is a new store)."""

    text: str = "ocr"  # ocr: read each panel's text with RapidOCR; none: text masked
    max_panels: int = 16  # context panels plus options a row may have (a row with more is a counted bad row)
    rows_per_chunk: int = 16  # rows per forward pass, per record and per zarr chunk
    ocr_threads: int = 0  # onnxruntime threads (0: its default)

    def __post_init__(self) -> None:
        if self.text not in TEXT_MODES:
            raise ValueError(f"text must be one of {', '.join(TEXT_MODES)}, not {self.text!r}")
        if self.max_panels < 2 or self.rows_per_chunk < 1:
            raise ValueError("max_panels must be at least 2 and rows_per_chunk at least 1")


def split_dir(run_dir: str | Path, split: str) -> Path:
    """``<run>/comicspap/<split>/``."""
    return Path(run_dir) / FOLDER / split


def run_checkpoint(run_dir: str | Path) -> Path:
    """The Stage 3 checkpoint a run's own store was made with (so the run's Stage 4 models read the same space), else
    the run's Stage 3 best, else its last checkpoint."""
    from comicnb.stage3 import checkpoints
    from comicnb.store.schema import STORE_NAME

    store = Path(run_dir) / STORE_NAME
    if store.is_dir():
        recorded = zarr.open_group(str(store), mode="r").attrs.get("checkpoint")
        if recorded and Path(recorded).is_file():
            return Path(recorded)
    files = checkpoints(run_dir)
    for path in (files.best, files.last):
        if path.is_file():
            return path
    raise FileNotFoundError(
        f"no Stage 3 checkpoint in {run_dir}: train Stage 3 first (notebook 02) or give --checkpoint PATH"
    )


# ------------------------------------------------------------------------------------------------------ planning


@dataclass
class Chunk:
    """``count`` rows of one row group of one file, stored from store row ``first``."""

    skill: str
    path: Path
    group: int
    group_start: int  # the group's first row in its file
    offset: int  # the chunk's first row inside the group
    count: int
    first: int  # store row of the chunk's first row

    @property
    def key(self) -> str:
        return f"{self.skill}--{self.path.stem}--{self.group:05d}--{self.offset:06d}"


def plan_chunks(files: list[tuple[str, Path]], rows_per_chunk: int) -> list[Chunk]:
    """Every chunk of every file, in file order, from the footers alone."""
    chunks, first = [], 0
    for skill, path in files:
        meta = pq.ParquetFile(path).metadata
        for group, start in enumerate(group_starts(path)):
            rows = meta.row_group(group).num_rows
            for offset in range(0, rows, rows_per_chunk):
                count = min(rows_per_chunk, rows - offset)
                chunks.append(Chunk(skill, path, group, start, offset, count, first))
                first += count
    return chunks


# ------------------------------------------------------------------------------------------------------ the store


def _content(files: list[dict[str, Any]], checkpoint_sha: str, settings: EncodeSettings, split: str) -> str:
    """What defines a split's store: its files' hashes, the checkpoint, the settings and the split."""
    key = dict(files=[(f["skill"], f["name"], f["sha256"]) for f in files], checkpoint=checkpoint_sha, split=split)
    key["settings"] = asdict(settings)
    return hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()


def _open_store(
    folder: Path, rows: int, dim: int, settings: EncodeSettings, attrs: dict[str, Any], overwrite: bool
) -> zarr.Group:
    """The split's store: created, or resumed when it was made from the same content."""
    path = folder / STORE
    if path.is_dir():
        group = zarr.open_group(str(path), mode="r+")
        if group.attrs.get("content_sha256") == attrs["content_sha256"] and not overwrite:
            return group
        if not overwrite:
            raise FileExistsError(
                f"{folder} holds a ComicsPAP encoding of other files, another checkpoint or other settings: "
                f"pass --overwrite to replace it"
            )
    if folder.is_dir():
        shutil.rmtree(folder)
    folder.mkdir(parents=True)
    group = zarr.open_group(str(path), mode="w")
    n, chunk = settings.max_panels, settings.rows_per_chunk
    shapes = {
        EMBEDDINGS: ((rows, n, dim), "float32"),
        MASKS: ((rows, n), "bool"),
        MODALITY_EMBEDDINGS: ((rows, n, 3, dim), "float32"),
        MODALITY_MASKS: ((rows, n, 3), "bool"),
        HISTOGRAMS: ((rows, n, HISTOGRAM_BINS**3), "float16"),
        DONE: ((rows,), "bool"),
    }
    for name, (shape, dtype) in shapes.items():
        group.create_array(name, shape=shape, chunks=(chunk, *shape[1:]), dtype=dtype, fill_value=False)
    group.attrs.update(attrs)
    return group


# ------------------------------------------------------------------------------------------------------ decoding


def decode(data: bytes) -> Image.Image:
    """One panel image, RGB (an image that does not decode raises)."""
    with Image.open(io.BytesIO(data)) as image:
        image.load()
        return image.convert("RGB")


class TextReader:
    """Each panel's text, as RapidOCR reads it ("" for every panel with ``text="none"``).

    The panels of a row are read in one pass: laid out on one white canvas, a few to a line with wide gutters, read
    once, and each text box given to the panel it lies on (``comicnb.detect.text``: lines grouped into boxes, a
    panel's boxes in reading order). One pass per row, not one per panel: the engine enlarges a small picture to its
    detection size, so a panel read alone costs nearly what a page does."""

    def __init__(self, mode: str, threads: int = 0, per_line: int = 4, gutter: int = 64) -> None:
        self.mode, self.threads, self.per_line, self.gutter = mode, threads, per_line, gutter
        self._ocr = None

    def layout(self, images: Sequence[Image.Image]) -> tuple[Image.Image, list[tuple[int, int, int, int]]]:
        """The canvas and each panel's box on it."""
        boxes, x, y, line_height = [], self.gutter, self.gutter, 0
        for i, image in enumerate(images):
            if i and i % self.per_line == 0:
                x, y, line_height = self.gutter, y + line_height + self.gutter, 0
            boxes.append((x, y, x + image.width, y + image.height))
            x += image.width + self.gutter
            line_height = max(line_height, image.height)
        width = max(b[2] for b in boxes) + self.gutter
        canvas = Image.new("RGB", (width, y + line_height + self.gutter), "white")
        for image, box in zip(images, boxes):
            canvas.paste(image, box[:2])
        return canvas, boxes

    def __call__(self, images: Sequence[Image.Image]) -> list[str]:
        if self.mode == "none" or not images:
            return [""] * len(images)
        from comicnb.detect.text import Ocr, assign_text, group_lines

        if self._ocr is None:
            self._ocr = Ocr(threads=self.threads)
        canvas, boxes = self.layout(images)
        held, _ = assign_text(boxes, group_lines(self._ocr.lines(np.asarray(canvas))))
        return [" ".join(box.text for box in panel if box.text.strip()) for panel in held]


def _record(row: Row, skill: str, store_row: int, texts: list[str], sizes: list[list[int]]) -> dict[str, Any]:
    """A good row's record: what the task sample and the page record are built from."""
    return dict(
        store_row=store_row,
        skill=skill,
        sample_id=row.sample_id,
        context=len(row.context),
        options=len(row.options),
        index=row.index,
        solution_index=row.solution_index,
        split=row.split,
        task_type=row.task_type,
        caption=row.caption,
        texts=texts,
        sizes=sizes,
        file=row.file,
        row=row.position,
    )


def _bad(row: Row, skill: str, store_row: int, reason: str, detail: str = "") -> dict[str, Any]:
    return dict(
        store_row=store_row, skill=skill, sample_id=row.sample_id, file=row.file, row=row.position, reason=reason
    ) | ({"detail": detail} if detail else {})


def encode_chunk(
    rows: Sequence[Row],
    chunk: Chunk,
    model: Any,
    settings: EncodeSettings,
    reader: TextReader,
    hidden_labels: bool,
    seconds: Counter | None = None,
) -> tuple[dict[str, np.ndarray], list[dict], list[dict]]:
    """The arrays of one chunk, its good rows' records and its bad rows; ``seconds`` adds up the time spent decoding,
    reading text and encoding (``decode``, ``ocr``, ``model``)."""
    seconds = seconds if seconds is not None else Counter()
    n = settings.max_panels
    items, records, bad = [], [], []
    histograms = np.zeros((len(rows), n, HISTOGRAM_BINS**3), dtype=np.float16)
    kept = []
    for i, row in enumerate(rows):
        store_row = chunk.first + i
        problem = row_problem(row, hidden_labels)
        if problem is None and len(row.context) + len(row.options) > n:
            problem = "too_many_panels"
        if problem is not None:
            bad.append(_bad(row, chunk.skill, store_row, problem))
            continue
        start = time.perf_counter()
        try:
            images = [decode(data) for data in (*row.context, *row.options)]
        except Exception as err:  # noqa: BLE001 - any decoder failure is this row's problem, counted
            detail = re.sub(r" at 0x[0-9a-f]+", "", f"{type(err).__name__}: {err}")  # the same text in every run
            bad.append(_bad(row, chunk.skill, store_row, "undecodable_image", detail))
            continue
        tensors = torch.stack([model.image_transform(image) for image in images])
        histograms[i, : len(images)] = [colour_histogram(image) for image in images]
        middle = time.perf_counter()
        seconds["decode"] += middle - start  # decoding, the model's image transform and the colour histograms
        texts = reader(images)
        seconds["ocr"] += time.perf_counter() - middle
        items.append(dict(images=tensors, texts=texts, comp_feats=torch.zeros(len(images), 7), page_id=row.sample_id))
        records.append(_record(row, chunk.skill, store_row, texts, [[image.width, image.height] for image in images]))
        kept.append(i)
    dim = model.feature_dim
    arrays = {
        EMBEDDINGS: np.zeros((len(rows), n, dim), np.float32),
        MASKS: np.zeros((len(rows), n), bool),
        MODALITY_EMBEDDINGS: np.zeros((len(rows), n, 3, dim), np.float32),
        MODALITY_MASKS: np.zeros((len(rows), n, 3), bool),
        HISTOGRAMS: histograms,
    }
    if items:
        collate = make_collate(model.tokenizer, max_length=model.cfg.max_text_length, max_panels=n)
        batch = collate(items)
        batch["modality_mask"][..., COMPOSITION] = 0.0  # no page: no place on it
        start = time.perf_counter()
        with torch.inference_mode():
            encoding = model.encode(tensors_only(batch, model.device))
        seconds["model"] += time.perf_counter() - start  # tokenising is in collate, before: part of "decode"
        arrays[EMBEDDINGS][kept] = encoding.fused.float().cpu().numpy()
        arrays[MASKS][kept] = encoding.panel_mask.cpu().numpy()
        arrays[MODALITY_EMBEDDINGS][kept] = encoding.modalities.float().cpu().numpy()
        arrays[MODALITY_MASKS][kept] = encoding.modality_mask.cpu().numpy()
    return arrays, records, bad


def _write_json(path: Path, value: Any) -> None:
    partial = path.with_name(path.name + ".partial")
    partial.write_text(json.dumps(value, ensure_ascii=False, indent=None), encoding="utf-8")
    partial.replace(path)


# ------------------------------------------------------------------------------------------------------ the command


def encode(
    data: str | Path,
    split: str,
    run_dir: str | Path,
    checkpoint: str | Path | None = None,
    settings: EncodeSettings | None = None,
    skills: Sequence[str] = SKILLS,
    revision: str | None = None,
    overwrite: bool = False,
    progress: bool = True,
    max_chunks: int | None = None,
) -> dict[str, Any]:
    """Encode one split of the ComicsPAP folder ``data`` into ``<run>/comicspap/<split>/`` (see the module); returns
    the manifest (``complete`` False when ``max_chunks`` stopped it early: run again to go on)."""
    from tqdm.auto import tqdm

    from comicnb.stage3.model import model_from_checkpoint

    settings = settings or EncodeSettings()
    found = find_files(data, split, skills)
    files = []
    for skill, path in found.all:
        handle = pq.ParquetFile(path)
        check_schema(handle.schema_arrow, path)  # every file before any work: a wrong file fails at once
        files.append(
            dict(
                skill=skill,
                name=path.relative_to(found.root).as_posix(),
                sha256=file_sha256(path),
                bytes=path.stat().st_size,
                rows=handle.metadata.num_rows,
                row_groups=handle.num_row_groups,
                revision=revision or revision_of(found.root, path),
            )
        )
    checkpoint = Path(checkpoint) if checkpoint else run_checkpoint(run_dir)
    model = model_from_checkpoint(checkpoint)
    chunks = plan_chunks(found.all, settings.rows_per_chunk)
    rows = sum(c.count for c in chunks)
    folder = split_dir(run_dir, split)
    attrs = dict(
        content_sha256=_content(files, model.checkpoint_sha256, settings, split),
        checkpoint=str(checkpoint),
        checkpoint_sha256=model.checkpoint_sha256,
        feature_dim=int(model.feature_dim),
        max_panels=settings.max_panels,
        split=split,
        settings=asdict(settings),
        comicnb_version=__version__,
    )
    group = _open_store(folder, rows, int(model.feature_dim), settings, attrs, overwrite)
    parts = folder / PARTS
    parts.mkdir(exist_ok=True)
    reader = TextReader(settings.text, settings.ocr_threads)
    todo = [c for c in chunks if not (parts / f"{c.key}.json").is_file()]
    bar = tqdm(total=rows, initial=rows - sum(c.count for c in todo), unit="row", disable=not progress)
    computed, panels_computed, started, parts_seconds = 0, 0, time.perf_counter(), Counter()
    loaded: tuple[Path, int, list[Row]] | None = None
    for number, chunk in enumerate(todo):
        if max_chunks is not None and number >= max_chunks:
            break
        if loaded is None or loaded[:2] != (chunk.path, chunk.group):  # one row group in memory at a time
            start = time.perf_counter()
            loaded = (chunk.path, chunk.group, read_group(chunk.path, chunk.group, chunk.group_start))
            parts_seconds["read"] += time.perf_counter() - start
        part_rows = loaded[2][chunk.offset : chunk.offset + chunk.count]
        arrays, records, bad = encode_chunk(part_rows, chunk, model, settings, reader, split == "test", parts_seconds)
        region = slice(chunk.first, chunk.first + chunk.count)
        for name, values in arrays.items():
            group[name][region] = values
        _write_json(parts / f"{chunk.key}.json", dict(records=records, bad=bad))
        group[DONE][region] = True
        computed += chunk.count
        panels_computed += sum(r["context"] + r["options"] for r in records)
        bar.update(chunk.count)
    bar.close()
    seconds = time.perf_counter() - started
    remaining = [c for c in chunks if not (parts / f"{c.key}.json").is_file()]
    timing = dict(
        rows_computed=computed,
        panels_computed=panels_computed,
        seconds=round(seconds, 3),
        rows_per_second=computed / seconds if seconds else 0.0,
        seconds_by_part={k: round(v, 3) for k, v in sorted(parts_seconds.items())},
    )
    if remaining:
        return dict(complete=False, chunks=len(chunks), remaining=len(remaining), timing=timing)
    return assemble(folder, chunks, files, split, attrs, settings, timing)


def assemble(
    folder: Path,
    chunks: Sequence[Chunk],
    files: list[dict[str, Any]],
    split: str,
    attrs: dict[str, Any],
    settings: EncodeSettings,
    timing: dict[str, Any],
) -> dict[str, Any]:
    """The task sets, page records and manifest from every chunk's record (duplicated sample ids found here)."""
    n = settings.max_panels
    records, bad = [], []
    for chunk in chunks:
        part = json.loads((folder / PARTS / f"{chunk.key}.json").read_text(encoding="utf-8"))
        records += part["records"]
        bad += part["bad"]
    seen: set[tuple[str, str]] = set()
    kept = []
    for record in records:
        key = (record["skill"], record["sample_id"])
        if key in seen:
            bad.append({k: record[k] for k in ("store_row", "skill", "sample_id", "file", "row")})
            bad[-1]["reason"] = "duplicate_sample_id"
            continue
        seen.add(key)
        kept.append(record)
    total = sum(c.count for c in chunks)
    write_page_records(folder / STORE / METADATA, kept, total, n)
    samples: dict[str, list[TaskSample]] = {}
    for record in kept:
        sample = task_sample(record, n, settings.text != "none")
        samples.setdefault(sample.task, []).append(sample)
    tasks_dir = folder / TASKS
    for old in tasks_dir.glob("*.jsonl") if tasks_dir.is_dir() else []:
        old.unlink()
    for task, task_samples in samples.items():
        write_task_set(tasks_dir, TaskSet(task, split, task_samples))
    bad.sort(key=lambda b: b["store_row"])
    by_skill = Counter(c.skill for c in chunks for _ in range(c.count))
    manifest = dict(
        complete=True,
        split=split,
        files=files,
        revisions=sorted({f["revision"] for f in files if f["revision"]}),
        revision_by_counts={s: known_revision(s, n) for s, n in by_skill.items()} if split == "val" else {},
        rows=dict(by_skill),
        samples={skill: sum(1 for r in kept if r["skill"] == skill) for skill in SKILLS if skill in by_skill},
        tasks={TASK_OF[s]: len(samples.get(TASK_OF[s], [])) for s in SKILLS if s in by_skill},
        bad_rows=dict(sorted(Counter(b["reason"] for b in bad).items())),
        bad=bad,
        hidden_labels=sum(1 for r in kept if r["solution_index"] == HIDDEN),
        panels_per_row=panels_per_row(kept),
        index_inside_context=dict(
            Counter(
                r["skill"]
                for r in kept
                if r["skill"] not in ("sequence_filling", "caption_relevance") and r["index"] != r["context"]
            )
        ),
        chance=chance_table(kept),
        settings=asdict(settings),
        checkpoint=attrs["checkpoint"],
        checkpoint_sha256=attrs["checkpoint_sha256"],
        timing=timing,
        comicnb_version=__version__,
    )
    _write_json(folder / MANIFEST, manifest)
    return manifest


def panels_per_row(records: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Per skill the mean and most context panels and options of a sample (what --max-panels must hold, and what a
    split's time scales with)."""
    table = {}
    for skill in SKILLS:
        mine = [(r["context"], r["options"]) for r in records if r["skill"] == skill]
        if mine:
            context, options = np.array(mine).T
            table[skill] = dict(
                context=round(float(context.mean()), 2),
                options=round(float(options.mean()), 2),
                most=int(max(context + options)),
            )
    return table


def chance_table(records: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Mean chance (one over the options) per skill and pooled over samples, as ComicsPAP's random baseline."""
    table: dict[str, Any] = {}
    for skill in SKILLS:
        mine = [1.0 / r["options"] for r in records if r["skill"] == skill]
        if mine:
            table[skill] = float(np.mean(mine))
    every = [1.0 / r["options"] for r in records]
    table["total"] = float(np.mean(every)) if every else None
    return table


def write_page_records(path: Path, records: Sequence[dict[str, Any]], rows: int, n: int) -> None:
    """The store's metadata.json: one record per store row (a sample; bad rows have no panels), its panels each a
    whole frame (box [0, 0, 1, 1] on a 1 x 1 "page"), its texts the OCR's, and each panel image's size."""
    by_row = {r["store_row"]: r for r in records}
    pages = []
    for index in range(rows):
        record = by_row.get(index)
        count = record["context"] + record["options"] if record else 0
        name = record["sample_id"] if record else f"bad-row-{index}"
        pages.append(
            dict(
                book_id=name,
                page_name=name,
                num_panels=count,
                embedding_indices=[index * n + slot for slot in range(count)],
                page_index=index,
                page_id=f"{record['skill']}/{name}" if record else name,
                part=0,
                split=record["split"] if record else "",
                image_path="",
                panel_index=list(range(count)),
                texts=list(record["texts"]) if record else [],
                sizes=list(record["sizes"]) if record else [],  # each panel's image, width and height in pixels
                boxes=[[0.0, 0.0, 1.0, 1.0]] * count,
                image_width=1,
                image_height=1,
            )
        )
    _write_json(path, pages)


def task_sample(record: dict[str, Any], n: int, with_text: bool) -> TaskSample:
    """A row's comicnb task sample: context panels first, options after them in the row's store row; each option a
    candidate with its own image and (OCR) text and no place; the caption as ``query_text``; each sample its own
    "book", so intervals resample samples."""
    base = record["store_row"] * n
    context = [base + k for k in range(record["context"])]
    task = TASK_OF[record["skill"]]
    candidates = []
    for j in range(record["options"]):
        panel = base + record["context"] + j
        candidates.append(Candidate(panel_id=panel, vision="full", text_from=panel if with_text else None))
    return TaskSample(
        task=task,
        sample_id=record["sample_id"],
        split=record["split"] or "",
        book_id=record["sample_id"],
        context=context,
        candidates=candidates,
        answer=record["solution_index"],
        slot=record["index"] if task == "panel_picking" else None,
        query_text=record["caption"] if task == "caption_relevance" and record["caption"] else None,
        built_from=dict(skill=record["skill"], index=record["index"], file=record["file"], row=record["row"]),
    )


# ------------------------------------------------------------------------------------------------------ reading


class StoredHistograms(dict):
    """The colour histograms kept in the store, as the colour-histogram baseline's cache: every panel's is present."""

    def __init__(self, array: np.ndarray, n: int) -> None:
        super().__init__()
        self.array, self.n = array, n

    def __contains__(self, key: object) -> bool:
        return True

    def __missing__(self, key: tuple[int, str]) -> np.ndarray:
        page, slot = divmod(int(key[0]), self.n)
        return self.array[page, slot].astype(np.float64)


def read_manifest(run_dir: str | Path, split: str) -> dict[str, Any]:
    """A split's manifest; a split not encoded (or not finished) names the command that does it."""
    path = split_dir(run_dir, split) / MANIFEST
    if not path.is_file():
        raise FileNotFoundError(
            f"the ComicsPAP {split} split is not encoded in {run_dir}: run `python -m comicnb comicspap encode "
            f"--data DIR --split {split} --run-dir {run_dir}` (again, to finish an interrupted run)"
        )
    return json.loads(path.read_text(encoding="utf-8"))


def open_split(run_dir: str | Path, split: str, checkpoint: str | Path | None = None) -> RunView:
    """An encoded split as a ``RunView`` (its store, page records and Stage 3 model), for the Stage 4 model and the
    baselines."""
    manifest = read_manifest(run_dir, split)
    store = split_dir(run_dir, split) / STORE
    group = zarr.open_group(str(store), mode="r")
    attrs = dict(group.attrs)
    metadata = pd.DataFrame(json.loads((store / METADATA).read_text(encoding="utf-8")))
    masks = np.asarray(group[MODALITY_MASKS][:]).astype(bool)
    n = int(attrs["max_panels"])
    view = RunView(
        pages=page_table(metadata, pd.DataFrame(columns=["page_id"])),
        max_panels=n,
        panels=panel_table(metadata, masks),
        modality_masks=masks,
        text_free_masks=None,
        feature_dim=int(attrs["feature_dim"]),
        run_dir=Path(run_dir),
        store=store,
        checkpoint=Path(checkpoint or manifest["checkpoint"]),
        attrs=attrs,
    )
    view.text_pathway = FrozenTextPathway(lambda: view.model)
    view.memo["histograms"] = StoredHistograms(np.asarray(group[HISTOGRAMS][:]), n)
    view.provenance = dict(store=str(store), store_checkpoint_sha256=attrs.get("checkpoint_sha256"))
    return view


def read_split_sets(run_dir: str | Path, split: str) -> dict[str, TaskSet]:
    """An encoded split's task sets, by task, in ComicsPAP's skill order."""
    manifest = read_manifest(run_dir, split)
    folder = split_dir(run_dir, split) / TASKS
    return {
        TASK_OF[skill]: read_task_set(folder, TASK_OF[skill])
        for skill in SKILLS
        if manifest["tasks"].get(TASK_OF[skill])
    }
