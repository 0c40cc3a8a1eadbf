"""Read a comic corpus (page images, Stage 1 panel JSON, Stage 2 PSS labels) into a pages table and a problems table.

The format and every problem name and action follow docs/corpus.md. The reader never raises on bad page data:
each defect becomes one row of the problems table, and a panel is only left out with a row saying why.
"""

from __future__ import annotations

import json
import math
import os
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

from comicnb.corpus.boxes import BBOX_FORMATS, repair_box
from comicnb.corpus.splits import SPLITS, split_books

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png")
_FILE_KINDS = {**{suffix: "image" for suffix in IMAGE_SUFFIXES}, ".json": "json"}
# A page's text-free twin (same drawing, balloons and caption boxes empty) is <page stem>.textfree.<image suffix>
# beside the page image: never a page of its own (docs/corpus.md, "Text-free pages").
TEXT_FREE = "textfree"
# Written by `comicnb detect` at the top of the data root it makes: its settings and the problems it met (a page it
# could not read, a page where it found no panel); the reader adds those rows to its own problems table.
DETECTION = "detection.json"
PROBLEM_COLUMNS = ("book_id", "page_name", "panel", "file", "problem", "action", "detail")
PAGE_COLUMNS = (
    "page_id",
    "book_id",
    "page_name",
    "part",
    "label",
    "image_path",
    "image_width",
    "image_height",
    "image_mode",
    "text_free_path",
    "num_panels",
    "panel_index",
    "boxes",
    "texts",
    "descriptions",
    "text_boxes",
    "text_box_boxes",
    "split",
)


@dataclass
class Corpus:
    """The pages table (one row per narrative page or page part) and the problems table of one corpus."""

    pages: pd.DataFrame
    problems: pd.DataFrame
    data_root: Path
    options: dict = field(default_factory=dict)  # the load_corpus arguments, for provenance
    labels: dict = field(default_factory=dict)  # the PSS labels read, {(book_id, page_name): label}

    def summary(self) -> pd.DataFrame:
        """Books, pages and panels per split."""
        grouped = self.pages.groupby("split", sort=False)
        table = grouped.agg(books=("book_id", "nunique"), pages=("page_id", "size"), panels=("num_panels", "sum"))
        return table.reindex([s for s in SPLITS if s in table.index])

    def label_report(self) -> pd.DataFrame:
        """Every PSS label in the labels file: pages carrying it and whether they were kept as narrative."""
        return label_report(self.labels, self.options.get("narrative_labels", ()))

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
        self.rows.append(
            dict(
                book_id=self.book_id,
                page_name=self.page_name,
                panel=panel,
                file=file,
                problem=problem,
                action=action,
                detail=detail,
            )
        )


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
    labels_source = root / "pss_labels.json" if pss_labels is None else pss_labels
    labels = read_labels(labels_source)
    opts = _Options(
        frozenset(n.strip().lower() for n in narrative_labels),
        bbox_format,
        max_panels,
        unlabelled,
        max_image_pixels,
        decode_check,
    )
    files, problems = _scan(root, None if isinstance(labels_source, Mapping) else Path(labels_source))
    problems = detection_problems(root) + problems
    rows: list[dict] = []
    for book_id, page_name in sorted(files.keys() | labels.keys(), key=_natural_key):
        log = _PageLog(book_id, page_name)
        rows += _read_labelled_page(root, files.get((book_id, page_name)), labels.get((book_id, page_name)), opts, log)
        problems += log.rows
    pages = pd.DataFrame(rows, columns=list(PAGE_COLUMNS))
    assignment = split_books(pages["book_id"], split, seed)
    pages["split"] = pages["book_id"].map(assignment)
    problem_table = pd.DataFrame(problems, columns=list(PROBLEM_COLUMNS)).astype({"panel": "Int64"})
    options = dict(
        narrative_labels=sorted(opts.narrative),
        bbox_format=bbox_format,
        max_panels=max_panels,
        unlabelled=unlabelled,
        max_image_pixels=max_image_pixels,
        split=list(split),
        seed=seed,
        decode_check=decode_check,
    )
    return Corpus(pages, problem_table, root, options, labels)


def detection_problems(root: Path) -> list[dict]:
    """The problem rows `comicnb detect` recorded in root/detection.json (none when root was not detected)."""
    path = Path(root) / DETECTION
    if not path.is_file():
        return []
    rows = json.loads(path.read_text(encoding="utf-8")).get("problems", [])
    return [{column: row.get(column) for column in PROBLEM_COLUMNS} for row in rows]


