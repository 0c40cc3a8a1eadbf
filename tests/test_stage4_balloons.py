"""Speech per balloon: each text box's own box in the page JSON (written by the generator, read and checked by the
reader), the balloon arrays Stage 4 builds from them, the batches that carry them and the model that reads them."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from test_data import GRID, H, W, make_corpus, problems_of, write_json
from tiny_runs import tiny_store_run

from comicnb.corpus import load_corpus, synth
from comicnb.corpus.reader import text_free_name
from comicnb.stage4.balloons import panel_balloons
from comicnb.stage4.batches import BatchBuilder
from comicnb.stage4.model import Stage4SequenceModel
from comicnb.stage4.task_sets import make_task_set, task_rng
from comicnb.stage4.view import RunView, open_run

DIM = 32
SMALL = dict(input_dim=DIM, d_model=32, nhead=4, num_layers=1, dim_feedforward=64, dropout=0.0)


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tiny_store_run(tmp_path_factory.mktemp("balloons"), DIM, pages=5)


@pytest.fixture(scope="module")
def view(run_dir: Path) -> RunView:
    return open_run(run_dir)


# ------------------------------------------------------------------------------------------------ page JSON


def panel_page(tmp_path: Path, text_box_bboxes: object, bbox_format: str = "xywh") -> object:
    """A corpus whose book_000/page_001 has one panel (GRID[0]) with two text boxes and the given boxes."""
    make_corpus(tmp_path, pages=1, bbox_format=bbox_format)
    x1, y1, x2, y2 = GRID[0]
    box = [x1, y1, x2 - x1, y2 - y1] if bbox_format == "xywh" else [x1, y1, x2, y2]
    panel = {"bbox": box, "text": "Hi! Bye.", "text_boxes": ["Hi!", "Bye."], "text_box_bboxes": text_box_bboxes}
    write_json(tmp_path / "book_000" / "page_001.json", {"image_width": W, "image_height": H, "panels": [panel]})
    return load_corpus(tmp_path, bbox_format=bbox_format)


@pytest.mark.parametrize("bbox_format", ["xywh", "xyxy"])
def test_text_box_boxes_are_read_as_fractions_of_their_panel(tmp_path: Path, bbox_format: str) -> None:
    # GRID[0] is x 5..58, y 5..78: the first balloon fills the panel's top-left quarter, the second crosses its
    # right edge and is cut there.
    given = {"xywh": [[5, 5, 26.5, 36.5], [40, 10, 40, 10]], "xyxy": [[5, 5, 31.5, 41.5], [40, 10, 80, 20]]}
    corpus = panel_page(tmp_path, given[bbox_format], bbox_format)
    page = corpus.pages.set_index("page_id").loc["book_000/page_001"]
    assert page.text_boxes == [["Hi!", "Bye."]]
    first, second = page.text_box_boxes[0]
    np.testing.assert_allclose(first, [0.0, 0.0, 0.5, 0.5], atol=1e-4)
    np.testing.assert_allclose(second, [35 / 53, 5 / 73, 1.0, 15 / 73], atol=1e-4)
    assert problems_of(corpus, "text_box_bboxes").empty
    # Pages without the field have no boxes, and no problem row either.
    other = corpus.pages.set_index("page_id").loc["book_001/page_001"]
    assert all(b is None for b in other.text_box_boxes)


@pytest.mark.parametrize(
    "bad, detail",
    [
        ([[5, 5, 10, 10]], "1 boxes for 2 text boxes"),
        ("box", "not a list"),
        ([[5, 5, 10, 10], [5, 5, 10]], "not 4 finite numbers"),
        ([[5, 5, 10, 10], [500, 500, 10, 10]], "text box 1"),
    ],
)
def test_unusable_text_box_boxes_are_dropped_with_a_row_and_the_panel_kept(
    tmp_path: Path, bad: object, detail: str
) -> None:
    corpus = panel_page(tmp_path, bad)
    rows = problems_of(corpus, "text_box_bboxes")
    assert len(rows) == 1 and rows.iloc[0]["action"] == "dropped_text_box_boxes", corpus.problems
    assert detail in rows.iloc[0]["detail"] and rows.iloc[0]["panel"] == 0
    page = corpus.pages.set_index("page_id").loc["book_000/page_001"]
    assert page.num_panels == 1 and page.texts == ["Hi! Bye."] and page.text_box_boxes == [None]


def test_generated_text_boxes_lie_in_their_panel_over_the_drawn_words(tmp_path: Path) -> None:
    """Every text box of a generated page has a box; each lies inside its panel and covers pixels where the page
    differs from its text-free twin (its words), and a speech line's balloon lies above the speaker's feet."""
    synth.generate(tmp_path, books=2, pages=4, seed=5, page_size=(320, 480))
    corpus = load_corpus(tmp_path)
    assert problems_of(corpus, "text_box_bboxes").empty
    checked = 0
    for page in corpus.pages.itertuples():
        drawn = np.asarray(Image.open(tmp_path / page.image_path).convert("L"), dtype=int)
        twin = np.asarray(Image.open(tmp_path / text_free_name(page.image_path)).convert("L"), dtype=int)
        for box, words, places in zip(page.boxes, page.text_boxes, page.text_box_boxes, strict=True):
            assert places is not None and len(places) == len(words)
            x1, y1, x2, y2 = box
            for (a, b, c, d), text in zip(places, words, strict=True):
                assert 0 <= a < c <= 1 and 0 <= b < d <= 1, (text, places)
                left, top = int(x1 + a * (x2 - x1)), int(y1 + b * (y2 - y1))
                right, bottom = int(np.ceil(x1 + c * (x2 - x1))), int(np.ceil(y1 + d * (y2 - y1)))
                if text.strip():
                    assert (np.abs(drawn - twin)[top:bottom, left:right] > 40).any(), (page.page_id, text)
                    checked += 1
    assert checked > 20
    doc = json.loads((tmp_path / corpus.pages.image_path.iloc[0]).with_suffix(".json").read_text())
    assert all("text_box_bboxes" in p for p in doc["panels"])


# ------------------------------------------------------------------------------------------------ Stage 4


def test_panel_balloons_hold_every_text_box_once(view: RunView) -> None:
    balloons = panel_balloons(view)
    assert panel_balloons(view) is balloons  # built once per view
    panels = view.panels
    boxes = sum(sum(1 for t in row if str(t).strip()) for row in panels.text_boxes if isinstance(row, list))
    assert int(balloons.mask.sum()) == boxes > 0 and balloons.dropped == 0
    assert balloons.placed == boxes  # the generator gives every box its place
    row = next(r for r in panels.itertuples() if isinstance(r.text_boxes, list) and len(r.text_boxes) >= 2)
    with torch.no_grad():
        expected = view.model.encode_texts(list(row.text_boxes)).float().numpy()
    got = balloons.vectors[row.page_index, row.slot, : len(row.text_boxes)]
    np.testing.assert_allclose(got, expected, atol=1e-4)
    np.testing.assert_allclose(balloons.boxes[row.page_index, row.slot, : len(row.text_boxes)], row.balloon_boxes)
    silent = panels[panels.text_boxes.map(lambda t: isinstance(t, list) and not t)]
    assert not balloons.mask[silent.page_index, silent.slot].any()


def test_batches_carry_each_context_panels_balloons_and_none_at_the_masked_place(view: RunView) -> None:
    builder = BatchBuilder(view, balloons=True)
    plain = BatchBuilder(view)
    picking = make_task_set(view, "panel_picking", "train", task_rng(0, "panel_picking", "train"))
    samples = picking.samples[:6]
    batch = builder.collate(picking, samples)
    assert "balloons" not in plain.collate(picking, samples)
    table = panel_balloons(view)
    for b, sample in enumerate(samples):
        places = [*sample.context[: sample.slot], None, *sample.context[sample.slot :]]
        for k, pid in enumerate(places):
            if pid is None:
                assert not batch["balloon_mask"][b, k].any()
                continue
            page, slot = view.locate([pid])
            assert torch.equal(batch["balloon_mask"][b, k], torch.from_numpy(table.mask[page[0], slot[0]]))
            np.testing.assert_array_equal(batch["balloons"][b, k].numpy(), table.vectors[page[0], slot[0]])
    # The vision-only ablation has no text, so no balloons either.
    assert BatchBuilder(view, ("vision",), balloons=True).balloons is None


def test_the_model_reads_balloons_only_when_built_for_them(view: RunView) -> None:
    builder = BatchBuilder(view, balloons=True)
    coherence = make_task_set(view, "character_coherence", "train", task_rng(0, "character_coherence", "train"))
    batch = builder.collate(coherence, coherence.samples[:8])
    assert batch["balloon_mask"].any()
    torch.manual_seed(0)
    with_balloons = Stage4SequenceModel(**SMALL, balloon_tokens=True).eval()
    torch.manual_seed(0)
    without = Stage4SequenceModel(**SMALL).eval()
    moved = {**batch, "balloons": batch["balloons"].flip(-1)}  # other texts in the same boxes
    replaced = {**batch, "balloon_boxes": batch["balloon_boxes"].flip(-1)}  # the same texts in other places
    bare = {k: v for k, v in batch.items() if not k.startswith("balloon")}
    with torch.no_grad():
        logits = with_balloons.task_logits("character_coherence", batch)
        assert not torch.allclose(logits, with_balloons.task_logits("character_coherence", moved))
        assert not torch.allclose(logits, with_balloons.task_logits("character_coherence", replaced))
        assert not torch.allclose(logits, with_balloons.task_logits("character_coherence", bare))
        plain = without.task_logits("character_coherence", batch)
        assert torch.equal(plain, without.task_logits("character_coherence", moved))
        assert torch.equal(plain, without.task_logits("character_coherence", bare))
    # A model without balloon tokens has none of their parameters: its checkpoints load as they were saved.
    assert not any("balloon" in name for name, _ in without.named_parameters())


def test_balloon_tokens_train_and_reach_reading_order(view: RunView) -> None:
    builder = BatchBuilder(view, balloons=True)
    order = make_task_set(view, "reading_order", "train", task_rng(0, "reading_order", "train"))
    coherence = make_task_set(view, "character_coherence", "train", task_rng(0, "character_coherence", "train"))
    batch = builder.collate(order, order.samples[:8])
    torch.manual_seed(0)
    model = Stage4SequenceModel(**SMALL, balloon_tokens=True)
    loss = model.task_loss("reading_order", batch)
    loss = loss + model.task_loss("character_coherence", builder.collate(coherence, coherence.samples[:8]))
    loss.backward()
    assert torch.isfinite(loss)
    assert model.balloon_box_embed.weight.grad.abs().sum() > 0 and model.balloon_type.grad.abs().sum() > 0
    logits = model.task_logits("reading_order", batch)
    assert logits.shape == (8, batch["context"].shape[1], batch["context"].shape[1])
    orders = model.predict("reading_order", batch)
    assert all(sorted(o) == list(range(len(o))) for o in orders)


def test_character_coherence_candidates_bring_their_lines_per_balloon(view: RunView) -> None:
    """Each candidate's text is its per-box texts joined; the two candidates name the speakers the other way round in
    the same boxes; the batch carries each line in its panel's box and the model reads one sequence per candidate."""
    coherence = make_task_set(view, "character_coherence", "train", task_rng(0, "character_coherence", "train"))
    sample = coherence.samples[0]
    right, swapped = sample.candidates[sample.answer], sample.candidates[1 - sample.answer]
    assert right.text == " ".join(right.text_boxes) and swapped.text == " ".join(swapped.text_boxes)
    assert len(right.text_boxes) == len(swapped.text_boxes) and right.text_boxes != swapped.text_boxes
    builder = BatchBuilder(view, balloons=True)
    batch = builder.collate(coherence, coherence.samples[:8])
    table = panel_balloons(view)
    page, slot = view.locate([right.panel_id])
    count = int(table.mask[page[0], slot[0]].sum())
    assert count == len(right.text_boxes)
    assert batch["candidate_balloon_mask"][0].sum(dim=-1).tolist() == [count, count]
    np.testing.assert_array_equal(
        batch["candidate_balloon_boxes"][0, 0, :count].numpy(), table.boxes[page[0], slot[0], :count]
    )
    with torch.no_grad():
        expected = view.model.encode_texts([right.text_boxes[0]]).float().numpy()[0]
    np.testing.assert_allclose(batch["candidate_balloons"][0, sample.answer, 0].numpy(), expected, atol=1e-4)
    # Other sets' candidates have one block of text: no candidate balloons.
    cloze = make_task_set(view, "text_cloze", "train", task_rng(0, "text_cloze", "train"))
    assert "candidate_balloons" not in builder.collate(cloze, cloze.samples[:4])

    torch.manual_seed(0)
    model = Stage4SequenceModel(**SMALL, balloon_tokens=True).eval()
    with torch.no_grad():
        logits = model.task_logits("character_coherence", batch)
        assert logits.shape == (8, 2) and torch.isfinite(logits).all()
        # A candidate's balloons change its own score only.
        other = batch["candidate_balloons"].clone()
        other[:, 1] = other[:, 1].flip(-1)
        moved = model.task_logits("character_coherence", {**batch, "candidate_balloons": other})
        assert torch.allclose(moved[:, 0], logits[:, 0], atol=1e-5) and not torch.allclose(moved[:, 1], logits[:, 1])
        # Without any candidate balloon the per-candidate sequences give the shared sequence's scores.
        empty = {**batch, "candidate_balloon_mask": torch.zeros_like(batch["candidate_balloon_mask"])}
        bare = {k: v for k, v in batch.items() if not k.startswith("candidate_balloon")}
        assert torch.allclose(
            model.task_logits("character_coherence", empty), model.task_logits("character_coherence", bare), atol=1e-5
        )
