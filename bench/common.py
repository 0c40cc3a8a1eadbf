"""What the benchmarks share: their common options, the corpus they measure, a run folder, and the report's end.

Each bench_*.py imports this module from beside it (``python bench/bench_x.py`` puts bench/ on the path).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path


def bench_parser(
    doc: str,
    *,
    data_root: bool = True,
    repeats: int | None = 3,
    repeats_help: str = "timed repetitions; the median is reported",
) -> argparse.ArgumentParser:
    """A parser described by the first line of doc, with --data-root (if asked), --repeats (unless None) and --json.

    The bench adds its own options to it and parses the command line itself.
    """
    parser = argparse.ArgumentParser(description=doc.splitlines()[0])
    if data_root:
        parser.add_argument("--data-root", type=Path, help="corpus folder (default: generate the demo corpus)")
    if repeats is not None:
        parser.add_argument("--repeats", type=int, default=repeats, help=repeats_help)
    parser.add_argument("--json", type=Path, help="also write the results here")
    return parser


@contextlib.contextmanager
def measured_corpus(data_root: Path | None) -> Iterator[tuple[Path, Path]]:
    """(corpus folder, scratch folder); without data_root the demo corpus is generated into the scratch folder."""
    with tempfile.TemporaryDirectory() as scratch:
        if data_root is None:
            from comicnb.corpus import synth  # only needed for the default corpus

            data_root = Path(scratch) / "demo"
            synth.generate(data_root)
        yield data_root, Path(scratch)


def run_folder(data_root: Path, scratch: Path, **load_options: object) -> Path:
    """scratch/run holding the corpus tables of data_root as notebook 01 writes them; options go to load_corpus."""
    from comicnb import corpus

    run_dir = scratch / "run"
    corpus.save_corpus(corpus.load_corpus(data_root, **load_options), run_dir)
    return run_dir


def yes_no(ok: bool) -> str:
    """The verdict of a goal line."""
    return "yes" if ok else "NO"


def finish(report: dict, print_report: Callable[[dict], None], json_path: Path | None) -> None:
    """Print the report, and write it as JSON where --json asked for it."""
    print_report(report)
    if json_path:
        json_path.write_text(json.dumps(report, indent=2))


def finished_run(run_dir: Path | None) -> Path:
    """The run a run-level benchmark measures: the one given, else the newest finished run (a folder of outputs/ with
    a metrics.json) of the embedded corpus; without one, SystemExit naming the command that makes one."""
    if run_dir is not None:
        return run_dir
    outputs = Path(__file__).resolve().parents[1] / "outputs"
    runs = sorted(outputs.glob("*/metrics.json"), key=lambda p: p.stat().st_mtime)
    runs = [p.parent for p in runs if (p.parent / "corpus.json").is_file() and not p.parent.name.startswith("raw")]
    if not runs:
        raise SystemExit("no finished run under outputs/ to measure: run `make demo` first, or pass --run-dir")
    return runs[-1]
