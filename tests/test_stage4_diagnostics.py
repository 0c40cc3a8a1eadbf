"""Context diagnostics (comicnb.stage4.diagnostics): each change of context does what it says and nothing else, the
paired table and its verdicts follow the samples, and the attention maps are the encoder's own.

The store is a tiny untrained Stage 3 model's on a small generated corpus (3 books of 6 pages, one per split), with
its fixed task sets; the Stage 4 models are small and untrained: these tests check the instrument, not a model.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from comicnb import checkpoint
from comicnb.stage3 import checkpoints as stage3_checkpoints
from comicnb.stage3.model import PanelFeatureExtractor
from comicnb.stage4 import diagnostics as dx
from comicnb.stage4.batches import BatchBuilder, reduced_builders
from comicnb.stage4.model import Stage4SequenceModel
from comicnb.stage4.scoring import predict_sets
from comicnb.stage4.task_sets import build_task_sets, read_sets
from comicnb.stage4.view import open_run
from comicnb.store import EmbedConfig, generate

SMALL = dict(d_model=32, nhead=2, num_layers=2, dim_feedforward=64)


@pytest.fixture(scope="module")
def run(small_run: Path) -> Path:
    torch.manual_seed(0)
    model = PanelFeatureExtractor(feature_dim=32, tiny=True)
    state = {"model_state_dict": model.state_dict(), "config": {"model": model.config, "train": {"seed": 0}}}
    checkpoint.save_checkpoint(state, stage3_checkpoints(small_run).last)
    generate(small_run, cfg=EmbedConfig(pages_per_chunk=8))
    build_task_sets(small_run, seed=0)
    return small_run


@pytest.fixture(scope="module")
def view(run: Path):
    return open_run(run)


@pytest.fixture(scope="module")
def sets(run: Path, view) -> dict:
    return read_sets(run, view, split="test")


def test_each_change_of_context_does_what_it_says_and_keeps_the_candidates(view, sets: dict) -> None:
    books = dx.book_pages(view)
    checked = 0
    for task, task_set in sets.items():
        if task in (*dx.NO_CONTEXT, "reading_order"):
            continue
        for condition in dx.CONDITIONS:
            changed, skipped = dx.changed_set(task_set, condition, view, seed=1, books=books)
            assert len(changed) + skipped == len(task_set)
            again, _ = dx.changed_set(task_set, condition, view, seed=1, books=books)
            assert [s.context for s in again.samples] == [s.context for s in changed.samples]  # same seed, same draw
            originals = {s.sample_id: s for s in task_set.samples}
            for sample in changed.samples:
                before = originals[sample.sample_id]
                assert sample.candidates == before.candidates and sample.answer == before.answer
                assert sample.query_text == before.query_text
                if sample.slot is not None:
                    assert 0 <= sample.slot <= len(sample.context)
                if condition == "given":
                    assert sample.context == before.context and sample.slot == before.slot
                elif condition == "shuffled":
                    assert sorted(sample.context) == sorted(before.context) and sample.slot == before.slot
                    if len(set(before.context)) > 1:
                        assert sample.context != before.context
                elif condition == "nearest":
                    if before.slot is None:
                        assert sample.context == before.context[-1:]
                    elif before.slot > 0:
                        assert (sample.context, sample.slot) == ([before.context[before.slot - 1]], 1)
                    else:
                        assert (sample.context, sample.slot) == ([before.context[0]], 0)
                elif condition == "other_page":
                    pages = set(view.locate(sample.context)[0])
                    used = set(view.locate([*before.context, *(c.panel_id for c in before.candidates)])[0])
                    assert len(pages) == 1 and not pages & used
                    assert pages <= set(books[str(before.book_id)])
                    assert 0 < len(sample.context) <= len(before.context)
                    assert sample.context == sorted(sample.context)  # in the page's reading order
                else:
                    assert sample.context == [] and sample.slot in (None, 0)
                checked += 1
    assert checked > 0


def test_a_book_with_no_other_page_is_skipped_and_counted(view, sets: dict) -> None:
    task_set = sets["visual_closure"]
    assert len(task_set)
    changed, skipped = dx.changed_set(task_set, "other_page", view, books={})
    assert len(changed) == 0 and skipped == len(task_set)


def paired(given: list[float], changed: list[float], condition: str = "shuffled") -> dx.Diagnostics:
    """A diagnostics frame of one method and task: two books, per-sample correctness as given and changed."""
    n = len(given)
    base = dict(method="stage4", task="visual_closure", split="test", difficulty="-", chance=0.2, context_length=3)
    rows = [
        dict(base, sample_id=f"s{i}", book_id=f"b{i % 8}", correct=value, condition=name)
        for name, values in (("given", given), (condition, changed))
        for i, value in enumerate(values)
    ]
    assert len(rows) == 2 * n
    return dx.Diagnostics(pd.DataFrame(rows), {})


def test_the_table_pairs_samples_and_the_verdict_follows_the_drop() -> None:
    reads = dx.diagnostic_table(paired([1.0] * 40, [1.0] * 20 + [0.0] * 20), n_resamples=200)
    row = reads[reads.condition == "shuffled"].iloc[0]
    assert row.accuracy == 0.5 and row.lost == 0.5 and row.lost_low > 0
    assert "reads the sequence" in dx.sequence_verdicts(reads)[0]

    flat = dx.diagnostic_table(paired([1.0, 0.0] * 20, [1.0, 0.0] * 20), n_resamples=200)
    row = flat[flat.condition == "shuffled"].iloc[0]
    assert row.lost == 0 and not dx.moved(row)
    assert "does not test the sequence" in dx.sequence_verdicts(flat)[0]

    unordered = dx.diagnostic_table(paired([1.0] * 40, [0.0] * 40, "removed"), n_resamples=200)
    assert "not its order" in dx.sequence_verdicts(unordered)[0]
    assert "removed -1.000" in dx.sequence_verdicts(unordered)[0]
    misled = dx.diagnostic_table(paired([0.0] * 40, [1.0] * 40, "removed"), n_resamples=200)
    assert "misleads" in dx.sequence_verdicts(misled)[0] and "removed +1.000" in dx.sequence_verdicts(misled)[0]
    few = dx.sequence_verdicts(reads, books={"visual_closure": 3})[0]
    assert few.startswith("visual_closure: no verdict: 3 held-out books")


@pytest.fixture(scope="module")
def models(view) -> dict:
    torch.manual_seed(0)
    builder = BatchBuilder(view)
    main = Stage4SequenceModel(input_dim=view.feature_dim, **SMALL).eval()
    flat = Stage4SequenceModel(input_dim=view.feature_dim, use_transformer=False, **SMALL).eval()
    return {"stage4": (main, builder), "no_transformer": (flat, builder)}


def test_every_model_is_scored_under_every_condition_that_applies(view, sets: dict, models: dict) -> None:
    found = dx.diagnose(models, sets, view, seed=0)
    table = dx.diagnostic_table(found, n_resamples=50)
    for task, task_set in sets.items():
        if task in dx.NO_CONTEXT or not len(task_set):
            assert task not in set(table.task)
            continue
        conditions = dx.ORDER_CONDITIONS if task == "reading_order" else dx.CONDITIONS
        part = table[table.task == task]
        assert set(part.method) == set(models)
        for condition in conditions:
            row = part[(part.method == "stage4") & (part.condition == condition)].iloc[0]
            assert row.n + row.skipped == len(task_set)
            assert 0 <= row.accuracy <= 1
    given = found.samples[found.samples.condition == "given"]
    assert (given.context_length > 0).all()
    removed = found.samples[found.samples.condition == "removed"]
    assert (removed.context_length == 0).all()
    lengths = dx.by_context_length(found)
    assert set(lengths.columns) >= {"n", "stage4", "no_transformer"}
    assert len(dx.sequence_verdicts(table)) == table.task.nunique()


def test_reading_order_loses_its_content_or_its_boxes(view, sets: dict, models: dict) -> None:
    builder = models["stage4"][1]
    task_set = sets["reading_order"]
    given = builder.collate(task_set)
    content = dx.ChangedBuilder(builder, "content_removed").collate(task_set)
    layout = dx.ChangedBuilder(builder, "layout_removed").collate(task_set)
    assert given["context"].abs().sum() > 0 and content["context"].abs().sum() == 0
    assert torch.equal(content["boxes"], given["boxes"]) and layout["boxes"].abs().sum() == 0
    assert torch.equal(layout["context"], given["context"])
    with pytest.raises(ValueError, match="reading-order condition"):
        dx.ChangedBuilder(builder, "shuffled")


def test_attention_maps_are_the_encoders_own(sets: dict, models: dict) -> None:
    model, builder = models["stage4"]
    task_set = sets["panel_picking"]
    samples = task_set.samples[:3]
    batch = builder.collate(task_set, samples)
    maps, index, valid = model.attention_maps("panel_picking", batch)
    assert maps.shape[:2] == (3, SMALL["num_layers"])
    assert torch.allclose(maps.sum(dim=-1)[valid[:, None].expand(-1, maps.shape[1], -1)], torch.ones(1), atol=1e-5)
    assert (maps * ~valid[:, None, None, :]).abs().max() == 0  # nothing attends to padding
    # The layer-by-layer pass the maps come from ends where the model's own encoder does.
    states, _, own_index = model._candidate_states("panel_picking", batch)
    assert torch.equal(index, own_index)
    rows = dx.query_attention(model, builder, task_set, samples)
    assert [len(r) for r in rows] == [len(dx.token_names(s)) for s in samples]
    assert all(np.isclose(r.sum(), 1.0, atol=1e-5) for r in rows)
    figure = dx.draw_attention(rows, samples, "panel picking")
    assert len(figure.axes) == 3
    assert dx.query_attention(models["no_transformer"][0], builder, task_set, samples) == []
    with pytest.raises(ValueError, match="no attention"):
        models["no_transformer"][0].attention_maps("panel_picking", batch)


def test_modality_reliance_scores_each_model_without_each_modality(view, sets: dict, models: dict) -> None:
    found = dx.modality_reliance(models, sets, view)
    assert set(found.input) == {"everything", "without vision", "without text"}
    assert set(found.method) == set(models) and set(found.task) == {t for t, s in sets.items() if len(s)}
    assert found.accuracy.between(0, 1).all()
    everything = found[found.input == "everything"].set_index(["method", "task"]).accuracy
    expected = {
        (name, r.task): float(r.correct.mean())
        for name, (model, builder) in models.items()
        for r in predict_sets(model, [s for s in sets.values() if len(s)], builder, 64, name)
    }
    assert everything.to_dict() == pytest.approx(expected)  # "everything" is the model as section 1 scores it
    single = {"stage4": (models["stage4"][0], BatchBuilder(view, ("text",)))}
    assert dx.modality_reliance(single, sets, view).empty  # a text-only model has no modality to leave out


def test_reduced_builders_leave_one_modality_out_of_context_and_candidates(view, sets: dict, models: dict) -> None:
    full = models["stage4"][1].collate(sets["panel_picking"])
    for left, builder in reduced_builders(view).items():
        assert left not in builder.modalities and "composition" in builder.modalities
        reduced = builder.collate(sets["panel_picking"])
        assert not torch.allclose(reduced["context"], full["context"])
        assert not torch.allclose(reduced["candidates"], full["candidates"])
        assert torch.equal(reduced["boxes"], full["boxes"])
