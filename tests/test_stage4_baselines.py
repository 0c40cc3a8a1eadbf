"""Stage 4 baselines on hand-built samples over a small generated corpus and a tiny-model store: chance is exact, the
geometry model sees only the composition a candidate enters with, the (y, x) sort reads grids both ways, the
no-learning baselines find an identical candidate, and the table carries intervals that hold their accuracy."""

from __future__ import annotations

import json
import math
from dataclasses import replace
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

from comicnb import checkpoint
from comicnb.corpus import load_corpus, save_corpus, synth
from comicnb.metrics import accuracy_interval
from comicnb.stage3 import checkpoints
from comicnb.stage3.model import PanelFeatureExtractor
from comicnb.stage4.baselines import GeometryBaseline, applies, run_baselines, score_baselines
from comicnb.stage4.baselines.no_learning import (
    chance_baseline,
    colour_histogram,
    colour_histogram_baseline,
    crop_histograms,
    named_addressee_baseline,
    stage3_cosine_baseline,
    text_similarity_baseline,
    yx_order,
    yx_sort_baseline,
)
from comicnb.stage4.inputs import candidate_parts, refuse
from comicnb.stage4.results import COLUMNS
from comicnb.stage4.tasks import Candidate, TaskSample, TaskSet
from comicnb.stage4.view import RunView, open_run
from comicnb.store import EmbedConfig, generate

