"""``comicnb comicspap encode|fit|eval|predict|export|fixture`` (see docs/comicspap.md).

Light to import (argparse only): ``comicnb.cli`` builds these parsers for every command line.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

# ComicsPAP's skills as in comicnb.comicspap.format.SKILLS (which imports pyarrow); a test keeps them equal.
SKILL_NAMES = ("sequence_filling", "char_coherence", "visual_closure", "text_closure", "caption_relevance")


def add_arguments(parser: argparse.ArgumentParser, formatter: type[argparse.HelpFormatter]) -> None:
    """The ``comicspap`` sub-commands on ``parser``."""
    commands = parser.add_subparsers(
        dest="comicspap_command", required=True, metavar="{encode,fit,eval,predict,export,fixture}"
    )

    encode = commands.add_parser(
        "encode",
        help="one split of ComicsPAP's parquet files into a run: panels encoded by Stage 3, samples as task sets",
        description="Stream one split of the ComicsPAP folder (row group by row group), decode every panel, read its "
        "text by OCR (or leave it masked), encode it with the run's Stage 3 model into <run>/comicspap/<split>/, and "
        "write the samples as task sets with a manifest of the files, counts and bad rows. Run again to resume.",
        formatter_class=formatter,
    )
    encode.add_argument("--data", required=True, help="the ComicsPAP folder (<skill>/<split>-*.parquet inside)")
    encode.add_argument("--split", required=True, choices=("train", "val", "test"), help="the split to encode")
    encode.add_argument("--run-dir", required=True, help="the comicnb run whose Stage 3 model encodes the panels")
    encode.add_argument(
        "--checkpoint", default=None, help="a Stage 3 checkpoint (default: the one the run's store was made with)"
    )
    encode.add_argument("--skills", nargs="+", choices=SKILL_NAMES, default=list(SKILL_NAMES), help="skills to read")
    encode.add_argument(
        "--text", choices=("ocr", "none"), default="ocr", help="panel text: read by RapidOCR, or masked"
    )
    encode.add_argument("--max-panels", type=int, default=16, help="most context panels plus options of a row")
    encode.add_argument("--rows-per-chunk", type=int, default=16, help="rows per forward pass and per record")
    encode.add_argument("--revision", default=None, help="the dataset's hub revision, where the download left none")
    encode.add_argument("--overwrite", action="store_true", help="replace an encoding of other files or settings")
    encode.add_argument("--no-progress", action="store_true", help="no progress bar")
    encode.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    encode.set_defaults(comicspap_func=_encode)

    fit = commands.add_parser(
        "fit",
        help="the Stage 4 model for ComicsPAP: fine-tuned on its train split, or the run's as it is (--zero-shot)",
        description="Train the run's Stage 4 heads on the encoded ComicsPAP train split, a share of it held out for "
        "early stopping (the val split stays unseen); or, with --zero-shot, take the run's Stage 4 model unchanged.",
        formatter_class=formatter,
    )
    fit.add_argument("--run-dir", required=True)
    fit.add_argument("--zero-shot", action="store_true", help="use the run's Stage 4 model as it is")
    fit.add_argument("--init", choices=("run", "fresh"), default="run", help="start from the run's model or anew")
    for name, kind, default in (
        ("epochs", int, 20),
        ("batch-size", int, 32),
        ("lr", float, 5e-4),
        ("patience", int, 3),
        ("hold-out", float, 0.1),
        ("seed", int, 0),
    ):
        fit.add_argument(f"--{name}", type=kind, default=default, help=f"fit setting (default {default})")
    fit.add_argument("--overwrite", action="store_true", help="replace the run's ComicsPAP model")
    fit.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    fit.set_defaults(comicspap_func=_fit)

    evaluate = commands.add_parser(
        "eval",
        help="accuracy per skill and pooled, beside chance, the no-learning baselines and the published table",
        description="Score the run's ComicsPAP model and the baselines on an encoded split with labels (never the "
        "test split, whose labels are hidden): accuracy per skill and pooled over samples as ComicsPAP's "
        "evaluate.py, 95 %% bootstrap intervals over samples, chance, and the published results.",
        formatter_class=formatter,
    )
    evaluate.add_argument("--run-dir", required=True)
    evaluate.add_argument("--split", default="val", choices=("train", "val", "test"))
    evaluate.add_argument("--model", default=None, help="a Stage 4 checkpoint (default: the one `fit` wrote)")
    evaluate.add_argument("--no-model", action="store_true", help="score the baselines only")
    evaluate.add_argument("--report", default=None, help="also write the result as JSON to this file")
    evaluate.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    evaluate.set_defaults(comicspap_func=_eval)

    predict = commands.add_parser(
        "predict",
        help="the model's answers to an encoded split (the test split's for the competition server)",
        description="Write the model's answer to every sample as ComicsPAP's evaluate.py writes them "
        "(results_<skill>.json) and all of them in predictions.json, under <run>/comicspap/predictions/<split>/.",
        formatter_class=formatter,
    )
    predict.add_argument("--run-dir", required=True)
    predict.add_argument("--split", default="test", choices=("train", "val", "test"))
    predict.add_argument("--model", default=None, help="a Stage 4 checkpoint (default: the one `fit` wrote)")
    predict.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    predict.set_defaults(comicspap_func=_predict)

    export = commands.add_parser(
        "export",
        help="the run's task sets as ComicsPAP parquet, to score ComicsPAP models on this corpus",
        description="Write the run's fixed task sets (default: test) as ComicsPAP parquet files, one folder per "
        "skill, labelled as ComicsPAP's val split so its evaluate.py scores them; text tasks are lettered.",
        formatter_class=formatter,
    )
    export.add_argument("--run-dir", required=True)
    export.add_argument("--out", default=None, help="folder to write (default: <run>/comicspap/export)")
    export.add_argument("--split", default="test", choices=("val", "test"), help="which of the run's sets")
    export.add_argument("--as-split", default="val", help="the split name the rows carry (default val)")
    export.set_defaults(comicspap_func=_export)

    fixture = commands.add_parser(
        "fixture",
        help="a small ComicsPAP folder from a run's task sets, bad rows included (to try every command offline)",
        description="Write a ComicsPAP folder in the dataset's exact schema from the run's task sets: train from its "
        "validation sets, val from its test sets, test from them with labels hidden, and one bad row of each kind.",
        formatter_class=formatter,
    )
    fixture.add_argument("--run-dir", required=True)
    fixture.add_argument("--out", required=True)
    fixture.add_argument("--copies", type=int, default=1, help="repeat every good row this many times")
    fixture.set_defaults(comicspap_func=_fixture)


def main(args: argparse.Namespace) -> int:
    """Run a ``comicspap`` sub-command; file, format and refusal errors are one line on stderr, exit status 2."""
    from comicnb.comicspap.format import ComicsPAPFormatError

    if getattr(args, "threads", None):
        import torch

        torch.set_num_threads(args.threads)
    try:
        return args.comicspap_func(args)
    except (ComicsPAPFormatError, FileNotFoundError, FileExistsError, ValueError) as exc:
        print(f"comicnb comicspap {args.comicspap_command}: {exc}", file=sys.stderr)
        return 2


def _encode(args: argparse.Namespace) -> int:
    from comicnb.comicspap.encode import EncodeSettings, encode, split_dir

    settings = EncodeSettings(text=args.text, max_panels=args.max_panels, rows_per_chunk=args.rows_per_chunk)
    manifest = encode(
        args.data,
        args.split,
        args.run_dir,
        args.checkpoint,
        settings,
        args.skills,
        args.revision,
        args.overwrite,
        progress=not args.no_progress,
    )
    timing = manifest["timing"]
    print(
        f"[comicnb] comicspap encode {args.split}: {sum(manifest['samples'].values())} samples of "
        f"{sum(manifest['rows'].values())} rows, {timing['rows_computed']} rows computed at "
        f"{timing['rows_per_second']:.2f} rows/s -> {split_dir(args.run_dir, args.split)}/"
    )
    print("  samples: " + ", ".join(f"{k} {v}" for k, v in manifest["samples"].items()))
    if manifest["bad_rows"]:
        print("  bad rows: " + ", ".join(f"{k} {v}" for k, v in manifest["bad_rows"].items()) + " (manifest.json)")
    return 0


def _fit(args: argparse.Namespace) -> int:
    from comicnb.comicspap.fit import FitSettings, fit
    from comicnb.comicspap.scores import model_path

    settings = FitSettings(
        epochs=args.epochs,
        batch_size=args.batch_size,
        lr=args.lr,
        patience=args.patience,
        hold_out=args.hold_out,
        seed=args.seed,
        init=args.init,
    )
    record = fit(args.run_dir, settings, zero_shot=args.zero_shot, overwrite=args.overwrite)
    if record["zero_shot"]:
        print(f"[comicnb] comicspap fit: the run's Stage 4 model, unchanged -> {model_path(args.run_dir)}")
    else:
        print(
            f"[comicnb] comicspap fit: best epoch {record['best_epoch']}, held-out accuracy "
            f"{100 * record['held_out_accuracy']:.1f} %, {record['seconds']:.0f} s -> {model_path(args.run_dir)}"
        )
    return 0


def _eval(args: argparse.Namespace) -> int:
    from comicnb.comicspap.scores import score_split, table_lines

    report = score_split(args.run_dir, args.split, args.model, with_model=not args.no_model)
    print("\n".join(table_lines(report)))
    if args.report:
        Path(args.report).write_text(json.dumps(report, indent=1) + "\n", encoding="utf-8")
    return 0


def _predict(args: argparse.Namespace) -> int:
    from comicnb.comicspap.scores import predict

    written = predict(args.run_dir, args.split, args.model)
    counts = ", ".join(f"{k} {v}" for k, v in written["samples"].items())
    print(f"[comicnb] comicspap predict {args.split}: {counts} -> {written['folder']}/")
    return 0


def _export(args: argparse.Namespace) -> int:
    from comicnb.comicspap.export import export

    record = export(args.run_dir, args.out, args.split, args.as_split)
    rows = ", ".join(f"{k} {v}" for k, v in record["rows"].items())
    print(f"[comicnb] comicspap export ({args.split} sets as {args.as_split}): {rows}")
    for task, why in record["not_exported"].items():
        print(f"  not exported: {task}: {why}")
    return 0


def _fixture(args: argparse.Namespace) -> int:
    from comicnb.comicspap.fixture import build_fixture

    counts = build_fixture(args.run_dir, args.out, args.copies)
    for split, rows in counts.items():
        print(f"[comicnb] comicspap fixture {split}: " + ", ".join(f"{k} {v}" for k, v in rows.items()))
    return 0
