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
import math
import time
from collections.abc import Callable, Collection, Iterator, Mapping
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from comicnb.checkpoint import file_sha256
from comicnb.comics.embed import TextVectors, sample_vectors
from comicnb.comics.folds import DEFAULT_FOLDS, book_fold, unit_hash, validation_books
from comicnb.comics.reader import CHAR_COHERENCE, TEXT_CLOZE, ComicsSample, ComicsTable, book_sort_key
from comicnb.comics.settings import FitSettings
from comicnb.loop import EpochLoop, SingleProcess
from comicnb.metrics import expected_hits
from comicnb.seed import set_seed

STAGE4_TASK = {TEXT_CLOZE: "text_cloze", CHAR_COHERENCE: "character_coherence"}
MODEL_FILE = "model.pt"
MANIFEST = "comics_model.json"
FORMAT = 1
CAP_SALT = "comicnb/comics/cap"


def make_batch(context: Tensor, candidates: Tensor, answer: Tensor) -> dict[str, Tensor]:
    """A Stage 4 candidate-task batch of text-only panels: every context panel and candidate is present (a panel
    without text is a zero vector), the query slot is appended (slot -1), no caption, left-to-right."""
    batch_size, length, dim = context.shape
    return {
        "context": context,
        "context_mask": torch.ones(batch_size, length, dtype=torch.bool),
        "slot": torch.full((batch_size,), -1, dtype=torch.long),
        "candidates": candidates,
        "candidate_mask": torch.ones(candidates.shape[:2], dtype=torch.bool),
        "answer": answer.long(),
        "query": torch.zeros(batch_size, dim),
        "direction": torch.zeros(batch_size, dtype=torch.long),
    }


def stage4_model_sha256() -> str:
    """SHA-256 of comicnb/stage4/model.py: a saved model names the code it was trained with."""
    from comicnb.stage4 import model

    return file_sha256(model.__file__)


def build_model(config: Mapping[str, Any]):
    """A Stage4SequenceModel from its config dict."""
    from comicnb.stage4.model import Stage4SequenceModel

    return Stage4SequenceModel.from_config(dict(config))


@torch.no_grad()
def model_scores(model, task: str, context: np.ndarray, candidates: np.ndarray, batch_size: int = 256) -> np.ndarray:
    """(N, C) candidate logits of a trained model (eval mode) for text vectors of samples."""
    model.eval()
    out = []
    for start in range(0, len(context), batch_size):
        ctx = torch.from_numpy(context[start : start + batch_size])
        cand = torch.from_numpy(candidates[start : start + batch_size])
        batch = make_batch(ctx, cand, torch.zeros(len(ctx), dtype=torch.long))
        out.append(model.task_logits(STAGE4_TASK[task], batch).float().numpy())
    return np.concatenate(out) if out else np.zeros((0, candidates.shape[1] if candidates.ndim == 3 else 0))


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


class _Part:
    """Tensors of one part (training or validation)."""

    def __init__(self, context: np.ndarray, candidates: np.ndarray, answers: np.ndarray) -> None:
        self.context = torch.from_numpy(context)
        self.candidates = torch.from_numpy(candidates)
        self.answers = torch.from_numpy(answers)
        self.answers_np = answers

    def __len__(self) -> int:
        return len(self.answers)

    def batch(self, index: Tensor) -> dict[str, Tensor]:
        return make_batch(self.context[index], self.candidates[index], self.answers[index])


def _validate(model, task: str, part: _Part) -> tuple[float, float]:
    """(loss, accuracy) on a part, in eval mode."""
    logits = model_scores(model, task, part.context.numpy(), part.candidates.numpy())
    log_p = torch.log_softmax(torch.from_numpy(logits).double(), dim=1)
    loss = float(-log_p[torch.arange(len(part)), part.answers].mean())
    return loss, float(expected_hits(logits, part.answers_np).mean())


