"""Stage 4 samplers: the samples of the seven tasks, drawn per split from the store's pages and the ground truth.

One sampler per task, all with the signature ``sample_<task>(ctx, split, rng, *, limit=None, skips=None)``: ``ctx`` (a
``TaskContext``, see ``load_context``) holds one row per stored panel with its page, text and, where the corpus has a
sidecar, its truth; ``rng`` a numpy Generator; ``limit`` caps the samples (a seeded subset); ``skips`` (a Counter)
receives one count per panel or page that could not become a sample, by reason, so nothing is dropped silently.

The rules every sampler keeps (``comicnb.stage4.tasks.check_sample`` checks them):

- the answer is among the candidates exactly once, and its index is balanced over the set: indices are dealt
  round-robin over a shuffled order, so their counts differ by at most one;
- no candidate comes from the sample's context, and all candidates of a sample share the same vision kind, the same
  composition (``composition_from``: the slot they are offered for, or none) and (text tasks) distinct texts, so
  neither a candidate's own place on its page nor the kind of its parts can give it away;
- the text tasks show the answer panel text-free (``vision="text_free"``) where the store holds its text-free twin,
  else without its image (``vision="none"``), and prefer negatives with as many balloons as the answer, since the
  empty balloons of a text-free image still show how many lines there were;
- ground truth (scene, scene run, beat, lines, descriptions) only chooses negatives and answers; the one exception,
  as in ComicsPAP, is caption relevance, whose input is a caption. Candidates are drawn from the sample's own split,
  so a model can never reject a negative for having been seen in training.

Negatives come from rules tried in order (a task's *hard* rules first: same scene run, same scene); a sample whose
negatives all come from hard rules is ``hard``, else ``easy``, and ``built_from["negatives"]`` names each negative's
rule, in the order the negatives stand among the candidates (the answer left out).
Without a sidecar (real data) the tasks that need truth raise ``TaskUnavailable`` with the reason, and the others
build what they can. ``build_task_sets`` writes the fixed val/test files, ``training_samples`` redraws a training set.
"""

from __future__ import annotations

import hashlib
import json
import warnings
import zlib
from collections import Counter
from collections.abc import Callable, Hashable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from comicnb import __version__
from comicnb.stage4.tasks import (
    TASKS,
    Candidate,
    TaskSample,
    TaskSet,
    answer_slots,
    check_sample,
    task_dir,
    write_manifest,
    write_task_set,
)

CANDIDATES = {
    "panel_picking": 5,
    "character_coherence": 2,
    "visual_closure": 5,
    "text_closure": 4,
    "caption_relevance": 4,
    "text_cloze": 3,
}
MAX_CONTEXT = 4  # preceding panels given in text closure and character coherence
MIN_CONTEXT = 2  # fewest context panels of a sequence task: one panel shows no progression
CLOZE_CONTEXT = 3  # text-cloze gives exactly three preceding panels, as COMICS does
NEARBY_PAGES = 2  # "nearby" and "neighbouring" pages: at most this many narrative pages away in the same book
SCENE_COLUMNS = ("scene_run", "scene")  # hard negatives: the same scene run, else the same place in the book
TRUTH_COLUMNS = {
    "character_coherence": ("lines",),
    "visual_closure": ("beat", "action_step"),
    "caption_relevance": ("description", "caption_unique"),
}
NEEDS_SCENE = ("visual_closure", "caption_relevance")  # also need scene_run or scene
SIDECAR = "ground_truth.json"
PENDING_ROW = -1  # text_row of a draft's new text, numbered when the set is final (number_texts)


class TaskUnavailable(RuntimeError):
    """A task this corpus cannot give (no ground truth, for the tasks that need it); the message says why."""


class TruthColumnsMissing(ValueError):
    """The corpus has ground truth but panel_truth lacks a column a task needs: the truth reader is out of date."""


@dataclass
class TaskContext:
    """What the samplers draw from: one row per stored panel (``panel_table``), and what the corpus labels."""

    panels: pd.DataFrame  # one row per stored panel, in store order, index 0..P-1 (see panel_table)
    truth: str | None = None  # where the ground truth came from; None: the corpus has none (real data)
    truth_note: str = ""  # why there is none
    text_free: bool = False  # the store holds text-free twins (its text_free_masks array, some True)
    directions: dict[str, str] = field(default_factory=dict)  # book -> ltr / rtl, where the corpus labels it
    speakers: dict[str, str] = field(default_factory=dict)  # truth speaker id -> the name a text shows
    encoder: Callable[[Sequence[str]], np.ndarray] | None = None  # the frozen Stage 3 text pathway
    feature_dim: int = 0
    provenance: dict[str, Any] = field(default_factory=dict)  # what the context was read from, for the manifest

    def encode(self, texts: Sequence[str]) -> np.ndarray:
        """(T, D) float32 text embeddings of new candidate texts, through the store's frozen text pathway."""
        if not texts:
            return np.zeros((0, self.feature_dim), dtype=np.float32)
        if self.encoder is None:
            raise RuntimeError("this task context has no text encoder: give load_context the store's checkpoint")
        return np.asarray(self.encoder(list(texts)), dtype=np.float32)


# ---------------------------------------------------------------------------------------------------- panel table


