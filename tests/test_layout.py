"""The package layout: what an import pulls in, the re-exports of each subpackage, and the seed's import paths."""

from __future__ import annotations

import importlib
import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
# Each probe imports something in a fresh interpreter (this one has imported everything already) and prints, as JSON,
# which of the watched modules that import loaded.
WATCHED = ("accelerate", "transformers", "sentence_transformers", "comicnb.stage3", "comicnb.store.writer")
REPORT = "import json, sys; print(json.dumps(sorted(m for m in sys.modules if m.startswith({watched!r}))))"
PROBES = {
    "store_and_search": "import comicnb.search, comicnb.store",
    "model_from_checkpoint": "from comicnb.stage3.model import model_from_checkpoint",
}


@pytest.fixture(scope="module")
def loaded_by() -> Iterator[dict[str, set[str]]]:
    """The watched modules each probe's import loads, the probes run side by side in fresh interpreters."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    code = {name: f"{probe}\n{REPORT.format(watched=WATCHED)}" for name, probe in PROBES.items()}
    running = {
        name: subprocess.Popen(
            [sys.executable, "-c", text], cwd=ROOT, env=env, text=True, stdout=subprocess.PIPE, stderr=subprocess.PIPE
        )
        for name, text in code.items()
    }
    results = {}
    try:
        for name, process in running.items():
            out, err = process.communicate(timeout=300)
            assert process.returncode == 0, f"{PROBES[name]!r} failed:\n{err}"
            results[name] = set(json.loads(out.strip().splitlines()[-1]))
    finally:
        for process in running.values():
            process.kill()
    yield results


def test_reading_and_searching_a_store_loads_neither_accelerate_nor_the_model(loaded_by: dict[str, set[str]]) -> None:
    loaded = loaded_by["store_and_search"]
    assert "accelerate" not in loaded
    assert not {m for m in loaded if m.startswith(("comicnb.stage3", "comicnb.store.writer", "transformers"))}, loaded


def test_loading_a_checkpoint_loads_no_training_code(loaded_by: dict[str, set[str]]) -> None:
    loaded = loaded_by["model_from_checkpoint"]
    assert "comicnb.stage3.model" in loaded  # the probe did import the model
    assert "comicnb.stage3.trainer" not in loaded and "comicnb.stage3.objectives" not in loaded, loaded


def test_the_seeds_model_import_path_is_the_stage3_model() -> None:
    from comicnb.model import PanelFeatureExtractor, model_from_checkpoint
    from comicnb.stage3 import model

    assert PanelFeatureExtractor is model.PanelFeatureExtractor
    assert model_from_checkpoint is model.model_from_checkpoint


@pytest.mark.parametrize("package", ["comicnb.corpus", "comicnb.corpus.synth", "comicnb.store", "comicnb.model"])
def test_every_re_exported_name_resolves(package: str) -> None:
    module = importlib.import_module(package)
    missing = [name for name in module.__all__ if not hasattr(module, name)]
    assert module.__all__ and not missing, missing


def test_the_store_imports_its_writer_only_when_asked() -> None:
    import comicnb.store
    from comicnb.store import writer

    assert comicnb.store.generate is writer.generate and comicnb.store.EmbedConfig is writer.EmbedConfig
    with pytest.raises(AttributeError, match="no attribute 'not_a_name'"):
        comicnb.store.not_a_name  # noqa: B018
