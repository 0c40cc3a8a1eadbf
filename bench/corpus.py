"""The corpus a benchmark measures: the folder given, or the demo corpus drawn into a scratch folder."""

from __future__ import annotations

import contextlib
import tempfile
from collections.abc import Iterator
from pathlib import Path


@contextlib.contextmanager
def measured_corpus(data_root: Path | None) -> Iterator[tuple[Path, Path]]:
    """(corpus folder, scratch folder); without data_root the demo corpus is generated into the scratch folder."""
    with tempfile.TemporaryDirectory() as scratch:
        if data_root is None:
            from comicnb import synth  # only needed for the default corpus

            data_root = Path(scratch) / "demo"
            synth.generate(data_root)
        yield data_root, Path(scratch)