def panel_table(
    metadata: pd.DataFrame,
    modality_masks: np.ndarray | None = None,
    text_free_masks: np.ndarray | None = None,
    pages: pd.DataFrame | None = None,
    truth: pd.DataFrame | None = None,
) -> pd.DataFrame:
    """One row per stored panel: ids, page, split, text, stream position (and truth columns where given).

    Columns: panel_id, page_index, slot, book_id, page_id, page_name, split, num_panels, page_rank (the page's place
    among its book's narrative pages), book_pos (the panel's place in its book's reading stream), text, has_text (the
    store has its text embedding), n_boxes (balloons and captions, from the pages table's text_boxes; -1 unknown),
    text_boxes, text_free (its text-free twin is stored), plus every column of ``truth`` (joined on panel_id).
    """
    boxes = _text_boxes_by_page(pages)
    rows = []
    for page in metadata.itertuples(index=False):
        page_boxes = boxes.get(page.page_id)
        for slot, (panel_id, text) in enumerate(zip(page.embedding_indices, page.texts, strict=True)):
            text_boxes = list(page_boxes[slot]) if page_boxes is not None else None
            rows.append(
                dict(
                    panel_id=int(panel_id),
                    page_index=int(page.page_index),
                    slot=slot,
                    book_id=page.book_id,
                    page_id=page.page_id,
                    page_name=page.page_name,
                    split=page.split,
                    num_panels=int(page.num_panels),
                    text=str(text),
                    has_text=bool(modality_masks[page.page_index, slot, 1])
                    if modality_masks is not None
                    else bool(str(text).strip()),
                    n_boxes=len(text_boxes) if text_boxes is not None else -1,
                    text_boxes=text_boxes,
                    text_free=bool(text_free_masks[page.page_index, slot]) if text_free_masks is not None else False,
                )
            )
    table = pd.DataFrame(rows)
    # Pages of a book in store (reading) order; the parts of an over-long page are one page.
    table["page_rank"] = table.groupby("book_id", sort=False).page_name.transform(lambda s: pd.factorize(s)[0])
    table["book_pos"] = table.groupby("book_id", sort=False).cumcount()
    if truth is not None:
        extra = [c for c in truth.columns if c == "panel_id" or c not in table.columns]
        table = table.merge(truth[extra], on="panel_id", how="left", validate="one_to_one")
    return table.reset_index(drop=True)


def _text_boxes_by_page(pages: pd.DataFrame | None) -> dict[str, list]:
    """page_id -> its panels' text_boxes, where the pages table has them."""
    if pages is None or "text_boxes" not in pages:
        return {}
    return {p.page_id: p.text_boxes for p in pages.itertuples(index=False)}


def make_context(
    metadata: pd.DataFrame,
    *,
    modality_masks: np.ndarray | None = None,
    text_free_masks: np.ndarray | None = None,
    pages: pd.DataFrame | None = None,
    truth: pd.DataFrame | None = None,
    truth_source: str | None = None,
    directions: Mapping[str, str] | None = None,
    speakers: Mapping[str, str] | None = None,
    encoder: Callable[[Sequence[str]], np.ndarray] | None = None,
    feature_dim: int = 0,
) -> TaskContext:
    """A task context from parts in memory (load_context reads them from a run and its store)."""
    return TaskContext(
        panels=panel_table(metadata, modality_masks, text_free_masks, pages, truth),
        truth=(truth_source or "in memory") if truth is not None else None,
        truth_note="" if truth is not None else "no ground truth given",
        text_free=text_free_masks is not None and bool(np.any(text_free_masks)),
        directions=dict(directions or {}),
        speakers=dict(speakers or {}),
        encoder=encoder,
        feature_dim=feature_dim,
    )


def load_context(
    run_dir: str | Path, store: str | Path | None = None, checkpoint: str | Path | None = None
) -> TaskContext:
    """The task context of a run: its store (default ``<run>/panel_embeddings.zarr``), pages table and, where the
    corpus has a sidecar, its ground truth; the text encoder is the store's checkpoint (or ``checkpoint``), loaded
    when a task first needs a new text encoded."""
    from comicnb.corpus import load_pages
    from comicnb.store import MODALITY_MASKS, STORE_NAME, TEXT_FREE_MASKS, load_metadata, open_embeddings

    run_dir = Path(run_dir)
    store = Path(store) if store else run_dir / STORE_NAME
    group = open_embeddings(store)
    metadata = load_metadata(store)
    text_free = _optional_array(group, TEXT_FREE_MASKS)
    pages = load_pages(run_dir / "pages.jsonl") if (run_dir / "pages.jsonl").is_file() else None
    data_root = group.attrs.get("data_root") or _run_data_root(run_dir)
    truth, note, sidecar = load_truth(data_root, metadata)
    checkpoint = Path(checkpoint) if checkpoint else Path(str(group.attrs.get("checkpoint", "")))
    ctx = make_context(
        metadata,
        modality_masks=np.asarray(group[MODALITY_MASKS][:]),
        text_free_masks=text_free,
        pages=pages,
        truth=truth,
        truth_source=_relative(Path(data_root) / SIDECAR, run_dir) if truth is not None else None,
        directions={b: book.get("direction") for b, book in sidecar.get("books", {}).items() if book.get("direction")},
        speakers={cid: c.get("name", cid) for cid, c in sidecar.get("characters", {}).items()},
        encoder=FrozenTextPathway(checkpoint, store),
        feature_dim=int(group.attrs["feature_dim"]),
    )
    ctx.truth_note = note
    ctx.provenance = _provenance(run_dir, store, group.attrs, checkpoint, data_root, truth is not None)
    return ctx


def _optional_array(group: Any, name: str) -> np.ndarray | None:
    """A store array that older stores lack, or None."""
    try:
        return np.asarray(group[name][:])
    except KeyError:
        return None


def _run_data_root(run_dir: Path) -> str | None:
    """The data_root notebook 01 recorded in corpus.json, if any."""
    path = run_dir / "corpus.json"
    return json.loads(path.read_text(encoding="utf-8")).get("data_root") if path.is_file() else None


