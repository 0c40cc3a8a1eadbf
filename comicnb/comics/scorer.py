"""Stage 4's text-cloze and character-coherence heads trained on COMICS samples as text-only panels.

Each sample becomes one Stage 4 candidate batch row: the three context panels' text vectors (``comicnb.comics.embed``;
no vision, no composition, so those parts are simply absent) in reading order, the query slot appended after them
(``slot`` -1, no caption), and the candidates' text vectors. ``Stage4SequenceModel.task_loss`` trains the task's head
(``text_cloze`` or ``character_coherence``) and the transformer below it; nothing else of Stage 4 is touched.

Training is seeded, on the CPU, with AdamW, and stops early on the loss of a validation part carved from the training
rows by whole books (``comicnb.comics.folds.validation_books``), never from rows that will be scored. The model folder
holds ``model.pt`` (state dict and config) and ``comics_model.json``: the task, the text encoder, the settings, the
CSV's SHA-256 and row counts, the selection of its rows, and every book the model saw (training and validation).
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Collection
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np
import torch

from comicnb.comics.embed import TextVectors, sample_vectors
from comicnb.comics.folds import DEFAULT_FOLDS, book_fold, unit_hash, validation_books
from comicnb.comics.heads import STAGE4_TASK, build_model, stage4_model_sha256
from comicnb.comics.reader import ComicsSample, ComicsTable, book_sort_key
from comicnb.comics.settings import FitSettings

MODEL_FILE = "model.pt"
MANIFEST = "comics_model.json"
FORMAT = 1
CAP_SALT = "comicnb/comics/cap"


def cap_books(samples: list[ComicsSample], max_rows: int, seed: int) -> list[ComicsSample]:
    """Whole books, in a seeded hash order, until at least ``max_rows`` rows (all when fewer)."""
    by_book: dict[str, list[ComicsSample]] = {}
    for s in samples:
        by_book.setdefault(s.book_id, []).append(s)
    kept: list[ComicsSample] = []
    for book in sorted(by_book, key=lambda b: unit_hash(f"{CAP_SALT}/{seed}/{b}")):
        if len(kept) >= max_rows:
            break
        kept.extend(by_book[book])
    return kept


def select_training(
    samples: list[ComicsSample],
    hold_out: Collection[int] = (),
    folds: int = DEFAULT_FOLDS,
    max_rows: int | None = None,
    seed: int = 0,
) -> list[ComicsSample]:
    """The training rows: books outside the held-out folds, capped by whole books at ``max_rows``."""
    bad = [f for f in hold_out if not 0 <= f < folds]
    if bad:
        raise ValueError(f"held-out folds {bad} are not among 0..{folds - 1}")
    held = set(hold_out)
    chosen = [s for s in samples if book_fold(s.book_id, folds) not in held] if held else list(samples)
    return cap_books(chosen, max_rows, seed) if max_rows else chosen


def fit(
    table: ComicsTable,
    out: str | Path,
    settings: FitSettings | None = None,
    text_model: str | None = None,
    cache: str | Path | None = None,
    hold_out: Collection[int] = (),
    folds: int = DEFAULT_FOLDS,
    max_rows: int | None = None,
    overwrite: bool = False,
    log: Callable[[str], None] = print,
    vectors: TextVectors | None = None,
) -> dict:
    """Train a scorer on a COMICS table's rows (books of held-out folds left out) and save it under ``out``; returns
    the manifest. Refuses a folder that already holds a model unless ``overwrite``."""
    settings = settings or FitSettings()
    out = Path(out)
    if (out / MANIFEST).exists() and not overwrite:
        raise FileExistsError(f"{out} already holds a COMICS model: give --overwrite to replace it, or another --out")
    started = time.perf_counter()
    chosen = select_training(table.samples, hold_out, folds, max_rows, settings.seed)
    books = sorted({s.book_id for s in chosen}, key=book_sort_key)
    if len(books) < 2:
        raise ValueError(
            f"{len(chosen)} training rows of {len(books)} book(s) after the selection: training needs at least two "
            f"books (one goes to the validation part)"
        )
    held = validation_books(books, settings.validation_share, settings.seed)
    train_rows = [s for s in chosen if s.book_id not in held]
    val_rows = [s for s in chosen if s.book_id in held]
    log(
        f"[comicnb] comics fit {table.task}: {len(train_rows)} training rows, {len(val_rows)} validation rows "
        f"({len(books) - len(held)} + {len(held)} books) of {table.report.rows} in {table.path.name}"
    )
    from comicnb.comics.training import Part, train_scorer  # training code only where a scorer is fitted

    vectors = vectors or TextVectors(text_model, cache)
    encode_started = time.perf_counter()
    parts = []
    for rows in (train_rows, val_rows):
        context, candidates = sample_vectors(rows, vectors, settings.pair_vectors, settings.context_tokens)
        answers = np.array([s.answer for s in rows], dtype=np.int64)
        parts.append(Part(context, candidates, answers, settings.context_tokens))
    vectors.save()
    encode_seconds = time.perf_counter() - encode_started
    log(f"  text vectors: {vectors.encoded} texts encoded in {encode_seconds:.0f} s ({vectors.label})")
    model, history, best_epoch = train_scorer(table.task, parts[0], parts[1], settings, log)
    best = next((h for h in history if h["epoch"] == best_epoch), {})
    manifest = dict(
        format=FORMAT,
        task=table.task,
        stage4_task=STAGE4_TASK[table.task],
        text_model=text_model,
        text_model_label=vectors.label,
        model_config=model.config,
        stage4_model_sha256=stage4_model_sha256(),
        settings=asdict(settings),
        csv=dict(
            path=str(table.path),
            name=table.path.name,
            sha256=table.sha256,
            read=table.report.as_dict(),
            n_candidates=table.n_candidates,
        ),
        selection=dict(folds=folds, hold_out=sorted(hold_out), max_rows=max_rows),
        rows=dict(training=len(train_rows), validation=len(val_rows)),
        trained_books=books,
        validation_books=sorted(held, key=book_sort_key),
        history=history,
        best_epoch=best_epoch,
        validation_accuracy=best.get("val_accuracy"),
        seconds=dict(encode=encode_seconds, total=time.perf_counter() - started),
    )
    out.mkdir(parents=True, exist_ok=True)
    torch.save({"state_dict": model.state_dict(), "config": model.config}, out / MODEL_FILE)
    (out / MANIFEST).write_text(json.dumps(manifest, indent=1) + "\n", encoding="utf-8")
    return manifest


def load_scorer(model_dir: str | Path) -> tuple[Any, dict]:
    """(model in eval mode, manifest) of a folder ``fit`` wrote."""
    model_dir = Path(model_dir)
    if not (model_dir / MANIFEST).is_file() or not (model_dir / MODEL_FILE).is_file():
        raise FileNotFoundError(
            f"{model_dir} holds no COMICS model ({MANIFEST} and {MODEL_FILE}): train one with `comicnb comics fit`"
        )
    manifest = json.loads((model_dir / MANIFEST).read_text(encoding="utf-8"))
    if manifest.get("format") != FORMAT:
        raise ValueError(f"{model_dir / MANIFEST} has format {manifest.get('format')}, this comicnb reads {FORMAT}")
    saved = torch.load(model_dir / MODEL_FILE, map_location="cpu", weights_only=True)
    model = build_model(saved["config"])
    try:
        model.load_state_dict(saved["state_dict"])
    except RuntimeError as err:
        changed = manifest.get("stage4_model_sha256") not in (None, stage4_model_sha256())
        raise ValueError(
            f"the model in {model_dir} does not load into this comicnb's Stage4SequenceModel"
            f"{' (comicnb/stage4/model.py changed since it was trained)' if changed else ''}: fit it again "
            f"({str(err).splitlines()[0]})"
        ) from err
    model.eval()
    return model, manifest
