"""The notebook figures' tables and drawings."""

import math

import matplotlib

matplotlib.use("Agg")
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
from PIL import Image  # noqa: E402

from comicnb import figures  # noqa: E402


def pages_table(tmp_path) -> pd.DataFrame:
    Image.new("RGB", (200, 100), "white").save(tmp_path / "p.png")
    return pd.DataFrame(
        [
            dict(
                page_id="b/p",
                book_id="b",
                split="train",
                image_path="p.png",
                image_width=200,
                image_height=100,
                boxes=[[0, 0, 100, 50], [100, 0, 200, 100]],
                texts=["hi", ""],
            )
        ]
    )


def test_panel_table_has_a_row_per_panel_with_its_measures(tmp_path):
    table = figures.panel_table(pages_table(tmp_path))
    assert list(table.text_chars) == [2, 0] and list(table.has_text) == [True, False]
    assert table.area.tolist() == [0.25, 0.5]
    assert math.isclose(table.log2_aspect[0], 1.0) and math.isclose(table.log2_aspect[1], 0.0)


def test_page_grid_draws_every_box_with_its_order(tmp_path):
    fig = figures.page_grid(pages_table(tmp_path), tmp_path, n=4, cols=2)
    drawn = fig.axes[0]
    assert len(drawn.patches) == 2 and [t.get_text() for t in drawn.texts] == ["1", "2"]
    assert sum(ax.has_data() for ax in fig.axes) == 1


def test_loss_curves_draw_train_and_validation_per_term():
    steps = pd.DataFrame(dict(step=[1, 2, 3, 4], a=[4.0, 3.0, 2.0, 1.0], b=[1.0, 1.0, 0.5, 0.5]))
    epochs = pd.DataFrame(dict(step=[0, 2, 4], val_a=[4.0, 2.5, 1.5]))
    fig = figures.loss_curves(steps, epochs, ("a", "b"))
    assert [ax.get_title() for ax in fig.axes] == ["a", "b"]
    assert len(fig.axes[0].lines) == 3 and len(fig.axes[1].lines) == 2  # b has no validation column
    assert list(fig.axes[0].lines[2].get_ydata()) == [4.0, 2.5, 1.5]
    assert all(ax.get_legend() is not None for ax in fig.axes)  # each panel says which line is which


def test_projection_gives_twelve_books_twelve_colours():
    points = np.random.default_rng(0).normal(size=(48, 2))
    labels = pd.DataFrame(dict(book_id=[f"book_{i:03d}" for i in range(12)] * 4))
    fig = figures.projection(points, labels, ("book_id",))
    colours = {tuple(np.round(c, 3)) for c in fig.axes[0].collections[0].get_facecolors()}
    assert len(colours) == 12  # seaborn's default palette repeats its 10 hues: books shared colours


def test_a_notebook_finding_is_one_line_without_its_source():
    import warnings

    from comicnb.notes import Finding, format_finding, warn

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        warn("fusion loses to its best input")
    [finding] = caught
    assert finding.category is Finding and issubclass(Finding, UserWarning)
    shown = warnings.formatwarning(finding.message, finding.category, finding.filename, finding.lineno)
    assert shown == "Warning: fusion loses to its best input\n"
    assert "UserWarning" in format_finding("other", UserWarning, "x.py", 3, "warn()")  # others as Python shows them


def test_gate_weights_only_count_present_modalities():
    weights = np.array([[0.6, 0.3, 0.1], [0.5, 0.2, 0.3], [0.9, 0.0, 0.1], [0.7, 0.0, 0.3]])
    mask = np.array([[1, 1, 1], [1, 1, 1], [1, 0, 1], [1, 0, 1]])  # the last two panels have no text (weight 0)
    fig = figures.gate_weights(weights, mask, ("vision", "text", "composition"))
    assert [t.get_text() for t in fig.axes[0].get_xticklabels()] == ["vision", "text", "composition"]
    # Violins are cut at their data: each spans the weights of the panels that have the modality, and no more.
    spans = [
        (path.vertices[:, 1].min(), path.vertices[:, 1].max())
        for violin in fig.axes[0].collections
        for path in violin.get_paths()
    ]
    assert np.allclose(spans, [(0.5, 0.9), (0.2, 0.3), (0.1, 0.3)])  # text from 0.2: its masked zeros left out


