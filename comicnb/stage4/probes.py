"""Long-range probes: samples whose answer is decided by a panel two or more panels before it.

The embedded corpus interrupts some beats with a *cutaway* (``docs/corpus.md``): one or two panels of other cast
members elsewhere ("Meanwhile, ..."), after which the beat resumes where it stopped, and a question asked just before
the cutaway is answered just after it. The panel a beat resumes with is the answer of three probes, built beside the
seven task sets (never replacing them) and scored by the same heads:

- ``visual_closure``: the action's panels before the cutaway, then the cutaway; the resumed panel among 5 images;
- ``panel_picking``: the resumed panel masked at the end of its page's panels so far (the page holds a panel of the
  action from before the cutaway); the page's later panels are left out, since they would show the action one panel
  away;
- ``text_closure``: up to 4 preceding panels, then the resumed panel text-free; its reply among the replies to the
  other kinds of question (place, colour, count, call), each in the beat's own words, so every candidate fits what
  the answer panel shows and only the question asked before the cutaway picks one.

Negatives match everything nearer than the far panels: in the image probes they share neither the cutaway's scene nor
any of its cast, have the answer's shape, size and number of text boxes, and play the answer's action at its step
where the split has enough such panels ("hard"), else the same action or any story panel ("easy"); they differ from
the answer in who plays or where, which only the panels before the cutaway show. So the panel nearest the answer (the
cutaway) says nothing about which candidate is right: a model that reads only it should stay at chance, and a model
must reach two or more panels back. What the candidates alone give away is measured, not assumed: the probes are
scored with no context too (``no_context``), beside every baseline.
Every sample keeps the rules of ``tasks.check_sample``. The sets are written under ``<run>/tasks/<split>/probes/``
with the split's task sets, and scored in notebook 05 with the context diagnostics (``probe_table``).
"""

from __future__ import annotations

import zlib
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from comicnb.metrics import accuracy_interval
from comicnb.stage4.drafts import PENDING_ROW, Draft, PanelColumns, finish, text_key, texts_of
from comicnb.stage4.negatives import Rule, SplitIndex, difficulty_of, draw_shaped, known
from comicnb.stage4.samplers import action_context, image_offer, shaped
from comicnb.stage4.tasks import (
    CANDIDATES,
    MAX_CONTEXT,
    Candidate,
    TaskSample,
    TaskSet,
    check_sample,
    length_cell,
    read_task_set,
    write_task_set,
)
from comicnb.stage4.view import RunView

PROBE_TASKS = ("panel_picking", "visual_closure", "text_closure")
PROBES_DIR = "probes"
PROBE_KEY = 97  # keys the probes' generators apart from the task sets'
# Where the image probes' negatives come from, in order: the answer's action at its step (a "hard" sample when all are),
# the same action at another step, any other story panel.
IMAGE_RULES = ("same_action_and_step", "same_action", "other_story_panel")
NEEDED = ("cutaway", "resumes", "action", "action_step", "characters", "scene", "lines")


# ------------------------------------------------------------------------------------------------------ finding


def resumed_panels(index: SplitIndex, col: PanelColumns, skips: Counter) -> list[dict[str, Any]]:
    """Every panel of the split a beat resumes with after a cutaway: its stream, position ``i``, the cutaway's rows
    and the action's rows before it (at least two; the last of them is two or more panels before the answer)."""
    found = []
    for _, stream in index.stream_items():
        rows = stream.tolist()
        for i, row in enumerate(rows):
            if not isinstance(col["resumes"][row], Mapping):
                continue
            j = i - 1
            while j >= 0 and _cut(col, rows[j]):
                j -= 1
            if j < 0 or j == i - 1 or not _continues(col, rows[j], row):
                skips["cutaway_not_on_the_stream"] += 1  # a page dropped or read out of order by the reader
                continue
            before = action_context(col, rows, j)
            before = [*(before or []), rows[j]]
            if len(before) < 2:
                skips["fewer_than_2_panels_before_the_cutaway"] += 1
                continue
            found.append(dict(stream=rows, i=i, answer=row, cut=rows[j + 1 : i], before=before))
    return found


