"""``comicnb detect``: page images (a folder, or CBZ/ZIP archives) to a data root that notebook 01 reads unchanged.

For each page: its image is copied into ``DATA_ROOT/<book>/<page><suffix>`` and its Stage 1 JSON written beside it
(panels in reading order, xywh boxes in page pixels, each panel's text boxes with their boxes and its text joined in
reading order). ``pss_labels.json`` labels every page narrative, or copies ``--labels``. ``detection.json`` holds the
settings, every book's direction and every problem row (the reader adds them to its problems table).

A killed run continues where it stopped: a page is done when its record under ``DATA_ROOT/.detect/`` exists with
the same settings, and every file is written whole (a temporary name, then renamed). Rerun with the same command and
the files end the same as an uninterrupted run's. Timing (pages per second) goes to ``.detect/timing.json`` only, so
that two runs give the same ``detection.json``.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import time
import warnings
from collections.abc import Mapping
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image

from comicnb.corpus.crops import to_rgb
from comicnb.corpus.reader import image_problem
from comicnb.detect.order import DIRECTIONS, reading_order
from comicnb.detect.panels import PanelSettings, detect_panels
from comicnb.detect.sources import PageSource, _row, list_pages
from comicnb.detect.text import OCR_ENGINES

DETECTION = "detection.json"
RECORDS = ".detect"
VERSION = 1


@dataclass(frozen=True)
class DetectSettings:
    """Everything that decides a page's output; a page done under other settings is done again."""

    ocr: str = "rapidocr"
    panels: PanelSettings = field(default_factory=PanelSettings)
    min_confidence: float = 0.5
    max_image_pixels: int = 89_478_485
    odd_size: float = 0.2  # a page whose width or height differs from its book's median by more is noted

    def key(self) -> str:
        blob = json.dumps({"version": VERSION, **asdict(self)}, sort_keys=True)
        return hashlib.sha256(blob.encode()).hexdigest()[:16]


