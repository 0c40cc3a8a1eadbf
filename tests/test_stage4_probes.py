"""Long-range probes: built beside the task sets from the corpus's cutaways, the deciding panel two or more back, the
cutaway (the nearest panel) no help for any candidate, one reply of each kind in text closure, and the goal's table."""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import replace
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from comicnb.corpus.synth import story
from comicnb.stage4 import diagnostics as dx
from comicnb.stage4 import probes
from comicnb.stage4.batches import BatchBuilder
from comicnb.stage4.drafts import PanelColumns
from comicnb.stage4.model import Stage4SequenceModel
from comicnb.stage4.negatives import SplitIndex
from comicnb.stage4.task_sets import build_task_sets, ensure_task_sets, training_sets
from comicnb.stage4.tasks import check_sample, length_cell, read_manifest, task_dir
from comicnb.stage4.view import RunView, open_run
from tests.test_stage4_tasks import make_run


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """24 books of 8 pages (8 per split) with their task sets and probes."""
    root = make_run(tmp_path_factory.mktemp("probes"), books=24)
    build_task_sets(root, seed=0)
    return root


@pytest.fixture(scope="module")
def view(run: Path) -> RunView:
    return open_run(run)


@pytest.fixture(scope="module")
def probe_sets(run: Path) -> dict[str, list]:
    """Every probe sample of both splits, by task."""
    found: dict[str, list] = {}
    for split in ("val", "test"):
        folder = task_dir(run, split)
        for task, task_set in probes.read_probes(folder, read_manifest(folder)).items():
            found.setdefault(task, []).extend(task_set.samples)
    return found


def test_every_probe_is_built_beside_the_sets_and_keeps_the_rules(run: Path, probe_sets: dict) -> None:
    for split in ("val", "test"):
        entry = read_manifest(task_dir(run, split))["probes"]
        assert entry["built"] and set(entry["tasks"]) == set(probes.PROBE_TASKS)
        for task, counts in entry["tasks"].items():
            assert counts["samples"] == sum(s.split == split for s in probe_sets.get(task, []))
    assert set(probe_sets) == set(probes.PROBE_TASKS) and all(len(v) >= 3 for v in probe_sets.values())
    for task, samples in probe_sets.items():
        assert all(not check_sample(s) for s in samples), task
        assert np.ptp(np.bincount([s.answer for s in samples])) <= 2  # answer slots dealt evenly per split


def test_the_deciding_panel_is_two_or_more_back_and_the_nearest_is_the_cutaway(probe_sets: dict, view: RunView) -> None:
    panels = view.panels.set_index("panel_id")
    for task, samples in probe_sets.items():
        for s in samples:
            answer = s.built_from["answer_panel"]
            nearest = s.context[s.slot - 1] if s.slot is not None else s.context[-1]
            assert s.built_from["distance"] >= 2 and nearest in s.built_from["cutaway"], task
            assert panels.cutaway[nearest] and isinstance(panels.resumes[answer], dict)
            # the action before the cutaway, played by the answer's cast in its scene, is in the context
            far = [p for p in s.context if not panels.cutaway[p]]
            assert any(
                panels.action[p] == panels.action[answer]
                and panels.scene[p] == panels.scene[answer]
                and panels.characters[p] == panels.characters[answer]
                for p in far
            ), task
            if task == "panel_picking":
                assert s.slot == len(s.context)  # nothing after the masked panel: its page's later panels would tell


def test_image_negatives_match_the_cutaway_no_better_than_the_answer(probe_sets: dict, view: RunView) -> None:
    panels = view.panels.set_index("panel_id")
    rules = Counter()
    for task in ("panel_picking", "visual_closure"):
        for s in probe_sets[task]:
            answer = s.built_from["answer_panel"]
            cut = s.built_from["cutaway"]
            cut_scenes = {panels.scene[p] for p in cut}
            cut_cast = {c for p in cut for c in panels.characters[p]}
            assert panels.scene[answer] not in cut_scenes and not cut_cast & set(panels.characters[answer])
            for c in s.candidates:
                if c.panel_id == answer:
                    continue
                assert panels.scene[c.panel_id] not in cut_scenes and not cut_cast & set(panels.characters[c.panel_id])
                assert (panels.scene[c.panel_id], sorted(panels.characters[c.panel_id])) != (
                    panels.scene[answer],
                    sorted(panels.characters[answer]),
                )
                assert panels.n_boxes[c.panel_id] == panels.n_boxes[answer]
            rules.update(s.built_from["negatives"])
    assert set(rules) <= set(probes.IMAGE_RULES) and rules["same_action_and_step"] > 0


def test_text_probe_offers_one_reply_of_each_kind_in_the_answers_length(probe_sets: dict, view: RunView) -> None:
    panels = view.panels.set_index("panel_id")
    for s in probe_sets["text_closure"]:
        resumes = panels.resumes[s.built_from["answer_panel"]]
        kinds = []
        for i, c in enumerate(s.candidates):
            assert c.vision == "text_free" and c.text_row is not None and c.text_from is None
            if i == s.answer:
                assert c.text == resumes["reply"]
                kinds.append(resumes["asked"])
            else:
                kinds += [k for k, replies in resumes["replies"].items() if c.text in replies]
        assert sorted(kinds) == sorted(story.EXCHANGES)  # every kind once: the kind alone picks nothing
        assert len({length_cell(c.text) for c in s.candidates}) == 1
        assert s.built_from["asked"] == resumes["asked"]


