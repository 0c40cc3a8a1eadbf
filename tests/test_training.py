"""Stage 3 training end to end on a synthetic corpus: losses fall, resume equals uninterrupted, checkpoints load."""

from __future__ import annotations

import math
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

from comicnb import cli
from comicnb.checkpoint import CheckpointExistsError
from comicnb.corpus import load_pages
from comicnb.schedule import epoch_batches, shard_batches
from comicnb.seed import isolated_rng
from comicnb.stage3 import checkpoints
from comicnb.stage3.batches import page_chunks
from comicnb.stage3.fusion import MODALITIES
from comicnb.stage3.model import model_from_checkpoint
from comicnb.stage3.objectives import TERMS
from comicnb.stage3.trainer import GATE_PRIOR_FLOOR, Stage3Trainer, build_trainer, train_stage3

# A tiny model keeps the test in seconds; the pretrained default runs in notebook 02 under nbval.
SETTINGS = dict(tiny=True, feature_dim=32, epochs=4, batch_size=2, lr=3e-3, seed=0)  # 2 steps an epoch
SETTINGS_BEST_METRIC = "image_to_text_recall@5"  # TrainConfig's default best_metric


@pytest.fixture(scope="module")
def run_dir(small_run: Path) -> Path:
    """The small run folder of tests/conftest.py."""
    return small_run


@pytest.fixture(scope="module")
def trained(run_dir: Path) -> Stage3Trainer:
    """An uninterrupted run of SETTINGS."""
    trainer = build_trainer(run_dir, SETTINGS)
    trainer.train()
    return trainer


def training_page_terms(trainer: Stage3Trainer) -> dict[str, float]:
    """Mean loss terms over the training pages in eval mode with fixed draws: comparable before and after."""
    with isolated_rng(), torch.no_grad():
        torch.manual_seed(0)
        trainer.trainable.eval()
        batches = page_chunks(len(trainer.train_source), 2)
        outputs = [trainer.trainable(batch) for batch in trainer.train_source.iterate(batches)]
    return {name: sum(float(o[name]) for o in outputs) / len(outputs) for name in (*TERMS, "total")}


def test_a_short_run_lowers_the_objective_on_its_training_pages(run_dir: Path, trained: Stage3Trainer) -> None:
    untrained = build_trainer(run_dir, SETTINGS)
    untrained.model.visual.set_feature_mean(untrained.train_source.vision_feature_mean())  # as train() starts
    before, after = training_page_terms(untrained), training_page_terms(trained)
    # The terms pull against each other (page-contrastive gathers a page's panels, instance tells them apart), so
    # eight steps need not lower each one; the weighted total and the seed's page terms must fall.
    for name in ("total", "contrastive", "reconstruction"):
        assert after[name] < before[name], (name, before, after)
    epochs = trained.history.frames()[1]
    assert list(epochs.epoch) == [0, 1, 2, 3, 4]  # epoch 0 is the untrained baseline


def test_validation_is_deterministic_and_on_other_books(trained: Stage3Trainer) -> None:
    first, _ = trained.validate()
    second, _ = trained.validate()
    assert first == second
    train_books = set(trained.train_source.pages.book_id)
    assert train_books and not train_books & set(trained.val_source.pages.book_id)


def test_validation_reports_collapse_and_retrieval_with_chance(trained: Stage3Trainer) -> None:
    report = trained.history.epochs[-1]
    # The collapse monitor: a page's panels sit closer to each other than to other pages' (the page term's pull),
    # and the panels are not one point (a collapsed space has every cosine near 1 and no gap).
    assert report["within_page_cosine"] > report["between_page_cosine"] + 0.02, report
    assert report["between_page_cosine"] < 0.95 and report["gap"] > 0.02
    # A panel's second (augmented) view finds it far above chance among the validation panels (one in ~30).
    panels = sum(len(texts) for texts in trained.val_source.pages.texts)
    assert report["same_panel_recall@1"] > 5 / panels, (report["same_panel_recall@1"], panels)
    recalls = [report[f"image_to_text_recall@{k}"] for k in (1, 5, 10)]
    assert recalls == sorted(recalls) and recalls[-1] > 10 / report["image_to_text_panels"] * 0.5
    # image -> text retrieval runs over the validation panels that have text, counted here from the pages table.
    with_text = sum(bool(text.strip()) for texts in trained.val_source.pages.texts for text in texts)
    assert with_text > 1 and report["image_to_text_panels"] == with_text
    assert report["image_to_text_recall@1"] <= report["image_to_text_recall@5"] <= report["image_to_text_recall@10"]


