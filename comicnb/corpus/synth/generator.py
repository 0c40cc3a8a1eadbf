"""Writing a corpus: page JSON with OCR-like noise, page files with their defects, `generate` and its command line."""

from __future__ import annotations

import argparse
import io
import json
import shutil
import sys
import time
from pathlib import Path

import numpy as np
from PIL import Image

from comicnb.corpus.reader import TEXT_FREE, text_free_name
from comicnb.corpus.synth.defects import break_doc, break_files, break_image
from comicnb.corpus.synth.layouts import to_bbox
from comicnb.corpus.synth.paint import render_page
from comicnb.corpus.synth.plan import DOWN_SHARE, PAGE_KEY, plan_corpus
from comicnb.corpus.synth.story import pick
from comicnb.corpus.synth.truth import ground_truth

_CONFUSIONS = dict(zip("olieasbngt", "01lco5hmqf"))


def ocr_noise(text: str, p: float, rng: np.random.Generator) -> str:
    """OCR-like damage: each character dropped (p/2) or swapped for a look-alike (p/2)."""
    if p <= 0:
        return text
    out = []
    for ch, r in zip(text, rng.random(len(text))):
        if r >= p:
            out.append(ch)
        elif r >= p / 2:
            out.append(_CONFUSIONS.get(ch.lower(), pick(rng, "aeinorst")))
    return "".join(out)


def page_doc(
    page: dict,
    book: dict,
    bbox_format: str,
    noise: float,
    rng: np.random.Generator,
    line_boxes: list[list] | None = None,
) -> dict:
    """The Stage 1 JSON of a page: boxes in reading order, texts as OCR would read them, descriptions; with
    ``line_boxes`` (``render_page``'s), each text box's own box too (``text_box_bboxes``, in the panels' format), on
    every panel whose lines all drew one."""
    if page["defect"] and page["defect"]["variant"] in ("cp1252", "odd_unicode"):
        noise = 0.0  # the defect needs its accented text intact
    panels = []
    for k, (box, panel) in enumerate(zip(page["boxes"], page["panels"])):
        texts = [ocr_noise(line["text"], noise, rng) for line in panel["lines"]]
        doc = {
            "bbox": to_bbox(box, bbox_format),
            "text": " ".join(texts),
            "confidence": round(float(rng.uniform(0.8, 0.995)), 3),
            "text_boxes": texts,
            "description": panel["caption"],
        }
        found = line_boxes[k] if line_boxes is not None else None
        if found is not None and all(b is not None for b in found):
            doc["text_box_bboxes"] = [to_bbox([round(v) for v in b], bbox_format) for b in found]
        panels.append(doc)
    return {"image_width": book["size"][0], "image_height": book["size"][1], "panels": panels}


def _encode(img: Image.Image, fmt: str) -> bytes:
    """Image bytes: JPEG at quality 85, or PNG."""
    buf = io.BytesIO()
    img.save(buf, "JPEG", quality=85) if fmt == "jpg" else img.save(buf, "PNG")
    return buf.getvalue()


def page_files(
    name: str,
    page: dict,
    book: dict,
    bbox_format: str,
    noise: float,
    rng: np.random.Generator,
    *,
    text_free: bool = True,
) -> dict[str, bytes]:
    """The files of one page with its defect applied, as {file name: bytes}; with text_free, its text-free twin too.

    The twin is drawn after everything else and draws no random numbers, so the page's own files are the same bytes
    with or without it. It shares the page's image mode (the image defects), not its file defects (a page whose
    image is missing has no twin).
    """
    variant = page["defect"]["variant"] if page["defect"] else None
    image, doc = f"{name}.{page['format']}", f"{name}.json"
    line_boxes: list[list] = []
    drawn = render_page(page, book, line_boxes=line_boxes)
    document = page_doc(page, book, bbox_format, noise, rng, line_boxes)
    text = json.dumps(break_doc(document, page, bbox_format), ensure_ascii=False)
    files = {
        image: _encode(break_image(drawn, variant), page["format"]),
        doc: text.encode("cp1252" if variant == "cp1252" else "utf-8"),
    }
    break_files(files, variant, image, doc, rng)
    if text_free and image in files:
        twin = break_image(render_page(page, book, text=False), variant)
        files[text_free_name(image)] = _encode(twin, page["format"])
    return files


def _prepare(out: Path, overwrite: bool) -> None:
    """Make out ready: refuse a non-empty folder unless overwrite, then clear only a previous corpus there."""
    # Only book_* folders and the two corpus JSON files are removed, so a mistaken --out loses nothing else.
    if out.exists() and any(out.iterdir()):
        if not overwrite:
            raise FileExistsError(f"{out} is not empty; pass overwrite=True (--overwrite) to replace the corpus there")
        for entry in out.iterdir():
            if entry.is_dir() and entry.name.startswith("book_"):
                shutil.rmtree(entry)
            elif entry.name in ("pss_labels.json", "ground_truth.json"):
                entry.unlink()
    out.mkdir(parents=True, exist_ok=True)


def _check(books: int, pages: int, bbox_format: str, rtl_fraction: float, ocr_noise: float, max_panels: int) -> None:
    """Reject arguments the generator cannot honour, before anything is written."""
    if bbox_format not in ("xywh", "xyxy"):
        raise ValueError(f"bbox_format must be 'xywh' or 'xyxy', not {bbox_format!r}")
    if books < 1 or pages < 1:
        raise ValueError("books and pages must be at least 1")
    if not (0 <= rtl_fraction <= 1 and 0 <= ocr_noise <= 1):
        raise ValueError("rtl_fraction and ocr_noise are fractions between 0 and 1")
    if max_panels < 4:
        raise ValueError("max_panels must be at least 4 (the smallest grid)")


