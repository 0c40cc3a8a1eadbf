"""Stage 4 task sets: every sampler's rules (answer once, no context among candidates, balanced answer index, the
composition rule, text-free answers), skips counted, identical files from a seed, and a corpus without ground truth."""

from __future__ import annotations

import hashlib
import json
import shutil
from collections import Counter
from dataclasses import replace
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
import zarr

from comicnb import checkpoint
from comicnb.corpus import load_corpus, save_corpus, synth
from comicnb.stage3 import checkpoints
from comicnb.stage3.model import PanelFeatureExtractor
from comicnb.stage4.baselines import score_baselines
from comicnb.stage4.drafts import TruthColumnsMissing, balanced_slots
from comicnb.stage4.samplers import SAMPLERS
from comicnb.stage4.task_sets import (
    NO_TWINS,
    TaskSets,
    TaskSetsStaleError,
    build_task_sets,
    ensure_task_sets,
    make_task_set,
    sampling_rules,
    task_rng,
    training_samples,
    write_split,
)
from comicnb.stage4.tasks import (
    CANDIDATES,
    CLOZE_CONTEXT,
    TASKS,
    TEXT_LENGTH_TOLERANCE,
    TEXT_TASKS,
    Candidate,
    TaskSample,
    check_sample,
    read_manifest,
    read_task_set,
    task_dir,
)
from comicnb.stage4.view import FrozenTextPathway, RunView, open_run
from comicnb.store import MODALITY_EMBEDDINGS, EmbedConfig, generate

SPLITS = ("val", "test")
CHOICE_TASKS = tuple(t for t in TASKS if t != "reading_order")


def make_run(root: Path, books: int, pages: int = 8, truth: bool = True, twins: bool = True) -> Path:
    """A run folder with notebook 01's artefacts, a tiny-model checkpoint and its store, for a small synthetic corpus;
    without truth and twins it looks like real data (no sidecar, no text-free pages, OCR noise)."""
    data = root / "data"
    synth.generate(data, books=books, pages=pages, seed=5, page_size=(320, 480), ocr_noise=0.0 if truth else 0.05)
    if not truth:
        (data / "ground_truth.json").unlink()
    if not twins:
        for twin in data.glob("*/*.textfree.*"):
            twin.unlink()
    save_corpus(load_corpus(data, split=(0.34, 0.33, 0.33), seed=0), root / "run")
    torch.manual_seed(0)
    model = PanelFeatureExtractor(feature_dim=16, tiny=True)
    state = {"model_state_dict": model.state_dict(), "config": {"model": model.config, "train": {"seed": 0}}}
    checkpoint.save_checkpoint(state, checkpoints(root / "run").last)
    generate(root / "run", cfg=EmbedConfig(pages_per_chunk=8))
    return root / "run"


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """6 books of 8 pages (two books per split), with ground truth and text-free twins: every task has samples in
    both splits, the text tasks (negatives with the answer's box count and length) fewest."""
    return make_run(tmp_path_factory.mktemp("stage4"), books=6)


@pytest.fixture(scope="module")
def manifests(run: Path) -> dict[str, dict]:
    """The fixed val and test sets of the run, seed 0."""
    return build_task_sets(run, seed=0)


@pytest.fixture(scope="module")
def ctx(run: Path, manifests: dict) -> RunView:
    """The run's view."""
    return open_run(run)


def sets(run: Path, split: str) -> dict[str, list[TaskSample]]:
    """Every built task set of a split, read back from its files."""
    return {task: read_task_set(task_dir(run, split), task).samples for task in TASKS}


def by_id(ctx: RunView) -> pd.DataFrame:
    """The context's panel table indexed by panel id."""
    return ctx.panels.set_index("panel_id")


