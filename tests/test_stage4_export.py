"""The Stage 5 export (comicnb.stage4.export): the seed's arrays with exactly-zero padding, what the model itself gives,
a killed export resumed to the same bytes, another checkpoint refused unless overwritten, and "pages like this one"
over the strip embeddings (a small generated corpus, a tiny-model Stage 3 store and an untrained tiny Stage 4 model)."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
import zarr
from tiny_runs import tiny_store_run

from comicnb import checkpoint, cli
from comicnb.stage3.fusion import MODALITIES
from comicnb.stage4 import export as stage4_export
from comicnb.stage4.batches import BatchBuilder
from comicnb.stage4.config import checkpoints
from comicnb.stage4.export import (
    CONTEXTUALIZED,
    EXPORT_NAME,
    STRIPS,
    export_stage4,
    search_strips,
)
from comicnb.stage4.model import Stage4SequenceModel
from comicnb.stage4.scoring import load_stage4_model
from comicnb.stage4.view import open_run
from comicnb.store import StoreMismatchError, load_metadata
from comicnb.store.schema import (
    DONE,
    EMBEDDINGS,
    MASKS,
    METADATA,
    MODALITY_EMBEDDINGS,
    MODALITY_MASKS,
    STORE_NAME,
    TEXT_FREE_MASKS,
    TEXT_FREE_VISION,
)

DIM = 32  # the tiny Stage 3 model's feature_dim
SMALL = dict(input_dim=DIM, d_model=16, nhead=4, num_layers=2, dim_feedforward=32)
CHUNK = 4  # pages per export chunk: the corpus has 12 narrative pages, so 3 chunks


def save_stage4(path: Path, seed: int, modalities: list[str] | None = None) -> Path:
    """An untrained tiny Stage 4 model in the checkpoint format ``load_stage4_model`` reads."""
    torch.manual_seed(seed)
    model = Stage4SequenceModel(**SMALL)
    train = {"seed": seed, "modalities": modalities or list(MODALITIES)}
    state = {"model_state_dict": model.state_dict(), "config": {"model": model.config, "train": train}}
    return checkpoint.save_checkpoint(state, path)


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """4 books of 4 pages, a store made by a tiny untrained Stage 3 model, a Stage 4 best checkpoint, and another
    Stage 4 checkpoint (other weights) beside the run."""
    root = tmp_path_factory.mktemp("stage4-export")
    run = tiny_store_run(root, DIM)
    save_stage4(checkpoints(run).best, seed=0)
    save_stage4(root / "other.pt", seed=1)
    return run


@pytest.fixture(scope="module")
def exported(run: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An uninterrupted export of the run's best checkpoint."""
    out = tmp_path_factory.mktemp("full") / EXPORT_NAME
    summary = export_stage4(run, out=out, pages_per_chunk=CHUNK)
    assert summary["complete"] and summary["computed_chunks"] == summary["chunks"] == 3
    return out


def arrays(path: Path) -> dict[str, np.ndarray]:
    group = zarr.open_group(str(path), mode="r")
    return {name: np.asarray(group[name][:]) for name in (CONTEXTUALIZED, STRIPS, MASKS, DONE)}


def test_the_export_holds_the_seeds_arrays_with_zero_padding(run: Path, exported: Path) -> None:
    store = zarr.open_group(str(run / STORE_NAME), mode="r")
    pages, max_panels, _ = store[EMBEDDINGS].shape
    got = arrays(exported)
    assert got[CONTEXTUALIZED].shape == (pages, max_panels, SMALL["d_model"])
    assert got[STRIPS].shape == (pages, SMALL["d_model"])
    assert got[CONTEXTUALIZED].dtype == got[STRIPS].dtype == np.float32
    np.testing.assert_array_equal(got[MASKS], np.asarray(store[MASKS][:]))
    assert got[DONE].all()
    padding = got[CONTEXTUALIZED][~got[MASKS]]
    assert padding.size and not np.signbit(padding).any() and not padding.any()  # exactly +0.0
    assert np.abs(got[CONTEXTUALIZED][got[MASKS]]).sum(axis=-1).min() > 0
    assert np.isfinite(got[STRIPS]).all() and (np.linalg.norm(got[STRIPS], axis=1) > 0).all()

    attrs = dict(zarr.open_group(str(exported), mode="r").attrs)
    assert attrs["checkpoint"] == str(checkpoints(run).best)
    assert attrs["checkpoint_sha256"] == checkpoint.file_sha256(checkpoints(run).best)
    assert attrs["store_checkpoint_sha256"] == store.attrs["checkpoint_sha256"]
    assert attrs["store_metadata_sha256"] == store.attrs["metadata_sha256"]
    assert attrs["model"]["d_model"] == SMALL["d_model"] and attrs["modalities"] == list(MODALITIES)
    assert attrs["git_revision"] and attrs["comicnb_version"] and attrs["created"]
    assert (exported / METADATA).read_bytes() == (run / STORE_NAME / METADATA).read_bytes()


