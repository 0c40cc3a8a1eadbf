"""Notebook 05's retrieval and strips: hand-made vectors whose answers are worked out in comments, then a tiny run
(a generated corpus and a store made by a tiny untrained Stage 3 model) for shapes, masking against zero-filling and
the raw backbone features."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch
from tiny_runs import tiny_store_run

from comicnb.evaluation.retrieval import (
    KINDS,
    RAW,
    STAGE3,
    V1,
    RetrievalSpace,
    claim_check,
    label_retrieval,
    query_variants,
    raw_backbone_features,
    raw_space,
    retrieval_table,
    seed_claim,
    split_panels,
)
from comicnb.evaluation.strips import (
    MEAN,
    STRIP,
    compare_strips,
    majority,
    page_neighbours,
    split_pages,
    strip_neighbours,
)
from comicnb.stage3.batches import PanelPageDataset
from comicnb.stage4.view import RunView, open_run

DIM = 32  # the tiny Stage 3 model's feature_dim


def on_circle(degrees: list[float]) -> np.ndarray:
    """Unit vectors at these angles: cosine order is angular-distance order."""
    radians = np.deg2rad(degrees)
    return np.stack([np.cos(radians), np.sin(radians)], axis=1).astype(np.float32)


# Scene A at 0, 12 and 20 degrees, scene B at 90, 100 and 33 (the last sits among A's panels).
ANGLES = [0, 12, 20, 90, 100, 33]
SCENES = ["A", "A", "A", "B", "B", "B"]
# Each query's ranking of the other five (self excluded), nearest first, R marking its own scene:
#   0: 12 R, 20 R, 33, 90, 100           first hit 1, AP (1/1 + 2/2) / 2 = 1
#  12: 20 R, 0 R, 33, 90, 100            first hit 1, AP 1
#  20: 12 R, 33, 0 R, 90, 100            first hit 1, AP (1/1 + 2/3) / 2 = 5/6
#  90: 100 R, 33 R, 20, 12, 0            first hit 1, AP 1
# 100: 90 R, 33 R, 20, 12, 0             first hit 1, AP 1
#  33: 20, 12, 0, 90 R, 100 R            first hit 4, AP (1/4 + 2/5) / 2 = 0.325
# Were the query's own panel not left out, 33 would find itself first and score recall@1.
EXPECTED_MAP = (1 + 1 + 5 / 6 + 1 + 1 + 0.325) / 6


# ----------------------------------------------------------------------------------------------------------------
# Hand-made vectors


def test_label_retrieval_on_two_scenes():
    vectors = on_circle(ANGLES)
    found = label_retrieval(vectors, vectors, SCENES, ks=(1, 3, 5))
    assert found["recall@1"] == pytest.approx(5 / 6)  # all but 33
    assert found["recall@3"] == pytest.approx(5 / 6)  # 33's first hit is 4th
    assert found["recall@5"] == 1.0
    assert found["map"] == pytest.approx(EXPECTED_MAP)
    assert (found["queries"], found["skipped"]) == (6, 0)


def test_a_panel_never_finds_itself_and_unlabelled_or_lonely_queries_are_skipped():
    # Panel 6 is scene C alone: only itself shares its label, so left out it could never hit (no_match). Panel 7 has
    # no scene. Both sit on top of panel 0 and lie between the others as keys, but neither is anyone's match.
    vectors = on_circle([*ANGLES, 0, 0])
    scenes = [*SCENES, "C", "none"]
    found = label_retrieval(vectors, vectors, scenes, ks=(1,))
    assert (found["queries"], found["skipped"], found["no_match"], found["unlabelled"]) == (6, 2, 1, 1)
    # Panel 0 now finds 6 and 7 (identical, other labels) before 12: its first hit drops from rank 1 to 3.
    assert found["recall@1"] == pytest.approx(4 / 6)
    # Only the panels that can ask (say, the ones with an image) are queries; keys are every panel all the same.
    asks = np.array([True, False, False, True, False, True, False, False])
    only = label_retrieval(vectors, vectors, scenes, asks, ks=(1,))
    assert (only["queries"], only["skipped"]) == (3, 0)
    assert only["recall@1"] == pytest.approx(1 / 3)  # 90 hits 100; 0 meets 6 and 7 first; 33 meets 20 first


def test_retrieval_table_has_a_row_per_kind_method_and_label():
    vectors = on_circle(ANGLES)
    labels = pd.DataFrame(dict(book_id=["b"] * 6, character=["x", "y"] * 3, scene=SCENES))
    everyone = {kind: np.ones(6, bool) for kind in KINDS}
    good = RetrievalSpace(STAGE3, dict.fromkeys(KINDS, vectors), dict.fromkeys(KINDS, vectors), everyone)
    flat = vectors.copy()
    flat[:] = vectors[0]  # every score ties: ranking falls back to key order
    bad = RetrievalSpace(V1, dict.fromkeys(KINDS, flat), dict.fromkeys(KINDS, flat), everyone)
    table = retrieval_table({STAGE3: good, V1: bad}, labels, ks=(1, 5))
    assert len(table) == 3 * 2 * 2  # kinds x methods x (character, scene)
    assert list(table.columns[:5]) == ["query", "method", "label", "recall@1", "recall@5"]
    row = table[(table["query"] == "image_only") & (table.method == STAGE3) & (table.label == "scene")].iloc[0]
    assert row["recall@1"] == pytest.approx(5 / 6) and row["map"] == pytest.approx(EXPECTED_MAP)
    assert set(table.label) == {"character", "scene"}
    assert (table.queries == 6).all()
    assert retrieval_table([good], labels[["book_id"]]).label.unique().tolist() == ["book_id"]  # real data: books


def claim_table(masked: float, v1: float) -> pd.DataFrame:
    rows = [
        dict(query="image_only", method=STAGE3, label="character", **{"recall@1": masked}, queries=20),
        dict(query="image_only", method=V1, label="character", **{"recall@1": v1}, queries=20),
        dict(query="text_only", method=STAGE3, label="character", **{"recall@1": 0.0}, queries=20),
    ]
    return pd.DataFrame(rows)


def test_the_seed_claim_is_checked_by_the_relative_change():
    def check(masked: float, v1: float, labels: list[str] | None = None) -> dict:
        return claim_check(claim_table(masked, v1), labels=labels).iloc[0].to_dict()

    confirmed = check(0.7, 0.5)
    assert confirmed["change"] == pytest.approx(0.4) and confirmed["confirms"] is True  # 0.7 / 0.5 - 1 = +40 %
    refuted = check(0.55, 0.5)
    assert refuted["change"] == pytest.approx(0.1) and refuted["absolute"] == pytest.approx(0.05)
    assert refuted["confirms"] is False  # +10 % < +30 %
    assert check(0.65, 0.5)["confirms"] is True and check(0.4, 0.5)["confirms"] is False  # +30 % holds; a loss fails
    nothing = check(0.3, 0.0)  # v1 finds nothing: no relative change, masked fusion finding anything confirms it
    assert np.isnan(nothing["change"]) and nothing["confirms"] is True and check(0.0, 0.0)["confirms"] is False
    assert check(0.3, 0.5, labels=["scene"])["confirms"] is None  # no image-only figures of that label
    sentences = seed_claim(claim_table(0.7, 0.5)).split(". ")
    assert len(sentences) == 2 and sentences[0].startswith("Same character")  # one per label, then the caveat
    assert "confirms" in sentences[0] and "confirms" in seed_claim(claim_table(0.7, 0.5), books=10)
    few = seed_claim(claim_table(0.7, 0.5), books=2)  # the demo's two held-out books: the figures, no verdict
    assert "no verdict" in few and "2 held-out books" in few and "confirms" not in few and "refutes" not in few


def test_majority_scene_of_a_page():
    assert majority(["x", "y", "y", "none"]) == "y"
    assert majority(["x", "y"]) == "x"  # a tie: the first met in reading order
    assert majority(["none", None]) is None
    panels = pd.DataFrame(
        dict(page_index=[4, 4, 4, 2], book_id=["a", "a", "a", "b"], scene=["s", "t", "t", "none"], character="c")
    )
    pages = split_pages(panels)
    assert pages[["page_index", "book_id", "panels"]].to_dict("list") == dict(
        page_index=[2, 4], book_id=["b", "a"], panels=[1, 3]
    )
    assert pd.isna(pages.scene.iloc[0]) and pages.scene.iloc[1] == "t"  # page 2 has no labelled scene


# Four test pages (store pages 5..8 of 9): books a a b b, scenes x y x y. The strips cluster by scene, the mean
# Stage 3 vectors by book; each page's single nearest other page (k=1) is then its scene twin, or its book twin.
PAGES = pd.DataFrame(dict(page_index=[5, 6, 7, 8], book_id=list("aabb"), scene=list("xyxy")))


def store_indexed(rows: list[list[float]]) -> np.ndarray:
    vectors = np.full((9, 2), 7.0, dtype=np.float32)  # pages outside the test split: never neighbours
    vectors[5:] = rows
    return vectors


STRIPS = store_indexed([[1, 0], [0, 1], [0.9, 0.1], [0.1, 0.9]])
MEANS = store_indexed([[1, 0], [0.9, 0.1], [0, 1], [0.1, 0.9]])


def test_page_neighbours_and_compare_strips():
    per_page = page_neighbours(STRIPS[5:], PAGES, k=1)
    assert per_page.scene.tolist() == [1.0] * 4 and per_page.book_id.tolist() == [0.0] * 4
    assert [list(n) for n in per_page.neighbours] == [[2], [3], [0], [1]]
    table = compare_strips(STRIPS, MEANS, PAGES, k=1).set_index(["method", "label"])
    assert table.loc[(STRIP, "scene"), "precision@1"] == 1.0 and table.loc[(STRIP, "book_id"), "precision@1"] == 0.0
    assert table.loc[(MEAN, "book_id"), "precision@1"] == 1.0 and table.loc[(MEAN, "scene"), "precision@1"] == 0.0
    assert (table.pages == 4).all()
    assert table.chance.tolist() == pytest.approx([1 / 3] * 4)  # each page shares each label with 1 of 3 others
    # k=3 takes every other page: one shares the book, one the scene, whatever the vectors.
    assert compare_strips(STRIPS, MEANS, PAGES, k=3)["precision@3"].tolist() == pytest.approx([1 / 3] * 4)


def test_strip_neighbours_of_one_page_under_both_methods():
    table = strip_neighbours(5, STRIPS, MEANS, PAGES, k=2)
    assert table[["method", "rank", "page_index"]].values.tolist() == [
        [STRIP, 1, 7],
        [STRIP, 2, 8],  # 8 at 84 degrees from 5, 6 at 90
        [MEAN, 1, 6],
        [MEAN, 2, 8],
    ]
    assert table.same_scene.tolist() == [True, False, False, False]
    assert table.same_book.tolist() == [False, False, True, False]
    with pytest.raises(ValueError, match="not among"):
        strip_neighbours(0, STRIPS, MEANS, PAGES)


# ----------------------------------------------------------------------------------------------------------------
# A tiny run


@pytest.fixture(scope="module")
def inputs(tmp_path_factory: pytest.TempPathFactory) -> RunView:
    """4 books of 4 pages (one book held out for test), a store made by a tiny untrained model, loaded."""
    root = tmp_path_factory.mktemp("eval-retrieval")
    return open_run(tiny_store_run(root, DIM))


@pytest.fixture(scope="module")
def panels(inputs: RunView) -> pd.DataFrame:
    return split_panels(inputs.pages, inputs.data_root)


def test_test_split_panels_and_their_labels(inputs: RunView, panels: pd.DataFrame):
    test_pages = np.flatnonzero(inputs.pages.split == "test")
    assert set(panels.page_index) == set(test_pages)
    assert len(panels) == inputs.pages.num_panels.iloc[test_pages].sum()
    assert (panels.panel_id == panels.page_index * inputs.max_panels + panels.slot).all()
    assert {"book_id", "character", "scene"} <= set(panels.columns)
    with pytest.raises(ValueError, match="no stored page"):
        split_panels(inputs.pages, inputs.data_root, split="holdout")


def test_masked_queries_are_single_modality_encodings_and_v1_is_not(inputs: RunView, panels: pd.DataFrame):
    spaces = query_variants(inputs, panels.panel_id)
    masked, v1 = spaces[STAGE3], spaces[V1]
    rows, slots = inputs.locate(panels.panel_id)
    for space in (masked, v1):
        assert all(space.queries[k].shape == space.keys[k].shape == (len(panels), DIM) for k in KINDS)
    np.testing.assert_array_equal(masked.queries["multimodal"], inputs.fused[rows, slots])
    # The image-only query of a test page's panels is what the model makes of those panels with vision as their only
    # modality, from their crops (cropped by the store writer's own dataset).
    model, page = inputs.model, int(panels.page_index.iloc[0])
    dataset = PanelPageDataset(
        inputs.pages.iloc[[page]], inputs.data_root, model.image_transform, model.visual.image_size, inputs.max_panels
    )
    with torch.no_grad():
        alone = model.encode_image_only(dataset[0]["images"]).numpy()
    on_page = (panels.page_index == page).to_numpy()
    np.testing.assert_allclose(masked.queries["image_only"][on_page], alone, atol=1e-5)
    # v1's zero-filled slots are "present": their LayerNorm bias enters the gate and the mix, so every query moves.
    for kind in ("image_only", "text_only"):
        moved = np.linalg.norm(v1.queries[kind] - masked.queries[kind], axis=1)
        assert (moved[masked.asks[kind]] > 1e-3).all(), kind
    # Keys: a panel with every modality fuses the same either way; one without text is zero-filled only in v1.
    train = split_panels(inputs.pages, inputs.data_root, split="train")
    spaces = query_variants(inputs, train.panel_id)
    without_text = ~spaces[STAGE3].asks["text_only"]
    assert without_text.any() and (~without_text).any()
    gap = np.linalg.norm(spaces[V1].keys["multimodal"] - spaces[STAGE3].keys["multimodal"], axis=1)
    assert (gap[without_text] > 1e-3).all() and (gap[~without_text] < 1e-5).all()
    stored = query_variants(inputs, train.panel_id, v1_keys="stored")[V1]
    np.testing.assert_array_equal(stored.keys["image_only"], spaces[STAGE3].keys["image_only"])


def test_raw_features_are_the_backbones_own(inputs: RunView, panels: pd.DataFrame):
    model = inputs.model
    raw = raw_backbone_features(inputs, panels.panel_id, batch=5)  # batches that split pages
    assert raw.image.shape == (len(panels), sum(model.visual.feature_widths))
    assert raw.text.shape == (len(panels), model.text.sentence_dim)
    # Through the learned adapters they become exactly the stored per-modality embeddings.
    rows, slots = inputs.locate(panels.panel_id)
    stored = inputs.modalities[rows, slots]
    with torch.no_grad():
        vision = model.visual.adapt(torch.from_numpy(raw.image)).numpy()
        text = model.text.adapter(torch.from_numpy(raw.text[raw.has_text])).numpy()
    np.testing.assert_allclose(vision, stored[:, 0], atol=1e-4)
    np.testing.assert_allclose(text, stored[raw.has_text, 1], atol=1e-4)
    space = raw_space(raw)
    assert space.keys["multimodal"].shape[1] == raw.image.shape[1] + raw.text.shape[1]
    table = retrieval_table({**query_variants(inputs, panels.panel_id), RAW: space}, panels)
    assert len(table) == len(KINDS) * 3 * 2  # kinds x methods x labels
    asked = {kind: int(space.asks[kind].sum()) for kind in KINDS}
    assert ((table.queries + table.skipped) == table["query"].map(asked)).all()
    scores = table[["recall@1", "recall@5", "recall@10", "map"]].to_numpy()
    assert ((scores >= 0) & (scores <= 1)).all()
    assert set(claim_check(table).label) == {"character", "scene"}


def test_a_gallery_without_scenes_shows_books_only(tmp_path) -> None:
    """A corpus without ground truth (real pages) has books but no scenes: the gallery says what it knows."""
    import matplotlib.pyplot as plt
    from PIL import Image as PILImage

    from comicnb.evaluation.figures import strip_gallery

    images = {}
    for i in range(3):
        images[i] = tmp_path / f"{i}.png"
        PILImage.new("RGB", (20, 30), "white").save(images[i])
    hits = pd.DataFrame(
        [dict(method="stage4 strip", rank=r, page_index=r, score=0.5, book_id="b", same_book=r == 1) for r in (1, 2)]
    )
    figure = strip_gallery(0, hits, images)
    titles = [ax.get_title() for ax in figure.axes if ax.get_title()]
    assert titles == ["query page 0", "stage4 strip #1\nsame book", "stage4 strip #2\nother book"]
    plt.close(figure)
