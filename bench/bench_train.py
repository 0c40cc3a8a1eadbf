"""Stage 3 training throughput, peak memory, and what the frozen-backbone feature cache saves, in one run.

    python bench/bench_train.py [--data-root DIR] [--epochs 3] [--json PATH]

Trains the default model (packaged EfficientNet-Lite0 and all-MiniLM-L6-v2, frozen) on the train split of the demo
corpus (generated into a temporary folder without --data-root). The frozen encoders run once per training panel
and their outputs are stored (the cache fill, timed on its own: training may fill it before its first epoch, to
score each modality for the gate's prior); every epoch then trains on the stored features. The cold first epoch is
the fill plus one epoch from the cache. Goal: a later epoch takes at most 0.1 of the cold first one. For scale, one
epoch with the cache off (every page decoded and encoded again) is timed too.
"""

from __future__ import annotations

import resource
import statistics
import sys
import time
from pathlib import Path

import torch
from common import bench_parser, finish, measured_corpus, run_folder, yes_no  # bench/common.py, beside this script

from comicnb.stage3.trainer import build_trainer

GOAL_RATIO = 0.1


def peak_memory_mib() -> dict[str, float]:
    """Peak resident memory of this process so far, and peak GPU memory where there is a GPU."""
    peak = {"peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}  # Linux reports KiB
    if torch.cuda.is_available():
        peak["peak_gpu_mib"] = torch.cuda.max_memory_allocated() / 2**20
    return peak


def epoch_times(run_dir: Path, settings: dict) -> tuple[list[float], float, int, str]:
    """Train with settings; the wall seconds of each epoch, of filling the training feature cache first (0 without
    a cache), the number of training panels and the device."""
    trainer = build_trainer(run_dir, settings)
    started = time.perf_counter()
    fill = time.perf_counter() - started if trainer.train_source.fill_cache() else 0.0
    trainer.train()
    seconds = [e["train_seconds"] for e in trainer.history.epochs if e["epoch"] > 0]
    return seconds, fill, int(trainer.train_source.pages.num_panels.sum()), str(trainer.accelerator.device)


def run(data_root: Path, scratch: Path, epochs: int) -> dict:
    """Time cached training over several epochs and one uncached epoch; return the results as a dict."""
    run_dir = run_folder(data_root, scratch, split=(0.7, 0.15, 0.15))
    base = dict(epochs=epochs, batch_size=8, seed=0)
    cached, fill, panels, device = epoch_times(run_dir, base)
    uncached, _, _, _ = epoch_times(run_dir, {**base, "epochs": 1, "cache_features": False})
    later = statistics.median(cached[1:])
    cold = fill + cached[0]
    return dict(
        data_root=str(data_root),
        train_panels=panels,
        epochs=epochs,
        device=device,
        cache_fill_s=fill,
        first_epoch_s=cached[0],
        cold_first_epoch_s=cold,
        later_epoch_s=later,
        uncached_epoch_s=uncached[0],
        later_over_first=later / cold,
        cached_panels_per_s=panels / later,
        uncached_panels_per_s=panels / uncached[0],
        goal_ratio=GOAL_RATIO,
        meets_goal=later / cold <= GOAL_RATIO,
        **peak_memory_mib(),
    )


def print_table(report: dict) -> None:
    """Print the results as a few aligned lines."""
    print(f"{report['train_panels']} training panels, {report['epochs']} epochs on {report['device']}")
    print(f"{'filling the feature cache':<42}{report['cache_fill_s']:>8.2f} s")
    print(f"{'first epoch from the cache':<42}{report['first_epoch_s']:>8.2f} s")
    print(f"{'cold first epoch (fill + first epoch)':<42}{report['cold_first_epoch_s']:>8.2f} s")
    print(
        f"{'later epoch (median, from the cache)':<42}{report['later_epoch_s']:>8.2f} s"
        f"{report['cached_panels_per_s']:>10.0f} panels/s"
    )
    print(
        f"{'one epoch without the cache':<42}{report['uncached_epoch_s']:>8.2f} s"
        f"{report['uncached_panels_per_s']:>10.0f} panels/s"
    )
    memory = ", ".join(f"{k} {v:.0f}" for k, v in report.items() if k.startswith("peak_"))
    print(f"peak memory: {memory}")
    ratio = report["later_over_first"]
    print(f"later / cold first = {ratio:.3f} <= {report['goal_ratio']}: {yes_no(report['meets_goal'])}")


def main() -> int:
    parser = bench_parser(__doc__, repeats=None)
    parser.add_argument("--epochs", type=int, default=3, help="cached epochs to time (at least 2)")
    args = parser.parse_args()
    if args.epochs < 2:
        parser.error("--epochs must be at least 2: the first epoch is compared with the later ones")
    with measured_corpus(args.data_root) as (data_root, scratch):
        report = run(data_root, scratch, args.epochs)
    finish(report, print_table, args.json)
    return 0


if __name__ == "__main__":
    sys.exit(main())
