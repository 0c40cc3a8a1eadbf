"""Building the Stage 4 task sets: samples per second and peak memory, in one run.

    python bench/bench_tasks.py [--run-dir outputs/<study run>] [--books 24] [--json PATH]

With --run-dir (a run with an embedding store, e.g. the study profile's: `make demo PROFILE=study`), builds that
run's validation and test sets into a temporary folder, as notebook 04 does, and times each task. Without it, a
corpus of --books books of 12 pages is generated, a tiny Stage 3 model trained for one epoch and its store written
first (not timed); only the task building is measured, with the tiny model's text pathway.

Goals: at least 100 samples/s over all tasks, and building adds at most 2 GiB to the process's peak memory.
"""

from __future__ import annotations

import resource
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from common import bench_parser, finish, yes_no  # bench/common.py, beside this script

GOALS = dict(samples_per_second=100.0, added_peak_mib=2048.0)


def peak_rss_mib() -> float:
    """Peak resident memory of this process so far (Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def generated_run(scratch: Path, books: int) -> Path:
    """A run folder with pages table, a one-epoch tiny Stage 3 checkpoint and its store."""
    from comicnb.corpus import load_corpus, save_corpus, synth
    from comicnb.stage3.trainer import train_stage3
    from comicnb.store import generate

    synth.generate(scratch / "corpus", books=books, pages=12, seed=0)
    run = scratch / "run"
    save_corpus(load_corpus(scratch / "corpus", split=(0.7, 0.15, 0.15), seed=0), run)
    train_stage3(run, dict(tiny=True, feature_dim=64, epochs=1, batch_size=8, seed=0))
    generate(run)
    return run


def measure(run: Path, out: Path, seed: int) -> dict:
    """Build every task's validation and test set of ``run`` into ``out``; seconds, samples and memory."""
    from comicnb.stage4.task_sets import write_split
    from comicnb.stage4.tasks import TASKS
    from comicnb.stage4.view import open_run

    view = open_run(run)
    before = peak_rss_mib()
    per_task = {}
    for task in TASKS:
        start, samples = time.perf_counter(), 0
        for split in ("val", "test"):
            manifest = write_split(view, out / split, split, seed, None, (task,))
            samples += manifest["tasks"][task].get("samples", 0)
        per_task[task] = dict(samples=samples, seconds=round(time.perf_counter() - start, 3))
    total = sum(t["samples"] for t in per_task.values())
    seconds = sum(t["seconds"] for t in per_task.values())
    return dict(
        run=str(run),
        panels=len(view.panels),
        samples=total,
        seconds=round(seconds, 2),
        samples_per_second=round(total / max(seconds, 1e-9), 1),
        peak_rss_mib_before=round(before, 1),
        added_peak_mib=round(peak_rss_mib() - before, 1),
        per_task=per_task,
    )


def print_report(report: dict) -> None:
    """The figures and the goal lines."""
    print(f"task sets of {report['run']} ({report['panels']} panels)")
    for task, row in report["per_task"].items():
        rate = row["samples"] / max(row["seconds"], 1e-9)
        print(f"  {task:20s} {row['samples']:6d} samples  {row['seconds']:7.2f} s  {rate:8.1f} /s")
    print(f"all tasks: {report['samples']} samples in {report['seconds']} s = {report['samples_per_second']} /s")
    print(f"peak memory {report['peak_rss_mib_before']} MiB before building, +{report['added_peak_mib']} MiB while")
    ok_rate = report["samples_per_second"] >= GOALS["samples_per_second"]
    ok_memory = report["added_peak_mib"] <= GOALS["added_peak_mib"]
    print(f"goal samples/s >= {GOALS['samples_per_second']}: {yes_no(ok_rate)}")
    print(f"goal added peak memory <= {GOALS['added_peak_mib']} MiB: {yes_no(ok_memory)}")


def main() -> int:
    parser = bench_parser(__doc__, data_root=False, repeats=None)
    parser.add_argument("--run-dir", type=Path, help="a run with an embedding store (default: generate one)")
    parser.add_argument("--books", type=int, default=24, help="books of the generated corpus (without --run-dir)")
    parser.add_argument("--seed", type=int, default=0, help="the samplers' seed")
    args = parser.parse_args()
    np.random.seed(0)
    with tempfile.TemporaryDirectory() as scratch:
        run = args.run_dir or generated_run(Path(scratch), args.books)
        report = measure(run, Path(scratch) / "tasks", args.seed)
    finish(report, print_report, args.json)
    return 0


if __name__ == "__main__":
    sys.exit(main())
