"""`comicnb detect` on page images alone: quality against the true JSON, pages/s, two processes against one.

    python bench/bench_detect.py [--data-root DIR] [--json PATH]

Without --data-root the demo corpus is drawn into a temporary folder (and the dirty corpus beside it); its page
images alone are copied and detected, given the books' directions and the PSS labels as a user gives them. Goals on
the clean corpus (issue 22): panel recall at IoU 0.5 >= 0.97 with precision >= 0.95, exact order >= 0.95 of the pages
whose layout decides it (grids read down their columns are told only by the story), character error rate <= 0.10.
On the dirty corpus: it completes, and every injected image defect is a problems row. Speed as ratios within the
run: two worker processes against one (goal >= 1.3 on two cores), and panels alone against panels and OCR.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

from common import bench_parser, finish, measured_corpus, yes_no  # bench/common.py, beside this script

from comicnb.corpus import load_corpus, synth
from comicnb.detect.quality import GOALS, score_detection, summarise
from comicnb.detect.run import DetectSettings, detect
from comicnb.detect.sources import copy_page_images

IMAGE_DEFECTS = {"corrupt_image", "truncated_image", "huge_image", "image_mode", "duplicate_image"}
GOAL_WORKERS = 1.3


def timed_detect(truth: Path, pages: Path, out: Path, settings: DetectSettings, workers: int) -> tuple[float, dict]:
    start = time.perf_counter()
    manifest = detect(
        pages,
        out,
        directions=truth / "ground_truth.json",
        labels=truth / "pss_labels.json",
        settings=settings,
        workers=workers,
        progress=False,
    )
    return time.perf_counter() - start, manifest


def run(data_root: Path, scratch: Path) -> dict:
    pages = copy_page_images(data_root, scratch / "pages")
    n = sum(1 for p in pages.rglob("*") if p.is_file())
    one_s, _ = timed_detect(data_root, pages, scratch / "one", DetectSettings(), 1)
    two_s, _ = timed_detect(data_root, pages, scratch / "two", DetectSettings(), 2)
    panels_s, _ = timed_detect(data_root, pages, scratch / "panels", DetectSettings(ocr="none"), 1)
    quality = summarise(score_detection(scratch / "two", data_root))
    dirty = scratch / "dirty"
    synth.generate(dirty, books=4, pages=8, seed=0, dirty=True)
    dirty_pages = copy_page_images(dirty, scratch / "dirty-pages")
    _, manifest = timed_detect(dirty, dirty_pages, scratch / "dirty-out", DetectSettings(), 2)
    rows = load_corpus(scratch / "dirty-out").problems
    reported = set(zip(rows.problem, rows.book_id, rows.page_name))
    injected = json.loads((dirty / "ground_truth.json").read_text())["dirty"]
    expected = {(d["problem"], d["book_id"], d["page_name"]) for d in injected if d["problem"] in IMAGE_DEFECTS}
    dirty_quality = summarise(score_detection(scratch / "dirty-out", dirty))
    order = min(quality.get("order exact (fixed)", 0.0), quality.get("order exact (across)", 1.0))
    goals = {
        "recall@0.5": quality["recall@0.5"] >= GOALS["recall@0.5"],
        "precision@0.5": quality["precision@0.5"] >= GOALS["precision@0.5"],
        "order exact (layout decides)": order >= GOALS["order exact"],
        "CER": quality["CER"] <= GOALS["CER"],
        "dirty: every image defect a row": expected <= reported,
        "two workers / one": one_s / two_s >= GOAL_WORKERS,
    }
    return dict(
        data_root=str(data_root),
        pages=n,
        seconds={"one worker": one_s, "two workers": two_s, "panels only": panels_s},
        pages_per_s={"one worker": n / one_s, "two workers": n / two_s, "panels only": n / panels_s},
        ratios={"two workers / one": one_s / two_s, "panels only / with OCR": one_s / panels_s},
        quality=quality,
        dirty=dict(
            pages=manifest["pages"],
            written=manifest["pages_written"],
            injected_image_defects=sorted(map(list, expected)),
            missed=sorted(map(list, expected - reported)),
            quality=dirty_quality,
        ),
        goals=goals,
    )


def print_report(report: dict) -> None:
    print(f"{report['pages']} page images from {report['data_root']}")
    for name, value in report["pages_per_s"].items():
        print(f"  {name:<14}{value:>8.2f} pages/s")
    for name, value in report["ratios"].items():
        print(f"  {name:<24}{value:>6.2f}")
    print("clean corpus:")
    for name, value in report["quality"].items():
        print(f"  {name:<28}{value}")
    d = report["dirty"]
    print(f"dirty corpus: {d['written']} of {d['pages']} pages written; image defects missed: {d['missed'] or 'none'}")
    for name in ("recall@0.5", "precision@0.5", "CER"):
        print(f"  {name:<28}{d['quality'].get(name)}")
    for name, ok in report["goals"].items():
        print(f"goal {name}: {yes_no(ok)}")


def main() -> None:
    args = bench_parser(__doc__, repeats=None).parse_args()
    with measured_corpus(args.data_root) as (data_root, scratch):
        report = run(data_root, scratch)
    finish(report, print_report, args.json)


if __name__ == "__main__":
    main()
