"""The task sets leave only the story to tell the answer apart: every property a model can read off a candidate (its
shape and size as its image shows them, the answer's empty balloons against the texts' lengths and counts, the answer
slot) stays at chance on the sets the samplers write, on the demo profile's corpus and on a larger one, with the
packaged pretrained image backbone (the shape survives its squash to a square). The checks can fail: with the shape
rule turned off, the shape baseline finds the answer."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from comicnb import checkpoint
from comicnb.corpus import load_corpus, save_corpus, synth
from comicnb.stage3 import checkpoints
from comicnb.stage3.model import PanelFeatureExtractor
from comicnb.stage4 import negatives
from comicnb.stage4.audit import READABLE, STORY, audit, leaks, pickers
from comicnb.stage4.task_sets import training_sets, write_split
from comicnb.stage4.tasks import SHAPE_MATCHED, SHAPE_TOLERANCES, TASKS, Candidate, TaskSample, TaskSet, read_task_set
from comicnb.stage4.view import RunView, open_run
from comicnb.store import EmbedConfig, generate


def pretrained_run(root: Path, books: int, pages: int, seed: int, split: tuple, twins: bool) -> RunView:
    """A generated corpus embedded by an untrained Stage 3 model over the packaged pretrained encoders (its random
    adapters keep what the backbone's features hold, the shape included); without ``twins``, no text-free pages."""
    synth.generate(root / "data", books=books, pages=pages, seed=seed)
    if not twins:
        for twin in (root / "data").glob("*/*.textfree.*"):
            twin.unlink()
    save_corpus(load_corpus(root / "data", split=split, seed=0), root / "run")
    torch.manual_seed(0)
    model = PanelFeatureExtractor(feature_dim=64)
    state = {"model_state_dict": model.state_dict(), "config": {"model": model.config, "train": {"seed": 0}}}
    checkpoint.save_checkpoint(state, checkpoints(root / "run").last)
    assert generate(root / "run", cfg=EmbedConfig(pages_per_chunk=16))["complete"]
    return open_run(root / "run")


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory) -> RunView:
    """The demo profile's corpus (12 books of 10 pages, seed 0, 70/15/15 by book), with text-free twins."""
    return pretrained_run(tmp_path_factory.mktemp("audit-demo"), 12, 10, 0, (0.7, 0.15, 0.15), twins=True)


@pytest.fixture(scope="module")
def larger(tmp_path_factory: pytest.TempPathFactory) -> RunView:
    """A larger corpus of another seed (40 books of 8 pages, 50/25/25), without twins to keep the test short."""
    return pretrained_run(tmp_path_factory.mktemp("audit-larger"), 40, 8, 11, (0.5, 0.25, 0.25), twins=False)


def audited(view: RunView, folder: Path, tasks_: tuple[str, ...] = TASKS) -> pd.DataFrame:
    """The audit of the val and test sets the samplers write for ``view``, learned checks fitted on training books."""
    sets = []
    for split in ("val", "test"):
        manifest = write_split(view, folder / split, split, seed=0, tasks=tasks_)
        sets += [read_task_set(folder / split, t) for t in tasks_ if manifest["tasks"][t].get("built")]
    train, _ = training_sets(view, seed=0, limit=300, tasks=tasks_)
    return audit(sets, view, train)


@pytest.mark.parametrize("corpus", ["demo", "larger"])
def test_no_readable_property_picks_the_answer(corpus: str, request: pytest.FixtureRequest, tmp_path: Path) -> None:
    view = request.getfixturevalue(corpus)
    table = audited(view, tmp_path)
    assert leaks(table).empty, leaks(table)[["task", "split", "method", "accuracy", "low", "chance", "n"]]
    shape = table[table.method == "shape"]
    assert set(shape.task) == {t for t in TASKS if t != "reading_order"}, "the shape baseline scores every task"
    # Near chance both ways where a set is large enough to say (a shape far below chance is a signal too, reversed);
    # on the demo's sets of some twenty samples one hit is 0.04, so there only ``leaks``' one-sided interval applies.
    sized = shape[shape.n >= 100]
    assert len(sized) > 0 or corpus == "demo", "the larger corpus has sets large enough to say"
    assert ((sized.accuracy - sized.chance).abs() < 0.1).all(), sized
    if corpus == "demo":  # the text tasks' checks need the text-free twins
        assert {"text_length", "balloons", "length_median"} <= set(table.method)
    assert {"shape_median", "answer_slot", "vision_kind"} <= set(table.method)
    assert set(table[table.kind == "readable"].method) <= set(READABLE)
    story = table[table.kind == "story"]  # the caption's words against the candidates' texts: recorded, not required
    assert set(story.method) == set(STORY) and "caption_relevance" in set(story.task)


def test_shape_matched_negatives_have_the_answers_box(demo: RunView, tmp_path: Path) -> None:
    write_split(demo, tmp_path, "val", tasks=SHAPE_MATCHED)
    boxes = demo.panels.set_index("panel_id")
    for task in SHAPE_MATCHED:
        samples = read_task_set(tmp_path, task).samples
        assert len(samples) > 20, task
        for s in samples:
            shown = boxes.loc[[c.panel_id for c in s.candidates]]
            aspect, area = np.log(shown.width / shown.height), np.log(shown.width * shown.height)
            answer = s.candidates[s.answer].panel_id
            tolerance = SHAPE_TOLERANCES[s.built_from["shape_tolerance"]]  # the tightest that found negatives
            assert (aspect - aspect[answer]).abs().max() <= tolerance["log_aspect"] + 1e-9
            assert (area - area[answer]).abs().max() <= tolerance["log_area"] + 1e-9


def test_without_the_shape_rule_the_shape_baseline_finds_the_answer(
    demo: RunView, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setattr(negatives, "SHAPE_TOLERANCES", ({"log_aspect": np.inf, "log_area": np.inf},))
    table = audited(demo, tmp_path, ("panel_picking",))
    found = leaks(table)
    assert set(found.method) == {"shape"} and set(found.split) == {"val", "test"}, table


def test_the_text_checks_find_an_answer_that_stands_out(demo: RunView) -> None:
    """Hand-built text-cloze samples whose answer alone has the box count the empty balloons show, and whose answer
    is the median length (what a window centred on it gives): balloons and length_median pick it every time."""
    panels = demo.panels[(demo.panels.split == "val") & demo.panels.has_text].copy()
    panels["length"] = [len(" ".join(str(t).split())) for t in panels.text]
    samples = []
    for i, answer in enumerate(panels[panels.n_boxes == 1].itertuples()):
        others = panels[(panels.n_boxes != 1) & (panels.book_id == answer.book_id)].sort_values("length")
        shorter, longer = others[others.length < answer.length], others[others.length > answer.length]
        if shorter.empty or longer.empty:
            continue
        texts = [answer.panel_id, int(shorter.panel_id.iloc[-1]), int(longer.panel_id.iloc[0])]
        order = np.roll(np.arange(3), len(samples) % 3)  # answer slots dealt evenly over the kept samples
        candidates = [Candidate(answer.panel_id, vision="text_free", text_from=texts[k]) for k in order]
        context = [int(p) for p in panels.panel_id if p not in texts][:3]
        samples.append(
            TaskSample("text_cloze", f"text_cloze/{i}", "val", answer.book_id, context, candidates, int(order.argmin()))
        )
    assert len(samples) >= 10
    results = {r.method: r.correct.mean() for r in pickers(TaskSet("text_cloze", "val", samples), demo)}
    assert results["balloons"] == results["length_median"] == 1.0
    assert results["answer_slot"] == pytest.approx(1 / 3, abs=0.1)