def test_every_task_is_built_with_samples_and_keeps_the_rules(run: Path, manifests: dict, ctx: RunView) -> None:
    panels = by_id(ctx)
    for split in SPLITS:
        assert set(manifests[split]["tasks"]) == set(TASKS)
        for task, samples in sets(run, split).items():
            assert (
                manifests[split]["tasks"][task]["built"] and len(samples) == manifests[split]["tasks"][task]["samples"]
            )
            assert len(samples) >= 3, (split, task)  # the small corpus still gives every task something to score
            for sample in samples:
                assert check_sample(sample) == [], (sample.sample_id, check_sample(sample))
                ids = [i for c in sample.candidates for i in (c.panel_id, c.text_from, c.composition_from) if i]
                assert set(panels.split[[*sample.context, *ids]]) == {split}  # nothing from another split
                if task == "reading_order":
                    continue
                assert len(sample.candidates) == CANDIDATES[task]
                keys = [(c.panel_id, c.vision, c.text_from, c.text_row, c.text) for c in sample.candidates]
                assert len(set(keys)) == len(keys)  # the answer (and every candidate) once
                assert not set(sample.context) & {c.panel_id for c in sample.candidates}
                assert not set(sample.context) & {c.text_from for c in sample.candidates}


def test_skips_are_counted_in_whole_numbers(run: Path, manifests: dict) -> None:
    table = TaskSets(run, manifests, []).skips()
    assert len(table) and list(table.columns) == sorted(manifests) and all(d.kind == "i" for d in table.dtypes)


def test_answer_index_is_balanced_in_every_set(run: Path, manifests: dict) -> None:
    for split in SPLITS:
        for task in CHOICE_TASKS:
            counts = manifests[split]["tasks"][task]["answer_slots"]
            assert len(counts) == CANDIDATES[task] and max(counts) - min(counts) <= 1, (split, task, counts)
            samples = read_task_set(task_dir(run, split), task).samples
            assert np.bincount([s.answer for s in samples], minlength=CANDIDATES[task]).tolist() == counts
    rng = np.random.default_rng(0)
    for count in (0, 1, 7, 23):
        slots = balanced_slots(count, 4, rng)
        counts = np.bincount(slots, minlength=4)
        assert counts.sum() == count and counts.max() - counts.min() <= 1


def test_same_seed_same_files_and_another_seed_other_samples(run: Path, manifests: dict) -> None:
    def digests() -> dict[str, str]:
        files = sorted((run / "tasks").rglob("*.*"))
        return {f.relative_to(run).as_posix(): hashlib.sha256(f.read_bytes()).hexdigest() for f in files}

    before = digests()
    assert build_task_sets(run, seed=0) == manifests
    assert digests() == before
    other = run.parent / "other-seed"
    for split in SPLITS:
        write_split(open_run(run), other / split, split, seed=1)
        for task in ("panel_picking", "text_closure"):
            assert (other / split / f"{task}.jsonl").read_bytes() != (
                task_dir(run, split) / f"{task}.jsonl"
            ).read_bytes()


def test_candidates_enter_without_their_own_place(run: Path) -> None:
    """The composition rule: a choice among candidates never turns on where a candidate sat on its page."""
    for split in SPLITS:
        for task, samples in sets(run, split).items():
            for s in samples:
                if task == "reading_order":
                    assert s.candidates == [] and s.answer == -1
                    continue
                answer = s.candidates[s.answer]
                compositions = {c.composition_from for c in s.candidates}
                if task == "caption_relevance":
                    assert compositions == {None} and s.context == [] and s.query_text
                else:  # the slot's composition: the masked slot, the next slot, or the answer panel's own slot
                    assert compositions == {answer.panel_id}
                if task in TEXT_TASKS:
                    assert {c.panel_id for c in s.candidates} == {answer.panel_id}
                if task == "panel_picking":
                    assert 0 <= s.slot <= len(s.context)


def test_text_tasks_show_the_answer_text_free_and_new_texts_are_encoded(run: Path, ctx: RunView) -> None:
    panels = by_id(ctx)
    for split in SPLITS:
        for task in TEXT_TASKS:
            task_set = read_task_set(task_dir(run, split), task)
            for s in task_set.samples:
                assert {c.vision for c in s.candidates} == {"text_free"}
                assert panels.text_free[s.candidates[s.answer].panel_id]
                texts = [" ".join(c.text.lower().split()) for c in s.candidates]
                assert len(set(texts)) == len(texts)
            rows = sorted({c.text_row for s in task_set.samples for c in s.candidates if c.text_row is not None})
            assert rows == list(range(len(task_set.texts)))
    # The new texts (character coherence) are encoded by the store's frozen text pathway: the same pathway
    # reproduces the store's own text embeddings, so a new text lives in the same space as the stored ones.
    store = run / "panel_embeddings.zarr"
    pathway = FrozenTextPathway(lambda: ctx.model)
    stored = np.asarray(zarr.open_group(str(store), mode="r")[MODALITY_EMBEDDINGS][:])
    with_text = ctx.panels[ctx.panels.has_text].head(6)
    expected = stored[with_text.page_index, with_text.slot, 1]
    assert np.allclose(pathway(with_text.text.tolist()), expected, atol=1e-5)
    coherence = read_task_set(task_dir(run, "test"), "character_coherence")
    texts = [next(c.text for s in coherence.samples for c in s.candidates if c.text_row == r) for r in range(2)]
    assert np.allclose(pathway(texts), coherence.texts[:2], atol=1e-5)


