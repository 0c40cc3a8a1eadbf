"""Read a comic corpus (page images, Stage 1 panel JSON, Stage 2 PSS labels) into a pages table and a problems table.

The format and every problem name and action follow docs/corpus.md. The reader never raises on bad page data:
each defect becomes one row of the problems table, and a panel is only left out with a row saying why.
"""

from __future__ import annotations

import json
import math
import re
import unicodedata
import warnings
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from PIL import Image

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png")
BBOX_FORMATS = ("xywh", "xyxy")
SPLITS = ("train", "val", "test")
_FILE_KINDS = {**{suffix: "image" for suffix in IMAGE_SUFFIXES}, ".json": "json"}
PROBLEM_COLUMNS = ("book_id", "page_name", "panel", "file", "problem", "action", "detail")
PAGE_COLUMNS = (
    "page_id", "book_id", "page_name", "part", "label", "image_path", "image_width", "image_height", "image_mode",
    "num_panels", "panel_index", "boxes", "texts", "descriptions", "text_boxes", "split",
)
# One row per panel from composition_features, in this order.
COMPOSITION_FEATURES = (
    "centre_x",       # box centre x / page width, in [0, 1]
    "centre_y",       # box centre y / page height, in [0, 1]
    "width",          # box width / page width, in (0, 1]
    "height",         # box height / page height, in (0, 1]
    "log_aspect",     # log(box width / box height) in pixels, any finite value
    "area",           # box area / page area, in (0, 1]
    "edge_distance",  # distance from the box to the nearest page edge / min(page width, page height), in [0, 0.5]
)


@dataclass
class Corpus:
    """The pages table (one row per narrative page or page part) and the problems table of one corpus."""

    pages: pd.DataFrame
    problems: pd.DataFrame
    data_root: Path
    options: dict = field(default_factory=dict)  # the load_corpus arguments, for provenance

    def summary(self) -> pd.DataFrame:
        """Books, pages and panels per split."""
        grouped = self.pages.groupby("split", sort=False)
        table = grouped.agg(books=("book_id", "nunique"), pages=("page_id", "size"), panels=("num_panels", "sum"))
        return table.reindex([s for s in SPLITS if s in table.index])

    def problem_summary(self) -> pd.DataFrame:
        """Number of problem rows per (problem, action)."""
        return self.problems.groupby(["problem", "action"]).size().rename("rows").reset_index()


@dataclass(frozen=True)
class _Options:
    """load_corpus settings that the per-page functions need."""

    narrative: frozenset[str]
    bbox_format: str
    max_panels: int
    unlabelled: str
    max_image_pixels: int
    decode_check: bool


@dataclass
class _PageLog:
    """Collects problem rows for one page."""

    book_id: str
    page_name: str
    rows: list[dict] = field(default_factory=list)

    def add(self, problem: str, action: str, detail: str, file: str | None = None, panel: int | None = None) -> None:
        """Record one problem row."""
        self.rows.append(dict(book_id=self.book_id, page_name=self.page_name, panel=panel, file=file,
                              problem=problem, action=action, detail=detail))


def load_corpus(
    data_root: str | Path,
    pss_labels: str | Path | Mapping | None = None,
    *,
    narrative_labels: Iterable[str] = ("narrative", "story"),
    bbox_format: str = "xywh",
    max_panels: int = 12,
    unlabelled: str = "skip",
    max_image_pixels: int = 89_478_485,
    split: Sequence[float] = (0.8, 0.1, 0.1),
    seed: int = 0,
    decode_check: bool = True,
) -> Corpus:
    """Read data_root's narrative pages into a Corpus; see docs/corpus.md for the layout and the problem classes.

    pss_labels is a path or an already-parsed mapping (default data_root/pss_labels.json). unlabelled is "skip"
    (pages without a label are skipped) or "narrative" (read as narrative, with a noted row). decode_check decodes
    each page once (JPEGs at 1/8 scale) to catch truncated or corrupt pixel data; without it only headers are read.
    Pages with more pixels than max_image_pixels are skipped; PIL itself refuses twice its MAX_IMAGE_PIXELS.
    """
    if bbox_format not in BBOX_FORMATS or unlabelled not in ("skip", "narrative") or max_panels < 1:
        raise ValueError(f"bad options: bbox_format={bbox_format!r} unlabelled={unlabelled!r} max_panels={max_panels}")
    root = Path(data_root)
    labels = read_labels(root / "pss_labels.json" if pss_labels is None else pss_labels)
    opts = _Options(frozenset(n.lower() for n in narrative_labels), bbox_format, max_panels, unlabelled,
                    max_image_pixels, decode_check)
    files, problems = _scan(root)
    rows: list[dict] = []
    for book_id, page_name in sorted(files.keys() | labels.keys(), key=_natural_key):
        log = _PageLog(book_id, page_name)
        rows += _read_labelled_page(root, files.get((book_id, page_name)), labels.get((book_id, page_name)), opts, log)
        problems += log.rows
    pages = pd.DataFrame(rows, columns=list(PAGE_COLUMNS))
    assignment = split_books(pages["book_id"], split, seed)
    pages["split"] = pages["book_id"].map(assignment)
    problem_table = pd.DataFrame(problems, columns=list(PROBLEM_COLUMNS)).astype({"panel": "Int64"})
    options = dict(narrative_labels=sorted(opts.narrative), bbox_format=bbox_format, max_panels=max_panels,
                   unlabelled=unlabelled, max_image_pixels=max_image_pixels, split=list(split), seed=seed,
                   decode_check=decode_check)
    return Corpus(pages, problem_table, root, options)


