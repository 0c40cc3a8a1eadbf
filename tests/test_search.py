"""Vector search: exact top-k against a brute-force reference, padding, the usearch index, and store look-up."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
import zarr

from comicnb import search
from comicnb.metrics import overlap_recall
from comicnb.search import ApproxIndex, PanelSearch, exact_topk, page_vectors, panel_location, strip_vectors
from comicnb.store import EMBEDDINGS, MASKS, METADATA, STORE_NAME, StoreMismatchError, file_sha256

DIM = 32


def unit(x: np.ndarray) -> np.ndarray:
    """Rows scaled to unit length."""
    return (x / np.linalg.norm(x, axis=-1, keepdims=True)).astype(np.float32)


def random_vectors(rows: int, dim: int = DIM, seed: int = 0) -> np.ndarray:
    """(rows, dim) random unit vectors."""
    return unit(np.random.default_rng(seed).standard_normal((rows, dim)))


def clustered_vectors(rows: int, dim: int = 64, clusters: int = 50, seed: int = 0) -> np.ndarray:
    """(rows, dim) unit vectors from a mixture of gaussians, closer to real embeddings than uniform noise."""
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((clusters, dim))
    return unit(centres[rng.integers(clusters, size=rows)] + 0.5 * rng.standard_normal((rows, dim)))


def brute_force(queries: np.ndarray, vectors: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Reference top-k by full sort of the cosine scores."""
    scores = unit(queries) @ vectors.T  # (Q, M)
    ids = np.argsort(-scores, axis=1)[:, :k]
    return np.take_along_axis(scores, ids, axis=1), ids


def assert_same_hits(found: tuple[np.ndarray, np.ndarray], expected: tuple[np.ndarray, np.ndarray]) -> None:
    """Equal score lists and equal sets of ids per query."""
    np.testing.assert_allclose(found[0], expected[0], rtol=1e-5, atol=1e-5)
    assert [set(row) for row in found[1].tolist()] == [set(row) for row in expected[1].tolist()]


def zarr_array(path: Path, data: np.ndarray, chunk: int) -> zarr.Array:
    """An uncompressed zarr v3 array of data, chunked along the first axis."""
    array = zarr.create_array(
        store=str(path), shape=data.shape, dtype=data.dtype, chunks=(chunk, *data.shape[1:]), compressors=None
    )
    array[:] = data
    return array