def load_truth(data_root: str | Path | None, metadata: pd.DataFrame) -> tuple[pd.DataFrame | None, str, dict[str, Any]]:
    """(per-panel truth or None, why there is none, the sidecar's book and character labels).

    Only the synthetic corpus has a sidecar; one that does not describe the stored pages is not used, with a warning
    (as ``comicnb.evaluation.labels`` does), since its truth would belong to other panels.
    """
    path = Path(data_root) / SIDECAR if data_root else None
    if path is None or not path.is_file():
        return None, f"no {SIDECAR} beside the data: a corpus without ground truth (real data)", {}
    from comicnb.corpus.synth import panel_truth  # the synthetic corpus's reader, only needed where there is one

    sidecar = json.loads(path.read_text(encoding="utf-8"))
    try:
        truth = panel_truth(data_root, metadata)
    except (KeyError, IndexError) as missing:
        warnings.warn(f"{path} does not describe this corpus (no entry for {missing}): no ground truth", stacklevel=2)
        return None, f"{path} does not describe this corpus (no entry for {missing})", {}
    labels = {"books": sidecar.get("books", {}), "characters": sidecar.get("characters", {})}
    return truth, "", labels


def _relative(path: Path, run_dir: Path) -> str:
    """A path as the manifest records it: relative to the run where it lies inside, so a copied run reads the same."""
    try:
        return Path(path).resolve().relative_to(run_dir.resolve()).as_posix()
    except ValueError:
        return str(path)


def _provenance(
    run_dir: Path, store: Path, attrs: Mapping[str, Any], checkpoint: Path, data_root: Any, has_truth: bool
) -> dict[str, Any]:
    """What a split's sets were built from: hashes and paths (relative inside the run), no clock, so a rebuild of the
    same sets writes the same manifest."""
    sidecar = Path(data_root) / SIDECAR if data_root else None
    return dict(
        store=_relative(store, run_dir),
        store_checkpoint_sha256=attrs.get("checkpoint_sha256"),
        store_metadata_sha256=attrs.get("metadata_sha256"),
        checkpoint=_relative(checkpoint, run_dir) if str(checkpoint) not in ("", ".") else None,
        truth_sha256=hashlib.sha256(sidecar.read_bytes()).hexdigest() if has_truth and sidecar else None,
    )


class FrozenTextPathway:
    """New candidate texts through the store's frozen Stage 3 text pathway: the sentence model and the text adapter,
    as the store's ``modalities[..., 1]`` were made, so they can be re-fused with stored images (``model.fuse``).

    The checkpoint is loaded on first use and checked against the store (same SHA-256): texts encoded by another
    checkpoint would live in another space. Encoded texts are cached, so redrawn training samples cost nothing twice.
    """

    def __init__(self, checkpoint: str | Path, store: str | Path | None = None, batch_size: int = 64) -> None:
        self.checkpoint, self.store, self.batch_size = Path(checkpoint), store, batch_size
        self.model: Any = None
        self.cache: dict[str, np.ndarray] = {}

    def __call__(self, texts: Sequence[str]) -> np.ndarray:
        """(T, D) float32 text-modality embeddings of the texts."""
        new = sorted({t for t in texts if t not in self.cache})
        for start in range(0, len(new), self.batch_size):
            chunk = new[start : start + self.batch_size]
            self.cache.update(zip(chunk, self._encode(chunk), strict=True))
        return np.stack([self.cache[t] for t in texts]).astype(np.float32)

    def _encode(self, texts: list[str]) -> np.ndarray:
        """One batch through the model's text rows only (vision and composition masked)."""
        import torch

        from comicnb.stage3.model import modality_only

        model = self._model()
        tokens = model.text.tokenize(texts)
        batch = {k: v.to(model.device) for k, v in tokens.items()}
        batch["modality_mask"] = modality_only("text", len(texts), model.device)
        with torch.inference_mode():
            modalities = model.encode_modalities(batch)  # (T, 3, D), only the text row filled
        return modalities[:, 1].float().cpu().numpy()

    def _model(self) -> Any:
        """The checkpoint's model, checked against the store on first use."""
        if self.model is None:
            import zarr

            from comicnb.stage3.model import model_from_checkpoint
            from comicnb.store.reader import check_checkpoint

            if not self.checkpoint.is_file():
                raise FileNotFoundError(
                    f"checkpoint {self.checkpoint} does not exist: candidate texts that are in no panel need the "
                    f"store's Stage 3 checkpoint (give build_task_sets checkpoint=PATH)"
                )
            self.model = model_from_checkpoint(self.checkpoint)
            if self.store is not None:
                attrs = zarr.open_group(str(self.store), mode="r").attrs
                check_checkpoint(self.store, attrs, self.model.checkpoint_sha256, self.checkpoint)
        return self.model


# ----------------------------------------------------------------------------------------------- drawing negatives


@dataclass
class Rule:
    """A pool of negatives: its name (recorded per negative), whether it makes a sample hard, and its rows."""

    name: str
    hard: bool
    rows: np.ndarray


class SplitIndex:
    """The panels of one split, grouped the ways the rules need (rows are positions in ``ctx.panels``)."""

    def __init__(self, ctx: TaskContext, split: str) -> None:
        panels = ctx.panels
        self.panels = panels
        self.rows = np.flatnonzero((panels.split == split).to_numpy())
        part = panels.iloc[self.rows]
        self.streams = {b: g.index.to_numpy() for b, g in part.sort_values(["page_index", "slot"]).groupby("book_id")}
        self.pages = {p: g.sort_values("slot").index.to_numpy() for p, g in part.groupby("page_index")}
        self.groups: dict[str, dict[tuple, np.ndarray]] = {}
        for column in SCENE_COLUMNS:
            if column in panels:
                known = part[part[column].map(_known).astype(bool)]
                self.groups[column] = {k: g.index.to_numpy() for k, g in known.groupby(["book_id", column])}

    def stream_items(self) -> Iterator[tuple[str, np.ndarray]]:
        """(book, its rows in reading order), books sorted."""
        return iter(sorted(self.streams.items()))

    def scene_rules(self, row: int) -> list[Rule]:
        """The hard rules: the row's scene run, then its scene (place), in its book, where the truth has them."""
        book, rules = self.panels.book_id[row], []
        for column, name in zip(SCENE_COLUMNS, ("same_scene_run", "same_scene"), strict=True):
            value = self.panels[column][row] if column in self.groups else None
            if _known(value):
                rules.append(Rule(name, True, self.groups[column].get((book, value), np.zeros(0, int))))
        return rules

    def book_rule(self, row: int) -> Rule:
        """Every panel of the row's book (in this split)."""
        return Rule("same_book", False, self.streams[self.panels.book_id[row]])

    def nearby_rule(self, row: int, name: str = "nearby_pages", hard: bool = False) -> Rule:
        """Panels of the row's book at most NEARBY_PAGES narrative pages away (its own page included)."""
        book_rows = self.streams[self.panels.book_id[row]]
        ranks = self.panels.page_rank.to_numpy()[book_rows]
        return Rule(name, hard, book_rows[np.abs(ranks - self.panels.page_rank[row]) <= NEARBY_PAGES])

    def other_books_rule(self, row: int) -> Rule:
        """Panels of the split's other books."""
        book = self.panels.book_id[row]
        others = [rows for b, rows in self.stream_items() if b != book]
        return Rule("other_books", False, np.concatenate(others) if others else np.zeros(0, dtype=int))


