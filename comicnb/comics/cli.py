"""``comicnb comics fit|eval|baseline|folds``: train and score on COMICS cloze CSVs (see docs/comics.md).

Light to import (argparse only): ``comicnb.cli`` builds these parsers for every command line.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

TASK_CHOICES = ("text_cloze", "char_coherence")


def add_arguments(parser: argparse.ArgumentParser, formatter: type[argparse.HelpFormatter]) -> None:
    """The ``comics`` sub-commands on ``parser``."""
    from comicnb.comics.folds import DEFAULT_FOLDS
    from comicnb.comics.settings import CONTEXT_TOKENS, PAIR_VECTORS, FitSettings

    commands = parser.add_subparsers(dest="comics_command", required=True, metavar="{fit,eval,baseline,folds}")
    defaults = FitSettings()

    def common(sub: argparse.ArgumentParser, text_model: bool = True) -> None:
        sub.add_argument("--csv", required=True, help="a COMICS cloze CSV (miyyer/comics folds/ format)")
        if text_model:
            sub.add_argument(
                "--text-model",
                default=None,
                help="sentence encoder: a sentence-transformers folder or hub id (default: the packaged "
                "all-MiniLM-L6-v2, offline)",
            )
        sub.add_argument(
            "--cache", default=None, help="an .npz file of text vectors, read and extended (default: none, in memory)"
        )
        sub.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")

    fit = commands.add_parser(
        "fit",
        help="train Stage 4's text-cloze or character-coherence head on a COMICS CSV",
        description="Train a small Stage 4 sequence model on a COMICS CSV's samples as text-only panels (vision "
        "masked); books of the --hold-out folds are left out for scoring, and a validation part for early stopping "
        "is carved by whole books from the rest. The model folder records every book it saw.",
        formatter_class=formatter,
    )
    common(fit)
    fit.add_argument("--task", choices=TASK_CHOICES, default=None, help="the CSV's task (default: from its header)")
    fit.add_argument("--out", required=True, help="model folder to write (model.pt, comics_model.json)")
    fit.add_argument(
        "--hold-out",
        type=int,
        nargs="+",
        default=[],
        metavar="FOLD",
        help="book folds to leave out of training, for eval to score (default: none, train on every row)",
    )
    fit.add_argument("--folds", type=int, default=DEFAULT_FOLDS, help="number of book folds")
    fit.add_argument(
        "--max-rows", type=int, default=None, help="cap on the training rows, taken as whole books (default: all)"
    )
    for name in ("epochs", "batch_size", "lr", "weight_decay", "d_model", "num_layers", "patience", "seed"):
        value = getattr(defaults, name)
        fit.add_argument(
            f"--{name.replace('_', '-')}", dest=name, type=type(value), default=value, help=f"fit setting {name}"
        )
    fit.add_argument(
        "--pair-vectors",
        choices=PAIR_VECTORS,
        default=defaults.pair_vectors,
        help="character coherence: a candidate's vector from its first box, or from its two boxes joined in order",
    )
    fit.add_argument(
        "--context-tokens",
        choices=CONTEXT_TOKENS,
        default=defaults.context_tokens,
        help="one context token per panel (its text boxes joined) or one per text box (speech per balloon)",
    )
    fit.add_argument(
        "--input-prior",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="Stage 4's input prior (a candidate's raw cosine to the context added to its logit); default: on for "
        "text cloze, off for character coherence, whose two candidates hold the same boxes",
    )
    fit.add_argument("--overwrite", action="store_true", help="replace a model already in --out")
    fit.set_defaults(comics_func=_fit)

    evaluate = commands.add_parser(
        "eval",
        help="score a COMICS model on the books it never saw, beside the zero-shot baseline",
        description="Score a model from `comicnb comics fit` on a COMICS CSV of its task: only rows of books the "
        "model was never trained on (the rest are counted and left out), with a 95 % interval, beside the "
        "zero-shot MiniLM baseline on the same rows, chance and the published figures.",
        formatter_class=formatter,
    )
    common(evaluate, text_model=False)
    evaluate.add_argument("--model", required=True, help="model folder written by `comicnb comics fit`")
    evaluate.add_argument(
        "--include-seen",
        action="store_true",
        help="score the rows of training books too; the result is labelled contaminated",
    )
    evaluate.add_argument("--no-baseline", action="store_true", help="skip the zero-shot baseline")
    evaluate.add_argument("--report", default=None, help="also write the result as JSON to this file")
    evaluate.set_defaults(comics_func=_eval)

    baseline = commands.add_parser(
        "baseline",
        help="zero-shot MiniLM text similarity on a COMICS CSV",
        description="Score the zero-shot baseline (cosine of each candidate's text to the context's texts) on a "
        "COMICS CSV, or on the books of some folds of it; no training, so no book is seen.",
        formatter_class=formatter,
    )
    common(baseline)
    baseline.add_argument("--task", choices=TASK_CHOICES, default=None, help="the CSV's task (default: its header)")
    baseline.add_argument(
        "--fold", type=int, nargs="+", default=None, help="score only books of these folds (default: all rows)"
    )
    baseline.add_argument("--folds", type=int, default=DEFAULT_FOLDS, help="number of book folds")
    baseline.add_argument("--report", default=None, help="also write the result as JSON to this file")
    baseline.set_defaults(comics_func=_baseline)

    folds = commands.add_parser(
        "folds",
        help="book folds of COMICS CSVs: sizes per file and books shared between files",
        description="Print each file's rows and books per book fold (the same fold for a book in every file) and "
        "how many books the files share.",
        formatter_class=formatter,
    )
    folds.add_argument("--csv", required=True, nargs="+", help="COMICS cloze CSVs")
    folds.add_argument("--folds", type=int, default=DEFAULT_FOLDS, help="number of book folds")
    folds.set_defaults(comics_func=_folds)


def main(args: argparse.Namespace) -> int:
    """Run a ``comics`` sub-command; file and format errors are one line on stderr and exit status 2."""
    from comicnb.comics.reader import ComicsFormatError

    if getattr(args, "threads", None):
        import torch

        torch.set_num_threads(args.threads)
    try:
        return args.comics_func(args)
    except (ComicsFormatError, FileNotFoundError, FileExistsError, ValueError) as exc:
        print(f"comicnb comics {args.comics_command}: {exc}", file=sys.stderr)
        return 2


def _read(args: argparse.Namespace, task: str | None):
    """The CSV's table, its bad rows printed."""
    from comicnb.comics.reader import read_comics

    table = read_comics(args.csv, task)
    for line in table.report.lines():
        print(f"  {Path(args.csv).name}: {line}")
    if table.report.tied:
        print(f"  {Path(args.csv).name}: {table.report.tied} rows with identical candidates (scored as ties)")
    return table


