"""A real ``python -m comicnb train stage3`` process killed in the middle of an epoch resumes bit-identically.

The run trains several steps per epoch with a checkpoint after every step; the test stops the process (SIGSTOP) as
soon as the last checkpoint on disk lies inside an epoch after the first, makes sure of it, and kills it (SIGKILL).
``--resume`` then finishes the run, and everything it ends with (weights, objective, optimizer, scheduler, the
losses of every step, the validation figures and the best checkpoint) equals an uninterrupted run of the same
settings, bit for bit. The generator state, the scheduler and the offset into the epoch each have to be restored
for that: the random draws (the instance term's augmentation, the reconstruction target) change the weights.
"""

from __future__ import annotations

import math
import shutil
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import torch
import yaml
from resume_checks import ENV, differences, kill_mid_epoch, without_seconds

from comicnb.checkpoint import rng_state
from comicnb.corpus import load_pages
from comicnb.stage3 import checkpoints
from comicnb.stage3.trainer import build_trainer, train_stage3

# Tiny encoders; one page a step, so an epoch of the 4 training pages takes 4 steps; a checkpoint after each step;
# decoding the pages at every step (no feature cache) gives the test time to catch the process mid-epoch.
SETTINGS = dict(
    tiny=True, feature_dim=16, epochs=3, batch_size=1, lr=3e-3, seed=0, checkpoint_every=1, cache_features=False
)


@pytest.fixture(scope="module")
def run_dir(small_run: Path) -> Path:
    """The small run folder of tests/conftest.py."""
    return small_run


@pytest.fixture(scope="module")
def steps_per_epoch(run_dir: Path) -> int:
    """Optimisation steps in one epoch of SETTINGS."""
    train_pages = int((load_pages(run_dir / "pages.jsonl").split == "train").sum())
    return math.ceil(train_pages / SETTINGS["batch_size"])


def copy_run(run_dir: Path, to: Path) -> Path:
    """A fresh run folder with the same pages table (no checkpoints)."""
    shutil.copytree(run_dir, to, ignore=shutil.ignore_patterns("stage3"))
    return to


@pytest.fixture(scope="module")
def uninterrupted(run_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The run folder of an uninterrupted run of SETTINGS (in this process)."""
    run = copy_run(run_dir, tmp_path_factory.mktemp("uninterrupted") / "run")
    train_stage3(run, SETTINGS)
    return run


def train_command(params: Path, run: Path, *extra: str) -> list[str]:
    """``python -m comicnb train stage3`` of a params file into a run folder."""
    return [sys.executable, "-m", "comicnb", "train", "stage3", "--params", str(params), "--run-dir", str(run), *extra]


@pytest.fixture(scope="module")
def killed(
    run_dir: Path, steps_per_epoch: int, tmp_path_factory: pytest.TempPathFactory
) -> tuple[Path, Path, dict[str, Any]]:
    """(params file, run folder, last checkpoint) of a real training process killed mid-epoch."""
    assert steps_per_epoch >= 3, "too few steps per epoch to stop inside one"
    root = tmp_path_factory.mktemp("killed")
    params = root / "stage3.yaml"
    params.write_text(yaml.safe_dump(SETTINGS))
    run = copy_run(run_dir, root / "run")
    with open(root / "train.log", "w") as log:
        process = subprocess.Popen(train_command(params, run), env=ENV, stdout=log, stderr=subprocess.STDOUT)
        checkpoint = kill_mid_epoch(process, checkpoints(run).last, steps_per_epoch)
    assert process.returncode == -signal.SIGKILL
    return params, run, checkpoint


def test_a_killed_process_resumes_to_the_uninterrupted_result(
    killed: tuple[Path, Path, dict[str, Any]], uninterrupted: Path, steps_per_epoch: int
) -> None:
    params, run, at_kill = killed
    stopped_at = at_kill["step"]
    print(f"killed at step {stopped_at} of {SETTINGS['epochs'] * steps_per_epoch}")
    total = SETTINGS["epochs"] * steps_per_epoch
    assert steps_per_epoch < stopped_at < total and stopped_at % steps_per_epoch, stopped_at  # mid-epoch, not epoch 1
    assert checkpoints(run).best.is_file()  # the first epoch's validation already picked a best checkpoint

    done = subprocess.run(train_command(params, run, "--resume"), env=ENV, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]

    expected = torch.load(checkpoints(uninterrupted).last, weights_only=True)
    got = torch.load(checkpoints(run).last, weights_only=True)
    assert got["step"] == expected["step"] == total
    # It resumed: the epochs finished before the kill keep the killed process's own wall-clock times.
    finished = at_kill["history"]["epochs"]
    assert got["history"]["epochs"][: len(finished)] == finished
    # ... and took exactly the uninterrupted run's steps: same losses and learning rate at every step, same figures.
    differ = differences(expected["history"]["steps"], got["history"]["steps"], "history.steps")
    assert not differ, f"steps after the kill at step {stopped_at} differ: {differ[:5]}"
    assert without_seconds(got["history"]["epochs"]) == without_seconds(expected["history"]["epochs"])
    for part in ("model_state_dict", "objective_state_dict", "optimizer_state_dict", "scheduler_state_dict"):
        differ = differences(expected[part], got[part], part)
        assert not differ, f"{part} differs after resuming at step {stopped_at}: {differ[:5]}"
    assert got["best"] == expected["best"] and got["best"]["metric"] == "image_to_text_recall@5"
    best_expected = torch.load(checkpoints(uninterrupted).best, weights_only=True)
    best_got = torch.load(checkpoints(run).best, weights_only=True)
    assert best_got["step"] == best_expected["step"]
    assert not differences(best_expected["model_state_dict"], best_got["model_state_dict"])


def test_the_random_draws_change_the_weights(
    killed: tuple[Path, Path, dict[str, Any]], uninterrupted: Path, run_dir: Path
) -> None:
    """Resuming the same checkpoint with the generator somewhere else ends elsewhere: the draws matter, so a
    resumed run that did not restore them would fail the test above."""
    _, _, at_kill = killed
    torch.manual_seed(12345)
    elsewhere = dict(at_kill, rng=rng_state())
    trainer = build_trainer(run_dir, SETTINGS)
    trainer.resume(elsewhere)
    trainer.train()
    expected = torch.load(checkpoints(uninterrupted).last, weights_only=True)["model_state_dict"]
    assert differences(expected, trainer.model.state_dict())