def _known(value: Any) -> bool:
    """A truth value that names something (not None / NaN)."""
    return value is not None and not (isinstance(value, float) and np.isnan(value))


def draw(
    rng: np.random.Generator,
    rules: Sequence[Rule],
    k: int,
    exclude: set[int],
    key: Callable[[int], Hashable] | None = None,
    taken: set | None = None,
    prefer: Callable[[int], bool] | None = None,
) -> tuple[list[int], list[str]] | None:
    """k rows from the rules' pools in order (random within a pool, ``prefer``-ed rows first), none excluded and,
    with ``key``, none sharing a key with another or with ``taken``; with their rules' names. None if too few."""
    chosen: list[int] = []
    names: list[str] = []
    seen, keys = set(exclude), set(taken or ())
    for rule in rules:
        pool = [int(r) for r in rng.permutation(np.asarray(rule.rows, dtype=int)) if int(r) not in seen]
        if prefer is not None:
            pool.sort(key=lambda r: not prefer(r))  # stable: preferred first, random order kept within each kind
        for row in pool:
            if len(chosen) == k:
                break
            if key is not None and key(row) in keys:
                continue
            chosen.append(row)
            names.append(rule.name)
            seen.add(row)
            if key is not None:
                keys.add(key(row))
    return (chosen, names) if len(chosen) == k else None


def difficulty_of(names: Sequence[str], rules: Sequence[Rule]) -> str:
    """hard when every negative came from a hard rule, else easy."""
    hard = {rule.name for rule in rules if rule.hard}
    return "hard" if names and all(n in hard for n in names) else "easy"


# ---------------------------------------------------------------------------------------------- drafts to samples


@dataclass
class Draft:
    """A sample before its answer index is dealt: the answer, the negatives and the other TaskSample fields."""

    answer: Candidate
    negatives: list[Candidate]
    fields: dict[str, Any]


def subsample(items: Sequence[Any], rng: np.random.Generator, limit: int | None) -> list[Any]:
    """At most ``limit`` of the items, a seeded subset kept in its original order."""
    if limit is None or len(items) <= limit:
        return list(items)
    return [items[i] for i in np.sort(rng.choice(len(items), size=limit, replace=False))]


def balanced_slots(count: int, width: int, rng: np.random.Generator) -> np.ndarray:
    """Answer indices for ``count`` samples of ``width`` candidates: dealt round-robin from a random start over a
    shuffled order, so every index is used equally often, give or take one, and none is favoured."""
    return rng.permutation((np.arange(count) + rng.integers(width)) % width)


def finish(
    task: str, split: str, drafts: Sequence[Draft], rng: np.random.Generator, limit: int | None
) -> list[TaskSample]:
    """The final samples: a seeded subset of at most ``limit`` drafts, the answer placed at a balanced index among
    the shuffled negatives, and the new texts numbered."""
    drafts = subsample(drafts, rng, limit)
    samples = []
    for draft, at in zip(drafts, balanced_slots(len(drafts), CANDIDATES[task], rng), strict=True):
        shuffle = rng.permutation(len(draft.negatives))
        candidates = [draft.negatives[i] for i in shuffle]
        candidates.insert(int(at), draft.answer)
        rules = draft.fields["built_from"].get("negatives")
        if rules:  # each negative's rule, in the negatives' order among the candidates
            draft.fields["built_from"]["negatives"] = [rules[i] for i in shuffle]
        samples.append(TaskSample(task=task, split=split, candidates=candidates, answer=int(at), **draft.fields))
    number_texts(samples)
    return samples


def number_texts(samples: Sequence[TaskSample]) -> None:
    """Give the candidates' new texts their rows in the set's texts array, in order of first appearance."""
    rows: dict[str, int] = {}
    for sample in samples:
        for candidate in sample.candidates:
            if candidate.text_row is not None:
                candidate.text_row = rows.setdefault(str(candidate.text), len(rows))


def texts_of(samples: Sequence[TaskSample]) -> list[str]:
    """The new texts of a set by row (the strings the set's texts array encodes)."""
    rows = {c.text_row: str(c.text) for s in samples for c in s.candidates if c.text_row is not None}
    return [rows[i] for i in range(len(rows))]


def _plain(value: Any) -> Any:
    """A truth value as plain JSON (numpy scalars and arrays to Python, NaN to None)."""
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple, np.ndarray)):
        return [_plain(v) for v in value]
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and (np.isnan(value) or value.is_integer()):
        return None if np.isnan(value) else int(value)  # pandas holds None-able truth numbers as floats
    return value


