"""Decode-and-crop throughput against decode-only throughput on the same pages, in one run.

    python bench/bench_crop.py [--data-root DIR] [--repeats 3] [--json PATH]

Without --data-root the demo corpus is generated into a temporary folder with comicnb.corpus.synth. The goal is a
decode+crop / decode ratio of at least 0.7: each page is decoded once and cropping its panels is cheap.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from pathlib import Path

from common import bench_parser, finish, measured_corpus, yes_no  # bench/common.py, beside this script
from PIL import Image

from comicnb.corpus import crop_panels, load_corpus, to_rgb

GOAL_RATIO = 0.7
Job = tuple[Path, list[list[float]]]


def decode(path: Path, boxes: list[list[float]]) -> None:
    """Decode the page and convert it to RGB: the work every crop needs anyway."""
    with Image.open(path) as img:
        img.load()
        to_rgb(img)


def decode_crop(path: Path, boxes: list[list[float]]) -> None:
    """Decode the page once and crop every panel."""
    with Image.open(path) as img:
        crop_panels(img, boxes)


def decode_crop_resize(path: Path, boxes: list[list[float]]) -> None:
    """Decode, crop and resize every panel to 224 x 224, as the default dataset transform does before ToTensor."""
    with Image.open(path) as img:
        crop_panels(img, boxes, size=224)


def draft_crop_resize(path: Path, boxes: list[list[float]]) -> None:
    """As decode_crop_resize, but JPEGs decode at the smallest DCT scale keeping crops >= 224 (the dataset's path)."""
    with Image.open(path) as img:
        crop_panels(img, boxes, size=224, min_side=224)


MODES: dict[str, Callable[[Path, list[list[float]]], None]] = {
    "decode": decode,
    "decode+crop": decode_crop,
    "decode+crop+resize224": decode_crop_resize,
    "draft+crop+resize224": draft_crop_resize,
}


def seconds_per_pass(work: Callable[[Path, list[list[float]]], None], jobs: list[Job], repeats: int) -> float:
    """Median wall time of one pass over all pages."""
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        for path, boxes in jobs:
            work(path, boxes)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def run(data_root: Path, repeats: int) -> dict:
    """Load the corpus, warm up, time every mode; return the results as a dict."""
    start = time.perf_counter()
    pages = load_corpus(data_root).pages
    load_s = time.perf_counter() - start
    jobs = [(data_root / row.image_path, row.boxes) for row in pages.itertuples()]
    panels = int(pages["num_panels"].sum())
    for work in MODES.values():  # warm-up: file cache, allocator, lazy imports
        seconds_per_pass(work, jobs[:10], 1)
    seconds = {name: seconds_per_pass(work, jobs, repeats) for name, work in MODES.items()}
    results = {
        name: dict(seconds=s, pages_per_s=len(jobs) / s, panels_per_s=panels / s, ratio_to_decode=seconds["decode"] / s)
        for name, s in seconds.items()
    }
    return dict(
        data_root=str(data_root),
        pages=len(jobs),
        panels=panels,
        repeats=repeats,
        load_corpus_s=load_s,
        results=results,
        goal_ratio=GOAL_RATIO,
        meets_goal=results["decode+crop"]["ratio_to_decode"] >= GOAL_RATIO,
    )


def print_table(report: dict) -> None:
    """Print the results as a small fixed-width table."""
    print(
        f"{report['pages']} pages, {report['panels']} panels, median of {report['repeats']} passes; "
        f"load_corpus (with validation) {report['load_corpus_s']:.2f} s"
    )
    print(f"{'mode':<24}{'pages/s':>10}{'panels/s':>11}{'ratio':>8}")
    for name, r in report["results"].items():
        print(f"{name:<24}{r['pages_per_s']:>10.1f}{r['panels_per_s']:>11.1f}{r['ratio_to_decode']:>8.2f}")
    print(f"decode+crop / decode >= {report['goal_ratio']}: {yes_no(report['meets_goal'])}")


def main() -> None:
    args = bench_parser(__doc__, repeats_help="timed passes per mode; the median is reported").parse_args()
    with measured_corpus(args.data_root) as (data_root, _):
        report = run(data_root, args.repeats)
    finish(report, print_table, args.json)


if __name__ == "__main__":
    main()
