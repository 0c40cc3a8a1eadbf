"""The embedding store: layout, counts, zero padding, resume after a real kill, shards, refusal to overwrite."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
import zarr

from comicnb import data, embeddings, synth, training
from comicnb.model import PanelFeatureExtractor
from comicnb.search import PanelSearch

ARRAYS = ("embeddings", "panel_masks", "modalities", "modality_masks", "done")
SEED_FIELDS = {"book_id", "page_name", "num_panels", "embedding_indices"}



def save_checkpoint(model: PanelFeatureExtractor, path: Path) -> Path:
    """The parts of a Stage 3 checkpoint that embedding generation reads."""
    torch.save({"model_state_dict": model.state_dict(), "config": {"model": model.config, "train": {"seed": 0}}}, path)
    return path


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Notebook 01's artefacts for 4 small books (one split over max_panels) and a tiny-model checkpoint."""
    root = tmp_path_factory.mktemp("embed")
    synth.generate(root / "data", books=4, pages=6, seed=5, page_size=(320, 480))
    data.save_corpus(data.load_corpus(root / "data", max_panels=4), root / "run")
    torch.manual_seed(0)
    save_checkpoint(PanelFeatureExtractor(feature_dim=16, tiny=True), root / "run" / training.CHECKPOINT_NAME)
    return root / "run"


@pytest.fixture(scope="module")
def store(run_dir: Path) -> Path:
    """An uninterrupted store of the run."""
    summary = embeddings.generate(run_dir, cfg=embeddings.EmbedConfig(pages_per_chunk=3))
    assert summary["complete"] and summary["skipped_chunks"] == 0
    return Path(summary["store"])


def read(store: Path) -> dict[str, np.ndarray]:
    """Every array of a store."""
    group = zarr.open_group(str(store), mode="r")
    return {name: np.asarray(group[name][:]) for name in ARRAYS}


def test_store_layout_metadata_and_attrs(store: Path, run_dir: Path) -> None:
    group = embeddings.open_embeddings(store)
    pages = data.load_pages(run_dir / "pages.jsonl")
    assert group["embeddings"].shape == (len(pages), 4, 16) and group["modalities"].shape == (len(pages), 4, 3, 16)
    assert group["embeddings"].chunks == (3, 4, 16)
    metadata = json.loads((store / "metadata.json").read_text())
    assert SEED_FIELDS | {"split", "page_id"} <= set(metadata[0])
    assert [m["page_id"] for m in metadata] == list(pages.page_id)
    attrs = dict(group.attrs)
    assert attrs["checkpoint_sha256"] == embeddings.file_sha256(run_dir / training.CHECKPOINT_NAME)
    assert {"git_revision", "seed", "params", "model", "precision"} <= set(attrs)


def test_counts_reconcile_and_padding_is_exactly_zero(store: Path, run_dir: Path) -> None:
    arrays, pages = read(store), data.load_pages(run_dir / "pages.jsonl")
    assert (pages.num_panels > 0).all() and pages.part.max() > 0  # over-long pages were split, not cut
    assert arrays["panel_masks"].sum(axis=1).tolist() == pages.num_panels.tolist()
    metadata = json.loads((store / "metadata.json").read_text())
    flat_mask = arrays["panel_masks"].reshape(-1)
    assert sorted(i for m in metadata for i in m["embedding_indices"]) == np.flatnonzero(flat_mask).tolist()
    padding = ~arrays["panel_masks"]
    assert not arrays["embeddings"][padding].any() and not arrays["modalities"][padding].any()
    assert not arrays["modality_masks"][padding].any()
    norms = np.linalg.norm(arrays["embeddings"][arrays["panel_masks"]], axis=1)
    assert np.allclose(norms, 1, atol=1e-5)
    texts = [t for page in pages.texts for t in page]
    assert arrays["modality_masks"][arrays["panel_masks"]][:, 1].tolist() == [bool(t.strip()) for t in texts]


def test_stored_panels_equal_the_model_on_the_same_pages(store: Path, run_dir: Path) -> None:
    model = training.model_from_checkpoint(run_dir / training.CHECKPOINT_NAME)
    trainer_pages, data_root = data.load_run_pages(run_dir)
    from comicnb.dataset import page_loader

    batch = next(iter(page_loader(trainer_pages, data_root, model, [[0, 1, 2]], 4)))
    with torch.no_grad():
        expected = model({k: v for k, v in batch.items() if torch.is_tensor(v)})
    assert np.allclose(read(store)["embeddings"][:3], expected.numpy(), atol=1e-6)


def test_two_shards_equal_one(store: Path, run_dir: Path, tmp_path: Path) -> None:
    cfg = embeddings.EmbedConfig(pages_per_chunk=3)
    first = embeddings.generate(run_dir, store=tmp_path / "s.zarr", cfg=cfg, shard=(1, 2))
    assert not first["complete"] and first["computed_chunks"] == first["chunks"]
    second = embeddings.generate(run_dir, store=tmp_path / "s.zarr", cfg=cfg, shard=(0, 2))
    assert second["complete"]
    whole, sharded = read(store), read(tmp_path / "s.zarr")
    assert all(np.array_equal(whole[name], sharded[name]) for name in ARRAYS)


