"""The ``comicnb`` command line: ``run`` the workbook, ``synth`` a corpus, ``train`` a stage, ``embed`` panels,
build Stage 4 ``tasks``, fit and score on ``comics`` folds and on ``comicspap``."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

DESCRIPTION = (
    "comicnb, the comics workbook's command line: run the notebooks (run), draw a corpus (synth), read page images "
    "(detect), train a stage "
    "(train), encode panels (embed), search panels by text or image (search), build Stage 4 task sets (tasks), fit "
    "and score on COMICS folds (comics) and on ComicsPAP (comicspap), export and search Stage 4 strips. "
    "`comicnb COMMAND --help` describes each."
)


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
    reports = [n.html for n in summary.notebooks if n.html]
    if "05_evaluation.html" in reports:
        where = summary.run_dir
        print(f"[comicnb] the results: {where}/05_evaluation.html, for scripts {where}/metrics.json")
    elif reports:
        print(f"[comicnb] the last report: {summary.run_dir}/{reports[-1]}")
    return 0


def _synth(args: argparse.Namespace) -> int:
    """Draw a synthetic corpus."""
    from comicnb.corpus import synth

    return synth.main(args)


def _detect(args: argparse.Namespace) -> int:
    """Detect panels, reading order and text on page images."""
    from comicnb.detect.cli import main

    return main(args)


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


# comicnb.stage4.config.ABLATIONS' names, spelled out so that building the parser imports no model code (a test
# keeps the two equal).
STAGE4_ABLATIONS = ("no_transformer", "text_only", "vision_only", "balloon_tokens")


def _train_stage4(args: argparse.Namespace) -> int:
    """Train Stage 4 from a params file (notebook 04's keys) and/or the seed's train_stage4.py flags."""
    import yaml

    from comicnb.stage4.config import NOTEBOOK_KEYS, UnknownSettingError, checkpoints, split_stage4_settings
    from comicnb.stage4.seed_cli import WANDB_MESSAGE, seed_overrides, seed_store
    from comicnb.stage4.trainer import NonFiniteLossError, train_stage4

    settings = (yaml.safe_load(open(args.params, encoding="utf-8")) or {}) if args.params else {}
    notebook = {key: settings.pop(key) for key in NOTEBOOK_KEYS if key in settings}  # not training settings
    settings.update(seed_overrides(args, settings.get("task_weights")))
    if args.use_wandb:
        print(f"comicnb train: {WANDB_MESSAGE}", file=sys.stderr)
    named = Path(args.output_dir) / args.run_name if args.run_name else None
    run_dir = args.run_dir or notebook.get("run_dir") or named
    if not run_dir:
        print(
            "comicnb train: give --run-dir (a run folder with its embedding store and task sets) or --run_name "
            "(the run folder under --output_dir)",
            file=sys.stderr,
        )
        return 2
    run_dir = Path(run_dir)
    try:
        split_stage4_settings(settings)  # a misnamed key fails before anything is read
        store = seed_store(args, run_dir, notebook.get("store") or None)
        trainer = train_stage4(
            run_dir, settings, resume=args.resume, overwrite=args.overwrite, store=store, ablation=args.ablation
        )
    except (UnknownSettingError, FileNotFoundError, FileExistsError, ValueError) as exc:
        print(f"comicnb train: {exc}", file=sys.stderr)
        return 2
    except NonFiniteLossError as exc:
        print(f"comicnb train: {exc}", file=sys.stderr)
        return 1
    if trainer.accelerator.is_main_process:
        files = checkpoints(run_dir, args.ablation)
        best = trainer.best
        print(
            f"[comicnb] stage4: {trainer.step} steps -> {files.last}; best {best.get('metric')} "
            f"{best.get('value', float('nan')):.3f} at epoch {best.get('epoch')} -> {files.best}"
        )
        print(trainer.history.frames()[1].to_string(index=False))
    return 0


def _tasks(args: argparse.Namespace) -> int:
    """Build (or check) a run's fixed Stage 4 validation and test task sets, as notebook 04, part 1 does."""
    from comicnb.stage4.task_sets import ensure_task_sets
    from comicnb.stage4.tasks import task_dir
    from comicnb.stage4.view import open_run

    try:
        view = open_run(args.run_dir, args.store, args.checkpoint)
        built = ensure_task_sets(
            view,
            args.run_dir,
            seed=args.seed,
            limits=args.max_samples or None,
            rebuild=args.overwrite,
            remedy="rebuild them with --overwrite",
        )
    except (FileNotFoundError, ValueError, KeyError) as exc:  # TaskSetsStaleError is a ValueError
        print(f"comicnb tasks: {exc}", file=sys.stderr)
        return 2
    for split, manifest in built.manifests.items():
        folder = task_dir(args.run_dir, split)
        if split in built.reused:
            print(f"[comicnb] tasks {split}: the sets in {folder}/ are up to date")
            continue
        counts = {t: e.get("samples", 0) for t, e in manifest["tasks"].items() if e.get("built")}
        print(f"[comicnb] tasks {split}: {counts} -> {folder}/")
    for line in built.not_built():
        print(f"  {line}")
    return 0


def _embed(args: argparse.Namespace) -> int:
    """Generate (or resume) a run's panel embedding store."""
    from comicnb.store import EmbedConfig, StoreMismatchError, generate, parse_shard
    from comicnb.store.writer import run_pages_per_chunk

    try:
        chunk = args.pages_per_chunk or run_pages_per_chunk(args.run_dir, args.store, args.overwrite)
        cfg = EmbedConfig(
            pages_per_chunk=chunk, num_workers=args.num_workers, precision=args.precision, text_free=args.text_free
        )
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


def _comicspap(args: argparse.Namespace) -> int:
    """Encode, fit, score, predict and export ComicsPAP (comicnb.comicspap)."""
    from comicnb.comicspap.cli import main as comicspap_main

    return comicspap_main(args)


def _comics(args: argparse.Namespace) -> int:
    """Train and score on COMICS cloze CSVs (comicnb.comics)."""
    from comicnb.comics.cli import main as comics_main

    return comics_main(args)


def _export_stage4(args: argparse.Namespace) -> int:
    """Export (or resume exporting) a run's pages through its Stage 4 model: stage4_embeddings.zarr for Stage 5."""
    from comicnb.stage4.export import export_stage4
    from comicnb.store import StoreMismatchError

    try:
        summary = export_stage4(
            args.run_dir,
            args.checkpoint,
            args.out,
            store=args.store,
            pages_per_chunk=args.pages_per_chunk,
            overwrite=args.overwrite,
            overwrite_hint="--overwrite",
        )
    except (StoreMismatchError, FileNotFoundError, ValueError, RuntimeError) as exc:
        print(f"comicnb export-stage4: {exc}", file=sys.stderr)
        return 1
    print(
        f"[comicnb] export-stage4: {summary['computed_chunks']} chunks exported, {summary['skipped_chunks']} already "
        f"done; {summary['pages']} pages ({summary['panels']} panels, d_model {summary['d_model']}) in "
        f"{summary['seconds']:.1f} s -> {summary['export']}"
    )
    return 0


def page_index_of(pages: Any, page: str) -> int:
    """A page of a store's metadata by its index or its name, ``book/page`` (or the metadata's ``page_id``); a name
    not there is a ValueError naming the closest ones."""
    from comicnb.settings import closest

    if page.isdigit():
        return int(page)
    names = [f"{b}/{p}" for b, p in zip(pages.book_id, pages.page_name)]
    ids = list(pages.page_id) if "page_id" in pages else []
    for known in (names, ids):
        if page in known:
            return known.index(page)
    close = closest(page, names, cutoff=0.5)
    hint = f"; did you mean {', '.join(close)}?" if close else f" (e.g. {names[0]})" if names else ""
    raise ValueError(f"no page {page!r}: give a page index or book/page{hint}")


def _search_strips(args: argparse.Namespace) -> int:
    """Print the pages whose Stage 4 strip embeddings are nearest a page's ("pages like this one")."""
    from comicnb.stage4.export import EXPORT_NAME, open_export_group, search_strips
    from comicnb.store import load_metadata

    export = Path(args.export) if args.export else Path(args.run_dir) / EXPORT_NAME
    try:
        open_export_group(export)  # a missing export: the error names export-stage4
        pages = load_metadata(export)
        index = page_index_of(pages, args.page)
        table = search_strips(export, index, args.k)
    except ValueError as exc:
        print(f"comicnb search-strips: {exc}", file=sys.stderr)
        return 2
    except (FileNotFoundError, RuntimeError) as exc:
        print(f"comicnb search-strips: {exc}", file=sys.stderr)
        return 1
    page = pages.iloc[index]
    print(f"[comicnb] pages like page {index} ({page.book_id} / {page.page_name}), by strip cosine:")
    print(table.to_string(index=False))
    return 0


HIT_COLUMNS = ["rank", "score", "book_id", "page_name", "slot", "text"]
TEXT_WIDTH = 70  # characters of a hit's text shown in the terminal table (the gallery and --csv keep all of it)


def _search(args: argparse.Namespace) -> int:
    """Search a run's panels by a text or an image query: a table of hits, and a gallery image on request."""
    from comicnb.search import PanelSearch
    from comicnb.stage3 import checkpoints
    from comicnb.store import STORE_NAME, StoreMismatchError, open_embeddings

    if bool(args.text) == bool(args.image):
        print("comicnb search: give one query, --text TEXT or --image FILE", file=sys.stderr)
        return 2
    run_dir = Path(args.run_dir)
    store = Path(args.store) if args.store else run_dir / STORE_NAME
    try:
        recorded = open_embeddings(store).attrs.get("checkpoint")
        checkpoint = args.checkpoint or (recorded if recorded and Path(recorded).is_file() else None)
        search = PanelSearch(store, checkpoint=checkpoint or checkpoints(run_dir).pick("best"))
        if args.image:
            from PIL import Image

            with Image.open(args.image) as image:
                query: Any = image.convert("RGB")
            vectors = search.encode_query(images=search.model.image_transform(query)[None])
        else:
            query = args.text
            vectors = search.encode_query(texts=[args.text])
        hits = search.query(vectors, k=args.k)
    except (FileNotFoundError, StoreMismatchError, ValueError, RuntimeError, OSError) as exc:
        print(f"comicnb search: {exc}", file=sys.stderr)
        return 1
    shown = hits[HIT_COLUMNS].copy()
    shown["text"] = [t if len(t) <= TEXT_WIDTH else t[: TEXT_WIDTH - 3] + "..." for t in shown.text.fillna("")]
    print(f"[comicnb] panels of {store} nearest {'the image ' + args.image if args.image else repr(args.text)}:")
    width = int(shown.text.str.len().max() or 4)
    text = {"text": lambda t: f"{t:<{width}}"}  # left-aligned, as text reads
    print(shown.to_string(index=False, float_format=lambda x: f"{x:.3f}", formatters=text, justify="left"))
    if args.csv:
        hits.to_csv(args.csv, index=False)
        print(f"[comicnb] every column of the hits -> {args.csv}")
    if args.gallery:
        import matplotlib

        matplotlib.use("Agg")
        from comicnb.corpus import load_run_pages
        from comicnb.figures import gallery

        pages, data_root = load_run_pages(run_dir)
        title = "image query" if args.image else "text query"
        gallery([(title, query)], hits, pages, data_root).savefig(args.gallery, dpi=120, bbox_inches="tight")
        print(f"[comicnb] gallery -> {args.gallery}")
    return 0


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Shows an option's default where it has a meaningful one (not for flags, nor options whose help says it)."""

    def _get_help_string(self, action: argparse.Action) -> str:
        flag = action.nargs == 0  # --resume, --no-text-free: their "default" is the opposite of what they do
        hidden = flag or action.default is None or action.default is False or action.default == argparse.SUPPRESS
        if hidden or "default" in (action.help or ""):
            return action.help or ""
        return super()._get_help_string(action)


def build_parser() -> argparse.ArgumentParser:
    """The argument parser with one sub-command per job."""
    from comicnb.corpus import synth
    from comicnb.precision import PRECISIONS
    from comicnb.stage3.seed_cli import add_seed_arguments

    parser = argparse.ArgumentParser(prog="comicnb", description=DESCRIPTION)
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

    detect_parser = commands.add_parser(
        "detect",
        help="page images (a folder or CBZ/ZIP archives) to a data root: panels, reading order and text",
        description="Find panels (OpenCV), their reading order and their text (RapidOCR) on page images, and write "
        "the Stage 1 JSON and PSS labels that notebook 01 reads. A killed run continues when run again.",
        formatter_class=HelpFormatter,
    )
    from comicnb.detect.cli import add_arguments as add_detect_arguments

    add_detect_arguments(detect_parser)
    detect_parser.set_defaults(func=_detect)

    train = commands.add_parser(
        "train",
        help="train a stage headless (accelerate launch works too)",
        description="Train a stage headless: the same training as its notebook.",
        formatter_class=HelpFormatter,
    )
    stages = train.add_subparsers(dest="stage", required=True, metavar="{stage3,stage4}")
    stage3 = stages.add_parser(
        "stage3",
        help="the panel encoder (notebook 02)",
        description="Train Stage 3, the panel encoder, on a run's pages table (notebook 02 headless).",
        formatter_class=HelpFormatter,
    )
    stage3.add_argument("--params", default=None, help="YAML with the stage notebook's parameters")
    stage3.add_argument(
        "--run-dir", default=None, help="run folder with notebook 01's pages table (default: the run_dir of --params)"
    )
    stage3.add_argument("--resume", action="store_true", help="continue from the run's last checkpoint, if any")
    stage3.add_argument(
        "--overwrite",
        action="store_true",
        help="replace the run's existing checkpoints (checkpoint.pt and best_model.pt) with a new training run",
    )
    add_seed_arguments(stage3)
    stage3.set_defaults(func=_train)
    add_stage4_parser(stages)

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
    embed.add_argument(
        "--text-free",
        default="twin",
        choices=["twin", "blank", "none"],
        help="each panel's picture without words, for Stage 4's text tasks: the corpus's text-free twins, the page "
        "with its text boxes blanked, or none",
    )
    embed.add_argument("--overwrite", action="store_true", help="replace a store made from something else")
    embed.set_defaults(func=_embed)

    tasks = commands.add_parser(
        "tasks",
        help="build a run's fixed Stage 4 validation and test task sets",
        description="Build the fixed Stage 4 task sets of a run (<run>/tasks/val/ and tasks/test/) from its embedding "
        "store, as notebook 04 part 1 does; Stage 4 training validates on them. Sets that already match the store, "
        "seed, cap and sampling rules are left alone; others are refused without --overwrite.",
        formatter_class=HelpFormatter,
    )
    tasks.add_argument("--run-dir", required=True, help="run folder with the embedding store (and pages table)")
    tasks.add_argument("--store", default=None, help="store path (default: RUN_DIR/panel_embeddings.zarr)")
    tasks.add_argument(
        "--checkpoint",
        default=None,
        help="the store's Stage 3 checkpoint, which encodes candidate texts no panel has (default: the store's)",
    )
    tasks.add_argument("--seed", type=int, default=0, help="seeds every sampler; same seed, same files")
    tasks.add_argument("--max-samples", type=int, default=0, help="cap on the samples per task and split (0: all)")
    tasks.add_argument(
        "--overwrite", action="store_true", help="rebuild sets built from another store, seed, cap or sampling rules"
    )
    tasks.set_defaults(func=_tasks)

    from comicnb.comics.cli import add_arguments as add_comics_arguments

    comics = commands.add_parser(
        "comics",
        help="train and score Stage 4's text-cloze and character-coherence heads on COMICS cloze CSVs",
        description="COMICS (Iyyer et al. 2017) cloze folds as text-only panels: fit, eval on books the model never "
        "saw, the zero-shot baseline, book folds shared by every COMICS file (docs/comics.md).",
        formatter_class=HelpFormatter,
    )
    add_comics_arguments(comics, HelpFormatter)
    comics.set_defaults(func=_comics)
    from comicnb.comicspap.cli import add_arguments as add_comicspap_arguments

    comicspap = commands.add_parser(
        "comicspap",
        help="ComicsPAP in and out: encode its parquet, fit and score Stage 4 on it, export our task sets to it",
        description="ComicsPAP (Vivoli et al. 2025, arXiv 2503.08561): stream a split into a run (encode), fit the "
        "Stage 4 heads or take them zero-shot (fit), score beside chance, baselines and the published table (eval), "
        "write test answers (predict), write our task sets in its format (export), or make a small folder in its "
        "schema from a run (fixture); docs/comicspap.md.",
        formatter_class=HelpFormatter,
    )
    add_comicspap_arguments(comicspap, HelpFormatter)
    comicspap.set_defaults(func=_comicspap)
    add_export_parsers(commands)
    return parser


def add_export_parsers(commands: argparse._SubParsersAction) -> None:
    """``comicnb export-stage4`` (the Stage 5 export) and ``comicnb search-strips`` (pages like a page, from it)."""
    export = commands.add_parser(
        "export-stage4",
        help="export every page through the Stage 4 model into stage4_embeddings.zarr (resumable)",
        description="Run every page of a run's embedding store through its Stage 4 checkpoint into "
        "RUN_DIR/stage4_embeddings.zarr: contextualized_panels, strip_embeddings, panel_masks, the store's "
        "metadata.json and provenance. Run again to resume; an export of another checkpoint or store is refused "
        "without --overwrite.",
        formatter_class=HelpFormatter,
    )
    export.add_argument("--run-dir", required=True, help="run folder with the embedding store and Stage 4 checkpoint")
    export.add_argument(
        "--checkpoint",
        default=None,
        help="Stage 4 checkpoint, e.g. an ablation's (default: RUN_DIR/stage4/best_model.pt, else checkpoint.pt)",
    )
    export.add_argument("--store", default=None, help="embedding store (default: RUN_DIR/panel_embeddings.zarr)")
    export.add_argument("--out", default=None, help="export path (default: RUN_DIR/stage4_embeddings.zarr)")
    export.add_argument(
        "--pages-per-chunk",
        type=int,
        default=None,
        help="pages per forward batch and zarr chunk (default: the existing export's, else 16)",
    )
    export.add_argument("--overwrite", action="store_true", help="replace an export made from something else")
    export.set_defaults(func=_export_stage4)

    search = commands.add_parser(
        "search-strips",
        help="pages like a given page, by cosine of their Stage 4 strip embeddings",
        description="The pages whose strip embeddings (in RUN_DIR/stage4_embeddings.zarr) are nearest a page's, "
        "the page itself left out: rank, page index, book, page name, score, image path.",
        formatter_class=HelpFormatter,
    )
    search.add_argument("--run-dir", required=True, help="run folder with stage4_embeddings.zarr")
    search.add_argument(
        "--page", required=True, help="the query page: its index in the store (page_index), or book/page"
    )
    search.add_argument("-k", type=int, default=5, help="how many pages to list")
    search.add_argument("--export", default=None, help="export path (default: RUN_DIR/stage4_embeddings.zarr)")
    search.set_defaults(func=_search_strips)

    panels = commands.add_parser(
        "search",
        help="panels like a text or an image, from a run's embedding store",
        description="The panels of a run's embedding store nearest a text (--text) or an image (--image, any picture "
        "file, encoded as a panel crop), by cosine in the Stage 3 space: rank, score, book, page, slot and text. "
        "The query is encoded by the store's own Stage 3 checkpoint (another is refused).",
        formatter_class=HelpFormatter,
    )
    panels.add_argument("--run-dir", required=True, help="run folder with the embedding store")
    panels.add_argument("--text", default=None, help="a text query, e.g. 'Is it getting dark?'")
    panels.add_argument("--image", default=None, help="an image file as the query")
    panels.add_argument("-k", type=int, default=5, help="how many panels to list")
    panels.add_argument("--store", default=None, help="embedding store (default: RUN_DIR/panel_embeddings.zarr)")
    panels.add_argument(
        "--checkpoint", default=None, help="the store's Stage 3 checkpoint (default: the one the store records)"
    )
    panels.add_argument("--gallery", default=None, help="also save the hits' crops as an image (e.g. hits.png)")
    panels.add_argument("--csv", default=None, help="also save every column of the hits as CSV")
    panels.set_defaults(func=_search)


def add_stage4_parser(stages: argparse._SubParsersAction) -> None:
    """``comicnb train stage4``: its own options and the seed's train_stage4.py flags."""
    from comicnb.stage4.seed_cli import add_seed_arguments as add_stage4_seed_arguments

    stage4 = stages.add_parser(
        "stage4",
        help="the panel sequence model (notebook 04)",
        description="Train Stage 4, the panel sequence model, on a run's embedding store: seven narrative tasks "
        "(training samples redrawn each epoch from the training books), validated every epoch on the fixed sets "
        "under RUN_DIR/tasks/val/ (build them with `comicnb tasks --run-dir RUN_DIR`). Checkpoints go to "
        "RUN_DIR/stage4/. Settings not given keep comicnb's defaults (comicnb.stage4.config), which are notebook "
        "04's: a bare run trains the same model as the notebook run bare.",
        formatter_class=HelpFormatter,
    )
    stage4.add_argument(
        "--params", default=None, help="YAML with notebook 04's parameters (training settings, run_dir, store)"
    )
    stage4.add_argument(
        "--run-dir",
        default=None,
        help="run folder with the embedding store and task sets (default: the run_dir of --params)",
    )
    stage4.add_argument("--store", default=None, help="embedding store (default: RUN_DIR/panel_embeddings.zarr)")
    stage4.add_argument("--resume", action="store_true", help="continue from the run's last checkpoint, if any")
    stage4.add_argument(
        "--overwrite",
        action="store_true",
        help="replace the run's existing Stage 4 checkpoints (checkpoint.pt and best_model.pt) with a new run",
    )
    stage4.add_argument(
        "--ablation",
        choices=STAGE4_ABLATIONS,
        default=None,
        help="train an ablation of the same settings into RUN_DIR/stage4/ablations/NAME/: no_transformer (the same "
        "heads on the projected Stage 3 vectors), text_only or vision_only (panels enter with that part only)",
    )
    add_stage4_seed_arguments(stage4)
    stage4.set_defaults(func=_train_stage4)


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``python -m comicnb`` and the ``comicnb`` script."""
    args = build_parser().parse_args(argv)
    return args.func(args)
