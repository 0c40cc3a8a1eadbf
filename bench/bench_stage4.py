"""Stage 4 training: sequences per second and peak memory at the demo and the seed's size, and epoch time vs pages.

    python bench/bench_stage4.py [--run-dir RUN] [--books 6] [--pages 8] [--scales 1 4 16] [--threads N] [--json PATH]

Throughput: one epoch of every training sample of every task (strip term on) at the demo size (Stage4ModelConfig's
defaults, 16 samples a step) and at the seed's (SEED_SIZE: d_model 512, 8 heads, 6 layers, 8 samples a step):
training sequences (task samples) per second, steps per second, and peak memory (the process's resident peak so
far, and the GPU's peak for that size where there is one). With --run-dir the run's store and validation sets are
used (e.g. the study profile's run); without it the smallest corpus of the scaling below is.

Scaling: corpora of --books x 1, 4, 16 books of --pages pages (generated, 70/15/15 split by book), each with a tiny
untrained Stage 3 model's store (feature_dim 512, the demo width; Stage 4's cost does not depend on what the vectors
mean) and small validation sets, built first and not timed; then one epoch at the demo size: its draw (the samplers
redrawing every task's training samples) and its steps. An epoch should cost time in proportion to the pages: the
goal is (time ratio) / (page ratio) <= 1.3 at every scale.
"""

from __future__ import annotations

import resource
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch
from common import bench_parser, finish, yes_no  # bench/common.py, beside this script

GOAL_RATIO = 1.3
VAL_CAP = 50  # validation samples per task: validation is not what is measured here
DEMO = dict(batch_size=16)  # the model's demo size is Stage4ModelConfig's defaults
FEATURE_DIM = 512