def test_character_coherence_swaps_the_speakers_of_the_answer_panel(run: Path, ctx: RunView) -> None:
    panels = by_id(ctx)
    for s in read_task_set(task_dir(run, "test"), "character_coherence").samples:
        truth = panels.loc[s.candidates[0].panel_id]
        first, second = truth.speakers[:2]
        swap = {first: second, second: first}
        right, swapped = s.candidates[s.answer].text, s.candidates[1 - s.answer].text
        for line in truth.lines:
            if line["kind"] == "speech":
                assert f"{ctx.speakers[line['speaker']]}: {line['text']}" in right
                assert f"{ctx.speakers[swap[line['speaker']]]}: {line['text']}" in swapped
            else:
                assert line["text"] in right and line["text"] in swapped


def test_hard_negatives_share_the_scene_and_difficulty_follows_the_rule(run: Path, ctx: RunView) -> None:
    panels = by_id(ctx)
    seen = Counter()
    for split in SPLITS:
        for task in ("panel_picking", "visual_closure", "caption_relevance"):
            for s in read_task_set(task_dir(run, split), task).samples:
                answer = panels.loc[s.candidates[s.answer].panel_id]
                negatives = [panels.loc[c.panel_id] for i, c in enumerate(s.candidates) if i != s.answer]
                same_scene = [n.book_id == answer.book_id and n.scene == answer.scene for n in negatives]
                rules = s.built_from["negatives"]
                assert s.difficulty == ("hard" if set(rules) <= {"same_scene_run", "same_scene"} else "easy")
                for negative, rule in zip(negatives, rules, strict=True):  # the rule each negative names holds
                    if rule == "same_scene_run":
                        assert negative.book_id == answer.book_id and negative.scene_run == answer.scene_run
                    elif rule == "same_scene":
                        assert negative.book_id == answer.book_id and negative.scene == answer.scene
                    elif rule in ("same_book", "nearby_pages"):
                        assert negative.book_id == answer.book_id
                    else:
                        assert negative.book_id != answer.book_id
                if s.difficulty == "hard":
                    assert all(same_scene)
                if task == "panel_picking":
                    assert not {n.page_id for n in negatives} & {answer.page_id}
                seen[s.difficulty] += 1
    assert seen["hard"] > 0 and seen["easy"] > 0


def test_visual_closure_context_is_the_action_so_far(run: Path, ctx: RunView) -> None:
    panels = by_id(ctx)
    for s in read_task_set(task_dir(run, "test"), "visual_closure").samples:
        answer = panels.loc[s.candidates[s.answer].panel_id]
        context = panels.loc[s.context]
        assert len(context) >= 2 and (context.beat == answer.beat).all()
        assert context.action_step.tolist() == list(
            range(int(answer.action_step) - len(context), int(answer.action_step))
        )


def test_caption_relevance_asks_for_the_panel_after_a_unique_caption(run: Path, ctx: RunView) -> None:
    panels = by_id(ctx)
    for s in read_task_set(task_dir(run, "test"), "caption_relevance").samples:
        captioned = panels.loc[s.built_from["caption_of"]]
        answer = panels.loc[s.candidates[s.answer].panel_id]
        assert s.query_text == captioned.description and captioned.caption_unique
        assert answer.book_id == captioned.book_id and answer.book_pos == captioned.book_pos + 1
        assert s.built_from["caption_of"] not in {c.panel_id for c in s.candidates}
        assert len({panels.description[c.panel_id] for c in s.candidates}) == len(s.candidates)


