"""A small ComicsPAP folder made from a run's own task sets, in ComicsPAP's exact schema, bad rows included: what the
tests, the benchmark and a user without the download run every ``comicspap`` command on.

Splits: ``train`` from the run's validation sets, ``val`` from its test sets, ``test`` the same test sets with the
labels hidden (``solution_index`` -1), as ComicsPAP's test split has them. ``copies`` repeats every good row under new
ids (the benchmark's 10x fixture). The ``val`` split of sequence filling gets one more file with one bad row of each
kind ``encode`` must count (``BAD_ROWS``), each made from a good row.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq

from comicnb.comicspap.export import export_sets
from comicnb.comicspap.format import HIDDEN, SKILLS, image_struct, write_rows

BAD_ROWS = (
    "undecodable_image",
    "index_out_of_range",
    "solution_index_out_of_range",
    "no_options",
    "missing_image",
    "duplicate_sample_id",
)
BAD_FILE = "val-bad-rows.parquet"
ROW_GROUP = 4  # rows per row group: small, so that even the fixture's files have several


def bad_rows(good: dict[str, Any]) -> list[dict[str, Any]]:
    """One row per kind of BAD_ROWS, each a copy of ``good`` broken in one way (the duplicate: unchanged)."""
    rows = []
    for reason in BAD_ROWS:
        row = copy.deepcopy(good)
        if reason != "duplicate_sample_id":
            row["sample_id"] = f"bad-{reason}"
        if reason == "undecodable_image":
            row["options"][0] = image_struct(b"these bytes are not an image")
        elif reason == "index_out_of_range":
            row["index"] = len(row["context"]) + 3
        elif reason == "solution_index_out_of_range":
            row["solution_index"] = len(row["options"])
        elif reason == "no_options":
            row["options"] = []
        elif reason == "missing_image":
            row["context"][0] = {"bytes": None, "path": "lost.png"}
        rows.append(row)
    return rows


def _rewrite(path: Path, copies: int, hide: bool = False, split: str | None = None) -> None:
    """A file's rows repeated ``copies`` times under new ids, labels hidden and split renamed where asked."""
    rows = pq.read_table(path).to_pylist()
    out = []
    for k in range(copies):
        for row in rows:
            row = dict(row, sample_id=row["sample_id"] if k == 0 else f"{row['sample_id']}-copy{k}")
            if hide:
                row["solution_index"] = HIDDEN
            if split:
                row["split"] = split
            out.append(row)
    write_rows(path, out, ROW_GROUP)


def build_fixture(run_dir: str | Path, out: str | Path, copies: int = 1) -> dict[str, Any]:
    """Write the fixture folder ``out`` from the run's fixed task sets (see the module); returns its rows per split
    and skill."""
    from comicnb.stage4.task_sets import read_sets
    from comicnb.stage4.view import open_run

    out = Path(out)
    view = open_run(run_dir)
    plan = {"train": "val", "val": "test", "test": "test"}
    for pap_split, our_split in plan.items():
        export_sets(read_sets(run_dir, view, split=our_split), view, out / ".parts" / pap_split, pap_split)
        for path in sorted((out / ".parts" / pap_split).glob("*/*.parquet")):
            target = out / path.parent.name / path.name
            target.parent.mkdir(parents=True, exist_ok=True)
            path.replace(target)
            _rewrite(target, copies, hide=pap_split == "test")
    first = out / "sequence_filling" / "val-00000-of-00001.parquet"
    good = pq.read_table(first).slice(0, 1).to_pylist()[0]
    write_rows(out / "sequence_filling" / BAD_FILE, bad_rows(good), ROW_GROUP)
    counts = {
        split: {
            s: sum(pq.ParquetFile(p).metadata.num_rows for p in (out / s).glob(f"{split}-*.parquet")) for s in SKILLS
        }
        for split in plan
    }
    for leftover in sorted((out / ".parts").rglob("*"), reverse=True):
        leftover.unlink() if leftover.is_file() else leftover.rmdir()
    (out / ".parts").rmdir()
    (out / "fixture.json").write_text(json.dumps(dict(run=str(run_dir), copies=copies, rows=counts), indent=1) + "\n")
    return counts