def _atomic_write(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    tmp.write_bytes(data)
    os.replace(tmp, path)


def _json_bytes(doc) -> bytes:
    return (json.dumps(doc, indent=1, ensure_ascii=False, sort_keys=False) + "\n").encode("utf-8")


def decode(data: bytes, file: str, max_pixels: int) -> tuple[np.ndarray | None, dict | None]:
    """The page as an RGB array, or None and the problems row saying why it cannot be read."""
    buffer = io.BytesIO(data)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(buffer) as img:
                if img.width * img.height > max_pixels:
                    detail = f"{img.width}x{img.height} > {max_pixels} pixels"
                    return None, _row("", "", file, "huge_image", "skipped_page", detail)
                return np.asarray(to_rgb(img)), None
    except Image.DecompressionBombError as err:
        return None, _row("", "", file, "huge_image", "skipped_page", str(err))
    except Exception as err:  # noqa: BLE001 - PIL's plugins raise many exception types on malformed files
        return None, _row("", "", file, *image_problem(err, file, str(buffer)))


_OCR = None  # one engine per process


def _ocr(settings: DetectSettings, threads: int):
    global _OCR
    if _OCR is None:
        from comicnb.detect.text import Ocr

        _OCR = Ocr(threads=threads, min_confidence=settings.min_confidence)
    return _OCR


def detect_page(rgb: np.ndarray, direction: str, settings: DetectSettings, threads: int = 0) -> tuple[dict, list]:
    """The Stage 1 JSON of one page image and its problem rows (book and page left blank for the caller)."""
    from comicnb.detect.text import assign_text, group_lines

    h, w = rgb.shape[:2]
    boxes = detect_panels(rgb, settings.panels)
    rows = []
    if not boxes:
        boxes = [(0, 0, w, h)]
        rows.append(_row("", "", "", "no_panels_found", "full_page_panel", "no panel found: the page is one panel"))
    boxes = [boxes[i] for i in reading_order(boxes, direction)]
    held: list[list] = [[] for _ in boxes]
    if settings.ocr == "rapidocr":
        lines = _ocr(settings, threads).lines(rgb)
        held, outside = assign_text(boxes, group_lines(lines), direction)
        for tb in outside:
            rows.append(
                _row("", "", "", "text_outside_panels", "noted", f"{tb.text!r} at {[round(v) for v in tb.box]}")
            )
    panels = []
    for (x1, y1, x2, y2), texts in zip(boxes, held):
        panels.append(
            {
                "bbox": [int(x1), int(y1), int(x2 - x1), int(y2 - y1)],
                "text": " ".join(t.text for t in texts),
                "text_boxes": [t.text for t in texts],
                "text_box_bboxes": [_xywh(t.box) for t in texts],
            }
        )
    return {"image_width": w, "image_height": h, "panels": panels}, rows


def _xywh(box) -> list[int]:
    x1, y1, x2, y2 = (int(round(v)) for v in box)
    return [x1, y1, max(1, x2 - x1), max(1, y2 - y1)]


def _work(job: tuple[PageSource, str, DetectSettings, str, int]) -> dict:
    """Detect one page and write its files; returns its record (also written, last)."""
    page, direction, settings, out, threads = job
    out = Path(out)
    record = {"key": settings.key(), "book_id": page.book_id, "page_name": page.page_name, "file": page.file}
    try:
        data = page.read()
    except Exception as err:  # noqa: BLE001 - a member that cannot be read is a row, not a crash
        problem = _row(page.book_id, page.page_name, page.file, "unreadable_file", "skipped_page", str(err))
        record.update(written=False, problems=[problem])
        return _finish(out, page, record)
    rgb, problem = decode(data, page.file, settings.max_image_pixels)
    if rgb is None:
        problem.update(book_id=page.book_id, page_name=page.page_name)
        record.update(written=False, problems=[problem])
        return _finish(out, page, record)
    doc, rows = detect_page(rgb, direction, settings, threads)
    for row in rows:
        row.update(book_id=page.book_id, page_name=page.page_name, file=page.file)
    image = out / page.book_id / f"{page.page_name}{page.suffix.lower()}"
    _atomic_write(image, data)
    _atomic_write(image.with_suffix(".json"), _json_bytes(doc))
    record.update(
        written=True, size=[doc["image_width"], doc["image_height"]], panels=len(doc["panels"]), problems=rows
    )
    return _finish(out, page, record)


def _record_path(out: Path, page: PageSource) -> Path:
    return out / RECORDS / "pages" / page.book_id / f"{page.page_name}.json"


def _finish(out: Path, page: PageSource, record: dict) -> dict:
    _atomic_write(_record_path(out, page), _json_bytes(record))
    return record


def _done(out: Path, page: PageSource, key: str) -> dict | None:
    path = _record_path(out, page)
    try:
        record = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return record if record.get("key") == key and record.get("file") == page.file else None


def read_directions(value: str | Path | Mapping | None) -> dict[str, str]:
    """Per-book directions from a JSON file or mapping {book_id: "ltr" | "rtl"}, or from a synthetic corpus's
    ground_truth.json (its books' ``direction``); books not named take the run's ``direction``."""
    if value is None or value == "":
        return {}
    data = value if isinstance(value, Mapping) else json.loads(Path(value).read_text(encoding="utf-8"))
    if isinstance(data.get("books"), Mapping):  # the generator's sidecar
        data = {book: entry.get("direction", "ltr") for book, entry in data["books"].items()}
    bad = {book: d for book, d in data.items() if d not in DIRECTIONS}
    if bad:
        raise ValueError(f"directions must be one of {DIRECTIONS}; got {bad}")
    return dict(data)


def detect(
    source: str | Path,
    out: str | Path,
    *,
    direction: str = "ltr",
    directions: str | Path | Mapping | None = None,
    labels: str | Path | Mapping | None = None,
    settings: DetectSettings = DetectSettings(),
    workers: int = 1,
    progress: bool = True,
) -> dict:
    """Detect every page of ``source`` into the data root ``out``; returns the manifest written as detection.json."""
    from tqdm.auto import tqdm

    from comicnb.corpus.reader import read_labels

    if direction not in DIRECTIONS:
        raise ValueError(f"direction {direction!r} is not one of {DIRECTIONS}")
    if settings.ocr not in OCR_ENGINES:
        raise ValueError(f"ocr {settings.ocr!r} is not one of {OCR_ENGINES}")
    out = Path(out)
    pages, problems = list_pages(source)
    per_book = read_directions(directions)
    key = settings.key()
    records: dict[tuple[str, str], dict] = {}
    todo = []
    for page in pages:
        done = _done(out, page, key)
        if done is None:
            todo.append(page)
        else:
            records[(page.book_id, page.page_name)] = done
    threads = 1 if workers > 1 else 0
    jobs = [(p, per_book.get(p.book_id, direction), settings, str(out), threads) for p in todo]
    started = time.perf_counter()
    bar = tqdm(total=len(pages), initial=len(pages) - len(todo), unit="page", desc="detect", disable=not progress)
    if workers > 1 and len(jobs) > 1:
        with ProcessPoolExecutor(max_workers=workers) as pool:
            for record in pool.map(_work, jobs, chunksize=1):
                records[(record["book_id"], record["page_name"])] = record
                bar.update()
    else:
        for job in jobs:
            record = _work(job)
            records[(record["book_id"], record["page_name"])] = record
            bar.update()
    bar.close()
    seconds = time.perf_counter() - started
    ordered = [records[(p.book_id, p.page_name)] for p in pages]
    for record in ordered:
        problems += record["problems"]
    problems += _odd_sizes(ordered, settings.odd_size)
    written = [r for r in ordered if r["written"]]
    given = read_labels(labels) if labels is not None else None
    pss: dict[str, dict[str, str]] = {}
    for r in written:
        label = "narrative" if given is None else given.get((r["book_id"], r["page_name"]))
        if label is not None:
            pss.setdefault(r["book_id"], {})[r["page_name"]] = label
    _atomic_write(out / "pss_labels.json", _json_bytes(pss))
    manifest = {
        "version": VERSION,
        "settings": {**asdict(settings), "key": key},
        "labels": "every page narrative" if labels is None else "given",
        "books": {book: per_book.get(book, direction) for book in dict.fromkeys(p.book_id for p in pages)},
        "pages": len(pages),
        "pages_written": len(written),
        "panels": sum(r["panels"] for r in written),
        "problems": problems,
    }
    _atomic_write(out / DETECTION, _json_bytes(manifest))
    timing = {"pages_detected": len(todo), "seconds": round(seconds, 3), "workers": workers}
    timing["pages_per_second"] = round(len(todo) / seconds, 3) if todo and seconds > 0 else None
    _atomic_write(out / RECORDS / "timing.json", _json_bytes(timing))
    return manifest


def _odd_sizes(records: list[dict], tolerance: float) -> list[dict]:
    """A noted row for each page whose size differs from its book's median by more than ``tolerance``."""
    rows = []
    books: dict[str, list[dict]] = {}
    for r in records:
        if r["written"]:
            books.setdefault(r["book_id"], []).append(r)
    for book, got in books.items():
        median = np.median([r["size"] for r in got], axis=0)
        for r in got:
            w, h = r["size"]
            if abs(w / median[0] - 1) > tolerance or abs(h / median[1] - 1) > tolerance:
                detail = f"{w}x{h}, the book's pages are {median[0]:.0f}x{median[1]:.0f}; kept"
                rows.append(_row(book, r["page_name"], r["file"], "page_size", "noted", detail))
    return rows