def test_text_cloze_has_three_panels_of_context_and_both_difficulties(run: Path, ctx: RunView) -> None:
    panels = by_id(ctx)
    samples = read_task_set(task_dir(run, "test"), "text_cloze").samples
    kinds = Counter(s.difficulty for s in samples)
    assert set(kinds) == {"hard", "easy"} and min(kinds.values()) >= len(samples) / 3  # an answer gives both, mostly
    for s in samples:
        answer = panels.loc[s.candidates[s.answer].panel_id]
        assert len(s.context) == CLOZE_CONTEXT and panels.book_pos[s.context[-1]] == answer.book_pos - 1
        sources = [panels.loc[c.text_from] for i, c in enumerate(s.candidates) if i != s.answer]
        # Every negative text has the answer's box count and length cell: its empty balloons show how much text.
        cells = [
            np.floor(np.log1p(len(" ".join(str(p.text).split()))) / TEXT_LENGTH_TOLERANCE) for p in [answer, *sources]
        ]
        assert len(set(cells)) == 1 and {p.n_boxes for p in sources} == {answer.n_boxes}
        if s.difficulty == "hard":
            assert all(n.book_id == answer.book_id and abs(n.page_rank - answer.page_rank) <= 2 for n in sources)
        else:
            assert all(n.book_id != answer.book_id for n in sources)


def test_reading_order_shuffles_the_page_and_keeps_its_order(run: Path, ctx: RunView) -> None:
    panels = by_id(ctx)
    samples = read_task_set(task_dir(run, "test"), "reading_order").samples
    assert any(s.order != sorted(s.order) for s in samples)
    for s in samples:
        ordered = [pid for _, pid in sorted(zip(s.order, s.context, strict=True))]
        page = panels.loc[s.context[0]].page_index
        assert ordered == panels.index[panels.page_index == page].tolist()  # slot order is reading order
        assert s.direction in ("ltr", "rtl")


def test_every_panel_is_a_sample_or_a_counted_skip(run: Path, manifests: dict, ctx: RunView) -> None:
    for split in SPLITS:
        part = ctx.panels[ctx.panels.split == split]
        tasks = manifests[split]["tasks"]
        for task in ("panel_picking", "character_coherence", "visual_closure", "text_closure", "caption_relevance"):
            assert tasks[task]["samples"] + sum(tasks[task]["skipped"].values()) == len(part), (split, task)
        with_text = int(part.has_text.sum())
        cloze = tasks["text_cloze"]
        assert cloze["skipped"]["answer_without_text"] == len(part) - with_text
        tries = 2 * (with_text - cloze["skipped"].get("fewer_than_3_preceding_panels", 0))
        assert cloze["samples"] + sum(n for k, n in cloze["skipped"].items() if "negatives" in k) == tries
        pages = part.page_index.nunique()
        assert tasks["reading_order"]["samples"] + sum(tasks["reading_order"]["skipped"].values()) == pages
        assert tasks["character_coherence"]["skipped"]["fewer_than_2_speakers"] > 0


def test_geometry_stays_at_chance_on_the_samplers_sets_but_reading_order(ctx: RunView) -> None:
    sets = [
        make_task_set(ctx, task, split, task_rng(0, task, split))
        for task in TASKS
        for split in ("train", "val", "test")
    ]
    table = score_baselines([s for s in sets if len(s)], ctx, baselines=["chance", "geometry"])
    geometry = table[(table.method == "geometry") & (table.task != "reading_order")]
    assert set(geometry.task) == set(TASKS) - {"reading_order"}, "every task has training samples to fit on"
    assert (geometry.accuracy - geometry.chance).abs().max() < 0.05


def test_sets_of_other_sampling_rules_are_stale_until_rebuilt(run: Path, ctx: RunView, tmp_path: Path) -> None:
    target = tmp_path / "run"
    shutil.copytree(run / "tasks", target / "tasks")
    assert ensure_task_sets(ctx, target, seed=0).reused == ["val", "test"]
    manifest = target / "tasks" / "val" / "manifest.json"
    record = json.loads(manifest.read_text())
    record["rules"]["version"] -= 1  # sets an older comicnb drew, before its samplers matched shapes
    manifest.write_text(json.dumps(record))
    with pytest.raises(TaskSetsStaleError, match=r"another rules: set rebuild_tasks=True"):
        ensure_task_sets(ctx, target, seed=0)
    rebuilt = ensure_task_sets(ctx, target, seed=0, rebuild=True)
    assert rebuilt.reused == [] and rebuilt.manifests["val"]["rules"] == sampling_rules()
    same = "tasks/val/panel_picking.jsonl"
    assert (target / same).read_bytes() == (run / same).read_bytes()