NEGATIVES = 4  # panel picking: 5 candidates, as the protocol says


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A generated corpus of 3 books (one per split) and a store made by a tiny untrained model (feature_dim=32)."""
    root = tmp_path_factory.mktemp("baselines")
    synth.generate(root / "data", books=3, pages=4, seed=3, page_size=(320, 480))
    save_corpus(load_corpus(root / "data", split=(0.34, 0.33, 0.33), seed=0), root / "run")
    torch.manual_seed(0)
    model = PanelFeatureExtractor(feature_dim=32, tiny=True)
    state = {"model_state_dict": model.state_dict(), "config": {"model": model.config, "train": {"seed": 0}}}
    checkpoint.save_checkpoint(state, checkpoints(root / "run").last)
    assert generate(root / "run", cfg=EmbedConfig(pages_per_chunk=4))["complete"]
    return root / "run"


@pytest.fixture(scope="module")
def inputs(run_dir: Path) -> RunView:
    return open_run(run_dir)


def page_panels(inputs: RunView, split: str | None = None) -> list[list[int]]:
    """Flat panel ids of each stored page (of one split)."""
    pages = inputs.pages if split is None else inputs.pages[inputs.pages.split == split]
    return [list(ids) for ids in pages.embedding_indices]


def panel_picking(inputs: RunView, split: str, composition: str | None, seed: int = 0) -> TaskSet:
    """Every panel of every page of a split, masked in turn: the answer is the held-out panel, negatives are panels
    of other pages of the split. ``composition``: None (no candidate has any), "slot" (each enters with the masked
    slot's) or "own" (each brings its own box: the leak the geometry baseline must catch)."""
    rng = np.random.default_rng(seed)
    pages = page_panels(inputs, split)
    samples = []
    for page, ids in enumerate(pages):
        others = [p for other, o in enumerate(pages) if other != page for p in o]
        for slot, answer in enumerate(ids):
            picked = [answer, *rng.choice(others, NEGATIVES, replace=False).tolist()]
            order = rng.permutation(len(picked))
            candidates = [
                Candidate(int(picked[k]), composition_from=box_of(picked[k], answer, composition)) for k in order
            ]
            context = [p for p in ids if p != answer]
            samples.append(
                TaskSample(
                    "panel_picking",
                    f"{split}-{page}-{slot}",
                    split,
                    str(inputs.pages.book_id.iloc[answer // inputs.max_panels]),
                    context,
                    candidates,
                    answer=int(np.flatnonzero(order == 0)[0]),
                    difficulty="hard" if slot % 2 else "easy",
                    slot=slot,
                )
            )
    return TaskSet("panel_picking", split, samples)


def box_of(panel: int, answer: int, composition: str | None) -> int | None:
    """The composition a panel-picking candidate enters with (see panel_picking)."""
    return {None: None, "slot": int(answer), "own": int(panel)}[composition]


def reading_order(inputs: RunView, split: str, seed: int = 0, pages_of: tuple[str, ...] = ()) -> TaskSet:
    """Every page of a split (or of the splits ``pages_of``), its panels shuffled; the corpus lists panels in reading
    order, and the generator's ground truth says each book's direction (as the samplers give it)."""
    truth = json.loads((inputs.data_root / "ground_truth.json").read_text())["books"]
    rng = np.random.default_rng(seed)
    samples = []
    for part in pages_of or (split,):
        for page, (ids, book) in enumerate(
            zip(page_panels(inputs, part), inputs.pages[inputs.pages.split == part].book_id)
        ):
            shuffle = rng.permutation(len(ids))
            context = [ids[k] for k in shuffle]
            direction = truth[book]["direction"]
            samples.append(
                TaskSample(
                    "reading_order", f"{part}-{page}", split, book, context, order=shuffle.tolist(), direction=direction
                )
            )
    return TaskSet("reading_order", split, samples)


def sample(task: str, context: list[int], candidates: list[Candidate], answer: int, **fields: object) -> TaskSample:
    """One hand-built sample of the val split."""
    return TaskSample(task, f"{task}-{answer}", "val", "book", context, candidates, answer=answer, **fields)


def texted(inputs: RunView, count: int) -> list[int]:
    """The first panels with distinct, non-empty texts."""
    seen, ids = set(), []
    for page in page_panels(inputs):
        for p in page:
            text = inputs.text(p)
            if text and text not in seen:
                seen.add(text)
                ids.append(p)
    return ids[:count]


# ----------------------------------------------------------------------------------------------------------------


def test_wilson_interval_known_values_and_bootstrap() -> None:
    accuracy, low, high = accuracy_interval([0] * 10)
    assert (accuracy, low) == (0.0, 0.0) and high == pytest.approx(0.2775, abs=1e-4)
    accuracy, low, high = accuracy_interval([1] * 10)
    assert (accuracy, high) == (1.0, 1.0) and low == pytest.approx(0.7225, abs=1e-4)
    accuracy, low, high = accuracy_interval([1, 0] * 50)
    assert accuracy == 0.5 and 0.5 - low == pytest.approx(high - 0.5) and high == pytest.approx(0.5962, abs=1e-4)
    values = np.random.default_rng(0).random(200) < 0.3
    accuracy, low, high = accuracy_interval(values, method="bootstrap")
    assert low <= accuracy <= high and high - low == pytest.approx(accuracy_interval(values)[2] - low, abs=0.03)
    assert all(math.isnan(v) for v in accuracy_interval([]))
    with pytest.raises(ValueError, match="one of wilson, bootstrap"):
        accuracy_interval([1], method="normal")


def test_chance_is_one_over_the_candidates_and_the_permutations(inputs: RunView) -> None:
    picking = chance_baseline(panel_picking(inputs, "val", None))
    assert np.allclose(picking.correct, 1 / 5) and np.allclose(picking.chance, 1 / 5)
    order = chance_baseline(reading_order(inputs, "val"))
    sizes = [len(ids) for ids in page_panels(inputs, "val")]
    assert np.allclose(order.correct, [1 / math.factorial(n) for n in sizes])
    assert np.allclose(order.pairwise, 0.5) and np.allclose(order.kendall_tau, 0.0)


@pytest.mark.parametrize("composition", [None, "slot"])
def test_geometry_is_exactly_chance_when_candidates_bring_no_box_of_their_own(
    inputs: RunView, composition: str | None
) -> None:
    model = GeometryBaseline(steps=100).fit(panel_picking(inputs, "train", composition), inputs)
    for split in ("val", "test"):
        result = model.predict(panel_picking(inputs, split, composition, seed=1), inputs)
        assert np.allclose(result.correct, result.chance), "every candidate looks the same: a uniform tie"
        assert set(result.predictions) == {-1}
        assert all(np.ptp(s) < 1e-5 for s in result.scores)


def test_geometry_catches_candidates_that_bring_their_own_box(inputs: RunView) -> None:
    model = GeometryBaseline().fit(panel_picking(inputs, "train", "own"), inputs)
    result = model.predict(panel_picking(inputs, "test", "own", seed=1), inputs)
    assert result.correct.mean() > 0.5 > 2 * result.chance.mean()  # the held-out box fills the gap in the layout


def test_geometry_learns_reading_order_from_layout(inputs: RunView) -> None:
    # The train book reads right to left, the others left to right: fit on both directions, test on the third book.
    model = GeometryBaseline().fit(reading_order(inputs, "train", pages_of=("train", "val")), inputs)
    result = model.predict(reading_order(inputs, "test", seed=1), inputs)
    assert result.pairwise.mean() > 0.8 and result.correct.mean() > result.chance.mean()
    assert np.allclose(result.kendall_tau, 2 * result.pairwise - 1)


def grid_inputs(direction: str) -> tuple[RunView, TaskSet]:
    """A 2 x 3 grid page (panels listed in reading order: left to right, or right to left for rtl), shuffled."""
    cells = [(column, row) for row in range(2) for column in (range(3) if direction == "ltr" else range(2, -1, -1))]
    boxes = [[10 + 100 * c, 10 + 150 * r, 100 + 100 * c, 150 + 150 * r] for c, r in cells]
    pages = pd.DataFrame(dict(book_id=["b"], boxes=[boxes], image_width=[320], image_height=[320], texts=[[""] * 6]))
    shuffle = np.random.default_rng(0).permutation(6)
    task = TaskSample(
        "reading_order", "grid", "val", "b", shuffle.tolist(), order=shuffle.tolist(), direction=direction
    )
    return RunView(pages=pages, max_panels=8), TaskSet("reading_order", "val", [task])


def test_yx_sort_reads_a_grid_and_only_the_direction_aware_one_reads_right_to_left() -> None:
    assert yx_order([[0, 0, 1, 1], [2, 0, 3, 1], [0, 2, 1, 3]]).tolist() == [0, 1, 2]
    assert yx_order([[0, 0, 1, 1], [2, 0, 3, 1], [0, 2, 1, 3]], "rtl").tolist() == [1, 0, 2]
    inputs, ltr = grid_inputs("ltr")
    for aware in (False, True):
        result = yx_sort_baseline(ltr, inputs, use_direction=aware)
        assert result.correct.tolist() == [1.0] and result.kendall_tau.tolist() == [1.0]
    inputs, rtl = grid_inputs("rtl")
    aware = yx_sort_baseline(rtl, inputs, use_direction=True)
    blind = yx_sort_baseline(rtl, inputs)
    assert aware.correct.tolist() == [1.0] and aware.pairwise.tolist() == [1.0]
    assert blind.correct.tolist() == [0.0] and blind.pairwise[0] == pytest.approx(1 - 6 / 15)  # 3 + 3 pairs per row
    assert blind.kendall_tau[0] == pytest.approx(2 * blind.pairwise[0] - 1)


def test_colour_histogram_picks_the_identical_crop(inputs: RunView) -> None:
    a, b, c = page_panels(inputs, "val")[0][:3]
    result = colour_histogram_baseline(
        TaskSet(
            "visual_closure",
            "val",
            [sample("visual_closure", [a], [Candidate(b), Candidate(a), Candidate(c)], answer=1)],
        ),
        inputs,
    )
    assert result.correct.tolist() == [1.0] and result.predictions == [1]
    assert result.scores[0][1] == pytest.approx(1.0)


def test_a_crops_histogram_does_not_depend_on_its_page(inputs: RunView, tmp_path: Path) -> None:
    """The colour histogram reads a crop at full size: decoded at a scale set by its page's smallest panel, crops of
    one page would share a blur that tells their page (a cue that is not the story)."""
    panel = page_panels(inputs, "val")[0][0]
    page, slot = inputs.locate(panel)
    box = inputs.pages.iloc[int(page)]["boxes"][int(slot)]
    with Image.open(inputs.image_file(int(page))) as image:
        alone = colour_histogram(image.convert("RGB").crop(tuple(int(round(v)) for v in box)))
    local = RunView(pages=inputs.pages, max_panels=inputs.max_panels, data_root=inputs.data_root)
    assert np.allclose(crop_histograms(local, [(panel, "full")])[0], alone, atol=1e-3)


def test_text_free_crops_come_from_the_twin_and_fall_back_with_a_warning(inputs: RunView, tmp_path: Path) -> None:
    twin = tmp_path / "twin.png"
    Image.new("RGB", (320, 480), (255, 0, 0)).save(twin)
    pages = inputs.pages.copy()
    pages["text_free_path"] = [str(twin)] + [""] * (len(pages) - 1)
    local = RunView(pages=pages, max_panels=inputs.max_panels, data_root=inputs.data_root)
    first, second = page_panels(local)[0][0], page_panels(local)[1][0]
    red = crop_histograms(local, [(first, "text_free")])[0]
    assert red.max() == pytest.approx(1.0) and np.argmax(red) == 7 * 64  # every pixel in the top red cell
    with pytest.warns(UserWarning, match="text-free twin"):
        fallback = crop_histograms(local, [(second, "text_free")])[0]
    assert np.allclose(fallback, crop_histograms(local, [(second, "full")])[0])


def test_refusing_a_panels_own_parts_gives_its_stored_vector(inputs: RunView) -> None:
    ids = page_panels(inputs)[0]
    own = [Candidate(p, text_from=p, composition_from=p) for p in ids]
    fused = refuse(*candidate_parts(own, inputs), inputs.model)
    pages, slots = inputs.locate(ids)
    np.testing.assert_allclose(fused, inputs.fused[pages, slots], atol=1e-5)
    parts, mask = candidate_parts([Candidate(ids[0], vision="none")], inputs)
    assert not mask.any() and not refuse(parts, mask, inputs.model).any()  # nothing named, nothing fused


def test_stage3_cosine_picks_the_context_panel_and_the_captioned_text(inputs: RunView) -> None:
    a, b, c = page_panels(inputs, "test")[0][:3]
    full = [Candidate(p, text_from=p, composition_from=p) for p in (b, c, a)]
    picking = stage3_cosine_baseline(TaskSet("panel_picking", "val", [sample("panel_picking", [a], full, 2)]), inputs)
    assert picking.correct.tolist() == [1.0]
    x, y, z = texted(inputs, 3)
    texts = [Candidate(p, vision="none", text_from=p) for p in (y, x, z)]
    caption = sample("caption_relevance", [], texts, 1, query_text=inputs.text(x))
    result = stage3_cosine_baseline(TaskSet("caption_relevance", "val", [caption]), inputs)
    assert result.correct.tolist() == [1.0] and result.scores[0][1] == pytest.approx(1.0, abs=1e-5)


def test_text_free_candidates_take_the_twins_vision_or_warn(inputs: RunView) -> None:
    b = texted(inputs, 1)[0]
    (row,), (slot,) = inputs.locate([b])
    assert inputs.text_free_masks[row, slot]  # the generated corpus draws a twin of every page
    twin, drawn = inputs.text_free_vision[row, slot], inputs.modalities[row, slot, 0]
    assert not np.allclose(twin, drawn)  # the twin's balloons are empty, so its picture differs
    candidates = [Candidate(b, vision="text_free", text_from=b), Candidate(b, vision="full", text_from=b)]
    parts, mask = candidate_parts(candidates, inputs)
    assert mask[:, :2].all() and not mask[:, 2].any()
    assert np.array_equal(parts[0, 0], twin) and np.array_equal(parts[1, 0], drawn)
    without = replace(inputs, text_free_masks=np.zeros_like(inputs.text_free_masks), _warned=set())
    with pytest.warns(UserWarning, match="text-free twin"):
        parts, _ = candidate_parts(candidates[:1], without)
    assert np.array_equal(parts[0, 0], drawn)


def test_text_similarity_picks_the_matching_text(inputs: RunView) -> None:
    x, y, z = texted(inputs, 3)
    candidates = [
        Candidate(z, vision="text_free", text_from=z),
        Candidate(x, vision="text_free", text="other words"),
        Candidate(y, vision="text_free", text_from=x),
    ]
    result = text_similarity_baseline(TaskSet("text_cloze", "val", [sample("text_cloze", [x], candidates, 2)]), inputs)
    assert result.correct.tolist() == [1.0] and result.scores[0][2] == pytest.approx(1.0, abs=1e-5)


def test_score_baselines_table(inputs: RunView) -> None:
    sets = [panel_picking(inputs, split, None) for split in ("train", "val", "test")]
    sets += [reading_order(inputs, "train"), reading_order(inputs, "val")]
    x, y, z = texted(inputs, 3)
    cloze = [
        sample("text_cloze", [x], [Candidate(y, text_from=y), Candidate(z, text_from=z)], k % 2, difficulty=d)
        for k, d in enumerate(["hard", "easy", "hard"])
    ]
    sets.append(TaskSet("text_cloze", "val", cloze))
    with pytest.warns(UserWarning, match="no text_cloze training samples"):
        table = score_baselines(sets, inputs)
    assert list(table.columns) == COLUMNS and "train" not in set(table.split)
    assert ((table.low <= table.accuracy) & (table.accuracy <= table.high)).all()
    by = table.set_index(["task", "split", "difficulty", "method"])
    assert set(table[table.task == "panel_picking"].difficulty) == {"hard", "easy", "all"}
    assert set(table[table.task == "reading_order"].method) == {"chance", "geometry", "yx_sort", "yx_sort_direction"}
    assert set(table[table.task == "panel_picking"].method) == {
        "chance",
        "geometry",
        "shape",
        "colour_histogram",
        "stage3_cosine",
    }
    assert set(table[table.task == "text_cloze"].method) == {
        "chance",
        "colour_histogram",
        "stage3_cosine",
        "text_similarity",
    }
    for split in ("val", "test"):
        geometry = by.loc[("panel_picking", split, "all", "geometry")]
        assert geometry.accuracy == pytest.approx(geometry.chance) == pytest.approx(0.2)
        assert by.loc[("panel_picking", split, "all", "chance"), "n"] == geometry.n
    cloze_all = by.loc[("text_cloze", "val", "all", "chance")]
    assert cloze_all.n == 3 and cloze_all.chance == 0.5
    per_sample = run_baselines(sets[:2], inputs, baselines=["chance"])[0].frame()
    assert {"sample_id", "book_id", "correct", "chance"} <= set(per_sample.columns)


def test_named_addressee_takes_a_line_naming_its_own_speaker_as_wrong() -> None:
    def candidate(lines: list[str]) -> Candidate:
        return Candidate(0, "none", text_row=0, text=" ".join(lines), text_boxes=lines)

    right = ["Meanwhile, at the harbour.", "Rex: Was that a raindrop, Pip?", "Pip: I felt one too!"]
    wrong = ["Meanwhile, at the harbour.", "Pip: Was that a raindrop, Pip?", "Rex: I felt one too!"]
    silent = ["Rex: Catch!", "Pip: Got it!"]  # nobody named: the rule cannot tell

    def sample(name: str, candidates: list[Candidate], answer: int = 0) -> TaskSample:
        return TaskSample("character_coherence", name, "test", "b0", [], candidates, answer=answer)

    samples = [
        sample("a", [candidate(right), candidate(wrong)]),
        sample("b", [candidate(wrong), candidate(right)], answer=1),
        sample("c", [candidate(silent), candidate(silent[::-1])]),
        # A name inside a word is no address ("Pipe" is not Pip); one without per-box texts is a uniform pick.
        sample("d", [candidate(["Pip: A Pipe!"]), candidate(["Rex: no"])]),
        sample("e", [Candidate(0, text="Pip: Pip?"), Candidate(0)]),
    ]
    result = named_addressee_baseline(TaskSet("character_coherence", "test", samples))
    assert list(result.correct) == [1.0, 1.0, 0.5, 0.5, 0.5]
    assert applies("named_addressee", "character_coherence") and not applies("named_addressee", "text_closure")
