"""The ground truth: the sidecar written beside a corpus, and the per-panel truth read back from it.

Version 2 of the sidecar adds, per panel, the story structure Stage 4 samples tasks from: ``beat`` and
``scene_run`` (book-unique numbers of the panel's beat and of its stretch of one scene), ``speakers`` and
``caption_unique``. Version 3 adds, per page, ``reading``: ``fixed`` where the layout admits one order, ``across`` or
``down`` for a grid read across its rows or down its columns. Version 4 adds, per panel, ``cutaway`` (a panel of
other cast members elsewhere that interrupts a beat) and ``resumes`` (on the panel a beat resumes with after its
cutaway: the kind of question asked before it, the reply, and the other kinds' replies in the beat's words). Version
1 sidecars are still read: what they lack is derived from what they have.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path

import pandas as pd

from comicnb.corpus.synth.story import CAST

VERSION = 5  # the sidecar's "version" field (3: a page's ``reading``; 4: cutaways and the beats they interrupt;
# 5: each text box's own box in the page JSON, ``text_box_bboxes``)
# What the sidecar keeps of each planned page and panel; boxes, sizes and formats are drawing details.
_PAGE_TRUTH = ("label", "layout", "reading", "reading_direction", "naive_order_correct", "scene")
_PANEL_TRUTH = ("characters", "scene", "action", "action_step", "action_steps", "caption", "lines")
# The columns of panel_truth, in order: the first eight are those of version 1.
TRUTH_COLUMNS = (
    "panel_id",
    "page_index",
    "book_id",
    "page_name",
    "characters",
    "character",
    "scene",
    "caption",
    "beat",
    "scene_run",
    "action",
    "action_step",
    "action_steps",
    "lines",
    "speakers",
    "caption_unique",
    "description",
    "cutaway",
    "resumes",
)


def ground_truth(plan: dict, bbox_format: str) -> dict:
    """The sidecar (docs/corpus.md section 3): the plan without its drawing details, with the story structure."""
    books = {}
    for b, book in plan["books"].items():
        structure = _structure(book["pages"], lambda panel: panel.get("beat"), lambda panel: panel.get("scene_run"))
        books[b] = {
            "direction": book["direction"],
            "pages": {
                p: {
                    **{k: page[k] for k in _PAGE_TRUTH if k != "reading"},
                    "reading": page.get("reading", "fixed"),  # a hand-built plan page may not say
                    "panels": [
                        {
                            "reading_position": i,
                            **{k: panel[k] for k in _PANEL_TRUTH},
                            "cutaway": bool(panel.get("cutaway", False)),
                            "resumes": panel.get("resumes"),
                            **structure[(p, i)],
                        }
                        for i, panel in enumerate(page["panels"])
                    ],
                }
                for p, page in book["pages"].items()
            },
        }
    return {
        "seed": plan["seed"],
        "version": VERSION,
        "bbox_format": bbox_format,
        "characters": CAST,
        "books": books,
        "dirty": plan["dirty"],
    }


def _story_panels(pages: dict) -> Iterator[tuple[tuple[str, int], dict]]:
    """((page_name, index), panel) of every panel of a book, in reading order (pages in the book's order)."""
    for p, page in pages.items():
        for i, panel in enumerate(page["panels"]):
            yield (p, i), panel


def _structure(
    pages: dict, beat_of: Callable[[dict], object], run_of: Callable[[dict], object]
) -> dict[tuple[str, int], dict]:
    """Per panel of a book: beat, scene_run, speakers and caption_unique.

    beat_of and run_of give a story panel's beat and scene run under any numbering (None for a panel outside the
    story: covers, advertisements, text pages); here they become book-unique numbers 0, 1, ... in reading order,
    one per unbroken run of story panels with the same beat (scene run). So a beat that a page of another story
    interrupts (the dirty mode's dense page) counts as two, and every beat spans consecutive story panels.
    """
    captions = Counter(panel["caption"] for _, panel in _story_panels(pages))
    out: dict[tuple[str, int], dict] = {}
    counters = {"beat": -1, "scene_run": -1}
    previous: dict[str, object] = {"beat": None, "scene_run": None}
    for key, panel in _story_panels(pages):
        numbers: dict[str, int | None] = {}
        for name, of in (("beat", beat_of), ("scene_run", run_of)):
            local = of(panel)
            if local is None:  # not part of the story: numbered None, and it does not break a run
                numbers[name] = None
                continue
            if local != previous[name]:
                counters[name] += 1
                previous[name] = local
            numbers[name] = counters[name]
        out[key] = {
            **numbers,
            "speakers": speakers(panel.get("lines") or []),
            "caption_unique": captions[panel["caption"]] == 1,
        }
    return out


def speakers(lines: list[dict]) -> list[str]:
    """The distinct speakers of a panel's speech lines, in the order they first speak."""
    return list(dict.fromkeys(line["speaker"] for line in lines if line["kind"] == "speech" and line["speaker"]))


def _derived_structure(pages: dict) -> dict[tuple[str, int], dict]:
    """beat, scene_run, speakers and caption_unique of a version 1 sidecar's book, derived from its panels.

    A beat is one action played by the same characters in one scene, step after step: a panel continues the beat of
    the story panel before it when it plays the next step of that action. A scene run ends where the scene changes
    (a new scene is never the one just left). Only a dirty corpus's dense page can make these differ from version 2.
    """
    beat, run, before = 0, 0, None
    beats: dict[int, int] = {}
    runs: dict[int, int] = {}
    for _, panel in _story_panels(pages):
        if panel.get("action_step") is None:
            continue
        if before is not None:
            continues = panel["action_step"] == before["action_step"] + 1 and _play(panel) == _play(before)
            beat += not continues
            run += panel["scene"] != before["scene"]
        beats[id(panel)], runs[id(panel)], before = beat, run, panel
    return _structure(pages, lambda panel: beats.get(id(panel)), lambda panel: runs.get(id(panel)))


def _play(panel: dict) -> tuple:
    """What stays the same over the panels of one beat: the action, the scene and who plays it."""
    return panel["action"], panel["scene"], panel["characters"]


def panel_truth(data_root: str | Path, metadata: list[dict] | pd.DataFrame) -> pd.DataFrame:
    """The sidecar's truth for each stored panel (one row per panel id of the store's metadata records).

    Columns (TRUTH_COLUMNS): panel_id, page_index, book_id, page_name, characters (ids), character (the first one's
    name, or "none"), scene, caption; then beat and scene_run (book-unique numbers of the panel's story beat and of
    its stretch of one scene, None off the story), action, action_step, action_steps, lines (as planned: speaker,
    text, kind), speakers (distinct speaker ids of its speech lines, in order), caption_unique (its caption occurs
    once in its book) and description (the description its page JSON carries: the caption, unless the sidecar
    names another), cutaway and resumes (version 4; False and None in older sidecars). A version 1 sidecar gives the
    same columns, the missing ones derived from what it has.
    Only a synthetic corpus has a sidecar; for others this raises FileNotFoundError. A sidecar without a stored page
    raises KeyError or IndexError.
    """
    truth = json.loads((Path(data_root) / "ground_truth.json").read_text(encoding="utf-8"))
    names = {cid: c["name"] for cid, c in truth["characters"].items()}
    records = metadata.to_dict("records") if isinstance(metadata, pd.DataFrame) else metadata
    structures: dict[str, dict[tuple[str, int], dict]] = {}
    rows = []
    for page in records:
        book = truth["books"][page["book_id"]]
        panels = book["pages"][page["page_name"]]["panels"]
        if page["book_id"] not in structures:
            structures[page["book_id"]] = _book_structure(book["pages"], truth.get("version", 1))
        structure = structures[page["book_id"]]
        for panel_id, index in zip(page["embedding_indices"], page["panel_index"], strict=True):
            panel = panels[index]
            rows.append(
                {
                    "panel_id": panel_id,
                    "page_index": page["page_index"],
                    "book_id": page["book_id"],
                    "page_name": page["page_name"],
                    "characters": panel["characters"],
                    "character": names[panel["characters"][0]] if panel["characters"] else "none",
                    "scene": panel["scene"],
                    "caption": panel["caption"],
                    **structure[(page["page_name"], index)],
                    "action": panel.get("action"),
                    "action_step": panel.get("action_step"),
                    "action_steps": panel.get("action_steps"),
                    "lines": panel.get("lines"),
                    "description": panel.get("description", panel["caption"]),
                    "cutaway": bool(panel.get("cutaway", False)),
                    "resumes": panel.get("resumes"),
                }
            )
    return pd.DataFrame(rows, columns=list(TRUTH_COLUMNS))


def _book_structure(pages: dict, version: int) -> dict[tuple[str, int], dict]:
    """beat, scene_run, speakers and caption_unique of every panel of one sidecar book."""
    if version >= 2:
        keys = ("beat", "scene_run", "speakers", "caption_unique")
        return {key: {k: panel.get(k) for k in keys} for key, panel in _story_panels(pages)}
    return _derived_structure(pages)
