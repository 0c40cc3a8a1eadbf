"""The ground truth: the sidecar written beside a corpus, and the per-panel truth read back from it."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd

from comicnb.corpus.synth.story import CAST

VERSION = 1  # the sidecar's "version" field
# What the sidecar keeps of each planned page and panel; boxes, sizes and formats are drawing details.
_PAGE_TRUTH = ("label", "layout", "reading_direction", "naive_order_correct", "scene")
_PANEL_TRUTH = ("characters", "scene", "action", "action_step", "action_steps", "caption", "lines")


def ground_truth(plan: dict, bbox_format: str) -> dict:
    """The sidecar (docs/corpus.md section 3): the plan without its drawing details."""
    books = {
        b: {
            "direction": book["direction"],
            "pages": {
                p: {
                    **{k: page[k] for k in _PAGE_TRUTH},
                    "panels": [
                        {"reading_position": i, **{k: panel[k] for k in _PANEL_TRUTH}}
                        for i, panel in enumerate(page["panels"])
                    ],
                }
                for p, page in book["pages"].items()
            },
        }
        for b, book in plan["books"].items()
    }
    return {
        "seed": plan["seed"],
        "version": VERSION,
        "bbox_format": bbox_format,
        "characters": CAST,
        "books": books,
        "dirty": plan["dirty"],
    }


def panel_truth(data_root: str | Path, metadata: list[dict] | pd.DataFrame) -> pd.DataFrame:
    """The sidecar's truth for each stored panel (one row per panel id of the store's metadata records).

    Columns: panel_id, page_index, book_id, page_name, characters (ids), character (the first one's name, or
    "none"), scene, caption. Only a synthetic corpus has a sidecar; for others this raises FileNotFoundError.
    """
    truth = json.loads((Path(data_root) / "ground_truth.json").read_text(encoding="utf-8"))
    names = {cid: c["name"] for cid, c in truth["characters"].items()}
    records = metadata.to_dict("records") if isinstance(metadata, pd.DataFrame) else metadata
    rows = []
    for page in records:
        panels = truth["books"][page["book_id"]]["pages"][page["page_name"]]["panels"]
        for panel_id, index in zip(page["embedding_indices"], page["panel_index"], strict=True):
            panel = panels[index]
            rows.append(
                {
                    "panel_id": panel_id,
                    "page_index": page["page_index"],
                    "book_id": page["book_id"],
                    "page_name": page["page_name"],
                    "characters": panel["characters"],
                    "character": names[panel["characters"][0]] if panel["characters"] else "none",
                    "scene": panel["scene"],
                    "caption": panel["caption"],
                }
            )
    return pd.DataFrame(rows)
