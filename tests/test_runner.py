"""The runner executes notebooks in order, renders them, summarises, and stops at a failure naming the cell."""

import json
from pathlib import Path

import nbformat
import pytest

from comicnb.runner import RunError, run


def notebook(path: Path, params: str, body: str) -> None:
    """Write a two-cell notebook: a tagged parameters cell and a body."""
    nb = nbformat.v4.new_notebook()
    cell = nbformat.v4.new_code_cell(params)
    cell.metadata["tags"] = ["parameters"]
    nb.cells = [cell, nbformat.v4.new_code_cell(body)]
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nbformat.write(nb, path)


@pytest.fixture
def project(tmp_path: Path) -> Path:
    (tmp_path / "pyproject.toml").write_text("[project]\nname = 'x'\n")
    (tmp_path / "notebooks").mkdir()
    (tmp_path / "params" / "p").mkdir(parents=True)
    notebook(
        tmp_path / "notebooks" / "01_first.ipynb",
        'run_dir: str = ""\nn: int = 1',
        "from pathlib import Path\nPath(run_dir, 'first.txt').write_text(str(n * 2))",
    )
    notebook(
        tmp_path / "notebooks" / "02_second.ipynb",
        'run_dir: str = ""',
        "from pathlib import Path\nassert Path(run_dir, 'first.txt').read_text() == '14'",
    )
    (tmp_path / "params" / "p" / "01_first.yaml").write_text("n: 7\n")
    return tmp_path


def test_run_executes_in_order_with_params_and_writes_html_and_summary(project):
    summary = run("p", "r1", root=project)
    run_dir = project / "outputs" / "r1"
    assert [n.status for n in summary.notebooks] == ["ok", "ok"]
    assert (run_dir / "first.txt").read_text() == "14"
    assert (run_dir / "01_first.html").read_text().lstrip().lower().startswith("<!doctype html")
    on_disk = json.loads((run_dir / "summary.json").read_text())
    assert [n["notebook"] for n in on_disk["notebooks"]] == ["01_first", "02_second"]
    assert all(n["seconds"] > 0 for n in on_disk["notebooks"])
    assert "n: 7" in (run_dir / "params.yaml").read_text()


def test_a_failing_notebook_stops_the_run_and_is_named_with_its_cell(project):
    (project / "params" / "p" / "01_first.yaml").write_text("n: 3\n")
    with pytest.raises(RunError, match=r"02_second\.ipynb, cell 2 .*AssertionError"):
        run("p", "r2", root=project)
    on_disk = json.loads((project / "outputs" / "r2" / "summary.json").read_text())
    assert [n["status"] for n in on_disk["notebooks"]] == ["ok", "failed"]
    assert (project / "outputs" / "r2" / "02_second.html").exists()


def test_unknown_parameter_fails_before_anything_runs(project):
    (project / "params" / "p" / "02_second.yaml").write_text("typo_epochs: 3\n")
    with pytest.raises(RunError, match="typo_epochs"):
        run("p", "r3", root=project)
    assert not (project / "outputs" / "r3").exists()


def test_an_existing_run_is_never_overwritten(project):
    run("p", "r4", root=project, only=["01"])
    with pytest.raises(RunError, match="already holds a run"):
        run("p", "r4", root=project)
