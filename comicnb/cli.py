"""The ``comicnb`` command line: ``run`` the workbook, ``synth`` a corpus, ``train`` a stage, ``embed`` panels."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


def _run(args: argparse.Namespace) -> int:
    """Run the numbered notebooks of a profile."""
    from comicnb.runner import RunError, run

    try:
        summary = run(args.profile, args.run, only=args.only, start=args.start, log_output=args.log_output)
    except RunError as exc:
        print(f"comicnb run: {exc}", file=sys.stderr)
        return 1
    total = sum(n.seconds for n in summary.notebooks)
    print(f"[comicnb] run {summary.run}: {len(summary.notebooks)} notebooks in {total:.0f} s -> {summary.run_dir}/")
    return 0


def _synth(args: argparse.Namespace) -> int:
    """Draw a synthetic corpus."""
    from comicnb.corpus import synth

    return synth.main(args)


def _train(args: argparse.Namespace) -> int:
    """Train a stage from a params file (the keys of the stage's notebook) and/or the seed's flags."""
    import yaml

    from comicnb.stage3 import checkpoints
    from comicnb.stage3.config import UnknownSettingError, split_settings
    from comicnb.stage3.seed_cli import WANDB_MESSAGE, prepare_run, seed_overrides
    from comicnb.stage3.trainer import train_stage3

    settings = (yaml.safe_load(open(args.params, encoding="utf-8")) or {}) if args.params else {}
    params_run_dir = settings.pop("run_dir", None)  # the trainer takes no run_dir setting
    settings.update(seed_overrides(args))
    if args.use_wandb:
        print(f"comicnb train: {WANDB_MESSAGE}", file=sys.stderr)
    try:
        split_settings(settings)  # a misnamed key fails before any run folder is made
        if args.data_root and args.run_name:  # an existing run's checkpoints are refused before its pages are re-read
            checkpoints(Path(args.output_dir) / args.run_name).prepare(args.resume, args.overwrite)
        run_dir = prepare_run(args, settings) if args.data_root else (args.run_dir or params_run_dir)
        if not run_dir:
            print(
                "comicnb train: give --run-dir (a run folder holding notebook 01's pages table) or --data_root "
                "(a corpus folder to read first)",
                file=sys.stderr,
            )
            return 2
        trainer = train_stage3(run_dir, settings, resume=args.resume, overwrite=args.overwrite)
    except (UnknownSettingError, FileNotFoundError, FileExistsError, ValueError) as exc:
        print(f"comicnb train: {exc}", file=sys.stderr)
        return 2
    if trainer.accelerator.is_main_process:
        files = checkpoints(run_dir)
        best = trainer.best
        print(
            f"[comicnb] stage3: {trainer.step} steps -> {files.last}; best {best.get('metric')} "
            f"{best.get('value', float('nan')):.3f} at epoch {best.get('epoch')} -> {files.best}"
        )
        print(trainer.history.frames()[1].to_string(index=False))
    return 0


def _embed(args: argparse.Namespace) -> int:
    """Generate (or resume) a run's panel embedding store."""
    from comicnb.store import EmbedConfig, StoreMismatchError, generate, parse_shard
    from comicnb.store.writer import run_pages_per_chunk

    try:
        chunk = args.pages_per_chunk or run_pages_per_chunk(args.run_dir, args.store, args.overwrite)
        cfg = EmbedConfig(pages_per_chunk=chunk, num_workers=args.num_workers, precision=args.precision)
        summary = generate(
            args.run_dir,
            args.checkpoint,
            args.store,
            cfg=cfg,
            shard=parse_shard(args.shard) if args.shard else None,
            overwrite=args.overwrite,
            overwrite_hint="--overwrite",
        )
    except (StoreMismatchError, FileNotFoundError, ValueError) as exc:
        print(f"comicnb embed: {exc}", file=sys.stderr)
        return 1
    print(
        f"[comicnb] embed shard {summary['shard']}: {summary['computed_chunks']} chunks encoded, "
        f"{summary['skipped_chunks']} already done, {summary['encoded_panels']} panels in {summary['seconds']:.1f} s "
        f"-> {summary['store']}" + ("" if summary["complete"] else " (other shards still to run)")
    )
    return 0


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Shows an option's default where it has a meaningful one (not for flags, nor options whose help says it)."""

    def _get_help_string(self, action: argparse.Action) -> str:
        hidden = action.default is None or action.default is False or action.default == argparse.SUPPRESS
        if hidden or "default" in (action.help or ""):
            return action.help or ""
        return super()._get_help_string(action)


def build_parser() -> argparse.ArgumentParser:
    """The argument parser with one sub-command per job."""
    from comicnb.corpus import synth
    from comicnb.precision import PRECISIONS
    from comicnb.stage3.seed_cli import add_seed_arguments

    parser = argparse.ArgumentParser(prog="comicnb", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)

    run = commands.add_parser(
        "run",
        help="run the numbered notebooks with papermill into outputs/<run>/",
        description="Run the numbered notebooks of a profile with papermill and render them.",
        formatter_class=HelpFormatter,
    )
    run.add_argument("--profile", default="demo", help="parameter set: a folder of params/ (default: demo)")
    run.add_argument("--run", default=None, help="name of the run folder under outputs/ (default: profile-time)")
    run.add_argument("--only", nargs="+", default=None, help="notebooks to run, by number or name (e.g. 01 02)")
    run.add_argument(
        "--from",
        dest="start",
        default=None,
        metavar="NN",
        help="continue the run folder of --run from this notebook: rerun it and every later one, keep the earlier "
        "ones' artefacts",
    )
    run.add_argument("--log-output", action="store_true", help="stream the notebooks' output to the terminal")
    run.set_defaults(func=_run)

    synth_parser = commands.add_parser(
        "synth",
        help="draw a synthetic comics corpus with ground truth",
        description="Draw the embedded synthetic corpus: same seed, same bytes.",
        formatter_class=HelpFormatter,
    )
    synth.add_arguments(synth_parser)
    synth_parser.set_defaults(func=_synth)

    train = commands.add_parser(
        "train",
        help="train a stage headless (accelerate launch works too)",
        description="Train a stage headless: the same training as its notebook.",
        formatter_class=HelpFormatter,
    )
    train.add_argument("stage", choices=["stage3"], help="which stage to train")
    train.add_argument("--params", default=None, help="YAML with the stage notebook's parameters")
    train.add_argument("--run-dir", default=None, help="run folder with notebook 01's pages table (default: params)")
    train.add_argument("--resume", action="store_true", help="continue from the run's last checkpoint, if any")
    train.add_argument(
        "--overwrite",
        action="store_true",
        help="replace the run's existing checkpoints (checkpoint.pt and best_model.pt) with a new training run",
    )
    add_seed_arguments(train)
    train.set_defaults(func=_train)

    embed = commands.add_parser(
        "embed",
        help="encode every panel of a run into its embedding store (resumable)",
        description="Encode every panel of a run with its Stage 3 checkpoint into the run's "
        "embedding store; run again to resume, --shard to split the work.",
        formatter_class=HelpFormatter,
    )
    embed.add_argument("--run-dir", required=True, help="run folder with the pages table and the Stage 3 checkpoint")
    embed.add_argument(
        "--checkpoint",
        default=None,
        help="Stage 3 checkpoint (default: RUN_DIR/stage3/best_model.pt, else stage3/checkpoint.pt)",
    )
    embed.add_argument("--store", default=None, help="store path (default: RUN_DIR/panel_embeddings.zarr)")
    embed.add_argument("--shard", default=None, help="i/n: encode every n-th chunk from the i-th (0-based)")
    embed.add_argument(
        "--pages-per-chunk",
        type=int,
        default=None,
        help="pages per forward batch and zarr chunk (default: the existing store's, else notebook 03's in "
        "RUN_DIR/params.yaml, else 16)",
    )
    embed.add_argument("--num-workers", type=int, default=0, help="DataLoader processes decoding pages")
    embed.add_argument("--precision", default="auto", choices=list(PRECISIONS), help="inference precision")
    embed.add_argument("--overwrite", action="store_true", help="replace a store made from something else")
    embed.set_defaults(func=_embed)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``python -m comicnb`` and the ``comicnb`` script."""
    args = build_parser().parse_args(argv)
    return args.func(args)