class ScorerTrainer(EpochLoop):
    """Trains one COMICS scorer in one sitting (``comicnb.loop``): shuffled batches of the training part, AdamW at a
    constant learning rate, the gradient clipped, and after each epoch the validation part's loss, which keeps the
    best epoch's weights in memory and stops the run after ``patience`` epochs without a lower one. It never resumes,
    so its random draws come from one stream seeded once (``step_seeds`` off)."""

    step_seeds = False
    constant_lr = True

    def __init__(
        self, task: str, train: _Part, val: _Part, settings: FitSettings, log: Callable[[str], None] = print
    ) -> None:
        set_seed(settings.seed)
        self.cfg, self.task, self.train_part, self.val_part, self.log = settings, task, train, val, log
        self.model = build_model(settings.model_config(train.context.shape[-1], task))
        self.accelerator = SingleProcess()  # the scorer trains on the CPU, seeded, without Accelerate
        self.steps_per_epoch = math.ceil(len(train) / settings.batch_size)
        if not self.steps_per_epoch:
            raise ValueError("no training rows: a COMICS scorer needs at least one training sample")
        self.start_loop(self.model)
        self.generator = torch.Generator().manual_seed(settings.seed)  # the epochs' shuffles
        self.best_state: dict[str, Tensor] | None = None
        self.waited = 0  # epochs since the validation loss last fell
        self.losses: list[float] = []  # the current epoch's training losses

    def epoch_steps(self, epoch: int, offset: int, count: int) -> Iterator[None]:
        """One epoch over the training part in a fresh shuffle, a batch a step (a run in one sitting: offset 0)."""
        self.model.train()
        order = torch.randperm(len(self.train_part), generator=self.generator)
        self.losses = []
        for start in range(0, len(self.train_part), self.cfg.batch_size):
            batch = self.train_part.batch(order[start : start + self.cfg.batch_size])
            loss = self.model.task_loss(STAGE4_TASK[self.task], batch)
            if not torch.isfinite(loss):
                raise FloatingPointError(f"the training loss is {loss.item()} at epoch {epoch + 1}, step {self.step}")
            self.optimise(loss)
            self.losses.append(loss.item())
            yield

    def end_epoch(self, epoch: int, seconds: float, files: Any | None) -> None:
        """Score the validation part; keep the weights when its loss fell (by more than 1e-6)."""
        val_loss, val_accuracy = _validate(self.model, self.task, self.val_part)
        scalars = dict(
            train_loss=float(np.mean(self.losses)) if self.losses else 0.0,
            val_loss=val_loss,
            val_accuracy=val_accuracy,
            neg_val_loss=-val_loss,
        )
        self.history.epochs.append({"epoch": epoch, **scalars, "seconds": seconds})
        self.log(
            f"  epoch {epoch}: train loss {scalars['train_loss']:.4f}, validation loss {val_loss:.4f}, "
            f"accuracy {val_accuracy:.3f} ({seconds:.1f} s)"
        )
        if self.update_best(scalars, epoch, "neg_val_loss", min_delta=1e-6):
            self.waited = 0
            self.best_state = {k: v.detach().clone() for k, v in self.model.state_dict().items()}
        else:
            self.waited += 1

    def should_stop(self) -> bool:
        """After ``patience`` epochs without a lower validation loss."""
        if self.waited >= self.cfg.patience:
            self.log(f"  stopped: no lower validation loss for {self.waited} epochs")
            return True
        return False

    def save(self, path: str | Path) -> Path:  # the scorer keeps its best weights in memory; fit writes the folder
        raise NotImplementedError("a COMICS scorer is saved by fit(), not checkpointed")


def train_scorer(
    task: str, train: _Part, val: _Part, settings: FitSettings, log: Callable[[str], None] = print
) -> tuple[Any, list[dict], int]:
    """(model with the best validation state loaded, history per epoch, best epoch)."""
    trainer = ScorerTrainer(task, train, val, settings, log)
    trainer.train()
    if trainer.best_state is not None:
        trainer.model.load_state_dict(trainer.best_state)
    history = [{k: v for k, v in row.items() if k != "neg_val_loss"} for row in trainer.history.epochs]
    return trainer.model.eval(), history, int(trainer.best.get("epoch", 0))


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
    vectors = vectors or TextVectors(text_model, cache)
    encode_started = time.perf_counter()
    parts = []
    for rows in (train_rows, val_rows):
        context, candidates = sample_vectors(rows, vectors, settings.pair_vectors)
        parts.append(_Part(context, candidates, np.array([s.answer for s in rows], dtype=np.int64)))
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