def test_without_truth_no_probe_is_built_and_the_manifest_says_why(view: RunView, tmp_path: Path) -> None:
    entry = probes.write_probes(replace(view, truth=None), tmp_path, "test")
    assert not entry["built"] and "ground truth" in entry["reason"] and not list(tmp_path.iterdir())


def test_probe_table_meets_the_goal_only_when_both_gains_clear_zero() -> None:
    rng = np.random.default_rng(0)
    n, books = 200, [f"b{i % 20}" for i in range(200)]

    def frame(method: str, condition: str, accuracy: float) -> pd.DataFrame:
        correct = (rng.random(n) < accuracy).astype(float)
        return pd.DataFrame(
            dict(
                method=method,
                task="visual_closure",
                sample_id=[f"s{i}" for i in range(n)],
                book_id=books,
                correct=correct,
                chance=0.2,
                condition=condition,
            )
        )

    reads = pd.concat(
        [
            frame("stage4", "given", 0.9),
            frame("no_transformer", "given", 0.3),
            frame("stage4", "nearest", 0.2),
            frame("stage4", "removed", 0.2),
        ]
    )
    baselines = pd.concat([frame("chance", "given", 0.2), frame("stage3_cosine", "given", 0.4)])
    row = probes.probe_table(baselines, reads, n_resamples=200).iloc[0]
    assert row.goal and row.over_ablation_low > 0 and row.over_nearest_low > 0 and row.best_baseline == "stage3_cosine"
    assert row.n == n and row.books == 20 and row.chance == pytest.approx(0.2)
    same = pd.concat(
        [
            frame("stage4", "given", 0.5),
            frame("no_transformer", "given", 0.5),
            frame("stage4", "nearest", 0.2),
            frame("stage4", "removed", 0.2),
        ]
    )
    row = probes.probe_table(baselines, same, n_resamples=200).iloc[0]
    assert not row.goal and row.over_ablation_low < 0 < row.over_ablation_high
    assert "goal not met" in probes.probe_verdicts(probes.probe_table(baselines, same, n_resamples=200))[0]


def test_resumed_panels_are_found_on_the_stream(view: RunView) -> None:
    index, col = SplitIndex(view, "test"), PanelColumns(view)
    skips: Counter = Counter()
    found = probes.resumed_panels(index, col, skips)
    resumed = int(sum(isinstance(r, dict) for r in view.panels[view.panels.split == "test"].resumes))
    assert found and len(found) + sum(skips.values()) == resumed  # every resumed panel is a probe or a counted skip


def test_score_probes_gives_the_table_the_verdicts_and_the_audit(run: Path, view: RunView, tmp_path: Path) -> None:
    torch.manual_seed(0)
    small = dict(input_dim=view.feature_dim, d_model=16, nhead=2, num_layers=1, dim_feedforward=32)
    builder = BatchBuilder(view)
    models = {
        "stage4": (Stage4SequenceModel(**small).eval(), builder),
        "no_transformer": (Stage4SequenceModel(use_transformer=False, **small).eval(), builder),
    }
    train, _ = training_sets(view, seed=0, limit=60)
    table, lines, audited = dx.score_probes(run, "test", view, models, train, n_resamples=50)
    built = read_manifest(task_dir(run, "test"))["probes"]["tasks"]
    assert set(table.task) == {t for t in probes.PROBE_TASKS if built[t]["samples"]}
    assert all(row.n == built[row.task]["samples"] for row in table.itertuples())
    for column in ("stage4", "no_transformer", "nearest_only", "no_context", "over_ablation", "over_nearest"):
        assert table[column].notna().all(), column
    assert len(lines) == len(table) + 1 and all(" probe (" in line for line in lines[:-1])
    assert set(audited.task) == set(table.task) and {"shape", "answer_slot"} <= set(audited.method)
    folder = task_dir(tmp_path, "test")
    folder.mkdir(parents=True)
    (folder / "manifest.json").write_text(json.dumps({"probes": {"built": False, "reason": "no truth here"}}))
    empty, why, _ = dx.score_probes(tmp_path, "test", view, models, train)
    assert empty.empty and why == ["no long-range probes for test: no truth here"]


def test_notebook_04_counts_the_probes_per_split(run: Path, view: RunView) -> None:
    built = ensure_task_sets(view, run, seed=0)
    counts = built.probe_counts()
    for split in ("val", "test"):
        entry = read_manifest(task_dir(run, split))["probes"]["tasks"]
        for task in probes.PROBE_TASKS:
            assert counts.loc[task, ("samples", split)] == entry[task]["samples"]
            assert counts.loc[task, ("skipped", split)] == entry[task]["skipped"]