def test_training_samples_are_redrawn_and_keep_the_rules(ctx: RunView) -> None:
    first = training_samples(ctx, "panel_picking", np.random.default_rng(1))
    again = training_samples(ctx, "panel_picking", np.random.default_rng(1))
    other = training_samples(ctx, "panel_picking", np.random.default_rng(2))
    assert first.split == "train" and len(first) > 0
    assert [s.to_json() for s in first.samples] == [s.to_json() for s in again.samples]
    assert [s.to_json() for s in first.samples] != [s.to_json() for s in other.samples]
    for task in TASKS:
        task_set = training_samples(ctx, task, np.random.default_rng(3), limit=9)
        assert 0 < len(task_set) <= 9 and all(check_sample(s) == [] for s in task_set.samples)
        assert {s.split for s in task_set.samples} == {"train"}


def test_limits_take_a_balanced_seeded_subset(ctx: RunView) -> None:
    full = make_task_set(ctx, "visual_closure", "test", task_rng(0, "visual_closure", "test"))
    capped = make_task_set(ctx, "visual_closure", "test", task_rng(0, "visual_closure", "test"), limit=7)
    assert len(capped) == 7 < len(full)
    assert {s.sample_id for s in capped.samples} <= {s.sample_id for s in full.samples}
    counts = np.bincount([s.answer for s in capped.samples], minlength=5)
    assert counts.max() - counts.min() <= 1


def test_without_text_free_twins_text_tasks_show_no_image_and_the_manifest_says_so(
    ctx: RunView, tmp_path: Path
) -> None:
    bare = replace(ctx, panels=ctx.panels.assign(text_free=False), text_free_masks=None)
    manifest = write_split(bare, tmp_path, "test", tasks=("text_closure", "visual_closure", "character_coherence"))
    assert manifest["text_free"] is False and manifest["text_free_note"] == NO_TWINS
    for task in ("text_closure", "character_coherence"):
        assert set(manifest["tasks"][task]["vision"]) == {"none"}
    assert set(manifest["tasks"]["visual_closure"]["vision"]) == {"full"}


def test_a_split_without_panels_gives_empty_sets(ctx: RunView, tmp_path: Path) -> None:
    manifest = write_split(ctx, tmp_path, "no-such-split")
    assert manifest["panels"] == 0 and all(entry["samples"] == 0 for entry in manifest["tasks"].values())
    assert read_task_set(tmp_path, "panel_picking").samples == []


def test_truth_missing_a_column_is_a_clear_error(ctx: RunView) -> None:
    stale = replace(ctx, panels=ctx.panels.drop(columns=["beat"]))
    with pytest.raises(TruthColumnsMissing, match="beat"):
        SAMPLERS["visual_closure"](stale, "test", np.random.default_rng(0))


def test_check_sample_names_each_broken_rule() -> None:
    def sample(task: str, *candidates: Candidate, answer: int = 0, context: tuple = (1, 2)) -> TaskSample:
        return TaskSample(task, "x", "test", "b", list(context), list(candidates), answer, slot=0)

    good = [
        Candidate(9, "full", text_from=9, composition_from=9),
        Candidate(8, "full", text_from=8, composition_from=9),
    ]
    assert check_sample(sample("panel_picking", *good)) == []
    assert "more than once" in check_sample(sample("panel_picking", good[0], good[0]))[0]
    assert "context" in check_sample(sample("panel_picking", good[0], Candidate(1, composition_from=9)))[0]
    mixed = [good[0], Candidate(8, "full", text_from=8, composition_from=8)]
    assert any("composition" in p for p in check_sample(sample("panel_picking", *mixed)))
    text = [
        Candidate(9, "full", text_from=9, text="a", composition_from=9),
        Candidate(9, "full", text_from=7, text="b"),
    ]
    problems = check_sample(sample("text_closure", *text))
    assert any("shows its text" in p for p in problems) and any("composition" in p for p in problems)
    leaked = [Candidate(9, "none", text_from=9, text="a"), Candidate(9, "none", text_from=2, text="b")]
    assert any("context" in p for p in check_sample(sample("text_cloze", *leaked)))
    order = TaskSample("reading_order", "r", "test", "b", [4, 5, 6], order=[0, 2, 2])
    assert check_sample(order) == ["order is not a permutation of the context"]


