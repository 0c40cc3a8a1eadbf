"""Every params file matches its notebook, and every notebook has one literal-only, typed parameters cell."""

import ast
import json
from pathlib import Path

import papermill
import pytest
import yaml

from comicnb.runner import numbered_notebooks

ROOT = Path(__file__).resolve().parent.parent
NOTEBOOKS = numbered_notebooks(ROOT / "notebooks")
PARAM_FILES = sorted((ROOT / "params").glob("*/*.yaml"))


def test_the_workbook_has_notebooks_and_a_demo_profile():
    assert [nb.stem[:2] for nb in NOTEBOOKS] == [f"{i:02d}" for i in range(1, len(NOTEBOOKS) + 1)]
    assert {p.stem for p in (ROOT / "params" / "demo").glob("*.yaml")} == {nb.stem for nb in NOTEBOOKS}


@pytest.mark.parametrize("path", PARAM_FILES, ids=lambda p: f"{p.parent.name}/{p.name}")
def test_params_file_keys_are_declared_by_the_notebook(path):
    notebook = ROOT / "notebooks" / f"{path.stem}.ipynb"
    assert notebook.is_file(), f"{path} names no notebook"
    declared = papermill.inspect_notebook(str(notebook))
    values = yaml.safe_load(path.read_text()) or {}
    assert set(values) <= set(declared), f"{path}: unknown keys {sorted(set(values) - set(declared))}"
    for key, value in values.items():
        default = ast.literal_eval(declared[key]["default"])
        assert isinstance(value, type(default)) or (isinstance(default, float) and isinstance(value, int)), (
            f"{path}: {key}={value!r} is not of the notebook's type {type(default).__name__}"
        )


@pytest.mark.parametrize("notebook", NOTEBOOKS, ids=lambda p: p.stem)
def test_parameters_cell_is_literals_with_types(notebook):
    cells = json.loads(notebook.read_text())["cells"]
    tagged = [c for c in cells if "parameters" in c.get("metadata", {}).get("tags", [])]
    assert len(tagged) == 1, "exactly one cell tagged 'parameters'"
    for stmt in ast.parse("".join(tagged[0]["source"])).body:
        assert isinstance(stmt, ast.AnnAssign), f"parameters are annotated assignments: {ast.unparse(stmt)}"
        ast.literal_eval(stmt.value)  # raises on anything but a literal
    assert "run_dir" in papermill.inspect_notebook(str(notebook))


@pytest.mark.parametrize("notebook", NOTEBOOKS, ids=lambda p: p.stem)
def test_committed_notebook_is_clean(notebook):
    cells = json.loads(notebook.read_text())["cells"]
    code = [c for c in cells if c["cell_type"] == "code"]
    assert not any(c.get("outputs") or c.get("execution_count") for c in code), "strip outputs before committing"


@pytest.mark.parametrize("path", PARAM_FILES, ids=lambda p: f"{p.parent.name}/{p.name}")
def test_a_params_file_states_only_what_it_changes(path):
    """Each setting has one default, in its notebook (which repeats its config's): a profile overrides, never
    restates, so a changed default is never silently pinned by a copy."""
    declared = papermill.inspect_notebook(str(ROOT / "notebooks" / f"{path.stem}.ipynb"))
    values = yaml.safe_load(path.read_text()) or {}
    restated = [key for key, value in values.items() if value == ast.literal_eval(declared[key]["default"])]
    assert restated == [], f"{path} restates the notebook's defaults of {restated}"
