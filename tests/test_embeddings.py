"""The embedding store: layout, counts, zero padding, resume after a real kill, concurrent shards, no overwrite."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
import yaml
import zarr

from comicnb import checkpoint
from comicnb.agreement import held_out_fusion, neighbour_agreement
from comicnb.corpus import load_corpus, load_pages, load_run_pages, save_corpus, synth
from comicnb.corpus.truth import panel_labels
from comicnb.search import PanelSearch
from comicnb.stage3 import checkpoints
from comicnb.stage3.batches import page_chunks, page_loader
from comicnb.stage3.fusion import MODALITIES
from comicnb.stage3.model import PanelFeatureExtractor, model_from_checkpoint
from comicnb.store import (
    DONE,
    EMBEDDINGS,
    MASKS,
    MODALITY_EMBEDDINGS,
    MODALITY_MASKS,
    STORE_NAME,
    TEXT_FREE_MASKS,
    TEXT_FREE_VISION,
    EmbedConfig,
    StoreMismatchError,
    file_sha256,
    generate,
    open_embeddings,
    verify_store,
)

# The text-free arrays too: the synthetic corpus has twins, so shards and resumes must write them alike.
ARRAYS = (EMBEDDINGS, MASKS, MODALITY_EMBEDDINGS, MODALITY_MASKS, TEXT_FREE_VISION, TEXT_FREE_MASKS, DONE)
SEED_FIELDS = {"book_id", "page_name", "num_panels", "embedding_indices"}
ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}


def embed_command(run_dir: Path, *options: str) -> list[str]:
    """``python -m comicnb embed --run-dir RUN_DIR OPTIONS`` as an argument list."""
    return [sys.executable, "-m", "comicnb", "embed", "--run-dir", str(run_dir), *options]


def save_checkpoint(model: PanelFeatureExtractor, path: Path) -> Path:
    """The parts of a Stage 3 checkpoint that embedding generation reads."""
    return checkpoint.save_checkpoint(
        {"model_state_dict": model.state_dict(), "config": {"model": model.config, "train": {"seed": 0}}}, path
    )


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Notebook 01's artefacts for 4 small books (one split over max_panels) and a tiny-model checkpoint."""
    root = tmp_path_factory.mktemp("embed")
    synth.generate(root / "data", books=4, pages=6, seed=5, page_size=(320, 480))
    save_corpus(load_corpus(root / "data", max_panels=4), root / "run")
    torch.manual_seed(0)
    save_checkpoint(PanelFeatureExtractor(feature_dim=16, tiny=True), checkpoints(root / "run").last)
    return root / "run"


@pytest.fixture(scope="module")
def store(run_dir: Path) -> Path:
    """An uninterrupted store of the run."""
    summary = generate(run_dir, cfg=EmbedConfig(pages_per_chunk=3))
    assert summary["complete"] and summary["skipped_chunks"] == 0
    assert summary["store"] == str(run_dir / STORE_NAME)
    return Path(summary["store"])


def read(store: Path) -> dict[str, np.ndarray]:
    """Every array of a store."""
    group = zarr.open_group(str(store), mode="r")
    return {name: np.asarray(group[name][:]) for name in ARRAYS}


def test_store_layout_metadata_and_attrs(store: Path, run_dir: Path) -> None:
    group = open_embeddings(store)
    pages = load_pages(run_dir / "pages.jsonl")
    assert group[EMBEDDINGS].shape == (len(pages), 4, 16) and group[MODALITY_EMBEDDINGS].shape == (len(pages), 4, 3, 16)
    assert group[EMBEDDINGS].chunks == (3, 4, 16)
    metadata = json.loads((store / "metadata.json").read_text())
    assert SEED_FIELDS | {"split", "page_id"} <= set(metadata[0])
    assert [m["page_id"] for m in metadata] == list(pages.page_id)
    attrs = dict(group.attrs)
    assert attrs["checkpoint_sha256"] == file_sha256(checkpoints(run_dir).last)
    assert {"git_revision", "seed", "params", "model", "precision"} <= set(attrs)