def test_rerun_computes_nothing_and_other_content_is_refused(store: Path, run_dir: Path, tmp_path: Path) -> None:
    cfg = embeddings.EmbedConfig(pages_per_chunk=3)
    again = embeddings.generate(run_dir, cfg=cfg)
    assert again["computed_chunks"] == 0 and again["complete"]
    with pytest.raises(embeddings.StoreMismatchError, match="pages_per_chunk"):
        embeddings.generate(run_dir, cfg=embeddings.EmbedConfig(pages_per_chunk=2))
    torch.manual_seed(1)
    other = save_checkpoint(PanelFeatureExtractor(feature_dim=16, tiny=True), tmp_path / "other.pt")
    with pytest.raises(embeddings.StoreMismatchError, match="checkpoint_sha256"):
        embeddings.generate(run_dir, other, cfg=cfg)
    replaced = embeddings.generate(run_dir, other, tmp_path / "copy.zarr", cfg=cfg)
    assert embeddings.generate(run_dir, checkpoint=other, store=replaced["store"], cfg=cfg)["computed_chunks"] == 0


def test_an_unfinished_store_is_refused_for_reading(run_dir: Path, tmp_path: Path) -> None:
    embeddings.generate(run_dir, store=tmp_path / "half.zarr", cfg=embeddings.EmbedConfig(pages_per_chunk=3),
                        shard=(0, 2))
    with pytest.raises(RuntimeError, match="unfinished"):
        embeddings.open_embeddings(tmp_path / "half.zarr")


def test_resume_after_killing_a_real_process_equals_an_uninterrupted_run(store: Path, run_dir: Path,
                                                                         tmp_path: Path) -> None:
    killed = tmp_path / "killed.zarr"
    # The packaged pretrained backbone (slower than the tiny one) and one page a chunk leave time to kill mid-run.
    torch.manual_seed(0)
    slow = save_checkpoint(PanelFeatureExtractor(feature_dim=16), tmp_path / "slow.pt")
    command = [sys.executable, "-m", "comicnb", "embed", "--run-dir", str(run_dir), "--checkpoint", str(slow),
               "--store", str(killed), "--pages-per-chunk", "1"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    process = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    done_before_kill = wait_for_some_pages(killed, process)
    process.send_signal(signal.SIGKILL)
    process.wait()
    done = read(killed)["done"]
    assert 0 < done.sum() < len(done), "the process was not killed half-way"
    resumed = embeddings.generate(run_dir, slow, killed, cfg=embeddings.EmbedConfig(pages_per_chunk=1))
    assert resumed["complete"] and resumed["skipped_chunks"] == int(done.sum()) >= done_before_kill
    uninterrupted = embeddings.generate(run_dir, slow, tmp_path / "whole.zarr",
                                        cfg=embeddings.EmbedConfig(pages_per_chunk=1))
    after, whole = read(killed), read(Path(uninterrupted["store"]))
    assert all(np.array_equal(after[name], whole[name]) for name in ARRAYS)


def wait_for_some_pages(store: Path, process: subprocess.Popen, timeout: float = 120.0) -> int:
    """Poll the store until the process has written at least one page; the number written."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and process.poll() is None:
        if (store / "done" / "zarr.json").is_file():
            written = int(np.asarray(zarr.open_array(str(store / "done"), mode="r")[:]).sum())
            if written:
                return written
        time.sleep(0.01)
    raise AssertionError(f"no page written before the process ended (exit {process.poll()})")


def test_exact_search_on_the_store_finds_each_panel_first(store: Path) -> None:
    search = PanelSearch(store)
    metadata = search.pages
    ids = np.array([i for indices in metadata.embedding_indices for i in indices])
    hits = search.neighbours(ids, k=1)
    assert (hits.panel_id.to_numpy() == ids).all() and np.allclose(hits.score, 1, atol=1e-5)


def test_cli_reports_a_bad_shard(run_dir: Path, capsys: pytest.CaptureFixture) -> None:
    from comicnb import cli

    assert cli.main(["embed", "--run-dir", str(run_dir), "--shard", "2/2"]) == 1
    assert "0 <= i < n" in capsys.readouterr().err


def test_panel_truth_names_each_stored_panel(store: Path, run_dir: Path) -> None:
    metadata = json.loads((store / "metadata.json").read_text())
    truth = synth.panel_truth(run_dir.parent / "data", metadata)
    assert truth.panel_id.tolist() == [i for m in metadata for i in m["embedding_indices"]]
    sidecar = json.loads((run_dir.parent / "data" / "ground_truth.json").read_text())
    first = metadata[0]
    panel = sidecar["books"][first["book_id"]]["pages"][first["page_name"]]["panels"][first["panel_index"][0]]
    assert truth.characters[0] == panel["characters"] and truth.caption[0] == panel["caption"]


def test_neighbour_agreement_against_chance() -> None:
    vectors = np.repeat(np.eye(3, 8, dtype=np.float32), 4, axis=0)  # three tight groups of four panels
    page = np.arange(12)  # every panel on its own page
    labels = pd.DataFrame({"group": np.repeat(["a", "b", "c"], 4), "noise": list("xyxyxyxyxyxy")})
    table = embeddings.neighbour_agreement(vectors, page, labels, k=3)
    assert table.loc["group", "agreement"] == 1.0 and np.isclose(table.loc["group", "chance"], 1 / 3)
    assert np.isclose(table.loc["noise", "chance"], 0.5)


def test_panel_ids_and_labels_follow_the_store_order(store: Path, run_dir: Path, tmp_path: Path) -> None:
    search = PanelSearch(store)
    metadata = search.pages
    assert search.panel_ids.tolist() == [i for indices in metadata.embedding_indices for i in indices]
    labels = embeddings.panel_labels(metadata, run_dir.parent / "data")
    assert list(labels.columns) == ["book_id", "character", "scene"] and len(labels) == len(search.panel_ids)
    without_truth = embeddings.panel_labels(metadata, tmp_path)  # real data: no sidecar, only the book
    assert list(without_truth.columns) == ["book_id"]
    assert without_truth.book_id.tolist() == labels.book_id.tolist()
