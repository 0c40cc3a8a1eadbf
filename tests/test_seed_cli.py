"""The seed's Stage 3 command line: ``python -m comicnb train stage3 --data_root D --train_pss_labels T ...``.

A real process reads a small synthetic corpus with the split the two label files give, trains, and leaves the run
folder with the pages table, the last and the best checkpoint; a params file and the seed's flags combine, the
flags winning; ``--use_wandb`` says wandb is not installed; an unknown setting is a one-line error, exit code 2.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

from comicnb.corpus import load_corpus, load_pages, save_corpus, synth
from comicnb.stage3 import checkpoints
from comicnb.stage3.model import model_from_checkpoint

ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
FLAGS = dict(visual_backbone="efficientnet_lite0", feature_dim=16, batch_size=2, epochs=2, lr=1e-3)
NARRATIVE = ("narrative", "story")


def comicnb(*args: str) -> subprocess.CompletedProcess:
    """Run ``python -m comicnb ARGS`` to the end."""
    return subprocess.run(
        [sys.executable, "-m", "comicnb", *args], env=ENV, capture_output=True, text=True, timeout=300
    )


def seed_command(corpus: tuple[Path, Path, Path], run: Path) -> list[str]:
    """The seed's train_stage3.py arguments for ``corpus`` (data root, train and val labels) into run folder ``run``."""
    data_root, train, val = corpus
    return [
        "train",
        "stage3",
        "--data_root",
        str(data_root),
        "--train_pss_labels",
        str(train),
        "--val_pss_labels",
        str(val),
        "--run_name",
        run.name,
        "--output_dir",
        str(run.parent),
    ]


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, Path]:
    """(data root, training labels, validation labels): a synthetic corpus whose labels split by book, 2 to 1."""
    root = tmp_path_factory.mktemp("seed")
    synth.generate(root / "data", books=3, pages=6, seed=3, page_size=(320, 480))
    labels = json.loads((root / "data" / "pss_labels.json").read_text())
    books = sorted(labels)
    train, val = root / "train_pss_labels.json", root / "val_pss_labels.json"
    train.write_text(json.dumps({book: labels[book] for book in books[:2]}))
    val.write_text(json.dumps({book: labels[book] for book in books[2:]}))
    return root / "data", train, val


@pytest.fixture(scope="module")
def seed_run(
    corpus: tuple[Path, Path, Path], tmp_path_factory: pytest.TempPathFactory
) -> tuple[subprocess.CompletedProcess, Path]:
    """The seed's command line with its flags, and a params file that makes the model tiny; (process, run folder)."""
    root = tmp_path_factory.mktemp("out")
    params = root / "tiny.yaml"
    params.write_text(yaml.safe_dump(dict(tiny=True, feature_dim=32, epochs=5)))  # the flags below win
    flags = [f"--{name}={value}" for name, value in FLAGS.items()]
    done = comicnb(*seed_command(corpus, root / "O" / "r"), "--params", str(params), *flags, "--use_wandb")
    return done, root / "O" / "r"


def test_the_seed_command_line_trains_into_its_run_folder(
    seed_run: tuple[subprocess.CompletedProcess, Path], corpus: tuple[Path, Path, Path]
) -> None:
    done, run = seed_run
    assert done.returncode == 0, done.stderr[-3000:]
    _, train, val = corpus

    # The pages table holds the narrative pages of both label files, each in the split of the file that labels it.
    pages = load_pages(run / "pages.jsonl")
    splits = {}
    for path, split in ((train, "train"), (val, "val")):
        for book, book_pages in json.loads(path.read_text()).items():
            splits.update({(book, page): split for page, label in book_pages.items() if label in NARRATIVE})
    assert splits and set(splits.values()) == {"train", "val"}
    assert set(zip(pages.book_id, pages.page_name)) == set(splits)
    assert [splits[key] for key in zip(pages.book_id, pages.page_name)] == pages.split.tolist()

    files = checkpoints(run)
    last, best = (torch.load(path, weights_only=True) for path in (files.last, files.best))
    model, train_cfg = last["config"]["model"], last["config"]["train"]
    assert model["tiny"] is True  # from the params file
    assert model["feature_dim"] == 16 and model["visual_backbone"] == "efficientnet_lite0"  # the flags win
    assert (train_cfg["batch_size"], train_cfg["epochs"], train_cfg["lr"]) == (2, 2, 1e-3)
    steps_per_epoch = math.ceil(int((pages.split == "train").sum()) / 2)
    assert last["step"] == 2 * steps_per_epoch
    assert model_from_checkpoint(files.best).feature_dim == 16
    assert best["best"]["metric"] == "image_to_text_recall@5" == train_cfg["best_metric"]
    assert best["best"]["step"] == best["step"] and best["best"]["epoch"] in (1, 2)
    assert best["best"]["value"] == max(e["image_to_text_recall@5"] for e in last["history"]["epochs"][1:])
    assert "wandb is not installed" in done.stderr
    assert "Traceback" not in done.stderr


def test_the_seed_command_line_refuses_to_train_over_a_finished_run(
    seed_run: tuple[subprocess.CompletedProcess, Path], corpus: tuple[Path, Path, Path]
) -> None:
    done, run = seed_run
    assert done.returncode == 0, done.stderr[-3000:]
    files = checkpoints(run)
    before = {path: path.read_bytes() for path in (files.last, files.best, run / "pages.jsonl")}
    again = comicnb(*seed_command(corpus, run), "--epochs=1")
    assert again.returncode == 2, again.stderr[-3000:]
    lines = again.stderr.strip().splitlines()
    assert len(lines) == 1 and "--resume" in lines[0] and "--overwrite" in lines[0], again.stderr[-3000:]
    assert {path: path.read_bytes() for path in before} == before  # neither the checkpoints nor the pages re-read


def test_an_unknown_setting_in_the_params_file_is_a_one_line_error(
    corpus: tuple[Path, Path, Path], tmp_path: Path
) -> None:
    data_root, _, _ = corpus
    run = tmp_path / "run"
    save_corpus(load_corpus(data_root), run)
    params = tmp_path / "typo.yaml"
    params.write_text(yaml.safe_dump(dict(tiny=True, epochz=3)))
    done = comicnb("train", "stage3", "--params", str(params), "--run-dir", str(run))
    assert done.returncode == 2, done.stderr[-3000:]
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("comicnb train: ") and "epochz" in lines[0], done.stderr[-3000:]
    assert not checkpoints(run).folder.exists()  # nothing trained
