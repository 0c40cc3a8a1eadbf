"""Checks of a corpus as a whole: which bbox convention its boxes fit; whether every injected defect was reported."""

from __future__ import annotations

import json
import math
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image

from comicnb.corpus.boxes import BBOX_FORMATS
from comicnb.corpus.reader import _PageLog, _read_json, _scan, _shape_error
from comicnb.corpus.tables import corpus_record, load_run_pages


def bbox_fit(data_root: str | Path, *, tolerance: float = 0.01) -> pd.DataFrame:
    """Under each bbox reading (xywh, xyxy), the fraction of raw boxes with positive size inside the page.

    A box may overhang the page by tolerance x the page size. Pages whose JSON or image cannot be read are left out;
    the boxes column says how many boxes were measured.
    """
    boxes, sizes = _raw_boxes(Path(data_root))
    rows = []
    for fmt in BBOX_FORMATS:
        x1, y1, a, b = boxes.T
        x2, y2 = (x1 + a, y1 + b) if fmt == "xywh" else (a, b)
        slack_w, slack_h = sizes[:, 0] * tolerance, sizes[:, 1] * tolerance
        fits = (
            (x2 > x1)
            & (y2 > y1)
            & (x1 >= -slack_w)
            & (y1 >= -slack_h)
            & (x2 <= sizes[:, 0] + slack_w)
            & (y2 <= sizes[:, 1] + slack_h)
        )
        rows.append(dict(bbox_format=fmt, boxes=len(boxes), fit=float(fits.mean()) if len(boxes) else math.nan))
    return pd.DataFrame(rows).set_index("bbox_format")


def _raw_boxes(root: Path) -> tuple[np.ndarray, np.ndarray]:
    """(boxes (M, 4), page sizes (M, 2)) of every well-formed page JSON under root, sized by the page image."""
    boxes, sizes = [], []
    files, _ = _scan(root)
    for (book_id, page_name), entry in files.items():
        log = _PageLog(book_id, page_name)
        doc = _read_json(entry["json"], "", log) if "json" in entry else None
        size = _image_size(entry.get("image"))
        if doc is None or _shape_error(doc) or size is None:
            continue
        boxes += [p["bbox"] for p in doc["panels"]]
        sizes += [size] * len(doc["panels"])
    return np.asarray(boxes, dtype=np.float64).reshape(-1, 4), np.asarray(sizes, dtype=np.float64).reshape(-1, 2)


def _image_size(path: Path | None) -> tuple[int, int] | None:
    """(width, height) from the image header, None when there is no readable header."""
    if path is None:
        return None
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(path) as img:
                return img.size
    except Exception:  # noqa: BLE001 - any unreadable header just leaves the page out of the estimate
        return None


class BboxFormatError(ValueError):
    """The chosen bbox convention fits the corpus's boxes clearly worse than the other one."""


def check_bbox_format(data_root: str | Path, bbox_format: str, *, margin: float = 0.05) -> pd.DataFrame:
    """bbox_fit of data_root; raises BboxFormatError when bbox_format fits more than margin worse than the best."""
    fit = bbox_fit(data_root)
    best = fit.fit.idxmax() if fit.fit.notna().any() else bbox_format
    if fit.fit[bbox_format] < fit.fit[best] - margin:
        raise BboxFormatError(
            f"bbox_format={bbox_format!r} fits {fit.fit[bbox_format]:.0%} of the boxes in "
            f"{data_root}, {best!r} fits {fit.fit[best]:.0%}: set bbox_format={best!r} (notebook 01 "
            f"parameter, or the profile's 01_data_inspection.yaml)"
        )
    return fit


def missed_injected_problems(data_root: str | Path, problems: pd.DataFrame) -> set[str]:
    """Defect classes a synthetic corpus's ground truth says were injected but the problems table does not report."""
    truth = Path(data_root) / "ground_truth.json"
    injected = json.loads(truth.read_text(encoding="utf-8")).get("dirty", []) if truth.is_file() else []
    return {d["problem"] for d in injected} - set(problems.problem)


def checked_run_pages(run_dir: str | Path) -> tuple[pd.DataFrame, Path]:
    """A run's pages table and data_root (``load_run_pages``), after the bbox-convention check notebook 01 makes,
    so training and embedding refuse boxes read the wrong way round just as the notebook does."""
    pages, data_root = load_run_pages(run_dir)
    options = corpus_record(run_dir).get("options", {})
    if data_root.is_dir():
        check_bbox_format(data_root, options.get("bbox_format", "xywh"))
    return pages, data_root