def test_projection_keeps_one_point_per_vector_and_separates_clusters():
    rng = np.random.default_rng(0)
    vectors = np.concatenate([rng.normal(0, 0.05, (10, 16)) + 1, rng.normal(0, 0.05, (10, 16)) - 1])
    for method in ("pca", "tsne"):
        points = figures.project_2d(vectors, method)
        assert points.shape == (20, 2)
        assert np.linalg.norm(points[:10].mean(0) - points[10:].mean(0)) > points[:10].std(0).max()


def test_gallery_shows_the_query_and_each_hit(tmp_path):
    pages = pages_table(tmp_path)
    hits = pd.DataFrame(
        dict(
            query=[0, 0],
            rank=[1, 2],
            book_id="b",
            page_name="p",
            page_index=0,
            slot=[1, 0],
            panel_index=[1, 0],
            score=[0.9, 0.5],
        )
    )
    fig = figures.gallery([("a text query", "Look out!")], hits, pages, tmp_path)
    assert len(fig.axes) == 3 and fig.axes[0].texts[0].get_text() == "Look out!"
    assert fig.axes[1].images[0].get_array().shape[:2] == (100, 100)  # the second panel's crop
    assert fig.axes[2].get_title().startswith("2. 0.50")


def test_gallery_crops_the_stored_slot_after_a_skipped_panel(tmp_path):
    pages = pages_table(tmp_path).assign(panel_index=[[0, 2]])  # the reader skipped JSON panel 1 (a bad box)
    hits = pd.DataFrame(
        dict(query=[0], rank=[1], book_id="b", page_name="p", page_index=0, slot=[1], panel_index=[2], score=[0.9])
    )  # as PanelSearch reports a hit on slot 1
    fig = figures.gallery([("a text query", "Look out!")], hits, pages, tmp_path)
    assert fig.axes[1].images[0].get_array().shape[:2] == (100, 100)  # boxes[1], the 100 x 100 right half


def test_learning_curves_say_whether_training_stopped_improving() -> None:
    from comicnb.stage4 import figures as stage4_figures

    rising = pd.DataFrame({"epoch": [0, 1, 2, 3], "val_mean_accuracy": [0.30, 0.40, 0.45, 0.50]})
    curve = stage4_figures.learning_curve(rising, 1000)
    assert curve.samples_seen.tolist() == [0, 1000, 2000, 3000]
    verdict = stage4_figures.plateau(curve)
    assert verdict["improving"] and verdict["best_epoch"] == 3 and verdict["samples_at_best"] == 3000
    assert "train longer" in stage4_figures.plateau_line("stage4", verdict)

    flat = stage4_figures.learning_curve(
        pd.DataFrame({"epoch": [0, 1, 2, 3], "val_mean_accuracy": [0.30, 0.48, 0.50, 0.49]}), 500
    )
    verdict = stage4_figures.plateau(flat)
    assert not verdict["improving"] and verdict["best_epoch"] == 2
    assert "stopped improving" in stage4_figures.plateau_line("no_transformer", verdict)
    # A last epoch that is best by less than the tolerance is a plateau, not a rise.
    barely = stage4_figures.learning_curve(
        pd.DataFrame({"epoch": [0, 1, 2], "val_mean_accuracy": [0.3, 0.5, 0.502]}), 10
    )
    assert not stage4_figures.plateau(barely)["improving"]
    figure = stage4_figures.learning_curves({"stage4": curve, "no_transformer": flat})
    assert len(figure.axes[0].lines) == 2