def _natural_key(page: tuple[str, ...]) -> tuple:
    """Sort key for (book_id, page_name): numbers by value, case and separators ignored (page_3 < page-5 < Page 10).

    Each name is read as its words and numbers; spaces, '_', '-', '.' and other punctuation only separate them. The
    names themselves break ties ('page_3' and 'Page-3'), so the order is total.
    """
    return tuple(_name_key(name) for name in page), page


def _name_key(name: str) -> list[tuple[int, int, str]]:
    """Natural-sort tokens of one name: a number as (0, value, ''), a word as (1, 0, lower-cased word)."""
    return [(0, int(t), "") if t.isdigit() else (1, 0, t) for t in re.findall(r"\d+|[^\W\d_]+", name.lower())]


def label_report(labels: Mapping[tuple[str, str], str], narrative_labels: Iterable[str]) -> pd.DataFrame:
    """One row per distinct PSS label: the pages carrying it and whether those pages are kept (read as narrative).

    Labels are matched as load_corpus matches them (case and surrounding spaces ignored); kept labels come first.
    """
    narrative = {n.strip().lower() for n in narrative_labels}
    counts = pd.Series(list(labels.values()), dtype=object).value_counts()
    table = pd.DataFrame({"pss label": counts.index, "pages": counts.to_numpy()})
    table["kept"] = [str(label).strip().lower() in narrative for label in table["pss label"]]
    return table.sort_values(["kept", "pages", "pss label"], ascending=[False, False, True], ignore_index=True)


def read_labels(source: str | Path | Mapping) -> dict[tuple[str, str], str]:
    """Read PSS labels in the nested {book: {page: label}} or the flat CoSMo {"book/page": label} form (or, from a
    mapping already read, {(book, page): label})."""
    data = source if isinstance(source, Mapping) else json.loads(Path(source).read_text(encoding="utf-8"))
    labels: dict[tuple[str, str], str] = {}
    for key, value in data.items():
        if isinstance(value, Mapping):
            entries = [(key, page, label) for page, label in value.items()]
        elif isinstance(key, tuple) and len(key) == 2:
            entries = [(*key, value)]
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


def text_free_name(image_name: str) -> str:
    """The file name of a page image's text-free twin: page_003.png -> page_003.textfree.png."""
    stem, dot, suffix = image_name.rpartition(".")
    return f"{stem}.{TEXT_FREE}.{suffix}" if dot else f"{image_name}.{TEXT_FREE}"


def _twin_of(path: Path) -> str | None:
    """The page stem whose text-free twin this image file is (the name's .textfree in any case), else None."""
    stem, dot, marker = path.stem.rpartition(".")
    return stem if dot and stem and marker.lower() == TEXT_FREE else None


def _scan(root: Path, labels_file: Path | None = None) -> tuple[dict[tuple[str, str], dict[str, Path]], list[dict]]:
    """Map (book_id, page_name) to its 'image', 'json' and 'text_free' (twin) files, and an unused_file row for
    every other file.

    A book is any non-hidden folder under root that holds files, at any depth; its id is its path relative to root
    ('series/book_a'). Hidden files and folders (name starting with '.') are not looked at. At the top level,
    pss_labels.json, ground_truth.json and labels_file are the corpus's own files; anything else there is unused.
    """
    files: dict[tuple[str, str], dict[str, Path]] = {}
    problems: list[dict] = []
    own = {root / "pss_labels.json", root / "ground_truth.json", root / DETECTION}
    if labels_file is not None:
        own.add(Path(labels_file))
    own_names = {p.name for p in own}
    own = {p.resolve() for p in own}
    for folder, subfolders, names in os.walk(root):
        subfolders[:] = sorted(d for d in subfolders if not d.startswith("."))
        here = Path(folder)
        book_id = _relative(here, root)
        for name in sorted(n for n in names if not n.startswith(".")):
            path = here / name
            if name in own_names and path.resolve() in own:
                continue
            kind = _FILE_KINDS.get(path.suffix.lower())
            if kind is None or book_id == ".":
                if kind is None:
                    reason = f"suffix {path.suffix or '(none)'!r} is neither a page image ({', '.join(IMAGE_SUFFIXES)})"
                    reason += " nor a page JSON"
                else:
                    reason = "page file at the top of data_root, not in a book folder"
                log = _PageLog("" if book_id == "." else book_id, path.stem, problems)
                log.add("unused_file", "noted", reason, _relative(path, root))
                continue
            stem = _twin_of(path) if kind == "image" else None
            kind, stem = ("text_free", stem) if stem else (kind, path.stem)
            entry = files.setdefault((book_id, stem), {})
            if kind in entry:
                log = _PageLog(book_id, stem, problems)
                what = "image" if kind == "text_free" else kind  # a second twin is a second image of the page
                log.add(
                    f"duplicate_{what}",
                    "noted",
                    f"same stem as {entry[kind].name}, which is used",
                    _relative(path, root),
                )
                continue
            entry[kind] = path
    return files, problems


