"""The seven tasks drawn without the ground truth beside the same tasks drawn with it, on one finished run.

    python bench/bench_truth_free.py [--run-dir outputs/<run>] [--split test] [--train-samples 300] [--json PATH]

A real corpus has no ground-truth sidecar; its character coherence, visual closure and caption relevance are drawn
from the pages alone (``comicnb.stage4.samplers``). On the embedded corpus both can be drawn: the
run's own sets (with the truth) and sets drawn from a view that leaves the sidecar unread
(``open_run(..., truth_free=True)``), written to ``<run>/tasks-truth-free/<split>/``. Every baseline (the learned ones
fitted on a training draw of the same kind) and the run's trained models are scored on both; the models were trained
on truth-built samples. A truth-free set much easier than its truth-built twin is a finding, not a success.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd
from common import bench_parser, finish, finished_run  # bench/common.py, beside this script

from comicnb.stage4.audit import audit, leaks
from comicnb.stage4.baselines import run_baselines
from comicnb.stage4.results import result_table, sample_frame
from comicnb.stage4.scoring import model_results
from comicnb.stage4.task_sets import read_sets, training_sets, write_split
from comicnb.stage4.tasks import read_task_set
from comicnb.stage4.view import open_run

FOLDER = "tasks-truth-free"


def scored(run_dir: Path, view, sets: dict, seed: int, train_samples: int) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The result table of every baseline and model on ``sets``, and their audit (what a candidate shows besides
    the story, ``comicnb.stage4.audit``)."""
    train, _ = training_sets(view, seed, train_samples)
    results = run_baselines([*train, *sets.values()], view) + model_results(run_dir, sets=sets, view=view)
    table = result_table(sample_frame(results), by_difficulty=False)
    split = next(iter(sets.values())).split
    checks = audit(sets, view, train)
    return table[table.split == split][["task", "method", "n", "accuracy", "low", "high"]], checks


def run(run_dir: Path, split: str, seed: int, train_samples: int) -> dict:
    truth_view, blind = open_run(run_dir), open_run(run_dir, truth_free=True)
    manifest = write_split(blind, run_dir / FOLDER / split, split, seed)
    free_sets = {
        task: read_task_set(run_dir / FOLDER / split, task)
        for task, entry in manifest["tasks"].items()
        if entry.get("built") and entry.get("samples")
    }
    truth_sets = read_sets(run_dir, truth_view, split=split)
    with_truth, _ = scored(run_dir, truth_view, truth_sets, seed, train_samples)
    without, checks = scored(run_dir, blind, free_sets, seed, train_samples)
    both = pd.concat([with_truth.assign(kind="truth-built"), without.assign(kind="truth-free")], ignore_index=True)
    wide = both.pivot_table(index=["task", "method"], columns="kind", values="accuracy").reset_index()
    sizes = both.groupby(["task", "kind"]).n.max().unstack()
    return dict(
        run_dir=str(run_dir),
        split=split,
        sizes=sizes.reset_index().to_dict("records"),
        skipped={task: entry.get("reason") for task, entry in manifest["tasks"].items() if not entry.get("built")},
        table=wide.to_dict("records"),
        audit=checks[["task", "method", "kind", "accuracy", "low", "high", "chance"]].to_dict("records"),
        leaks=leaks(checks)[["task", "method", "accuracy", "low", "chance"]].to_dict("records"),
    )


def print_report(report: dict) -> None:
    print(f"{report['run_dir']}: {report['split']} sets drawn with and without the ground truth")
    print(pd.DataFrame(report["sizes"]).to_string(index=False))
    for task, why in report["skipped"].items():
        print(f"  {task} not drawn without truth: {why}")
    print(f"\naudit of the truth-free sets: {len(report['leaks'])} readable checks clear chance")
    for leak in report["leaks"]:
        print(
            f"  LEAK {leak['task']} / {leak['method']}: {leak['accuracy']:.3f} (low {leak['low']:.3f}, chance "
            f"{leak['chance']:.3f})"
        )
    table = pd.DataFrame(report["table"])
    for task, part in table.groupby("task", sort=False):
        print(f"\n{task}")
        print(part.drop(columns="task").round(3).to_string(index=False))


def main() -> None:
    parser = bench_parser(__doc__, data_root=False, repeats=None)
    parser.add_argument(
        "--run-dir", type=Path, help="a finished run of the embedded corpus (default: the newest under outputs/)"
    )
    parser.add_argument("--split", default="test", help="the split drawn and scored")
    parser.add_argument("--seed", type=int, default=0, help="seeds the draws")
    parser.add_argument("--train-samples", type=int, default=300, help="training samples per task for the baselines")
    args = parser.parse_args()
    finish(run(finished_run(args.run_dir), args.split, args.seed, args.train_samples), print_report, args.json)


if __name__ == "__main__":
    main()
