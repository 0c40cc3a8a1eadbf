"""ComicsPAP's parquet files: where they lie, the schema they must have, their rows read one row group at a time,
and rows written back in the same schema (``write_rows``: the export and the test fixture).

The dataset (``VLR-CVC/ComicsPAP`` on the Hugging Face hub; Vivoli et al., "ComicsPAP: understanding comic strips by
picking the correct panel", arXiv 2503.08561, CC BY-SA 4.0) has one config per skill, a folder of parquet files
each, named ``<skill>/<split>-NNNNN-of-NNNNN.parquet`` (the hub's automatic conversion writes
``<skill>/<split>/NNNN.parquet``; both are found). A row is one sample: ``sample_id``, ``context`` and ``options``
(lists of images, each the ``datasets`` library's image struct of ``bytes`` and ``path``), ``index`` (where the
missing panel goes in the context; -1 where there is no context), ``solution_index`` (the right option; -1 where the
labels are hidden, as in the test split), ``split``, ``task_type`` and ``previous_panel_caption`` (caption relevance's
input).
"""

from __future__ import annotations

import io
import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

SKILLS = ("sequence_filling", "char_coherence", "visual_closure", "text_closure", "caption_relevance")
# The comicnb task each skill is read as (the Stage 4 head that scores it); ComicsPAP's skills are the seed's tasks.
TASK_OF = {
    "sequence_filling": "panel_picking",
    "char_coherence": "character_coherence",
    "visual_closure": "visual_closure",
    "text_closure": "text_closure",
    "caption_relevance": "caption_relevance",
}
SKILL_OF = {task: skill for skill, task in TASK_OF.items()}
SPLITS = ("train", "val", "test")
HIDDEN = -1  # solution_index of a sample whose label is hidden (the test split)

IMAGE = pa.struct([("bytes", pa.binary()), ("path", pa.string())])
SCHEMA = pa.schema(
    [
        ("sample_id", pa.string()),
        ("context", pa.list_(IMAGE)),
        ("options", pa.list_(IMAGE)),
        ("index", pa.int32()),
        ("solution_index", pa.int32()),
        ("split", pa.string()),
        ("task_type", pa.string()),
        ("previous_panel_caption", pa.string()),
    ]
)
# The features the datasets library records in a parquet file's metadata, so that `load_dataset` decodes the lists
# of images as images (what the hub's files carry).
HF_FEATURES = {
    "sample_id": {"dtype": "string", "_type": "Value"},
    "context": {"feature": {"_type": "Image"}, "_type": "Sequence"},
    "options": {"feature": {"_type": "Image"}, "_type": "Sequence"},
    "index": {"dtype": "int32", "_type": "Value"},
    "solution_index": {"dtype": "int32", "_type": "Value"},
    "split": {"dtype": "string", "_type": "Value"},
    "task_type": {"dtype": "string", "_type": "Value"},
    "previous_panel_caption": {"dtype": "string", "_type": "Value"},
}
# Published row counts of the validation split, by revision (text closure changed between them): a split's counts name
# its revision where the download left no record of it (``known_revision``).
VALIDATION_COUNTS = {
    "current": {
        "sequence_filling": 262,
        "char_coherence": 143,
        "visual_closure": 300,
        "text_closure": 259,
        "caption_relevance": 262,
    },
    "earlier": {"text_closure": 274},
}


def known_revision(skill: str, rows: int) -> str:
    """Which published revision of the validation split a skill's row count matches ("current", "earlier": only text
    closure's count differs between them), or "unknown"."""
    for revision in ("current", "earlier"):
        if VALIDATION_COUNTS[revision].get(skill) == rows:
            return revision
    return "unknown"


class ComicsPAPFormatError(ValueError):
    """A file that is not ComicsPAP's parquet: a missing column, or a column of another type (the message names it)."""


@dataclass
class Row:
    """One sample as read: its images still encoded (bytes), checked by ``row_problem``."""

    sample_id: str
    context: list[bytes | None]
    options: list[bytes | None]
    index: int
    solution_index: int
    split: str
    task_type: str
    caption: str
    file: str = ""
    position: int = 0  # the row's place in its file


@dataclass
class SplitFiles:
    """The parquet files of one split of some skills, with their rows counted from the file footers."""

    root: Path
    split: str
    files: dict[str, list[Path]] = field(default_factory=dict)  # skill -> files in name order

    @property
    def all(self) -> list[tuple[str, Path]]:
        """(skill, file) of every file, skill by skill in SKILLS' order, files in name order."""
        return [(skill, path) for skill in SKILLS for path in self.files.get(skill, [])]


def find_files(root: str | Path, split: str, skills: Sequence[str] = SKILLS) -> SplitFiles:
    """The parquet files of ``split`` for each skill under ``root`` (the dataset's folder); a skill without files is
    left out, no file at all is an error naming what was looked for."""
    root = Path(root)
    if split not in SPLITS:
        raise ValueError(f"split must be one of {', '.join(SPLITS)}, not {split!r}")
    unknown = set(skills) - set(SKILLS)
    if unknown:
        raise ValueError(f"unknown skills {sorted(unknown)}: ComicsPAP's are {', '.join(SKILLS)}")
    if not root.is_dir():
        raise FileNotFoundError(f"no ComicsPAP folder at {root}: download it first (README, 'ComicsPAP')")
    found = SplitFiles(root, split)
    for skill in skills:
        paths = sorted((root / skill).glob(f"{split}-*.parquet")) + sorted((root / skill / split).glob("*.parquet"))
        if paths:
            found.files[skill] = paths
    if not found.files:
        raise FileNotFoundError(
            f"no {split} parquet files under {root}: expected <skill>/{split}-*.parquet for the skills "
            f"{', '.join(skills)} (the layout of the dataset's repository)"
        )
    return found


