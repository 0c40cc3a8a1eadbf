"""The notebook figures' tables and drawings."""

import math

import matplotlib

matplotlib.use("Agg")
import pandas as pd  # noqa: E402
from PIL import Image  # noqa: E402

from comicnb import figures  # noqa: E402


def pages_table(tmp_path) -> pd.DataFrame:
    Image.new("RGB", (200, 100), "white").save(tmp_path / "p.png")
    return pd.DataFrame([dict(page_id="b/p", book_id="b", split="train", image_path="p.png", image_width=200,
                              image_height=100, boxes=[[0, 0, 100, 50], [100, 0, 200, 100]], texts=["hi", ""])])


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