def peak_rss_mib() -> float:
    """Peak resident memory of this process so far (Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def generated_run(scratch: Path, books: int, pages: int) -> Path:
    """A run folder of a generated corpus with a tiny untrained Stage 3 store and capped validation sets."""
    from comicnb import checkpoint
    from comicnb.corpus import load_corpus, save_corpus, synth
    from comicnb.stage3 import checkpoints
    from comicnb.stage3.model import PanelFeatureExtractor
    from comicnb.stage4.task_sets import build_task_sets
    from comicnb.store import EmbedConfig, generate

    data, run = scratch / f"corpus-{books}", scratch / f"run-{books}"
    synth.generate(data, books=books, pages=pages, seed=0, page_size=(320, 480))
    save_corpus(load_corpus(data, split=(0.7, 0.15, 0.15), seed=0), run)
    torch.manual_seed(0)
    model = PanelFeatureExtractor(feature_dim=FEATURE_DIM, tiny=True)
    state = {"model_state_dict": model.state_dict(), "config": {"model": model.config, "train": {"seed": 0}}}
    checkpoint.save_checkpoint(state, checkpoints(run).last)
    generate(run, cfg=EmbedConfig(pages_per_chunk=16))
    build_task_sets(run, splits=("val",), seed=0, limits=VAL_CAP)
    return run


def one_epoch(run: Path, settings: dict[str, Any]) -> dict[str, Any]:
    """Train one epoch of every training sample; its draw and step seconds, samples, steps and memory."""
    from comicnb.stage4.trainer import build_stage4_trainer

    if torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats()
    trainer = build_stage4_trainer(run, dict(settings, epochs=1, train_samples=0, seed=0))
    start = time.perf_counter()
    trainer.draw(1)  # what every later epoch draws before its steps (the first epoch was drawn when built)
    draw = time.perf_counter() - start
    trainer.train()
    steps = trainer.history.epochs[-1]["train_seconds"]
    samples = sum(trainer.counts.values())
    report = dict(
        pages=int(len(trainer.train_pages)),
        samples=samples,
        steps=trainer.steps_per_epoch,
        draw_s=draw,
        steps_s=steps,
        epoch_s=draw + steps,
        sequences_per_s=samples / steps,
        steps_per_s=trainer.steps_per_epoch / steps,
        device=str(trainer.accelerator.device),
        peak_rss_mib=peak_rss_mib(),
    )
    if torch.cuda.is_available():
        report["peak_gpu_mib"] = torch.cuda.max_memory_allocated() / 2**20
    return report


def run(scratch: Path, run_dir: Path | None, books: int, pages: int, scales: list[int]) -> dict[str, Any]:
    """Generate the corpora, time the throughput at both sizes and the epoch at every scale."""
    from comicnb.stage4.config import SEED_SIZE

    runs = {scale: generated_run(scratch, books * scale, pages) for scale in scales}
    measured = run_dir or runs[min(scales)]
    sizes = {"demo": dict(DEMO), "seed": dict(SEED_SIZE, batch_size=8)}
    throughput = {name: one_epoch(measured, settings) for name, settings in sizes.items()}
    scaling = {scale: one_epoch(path, DEMO) for scale, path in runs.items()}
    base = scaling[min(scales)]
    for row in scaling.values():
        page_ratio = row["pages"] / base["pages"]
        row["page_ratio"] = page_ratio
        row["time_ratio"] = row["epoch_s"] / base["epoch_s"]
        row["time_per_page_ratio"] = row["time_ratio"] / page_ratio
        row["draw_per_page_ratio"] = (row["draw_s"] / base["draw_s"]) / page_ratio
    worst = max(row["time_per_page_ratio"] for row in scaling.values())
    return dict(
        run=str(measured),
        cpu_threads=torch.get_num_threads(),
        throughput=throughput,
        scaling={str(k): v for k, v in scaling.items()},
        worst_time_per_page_ratio=worst,
        goal_ratio=GOAL_RATIO,
        meets_goal=worst <= GOAL_RATIO,
    )


def print_table(report: dict[str, Any]) -> None:
    """Print the results as a few aligned lines."""
    print(f"throughput on {report['run']} ({report['cpu_threads']} CPU threads)")
    for name, row in report["throughput"].items():
        gpu = f", GPU peak {row['peak_gpu_mib']:.0f} MiB" if "peak_gpu_mib" in row else ""
        print(
            f"  {name:5s} {row['sequences_per_s']:8.1f} sequences/s {row['steps_per_s']:6.2f} steps/s "
            f"({row['samples']} samples, {row['steps']} steps on {row['device']}); peak RSS so far "
            f"{row['peak_rss_mib']:.0f} MiB{gpu}"
        )
    print("one epoch at the demo size as the corpus grows")
    print(f"  {'scale':>5} {'pages':>6} {'samples':>8} {'draw s':>8} {'steps s':>8} {'epoch s':>8} {'t/p ratio':>10}")
    for scale, row in report["scaling"].items():
        print(
            f"  {scale:>5} {row['pages']:>6} {row['samples']:>8} {row['draw_s']:>8.2f} {row['steps_s']:>8.2f} "
            f"{row['epoch_s']:>8.2f} {row['time_per_page_ratio']:>10.2f}"
        )
    print(
        f"worst (time ratio) / (page ratio) = {report['worst_time_per_page_ratio']:.2f} <= {report['goal_ratio']}: "
        f"{yes_no(report['meets_goal'])}"
    )


def main() -> int:
    parser = bench_parser(__doc__, data_root=False, repeats=None)
    parser.add_argument("--run-dir", type=Path, help="run with a store and val task sets for the throughput")
    parser.add_argument("--books", type=int, default=6, help="books of the smallest generated corpus")
    parser.add_argument("--pages", type=int, default=8, help="pages per generated book")
    parser.add_argument("--scales", type=int, nargs="+", default=[1, 4, 16], help="corpus sizes, in --books")
    parser.add_argument(
        "--threads", type=int, default=0, help="torch CPU threads (0: torch's default; 1 on a shared machine)"
    )
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    if len(args.scales) < 2:
        parser.error("--scales needs at least two sizes to compare")

    with tempfile.TemporaryDirectory() as scratch:
        report = run(Path(scratch), args.run_dir, args.books, args.pages, sorted(args.scales))
    finish(report, print_table, args.json)
    return 0


if __name__ == "__main__":
    sys.exit(main())