def _relative(path: Path, root: Path) -> str:
    """Path relative to the data root, as a POSIX string."""
    return path.relative_to(root).as_posix()


def _read_labelled_page(
    root: Path, files: dict[str, Path] | None, label: str | None, opts: _Options, log: _PageLog
) -> list[dict]:
    """Apply the label rules to one (book, page) and read it if it is narrative."""
    if files is not None and not files.keys() & {"image", "json"}:  # a text-free twin whose page is not there
        twin = _relative(files["text_free"], root)
        log.add("unused_file", "noted", f"text-free twin of {log.page_name}, which has no image or JSON", twin)
        if label is None:
            return []
        files = None
    if files is None:
        folder = root / log.book_id
        where = f"no {log.page_name}.* in {log.book_id}/" if folder.is_dir() else f"no folder {log.book_id}/"
        log.add("label_without_page", "noted", f"labelled {label!r} but {where} under data_root")
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
    base = dict(
        book_id=log.book_id,
        page_name=log.page_name,
        label=label,
        image_path=image_file,
        image_width=width,
        image_height=height,
        image_mode=mode,
        text_free_path=_usable_twin(root, files.get("text_free"), (width, height), opts, log),
    )
    return _page_parts(base, kept, opts.max_panels, json_file, log)


def _read_json(path: Path, file: str, log: _PageLog) -> Any:
    """Parse a page JSON, decoding non-UTF-8 bytes as cp1252 (latin-1 if that fails); None when unparseable."""
    try:
        raw = path.read_bytes()
        try:
            text = raw.decode("utf-8-sig")
        except UnicodeDecodeError as err:
            text, encoding = _decode_legacy(raw)
            log.add(
                "text_encoding", "repaired", f"not UTF-8 ({err.reason} at byte {err.start}); read as {encoding}", file
            )
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
        if not (
            _is_optional_str(panel.get("text"))
            and _is_optional_str(panel.get("description"))
            and isinstance(text_boxes, list)
            and all(isinstance(t, str) for t in text_boxes)
        ):
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
        log.add(*image_problem(err, file, str(path)), file)
        return None
    if mode != "RGB":
        log.add("image_mode", "converted", f"{mode} -> RGB", file)
    return width, height, mode


def image_problem(err: BaseException, file: str, shown_as: str) -> tuple[str, str, str]:
    """(problem, action, detail) of a page image that failed to decode: ``truncated_image`` or ``corrupt_image``,
    the page skipped; the error's text names the file as the problems table does (``shown_as``, how PIL named it,
    replaced by ``file``)."""
    truncated = isinstance(err, OSError) and "truncated" in str(err).lower()
    detail = f"{type(err).__name__}: {err}".replace(shown_as, file)
    return ("truncated_image" if truncated else "corrupt_image"), "skipped_page", detail


def _usable_twin(root: Path, path: Path | None, size: tuple[int, int], opts: _Options, log: _PageLog) -> str:
    """The page's text-free twin, relative to root, when it is an image of the page's size; else "" (with a
    text_free_unusable row when there is a twin that cannot stand in for the page)."""
    if path is None:
        return ""
    file = _relative(path, root)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(path) as img:
                if img.size != size:  # its crops would not be the page's panels
                    reason = f"twin is {img.width}x{img.height}, the page {size[0]}x{size[1]}"
                    log.add("text_free_unusable", "noted", reason, file)
                    return ""
                if opts.decode_check:
                    _decode_small(img)
    except Exception as err:  # noqa: BLE001 - PIL's plugins raise many exception types on malformed files
        log.add("text_free_unusable", "noted", f"{type(err).__name__}: {err}".replace(str(path), file), file)
        return ""
    return file


