"""``comicspap export``: a run's task sets written as ComicsPAP parquet, so that any ComicsPAP model can be scored on
the run's corpus (with ComicsPAP's own ``evaluate.py``, or by ``comicspap encode`` + ``eval`` here).

Each exported sample is one row of its skill's file, ``<out>/<skill>/<as_split>-00000-of-00001.parquet``, its panels
cropped from the run's page images as PNG (lossless):

- sequence filling (panel picking): the page without the masked panel as ``context``, ``index`` the masked place,
  the five candidate panels as ``options``, each as drawn;
- visual closure: the preceding panels as ``context`` (``index`` after them) and the candidates as the task shows
  them: from the text-free twin where the store has one;
- caption relevance: no context (``index`` -1), the caption as ``previous_panel_caption``, the candidates as drawn;
- character coherence and text closure: a comicnb candidate is the answer panel shown text-free with a text beside
  it; a ComicsPAP option is a picture only. The text-free crop is therefore lettered with each candidate's text:
  one text per text box of the answer panel, in its own box (``letter``), or all of it in the panel's largest box
  where the counts differ. This is our lettering, not the artist's, so reading it is OCR's easiest case; where the
  store has no text-free twins the answer panel can only be shown with its own text drawn, and these tasks are not
  exported (the manifest says so);
- text-cloze and reading order have no ComicsPAP skill and are not exported.

Crops are full size, as the colour-histogram baseline takes them, so a round trip gives that baseline exactly the
run's own accuracies. ``comicnb_export.json`` records the run, the sets and what was not exported, and why.
"""

from __future__ import annotations

import json
import textwrap
from collections import Counter, defaultdict
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from PIL import Image, ImageDraw, ImageFont

from comicnb import __version__
from comicnb.comicspap.format import HIDDEN, SKILL_OF, image_struct, png_bytes, write_rows
from comicnb.corpus.crops import crop_panels
from comicnb.stage4.tasks import TEXT_TASKS, TaskSample, TaskSet
from comicnb.stage4.view import RunView

EXPORT_RECORD = "comicnb_export.json"
NOT_EXPORTED = {
    "text_cloze": "no ComicsPAP skill (COMICS' text-cloze: candidates are texts, not panels)",
    "reading_order": "no ComicsPAP skill (a page's order, not a pick among options)",
}


class Crops:
    """Full-size panel crops of a view by (panel id, vision), each page image opened once per batch of requests."""

    def __init__(self, view: RunView) -> None:
        self.view = view

    def __call__(self, keys: Sequence[tuple[int, str]]) -> dict[tuple[int, str], Image.Image]:
        by_page: dict[tuple[int, str], list[int]] = defaultdict(list)
        for panel, vision in set(keys):
            by_page[(int(self.view.locate(panel)[0]), vision)].append(panel)
        crops = {}
        for (page, vision), ids in by_page.items():
            boxes = [self.view.pages.iloc[page]["boxes"][int(self.view.locate(i)[1])] for i in ids]
            with Image.open(self.view.image_file(page, vision)) as image:
                made = crop_panels(image, boxes)
            crops.update({(i, vision): crop for i, crop in zip(ids, made)})
        return crops


def _font(size: int) -> ImageFont.ImageFont:
    return ImageFont.load_default(size=size)


def _fit_text(draw: ImageDraw.ImageDraw, text: str, width: float, height: float) -> tuple[str, ImageFont.ImageFont]:
    """The text wrapped to a box, at the largest size from 16 down to 6 pixels that fits it (6 at least)."""
    for size in range(16, 5, -1):
        font = _font(size)
        per_line = max(1, int(width / max(1.0, font.getlength("n"))))
        wrapped = "\n".join(textwrap.wrap(text, per_line)) or text
        left, top, right, bottom = draw.multiline_textbbox((0, 0), wrapped, font=font, spacing=1)
        if right - left <= width and bottom - top <= height:
            return wrapped, font
    return wrapped, font


def letter(crop: Image.Image, texts: Sequence[str], boxes: Sequence[Sequence[float]] | None) -> Image.Image:
    """A text-free panel crop lettered with ``texts``, one per box (``boxes``: fractions of the panel); where the
    counts differ, or the panel has no boxes, all the texts joined, in its largest box (or a band across its top)."""
    image = crop.convert("RGB").copy()
    draw = ImageDraw.Draw(image)
    w, h = image.size
    places = [list(b) for b in boxes or []]
    if len(places) != len(texts) or not places:
        largest = max(places, key=lambda b: (b[2] - b[0]) * (b[3] - b[1])) if places else [0.02, 0.02, 0.98, 0.25]
        places, texts = [largest], [" ".join(t for t in texts if t)]
    for (x1, y1, x2, y2), text in zip(places, texts):
        box = (x1 * w, y1 * h, x2 * w, y2 * h)
        if not text:
            continue
        wrapped, font = _fit_text(draw, text, box[2] - box[0], box[3] - box[1])
        centre = ((box[0] + box[2]) / 2, (box[1] + box[3]) / 2)
        draw.multiline_text(centre, wrapped, fill=(0, 0, 0), font=font, anchor="mm", align="center", spacing=1)
    return image


