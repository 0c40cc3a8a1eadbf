"""Shared test settings and fixtures' builders."""

from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

from comicnb.corpus import load_corpus, save_corpus, synth


@pytest.fixture(autouse=True, scope="session")
def single_thread() -> Iterator[None]:
    """Tests use tiny tensors, which gain nothing from intra-op threads; on a shared CPU OpenMP spin-waits cost 20x."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def small_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A run folder of notebook 01's artefacts for a small clean synthetic corpus: 3 books of 6 pages, one book per
    split; one per test module, so a module's checkpoints never meet another's."""
    root = tmp_path_factory.mktemp("small-run")
    synth.generate(root / "data", books=3, pages=6, seed=3, page_size=(320, 480))
    save_corpus(load_corpus(root / "data", split=(0.34, 0.33, 0.33), seed=0), root / "run")
    return root / "run"