def test_counts_reconcile_and_padding_is_exactly_zero(store: Path, run_dir: Path) -> None:
    arrays, pages = read(store), load_pages(run_dir / "pages.jsonl")
    assert (pages.num_panels > 0).all() and pages.part.max() > 0  # over-long pages were split, not cut
    assert arrays[MASKS].sum(axis=1).tolist() == pages.num_panels.tolist()
    metadata = json.loads((store / "metadata.json").read_text())
    flat_mask = arrays[MASKS].reshape(-1)
    assert sorted(i for m in metadata for i in m["embedding_indices"]) == np.flatnonzero(flat_mask).tolist()
    padding = ~arrays[MASKS]
    assert not arrays[EMBEDDINGS][padding].any() and not arrays[MODALITY_EMBEDDINGS][padding].any()
    assert not arrays[MODALITY_MASKS][padding].any()
    assert np.array_equal(arrays[TEXT_FREE_MASKS], arrays[MASKS]) and not arrays[TEXT_FREE_VISION][padding].any()
    norms = np.linalg.norm(arrays[EMBEDDINGS][arrays[MASKS]], axis=1)
    assert np.allclose(norms, 1, atol=1e-5)
    texts = [t for page in pages.texts for t in page]
    assert arrays[MODALITY_MASKS][arrays[MASKS]][:, 1].tolist() == [bool(t.strip()) for t in texts]


def test_stored_panels_equal_the_model_on_the_same_pages(store: Path, run_dir: Path) -> None:
    model = model_from_checkpoint(checkpoints(run_dir).last)
    trainer_pages, data_root = load_run_pages(run_dir)
    batch = next(iter(page_loader(trainer_pages, data_root, model, [[0, 1, 2]], 4)))
    with torch.no_grad():
        expected = model({k: v for k, v in batch.items() if torch.is_tensor(v)})
    assert np.allclose(read(store)[EMBEDDINGS][:3], expected.numpy(), atol=1e-6)


def shard_pages(run_dir: Path, pages_per_chunk: int, shard: tuple[int, int]) -> set[int]:
    """The page rows of a shard's chunks: every n-th chunk of consecutive pages, from the i-th."""
    chunks = page_chunks(len(load_pages(run_dir / "pages.jsonl")), pages_per_chunk)
    return {page for chunk in chunks[shard[0] :: shard[1]] for page in chunk}


def test_two_shards_equal_one(store: Path, run_dir: Path, tmp_path: Path) -> None:
    cfg = EmbedConfig(pages_per_chunk=3)
    first = generate(run_dir, store=tmp_path / "s.zarr", cfg=cfg, shard=(1, 2))
    assert not first["complete"] and first["computed_chunks"] == first["chunks"] > 0
    assert set(np.flatnonzero(read(tmp_path / "s.zarr")[DONE]).tolist()) == shard_pages(run_dir, 3, (1, 2))
    second = generate(run_dir, store=tmp_path / "s.zarr", cfg=cfg, shard=(0, 2))
    assert second["complete"] and second["computed_chunks"] == second["chunks"] > 0
    whole, sharded = read(store), read(tmp_path / "s.zarr")
    assert all(np.array_equal(whole[name], sharded[name]) for name in ARRAYS)


SUMMARY = re.compile(r"embed shard (\d+)/2: (\d+) chunks encoded, (\d+) already done")