def _cut(col: PanelColumns, row: int) -> bool:
    """Whether a panel is a cutaway (unknown: not)."""
    value = col["cutaway"][row]
    return bool(value) if known(value) else False


def _continues(col: PanelColumns, before: int, after: int) -> bool:
    """Whether ``after`` plays the step after ``before`` of the same action, with the same cast in the same scene."""
    step = col["action_step"]
    same = all(col[c][before] == col[c][after] for c in ("action", "scene", "characters"))
    return same and known(step[before]) and known(step[after]) and step[after] == step[before] + 1


@dataclass
class ResumedPanels:
    """What the three probes of one split are drawn from, found once: the split's index and columns, its resumed
    panels (``resumed_panels``), and the skips a probe starts from (those of finding them)."""

    index: SplitIndex
    col: PanelColumns
    panels: list[dict[str, Any]]
    skips: Counter

    @classmethod
    def of(cls, view: RunView, split: str) -> ResumedPanels:
        index, col, skips = SplitIndex(view, split), PanelColumns(view), Counter()
        return cls(index, col, resumed_panels(index, col, skips), skips)

    def fresh(self) -> ResumedPanels:
        """The same panels with a skip counter of the probe's own (starting from the finding's skips)."""
        return replace(self, skips=Counter(self.skips))


# ---------------------------------------------------------------------------------------------------- samplers


def _image_negatives(
    rng: np.random.Generator, index: SplitIndex, col: PanelColumns, found: Mapping[str, Any], exclude: set[int], k: int
) -> tuple[list[int], list[str], int, str] | None:
    """(rows, their rules' names, shape level, difficulty) of k panels that match the cutaway no better than the
    answer does (neither its scene nor any of its cast), differ from the answer in cast or scene, and have its shape,
    size and number of text boxes (the tightest level of SHAPE_TOLERANCES that gives k); drawn from the answer's
    action at its step, else its action at any step, else any story panel (IMAGE_RULES, in that order; hard when
    every one is of the first)."""
    answer = found["answer"]
    cut_scenes = {col["scene"][r] for r in found["cut"]}
    cut_cast = {c for r in found["cut"] for c in col["characters"][r]}
    who, scene, action = set(col["characters"][answer]), col["scene"][answer], col["action"][answer]
    pool = [
        r
        for r in index.rows.tolist()
        if known(col["action_step"][r])
        and not _cut(col, r)
        and index.text_boxes[r] == index.text_boxes[answer]
        and col["scene"][r] not in cut_scenes
        and not cut_cast & set(col["characters"][r])
        and (col["scene"][r] != scene or set(col["characters"][r]) != who)
    ]
    same_action = np.array([col["action"][r] == action for r in pool], dtype=bool)
    same_step = same_action & np.array([col["action_step"][r] == col["action_step"][answer] for r in pool], dtype=bool)
    rows = np.asarray(pool, dtype=int)
    masks = (same_step, same_action & ~same_step, ~same_action)
    rules = [Rule(name, name == IMAGE_RULES[0], rows[mask]) for name, mask in zip(IMAGE_RULES, masks, strict=True)]
    drawn = draw_shaped(rng, index, answer, rules, k, exclude)
    return None if drawn is None else (*drawn, difficulty_of(drawn[1], rules))


def probe_visual_closure(
    view: RunView, split: str, rng: np.random.Generator, resumed: ResumedPanels
) -> list[TaskSample]:
    """The action's panels before the cutaway, then the cutaway; the resumed panel among 5 images (text-free where
    every candidate has its twin), each with the answer slot's composition."""
    index, col, skips, drafts = resumed.index, resumed.col, resumed.skips, []
    for found in resumed.panels:
        answer, context = found["answer"], [*found["before"], *found["cut"]]
        drawn = _image_negatives(rng, index, col, found, {*context, answer}, CANDIDATES["visual_closure"] - 1)
        if drawn is None:
            skips["too_few_negatives"] += 1
            continue
        offer = image_offer(col, answer, drawn[0])
        fields = col.fields("visual_closure", answer, context, drawn[1], drawn[3], **_far(col, found, drawn[2]))
        drafts.append(Draft(offer[0], offer[1:], fields))
    return finish("visual_closure", split, drafts, rng, None)