def test_resume_reproduces_the_uninterrupted_run(trained: Stage3Trainer, run_dir: Path, tmp_path: Path) -> None:
    assert trained.steps_per_epoch > 1, "an epoch of one step has no middle to resume from"
    first = build_trainer(run_dir, SETTINGS)
    files = checkpoints(tmp_path / "half")
    first.train(until_step=trained.steps_per_epoch + 1, files=files)  # mid-epoch
    resumed = build_trainer(run_dir, SETTINGS)
    resumed.resume(files.last)
    assert resumed.step == trained.steps_per_epoch + 1
    resumed.train()
    expected, got = trained.model.state_dict(), resumed.model.state_dict()
    assert all(torch.equal(expected[key], got[key]) for key in expected)
    assert resumed.history.steps == trained.history.steps


def test_checkpoint_loads_weights_only_and_rebuilds_the_model(
    trained: Stage3Trainer, run_dir: Path, tmp_path: Path
) -> None:
    path = trained.save(tmp_path / "stage3.pt")
    checkpoint = torch.load(path, weights_only=True)
    assert {
        "model_state_dict",
        "objective_state_dict",
        "optimizer_state_dict",
        "scheduler_state_dict",
        "config",
        "step",
        "rng",
    } <= set(checkpoint)
    model = model_from_checkpoint(path)
    batch = next(trained.val_source.iterate([[0, 1]]))
    trained.model.eval()
    assert torch.equal(model(batch), trained.model(batch))