def _decode_small(img: Image.Image) -> None:
    """Decode the whole file; JPEGs at 1/8 scale, which still reads every byte but costs about a quarter."""
    img.draft(img.mode, (max(1, img.width // 8), max(1, img.height // 8)))
    img.load()


def _repair_panels(
    panels: list[dict], width: int, height: int, bbox_format: str, file: str, log: _PageLog
) -> list[dict]:
    """Kept panels as dicts with index, box (x1, y1, x2, y2), cleaned text, description and text_boxes."""
    kept = []
    for i, panel in enumerate(panels):
        box, problem, action, detail = repair_box(panel["bbox"], width, height, bbox_format)
        if problem:
            log.add(problem, action, detail, file, i)
        if box is None:
            continue
        texts = _clean_panel_text(panel, file, i, log)
        balloons = _text_box_boxes(panel, box, len(texts["text_boxes"]), width, height, bbox_format, file, i, log)
        kept.append(dict(index=i, box=box, **texts, text_box_boxes=balloons))
    return kept


def _text_box_boxes(
    panel: dict,
    box: list[float],
    count: int,
    width: int,
    height: int,
    bbox_format: str,
    file: str,
    index: int,
    log: _PageLog,
) -> list[list[float]] | None:
    """Each text box's box (the optional ``text_box_bboxes``, in the page's bbox format) as [x1, y1, x2, y2]
    fractions of the panel's box, cut to the panel; None when the panel gives none, and None with a
    ``text_box_bboxes`` row (the panel and its texts kept) when they are not one usable box per text box."""
    given = panel.get("text_box_bboxes")
    if given is None:
        return None
    problem = ""
    if not isinstance(given, list) or len(given) != count:
        problem = f"{_count(given)} boxes for {count} text boxes"
    elif not all(isinstance(b, list) and len(b) == 4 and all(_is_finite_number(v) for v in b) for b in given):
        problem = "a box is not 4 finite numbers"
    boxes = []
    for j, bbox in enumerate(given if not problem else []):
        page_box, _, _, _ = repair_box(bbox, width, height, bbox_format)
        if page_box is None:
            problem = f"text box {j}: {bbox!r} has no area on the page"
            break
        boxes.append(_within(page_box, box))
    if problem:
        log.add("text_box_bboxes", "dropped_text_box_boxes", problem, file, index)
        return None
    return boxes


def _count(value: Any) -> str:
    """How many items a JSON value holds, for a message."""
    return str(len(value)) if isinstance(value, list) else f"not a list ({type(value).__name__}):"


def _within(inner: list[float], outer: list[float]) -> list[float]:
    """[x1, y1, x2, y2] of ``inner`` as fractions of ``outer``'s box, cut to it (a balloon may cross its panel's
    edge)."""
    w, h = outer[2] - outer[0], outer[3] - outer[1]
    fx = [min(max((inner[k] - outer[0]) / w, 0.0), 1.0) for k in (0, 2)]
    fy = [min(max((inner[k] - outer[1]) / h, 0.0), 1.0) for k in (1, 3)]
    return [round(fx[0], 5), round(fy[0], 5), round(fx[1], 5), round(fy[1], 5)]


def _clean_panel_text(panel: dict, file: str, index: int, log: _PageLog) -> dict:
    """Cleaned text, description and text_boxes; one text_unicode row when any changed beyond whitespace."""
    raw = [("text", panel.get("text") or ""), ("description", panel.get("description") or "")]
    raw += [(f"text_boxes[{j}]", t) for j, t in enumerate(panel.get("text_boxes") or [])]
    cleaned = {name: clean_text(text) for name, text in raw}
    changed = [f"{name} {text!r} -> {cleaned[name]!r}" for name, text in raw if cleaned[name] != " ".join(text.split())]
    if changed:
        log.add("text_unicode", "repaired", "; ".join(changed), file, index)
    return dict(text=cleaned.pop("text"), description=cleaned.pop("description"), text_boxes=list(cleaned.values()))


def clean_text(text: str) -> str:
    """Drop control, zero-width and bidi-control characters, NFC-normalise, collapse whitespace."""
    # Cf holds the zero-width and bidi controls; lone surrogates (Cs, legal in JSON) cannot be written as UTF-8.
    kept = "".join(
        " " if ch.isspace() else ch for ch in text if ch.isspace() or unicodedata.category(ch) not in ("Cc", "Cf", "Cs")
    )
    return " ".join(unicodedata.normalize("NFC", kept).split())


def _page_parts(base: dict, panels: list[dict], max_panels: int, file: str, log: _PageLog) -> list[dict]:
    """Pages-table rows for one page, split into consecutive parts of at most max_panels panels."""
    parts = (
        [panels]
        if len(panels) <= max_panels
        else [
            list(chunk) for chunk in np.array_split(np.array(panels, dtype=object), math.ceil(len(panels) / max_panels))
        ]
    )
    if len(parts) > 1:
        sizes = ", ".join(str(len(p)) for p in parts)
        log.add("too_many_panels", "split", f"{len(panels)} panels > {max_panels}: parts of {sizes}", file)
    page_id = f"{base['book_id']}/{base['page_name']}"
    return [
        dict(
            base,
            page_id=page_id if len(parts) == 1 else f"{page_id}#{k}",
            part=k,
            num_panels=len(part),
            panel_index=[p["index"] for p in part],
            boxes=[p["box"] for p in part],
            texts=[p["text"] for p in part],
            descriptions=[p["description"] for p in part],
            text_boxes=[p["text_boxes"] for p in part],
            text_box_boxes=[p["text_box_boxes"] for p in part],
        )
        for k, part in enumerate(parts)
    ]