class _Panels:
    """Column access by row for the samplers (plain Python values, no pandas per lookup)."""

    def __init__(self, ctx: TaskContext) -> None:
        self.ctx = ctx
        self.columns = {c: ctx.panels[c].tolist() for c in ctx.panels.columns}

    def __getitem__(self, column: str) -> list:
        return self.columns[column]

    def ids(self, rows: Sequence[int]) -> list[int]:
        """Store panel ids of rows."""
        return [int(self.columns["panel_id"][r]) for r in rows]

    def pid(self, row: int) -> int:
        """Store panel id of one row."""
        return int(self.columns["panel_id"][row])

    def whole(self, row: int, slot_of: int | None = None) -> Candidate:
        """A panel as drawn with its own text, and the composition of the slot it is offered for (or none)."""
        pid = self.pid(row)
        return Candidate(pid, "full", text_from=pid, composition_from=None if slot_of is None else self.pid(slot_of))

    def fields(
        self, task: str, answer: int, context: Sequence[int], names: Sequence[str], difficulty: str, **extra: Any
    ) -> dict[str, Any]:
        """TaskSample fields besides the candidates: ids, context, difficulty and what the sample was built from."""
        truth = {c: _plain(self.columns[c][answer]) for c in ("scene_run", "scene", "beat") if c in self.columns}
        pages = sorted({self.columns["page_id"][r] for r in [*context, answer]})
        built = dict(answer_panel=self.pid(answer), pages=pages, negatives=list(names), **truth)
        built.update(extra.pop("built_from", {}))
        suffix = extra.pop("suffix", "")
        return dict(
            sample_id=f"{task}/{self.pid(answer)}{suffix}",
            book_id=self.columns["book_id"][answer],
            context=self.ids(context),
            difficulty=difficulty,
            built_from=built,
            **extra,
        )


def _counter(skips: Counter | None) -> Counter:
    """The caller's skip counter, or a fresh one."""
    return skips if skips is not None else Counter()


def require_truth(ctx: TaskContext, task: str) -> None:
    """TaskUnavailable where the corpus has no truth; TruthColumnsMissing where the truth lacks a needed column."""
    needed = [*TRUTH_COLUMNS.get(task, ()), *(("scene_run or scene",) if task in NEEDS_SCENE else ())]
    if ctx.truth is None:
        raise TaskUnavailable(
            f"{task} needs ground truth ({', '.join(needed)}), which this corpus lacks: {ctx.truth_note}"
        )
    missing = [c for c in TRUTH_COLUMNS.get(task, ()) if c not in ctx.panels]
    if task in NEEDS_SCENE and not any(c in ctx.panels for c in SCENE_COLUMNS):
        missing.append("scene_run or scene")
    if missing:
        raise TruthColumnsMissing(
            f"{task} needs the truth columns {missing}, which comicnb.corpus.synth.panel_truth does not give "
            f"(it gives {sorted(set(ctx.panels.columns))}): update the corpus package"
        )


def text_vision(ctx: TaskContext, row: int) -> str:
    """How a text task shows its answer panel: its text-free twin where stored, else no image at all."""
    return "text_free" if bool(ctx.panels.text_free[row]) else "none"


def text_key(text: str) -> str:
    """What makes two candidate texts the same (case and spacing aside)."""
    return " ".join(str(text).lower().split())


# ------------------------------------------------------------------------------------------------------- samplers


def sample_panel_picking(
    ctx: TaskContext, split: str, rng: np.random.Generator, *, limit: int | None = None, skips: Counter | None = None
) -> list[TaskSample]:
    """A page's panels in order with one slot masked; the masked panel among 5, each offered with the slot's
    composition. Negatives: the same scene run, else scene, off the page (hard); else nearby pages of the book, the
    book, other books (easy). ``context`` leaves the masked panel out; ``slot`` is where it goes."""
    index, col, skips = SplitIndex(ctx, split), _Panels(ctx), _counter(skips)
    drafts = []
    for _, rows in sorted(index.pages.items()):
        if len(rows) < MIN_CONTEXT + 1:
            skips["page_with_fewer_than_3_panels"] += len(rows)
            continue
        for slot, answer in enumerate(rows.tolist()):
            rules = [*index.scene_rules(answer), index.nearby_rule(answer), index.book_rule(answer)]
            rules.append(index.other_books_rule(answer))
            drawn = draw(rng, rules, CANDIDATES["panel_picking"] - 1, set(rows.tolist()))
            if drawn is None:
                skips["too_few_negatives"] += 1
                continue
            context = [r for r in rows.tolist() if r != answer]
            fields = col.fields("panel_picking", answer, context, drawn[1], difficulty_of(drawn[1], rules), slot=slot)
            offer = [col.whole(r, slot_of=answer) for r in [answer, *drawn[0]]]
            drafts.append(Draft(offer[0], offer[1:], fields))
    return finish("panel_picking", split, drafts, rng, limit)


def sample_character_coherence(
    ctx: TaskContext, split: str, rng: np.random.Generator, *, limit: int | None = None, skips: Counter | None = None
) -> list[TaskSample]:
    """The preceding panels, then a panel with two speakers shown text-free; its lines with the right speakers or
    with the speakers swapped (both new texts, written ``Name: line``, encoded by the frozen text pathway)."""
    require_truth(ctx, "character_coherence")
    index, col, skips = SplitIndex(ctx, split), _Panels(ctx), _counter(skips)
    drafts = []
    for _, stream in index.stream_items():
        for i, answer in enumerate(stream.tolist()):
            pair = speaker_texts(ctx, col, answer)
            if isinstance(pair, str):
                skips[pair] += 1
                continue
            if i < MIN_CONTEXT:
                skips["fewer_than_2_preceding_panels"] += 1
                continue
            vision, pid = text_vision(ctx, answer), col.pid(answer)
            right, swapped = (Candidate(pid, vision, text_row=PENDING_ROW, text=t, composition_from=pid) for t in pair)
            fields = col.fields("character_coherence", answer, stream[max(0, i - MAX_CONTEXT) : i].tolist(), [], "-")
            drafts.append(Draft(right, [swapped], fields))
    return finish("character_coherence", split, drafts, rng, limit)