def _summary(plan: dict, out: Path, seconds: float, text_free_pages: int) -> dict:
    """Counts of what was written."""
    pages = [page for book in plan["books"].values() for page in book["pages"].values()]
    story = [page for page in pages if page["label"] == "narrative"]
    panels = [panel for page in story for panel in page["panels"]]
    return {
        "out": str(out),
        "books": len(plan["books"]),
        "pages": len(pages),
        "narrative_pages": len(story),
        "panels": len(panels),
        "text_panels": sum(bool(panel["lines"]) for panel in panels),
        "text_free_pages": text_free_pages,
        "dirty": len(plan["dirty"]),
        "seconds": round(seconds, 2),
    }


def describe(summary: dict) -> str:
    """A generator summary in one sentence, for the command line and notebook 01."""
    s = summary
    return (
        f"drew {s['books']} books, {s['pages']} pages ({s['narrative_pages']} narrative, {s['panels']} panels, "
        f"{s['text_panels']} with text, {s['dirty']} injected defects) to {s['out']} in {s['seconds']} s"
    )


def _write_json(path: Path, obj) -> None:
    """UTF-8 JSON, indented for people."""
    path.write_text(json.dumps(obj, ensure_ascii=False, indent=1), encoding="utf-8")


def generate(
    out: str | Path,
    books: int = 12,
    pages: int = 10,
    seed: int = 0,
    dirty: bool = False,
    *,
    page_size: tuple[int, int] = (640, 960),
    bbox_format: str = "xywh",
    rtl_fraction: float = 0.2,
    ocr_noise: float = 0.0,
    max_panels: int = 12,
    overwrite: bool = False,
    text_free: bool = True,
    down_share: float = DOWN_SHARE,
) -> dict:
    """Write a corpus of books x pages to out (docs/corpus.md) and return a summary of what was written.

    text_free=False leaves out the pages' text-free twins; every other file is the same bytes either way.
    down_share: the share of grid pages read down their columns (``plan_corpus``).
    """
    start, out = time.perf_counter(), Path(out)
    _check(books, pages, bbox_format, rtl_fraction, ocr_noise, max_panels)
    if not 0 <= down_share <= 1:
        raise ValueError(f"down_share is a fraction between 0 and 1, not {down_share}")
    plan = plan_corpus(
        books,
        pages,
        seed,
        dirty,
        page_size=page_size,
        rtl_fraction=rtl_fraction,
        max_panels=max_panels,
        down_share=down_share,
    )
    _prepare(out, overwrite)
    twins = 0
    for b, (book_id, book) in enumerate(plan["books"].items()):
        (out / book_id).mkdir()
        for p, (name, page) in enumerate(book["pages"].items()):
            rng = np.random.default_rng([seed, PAGE_KEY, b, p])
            files = page_files(name, page, book, bbox_format, ocr_noise, rng, text_free=text_free)
            for file_name, data in files.items():
                (out / book_id / file_name).write_bytes(data)
            twins += any(f".{TEXT_FREE}." in file_name for file_name in files)
    _write_json(out / "pss_labels.json", plan["labels"])
    _write_json(out / "ground_truth.json", ground_truth(plan, bbox_format))
    return _summary(plan, out, time.perf_counter() - start, twins)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The options of `python -m comicnb synth`."""
    parser.add_argument("--out", required=True, help="folder to write the corpus into")
    parser.add_argument("--books", type=int, default=12, help="number of books")
    parser.add_argument("--pages", type=int, default=10, help="pages per book, cover included")
    parser.add_argument("--seed", type=int, default=0, help="same seed, same bytes")
    parser.add_argument("--dirty", action="store_true", help="inject one page of each class of bad input")
    parser.add_argument("--bbox-format", choices=("xywh", "xyxy"), default="xywh", help="box form in page JSON")
    parser.add_argument("--rtl-fraction", type=float, default=0.2, help="share of right-to-left books")
    parser.add_argument(
        "--ocr-noise", type=float, default=0.0, help="per-character drop/substitution probability in the JSON text"
    )
    parser.add_argument("--max-panels", type=int, default=12, help="most panels on a clean page")
    parser.add_argument(
        "--page-size",
        type=int,
        nargs=2,
        default=(640, 960),
        metavar=("W", "H"),
        help="nominal page size in pixels (each book varies it by a few percent)",
    )
    parser.add_argument(
        "--down-share",
        type=float,
        default=DOWN_SHARE,
        help="share of grid pages whose story reads down the columns, not across the rows (only content tells)",
    )
    parser.add_argument("--overwrite", action="store_true", help="replace a corpus already in --out")
    parser.add_argument(
        "--no-text-free", dest="text_free", action="store_false", help="leave out the pages' text-free twins"
    )


def main(args: argparse.Namespace) -> int:
    """Run `synth` from parsed arguments and print the summary; 2 on a refused output folder or argument."""
    try:
        s = generate(
            args.out,
            args.books,
            args.pages,
            args.seed,
            args.dirty,
            page_size=tuple(args.page_size),
            bbox_format=args.bbox_format,
            rtl_fraction=args.rtl_fraction,
            ocr_noise=args.ocr_noise,
            max_panels=args.max_panels,
            overwrite=args.overwrite,
            text_free=args.text_free,
            down_share=args.down_share,
        )
    except (FileExistsError, ValueError) as err:
        print(f"synth: {err}", file=sys.stderr)
        return 2
    print(describe(s))
    return 0