def _natural_key(page: tuple[str, str]) -> tuple[list, list]:
    """Sort key for (book_id, page_name) that puts page_2 before page_10."""
    return tuple([int(part) if part.isdigit() else part for part in re.split(r"(\d+)", name)] for name in page)


def read_labels(source: str | Path | Mapping) -> dict[tuple[str, str], str]:
    """Read PSS labels in the nested {book: {page: label}} or the flat CoSMo {"book/page": label} form."""
    data = source if isinstance(source, Mapping) else json.loads(Path(source).read_text(encoding="utf-8"))
    labels: dict[tuple[str, str], str] = {}
    for key, value in data.items():
        if isinstance(value, Mapping):
            entries = [(key, page, label) for page, label in value.items()]
        elif "/" in key:
            entries = [(*key.rsplit("/", 1), value)]
        else:
            raise ValueError(f"PSS label entry {key!r} is neither nested {{book: {{page: label}}}} nor 'book/page'")
        for book_id, page, label in entries:
            if not isinstance(label, str):
                raise ValueError(f"PSS label of {book_id}/{page} is {label!r}, not a string")
            labels[(book_id, _strip_image_suffix(page))] = label
    return labels


def _strip_image_suffix(name: str) -> str:
    """Page name without an image suffix, for label files that name pages by file name."""
    stem, dot, suffix = name.rpartition(".")
    return stem if dot and f".{suffix.lower()}" in IMAGE_SUFFIXES else name


def _scan(root: Path) -> tuple[dict[tuple[str, str], dict[str, Path]], list[dict]]:
    """Map (book_id, page_name) to its 'image' and 'json' files; book folders are root's non-hidden subfolders."""
    files: dict[tuple[str, str], dict[str, Path]] = {}
    problems: list[dict] = []
    for book in sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")):
        for path in sorted(p for p in book.iterdir() if p.is_file() and not p.name.startswith(".")):
            kind = _FILE_KINDS.get(path.suffix.lower())
            if kind is None:
                continue
            entry = files.setdefault((book.name, path.stem), {})
            if kind in entry:
                log = _PageLog(book.name, path.stem, problems)
                log.add(f"duplicate_{kind}", "noted", f"same stem as {entry[kind].name}, which is used",
                        _relative(path, root))
                continue
            entry[kind] = path
    return files, problems


def _relative(path: Path, root: Path) -> str:
    """Path relative to the data root, as a POSIX string."""
    return path.relative_to(root).as_posix()


def _read_labelled_page(root: Path, files: dict[str, Path] | None, label: str | None, opts: _Options,
                        log: _PageLog) -> list[dict]:
    """Apply the label rules to one (book, page) and read it if it is narrative."""
    if files is None:
        log.add("label_without_page", "noted", f"labelled {label!r} but no image or JSON on disk")
        return []
    if label is None:
        some_file = _relative(files.get("image") or files["json"], root)
        if opts.unlabelled == "skip":
            log.add("page_without_label", "skipped_page", "absent from the PSS labels", some_file)
            return []
        log.add("page_without_label", "noted", "absent from the PSS labels; read as narrative", some_file)
        label = ""
    elif label.strip().lower() not in opts.narrative:
        return []
    return _read_page(root, files, label, opts, log)