# ------------------------------------------------------------------------------------------------------ the schema


def _strip(kind: pa.DataType) -> pa.DataType:
    """A type with large variants made plain (large_string -> string, large_list -> list), for comparison."""
    if pa.types.is_large_string(kind):
        return pa.string()
    if pa.types.is_large_binary(kind):
        return pa.binary()
    if pa.types.is_large_list(kind) or pa.types.is_list(kind):
        return pa.list_(_strip(kind.value_type))
    if pa.types.is_struct(kind):
        return pa.struct([(kind.field(i).name, _strip(kind.field(i).type)) for i in range(kind.num_fields)])
    return kind


def check_schema(schema: pa.Schema, path: str | Path = "") -> None:
    """Raise ComicsPAPFormatError naming the first column that is missing or of another type than ComicsPAP's
    (large strings, binaries and lists are taken as their plain kinds; extra columns are allowed)."""
    where = f"{path}: " if path else ""
    for expected in SCHEMA:
        if expected.name not in schema.names:
            raise ComicsPAPFormatError(f"{where}no column {expected.name!r} (ComicsPAP has {', '.join(SCHEMA.names)})")
        got = schema.field(expected.name).type
        if _strip(got) != expected.type:
            raise ComicsPAPFormatError(
                f"{where}column {expected.name!r} is {got}, not {expected.type} as in ComicsPAP's files"
            )


def revision_of(root: str | Path, path: str | Path) -> str | None:
    """The hub commit a file was downloaded at, where the download left its record (``huggingface-cli download
    --local-dir`` writes ``.cache/huggingface/download/<file>.metadata``, the commit on its first line); None else."""
    root = Path(root)
    record = root / ".cache" / "huggingface" / "download" / (Path(path).relative_to(root).as_posix() + ".metadata")
    if not record.is_file():
        return None
    first = record.read_text(encoding="utf-8").splitlines()[:1]
    return first[0].strip() if first and re.fullmatch(r"[0-9a-f]{40}", first[0].strip()) else None


# ------------------------------------------------------------------------------------------------------- reading


def _image_bytes(item: Mapping[str, Any] | None) -> bytes | None:
    """The encoded bytes of one image struct (None where it has none)."""
    if item is None:
        return None
    data = item.get("bytes")
    return bytes(data) if data is not None else None


def read_group(path: str | Path, group: int, first_row: int = 0) -> list[Row]:
    """The rows of one row group (its schema checked first); ``first_row``: the group's first row in the file."""
    handle = pq.ParquetFile(path)
    check_schema(handle.schema_arrow, path)
    table = handle.read_row_group(group, columns=list(SCHEMA.names))
    rows = []
    for offset, record in enumerate(table.to_pylist()):
        rows.append(
            Row(
                sample_id=str(record["sample_id"]) if record["sample_id"] is not None else "",
                context=[_image_bytes(item) for item in record["context"] or []],
                options=[_image_bytes(item) for item in record["options"] or []],
                index=int(record["index"]) if record["index"] is not None else HIDDEN,
                solution_index=int(record["solution_index"]) if record["solution_index"] is not None else HIDDEN,
                split=str(record["split"] or ""),
                task_type=str(record["task_type"] or ""),
                caption=str(record["previous_panel_caption"] or ""),
                file=Path(path).name,
                position=first_row + offset,
            )
        )
    return rows


def group_starts(path: str | Path) -> list[int]:
    """The first row of each row group of a file."""
    meta = pq.ParquetFile(path).metadata
    starts, total = [], 0
    for i in range(meta.num_row_groups):
        starts.append(total)
        total += meta.row_group(i).num_rows
    return starts


def row_problem(row: Row, hidden_labels: bool) -> str | None:
    """Why a row cannot be a sample (None: it can): ``no_sample_id``, ``no_options``, ``index_out_of_range`` (not a
    place in the context, or -1 with a context), ``solution_index_out_of_range`` (not an option; -1 only where the
    labels are hidden) or ``missing_image`` (an image struct without bytes). Undecodable images and duplicated ids
    are found later (``encode``)."""
    if not row.sample_id:
        return "no_sample_id"
    if not row.options:
        return "no_options"
    if not (0 <= row.index <= len(row.context) or (row.index == HIDDEN and not row.context)):
        return "index_out_of_range"
    hidden = row.solution_index == HIDDEN and hidden_labels
    if not hidden and not 0 <= row.solution_index < len(row.options):
        return "solution_index_out_of_range"
    if any(data is None for data in (*row.context, *row.options)):
        return "missing_image"
    return None


# ------------------------------------------------------------------------------------------------------- writing


def image_struct(data: bytes, name: str = "") -> dict[str, Any]:
    """One image as the datasets library stores it in parquet."""
    return {"bytes": data, "path": name or None}


def write_rows(path: str | Path, rows: Sequence[Mapping[str, Any]], row_group_size: int = 16) -> Path:
    """Write rows (dicts of SCHEMA's columns, images as ``image_struct``) as a ComicsPAP parquet file, with the
    datasets library's feature record in its metadata; written to a temporary name and moved into place."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    meta = {b"huggingface": json.dumps({"info": {"features": HF_FEATURES}}).encode()}
    table = pa.Table.from_pylist(list(rows), schema=SCHEMA.with_metadata(meta))
    partial = path.with_name(path.name + ".partial")
    pq.write_table(table, partial, row_group_size=row_group_size)
    partial.replace(path)
    return path


def png_bytes(image) -> bytes:
    """A PIL image as PNG bytes (lossless: a round trip gives the same pixels)."""
    buffer = io.BytesIO()
    image.convert("RGB").save(buffer, format="PNG")
    return buffer.getvalue()