def speaker_texts(ctx: TaskContext, col: _Panels, row: int) -> tuple[str, str] | str:
    """(the panel's lines with their speakers, with the speakers swapped), or the reason there is no such pair."""
    lines = col["lines"][row]
    if not isinstance(lines, list):
        return "no_lines"
    speakers = list(dict.fromkeys(line.get("speaker") for line in lines if _is_speech(line)))
    if len(speakers) < 2:
        return "fewer_than_2_speakers"
    # The words as the reader read them (OCR noise and all, like the stored texts) where they match the lines.
    boxes = col["text_boxes"][row]
    words = list(boxes) if boxes is not None and len(boxes) == len(lines) else [line["text"] for line in lines]
    swap = dict(zip(speakers, speakers[1:] + speakers[:1], strict=True))  # two speakers swap; three would rotate
    right = _render(ctx, lines, words, {})
    swapped = _render(ctx, lines, words, swap)
    return (right, swapped) if text_key(right) != text_key(swapped) else "swap_changes_nothing"


def _is_speech(line: Mapping[str, Any]) -> bool:
    """A balloon line with a speaker (captions have none)."""
    return line.get("kind", "speech") == "speech" and bool(line.get("speaker"))


def _render(ctx: TaskContext, lines: Sequence[Mapping], words: Sequence[str], swap: Mapping[str, str]) -> str:
    """A panel's lines as one text, each balloon prefixed by its speaker's name: ``Mira: Throw it! Bolt: Got it!``."""
    parts = []
    for line, text in zip(lines, words, strict=True):
        if _is_speech(line):
            speaker = swap.get(line["speaker"], line["speaker"])
            parts.append(f"{ctx.speakers.get(speaker, speaker)}: {text}")
        else:
            parts.append(str(text))
    return " ".join(parts)


def sample_visual_closure(
    ctx: TaskContext, split: str, rng: np.random.Generator, *, limit: int | None = None, skips: Counter | None = None
) -> list[TaskSample]:
    """The panels of an action so far (at least 2); its next panel among 5 images (text-free where the store holds
    every candidate's twin, else all full), image only, each with the next slot's composition. Negatives: the same
    scene run (later steps of the action included), else scene (hard); else the book, other books (easy)."""
    require_truth(ctx, "visual_closure")
    index, col, skips = SplitIndex(ctx, split), _Panels(ctx), _counter(skips)
    drafts = []
    for _, stream in index.stream_items():
        for i, answer in enumerate(stream.tolist()):
            context = action_context(col, stream.tolist(), i)
            if context is None or len(context) < MIN_CONTEXT:
                skips["no_action" if context is None else "fewer_than_2_preceding_panels_of_its_action"] += 1
                continue
            rules = [*index.scene_rules(answer), index.book_rule(answer), index.other_books_rule(answer)]
            drawn = draw(rng, rules, CANDIDATES["visual_closure"] - 1, {*context, answer})
            if drawn is None:
                skips["too_few_negatives"] += 1
                continue
            twins = all(col["text_free"][r] for r in [answer, *drawn[0]])
            vision, slot = ("text_free" if twins else "full"), col.pid(answer)
            offer = [Candidate(col.pid(r), vision, composition_from=slot) for r in [answer, *drawn[0]]]
            fields = col.fields("visual_closure", answer, context, drawn[1], difficulty_of(drawn[1], rules))
            drafts.append(Draft(offer[0], offer[1:], fields))
    return finish("visual_closure", split, drafts, rng, limit)


def action_context(col: _Panels, stream: Sequence[int], i: int) -> list[int] | None:
    """The panels of stream[i]'s action (beat) before it, in order, back to the action's first one on the stream;
    None when the panel is in no action."""
    beat, step = col["beat"], col["action_step"]
    if not _known(beat[stream[i]]) or not _known(step[stream[i]]):
        return None
    j = i
    while j > 0 and beat[stream[j - 1]] == beat[stream[i]] and step[stream[j - 1]] == step[stream[j]] - 1:
        j -= 1
    return list(stream[j:i])


def sample_text_closure(
    ctx: TaskContext, split: str, rng: np.random.Generator, *, limit: int | None = None, skips: Counter | None = None
) -> list[TaskSample]:
    """Up to 4 preceding panels, then the next panel text-free; its text among 4 texts of other panels of the same
    book (stored text embeddings, ``text_from``), all different, preferably with as many balloons as the answer."""
    index, col, skips = SplitIndex(ctx, split), _Panels(ctx), _counter(skips)
    drafts = []
    for _, stream in index.stream_items():
        for i, answer in enumerate(stream.tolist()):
            if not col["has_text"][answer]:
                skips["answer_without_text"] += 1
            elif i < MIN_CONTEXT:
                skips["fewer_than_2_preceding_panels"] += 1
            else:
                context = stream[max(0, i - MAX_CONTEXT) : i].tolist()
                draft = _text_draft(ctx, col, rng, "text_closure", answer, context, [index.book_rule(answer)])
                if draft is None:
                    skips["too_few_negatives"] += 1
                else:
                    drafts.append(draft)
    return finish("text_closure", split, drafts, rng, limit)