def _read_page(root: Path, files: dict[str, Path], label: str, opts: _Options, log: _PageLog) -> list[dict]:
    """Validate one narrative page; return its pages-table rows (several when split), none when skipped."""
    if "image" not in files:
        log.add("missing_image", "skipped_page", "JSON without its page image", _relative(files["json"], root))
        return []
    image_file = _relative(files["image"], root)
    if "json" not in files:
        log.add("missing_json", "skipped_page", "page image without its JSON", image_file)
        return []
    json_file = _relative(files["json"], root)
    panels = _panels_of(_read_json(files["json"], json_file, log), json_file, log)
    image = _inspect_image(files["image"], image_file, opts, log)
    if panels is None or image is None:
        return []
    width, height, mode = image
    kept = _repair_panels(panels, width, height, opts.bbox_format, json_file, log)
    if not kept:
        log.add("no_panels", "skipped_page", f"{len(panels)} panels listed, none usable", json_file)
        return []
    base = dict(book_id=log.book_id, page_name=log.page_name, label=label, image_path=image_file,
                image_width=width, image_height=height, image_mode=mode)
    return _page_parts(base, kept, opts.max_panels, json_file, log)


def _read_json(path: Path, file: str, log: _PageLog) -> Any:
    """Parse a page JSON, decoding non-UTF-8 bytes as cp1252 (latin-1 if that fails); None when unparseable."""
    try:
        raw = path.read_bytes()
        try:
            text = raw.decode("utf-8-sig")
        except UnicodeDecodeError as err:
            text, encoding = _decode_legacy(raw)
            log.add("text_encoding", "repaired", f"not UTF-8 ({err.reason} at byte {err.start}); read as {encoding}",
                    file)
        return json.loads(text)
    except (OSError, ValueError, RecursionError) as err:
        log.add("invalid_json", "skipped_page", f"{type(err).__name__}: {err}", file)
        return None


def _decode_legacy(raw: bytes) -> tuple[str, str]:
    """Decode bytes as cp1252, or latin-1 for the five bytes cp1252 leaves undefined."""
    try:
        return raw.decode("cp1252"), "cp1252"
    except UnicodeDecodeError:
        return raw.decode("latin-1"), "latin-1"


def _panels_of(doc: Any, file: str, log: _PageLog) -> list[dict] | None:
    """The panels list of a parsed Stage 1 document, or None (logged) when it has another shape."""
    if doc is None:
        return None
    reason = _shape_error(doc)
    if reason:
        log.add("bad_json_shape", "skipped_page", reason, file)
        return None
    if not doc["panels"]:
        log.add("no_panels", "skipped_page", "panels: []", file)
        return None
    return doc["panels"]


def _shape_error(doc: Any) -> str | None:
    """Why doc is not the Stage 1 shape, or None when it is."""
    if not isinstance(doc, dict) or not isinstance(doc.get("panels"), list):
        return "no top-level 'panels' list"
    for i, panel in enumerate(doc["panels"]):
        if not isinstance(panel, dict):
            return f"panel {i} is {type(panel).__name__}, not an object"
        bbox = panel.get("bbox")
        if not (isinstance(bbox, list) and len(bbox) == 4 and all(_is_finite_number(v) for v in bbox)):
            return f"panel {i} bbox {bbox!r} is not 4 finite numbers"
        text_boxes = panel.get("text_boxes") or []
        if not (_is_optional_str(panel.get("text")) and _is_optional_str(panel.get("description"))
                and isinstance(text_boxes, list) and all(isinstance(t, str) for t in text_boxes)):
            return f"panel {i} text, description or text_boxes is not text"
    return None


def _is_finite_number(value: Any) -> bool:
    """True for an int or float (not bool) that is finite; JSON allows NaN and Infinity."""
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _is_optional_str(value: Any) -> bool:
    """True for a string or None."""
    return value is None or isinstance(value, str)


