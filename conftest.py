"""Each notebook under nbval runs on its own: a fixture makes its inputs in a temporary run folder.

nbval executes a notebook's cells as they are. Before the cell tagged ``parameters`` runs, the inputs the notebook
reads are made here (what the notebook before it would have written), and assignments pointing the notebook at them
are appended to that cell: papermill's own way of injecting parameters. So no notebook depends on what another one
happened to leave in ``outputs/``, and the notebooks can run in any order or one at a time.
"""

from __future__ import annotations

import ast
import functools
import shutil
import tempfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent
SMOKE_CORPUS = dict(books=4, pages=8, seed=0, dirty=True)  # notebook 01's defaults: the dirty smoke corpus


@functools.cache
def scratch() -> Path:
    """One temporary folder for this session's notebook inputs, removed at exit."""
    folder = Path(tempfile.mkdtemp(prefix="comicnb-nbval-"))
    import atexit

    atexit.register(shutil.rmtree, folder, True)
    return folder


def notebook_defaults(name: str) -> dict:
    """The parameters-cell defaults of a notebook, as Python values."""
    import papermill

    found = papermill.inspect_notebook(str(ROOT / "notebooks" / name))
    return {key: ast.literal_eval(spec["default"]) for key, spec in found.items()}


@functools.cache
def pages_run() -> Path:
    """A run folder with notebook 01's artefacts for the smoke corpus (what notebook 02 reads)."""
    from comicnb.corpus import load_corpus, save_corpus, synth

    data_root, run = scratch() / "corpus", scratch() / "run01"
    synth.generate(data_root, **SMOKE_CORPUS)
    save_corpus(load_corpus(data_root), run)
    return run


@functools.cache
def checkpoint_run() -> Path:
    """pages_run plus a Stage 3 checkpoint trained with notebook 02's own defaults (what notebook 03 reads)."""
    from comicnb.stage3.config import settings_from
    from comicnb.stage3.trainer import train_stage3

    run = scratch() / "run02"
    shutil.copytree(pages_run(), run)
    train_stage3(run, settings_from(notebook_defaults("02_stage3_training.ipynb")))
    return run


@functools.cache
def store_run() -> Path:
    """checkpoint_run plus its embedding store (what notebook 04 reads)."""
    from comicnb.store import generate

    run = scratch() / "run03"
    shutil.copytree(checkpoint_run(), run)
    generate(run)
    return run


@functools.cache
def stage4_run() -> Path:
    """store_run plus its fixed task sets and the Stage 4 model and ablations trained with notebook 04's own
    defaults (what notebook 05 reads)."""
    from comicnb.stage4.config import settings_from
    from comicnb.stage4.task_sets import build_task_sets
    from comicnb.stage4.trainer import train_models

    run = scratch() / "run04"
    shutil.copytree(store_run(), run)
    defaults = notebook_defaults("04_stage4_training.ipynb")
    build_task_sets(run, seed=defaults["seed"])
    train_models(run, settings_from(defaults), defaults["ablations"])
    return run


def notebook_inputs(name: str) -> dict[str, str]:
    """The parameters that point notebook ``name`` at inputs made for it, in a fresh run folder of its own."""
    run = scratch() / f"nb-{name[:2]}"
    if name.startswith("01_"):
        return dict(run_dir=str(run), data_root=str(scratch() / "corpus01"), synthesize="always")
    source = {"02_": pages_run, "03_": checkpoint_run, "04_": store_run, "05_": stage4_run}.get(name[:3])
    if source is None:
        return {}
    shutil.copytree(source(), run, dirs_exist_ok=True)
    return dict(run_dir=str(run))


def is_parameters_cell(item: pytest.Item) -> bool:
    """An nbval cell item whose cell carries the papermill ``parameters`` tag."""
    cell = getattr(item, "cell", None)
    return cell is not None and "parameters" in cell.get("metadata", {}).get("tags", [])


def pytest_runtest_setup(item: pytest.Item) -> None:
    """Make the notebook's inputs and inject them after its parameters, as papermill would."""
    if is_parameters_cell(item):
        injected = notebook_inputs(Path(str(item.fspath)).name)
        lines = [f"{key} = {value!r}" for key, value in injected.items()]
        item.cell.source = item.cell.source + "\n# injected by conftest.py\n" + "\n".join(lines)
