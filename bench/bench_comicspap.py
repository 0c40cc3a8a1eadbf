"""`comicnb comicspap encode` on a fixture in ComicsPAP's schema, at 1x and 10x its rows: rows/s and peak memory.

    python bench/bench_comicspap.py [--run-dir outputs/<run>] [--copies 10] [--json PATH]

The fixture is made from a finished run's task sets (``comicspap fixture``; default: the newest finished run under
outputs/), once as it is and once with every good row repeated ``--copies`` times. Each encode runs in a fresh
process, which reports its own peak resident memory, so the runs do not share a heap. Encoding streams one row group at
a time, so peak memory should not grow with the rows (goal: 10x peak within 1.25x of 1x peak); rows/s should not fall
(goal: 10x rate at least 0.8x the 1x rate). OCR is measured at 1x (its cost per panel is what projects a real split's
time; docs/comicspap.md shows the arithmetic). Both are ratios within one run.
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
from pathlib import Path

from common import bench_parser, finish, finished_run, yes_no  # bench/common.py, beside this script

GOAL_MEMORY = 1.25  # 10x peak / 1x peak
GOAL_RATE = 0.8  # 10x rows/s / 1x rows/s

CHILD = """
import json, resource, sys
from comicnb.comicspap.encode import EncodeSettings, encode
data, run, text, split, checkpoint = sys.argv[1:6]
manifest = encode(data, split, run, checkpoint, EncodeSettings(text=text), progress=False)
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
print(json.dumps(dict(timing=manifest["timing"], rows=sum(manifest["rows"].values()), peak_mib=peak)))
"""


def encode_in_child(data: Path, run: Path, text: str, checkpoint: Path, split: str = "val") -> dict:
    """One encode in a fresh interpreter: its timing, rows and peak resident memory (MiB)."""
    command = [sys.executable, "-c", CHILD, str(data), str(run), text, split, str(checkpoint)]
    done = subprocess.run(command, capture_output=True, text=True, check=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = bench_parser(__doc__, data_root=False, repeats=None)
    parser.add_argument("--run-dir", type=Path, help="a finished run (default: the newest under outputs/)")
    parser.add_argument("--copies", type=int, default=10, help="the larger fixture's copies of every row")
    args = parser.parse_args()
    run = finished_run(args.run_dir)
    from comicnb.comicspap.encode import run_checkpoint
    from comicnb.comicspap.fixture import build_fixture

    checkpoint = run_checkpoint(run)
    report: dict = dict(run=str(run), copies=args.copies)
    with tempfile.TemporaryDirectory() as scratch:
        scratch = Path(scratch)
        for copies in (1, args.copies):
            build_fixture(run, scratch / f"data{copies}", copies)
        for name, copies, text in (("1x", 1, "none"), (f"{args.copies}x", args.copies, "none"), ("1x ocr", 1, "ocr")):
            target = scratch / f"run-{copies}-{text}"
            report[name] = encode_in_child(scratch / f"data{copies}", target, text, checkpoint)
    small, large = report["1x"], report[f"{args.copies}x"]
    report["memory_ratio"] = large["peak_mib"] / small["peak_mib"]
    report["rate_ratio"] = large["timing"]["rows_per_second"] / small["timing"]["rows_per_second"]
    report["memory_ok"] = report["memory_ratio"] <= GOAL_MEMORY
    report["rate_ok"] = report["rate_ratio"] >= GOAL_RATE
    finish(report, print_report, args.json)


def print_report(report: dict) -> None:
    print(f"comicspap encode on fixtures of {report['run']} (val split; each in its own process)")
    for name in ("1x", f"{report['copies']}x", "1x ocr"):
        part = report[name]
        timing = part["timing"]
        per_panel = timing["seconds"] / max(1, timing["panels_computed"])
        parts = ", ".join(f"{k} {v:.1f} s" for k, v in timing["seconds_by_part"].items())
        print(
            f"  {name:<8} {part['rows']:>6} rows, {timing['panels_computed']:>6} panels: "
            f"{timing['rows_per_second']:7.2f} rows/s, {1000 * per_panel:6.1f} ms/panel, "
            f"peak {part['peak_mib']:7.0f} MiB ({parts})"
        )
    print(
        f"  peak memory {report['copies']}x / 1x: {report['memory_ratio']:.3f} (goal <= {GOAL_MEMORY}: "
        f"{yes_no(report['memory_ok'])}); rows/s {report['copies']}x / 1x: {report['rate_ratio']:.3f} "
        f"(goal >= {GOAL_RATE}: {yes_no(report['rate_ok'])})"
    )


if __name__ == "__main__":
    main()