def _inspect_image(path: Path, file: str, opts: _Options, log: _PageLog) -> tuple[int, int, str] | None:
    """(width, height, mode) of a usable page image, or None after logging why it is not usable."""
    try:
        with warnings.catch_warnings():
            # The size check below replaces PIL's warning; PIL still raises past twice its own limit.
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(path) as img:
                (width, height), mode = img.size, img.mode
                if width * height > opts.max_image_pixels:
                    log.add("huge_image", "skipped_page", f"{width}x{height} > {opts.max_image_pixels} pixels", file)
                    return None
                if opts.decode_check:
                    _decode_small(img)
    except Image.DecompressionBombError as err:
        log.add("huge_image", "skipped_page", str(err), file)
        return None
    except Exception as err:  # noqa: BLE001 - PIL's plugins raise many exception types on malformed files
        truncated = isinstance(err, OSError) and "truncated" in str(err).lower()
        detail = f"{type(err).__name__}: {err}".replace(str(path), file)
        log.add("truncated_image" if truncated else "corrupt_image", "skipped_page", detail, file)
        return None
    if mode != "RGB":
        log.add("image_mode", "converted", f"{mode} -> RGB", file)
    return width, height, mode


def _decode_small(img: Image.Image) -> None:
    """Decode the whole file; JPEGs at 1/8 scale, which still reads every byte but costs about a quarter."""
    img.draft(img.mode, (max(1, img.width // 8), max(1, img.height // 8)))
    img.load()


def _repair_panels(panels: list[dict], width: int, height: int, bbox_format: str, file: str,
                   log: _PageLog) -> list[dict]:
    """Kept panels as dicts with index, box (x1, y1, x2, y2), cleaned text, description and text_boxes."""
    kept = []
    for i, panel in enumerate(panels):
        box, problem, action, detail = repair_box(panel["bbox"], width, height, bbox_format)
        if problem:
            log.add(problem, action, detail, file, i)
        if box is None:
            continue
        kept.append(dict(index=i, box=box, **_clean_panel_text(panel, file, i, log)))
    return kept


def _clean_panel_text(panel: dict, file: str, index: int, log: _PageLog) -> dict:
    """Cleaned text, description and text_boxes; one text_unicode row when any changed beyond whitespace."""
    raw = [("text", panel.get("text") or ""), ("description", panel.get("description") or "")]
    raw += [(f"text_boxes[{j}]", t) for j, t in enumerate(panel.get("text_boxes") or [])]
    cleaned = {name: clean_text(text) for name, text in raw}
    changed = [f"{name} {text!r} -> {cleaned[name]!r}" for name, text in raw if cleaned[name] != " ".join(text.split())]
    if changed:
        log.add("text_unicode", "repaired", "; ".join(changed), file, index)
    return dict(text=cleaned.pop("text"), description=cleaned.pop("description"), text_boxes=list(cleaned.values()))


def repair_box(bbox: Sequence[float], width: float, height: float,
               bbox_format: str = "xywh") -> tuple[list[float] | None, str | None, str, str]:
    """Box as [x1, y1, x2, y2] clipped to the page (None when skipped), with its problem, action and detail."""
    x1, y1, a, b = (float(v) for v in bbox)
    x2, y2 = (x1 + a, y1 + b) if bbox_format == "xywh" else (a, b)
    given = f"{bbox_format} {list(bbox)}"
    if x2 == x1 or y2 == y1:
        return None, "bbox_zero_area", "skipped_panel", f"{given} has zero width or height"
    clipped = [max(x1, 0.0), max(y1, 0.0), min(x2, float(width)), min(y2, float(height))]
    has_area = clipped[2] > clipped[0] and clipped[3] > clipped[1]
    if min(x1, y1, x2 - x1, y2 - y1) < 0:
        action = "repaired" if has_area else "skipped_panel"
        return (clipped if has_area else None), "bbox_negative", action, f"{given}: negative size or coordinate"
    if not has_area:
        return None, "bbox_outside_page", "skipped_panel", f"{given} lies outside the {width}x{height} page"
    if clipped != [x1, y1, x2, y2]:
        return clipped, "bbox_out_of_bounds", "repaired", f"{given} clipped to the {width}x{height} page"
    return clipped, None, "", ""


def clean_text(text: str) -> str:
    """Drop control, zero-width and bidi-control characters, NFC-normalise, collapse whitespace."""
    # Cf holds the zero-width and bidi controls; lone surrogates (Cs, legal in JSON) cannot be written as UTF-8.
    kept = "".join(" " if ch.isspace() else ch for ch in text
                   if ch.isspace() or unicodedata.category(ch) not in ("Cc", "Cf", "Cs"))
    return " ".join(unicodedata.normalize("NFC", kept).split())


def _page_parts(base: dict, panels: list[dict], max_panels: int, file: str, log: _PageLog) -> list[dict]:
    """Pages-table rows for one page, split into consecutive parts of at most max_panels panels."""
    parts = [panels] if len(panels) <= max_panels else [
        list(chunk) for chunk in np.array_split(np.array(panels, dtype=object), math.ceil(len(panels) / max_panels))]
    if len(parts) > 1:
        sizes = ", ".join(str(len(p)) for p in parts)
        log.add("too_many_panels", "split", f"{len(panels)} panels > {max_panels}: parts of {sizes}", file)
    page_id = f"{base['book_id']}/{base['page_name']}"
    return [dict(base, page_id=page_id if len(parts) == 1 else f"{page_id}#{k}", part=k, num_panels=len(part),
                 panel_index=[p["index"] for p in part], boxes=[p["box"] for p in part],
                 texts=[p["text"] for p in part], descriptions=[p["description"] for p in part],
                 text_boxes=[p["text_boxes"] for p in part])
            for k, part in enumerate(parts)]


def split_books(book_ids: Iterable[str], fractions: Sequence[float] = (0.8, 0.1, 0.1), seed: int = 0) -> dict[str, str]:
    """Assign each book to train/val/test, shuffled by seed; see split_counts for the number in each."""
    books = sorted(set(book_ids))
    order = np.random.default_rng(seed).permutation(len(books))
    names = np.repeat(SPLITS, split_counts(len(books), fractions))
    return {books[i]: str(name) for i, name in zip(order, names)}


def split_counts(n_books: int, fractions: Sequence[float] = (0.8, 0.1, 0.1)) -> list[int]:
    """Books per split: proportional, at least one in each split with a positive fraction when there are >= 3 books.

    With fewer books every split cannot be filled: one book goes to train, a second to val, and test stays empty.
    """
    if n_books < 3:
        return [min(n_books, 1), max(n_books - 1, 0), 0]
    total = float(sum(fractions))
    counts = [max(1, round(n_books * f / total)) if f > 0 else 0 for f in fractions]
    counts[0] = n_books - counts[1] - counts[2]
    while counts[0] < 1:
        larger = 1 if counts[1] >= counts[2] else 2
        counts[larger] -= 1
        counts[0] += 1
    return counts


def composition_features(boxes: Sequence[Sequence[float]], width: float, height: float) -> np.ndarray:
    """(N, 7) float32 layout features of each [x1, y1, x2, y2] box on its page, named in COMPOSITION_FEATURES.

    Each row depends only on its own box and the page size, never on the box's position in the list.
    """
    xyxy = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)  # (panels, 4)
    x1, y1, x2, y2 = xyxy.T
    w, h = x2 - x1, y2 - y1
    edge = np.minimum.reduce([x1, y1, width - x2, height - y2])
    feats = [(x1 + x2) / 2 / width, (y1 + y2) / 2 / height, w / width, h / height, np.log(w / h),
             w * h / (width * height), np.clip(edge, 0, None) / min(width, height)]
    return np.stack(feats, axis=1).astype(np.float32)  # (panels, 7)


def to_rgb(img: Image.Image) -> Image.Image:
    """img as 8-bit RGB: alpha composited on white, 16-bit grey scaled (not clipped) to 0..255, CMYK/L/P converted."""
    if img.mode == "RGB":
        return img
    if img.mode.startswith("I;16") or img.mode == "I":  # 16-bit PNGs open as I;16 (older Pillow: I)
        wide = np.clip(np.asarray(img, dtype=np.int64), 0, 65535)
        return Image.fromarray(((wide * 255 + 32767) // 65535).astype(np.uint8), "L").convert("RGB")
    if img.mode in ("RGBA", "LA", "PA", "RGBa", "La") or "transparency" in img.info:
        white = Image.new("RGBA", img.size, (255, 255, 255, 255))
        return Image.alpha_composite(white, img.convert("RGBA")).convert("RGB")
    return img.convert("RGB")


def crop_panels(image: Image.Image, boxes: Sequence[Sequence[float]], size: int | tuple[int, int] | None = None, *,
                min_side: int | None = None) -> list[Image.Image]:
    """Convert the page to RGB once and crop each [x1, y1, x2, y2] box; resized to size (w, h or square) if given.

    With min_side, a JPEG not yet decoded is decoded at a reduced DCT scale (1/2, 1/4 or 1/8) as long as every crop
    keeps at least min_side pixels on its short side; boxes are scaled to match.
    """
    sx, sy = _draft_scale(image, boxes, min_side) if min_side else (1.0, 1.0)
    page = to_rgb(image)
    crops = [page.crop(_pixel_box([x1 * sx, y1 * sy, x2 * sx, y2 * sy], page.width, page.height))
             for x1, y1, x2, y2 in boxes]
    if size is None:
        return crops
    target = (size, size) if isinstance(size, int) else tuple(size)
    return [crop.resize(target, Image.Resampling.BILINEAR) for crop in crops]


def _draft_scale(image: Image.Image, boxes: Sequence[Sequence[float]], min_side: int) -> tuple[float, float]:
    """Ask the decoder for the smallest scale keeping every box's short side >= min_side; (x, y) scale obtained."""
    factor = min(min(x2 - x1, y2 - y1) for x1, y1, x2, y2 in boxes) / min_side if len(boxes) else 1.0
    width, height = image.size
    if factor >= 2:  # PIL picks a scale whose output is at least the requested size; non-JPEGs ignore draft
        image.draft(image.mode, (math.ceil(width / factor), math.ceil(height / factor)))
    return image.width / width, image.height / height


def _pixel_box(box: Sequence[float], width: int, height: int) -> tuple[int, int, int, int]:
    """Integer crop box covering the float box, inside the page and at least one pixel each way."""
    x1 = min(max(math.floor(box[0]), 0), width - 1)
    y1 = min(max(math.floor(box[1]), 0), height - 1)
    return x1, y1, max(min(math.ceil(box[2]), width), x1 + 1), max(min(math.ceil(box[3]), height), y1 + 1)


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
        fits = ((x2 > x1) & (y2 > y1) & (x1 >= -slack_w) & (y1 >= -slack_h)
                & (x2 <= sizes[:, 0] + slack_w) & (y2 <= sizes[:, 1] + slack_h))
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


def save_pages(pages: pd.DataFrame, path: str | Path) -> Path:
    """Write the pages table as JSON lines (one page a line; list columns stay lists); returns the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", encoding="utf-8") as out:
        for record in pages.to_dict("records"):
            out.write(json.dumps(record, ensure_ascii=False, default=_json_scalar) + "\n")
    return path


def _json_scalar(value: Any) -> Any:
    """numpy scalars and arrays as plain Python values for json.dumps."""
    if isinstance(value, (np.generic, np.ndarray)):
        return value.tolist()
    raise TypeError(f"{type(value).__name__} is not JSON serialisable")


def load_pages(path: str | Path) -> pd.DataFrame:
    """Read a pages table written by save_pages."""
    with Path(path).open(encoding="utf-8") as lines:
        records = [json.loads(line) for line in lines if line.strip()]
    return pd.DataFrame(records, columns=list(records[0]) if records else list(PAGE_COLUMNS))



def composition_table(pages: pd.DataFrame) -> pd.DataFrame:
    """The composition features of every panel of the pages table, one row a panel, columns COMPOSITION_FEATURES."""
    blocks = [composition_features(p.boxes, p.image_width, p.image_height) for p in pages.itertuples(index=False)]
    values = np.concatenate(blocks) if blocks else np.zeros((0, len(COMPOSITION_FEATURES)), np.float32)
    return pd.DataFrame(values, columns=list(COMPOSITION_FEATURES))


def save_corpus(corpus: Corpus, run_dir: str | Path) -> list[Path]:
    """Write the artefacts notebook 02 reads: pages.jsonl, problems.csv and corpus.json (data_root and options)."""
    out = Path(run_dir)
    out.mkdir(parents=True, exist_ok=True)
    corpus.problems.to_csv(out / "problems.csv", index=False)
    meta = dict(data_root=str(corpus.data_root.resolve()), pages=len(corpus.pages), options=corpus.options)
    (out / "corpus.json").write_text(json.dumps(meta, indent=2, default=list) + "\n", encoding="utf-8")
    return [save_pages(corpus.pages, out / "pages.jsonl"), out / "problems.csv", out / "corpus.json"]


def load_run_pages(run_dir: str | Path) -> tuple[pd.DataFrame, Path]:
    """The pages table a run's notebook 01 wrote, and the data_root its image paths are relative to."""
    run_dir = Path(run_dir)
    if not (run_dir / "pages.jsonl").is_file():
        raise FileNotFoundError(f"{run_dir / 'pages.jsonl'} is missing: run notebook 01 with run_dir={str(run_dir)!r}")
    meta = json.loads((run_dir / "corpus.json").read_text(encoding="utf-8"))
    return load_pages(run_dir / "pages.jsonl"), Path(meta["data_root"])