def page_store(rows: int = 40, panels: int = 6, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """(P, N, D) unit panel vectors, exactly zero in padding slots, and the (P, N) mask; page 3 has no panels."""
    rng = np.random.default_rng(seed)
    counts = rng.integers(1, panels + 1, size=rows)
    counts[3] = 0
    mask = np.arange(panels) < counts[:, None]  # (P, N)
    vectors = random_vectors(rows * panels, seed=seed).reshape(rows, panels, DIM) * mask[..., None]
    return vectors.astype(np.float32), mask


def write_store(
    folder: Path, vectors: np.ndarray, mask: np.ndarray, panel_index: dict[int, list[int]] | None = None
) -> Path:
    """A panel_embeddings.zarr store as Stage 3 writes it, with metadata.json beside it; returns the store path.

    Each page's metadata ``panel_index`` (the page-JSON index of the panel in each slot) is its slots 0..n-1, as on
    a page where the reader skipped nothing, except for the pages given in ``panel_index``; None leaves the field out.
    """
    store = folder / STORE_NAME
    group = zarr.open_group(str(store), mode="w")
    group.create_array(EMBEDDINGS, data=vectors, chunks=(7, *vectors.shape[1:]), compressors=None)
    group.create_array(MASKS, data=mask.astype(np.uint8), chunks=(7, mask.shape[1]), compressors=None)
    records = []
    for p in range(len(vectors)):
        count = int(mask[p].sum())
        record = dict(
            book_id=f"book_{p // 10}",
            page_name=f"page_{p % 10:02d}",
            num_panels=count,
            embedding_indices=[p * mask.shape[1] + slot for slot in range(count)],
            split="train",
        )
        if panel_index is not None:
            record["panel_index"] = panel_index.get(p, list(range(count)))
        records.append(record)
    (folder / METADATA).write_text(json.dumps(records))
    return store


def test_stored_vector_finds_itself_first() -> None:
    vectors = random_vectors(500)
    scores, ids = exact_topk(vectors[[3, 77, 499]], vectors, k=5, chunk_rows=64)
    assert ids[:, 0].tolist() == [3, 77, 499]
    np.testing.assert_allclose(scores[:, 0], 1.0, atol=1e-5)
    assert (np.diff(scores, axis=1) <= 0).all()


@pytest.mark.parametrize("chunk_rows", [1, 100, 333, 1000, 5000])
def test_exact_matches_brute_force_in_memory(chunk_rows: int) -> None:
    vectors, queries = random_vectors(1000), random_vectors(6, seed=1)
    expected = brute_force(queries, vectors, 10)
    assert_same_hits(exact_topk(queries, vectors, k=10, chunk_rows=chunk_rows), expected)
    assert_same_hits(
        exact_topk(torch.from_numpy(queries), torch.from_numpy(vectors), k=10, chunk_rows=chunk_rows), expected
    )


@pytest.mark.parametrize(("zarr_chunk", "chunk_rows"), [(64, 1), (64, 100), (70, 333), (1000, 65536), (333, 1000)])
def test_exact_matches_brute_force_on_zarr(tmp_path: Path, zarr_chunk: int, chunk_rows: int) -> None:
    vectors, queries = random_vectors(1000), random_vectors(6, seed=1)
    found = exact_topk(queries, zarr_array(tmp_path / "v.zarr", vectors, zarr_chunk), k=10, chunk_rows=chunk_rows)
    assert_same_hits(found, brute_force(queries, vectors, 10))


def test_batch_equals_one_query_at_a_time() -> None:
    vectors, queries = random_vectors(800), random_vectors(5, seed=2)
    batch = exact_topk(queries, vectors, k=7, chunk_rows=128)
    for i, query in enumerate(queries):
        one = exact_topk(query, vectors, k=7, chunk_rows=128)
        assert_same_hits(one, (batch[0][i : i + 1], batch[1][i : i + 1]))


def test_many_queries_split_blocks_without_changing_hits(monkeypatch: pytest.MonkeyPatch) -> None:
    vectors, queries = random_vectors(600), random_vectors(40, seed=8)
    monkeypatch.setattr(search, "SCORE_ELEMENTS", 40 * 7)  # 7 rows per matmul instead of whole blocks
    assert_same_hits(exact_topk(queries, vectors, k=10, chunk_rows=256), brute_force(queries, vectors, 10))


def test_unnormalised_store_scored_by_cosine() -> None:
    vectors, queries = random_vectors(300), random_vectors(4, seed=3)
    scales = np.random.default_rng(4).uniform(0.1, 10, size=(300, 1)).astype(np.float32)
    found = exact_topk(queries * 3, vectors * scales, k=8, chunk_rows=50, normalized=False)
    assert_same_hits(found, brute_force(queries, vectors, 8))


def test_page_shaped_store_with_mask(tmp_path: Path) -> None:
    vectors, mask = page_store()
    vectors[~mask] = random_vectors(int((~mask).sum()), seed=9)  # masked slots that are not zero must still go
    flat, flat_mask = vectors.reshape(-1, DIM), mask.reshape(-1)
    queries = random_vectors(5, seed=5)
    expected_scores, real_ids = brute_force(queries, flat[flat_mask], 10)
    expected = expected_scores, np.flatnonzero(flat_mask)[real_ids]
    store = zarr_array(tmp_path / "v.zarr", vectors, 7)
    for source in (vectors, store):
        assert_same_hits(exact_topk(queries, source, k=10, mask=mask, chunk_rows=50), expected)
    pages, slots = panel_location(expected[1], mask.shape[1])
    assert mask[pages, slots].all()


def test_zero_padding_never_returned_even_without_mask() -> None:
    vectors, mask = page_store()
    vectors[mask, 0] = -np.abs(vectors[mask, 0]) - 0.5  # every real panel scores below the padding's exact 0
    query = np.eye(DIM, dtype=np.float32)[0]
    scores, ids = exact_topk(query, vectors, k=int(mask.sum()) + 5, chunk_rows=30)
    real = ids[0][ids[0] >= 0]
    assert sorted(real.tolist()) == np.flatnonzero(mask.reshape(-1)).tolist()
    assert (scores[0][len(real) :] == -np.inf).all() and (ids[0][len(real) :] == -1).all()
    assert (scores[0][: len(real)] < 0).all()


def test_page_vectors_are_renormalised_masked_means() -> None:
    e = np.eye(4, dtype=np.float32)
    vectors = np.stack([[e[0], e[1], e[2]], [e[3], e[3], 0 * e[0]], [e[2], e[0], e[1]], np.zeros((3, 4))])
    mask = np.array([[1, 1, 0], [1, 1, 0], [1, 0, 0], [0, 0, 0]], dtype=bool)  # masked slots need not be zero
    half = 1 / np.sqrt(2)
    expected = [[half, half, 0, 0], [0, 0, 0, 1], [0, 0, 1, 0], [0, 0, 0, 0]]  # the page without panels: zero
    for chunk_rows in (3, 6, 100):  # one, two or all pages per block
        np.testing.assert_allclose(
            page_vectors(vectors.astype(np.float32), mask, chunk_rows=chunk_rows), expected, atol=1e-6
        )


def test_approx_index_agrees_with_exact() -> None:
    vectors, queries = clustered_vectors(4000), clustered_vectors(100, seed=1)
    index = ApproxIndex.build(vectors, chunk_rows=1000, threads=1)
    exact_ids = exact_topk(queries, vectors, k=10)[1]
    scores, ids = index.search(queries, k=10, threads=1)
    recall = np.mean([len(set(a) & set(b)) / 10 for a, b in zip(ids.tolist(), exact_ids.tolist())])
    assert recall >= 0.95
    np.testing.assert_allclose(scores, np.einsum("qd,qkd->qk", unit(queries), vectors[ids]), atol=2e-3)


def test_approx_index_skips_padding_and_roundtrips(tmp_path: Path) -> None:
    vectors, mask = page_store()
    index = ApproxIndex.build(vectors, mask, expansion_search=200, threads=1)
    assert len(index.index) == mask.sum()
    queries = random_vectors(8, seed=6)
    scores, ids = index.search(queries, k=300)  # more than there are panels: the tail is empty
    found = ids[ids >= 0]
    assert mask.reshape(-1)[found].all() and (scores[ids < 0] == -np.inf).all()
    index.save(tmp_path / "index")
    with pytest.raises(FileExistsError):
        index.save(tmp_path / "index")
    loaded = ApproxIndex.load(tmp_path / "index")
    assert loaded.index.expansion_search == 200
    for got, want in zip(loaded.search(queries, k=10), index.search(queries, k=10)):
        np.testing.assert_array_equal(got, want)


def test_panel_search_names_hits(tmp_path: Path) -> None:
    vectors, mask = page_store()
    finder = PanelSearch(write_store(tmp_path, vectors, mask))
    hits = finder.query(vectors[12, 1], k=4)
    first = hits.iloc[0]
    assert (first.page_index, first.slot, first.book_id, first.page_name) == (12, 1, "book_1", "page_02")
    assert first.panel_id == 12 * mask.shape[1] + 1 and first.panel_index == 1  # no panel_index in the metadata
    assert first.score == pytest.approx(1.0, abs=1e-5) and hits["rank"].tolist() == [1, 2, 3, 4]
    assert mask[hits.page_index, hits.slot].all()
    own = finder.panel_id([12, 20], [1, 0])
    near = finder.neighbours(own, k=3, exclude_self=True)
    assert len(near) == 6 and not set(zip(near["query"], near.panel_id)) & {(0, own[0]), (1, own[1])}
    with_self = finder.neighbours(own, k=3)
    assert with_self.groupby("query").panel_id.first().tolist() == own.tolist()


def test_panel_search_with_index_matches_exact(tmp_path: Path) -> None:
    vectors, mask = page_store()
    store = write_store(tmp_path, vectors, mask)
    index = ApproxIndex.build(zarr.open_group(str(store), mode="r"), expansion_search=300, threads=1)
    exact, approx = PanelSearch(store), PanelSearch(store, index=index)
    query = random_vectors(3, seed=7)
    assert exact.query(query, k=5).panel_id.tolist() == approx.query(query, k=5).panel_id.tolist()


def test_similar_pages_ranks_the_page_first(tmp_path: Path) -> None:
    vectors, mask = page_store()
    finder = PanelSearch(write_store(tmp_path, vectors, mask))
    pages = finder.similar_pages([0, 7, 39], k=5)
    assert pages.groupby("query").page_index.first().tolist() == [0, 7, 39]
    assert pages[pages["rank"] == 1].score.to_numpy() == pytest.approx(1.0, abs=1e-5)
    assert 3 not in pages.page_index.tolist()  # the page without panels has no vector to match
    others = finder.similar_pages(7, k=5, exclude_self=True)
    assert len(others) == 5 and 7 not in others.page_index.tolist()
    assert others.page_name.iloc[0] == finder.pages.page_name[others.page_index.iloc[0]]


def test_strips_are_every_run_of_consecutive_real_panels(tmp_path: Path) -> None:
    vectors, mask = page_store()
    strips, where = strip_vectors(vectors, 3, mask, chunk_rows=7 * 6)  # blocks of 7 pages: strips never cross them
    expected = [(p, s) for p in range(len(mask)) for s in range(mask.shape[1] - 2) if mask[p, s : s + 3].all()]
    assert [tuple(w) for w in where] == expected
    page, start = expected[5]
    mean = vectors[page, start : start + 3].sum(axis=0)
    assert np.allclose(strips[5], mean / np.linalg.norm(mean), atol=1e-6)


def test_similar_strips_find_the_strip_itself_first(tmp_path: Path) -> None:
    vectors, mask = page_store()
    finder = PanelSearch(write_store(tmp_path, vectors, mask))
    page = int(np.flatnonzero(mask.sum(axis=1) >= 4)[0])
    hits = finder.similar_strips(page, first_slot=1, width=3, k=4)
    assert (hits.page_index.iloc[0], hits.first_slot.iloc[0]) == (page, 1) and hits.score.iloc[0] == pytest.approx(1)
    assert all(mask[p, s : s + 3].all() for p, s in zip(hits.page_index, hits.first_slot))  # every hit: 3 real panels
    assert len(hits) == 4 and hits.score.is_monotonic_decreasing
    with pytest.raises(ValueError, match="no strip"):
        finder.similar_strips(3, 0, width=2)  # page 3 has no panels


def test_panel_search_reports_slot_and_json_panel_index_apart(tmp_path: Path) -> None:
    vectors, mask = page_store()
    page = int(np.flatnonzero(mask.sum(axis=1) == 3)[0])  # a page with 3 stored panels
    # The reader skipped the page's JSON panel 1 (a bad box): slots 0, 1, 2 hold JSON panels 0, 2, 3.
    finder = PanelSearch(write_store(tmp_path, vectors, mask, panel_index={page: [0, 2, 3]}))
    hit = finder.query(vectors[page, 1], k=1).iloc[0]
    assert (hit.page_index, hit.slot, hit.panel_index) == (page, 1, 2)
    assert hit.panel_id == page * mask.shape[1] + 1 and hit.score == pytest.approx(1.0, abs=1e-5)
    last = finder.neighbours(finder.panel_id(page, 2), k=1).iloc[0]  # look-up by stored panel: the same mapping
    assert (last.slot, last.panel_index) == (2, 3)
    plain = 0 if page != 0 else 1  # a page where the reader skipped nothing: slot and panel_index agree
    other = finder.query(vectors[plain, mask[plain].sum() - 1], k=1).iloc[0]
    assert (other.page_index, other.slot, other.panel_index) == (plain, mask[plain].sum() - 1, mask[plain].sum() - 1)


def test_overlap_recall_counts_shared_ids_per_row() -> None:
    truth = np.array([[1, 2, 3, 4], [5, 6, 7, 8]])
    assert overlap_recall(truth[:, ::-1], truth) == 1.0  # order within a row does not matter
    assert overlap_recall(np.array([[4, 3, 9, 9], [0, 0, 0, 0]]), truth) == 0.25


def with_panel_fields(store: Path, data_root: Path | None) -> None:
    """Add what a new store's metadata holds per panel (texts, boxes) and per page (image_path), and its data_root."""
    path = store.parent / METADATA
    records = json.loads(path.read_text())
    for p, record in enumerate(records):
        record["texts"] = [f"text {p}.{slot}" for slot in range(record["num_panels"])]
        record["boxes"] = [[slot, p, slot + 1.0, p + 1.0] for slot in range(record["num_panels"])]
        record["image_path"] = f"{record['book_id']}/{record['page_name']}.jpg"
    path.write_text(json.dumps(records))
    if data_root is not None:
        zarr.open_group(str(store), mode="r+").attrs.update(data_root=str(data_root))


def test_panel_search_hits_carry_text_image_and_box(tmp_path: Path) -> None:
    vectors, mask = page_store()
    store = write_store(tmp_path, vectors, mask)
    with_panel_fields(store, tmp_path / "data")
    hit = PanelSearch(store).query(vectors[12, 1], k=1).iloc[0]
    assert (hit.page_index, hit.slot) == (12, 1)
    assert hit.text == "text 12.1" and hit.box == [1.0, 12.0, 2.0, 13.0]
    assert hit.image_path == str(tmp_path / "data" / "book_1" / "page_02.jpg")  # under the store's data_root
    near = PanelSearch(store).neighbours(PanelSearch(store).panel_id(20, 0), k=3)
    assert near.text.tolist() == [f"text {p}.{s}" for p, s in zip(near.page_index, near.slot)]


def test_an_older_store_without_panel_texts_still_answers(tmp_path: Path) -> None:
    vectors, mask = page_store()
    hits = PanelSearch(write_store(tmp_path, vectors, mask)).query(vectors[12, 1], k=3)
    assert list(hits.columns) == search.PANEL_COLUMNS
    assert (hits.text == "").all() and hits.box.isna().all() and hits.image_path.isna().all()


class FakeModel:
    """A panel encoder as model_from_checkpoint returns it: which checkpoint file it came from, and encode_query."""

    def __init__(self, path: Path | None) -> None:
        self.checkpoint_path = None if path is None else str(path)
        self.checkpoint_sha256 = None if path is None else file_sha256(path)

    def encode_query(self, images: torch.Tensor | None = None, texts: list[str] | None = None) -> torch.Tensor:
        return torch.ones(len(texts), DIM, requires_grad=True)


def test_panel_search_encodes_queries_only_with_the_stores_checkpoint(tmp_path: Path) -> None:
    made_from, other = tmp_path / "best_model.pt", tmp_path / "other.pt"
    made_from.write_bytes(b"the weights the store was made with")
    other.write_bytes(b"other weights")
    vectors, mask = page_store()
    store = write_store(tmp_path, vectors, mask)
    zarr.open_group(str(store), mode="r+").attrs.update(
        checkpoint_sha256=file_sha256(made_from), checkpoint=str(made_from)
    )
    finder = PanelSearch(store)
    queries = finder.encode_query(FakeModel(made_from), texts=["Is it getting dark?"])
    assert isinstance(queries, np.ndarray) and queries.shape == (1, DIM)
    with pytest.raises(StoreMismatchError) as refused:
        finder.encode_query(FakeModel(other), texts=["Is it getting dark?"])
    assert str(made_from) in str(refused.value) and str(other) in str(refused.value)
    with pytest.raises(StoreMismatchError, match="model_from_checkpoint"):
        finder.encode_query(FakeModel(None), texts=["Is it getting dark?"])  # a model that cannot say its checkpoint
    with pytest.raises(StoreMismatchError, match=str(other)):
        PanelSearch(store, checkpoint=other)
    assert PanelSearch(store, checkpoint=made_from).checkpoint == made_from
    with pytest.raises(ValueError, match="checkpoint=PATH"):
        finder.encode_query(texts=["Is it getting dark?"])  # no model given and none to load
    (tmp_path / "old").mkdir()
    unrecorded = PanelSearch(write_store(tmp_path / "old", vectors, mask))  # a store made without provenance
    with pytest.raises(StoreMismatchError, match="records no checkpoint_sha256"):
        unrecorded.encode_query(FakeModel(made_from), texts=["Is it getting dark?"])