def probe_panel_picking(
    view: RunView, split: str, rng: np.random.Generator, resumed: ResumedPanels
) -> list[TaskSample]:
    """The resumed panel masked after its page's panels so far, which hold a panel of the action from before the
    cutaway; among 5 full panels with their own text and the masked slot's composition."""
    index, col, skips, drafts = resumed.index, resumed.col, resumed.skips, []
    for found in resumed.panels:
        answer = found["answer"]
        page = index.pages[col["page_index"][answer]].tolist()
        context = page[: page.index(answer)]
        if not set(found["before"]) & set(context):
            skips["no_panel_before_the_cutaway_on_its_page"] += 1
            continue
        drawn = _image_negatives(rng, index, col, found, set(page), CANDIDATES["panel_picking"] - 1)
        if drawn is None:
            skips["too_few_negatives"] += 1
            continue
        offer = [col.whole(r, slot_of=answer) for r in [answer, *drawn[0]]]
        extra = _far(col, found, drawn[2])
        fields = col.fields("panel_picking", answer, context, drawn[1], drawn[3], slot=len(context), **extra)
        drafts.append(Draft(offer[0], offer[1:], fields))
    return finish("panel_picking", split, drafts, rng, None)


def probe_text_closure(view: RunView, split: str, rng: np.random.Generator, resumed: ResumedPanels) -> list[TaskSample]:
    """Up to 4 preceding panels (the question before the cutaway among them), then the resumed panel text-free; its
    reply among one reply of each other kind of question in the beat's words, all with the answer's number of text
    boxes and length cell (texts encoded by the frozen text pathway, the answer's too, so none is told by its
    wording or its OCR noise)."""
    col, skips, drafts = resumed.col, resumed.skips, []
    for found in resumed.panels:
        answer, resumes = found["answer"], col["resumes"][found["answer"]]
        if not resumes.get("all_kinds"):
            skips["not_every_kind_of_question_fits_the_beat"] += 1
            continue
        if not bool(view.panels.text_free[answer]):
            skips["no_text_free_twin"] += 1
            continue
        texts = _reply_texts(col, answer, resumes, rng)
        if texts is None:
            skips["no_reply_of_the_answer_s_length"] += 1
            continue
        pid = col.pid(answer)
        offer = [Candidate(pid, "text_free", text_row=PENDING_ROW, text=t, composition_from=pid) for t in texts]
        context = found["stream"][max(0, found["i"] - MAX_CONTEXT) : found["i"]]
        names = ["other_kind_of_question"] * (len(texts) - 1)
        fields = col.fields("text_closure", answer, context, names, "-", **_far(col, found, None, resumes["asked"]))
        drafts.append(Draft(offer[0], offer[1:], fields))
    return finish("text_closure", split, drafts, rng, None)


def _reply_texts(col: PanelColumns, answer: int, resumes: Mapping[str, Any], rng: np.random.Generator) -> list | None:
    """The answer panel's text with its own reply, then with one reply of each other kind in the answer's length
    cell (chosen at random among those that fit); None where a kind has none."""
    lines = [str(line["text"]) for line in col["lines"][answer]]
    at = lines.index(resumes["reply"]) if resumes["reply"] in lines else 0

    def text(reply: str) -> str:
        return " ".join([*lines[:at], reply, *lines[at + 1 :]])

    cell = length_cell(text(resumes["reply"]))
    texts = [text(resumes["reply"])]
    for kind in sorted(resumes["replies"]):
        fits = [r for r in resumes["replies"][kind] if length_cell(text(r)) == cell]
        fits = [r for r in fits if text_key(text(r)) not in {text_key(t) for t in texts}]
        if not fits:
            return None
        texts.append(text(fits[int(rng.integers(len(fits)))]))
    return texts