@pytest.fixture(scope="module")
def real_like_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A corpus like real data: no ground-truth sidecar, no text-free twins, OCR noise."""
    return make_run(tmp_path_factory.mktemp("stage4-real"), books=4, truth=False, twins=False)


def test_a_corpus_without_truth_builds_every_task_from_its_pages(real_like_run: Path) -> None:
    manifest = build_task_sets(real_like_run, splits=("test",), seed=0)["test"]
    assert manifest["truth"] is None and "real data" in manifest["truth_note"] and manifest["directions"] == {}
    assert manifest == read_manifest(task_dir(real_like_run, "test"))
    tasks = manifest["tasks"]
    for task in TASKS:
        assert tasks[task]["built"] and tasks[task]["samples"] > 0, task
    folder = task_dir(real_like_run, "test")
    for task in ("panel_picking", "visual_closure", "caption_relevance"):
        assert set(tasks[task]["negatives"]) <= {"nearby_pages", "same_book", "other_books"}, task
    assert set(tasks["panel_picking"]["difficulty"]) == {"easy"}
    assert set(tasks["text_closure"]["vision"]) == {"none"} and manifest["text_free_note"] == NO_TWINS
    for s in read_task_set(folder, "reading_order").samples:
        assert s.direction is None
    texts = open_run(real_like_run).panels.set_index("panel_id")
    for s in read_task_set(folder, "character_coherence").samples:
        answer, other = s.candidates[s.answer], s.candidates[1 - s.answer]
        boxes = list(texts.text_boxes[answer.panel_id])
        assert answer.text_boxes == boxes and other.text_boxes == [*boxes[1:], boxes[0]] and len(boxes) >= 2
        assert s.built_from["truth_free"] is True
    for s in read_task_set(folder, "caption_relevance").samples:
        captioned = s.built_from["caption_of"]
        assert s.query_text == texts.description[captioned] and s.built_from["truth_free"] is True
    for task in CHOICE_TASKS:
        assert all(check_sample(s) == [] for s in read_task_set(folder, task).samples), task


def test_caption_relevance_without_truth_needs_descriptions(real_like_run: Path, tmp_path: Path) -> None:
    from comicnb.corpus import load_pages, save_pages

    run = tmp_path / "run"
    shutil.copytree(real_like_run, run)
    pages = load_pages(run / "pages.jsonl")
    pages["descriptions"] = [[None] * n for n in pages.num_panels]
    save_pages(pages, run / "pages.jsonl")
    entry = build_task_sets(run, splits=("test",), seed=0, tasks=["caption_relevance"])["test"]["tasks"]
    assert entry["caption_relevance"]["built"] is False
    assert "description" in entry["caption_relevance"]["reason"]


def test_a_view_can_leave_the_truth_unread(run: Path) -> None:
    plain, blind = open_run(run), open_run(run, truth_free=True)
    assert plain.truth is not None and blind.truth is None and "truth_free" in blind.truth_note
    assert blind.directions == plain.directions and "scene" not in blind.panels
    drawn = SAMPLERS["visual_closure"](blind, "test", np.random.default_rng(0))
    assert drawn and all(s.built_from["truth_free"] for s in drawn)
    assert all(check_sample(s) == [] for s in drawn)


def test_pages_without_descriptions_keep_the_truths_captions(run: Path, tmp_path: Path) -> None:
    """Detected pages carry no description; where the corpus has truth (the raw profile's), caption relevance reads the
    sidecar's captions as before."""
    from comicnb.corpus import load_pages, save_pages

    copy = tmp_path / "run"
    shutil.copytree(run, copy)
    pages = load_pages(copy / "pages.jsonl")
    pages["descriptions"] = [[None] * n for n in pages.num_panels]
    save_pages(pages, copy / "pages.jsonl")
    view, original = open_run(copy), open_run(run)
    assert view.panels.description.tolist() == original.panels.description.tolist()
    assert view.panels.description.notna().any()
    assert SAMPLERS["caption_relevance"](view, "test", np.random.default_rng(0))
