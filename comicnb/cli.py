"""The ``comicnb`` command line: ``run`` the workbook, ``synth`` a corpus."""

from __future__ import annotations

import argparse
import sys


def _run(args: argparse.Namespace) -> int:
    """Run the numbered notebooks of a profile."""
    from comicnb.runner import RunError, run

    try:
        summary = run(args.profile, args.run, only=args.only, log_output=args.log_output)
    except RunError as exc:
        print(f"comicnb run: {exc}", file=sys.stderr)
        return 1
    total = sum(n.seconds for n in summary.notebooks)
    print(f"[comicnb] run {summary.run}: {len(summary.notebooks)} notebooks in {total:.0f} s -> {summary.run_dir}/")
    return 0


def _synth(args: argparse.Namespace) -> int:
    """Draw a synthetic corpus."""
    from comicnb import synth

    return synth.main(args)


def build_parser() -> argparse.ArgumentParser:
    """The argument parser with one sub-command per job."""
    from comicnb import synth

    parser = argparse.ArgumentParser(prog="comicnb", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)

    run = commands.add_parser("run", help="run the numbered notebooks with papermill into outputs/<run>/")
    run.add_argument("--profile", default="demo", help="parameter set: a folder of params/ (default: demo)")
    run.add_argument("--run", default=None, help="name of the run folder under outputs/ (default: profile-time)")
    run.add_argument("--only", nargs="+", default=None, help="notebooks to run, by number or name (e.g. 01 02)")
    run.add_argument("--log-output", action="store_true", help="stream the notebooks' output to the terminal")
    run.set_defaults(func=_run)

    synth_parser = commands.add_parser("synth", help="draw a synthetic comics corpus with ground truth")
    synth.add_arguments(synth_parser)
    synth_parser.set_defaults(func=_synth)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``python -m comicnb`` and the ``comicnb`` script."""
    args = build_parser().parse_args(argv)
    return args.func(args)
