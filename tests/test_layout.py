"""The package layout: what an import pulls in, the re-exports of each subpackage, and the seed's import paths."""

from __future__ import annotations

import ast
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
WATCHED = (
    "accelerate",
    "transformers",
    "sentence_transformers",
    "comicnb.stage3",
    "comicnb.store.writer",
    "comicnb.stage4",
    "comicnb.loop",
)
REPORT = "import json, sys; print(json.dumps(sorted(m for m in sys.modules if m.startswith({watched!r}))))"
PROBES = {
    "store_and_search": "import comicnb.search, comicnb.store",
    "model_from_checkpoint": "from comicnb.stage3.model import model_from_checkpoint",
    # Stage 4 inference: load a checkpoint, score task sets, export, search strips, notebook 05's study.
    "stage4_inference": "import comicnb.stage4.scoring, comicnb.stage4.export, comicnb.evaluation.report",
}
TRAINING = ("comicnb.stage3.trainer", "comicnb.stage3.objectives", "comicnb.stage4.trainer", "comicnb.loop")
# The pipeline, floor first: a module may import its own layer and the layers before it, never a later one.
LAYERS = (
    ("comicnb", "comicnb.checkpoint", "comicnb.schedule", "comicnb.precision", "comicnb.seed", "comicnb.paths")
    + ("comicnb.settings", "comicnb.loop", "comicnb.metrics"),
    ("comicnb.corpus", "comicnb.detect"),  # detect makes a corpus from page images
    ("comicnb.stage3", "comicnb.model"),
    ("comicnb.store", "comicnb.search", "comicnb.agreement", "comicnb.figures"),
    ("comicnb.stage4",),
    ("comicnb.comics", "comicnb.comicspap"),
    ("comicnb.evaluation",),
    ("comicnb.cli", "comicnb.runner", "comicnb.__main__"),
)


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
    assert not loaded & set(TRAINING), loaded


def test_stage4_inference_loads_no_training_code(loaded_by: dict[str, set[str]]) -> None:
    loaded = loaded_by["stage4_inference"]
    assert {"comicnb.stage4.scoring", "comicnb.stage4.export", "comicnb.stage4.model"} <= loaded  # the probe ran
    assert not loaded & set(TRAINING), loaded  # (Accelerate itself may come in through transformers' imports)


def layer(module: str) -> int:
    """The pipeline layer of a comicnb module: the layer whose longest prefix names it."""
    found = [
        (len(p), i) for i, prefixes in enumerate(LAYERS) for p in prefixes if module == p or module.startswith(p + ".")
    ]
    assert found, f"{module} is in no layer of LAYERS: place it"
    return max(found)[1]


def imports(path: Path, module: str) -> Iterator[str]:
    """Every comicnb module a source file imports, at the top or inside a function (relative imports resolved)."""
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            yield from (a.name for a in node.names if a.name.startswith("comicnb"))
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")
                base = ".".join([*parts[: len(parts) - node.level + 1], *([node.module] if node.module else [])])
            if base.startswith("comicnb"):
                yield base


def test_every_import_follows_the_pipeline() -> None:
    against = []
    for path in sorted((ROOT / "comicnb").rglob("*.py")):
        module = ".".join(path.relative_to(ROOT).with_suffix("").parts).removesuffix(".__init__")
        against += [(module, target) for target in imports(path, module) if layer(target) > layer(module)]
    assert against == [], "imports running back up the pipeline (corpus -> stage3 -> store -> stage4 -> evaluation)"


def test_the_readme_maps_every_subpackage() -> None:
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    packages = sorted(p.parent.name for p in (ROOT / "comicnb").glob("*/__init__.py"))
    modules = sorted(p.stem for p in (ROOT / "comicnb").glob("*.py") if not p.name.startswith("_"))
    missing = [f"{name}/" for name in packages if f"comicnb/{name}/" not in readme]
    missing += [f"{name}.py" for name in modules if f"{name}.py" not in readme and f"comicnb.{name}`" not in readme]
    assert missing == [], f"the README's map of the package lacks {missing}"


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