def _far(col: PanelColumns, found: Mapping[str, Any], level: int | None, asked: str | None = None) -> dict:
    """``built_from`` of a probe: how far back the nearest deciding panel is, the cutaway's panels, the shape level."""
    record: dict[str, Any] = dict(
        probe=True,
        distance=found["i"] - found["stream"].index(found["before"][-1]),
        cutaway=col.ids(found["cut"]),
    )
    if level is not None:
        record.update(shaped(level)["built_from"])
    if asked is not None:
        record["asked"] = asked
    return {"built_from": record}


PROBES = {
    "panel_picking": probe_panel_picking,
    "visual_closure": probe_visual_closure,
    "text_closure": probe_text_closure,
}


# ------------------------------------------------------------------------------------------------ files


def missing_truth(view: RunView) -> str | None:
    """Why the probes cannot be built from this run (None where they can)."""
    if view.truth is None:
        return f"the probes need the corpus's ground truth (its cutaways), which this corpus lacks: {view.truth_note}"
    lacking = [c for c in NEEDED if c not in view.panels]
    if lacking:
        return f"the ground truth has no {', '.join(lacking)} (a sidecar older than version 4): regenerate the corpus"
    return None


def write_probes(view: RunView, folder: str | Path, split: str, seed: int = 0) -> dict[str, Any]:
    """Build and write the probes of one split into ``folder``; their manifest entry (per task: samples, chance,
    distances, skips; or why none were built)."""
    folder = Path(folder)
    reason = missing_truth(view)
    if reason is not None:
        for task in PROBE_TASKS:
            for suffix in (".jsonl", ".texts.npy"):
                (folder / f"{task}{suffix}").unlink(missing_ok=True)
        return {"built": False, "reason": reason}
    entries, found = {}, ResumedPanels.of(view, split)
    for n, task in enumerate(PROBE_TASKS):
        resumed = found.fresh()
        rng = np.random.default_rng([seed, PROBE_KEY, n, zlib.crc32(split.encode("utf-8"))])
        samples = PROBES[task](view, split, rng, resumed)
        broken = {s.sample_id: problems for s in samples if (problems := check_sample(s))}
        if broken:
            raise RuntimeError(f"the {task} probe ({split}) built {len(broken)} samples that break the rules: {broken}")
        task_set = TaskSet(task, split, samples, view.encode(texts_of(samples)))
        write_task_set(folder, task_set)
        entries[task] = dict(
            samples=len(samples),
            books=len({s.book_id for s in samples}),
            chance=round(float(np.mean([s.chance for s in samples])), 6) if samples else None,
            distance=dict(sorted(Counter(str(s.built_from["distance"]) for s in samples).items())),
            skipped=dict(sorted(resumed.skips.items())),
        )
    return {"built": True, "folder": PROBES_DIR, "tasks": entries}


def read_probes(task_folder: str | Path, manifest: Mapping[str, Any]) -> dict[str, TaskSet]:
    """The probe sets of one split (those with samples), from its task folder and manifest; {} where none were built
    (``manifest["probes"]["reason"]`` says why)."""
    entry = manifest.get("probes") or {}
    if not entry.get("built"):
        return {}
    folder = Path(task_folder) / PROBES_DIR
    return {t: read_task_set(folder, t) for t, e in entry["tasks"].items() if e.get("samples")}


# ------------------------------------------------------------------------------------------------------ scores


