"""A corpus's ground truth, read from its sidecar (``ground_truth.json`` beside the data) once for every user.

Only the embedded synthetic corpus has a sidecar: per panel its characters, scene, story beat, lines and caption, per
page its layout and reading direction, per book its direction. Real data has none, and everything that needs truth
says so. A sidecar that does not describe every stored page (a corpus renamed or rearranged after it was drawn) is not
used, with a warning naming the first page it lacks, since its truth would belong to other panels.
"""

from __future__ import annotations

import hashlib
import json
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

SIDECAR = "ground_truth.json"
PAGE_TRUTH = ("layout", "reading", "reading_direction", "naive_order_correct")  # reading: sidecar version 3 on


@dataclass
class CorpusTruth:
    """What the sidecar says of a store's panels; ``panels`` is None (and ``note`` says why) without one."""

    panels: pd.DataFrame | None = None  # comicnb.corpus.synth.panel_truth: one row per stored panel
    note: str = ""  # why there is no truth
    path: Path | None = None  # the sidecar read
    sha256: str | None = None  # its bytes' hash: what task sets built from it record
    directions: dict[str, str] = field(default_factory=dict)  # book -> ltr / rtl
    speakers: dict[str, str] = field(default_factory=dict)  # character id -> the name a text shows
    pages: dict[str, dict[str, Any]] = field(default_factory=dict)  # "book/page" -> PAGE_TRUTH

    @property
    def found(self) -> bool:
        """Whether the corpus has usable truth."""
        return self.panels is not None


def sidecar_path(data_root: str | Path | None) -> Path | None:
    """The sidecar of a corpus, where it has one."""
    path = Path(data_root) / SIDECAR if data_root else None
    return path if path is not None and path.is_file() else None


def _detected_directions(data_root: str | Path | None) -> dict[str, str]:
    """The books' reading directions `comicnb detect` was given (its detection.json), for a corpus it made."""
    path = Path(data_root) / "detection.json" if data_root else None
    if path is None or not path.is_file():
        return {}
    return dict(json.loads(path.read_text(encoding="utf-8")).get("books", {}))


def read_truth(data_root: str | Path | None, metadata: pd.DataFrame | list[dict]) -> CorpusTruth:
    """The truth of the stored panels (rows of the store's page ``metadata``) from the corpus's sidecar."""
    path = sidecar_path(data_root)
    if path is None:
        note = f"no {SIDECAR} beside the data: a corpus without ground truth (real data)"
        return CorpusTruth(note=note, directions=_detected_directions(data_root))
    from comicnb.corpus.synth import panel_truth  # the synthetic corpus's reader, only needed where there is one

    try:
        panels = panel_truth(data_root, metadata)
    except (KeyError, IndexError) as missing:
        note = f"{path} does not describe this corpus (no entry for {missing})"
        warnings.warn(f"{note}: no ground truth; panels are labelled by book only", stacklevel=2)
        return CorpusTruth(note=note)
    raw = path.read_bytes()
    sidecar = json.loads(raw)
    books = sidecar.get("books", {})
    return CorpusTruth(
        panels=panels,
        path=path,
        sha256=hashlib.sha256(raw).hexdigest(),
        directions={b: book["direction"] for b, book in books.items() if book.get("direction")},
        speakers={cid: c.get("name", cid) for cid, c in sidecar.get("characters", {}).items()},
        pages={
            f"{b}/{name}": {k: page.get(k) for k in PAGE_TRUTH}
            for b, book in books.items()
            for name, page in book.get("pages", {}).items()
        },
    )


def panel_labels(metadata: pd.DataFrame, data_root: str | Path | None) -> pd.DataFrame:
    """Labels of each stored panel, in store order: book, and the ground truth's first character and scene where the
    corpus has a sidecar that describes it; real data has only the book."""
    truth = read_truth(data_root, metadata)
    if truth.found:
        return truth.panels[["book_id", "character", "scene"]]
    return pd.DataFrame({"book_id": np.repeat(metadata.book_id.to_numpy(), metadata.num_panels.to_numpy())})