def candidate_texts(sample: TaskSample, index: int, view: RunView, by_panel=None) -> list[str]:
    """A text task's candidate as texts per box: its own per-box texts, those of the panel its text comes from, or its
    text as one block (``by_panel``: the view's panel table indexed by panel id, where the caller has it)."""
    candidate = sample.candidates[index]
    if candidate.text_boxes:
        return list(candidate.text_boxes)
    if candidate.text_from is not None:
        by_panel = by_panel if by_panel is not None else view.panels.set_index("panel_id")
        boxes = by_panel.at[candidate.text_from, "text_boxes"]
        if isinstance(boxes, list) and boxes:
            return [str(b) for b in boxes]
        return [view.text(candidate.text_from)]
    return [candidate.text or ""]


def export_row(sample: TaskSample, view: RunView, crops: Crops, as_split: str, by_panel) -> dict[str, Any] | str:
    """One sample as a ComicsPAP row, or why it cannot be one (``by_panel``: the view's panel table indexed by panel
    id)."""
    skill = SKILL_OF[sample.task]
    keys = [(p, "full") for p in sample.context] + [(c.panel_id, c.vision) for c in sample.candidates]
    if any(c.vision == "none" for c in sample.candidates):
        return "answer_panel_without_image"
    made = crops(keys)
    context = [made[(p, "full")] for p in sample.context]
    if sample.task in TEXT_TASKS:
        panel = by_panel.at[sample.candidates[sample.answer].panel_id, "balloon_boxes"]
        options = [
            letter(made[(c.panel_id, c.vision)], candidate_texts(sample, i, view, by_panel), panel)
            for i, c in enumerate(sample.candidates)
        ]
    else:
        options = [made[(c.panel_id, c.vision)] for c in sample.candidates]
    if sample.task == "panel_picking":
        index = sample.slot if sample.slot is not None else len(context)
    else:
        index = len(context) if context else HIDDEN
    return dict(
        sample_id=sample.sample_id,
        context=[image_struct(png_bytes(c)) for c in context],
        options=[image_struct(png_bytes(o)) for o in options],
        index=index,
        solution_index=sample.answer,
        split=as_split,
        task_type=skill,
        previous_panel_caption=sample.query_text or "",
    )


def export_sets(
    sets: dict[str, TaskSet],
    view: RunView,
    out: str | Path,
    as_split: str = "val",
    run_dir: str | Path | None = None,
    split: str = "test",
) -> dict[str, Any]:
    """Write the sets as ComicsPAP parquet under ``out`` (see the module); returns the export record."""
    out = Path(out)
    crops, by_panel = Crops(view), view.panels.set_index("panel_id")
    written, skipped, reasons = {}, {}, {}
    for task, task_set in sets.items():
        if task not in SKILL_OF:
            reasons[task] = NOT_EXPORTED.get(task, "no ComicsPAP skill")
            continue
        if task in TEXT_TASKS and not view.text_free:
            reasons[task] = "the store has no text-free twins: the answer panel cannot be shown without its own text"
            continue
        rows, why = [], Counter()
        for sample in task_set.samples:
            row = export_row(sample, view, crops, as_split, by_panel)
            if isinstance(row, str):
                why[row] += 1
            else:
                rows.append(row)
        skill = SKILL_OF[task]
        if rows:
            write_rows(out / skill / f"{as_split}-00000-of-00001.parquet", rows)
        written[skill] = len(rows)
        if why:
            skipped[skill] = dict(why)
    record = dict(
        run=str(run_dir) if run_dir else None,
        split=split,
        as_split=as_split,
        rows=written,
        skipped_samples=skipped,
        not_exported=reasons,
        crops="full size, PNG",
        text_tasks="text-free answer panel lettered with each candidate's text (comicnb.comicspap.export.letter)",
        comicnb_version=__version__,
    )
    out.mkdir(parents=True, exist_ok=True)
    (out / EXPORT_RECORD).write_text(json.dumps(record, indent=1) + "\n", encoding="utf-8")
    return record


def export(
    run_dir: str | Path,
    out: str | Path | None = None,
    split: str = "test",
    as_split: str = "val",
) -> dict[str, Any]:
    """A run's fixed ``split`` task sets as ComicsPAP parquet (default ``<run>/comicspap/export/``), labelled as
    ComicsPAP's ``as_split`` (``val``, the split its evaluation scores)."""
    from comicnb.stage4.task_sets import read_sets
    from comicnb.stage4.view import open_run

    view = open_run(run_dir)
    sets = read_sets(run_dir, view, split=split)
    out = Path(out) if out else Path(run_dir) / "comicspap" / "export"
    return export_sets(sets, view, out, as_split, run_dir, split)