def probe_table(
    samples: pd.DataFrame,
    diagnosis: pd.DataFrame,
    main: str = "stage4",
    ablation: str = "no_transformer",
    level: float = 0.95,
    n_resamples: int = 2000,
    seed: int = 0,
) -> pd.DataFrame:
    """One row per probe: samples, books, chance, the best no-learning or learned baseline, the main model and the
    ablation with their book-bootstrap intervals, the main model given only the panel nearest the answer
    (``nearest_only``) and no context, and the paired gains of the main model over the ablation and over
    nearest-only with their intervals; ``goal`` is whether both gains' intervals lie above zero.

    ``samples``: per-sample rows of the baselines on the probes (``results.sample_frame``); ``diagnosis``: the
    ``diagnostics.diagnose`` samples of the models on the probes."""
    rows = []
    for task, part in diagnosis.groupby("task", sort=False):
        given = part[part.condition == "given"]

        def scored(method: str, condition: str = "given", part: pd.DataFrame = part) -> pd.Series:
            chosen = part[(part.method == method) & (part.condition == condition)]
            return chosen.set_index("sample_id").correct

        books = given.drop_duplicates("sample_id").set_index("sample_id").book_id
        row: dict[str, Any] = dict(task=task, n=len(books), books=books.nunique())
        row["chance"] = float(given.drop_duplicates("sample_id").chance.mean())
        base = samples[(samples.task == task) & (samples.method != "chance")]
        if len(base):
            means = base.groupby("method").correct.mean()
            row.update(best_baseline=str(means.idxmax()), best_baseline_accuracy=float(means.max()))
        for name, method, condition in (
            (main, main, "given"),
            (ablation, ablation, "given"),
            ("nearest_only", main, "nearest"),
            ("no_context", main, "removed"),
        ):
            values = scored(method, condition)
            if len(values):
                acc, low, high = accuracy_interval(
                    values.to_numpy(), level, "bootstrap", books[values.index].to_numpy(), n_resamples, seed
                )
                row.update({name: acc, f"{name}_low": low, f"{name}_high": high})
        for name, other, condition in (("over_ablation", ablation, "given"), ("over_nearest", main, "nearest")):
            a, b = scored(main), scored(other, condition)
            common = a.index.intersection(b.index)
            if len(common):
                gain, low, high = accuracy_interval(
                    (a[common] - b[common]).to_numpy(),
                    level,
                    "bootstrap",
                    books[common].to_numpy(),
                    n_resamples,
                    seed,
                )
                row.update({name: gain, f"{name}_low": low, f"{name}_high": high})
        row["goal"] = bool(row.get("over_ablation_low", -1) > 0 and row.get("over_nearest_low", -1) > 0)
        rows.append(row)
    return pd.DataFrame(rows)


def probe_verdicts(table: pd.DataFrame, main: str = "stage4", ablation: str = "no_transformer") -> list[str]:
    """One sentence per probe: the main model beside chance, its ablation, itself with only the nearest panel and
    with no context, and whether it clears both the ablation and nearest-only with its paired interval (the goal)."""
    lines = []
    for _, row in table.iterrows():
        if main not in row or pd.isna(row.get(main)):
            continue
        head = f"{row.task} probe ({row.n} samples, {row.books} books, chance {row.chance:.3f}): {main} {row[main]:.3f}"
        head += f" [{row[f'{main}_low']:.3f}, {row[f'{main}_high']:.3f}]"
        parts = [
            f"{name.replace('_', ' ')} {row[name]:.3f}"
            for name in (ablation, "nearest_only", "no_context")
            if name in row and pd.notna(row[name])
        ]
        if pd.notna(row.get("best_baseline_accuracy")):
            parts.append(f"best baseline {row.best_baseline} {row.best_baseline_accuracy:.3f}")
        gains = [
            f"{label} {row[name]:+.3f} [{row[f'{name}_low']:+.3f}, {row[f'{name}_high']:+.3f}]"
            for name, label in (("over_ablation", f"over {ablation}"), ("over_nearest", "over nearest only"))
            if name in row and pd.notna(row[name])
        ]
        met = "goal met" if row.goal else "goal not met"
        lines.append(f"{head}; {', '.join(parts)}; {met}: {', '.join(gains)}")
    return lines