def test_two_concurrent_shard_processes_fill_one_store_disjointly(store: Path, run_dir: Path, tmp_path: Path) -> None:
    """Two real `comicnb embed --shard i/2` processes at once: together complete, apart disjoint, equal to one."""
    chunks = len(page_chunks(len(load_pages(run_dir / "pages.jsonl")), 3))
    assert chunks >= 4

    def command(index: int, into: Path) -> list[str]:
        return embed_command(run_dir, "--store", str(into), "--pages-per-chunk", "3", "--shard", f"{index}/2")

    # Each shard alone into a store of its own: the pages each one writes (what its done flags mark).
    for i in (0, 1):
        generate(run_dir, store=tmp_path / f"alone{i}.zarr", cfg=EmbedConfig(pages_per_chunk=3), shard=(i, 2))
    # Both shards at once, as two processes, into one shared store.
    shared = tmp_path / "shared.zarr"
    processes = [
        subprocess.Popen(command(i, shared), env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        for i in (0, 1)
    ]
    outputs = [process.communicate(timeout=300) for process in processes]
    for process, (_, err) in zip(processes, outputs):
        assert process.returncode == 0, err[-3000:]
    assert not list(tmp_path.glob(".*.lock")), "a lock file was left beside the stores"

    written = [set(np.flatnonzero(read(tmp_path / f"alone{i}.zarr")[DONE]).tolist()) for i in (0, 1)]
    pages = len(read(store)[DONE])
    assert written[0] and written[1] and not written[0] & written[1], "the shards overlap"
    assert written[0] | written[1] == set(range(pages)), "the shards leave pages out"
    assert written == [shard_pages(run_dir, 3, (i, 2)) for i in (0, 1)]

    # In the shared store each process encoded its own chunks only, none twice, and none was left to the other.
    summaries = {int(m[1]): (int(m[2]), int(m[3])) for out, _ in outputs for m in SUMMARY.finditer(out)}
    assert sorted(summaries) == [0, 1], [out for out, _ in outputs]
    assert [summaries[i][0] for i in (0, 1)] == [len(range(chunks)[i::2]) for i in (0, 1)]
    assert sum(encoded for encoded, _ in summaries.values()) == chunks
    assert all(skipped == 0 for _, skipped in summaries.values())
    report = verify_store(shared, load_pages(run_dir / "pages.jsonl"))  # refuses an unfinished store
    assert report["counts_match"] and report["padding_nonzero_values"] == 0
    whole, sharded = read(store), read(shared)
    assert all(np.array_equal(whole[name], sharded[name]) for name in ARRAYS)
    assert (shared / "metadata.json").read_bytes() == (store / "metadata.json").read_bytes()


def test_rerun_computes_nothing_and_other_content_is_refused(store: Path, run_dir: Path, tmp_path: Path) -> None:
    cfg = EmbedConfig(pages_per_chunk=3)
    again = generate(run_dir, cfg=cfg)
    assert again["computed_chunks"] == 0 and again["complete"]
    with pytest.raises(StoreMismatchError, match="pages_per_chunk"):
        generate(run_dir, cfg=EmbedConfig(pages_per_chunk=2))
    torch.manual_seed(1)
    other = save_checkpoint(PanelFeatureExtractor(feature_dim=16, tiny=True), tmp_path / "other.pt")
    with pytest.raises(StoreMismatchError, match="checkpoint_sha256"):
        generate(run_dir, other, cfg=cfg)
    replaced = generate(run_dir, other, tmp_path / "copy.zarr", cfg=cfg)
    assert generate(run_dir, checkpoint=other, store=replaced["store"], cfg=cfg)["computed_chunks"] == 0


def test_an_unfinished_store_is_refused_for_reading(run_dir: Path, tmp_path: Path) -> None:
    generate(run_dir, store=tmp_path / "half.zarr", cfg=EmbedConfig(pages_per_chunk=3), shard=(0, 2))
    with pytest.raises(RuntimeError, match="unfinished"):
        open_embeddings(tmp_path / "half.zarr")


def test_resume_after_killing_a_real_process_equals_an_uninterrupted_run(
    store: Path, run_dir: Path, tmp_path: Path
) -> None:
    killed = tmp_path / "killed.zarr"
    # The packaged pretrained backbone (slower than the tiny one) and one page a chunk leave time to kill mid-run.
    torch.manual_seed(0)
    slow = save_checkpoint(PanelFeatureExtractor(feature_dim=16), tmp_path / "slow.pt")
    command = embed_command(run_dir, "--checkpoint", str(slow), "--store", str(killed), "--pages-per-chunk", "1")
    process = subprocess.Popen(command, env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    done_before_kill = wait_for_some_pages(killed, process)
    process.send_signal(signal.SIGKILL)
    process.wait()
    done = read(killed)[DONE]
    assert 0 < done.sum() < len(done), "the process was not killed half-way"
    resumed = generate(run_dir, slow, killed, cfg=EmbedConfig(pages_per_chunk=1))
    assert resumed["complete"] and resumed["skipped_chunks"] == int(done.sum()) >= done_before_kill
    uninterrupted = generate(run_dir, slow, tmp_path / "whole.zarr", cfg=EmbedConfig(pages_per_chunk=1))
    after, whole = read(killed), read(Path(uninterrupted["store"]))
    assert all(np.array_equal(after[name], whole[name]) for name in ARRAYS)


def wait_for_some_pages(store: Path, process: subprocess.Popen, timeout: float = 120.0) -> int:
    """Poll the store until the process has written at least one page; the number written."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and process.poll() is None:
        if (store / DONE / "zarr.json").is_file():
            written = int(np.asarray(zarr.open_array(str(store / DONE), mode="r")[:]).sum())
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
    assert truth.beat[0] == panel["beat"] and truth.scene_run[0] == panel["scene_run"]  # the story columns (v2)


def test_neighbour_agreement_against_chance() -> None:
    vectors = np.repeat(np.eye(3, 8, dtype=np.float32), 4, axis=0)  # three tight groups of four panels
    page = np.arange(12)  # every panel on its own page
    labels = pd.DataFrame({"group": np.repeat(["a", "b", "c"], 4), "noise": list("xyxyxyxyxyxy")})
    table = neighbour_agreement(vectors, page, labels, k=3)
    assert table.loc["group", "agreement"] == 1.0 and np.isclose(table.loc["group", "chance"], 1 / 3)
    assert np.isclose(table.loc["noise", "chance"], 0.5)


def test_panel_ids_and_labels_follow_the_store_order(store: Path, run_dir: Path, tmp_path: Path) -> None:
    search = PanelSearch(store)
    metadata = search.pages
    assert search.panel_ids.tolist() == [i for indices in metadata.embedding_indices for i in indices]
    labels = panel_labels(metadata, run_dir.parent / "data")
    assert list(labels.columns) == ["book_id", "character", "scene"] and len(labels) == len(search.panel_ids)
    without_truth = panel_labels(metadata, tmp_path)  # real data: no sidecar, only the book
    assert list(without_truth.columns) == ["book_id"]
    assert without_truth.book_id.tolist() == labels.book_id.tolist()


def test_no_lock_file_is_left_beside_a_finished_store(store: Path, run_dir: Path, tmp_path: Path) -> None:
    assert not list(run_dir.glob(".*.lock"))
    generate(run_dir, store=tmp_path / "half.zarr", cfg=EmbedConfig(pages_per_chunk=3), shard=(0, 2))
    assert not list(tmp_path.glob(".*.lock"))  # a shard that finished cleanly leaves none either


def test_cli_resumes_with_the_stores_pages_per_chunk_and_names_its_own_flag(
    store: Path, run_dir: Path, capsys: pytest.CaptureFixture
) -> None:
    from comicnb import cli

    assert cli.main(["embed", "--run-dir", str(run_dir)]) == 0  # the store was made with 3 pages a chunk
    assert "0 chunks encoded" in capsys.readouterr().out
    assert cli.main(["embed", "--run-dir", str(run_dir), "--pages-per-chunk", "2"]) == 1
    err = capsys.readouterr().err
    assert "pages_per_chunk" in err and "--overwrite" in err and "overwrite=True" not in err
    with pytest.raises(StoreMismatchError) as refused:  # the Python API (notebook 03) names its parameter
        generate(run_dir, cfg=EmbedConfig(pages_per_chunk=2))
    assert "overwrite=True" in str(refused.value) and "--overwrite" not in str(refused.value)


def copy_run(run_dir: Path, into: Path, *ignore: str) -> Path:
    """A copy of the run folder without its store (and without what else ``ignore`` names)."""
    shutil.copytree(run_dir, into, ignore=shutil.ignore_patterns(STORE_NAME, ".*.lock", *ignore))
    return into


def test_cli_takes_pages_per_chunk_from_the_runs_params(run_dir: Path, tmp_path: Path) -> None:
    from comicnb import cli

    run = copy_run(run_dir, tmp_path / "run")
    resolved = {
        "02_stage3_training": {"feature_dim": 16, "run_dir": str(run)},
        "03_embedding_generation": {"pages_per_chunk": 5, "run_dir": str(run)},
    }
    (run / "params.yaml").write_text(yaml.safe_dump(resolved))  # as `comicnb run` writes it
    assert cli.main(["embed", "--run-dir", str(run)]) == 0
    assert zarr.open_group(str(run / STORE_NAME), mode="r").attrs["pages_per_chunk"] == 5


def test_cli_without_a_checkpoint_names_what_makes_one(
    run_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    from comicnb import cli

    run = copy_run(run_dir, tmp_path / "run", "stage3")
    assert cli.main(["embed", "--run-dir", str(run)]) == 1
    err = capsys.readouterr().err
    assert f"no Stage 3 checkpoint in {run / 'stage3'}/: run notebook 02 or `comicnb train stage3 --run-dir" in err
    assert cli.main(["embed", "--run-dir", str(run), "--checkpoint", str(tmp_path / "nope.pt")]) == 1
    assert "nope.pt does not exist: run notebook 02" in capsys.readouterr().err


def test_cli_takes_a_stage3_folder_and_names_a_stage4_checkpoint(
    run_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    from comicnb import cli

    run = copy_run(run_dir, tmp_path / "run")
    stage4 = tmp_path / "stage4" / "best_model.pt"  # what a Stage 4 checkpoint's config holds: no feature_dim
    checkpoint.save_checkpoint({"model_state_dict": {}, "config": {"model": {"d_model": 32}}}, stage4)
    assert cli.main(["embed", "--run-dir", str(run), "--checkpoint", str(stage4)]) == 1
    err = capsys.readouterr().err
    assert f"{stage4} is a Stage 4 checkpoint: the store is made by the Stage 3 panel encoder" in err
    assert "KeyError" not in err
    assert cli.main(["embed", "--run-dir", str(run), "--checkpoint", str(tmp_path)]) == 1  # a folder without one
    assert f"{tmp_path} is a folder without a Stage 3 checkpoint (best_model.pt or checkpoint.pt)" in (
        capsys.readouterr().err
    )
    assert cli.main(["embed", "--run-dir", str(run), "--checkpoint", str(run / "stage3")]) == 0  # the run's folder
    assert (run / STORE_NAME / "zarr.json").is_file()


def test_a_missing_store_names_what_makes_it(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match=r"no embedding store at .*notebook 03 makes it, or `comicnb embed"):
        open_embeddings(tmp_path / STORE_NAME)


def test_search_hits_read_without_look_up_and_only_the_stores_model_encodes_queries(
    store: Path, run_dir: Path, tmp_path: Path
) -> None:
    made_from = checkpoints(run_dir).last
    search = PanelSearch(store, checkpoint=made_from)
    pages, data_root = load_run_pages(run_dir)
    hits = search.neighbours(search.panel_ids[::7], k=2)
    for hit in hits.itertuples():
        assert hit.text == pages.texts[hit.page_index][hit.slot] and hit.box == pages.boxes[hit.page_index][hit.slot]
        assert hit.image_path == str(data_root / pages.image_path[hit.page_index]) and Path(hit.image_path).is_file()

    text = next(t for t in pages.texts[0] if t)
    model = model_from_checkpoint(made_from)
    assert model.checkpoint_sha256 == file_sha256(made_from)
    with torch.no_grad():
        direct = model.encode_query(texts=[text]).numpy()
    assert np.allclose(search.encode_query(texts=[text]), direct, atol=1e-6)
    assert np.array_equal(search.encode_query(model, texts=[text]), direct)

    torch.manual_seed(1)
    other = save_checkpoint(PanelFeatureExtractor(feature_dim=16, tiny=True), tmp_path / "other.pt")
    with pytest.raises(StoreMismatchError) as refused:
        PanelSearch(store, checkpoint=other)
    assert str(other) in str(refused.value) and str(made_from) in str(refused.value)
    wrong = model_from_checkpoint(other)
    with pytest.raises(StoreMismatchError, match="other.pt"):
        search.encode_query(wrong, texts=[text])
    in_memory = model_from_checkpoint(torch.load(made_from, weights_only=True))  # cannot say which file it is
    with pytest.raises(StoreMismatchError, match="model_from_checkpoint"):
        search.encode_query(in_memory, texts=[text])


def test_cli_search_lists_hits_with_text_and_score_and_draws_a_gallery(
    store: Path, run_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    from PIL import Image

    from comicnb import cli
    from comicnb.corpus.crops import crop_panels

    stored = PanelSearch(store).pages
    text = next(t for texts in stored.texts for t in texts if t)  # a stored panel's own text
    args = ["search", "--run-dir", str(run_dir), "-k", "3"]
    gallery, csv = tmp_path / "hits.png", tmp_path / "hits.csv"
    assert cli.main([*args, "--text", text, "--gallery", str(gallery), "--csv", str(csv)]) == 0
    out = capsys.readouterr().out
    assert re.search(r"rank\s+score\s+book_id\s+page_name\s+slot\s+text", out)  # the text and score columns shown
    hits = pd.read_csv(csv)
    assert len(hits) == 3 and hits.score.is_monotonic_decreasing and {"text", "image_path"} <= set(hits.columns)
    with Image.open(gallery) as drawn:
        assert drawn.width > drawn.height > 100  # one row: the query and its three hits
    # An image file as the query: the first stored panel's crop, encoded image-only by the store's model.
    pages, root = load_run_pages(run_dir)
    with Image.open(root / pages.image_path.iloc[0]) as page:
        crop_panels(page, [pages.boxes.iloc[0][0]])[0].save(tmp_path / "panel.png")
    assert cli.main([*args, "--image", str(tmp_path / "panel.png")]) == 0
    assert "nearest the image" in capsys.readouterr().out
    assert cli.main(args) == 2 and "give one query" in capsys.readouterr().err  # neither --text nor --image


def test_held_out_fusion_reads_only_validation_and_test_panels_and_the_stores_gate(store: Path, run_dir: Path) -> None:
    last = checkpoints(run_dir).last
    search = PanelSearch(store, checkpoint=last)
    _, data_root = load_run_pages(run_dir)
    labels = panel_labels(search.pages, data_root)
    encoder = model_from_checkpoint(last)
    table, gates, panels, held_out = held_out_fusion(search, labels, encoder, MODALITIES, k=2)
    page = search.panel_ids // search.max_panels
    on = search.pages.split.isin(["val", "test"]).to_numpy()[page]
    assert held_out and panels == int(on.sum()) < len(page)
    assert set(table.index.get_level_values("input")) <= set(MODALITIES) and "scene" in table.index
    vision = table.loc[("scene", "vision")]
    assert vision.panels == int(search.modality_vectors()[1][on, 0].sum())
    modality_vectors, mask = search.modality_vectors()
    with torch.no_grad():  # the store's own gate, on the held-out panels' stored vectors
        weights = encoder.fusion(torch.from_numpy(modality_vectors[on]), torch.from_numpy(mask[on])).weights.numpy()
    assert np.isclose(gates["vision"], weights[mask[on][:, 0], 0].mean())