def _fit(args: argparse.Namespace) -> int:
    from comicnb.comics.scorer import fit
    from comicnb.comics.settings import settings_from

    table = _read(args, args.task)
    keys = (
        "epochs",
        "batch_size",
        "lr",
        "weight_decay",
        "d_model",
        "num_layers",
        "patience",
        "seed",
        "pair_vectors",
        "context_tokens",
        "input_prior",
    )
    settings = settings_from({k: getattr(args, k) for k in keys})
    manifest = fit(
        table,
        args.out,
        settings,
        text_model=args.text_model,
        cache=args.cache,
        hold_out=args.hold_out,
        folds=args.folds,
        max_rows=args.max_rows,
        overwrite=args.overwrite,
    )
    print(
        f"[comicnb] comics fit: best epoch {manifest['best_epoch']}, validation accuracy "
        f"{100 * manifest['validation_accuracy']:.1f} % ({manifest['rows']['validation']} rows), "
        f"{len(manifest['trained_books'])} books seen, {manifest['seconds']['total']:.0f} s -> {args.out}/"
    )
    if args.hold_out:
        print(
            f"  score the held-out folds {args.hold_out} with: comicnb comics eval --csv {args.csv} --model {args.out}"
        )
    return 0


def _eval(args: argparse.Namespace) -> int:
    from comicnb.comics.evaluate import evaluate
    from comicnb.comics.scorer import load_scorer

    _, manifest = load_scorer(args.model)  # a missing model fails before the CSV is read
    table = _read(args, manifest["task"])
    result = evaluate(args.model, table, args.include_seen, args.cache, baseline=not args.no_baseline)
    if not result.scored:
        print(
            f"comicnb comics eval: nothing to score: all {len(table)} rows of {args.csv} are of books the model was "
            f"trained on (--include-seen scores them, as contaminated)",
            file=sys.stderr,
        )
        return 1
    print("\n".join(result.lines()))
    if args.report:
        Path(args.report).write_text(json.dumps(result.as_dict(), indent=1) + "\n", encoding="utf-8")
    return 0


def _baseline(args: argparse.Namespace) -> int:
    from comicnb.comics.embed import TextVectors
    from comicnb.comics.evaluate import CITATION, INTERVAL_NOTES, published_lines, score, short, zero_shot
    from comicnb.comics.folds import in_folds

    started = time.perf_counter()
    table = _read(args, args.task)
    samples = in_folds(table.samples, args.fold, args.folds) if args.fold is not None else table.samples
    if not samples:
        print(f"comicnb comics baseline: no rows to score in {args.csv}", file=sys.stderr)
        return 1
    vectors = TextVectors(args.text_model, args.cache)
    result = score(f"zero-shot {short(vectors.label)}", zero_shot(samples, vectors), samples)
    vectors.save()
    where = f"books of folds {args.fold} of {args.folds}" if args.fold is not None else "all rows"
    note = INTERVAL_NOTES[result.interval]
    print(f"[comicnb] comics baseline {table.task} on {Path(args.csv).name} ({where}), accuracy ({note}):")
    print(result.line())
    print(f"  {'chance':<22} {100 * table.chance:5.1f} %")
    print(f"  ({result.n} rows of {result.books} books, {time.perf_counter() - started:.0f} s)")
    print("\n".join(published_lines(table.task)))
    if args.report:
        report = dict(
            task=table.task,
            csv=str(args.csv),
            sha256=table.sha256,
            folds=args.fold,
            n_folds=args.folds,
            bad_rows=dict(table.report.skipped),
            score=result.__dict__,
            chance=table.chance,
            citation=CITATION,
        )
        Path(args.report).write_text(json.dumps(report, indent=1) + "\n", encoding="utf-8")
    return 0


def _folds(args: argparse.Namespace) -> int:
    from comicnb.comics.folds import fold_sizes
    from comicnb.comics.reader import read_comics

    tables = [read_comics(path) for path in args.csv]
    for table in tables:
        sizes = fold_sizes(table.samples, args.folds)
        bad = f", {sum(table.report.skipped.values())} bad rows" if table.report.skipped else ""
        print(f"{table.path.name} ({table.task}): {len(table)} rows, {len(table.books)} books{bad}")
        print("  " + "; ".join(f"fold {s['fold']}: {s['rows']} rows / {s['books']} books" for s in sizes))
    for i, first in enumerate(tables):
        for second in tables[i + 1 :]:
            shared = set(first.books) & set(second.books)
            print(f"{first.path.name} and {second.path.name} share {len(shared)} books (each in one fold in both)")
    return 0
