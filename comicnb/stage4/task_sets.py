"""The fixed task sets of a run and fresh training draws: building, writing, checking they are current, reading.

``build_task_sets(run_dir)`` writes ``<run>/tasks/<split>/`` for val and test (``write_split``: one file per task and
a manifest of what they were built from, with counts and skips); ``ensure_task_sets`` reuses sets that are current
and builds the rest (notebook 04 and ``comicnb tasks``); ``read_sets`` reads a split's sets for training and scoring,
refusing sets built from another store. ``stale`` is the one check of a manifest against the view it would serve.
``training_samples`` and ``training_sets`` redraw training samples (new negatives, answer slots, shuffles).
"""

from __future__ import annotations

import zlib
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from comicnb import __version__
from comicnb.stage4.drafts import TaskUnavailable, plain, texts_of
from comicnb.stage4.negatives import NEARBY_PAGES
from comicnb.stage4.probes import PROBES_DIR, write_probes
from comicnb.stage4.samplers import SAMPLERS
from comicnb.stage4.tasks import (
    CANDIDATES,
    CLOZE_CONTEXT,
    MANIFEST,
    MAX_CONTEXT,
    MIN_CONTEXT,
    RULES_VERSION,
    SHAPE_TOLERANCES,
    TASKS,
    TEXT_LENGTH_TOLERANCE,
    TaskSet,
    answer_slots,
    check_sample,
    read_manifest,
    read_task_set,
    task_dir,
    write_manifest,
    write_task_set,
)
from comicnb.stage4.view import RunView, open_run

# What a set's inputs were: a set built from another store or truth scores other inputs. The manifest also records the
# store's and checkpoint's paths, and the seed and cap it was built with, which a rebuild compares as well.
PROVENANCE_KEYS = ("store_checkpoint_sha256", "store_metadata_sha256", "truth_sha256")
TASKS_COMMAND = "`python -m comicnb tasks --run-dir {run}`"


class TaskSetsMissingError(FileNotFoundError):
    """The fixed task sets of a split are not built, or were built from another store."""


def task_rng(seed: int, task: str, split: str) -> np.random.Generator:
    """The generator of one task and split: keyed by both, so adding a task or a split changes no other set."""
    return np.random.default_rng([seed, TASKS.index(task), zlib.crc32(split.encode("utf-8"))])