def test_the_export_is_what_the_model_gives(run: Path, exported: Path) -> None:
    """The first chunk, called the same way, is equal to the bit; other pages batched otherwise agree closely."""
    model, config = load_stage4_model(checkpoints(run).best)
    encoder = BatchBuilder(open_run(run), modalities=config["train"]["modalities"])
    got = arrays(exported)
    for pages, exact in ((list(range(CHUNK)), True), ([1, 6, 11], False)):
        embeddings, mask = encoder.pages(pages)
        with torch.no_grad():
            out = model(embeddings, mask)
        width = mask.shape[1]
        states = out["contextualized_panels"].numpy() * mask.numpy()[..., None]
        compare = np.testing.assert_array_equal if exact else np.testing.assert_allclose
        kwargs = {} if exact else dict(rtol=1e-5, atol=1e-6)
        compare(got[CONTEXTUALIZED][pages, :width], states, **kwargs)
        compare(got[STRIPS][pages], out["strip_embedding"].numpy(), **kwargs)
        assert not got[CONTEXTUALIZED][pages, width:].any()


def test_a_killed_export_resumes_to_the_same_bytes(
    run: Path, exported: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    out = tmp_path / EXPORT_NAME
    write = stage4_export.write_chunk
    calls = []

    def die_after_first(*args: object) -> None:
        if calls:
            raise KeyboardInterrupt("killed")
        calls.append(1)
        write(*args)

    monkeypatch.setattr(stage4_export, "write_chunk", die_after_first)
    with pytest.raises(KeyboardInterrupt):
        export_stage4(run, out=out, pages_per_chunk=CHUNK)
    monkeypatch.undo()
    partial = arrays(out)
    assert partial[DONE].sum() == CHUNK and partial[DONE][:CHUNK].all()
    assert not (out.parent / f".{out.name}.lock").exists()  # no stray lock file

    summary = export_stage4(run, out=out)  # pages_per_chunk: the existing export's
    assert (summary["computed_chunks"], summary["skipped_chunks"], summary["complete"]) == (2, 1, True)
    full, resumed = arrays(exported), arrays(out)
    for name in full:
        assert full[name].tobytes() == resumed[name].tobytes(), name
    again = export_stage4(run, out=out)
    assert (again["computed_chunks"], again["skipped_chunks"]) == (0, 3)


def test_another_checkpoint_is_refused_unless_overwritten(run: Path, exported: Path, tmp_path: Path) -> None:
    out = tmp_path / EXPORT_NAME
    shutil.copytree(exported, out)
    other = run.parent / "other.pt"
    with pytest.raises(StoreMismatchError) as refused:
        export_stage4(run, other, out=out)
    message = str(refused.value)
    assert str(checkpoints(run).best) in message and str(other) in message and "overwrite=True" in message
    np.testing.assert_array_equal(arrays(out)[STRIPS], arrays(exported)[STRIPS])  # left alone

    with pytest.raises(StoreMismatchError, match="pages_per_chunk"):
        export_stage4(run, out=out, pages_per_chunk=CHUNK + 1)

    summary = export_stage4(run, other, out=out, overwrite=True)
    assert summary["computed_chunks"] == summary["chunks"]
    assert zarr.open_group(str(out), mode="r").attrs["checkpoint_sha256"] == checkpoint.file_sha256(other)
    assert not np.array_equal(arrays(out)[STRIPS], arrays(exported)[STRIPS])


def test_a_checkpoint_trained_on_another_store_is_refused(run: Path, tmp_path: Path) -> None:
    path = save_stage4(tmp_path / "elsewhere.pt", seed=0)
    state = torch.load(path, weights_only=True)
    state["data"] = {"store_checkpoint_sha256": "0" * 64, "store_metadata_sha256": "1" * 64}
    checkpoint.save_checkpoint(state, path)
    with pytest.raises(StoreMismatchError, match="trained on another embedding store"):
        export_stage4(run, path, out=tmp_path / EXPORT_NAME)
    assert not (tmp_path / EXPORT_NAME).exists()


def test_overwrite_never_deletes_what_is_not_an_export(run: Path, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="Stage 3 store itself"):
        export_stage4(run, out=run / STORE_NAME, overwrite=True)
    folder = tmp_path / "notes"
    folder.mkdir()
    (folder / "keep.txt").write_text("mine")
    for overwrite in (False, True):
        with pytest.raises(StoreMismatchError, match="not a Stage 4 export"):
            export_stage4(run, out=folder, overwrite=overwrite)
    assert (folder / "keep.txt").read_text() == "mine"


def test_an_ablation_exports_with_its_own_modalities(run: Path, tmp_path: Path) -> None:
    path = save_stage4(tmp_path / "text_only.pt", seed=2, modalities=["text"])
    export_stage4(run, path, out=tmp_path / EXPORT_NAME, pages_per_chunk=16)
    assert zarr.open_group(str(tmp_path / EXPORT_NAME), mode="r").attrs["modalities"] == ["text"]
    model, _ = load_stage4_model(path)
    encoder = BatchBuilder(open_run(run), modalities=["text"])
    embeddings, mask = encoder.pages(list(range(len(encoder.view.pages))))
    with torch.no_grad():
        strips = model(embeddings, mask)["strip_embedding"].numpy()
    np.testing.assert_array_equal(arrays(tmp_path / EXPORT_NAME)[STRIPS], strips)


# ---------------------------------------------------------------------------------------------------------- search


def cosine(strips: np.ndarray) -> np.ndarray:
    unit = strips / np.linalg.norm(strips, axis=1, keepdims=True).clip(1e-12)
    return unit @ unit.T


def test_search_ranks_pages_by_strip_cosine_without_the_query(exported: Path) -> None:
    strips = arrays(exported)[STRIPS]
    scores = cosine(strips)
    for page in (0, 7):
        table = search_strips(exported, page, k=5)
        assert list(table.columns) == ["rank", "page_index", "book_id", "page_name", "score", "image_path"]
        assert page not in table.page_index.tolist() and table["rank"].tolist() == [1, 2, 3, 4, 5]
        expected = [i for i in np.argsort(-scores[page], kind="stable") if i != page][:5]
        assert table.page_index.tolist() == expected
        np.testing.assert_allclose(table.score, scores[page, expected], rtol=1e-5)
        assert all(Path(p).is_file() for p in table.image_path)
    with pytest.raises(ValueError, match="not in"):
        search_strips(exported, len(strips))


def test_an_identical_page_ranks_first_and_an_empty_page_never_comes_back(run: Path, tmp_path: Path) -> None:
    """In a copy of the run whose store repeats page 2 as page 9 and empties page 5: page 9 is page 2's nearest at
    cosine 1, and page 5 exports as zeros, done, and is neither found nor searchable."""
    copy = tmp_path / "run"
    shutil.copytree(run, copy, ignore=shutil.ignore_patterns("stage4_embeddings.zarr"))
    store = zarr.open_group(str(copy / STORE_NAME), mode="r+")
    for name in (EMBEDDINGS, MASKS, MODALITY_EMBEDDINGS, MODALITY_MASKS, TEXT_FREE_VISION, TEXT_FREE_MASKS):
        store[name][9] = store[name][2]
        store[name][5] = np.zeros_like(store[name][5])
    export_stage4(copy, out=copy / EXPORT_NAME, pages_per_chunk=CHUNK)
    got = arrays(copy / EXPORT_NAME)
    assert got[DONE].all() and not got[MASKS][5].any()
    assert not got[CONTEXTUALIZED][5].any() and not got[STRIPS][5].any()
    table = search_strips(copy / EXPORT_NAME, 2, k=15)
    assert table.page_index.iloc[0] == 9 and table.score.iloc[0] == pytest.approx(1.0, abs=1e-5)
    assert 5 not in table.page_index.tolist() and 2 not in table.page_index.tolist()
    assert len(table) == len(got[DONE]) - 2  # every page but the query and the empty one
    with pytest.raises(ValueError, match="no panel"):
        search_strips(copy / EXPORT_NAME, 5)


# ------------------------------------------------------------------------------------------------------------- CLI


def test_the_commands(run: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    copy = tmp_path / "run"
    shutil.copytree(run, copy, ignore=shutil.ignore_patterns("stage4_embeddings.zarr"))
    assert cli.main(["search-strips", "--run-dir", str(copy), "--page", "0"]) == 1
    assert "export-stage4" in capsys.readouterr().err

    assert cli.main(["export-stage4", "--run-dir", str(copy)]) == 0
    out = capsys.readouterr().out
    pages = zarr.open_group(str(copy / STORE_NAME), mode="r")[DONE].shape[0]
    assert f"{pages} pages" in out and str(copy / EXPORT_NAME) in out
    assert cli.main(["export-stage4", "--run-dir", str(copy)]) == 0
    assert "0 chunks exported, 1 already done" in capsys.readouterr().out  # all pages: one chunk of the default 16

    other = str(run.parent / "other.pt")
    assert cli.main(["export-stage4", "--run-dir", str(copy), "--checkpoint", other]) == 1
    err = capsys.readouterr().err
    assert "--overwrite" in err and other in err and "overwrite=True" not in err
    assert cli.main(["export-stage4", "--run-dir", str(copy), "--checkpoint", other, "--overwrite"]) == 0
    capsys.readouterr()

    assert cli.main(["search-strips", "--run-dir", str(copy), "--page", "3", "-k", "4"]) == 0
    printed = capsys.readouterr().out
    assert search_strips(copy / EXPORT_NAME, 3, k=4).page_name.iloc[0] in printed
    assert len(printed.strip().splitlines()) == 1 + 1 + 4  # the query page, the header, 4 hits
    assert cli.main(["search-strips", "--run-dir", str(copy), "--page", "99"]) == 2
    assert "not in" in capsys.readouterr().err
    query = load_metadata(copy / EXPORT_NAME).iloc[3]
    by_name = f"{query.book_id}/{query.page_name}"  # the page by its name, as a reader knows it
    assert cli.main(["search-strips", "--run-dir", str(copy), "--page", by_name, "-k", "4"]) == 0
    assert capsys.readouterr().out == printed
    assert cli.main(["search-strips", "--run-dir", str(copy), "--page", by_name + "x"]) == 2
    assert f"did you mean {by_name}" in capsys.readouterr().err
