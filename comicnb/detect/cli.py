"""The ``comicnb detect`` command: its arguments and what it prints."""

from __future__ import annotations

import argparse
import sys
from collections import Counter

from comicnb.detect.order import DIRECTIONS
from comicnb.detect.text import OCR_ENGINES


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--in", dest="source", required=True, help="a folder of page images or a .cbz/.zip archive")
    parser.add_argument("--out", required=True, help="the data root to write (page images, Stage 1 JSON, labels)")
    parser.add_argument("--direction", choices=DIRECTIONS, default="ltr", help="reading direction of every book")
    parser.add_argument(
        "--directions", default=None, help='JSON file {"book_id": "rtl", ...} overriding --direction per book'
    )
    parser.add_argument("--labels", default=None, help="PSS labels to copy (default: every page narrative)")
    parser.add_argument("--ocr", choices=OCR_ENGINES, default="rapidocr", help="OCR engine, or none (panels only)")
    parser.add_argument("--workers", type=int, default=1, help="processes detecting pages at once")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")


def main(args: argparse.Namespace) -> int:
    from comicnb.detect.run import DetectSettings, detect

    try:
        manifest = detect(
            args.source,
            args.out,
            direction=args.direction,
            directions=args.directions,
            labels=args.labels,
            settings=DetectSettings(ocr=args.ocr),
            workers=max(1, args.workers),
            progress=not args.no_progress,
        )
    except (FileNotFoundError, ValueError) as err:
        print(f"comicnb detect: {err}", file=sys.stderr)
        return 2
    counts = Counter(row["problem"] for row in manifest["problems"])
    print(
        f"[comicnb] detect: {manifest['pages_written']} of {manifest['pages']} pages, {manifest['panels']} panels "
        f"-> {args.out}/"
    )
    if counts:
        print("[comicnb] problems (detection.json): " + ", ".join(f"{k} {v}" for k, v in sorted(counts.items())))
    return 0