def make_task_set(
    view: RunView,
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
    samples = SAMPLERS[task](view, split, rng, limit=limit, skips=skips)
    return TaskSet(task, split, samples, view.encode(texts_of(samples)))


def training_samples(
    view: RunView,
    task: str,
    rng: np.random.Generator,
    *,
    split: str = "train",
    limit: int | None = None,
    skips: Counter | None = None,
) -> TaskSet:
    """A fresh draw of a task's training samples (new negatives, answer indices and shuffles): call it once per epoch
    with the trainer's generator. Same rules as the fixed sets; texts already encoded come from the encoder's cache."""
    return make_task_set(view, task, split, rng, limit=limit, skips=skips)


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
    view = open_run(run_dir, store, checkpoint)
    return {split: write_split(view, task_dir(run_dir, split), split, seed, limits, tasks) for split in splits}


def write_split(
    view: RunView,
    folder: str | Path,
    split: str,
    seed: int = 0,
    limits: int | Mapping[str, int] | None = None,
    tasks: Sequence[str] = TASKS,
) -> dict[str, Any]:
    """The task files and manifest of one split in ``folder``; returns the manifest."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    entries = {task: _write_task(view, folder, task, split, seed, _limit(limits, task)) for task in tasks}
    part = view.panels[view.panels.split == split]
    books = sorted(set(part.book_id))
    manifest = dict(
        split=split,
        seed=seed,
        limits=plain(dict(limits) if isinstance(limits, Mapping) else limits),
        books=books,
        pages=int(part.page_index.nunique()),
        panels=len(part),
        truth=view.truth,
        truth_note=view.truth_note,
        text_free=view.text_free,
        text_free_note="" if view.text_free else NO_TWINS,
        directions={b: view.directions[b] for b in books if b in view.directions},
        rules=sampling_rules(),
        tasks=entries,
        probes=write_probes(view, folder / PROBES_DIR, split, seed),
        comicnb_version=__version__,
        **view.provenance,
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


def _write_task(view: RunView, folder: Path, task: str, split: str, seed: int, limit: int | None) -> dict[str, Any]:
    """Build, check and write one task set; its manifest entry."""
    skips: Counter = Counter()
    try:
        task_set = make_task_set(view, task, split, task_rng(seed, task, split), limit=limit, skips=skips)
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
    shapes = Counter(s.built_from["shape_tolerance"] for s in samples if "shape_tolerance" in s.built_from)
    return dict(
        built=True,
        file=f"{task_set.task}.jsonl",
        samples=len(samples),
        candidates=CANDIDATES.get(task_set.task),
        difficulty=dict(sorted(Counter(s.difficulty for s in samples).items())),
        answer_slots=answer_slots(samples).tolist(),
        vision=dict(sorted(vision.items())),
        negatives=dict(sorted(negatives.items())),
        **({"shape_tolerance": {str(k): v for k, v in sorted(shapes.items())}} if shapes else {}),
        skipped=dict(sorted((skips or {}).items())),
        texts=int(len(task_set.texts)),
        chance=round(float(np.mean([s.chance for s in samples])), 6) if samples else None,
    )


# ---------------------------------------------------------------------------------------------- current or stale


def stale(manifest: Mapping[str, Any], view: RunView, keys: Sequence[str] | None = None, **build: Any) -> list[str]:
    """What a split's manifest records that differs from ``view``: every provenance key (or ``keys``), and each build
    setting given (``seed``, ``limits``). Empty: the sets are current."""
    current = {k: view.provenance.get(k) for k in (keys or view.provenance)}
    current.update({k: plain(dict(v) if isinstance(v, Mapping) else v) for k, v in build.items()})
    return sorted(key for key, value in current.items() if manifest.get(key) != value)


def read_sets(
    run_dir: str | Path, view: RunView, tasks: Sequence[str] = TASKS, split: str = "val"
) -> dict[str, TaskSet]:
    """The fixed sets of ``split`` for ``tasks`` (those the corpus could build, with samples); missing sets, or sets
    built from another store, are a TaskSetsMissingError naming the command that builds them."""
    folder = task_dir(run_dir, split)
    command = TASKS_COMMAND.format(run=run_dir)
    if not (folder / MANIFEST).is_file():
        raise TaskSetsMissingError(
            f"no Stage 4 {split} task sets in {folder}/: build them with {command} (or notebook 04, part 1)"
        )
    manifest = read_manifest(folder)
    differ = stale(manifest, view, PROVENANCE_KEYS, rules=sampling_rules())
    if differ:
        raise TaskSetsMissingError(
            f"the {split} task sets in {folder}/ were built from another store or by other sampling rules "
            f"({', '.join(differ)} differ): "
            f"rebuild them with {command} --overwrite (or notebook 04 with rebuild_tasks=True)"
        )
    entries = manifest.get("tasks", {})
    return {t: read_task_set(folder, t) for t in tasks if entries.get(t, {}).get("built") and entries[t].get("samples")}


@dataclass
class TaskSets:
    """The fixed sets of a run's splits as ``ensure_task_sets`` left them: each split's manifest, and which splits were
    reused rather than built."""

    run_dir: Path
    manifests: dict[str, dict[str, Any]]
    reused: list[str]

    def sets(self, split: str | None = None) -> dict[Any, TaskSet]:
        """Every built set, by task for one split, else by (split, task)."""
        splits = [split] if split else list(self.manifests)
        found = {
            (s, task): read_task_set(task_dir(self.run_dir, s), task)
            for s in splits
            for task in TASKS
            if self.manifests[s]["tasks"][task].get("built")
        }
        return {task: found[(s, task)] for s, task in found} if split else found

    def not_built(self) -> list[str]:
        """One line per split and task the corpus could not give, with the reason (and the missing twins' note)."""
        lines = [
            f"{split} {task} not built: {entry.get('reason')}"
            for split, manifest in self.manifests.items()
            for task, entry in manifest["tasks"].items()
            if not entry.get("built")
        ]
        notes = {m["text_free_note"] for m in self.manifests.values() if m.get("text_free_note")}
        return lines + sorted(notes)

    def counts(self) -> pd.DataFrame:
        """Samples, hard and easy samples, and skipped panels or pages per task (rows) and split (columns)."""
        rows = []
        for split, manifest in self.manifests.items():
            for task in TASKS:
                entry = manifest["tasks"][task]
                kinds = entry.get("difficulty", {})
                rows.append(
                    dict(
                        split=split,
                        task=task,
                        samples=entry.get("samples", 0),
                        hard=kinds.get("hard", 0),
                        easy=kinds.get("easy", 0),
                        skipped=sum(entry.get("skipped", {}).values()),
                    )
                )
        table = pd.DataFrame(rows).pivot(index="task", columns="split", values=["samples", "hard", "easy", "skipped"])
        return table.loc[list(TASKS)]

    def probe_counts(self) -> pd.DataFrame:
        """Samples and books of the long-range probes (``comicnb.stage4.probes``) per task (rows) and split (columns),
        with each split's skips by reason; empty where no split has probes (the manifests say why)."""
        rows = [
            dict(split=split, task=task, samples=entry["samples"], books=entry["books"], skipped=entry["skipped"])
            for split, manifest in self.manifests.items()
            if (manifest.get("probes") or {}).get("built")
            for task, entry in manifest["probes"]["tasks"].items()
        ]
        if not rows:
            return pd.DataFrame()
        return pd.DataFrame(rows).pivot(index="task", columns="split", values=["samples", "books", "skipped"])

    def skips(self) -> pd.DataFrame:
        """Every skip by task and reason (rows) and split (columns): what could not become a sample, and why."""
        rows = [
            dict(split=split, task=task, reason=reason, count=count)
            for split, manifest in self.manifests.items()
            for task in TASKS
            for reason, count in manifest["tasks"][task].get("skipped", {}).items()
        ]
        table = pd.DataFrame(rows, columns=["split", "task", "reason", "count"])
        skipped = table.pivot_table(index=["task", "reason"], columns="split", values="count", aggfunc="sum")
        return skipped.fillna(0).astype(int)  # counts, not 28.0


def sampling_rules() -> dict[str, Any]:
    """The rules the samplers draw by, as a manifest records them: sets built under other rules are stale."""
    return plain(
        dict(
            version=RULES_VERSION,
            candidates=CANDIDATES,
            max_context=MAX_CONTEXT,
            min_context=MIN_CONTEXT,
            cloze_context=CLOZE_CONTEXT,
            nearby_pages=NEARBY_PAGES,
            shape_tolerances=list(SHAPE_TOLERANCES),
            text_length_tolerance=TEXT_LENGTH_TOLERANCE,
        )
    )


class TaskSetsStaleError(ValueError):
    """Existing task sets were built from another store, seed, cap or sampling rules, and rebuilding them was not asked
    for."""


def ensure_task_sets(
    view: RunView,
    run_dir: str | Path,
    seed: int = 0,
    limits: int | Mapping[str, int] | None = None,
    rebuild: bool = False,
    splits: Sequence[str] = ("val", "test"),
    remedy: str = "set rebuild_tasks=True to rebuild them",
) -> TaskSets:
    """Each split's sets: reused where current (same store, checkpoint, truth, seed, cap and sampling rules), built
    where missing or where ``rebuild``; sets of other inputs are a TaskSetsStaleError naming what differs and
    ``remedy``, since scores on other samples would not be comparable."""
    manifests, reused = {}, []
    for split in splits:
        folder = task_dir(run_dir, split)
        if (folder / MANIFEST).is_file() and not rebuild:
            manifest = read_manifest(folder)
            differ = stale(manifest, view, seed=seed, limits=limits, rules=sampling_rules())
            if differ:
                raise TaskSetsStaleError(
                    f"the task sets in {folder} were built from another {', '.join(differ)}: {remedy} (scores on the "
                    f"old sets are no longer comparable)"
                )
            manifests[split] = manifest
            reused.append(split)
        else:
            manifests[split] = write_split(view, folder, split, seed, limits)
    return TaskSets(Path(run_dir), manifests, reused)


def training_sets(
    view: RunView, seed: int = 0, limit: int | None = None, tasks: Sequence[str] = TASKS
) -> tuple[list[TaskSet], dict[str, str]]:
    """One fresh training draw of each task from one seeded generator (what the geometry baseline is fitted on), and
    the reason each task the corpus cannot give was left out."""
    rng = np.random.default_rng(seed)
    sets, unavailable = [], {}
    for task in tasks:
        try:
            sets.append(training_samples(view, task, rng, limit=limit))
        except TaskUnavailable as why:
            unavailable[task] = str(why)
    return sets, unavailable