def sample_text_cloze(
    ctx: TaskContext, split: str, rng: np.random.Generator, *, limit: int | None = None, skips: Counter | None = None
) -> list[TaskSample]:
    """Three preceding panels, then the answer panel text-free; its text among 3. Every answer gives a hard sample
    (negatives from neighbouring pages of its book) and an easy one (other books of the split), as in COMICS."""
    index, col, skips = SplitIndex(ctx, split), _Panels(ctx), _counter(skips)
    drafts = []
    for _, stream in index.stream_items():
        for i, answer in enumerate(stream.tolist()):
            if not col["has_text"][answer]:
                skips["answer_without_text"] += 1
                continue
            if i < CLOZE_CONTEXT:
                skips["fewer_than_3_preceding_panels"] += 1
                continue
            rules = {
                "hard": index.nearby_rule(answer, "neighbouring_pages", True),
                "easy": index.other_books_rule(answer),
            }
            for difficulty, rule in rules.items():
                context = stream[i - CLOZE_CONTEXT : i].tolist()
                draft = _text_draft(ctx, col, rng, "text_cloze", answer, context, [rule], suffix=f"-{difficulty}")
                if draft is None:
                    skips[f"{difficulty}_too_few_negatives"] += 1
                else:
                    drafts.append(draft)
    return finish("text_cloze", split, drafts, rng, limit)


def _text_draft(
    ctx: TaskContext,
    col: _Panels,
    rng: np.random.Generator,
    task: str,
    answer: int,
    context: Sequence[int],
    rules: Sequence[Rule],
    suffix: str = "",
) -> Draft | None:
    """A text task's draft: the answer panel (text-free, its own slot) with its own text and with k - 1 other texts
    drawn by the rules among panels with text, all different; None where the rules give too few."""
    has_text = np.asarray(col["has_text"], dtype=bool)
    rules = [Rule(r.name, r.hard, r.rows[has_text[r.rows]]) for r in rules]
    boxes, texts = col["n_boxes"], col["text"]
    drawn = draw(
        rng,
        rules,
        CANDIDATES[task] - 1,
        {*context, answer},
        key=lambda r: text_key(texts[r]),
        taken={text_key(texts[answer])},
        prefer=lambda r: boxes[r] == boxes[answer],
    )
    if drawn is None:
        return None
    vision, pid = text_vision(ctx, answer), col.pid(answer)
    offer = [
        Candidate(pid, vision, text_from=col.pid(r), text=texts[r], composition_from=pid) for r in [answer, *drawn[0]]
    ]
    difficulty = difficulty_of(drawn[1], rules) if task == "text_cloze" else "-"
    fields = col.fields(task, answer, context, drawn[1], difficulty, suffix=suffix)
    return Draft(offer[0], offer[1:], fields)


def sample_caption_relevance(
    ctx: TaskContext, split: str, rng: np.random.Generator, *, limit: int | None = None, skips: Counter | None = None
) -> list[TaskSample]:
    """A caption (description) of a panel, unique in its book, and no context images; the panel after it among 4,
    full, without composition. Negatives: the same scene run, else scene (hard); else the book, other books (easy);
    all with different descriptions. The captioned panel itself is never a candidate."""
    require_truth(ctx, "caption_relevance")
    index, col, skips = SplitIndex(ctx, split), _Panels(ctx), _counter(skips)
    descriptions, unique = col["description"], col["caption_unique"]

    def described(row: int) -> str:
        return text_key(descriptions[row])  # candidates' descriptions all differ, so one caption fits one of them

    drafts = []
    for _, stream in index.stream_items():
        skips["last_panel_of_its_book"] += 1
        for captioned, answer in zip(stream[:-1].tolist(), stream[1:].tolist(), strict=True):
            if not _known(descriptions[captioned]) or not str(descriptions[captioned]).strip():
                skips["no_caption"] += 1
                continue
            if not unique[captioned]:
                skips["caption_not_unique_in_its_book"] += 1
                continue
            rules = [*index.scene_rules(answer), index.book_rule(answer), index.other_books_rule(answer)]
            drawn = draw(
                rng, rules, CANDIDATES["caption_relevance"] - 1, {captioned, answer}, described, {described(answer)}
            )
            if drawn is None:
                skips["too_few_negatives"] += 1
                continue
            offer = [col.whole(r) for r in [answer, *drawn[0]]]
            fields = col.fields(
                "caption_relevance",
                answer,
                [],
                drawn[1],
                difficulty_of(drawn[1], rules),
                query_text=str(descriptions[captioned]),
                built_from={"caption_of": col.pid(captioned)},
            )
            drafts.append(Draft(offer[0], offer[1:], fields))
    return finish("caption_relevance", split, drafts, rng, limit)


def sample_reading_order(
    ctx: TaskContext, split: str, rng: np.random.Generator, *, limit: int | None = None, skips: Counter | None = None
) -> list[TaskSample]:
    """A page's panels shuffled (each with its own composition: the boxes are the input here, the list position is
    not); ``order[i]`` is the reading position of ``context[i]``; ``direction`` the book's where the corpus labels
    it."""
    index, col, skips = SplitIndex(ctx, split), _Panels(ctx), _counter(skips)
    pages = []
    for page, rows in sorted(index.pages.items()):
        if len(rows) < 2:
            skips["single_panel_page"] += 1
        else:
            pages.append((page, rows.tolist()))
    samples = []
    for page, rows in subsample(pages, rng, limit):
        shuffle = rng.permutation(len(rows))
        book = col["book_id"][rows[0]]
        samples.append(
            TaskSample(
                task="reading_order",
                sample_id=f"reading_order/{col['page_id'][rows[0]]}",
                split=split,
                book_id=book,
                context=[col.pid(rows[j]) for j in shuffle],
                order=[int(j) for j in shuffle],
                direction=ctx.directions.get(book),
                built_from={"page": col["page_id"][rows[0]], "page_index": int(page)},
            )
        )
    return samples


SAMPLERS: dict[str, Callable[..., list[TaskSample]]] = {
    "panel_picking": sample_panel_picking,
    "character_coherence": sample_character_coherence,
    "visual_closure": sample_visual_closure,
    "text_closure": sample_text_closure,
    "caption_relevance": sample_caption_relevance,
    "text_cloze": sample_text_cloze,
    "reading_order": sample_reading_order,
}


# -------------------------------------------------------------------------------------------- sets and their files


