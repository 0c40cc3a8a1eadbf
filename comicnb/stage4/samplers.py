"""Stage 4 samplers: the samples of the seven tasks, drawn per split from the store's pages and the ground truth.

One sampler per task, all with the signature ``sample_<task>(view, split, rng, *, limit=None, skips=None)``:
``view`` (a ``RunView``, see ``comicnb.stage4.view``) holds one row per stored panel with its page, text and, where
the corpus has a sidecar, its truth; ``rng`` a numpy Generator; ``limit`` caps the samples (a seeded subset);
``skips`` (a Counter) receives one count per panel or page that could not become a sample, by reason, so nothing is
dropped silently.

The rules every sampler keeps (``comicnb.stage4.tasks.check_sample`` checks them):

- the answer is among the candidates exactly once, and its index is balanced over the set: indices are dealt
  round-robin over a shuffled order, so their counts differ by at most one;
- no candidate comes from the sample's context, and all candidates of a sample share the same vision kind, the same
  composition (``composition_from``: the slot they are offered for, or none) and (text tasks) distinct texts, so
  neither a candidate's own place on its page nor the kind of its parts can give it away;
- where candidates are different panels' images offered for one slot (panel picking, visual closure), every
  negative's box has the answer's shape and size within ``tasks.SHAPE_TOLERANCES``: a crop's aspect ratio and size
  survive in its image embedding, and a model would read the slot's shape off the right one;
- the text tasks show the answer panel text-free (``vision="text_free"``) where the store holds its text-free twin,
  else without its image (``vision="none"``); the empty balloons of a text-free image still show how much text there
  was and in how many boxes, so every negative text has as many text boxes and a length in the answer's cell of a
  fixed grid of width ``tasks.TEXT_LENGTH_TOLERANCE`` (so that the answer is neither the median length nor placed
  differently in its cell from the negatives);
- ground truth (scene, scene run, beat, lines, descriptions) only chooses negatives and answers; the one exception,
  as in ComicsPAP, is caption relevance, whose input is a caption. Candidates are drawn from the sample's own split,
  so a model can never reject a negative for having been seen in training.

Negatives come from rules tried in order (a task's *hard* rules first: same scene run, same scene); a sample whose
negatives all come from hard rules is ``hard``, else ``easy``, and ``built_from["negatives"]`` names each negative's
rule, in the order the negatives stand among the candidates (the answer left out).
Without a sidecar (real data, or a view made ``truth_free``) the three tasks that read truth are drawn from the pages
alone, as ComicsPAP draws its skills (``built_from["truth_free"]``): character coherence from a
panel's own text boxes, visual closure from the reading stream, caption relevance from the page JSON's descriptions
where the corpus has them (else ``TaskUnavailable`` with the reason). Negatives are drawn by
``comicnb.stage4.negatives``, drafts become samples in ``comicnb.stage4.drafts``, and ``comicnb.stage4.task_sets``
writes the fixed val/test files and redraws training sets.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np

from comicnb.stage4.drafts import (
    PENDING_ROW,
    Draft,
    PanelColumns,
    TaskUnavailable,
    counter,
    finish,
    require_truth,
    subsample,
    text_key,
    text_vision,
)
from comicnb.stage4.negatives import Rule, SplitIndex, difficulty_of, draw, draw_shaped, known
from comicnb.stage4.tasks import CANDIDATES, CLOZE_CONTEXT, MAX_CONTEXT, MIN_CONTEXT, Candidate, TaskSample
from comicnb.stage4.view import RunView

TRUTH_FREE = {"truth_free": True}  # built_from of a sample drawn from the pages alone (no ground truth)


def sample_panel_picking(
    view: RunView, split: str, rng: np.random.Generator, *, limit: int | None = None, skips: Counter | None = None
) -> list[TaskSample]:
    """A page's panels in order with one slot masked; the masked panel among 5, each offered with the slot's
    composition. Negatives, all of the answer's shape and size (``negatives.draw_shaped``): the same scene run, else
    scene, off the page (hard); else nearby pages of the book, the book, other books (easy). ``context`` leaves the
    masked panel out; ``slot`` is where it goes."""
    index, col, skips = SplitIndex(view, split), PanelColumns(view), counter(skips)
    drafts = []
    for _, rows in sorted(index.pages.items()):
        if len(rows) < MIN_CONTEXT + 1:
            skips["page_with_fewer_than_3_panels"] += len(rows)
            continue
        for slot, answer in enumerate(rows.tolist()):
            rules = [*index.scene_rules(answer), index.nearby_rule(answer), index.book_rule(answer)]
            rules.append(index.other_books_rule(answer))
            drawn = draw_shaped(rng, index, answer, rules, CANDIDATES["panel_picking"] - 1, set(rows.tolist()))
            if drawn is None:
                skips["too_few_negatives"] += 1
                continue
            context = [r for r in rows.tolist() if r != answer]
            kind = difficulty_of(drawn[1], rules)
            fields = col.fields("panel_picking", answer, context, drawn[1], kind, slot=slot, **shaped(drawn[2]))
            offer = [col.whole(r, slot_of=answer) for r in [answer, *drawn[0]]]
            drafts.append(Draft(offer[0], offer[1:], fields))
    return finish("panel_picking", split, drafts, rng, limit)


def sample_character_coherence(
    view: RunView, split: str, rng: np.random.Generator, *, limit: int | None = None, skips: Counter | None = None
) -> list[TaskSample]:
    """The preceding panels, then a panel with two speakers shown text-free; its lines with the right speakers or
    with the speakers swapped (both new texts, written ``Name: line``, encoded by the frozen text pathway).

    Without ground truth: a panel with two or more text boxes, its texts in their boxes or each moved to the next box
    (``truth_free_character_coherence``)."""
    if view.truth is None:
        return truth_free_character_coherence(view, split, rng, limit=limit, skips=skips)
    require_truth(view, "character_coherence")
    index, col, skips = SplitIndex(view, split), PanelColumns(view), counter(skips)
    drafts = []
    for _, stream in index.stream_items():
        for i, answer in enumerate(stream.tolist()):
            pair = speaker_texts(view, col, answer)
            if isinstance(pair, str):
                skips[pair] += 1
                continue
            if i < MIN_CONTEXT:
                skips["fewer_than_2_preceding_panels"] += 1
                continue
            vision, pid = text_vision(view, answer), col.pid(answer)
            right, swapped = (
                Candidate(pid, vision, text_row=PENDING_ROW, text=" ".join(box), composition_from=pid, text_boxes=box)
                for box in pair
            )
            fields = col.fields("character_coherence", answer, stream[max(0, i - MAX_CONTEXT) : i].tolist(), [], "-")
            drafts.append(Draft(right, [swapped], fields))
    return finish("character_coherence", split, drafts, rng, limit)


def truth_free_character_coherence(
    view: RunView, split: str, rng: np.random.Generator, *, limit: int | None = None, skips: Counter | None = None
) -> list[TaskSample]:
    """Character coherence from the pages alone, as ComicsPAP builds it: the preceding panels, then a panel with two
    or more non-empty text boxes shown text-free; its texts in their own boxes, or each moved on to the next box (the
    last to the first). No speaker names: which words belong in which balloon is the question."""
    index, col, skips = SplitIndex(view, split), PanelColumns(view), counter(skips)
    drafts = []
    for _, stream in index.stream_items():
        for i, answer in enumerate(stream.tolist()):
            boxes = col["text_boxes"][answer]
            if boxes is None or len(boxes) < 2 or not all(str(b).strip() for b in boxes):
                skips["fewer_than_2_text_boxes"] += 1
                continue
            if i < MIN_CONTEXT:
                skips["fewer_than_2_preceding_panels"] += 1
                continue
            right, moved = [str(b) for b in boxes], [str(b) for b in [*boxes[1:], boxes[0]]]
            if text_key(" ".join(right)) == text_key(" ".join(moved)):
                skips["swap_changes_nothing"] += 1
                continue
            vision, pid = text_vision(view, answer), col.pid(answer)
            offer = [
                Candidate(pid, vision, text_row=PENDING_ROW, text=" ".join(box), composition_from=pid, text_boxes=box)
                for box in (right, moved)
            ]
            context = stream[max(0, i - MAX_CONTEXT) : i].tolist()
            fields = col.fields("character_coherence", answer, context, [], "-", built_from=TRUTH_FREE)
            drafts.append(Draft(offer[0], offer[1:], fields))
    return finish("character_coherence", split, drafts, rng, limit)


def speaker_texts(view: RunView, col: PanelColumns, row: int) -> tuple[list[str], list[str]] | str:
    """(the panel's lines with their speakers, with the speakers swapped), each as one text per text box (the
    candidate's text is them joined), or the reason there is no such pair."""
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
    right = _render(view, lines, words, {})
    swapped = _render(view, lines, words, swap)
    return (right, swapped) if text_key(" ".join(right)) != text_key(" ".join(swapped)) else "swap_changes_nothing"


def _is_speech(line: Mapping[str, Any]) -> bool:
    """A balloon line with a speaker (captions have none)."""
    return line.get("kind", "speech") == "speech" and bool(line.get("speaker"))


def _render(view: RunView, lines: Sequence[Mapping], words: Sequence[str], swap: Mapping[str, str]) -> list[str]:
    """A panel's lines, one text per box, each balloon prefixed by its speaker's name: ``["Mira: Throw it!",
    "Bolt: Got it!"]`` (joined with spaces, the candidate's text)."""
    parts = []
    for line, text in zip(lines, words, strict=True):
        if _is_speech(line):
            speaker = swap.get(line["speaker"], line["speaker"])
            parts.append(f"{view.speakers.get(speaker, speaker)}: {text}")
        else:
            parts.append(str(text))
    return parts


def sample_visual_closure(
    view: RunView, split: str, rng: np.random.Generator, *, limit: int | None = None, skips: Counter | None = None
) -> list[TaskSample]:
    """The panels of an action so far (at least 2); its next panel among 5 images (text-free where the store holds
    every candidate's twin, else all full), image only, each with the next slot's composition. Negatives, all of the
    answer's shape and size: the same scene run (later steps of the action included), else scene (hard); else the
    book, other books (easy).

    Without ground truth, as ComicsPAP builds it: up to 4 preceding panels of the reading stream (at least 2) and
    the next panel; hard negatives from nearby pages of the book instead of the scene."""
    truth_free = view.truth is None
    if not truth_free:
        require_truth(view, "visual_closure")
    index, col, skips = SplitIndex(view, split), PanelColumns(view), counter(skips)
    drafts = []
    for _, stream in index.stream_items():
        for i, answer in enumerate(stream.tolist()):
            if truth_free:
                context = stream[max(0, i - MAX_CONTEXT) : i].tolist()
                hard, short = [index.nearby_rule(answer, "nearby_pages", True)], "fewer_than_2_preceding_panels"
            else:
                context = action_context(col, stream.tolist(), i)
                hard, short = index.scene_rules(answer), "fewer_than_2_preceding_panels_of_its_action"
            if context is None or len(context) < MIN_CONTEXT:
                skips["no_action" if context is None else short] += 1
                continue
            rules = [*hard, index.book_rule(answer), index.other_books_rule(answer)]
            drawn = draw_shaped(rng, index, answer, rules, CANDIDATES["visual_closure"] - 1, {*context, answer})
            if drawn is None:
                skips["too_few_negatives"] += 1
                continue
            offer = image_offer(col, answer, drawn[0])
            kind = difficulty_of(drawn[1], rules)
            built = {**(TRUTH_FREE if truth_free else {}), **shaped(drawn[2])["built_from"]}
            fields = col.fields("visual_closure", answer, context, drawn[1], kind, built_from=built)
            drafts.append(Draft(offer[0], offer[1:], fields))
    return finish("visual_closure", split, drafts, rng, limit)


def image_offer(col: PanelColumns, answer: int, negatives: Sequence[int]) -> list[Candidate]:
    """Visual closure's candidates, the answer first: images only (text-free where every candidate has its twin, else
    all full), each with the answer slot's composition."""
    rows = [answer, *negatives]
    vision = "text_free" if all(col["text_free"][r] for r in rows) else "full"
    return [Candidate(col.pid(r), vision, composition_from=col.pid(answer)) for r in rows]


def shaped(level: int) -> dict[str, Any]:
    """The ``built_from`` record of a shape-matched draw: the level of SHAPE_TOLERANCES its negatives are within."""
    return {"built_from": {"shape_tolerance": level}}


def action_context(col: PanelColumns, stream: Sequence[int], i: int) -> list[int] | None:
    """The panels of stream[i]'s action (beat) before it, in order, back to the action's first one on the stream;
    None when the panel is in no action."""
    beat, step = col["beat"], col["action_step"]
    if not known(beat[stream[i]]) or not known(step[stream[i]]):
        return None
    j = i
    while j > 0 and beat[stream[j - 1]] == beat[stream[i]] and step[stream[j - 1]] == step[stream[j]] - 1:
        j -= 1
    return list(stream[j:i])


def sample_text_closure(
    view: RunView, split: str, rng: np.random.Generator, *, limit: int | None = None, skips: Counter | None = None
) -> list[TaskSample]:
    """Up to 4 preceding panels, then the next panel text-free; its text among 4 texts of other panels of the same
    book (stored text embeddings, ``text_from``), all different, preferably with as many balloons as the answer."""
    index, col, skips = SplitIndex(view, split), PanelColumns(view), counter(skips)
    drafts = []
    for _, stream in index.stream_items():
        for i, answer in enumerate(stream.tolist()):
            if not col["has_text"][answer]:
                skips["answer_without_text"] += 1
            elif i < MIN_CONTEXT:
                skips["fewer_than_2_preceding_panels"] += 1
            else:
                context = stream[max(0, i - MAX_CONTEXT) : i].tolist()
                draft = _text_draft(view, index, col, rng, "text_closure", answer, context, [index.book_rule(answer)])
                if draft is None:
                    skips["too_few_negatives"] += 1
                else:
                    drafts.append(draft)
    return finish("text_closure", split, drafts, rng, limit)


def sample_text_cloze(
    view: RunView, split: str, rng: np.random.Generator, *, limit: int | None = None, skips: Counter | None = None
) -> list[TaskSample]:
    """Three preceding panels, then the answer panel text-free; its text among 3. Every answer gives a hard sample
    (negatives from neighbouring pages of its book) and an easy one (other books of the split), as in COMICS, where
    its rule finds enough texts of its length."""
    index, col, skips = SplitIndex(view, split), PanelColumns(view), counter(skips)
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
            context = stream[i - CLOZE_CONTEXT : i].tolist()
            for difficulty, rule in rules.items():
                args = (view, index, col, rng, "text_cloze", answer, context, [rule])
                draft = _text_draft(*args, suffix=f"-{difficulty}")
                if draft is None:
                    skips[f"{difficulty}_too_few_negatives"] += 1
                else:
                    drafts.append(draft)
    return finish("text_cloze", split, drafts, rng, limit)


def _text_draft(
    view: RunView,
    index: SplitIndex,
    col: PanelColumns,
    rng: np.random.Generator,
    task: str,
    answer: int,
    context: Sequence[int],
    rules: Sequence[Rule],
    suffix: str = "",
) -> Draft | None:
    """A text task's draft: the answer panel (text-free, its own slot) with its own text and with k - 1 other texts
    drawn by the rules among panels with text, all different, with as many text boxes and lengths in the answer's cell
    (``SplitIndex.same_text``); None where the rules give too few."""
    has_text = np.asarray(col["has_text"], dtype=bool)
    rules = [Rule(r.name, r.hard, r.rows[has_text[r.rows]]) for r in rules]
    texts = col["text"]
    drawn = draw(
        rng,
        rules,
        CANDIDATES[task] - 1,
        {*context, answer},
        key=lambda r: text_key(texts[r]),
        taken={text_key(texts[answer])},
        fits=index.same_text(answer),
    )
    if drawn is None:
        return None
    vision, pid = text_vision(view, answer), col.pid(answer)
    offer = [
        Candidate(pid, vision, text_from=col.pid(r), text=texts[r], composition_from=pid) for r in [answer, *drawn[0]]
    ]
    difficulty = difficulty_of(drawn[1], rules) if task == "text_cloze" else "-"
    fields = col.fields(task, answer, context, drawn[1], difficulty, suffix=suffix)
    return Draft(offer[0], offer[1:], fields)


def sample_caption_relevance(
    view: RunView, split: str, rng: np.random.Generator, *, limit: int | None = None, skips: Counter | None = None
) -> list[TaskSample]:
    """A caption (description) of a panel, unique in its book, and no context images; the panel after it among 4,
    full, without composition. Negatives, of the answer's shape and size (no slot is given, but the panel after a
    captioned one has shapes of its own, which a learned prior reads): the same scene run, else scene (hard); else
    the book, other books (easy); all with different descriptions. The captioned panel itself is never a candidate.

    Without ground truth: the page JSON's descriptions (a captioning model's, as ComicsPAP's) where the corpus has
    them, unique in their book as the pages say; negatives from nearby pages (hard), the book and other books."""
    truth_free = view.truth is None
    if truth_free:
        if "description" not in view.panels or not view.panels.description.map(_described).any():
            raise TaskUnavailable(
                "caption_relevance without ground truth needs each panel's description in the page JSON (a captioning "
                f"model's, as ComicsPAP's), which this corpus lacks: {view.truth_note}"
            )
    else:
        require_truth(view, "caption_relevance")
    index, col, skips = SplitIndex(view, split), PanelColumns(view), counter(skips)
    descriptions = col["description"]
    unique = col["caption_unique"] if not truth_free else _unique_in_book(view.panels)

    def described(row: int) -> str:
        return text_key(descriptions[row])  # candidates' descriptions all differ, so one caption fits one of them

    drafts = []
    for _, stream in index.stream_items():
        skips["last_panel_of_its_book"] += 1
        for captioned, answer in zip(stream[:-1].tolist(), stream[1:].tolist(), strict=True):
            if not known(descriptions[captioned]) or not str(descriptions[captioned]).strip():
                skips["no_caption"] += 1
                continue
            if not unique[captioned]:
                skips["caption_not_unique_in_its_book"] += 1
                continue
            hard = [index.nearby_rule(answer, "nearby_pages", True)] if truth_free else index.scene_rules(answer)
            rules = [*hard, index.book_rule(answer), index.other_books_rule(answer)]
            k, exclude = CANDIDATES["caption_relevance"] - 1, {captioned, answer}
            drawn = draw_shaped(rng, index, answer, rules, k, exclude, key=described, taken={described(answer)})
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
                built_from={
                    "caption_of": col.pid(captioned),
                    "shape_tolerance": drawn[2],
                    **(TRUTH_FREE if truth_free else {}),
                },
            )
            drafts.append(Draft(offer[0], offer[1:], fields))
    return finish("caption_relevance", split, drafts, rng, limit)


def _described(value: Any) -> bool:
    return known(value) and bool(str(value).strip())


def _unique_in_book(panels: Any) -> list[bool]:
    """Whether each panel's description occurs once in its book (what the sidecar's caption_unique says, from the
    pages alone)."""
    keys = [text_key(d) if _described(d) else None for d in panels.description]
    counts = Counter(zip(panels.book_id, keys))
    return [key is not None and counts[(book, key)] == 1 for book, key in zip(panels.book_id, keys)]


def sample_reading_order(
    view: RunView, split: str, rng: np.random.Generator, *, limit: int | None = None, skips: Counter | None = None
) -> list[TaskSample]:
    """A page's panels shuffled (each with its own composition: the boxes are the input here, the list position is
    not); ``order[i]`` is the reading position of ``context[i]``; ``direction`` the book's where the corpus labels
    it."""
    index, col, skips = SplitIndex(view, split), PanelColumns(view), counter(skips)
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
                direction=view.directions.get(book),
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