def test_feature_cache_trains_like_the_image_pipeline(run_dir: Path) -> None:
    settings = {**SETTINGS, "epochs": 1}
    runs = []
    for flag in (True, False):  # built and trained in turn: a trainer seeds the global generator when it is built
        trainer = build_trainer(run_dir, {**settings, "cache_features": flag})
        assert trainer.train_source.cached == flag
        trainer.train()
        runs.append(trainer)
    cached, decoded = runs
    assert cached.step == decoded.step == cached.steps_per_epoch > 1
    for ours, theirs in zip(cached.history.steps, decoded.history.steps):
        assert all(math.isclose(ours[key], theirs[key], rel_tol=1e-5) for key in ours), (ours, theirs)
    # Two Adam steps of float noise: Adam moves a weight by about lr whatever the size of its gradient, so an element
    # whose gradient is ~0 in both pipelines can move apart by up to 2 x lr x steps; every other element stays within
    # 1e-4 (on the version 4 corpus one element of 1.1 million differs by 5e-4).
    bound = 2 * settings["lr"] * cached.step
    apart = total = 0
    for key, value in cached.model.state_dict().items():
        if value.is_floating_point():
            gap = (value - decoded.model.state_dict()[key]).abs()
            assert float(gap.max()) <= bound, key
            apart, total = apart + int((gap > 1e-4).sum()), total + gap.numel()
        else:
            assert torch.equal(value, decoded.model.state_dict()[key]), key
    assert apart <= max(1, total // 100_000), (apart, total)


def test_unknown_setting_is_refused(run_dir: Path) -> None:
    with pytest.raises(ValueError, match="epochz"):
        build_trainer(run_dir, {**SETTINGS, "epochz": 3})


def test_cli_trains_from_a_params_file(
    trained: Stage3Trainer, run_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    run = tmp_path / "run"
    shutil.copytree(run_dir, run, ignore=shutil.ignore_patterns("stage3"))
    params = tmp_path / "stage3.yaml"
    params.write_text(yaml.safe_dump({**SETTINGS, "epochs": 1, "run_dir": str(run)}))
    assert cli.main(["train", "stage3", "--params", str(params)]) == 0
    assert torch.load(checkpoints(run).last, weights_only=True)["step"] == trained.steps_per_epoch
    assert "steps ->" in capsys.readouterr().out


def test_each_process_gets_its_own_batches_and_the_same_number_of_steps() -> None:
    batches = epoch_batches(num_pages=10, batch_size=2, seed=0, epoch=0)  # 5 batches
    assert shard_batches(batches, 0, 1) == batches
    shards = [shard_batches(batches, rank, 2) for rank in (0, 1)]
    assert [len(s) for s in shards] == [3, 3]
    seen = [page for shard in shards for batch in shard for page in batch]
    assert sorted(set(seen)) == list(range(10)) and len(seen) == 12  # the last round pads by wrap-around


def test_accelerate_launch_spreads_training_over_two_processes(run_dir: Path, tmp_path: Path) -> None:
    params = tmp_path / "stage3.yaml"
    params.write_text(yaml.safe_dump({**SETTINGS, "epochs": 2, "batch_size": 2}))
    out = tmp_path / "run"
    shutil.copytree(run_dir, out, ignore=shutil.ignore_patterns("stage3"))
    # --multi_gpu starts one process each through torchrun; ACCELERATE_USE_CPU makes them a gloo group on the CPU.
    launch = [
        sys.executable,
        "-m",
        "accelerate.commands.launch",
        "--multi_gpu",
        "--num_processes",
        "2",
        "--num_machines",
        "1",
        "--mixed_precision",
        "no",
        "--dynamo_backend",
        "no",
        "-m",
        "comicnb",
        "train",
        "stage3",
        "--params",
        str(params),
        "--run-dir",
        str(out),
    ]
    env = {**os.environ, "ACCELERATE_USE_CPU": "1", "OMP_NUM_THREADS": "1"}
    done = subprocess.run(launch, capture_output=True, text=True, timeout=300, env=env)
    assert done.returncode == 0, done.stderr[-3000:]
    train_pages = len(load_pages(out / "pages.jsonl").query("split == 'train'"))
    batches_per_epoch = math.ceil(train_pages / 2)
    checkpoint = torch.load(checkpoints(out).last, weights_only=True)
    assert batches_per_epoch > 1
    assert checkpoint["step"] == 2 * math.ceil(batches_per_epoch / 2)  # each step takes a batch on both processes
    assert model_from_checkpoint(checkpoint).feature_dim == SETTINGS["feature_dim"]


def test_checkpoints_every_epoch_and_resumes_a_killed_run_from_the_last(
    trained: Stage3Trainer, run_dir: Path, tmp_path: Path
) -> None:
    run = tmp_path / "run"
    shutil.copytree(run_dir, run, ignore=shutil.ignore_patterns("stage3"))
    files = checkpoints(run)
    interrupted = build_trainer(run, SETTINGS)
    saved = []
    original_save = interrupted.save
    interrupted.save = lambda path: saved.append((Path(path).name, interrupted.step)) or original_save(path)
    epoch = trained.steps_per_epoch
    interrupted.train(until_step=2 * epoch + 1, files=files)  # checkpoint_every=0: epoch ends, and where it stops
    assert [step for name, step in saved if name == files.last.name] == [epoch, 2 * epoch, 2 * epoch + 1]
    best_saves = [step for name, step in saved if name == files.best.name]
    assert best_saves and set(best_saves) <= {epoch, 2 * epoch} and len(saved) == 3 + len(best_saves)
    best = torch.load(files.best, weights_only=True)
    assert best["step"] == best_saves[-1] == interrupted.best["step"]
    assert best["best"]["metric"] == SETTINGS_BEST_METRIC
    resumed = train_stage3(run, SETTINGS, resume=True)
    assert resumed.step == trained.step
    expected = trained.model.state_dict()
    assert all(torch.equal(expected[key], value) for key, value in resumed.model.state_dict().items())
    assert not list(run.rglob("*.partial"))


def test_resuming_with_other_settings_is_refused(trained: Stage3Trainer, run_dir: Path, tmp_path: Path) -> None:
    path = trained.save(tmp_path / "stage3.pt")
    other = build_trainer(run_dir, {**SETTINGS, "lr": 1e-2, "num_workers": 1})
    with pytest.raises(ValueError, match=r"train\.lr") as refused:
        other.resume(path)
    assert "num_workers" not in str(refused.value)  # loader workers cannot change the result


def test_training_over_a_finished_run_needs_resume_or_overwrite(
    trained: Stage3Trainer,
    run_dir: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    run = tmp_path / "run"
    shutil.copytree(run_dir, run, ignore=shutil.ignore_patterns("stage3"))
    files = checkpoints(run)
    settings = {**SETTINGS, "epochs": 1}
    train_stage3(run, settings)
    finished = files.last.read_bytes()
    with pytest.raises(CheckpointExistsError, match="--resume") as refused:
        train_stage3(run, settings)  # the checkpoint notebook 02's report describes stays
    assert "--overwrite" in str(refused.value) and "overwrite=True" in str(refused.value)
    assert files.last.read_bytes() == finished

    params = tmp_path / "stage3.yaml"
    params.write_text(yaml.safe_dump({**settings, "run_dir": str(run)}))
    capsys.readouterr()
    assert cli.main(["train", "stage3", "--params", str(params)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("comicnb train: ") and "--resume" in err and "--overwrite" in err
    assert files.last.read_bytes() == finished

    # --overwrite: a stale best_model.pt of an earlier run never survives into the new one.
    files.best.write_bytes(b"stale best of an earlier run")
    removed = []
    original = Stage3Trainer.train

    def spy(self: Stage3Trainer, *args: object, **kwargs: object) -> object:
        removed.append(not files.last.exists() and not files.best.exists())  # checked as training starts
        return original(self, *args, **kwargs)

    monkeypatch.setattr(Stage3Trainer, "train", spy)
    assert cli.main(["train", "stage3", "--params", str(params), "--overwrite"]) == 0
    assert removed == [True]
    assert torch.load(files.last, weights_only=True)["step"] == trained.steps_per_epoch
    assert not files.best.is_file() or torch.load(files.best, weights_only=True)["step"] == trained.steps_per_epoch


def test_the_gate_starts_from_each_modality_page_score_and_holds_it(trained: Stage3Trainer) -> None:
    start = trained.history.epochs[0]
    scores = torch.tensor([start[f"page_score_{name}"] for name in MODALITIES])
    assert ((scores >= 0) & (scores <= 1)).all(), start
    assert torch.allclose(trained.model.fusion.prior, (scores + GATE_PRIOR_FLOOR).log())
    # gate_terms is empty by default: no loss moved the gate, so every panel with all three modalities is weighted
    # exactly as the prior says, mixed with the residual share.
    assert not trained.model.fusion.gate[-1].weight.any() and not trained.model.fusion.gate[-1].bias.any()
    expected = (1 - 0.2) * (scores + GATE_PRIOR_FLOOR) / (scores + GATE_PRIOR_FLOOR).sum() + 0.2 / 3
    _, weights = trained.model.fusion.eval()(torch.randn(4, 3, 32), torch.ones(4, 3))
    assert torch.allclose(weights, expected.expand(4, -1), atol=1e-6)


def test_a_modality_that_names_the_page_scores_one_and_noise_scores_near_zero(run_dir: Path) -> None:
    trainer = build_trainer(run_dir, SETTINGS)
    source = trainer.train_source
    list(source.iterate([[0]]))  # fills the feature cache
    tensors = source.cache.tensors
    pages, slots = tensors["panel_mask"].shape
    page_code = torch.eye(pages).repeat_interleave(slots, dim=0).view(pages, slots, pages)  # the page, one-hot
    width = tensors["vision_features"].shape[-1]  # the tiny backbone's feature width
    tensors["vision_features"] = torch.cat([page_code, torch.zeros(pages, slots, width - pages)], dim=-1)
    tensors["text_features"] = torch.randn_like(tensors["text_features"])
    scores = source.modality_page_scores(k=5)
    # Every hit a page-mate, as far as a page's size allows: pages of five panels or fewer cannot fill five hits.
    mates = tensors["panel_mask"].sum(dim=1).repeat_interleave(tensors["panel_mask"].sum(dim=1).long()) - 1
    panels = len(mates)
    chance = mates.sum() / (panels * (panels - 1))
    best = (mates.clamp(max=5) / 5).mean()
    assert torch.isclose(scores[0], (best - chance) / (1 - chance), atol=1e-5), (scores, best, chance)
    assert scores[1] < 0.3, scores
