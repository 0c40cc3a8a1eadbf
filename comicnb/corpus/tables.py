"""The run artefacts of notebook 01: the pages table (JSON lines), the problems table and corpus.json."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from comicnb.corpus.reader import PAGE_COLUMNS, Corpus


def save_pages(pages: pd.DataFrame, path: str | Path) -> Path:
    """Write the pages table as JSON lines (one page a line; list columns stay lists); returns the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", encoding="utf-8") as out:
        for record in pages.to_dict("records"):
            out.write(json.dumps(record, ensure_ascii=False, default=_json_scalar) + "\n")
    return path


def _json_scalar(value: Any) -> Any:
    """numpy scalars and arrays as plain Python values for json.dumps."""
    if isinstance(value, (np.generic, np.ndarray)):
        return value.tolist()
    raise TypeError(f"{type(value).__name__} is not JSON serialisable")


def load_pages(path: str | Path) -> pd.DataFrame:
    """Read a pages table written by save_pages (one written before pages had text-free twins reads as twin-less)."""
    with Path(path).open(encoding="utf-8") as lines:
        records = [json.loads(line) for line in lines if line.strip()]
    pages = pd.DataFrame(records, columns=list(records[0]) if records else list(PAGE_COLUMNS))
    if "text_free_path" not in pages.columns:
        pages.insert(min(len(pages.columns), PAGE_COLUMNS.index("text_free_path")), "text_free_path", "")
    return pages


def save_corpus(corpus: Corpus, run_dir: str | Path) -> list[Path]:
    """Write the artefacts notebook 02 reads: pages.jsonl, problems.csv and corpus.json (data_root and options)."""
    out = Path(run_dir)
    out.mkdir(parents=True, exist_ok=True)
    corpus.problems.to_csv(out / "problems.csv", index=False)
    meta = dict(data_root=str(corpus.data_root.resolve()), pages=len(corpus.pages), options=corpus.options)
    (out / "corpus.json").write_text(json.dumps(meta, indent=2, default=list) + "\n", encoding="utf-8")
    return [save_pages(corpus.pages, out / "pages.jsonl"), out / "problems.csv", out / "corpus.json"]


def corpus_record(run_dir: str | Path) -> dict[str, Any]:
    """What notebook 01 recorded of a run's corpus (``corpus.json``): ``data_root``, the page count and the reading
    ``options`` (bbox_format, max_panels, labels...). The one reader of that file."""
    path = Path(run_dir) / "corpus.json"
    if not path.is_file():
        raise FileNotFoundError(f"{path} is missing: run notebook 01 with run_dir={str(run_dir)!r}")
    return json.loads(path.read_text(encoding="utf-8"))


def load_run_pages(run_dir: str | Path) -> tuple[pd.DataFrame, Path]:
    """The pages table a run's notebook 01 wrote, and the data_root its image paths are relative to."""
    run_dir = Path(run_dir)
    if not (run_dir / "pages.jsonl").is_file():
        raise FileNotFoundError(f"{run_dir / 'pages.jsonl'} is missing: run notebook 01 with run_dir={str(run_dir)!r}")
    return load_pages(run_dir / "pages.jsonl"), Path(corpus_record(run_dir)["data_root"])