def task_rng(seed: int, task: str, split: str) -> np.random.Generator:
    """The generator of one task and split: keyed by both, so adding a task or a split changes no other set."""
    return np.random.default_rng([seed, TASKS.index(task), zlib.crc32(split.encode("utf-8"))])


def make_task_set(
    ctx: TaskContext,
    task: str,
    split: str,
    rng: np.random.Generator,
    *,
    limit: int | None = None,
    skips: Counter | None = None,
) -> TaskSet:
    """One task's samples for a split, with its new texts encoded (rows of ``TaskSet.texts``)."""
    if task not in SAMPLERS:
        raise ValueError(f"unknown task {task!r}: one of {', '.join(TASKS)}")
    samples = SAMPLERS[task](ctx, split, rng, limit=limit, skips=skips)
    return TaskSet(task, split, samples, ctx.encode(texts_of(samples)))


def training_samples(
    ctx: TaskContext,
    task: str,
    rng: np.random.Generator,
    *,
    split: str = "train",
    limit: int | None = None,
    skips: Counter | None = None,
) -> TaskSet:
    """A fresh draw of a task's training samples (new negatives, answer indices and shuffles): call it once per epoch
    with the trainer's generator. Same rules as the fixed sets; texts already encoded come from the encoder's cache."""
    return make_task_set(ctx, task, split, rng, limit=limit, skips=skips)


def build_task_sets(
    run_dir: str | Path,
    store: str | Path | None = None,
    checkpoint: str | Path | None = None,
    splits: Sequence[str] = ("val", "test"),
    seed: int = 0,
    limits: int | Mapping[str, int] | None = None,
    tasks: Sequence[str] = TASKS,
) -> dict[str, dict[str, Any]]:
    """Write the fixed task sets of each split under ``<run>/tasks/<split>/`` and return each split's manifest.

    ``limits`` caps the samples per task and split (one number for all, or per task; a seeded subset). The same
    seed, store and corpus give byte-identical files. A task the corpus cannot give is listed in the manifest with
    the reason and has no file (an old one is removed, so no stale set is read).
    """
    ctx = load_context(run_dir, store, checkpoint)
    return {split: write_split(ctx, task_dir(run_dir, split), split, seed, limits, tasks) for split in splits}


def write_split(
    ctx: TaskContext,
    folder: str | Path,
    split: str,
    seed: int = 0,
    limits: int | Mapping[str, int] | None = None,
    tasks: Sequence[str] = TASKS,
) -> dict[str, Any]:
    """The task files and manifest of one split in ``folder``; returns the manifest."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    entries = {task: _write_task(ctx, folder, task, split, seed, _limit(limits, task)) for task in tasks}
    part = ctx.panels[ctx.panels.split == split]
    books = sorted(set(part.book_id))
    manifest = dict(
        split=split,
        seed=seed,
        limits=_plain(dict(limits) if isinstance(limits, Mapping) else limits),
        books=books,
        pages=int(part.page_index.nunique()),
        panels=len(part),
        truth=ctx.truth,
        truth_note=ctx.truth_note,
        text_free=ctx.text_free,
        text_free_note="" if ctx.text_free else NO_TWINS,
        directions={b: ctx.directions[b] for b in books if b in ctx.directions},
        rules=dict(
            candidates=CANDIDATES,
            max_context=MAX_CONTEXT,
            min_context=MIN_CONTEXT,
            cloze_context=CLOZE_CONTEXT,
            nearby_pages=NEARBY_PAGES,
        ),
        tasks=entries,
        comicnb_version=__version__,
        **ctx.provenance,
    )
    write_manifest(folder, manifest)
    return manifest


NO_TWINS = (
    "the store holds no text-free twins (text_free_masks): the text tasks show their answer panel without its image "
    "(vision 'none') and visual closure's candidates with their full image"
)


def _limit(limits: int | Mapping[str, int] | None, task: str) -> int | None:
    """The cap of one task."""
    if limits is None or isinstance(limits, int):
        return limits
    return limits.get(task)


def _write_task(ctx: TaskContext, folder: Path, task: str, split: str, seed: int, limit: int | None) -> dict[str, Any]:
    """Build, check and write one task set; its manifest entry."""
    skips: Counter = Counter()
    try:
        task_set = make_task_set(ctx, task, split, task_rng(seed, task, split), limit=limit, skips=skips)
    except TaskUnavailable as why:
        for suffix in (".jsonl", ".texts.npy"):
            (folder / f"{task}{suffix}").unlink(missing_ok=True)
        return {"built": False, "reason": str(why)}
    broken = {s.sample_id: problems for s in task_set.samples if (problems := check_sample(s))}
    if broken:  # a sampler bug: never write a set that breaks the rules every score relies on
        raise RuntimeError(f"{task} ({split}) built {len(broken)} samples that break the rules, e.g. {broken}")
    write_task_set(folder, task_set)
    return summary(task_set, skips)


def summary(task_set: TaskSet, skips: Mapping[str, int] | None = None) -> dict[str, Any]:
    """A task set's manifest entry: counts of samples, difficulties, answer indices, visions, negatives' rules and
    skips by reason, and the mean chance accuracy."""
    samples = task_set.samples
    vision = Counter(s.candidates[s.answer].vision for s in samples if s.candidates)
    negatives = Counter(n for s in samples for n in s.built_from.get("negatives", []))
    return dict(
        built=True,
        file=f"{task_set.task}.jsonl",
        samples=len(samples),
        candidates=CANDIDATES.get(task_set.task),
        difficulty=dict(sorted(Counter(s.difficulty for s in samples).items())),
        answer_slots=answer_slots(samples).tolist(),
        vision=dict(sorted(vision.items())),
        negatives=dict(sorted(negatives.items())),
        skipped=dict(sorted((skips or {}).items())),
        texts=int(len(task_set.texts)),
        chance=round(float(np.mean([s.chance for s in samples])), 6) if samples else None,
    )
