"""Run the numbered notebooks in order with papermill, render them to HTML, and summarise the run.

A run reads ``params/<profile>/<notebook>.yaml`` for each notebook, injects ``run_dir`` so every notebook of
the run reads and writes the same ``outputs/<run>/``, and stops at the first failing notebook with an error
that names the notebook and the cell.
"""

from __future__ import annotations

import json
import re
import time
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import nbformat
import papermill
import yaml
from nbconvert import HTMLExporter

from comicnb.paths import git_revision, project_root

NOTEBOOK_PATTERN = re.compile(r"^\d\d_[a-z0-9_]+\.ipynb$")


class RunError(RuntimeError):
    """A notebook of the run failed or was misconfigured."""


@dataclass
class NotebookResult:
    """What one notebook of a run did."""

    notebook: str
    status: str  # "ok", "failed" or "not run"
    seconds: float = 0.0
    html: str | None = None
    error: str | None = None


@dataclass
class RunSummary:
    """The ``summary.json`` of a run."""

    run: str
    profile: str
    run_dir: str
    git_revision: str
    started: str
    notebooks: list[NotebookResult] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        """True when every notebook ran."""
        return all(n.status == "ok" for n in self.notebooks)

    def write(self, path: Path) -> None:
        """Write the summary as JSON."""
        path.write_text(json.dumps(asdict(self), indent=2) + "\n", encoding="utf-8")


def numbered_notebooks(notebooks_dir: Path) -> list[Path]:
    """The ``NN_name.ipynb`` notebooks of a folder, in number order."""
    return sorted(p for p in notebooks_dir.iterdir() if NOTEBOOK_PATTERN.match(p.name))


def load_params(params_dir: Path, profile: str, notebook: Path) -> dict:
    """The parameters of ``notebook`` under ``profile`` (an empty dict when the profile has no file for it)."""
    path = params_dir / profile / f"{notebook.stem}.yaml"
    if not path.is_file():
        return {}
    values = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    if not isinstance(values, dict):
        raise RunError(f"{path}: expected a mapping of parameter names to values, got {type(values).__name__}")
    return values


def unknown_parameters(notebook: Path, params: dict) -> list[str]:
    """Keys of ``params`` (plus the injected ``run_dir``) that the notebook's ``parameters`` cell does not define.

    papermill only warns on an unknown parameter; a typo in a params file would silently run the defaults.
    """
    declared = papermill.inspect_notebook(str(notebook))
    return sorted({*params, "run_dir"} - set(declared))


def check_params(notebooks: list[Path], params_dir: Path, profile: str) -> dict[str, dict]:
    """Load every notebook's parameters for ``profile`` and fail on any key the notebook does not declare."""
    resolved = {}
    for nb in notebooks:
        params = load_params(params_dir, profile, nb)
        unknown = unknown_parameters(nb, params)
        if unknown:
            source = f"params/{profile}/{nb.stem}.yaml or the runner"
            raise RunError(f"{nb.name} does not declare {unknown} (set by {source})")
        resolved[nb.stem] = params
    return resolved


def render_html(executed: Path) -> Path:
    """Render an executed notebook to HTML beside it."""
    body, _ = HTMLExporter(template_name="lab").from_notebook_node(nbformat.read(executed, as_version=4))
    html = executed.with_suffix(".html")
    html.write_text(body, encoding="utf-8")
    return html


def describe_failure(nb: Path, exc: papermill.PapermillExecutionError) -> str:
    """One line naming the notebook, the cell and the exception."""
    first_line = (exc.source or "").strip().splitlines()[:1]
    where = f"cell {exc.cell_index}" + (f" (`{first_line[0][:60]}`)" if first_line else "")
    return f"{nb.name}, {where}: {exc.ename}: {exc.evalue}"


def execute(nb: Path, run_dir: Path, params: dict, root: Path, log_output: bool) -> NotebookResult:
    """Execute one notebook into ``run_dir`` and render it; a failure is returned, not raised."""
    executed = run_dir / nb.name
    start = time.perf_counter()
    try:
        papermill.execute_notebook(
            str(nb), str(executed), parameters=params, cwd=str(root), progress_bar=False, log_output=log_output
        )
    except papermill.PapermillExecutionError as exc:
        result = NotebookResult(nb.stem, "failed", time.perf_counter() - start, error=describe_failure(nb, exc))
    else:
        result = NotebookResult(nb.stem, "ok", time.perf_counter() - start)
    if executed.exists():
        result.html = render_html(executed).name
    return result


def new_run_dir(outputs: Path, profile: str, run: str | None) -> Path:
    """A new, empty ``outputs/<run>/`` (default name: profile and time); an existing non-empty one is refused."""
    run = run or f"{profile}-{datetime.now().strftime('%Y%m%d-%H%M%S')}"
    run_dir = outputs / run
    if run_dir.exists() and any(run_dir.iterdir()):
        raise RunError(f"{run_dir} already holds a run; choose another --run name")
    run_dir.mkdir(parents=True, exist_ok=True)
    return run_dir


def run(
    profile: str = "demo",
    run: str | None = None,
    *,
    only: list[str] | None = None,
    root: str | Path | None = None,
    log_output: bool = False,
) -> RunSummary:
    """Run the profile's notebooks in order into ``outputs/<run>/``; raise ``RunError`` at the first failure."""
    root = project_root(root)
    notebooks = numbered_notebooks(root / "notebooks")
    if only:
        notebooks = [nb for nb in notebooks if nb.stem in only or nb.stem[:2] in only]
    if not notebooks:
        raise RunError(f"no notebooks to run in {root / 'notebooks'} (only={only})")
    if not (root / "params" / profile).is_dir():
        raise RunError(f"no profile {profile!r}: {root / 'params' / profile} does not exist")
    all_params = check_params(notebooks, root / "params", profile)
    run_dir = new_run_dir(root / "outputs", profile, run)
    rel_run_dir = str(run_dir.relative_to(root))
    resolved = {stem: {**params, "run_dir": rel_run_dir} for stem, params in all_params.items()}
    (run_dir / "params.yaml").write_text(yaml.safe_dump(resolved, sort_keys=False), encoding="utf-8")
    summary = RunSummary(
        run_dir.name, profile, rel_run_dir, git_revision(root), datetime.now(UTC).isoformat(timespec="seconds")
    )
    for nb in notebooks:
        if not summary.ok:
            summary.notebooks.append(NotebookResult(nb.stem, "not run"))
            continue
        print(f"[comicnb] {nb.name} ...", flush=True)
        result = execute(nb, run_dir, resolved[nb.stem], root, log_output)
        print(f"[comicnb] {nb.name}: {result.status} in {result.seconds:.1f} s", flush=True)
        summary.notebooks.append(result)
        summary.write(run_dir / "summary.json")
    summary.write(run_dir / "summary.json")
    if not summary.ok:
        failed = next(n for n in summary.notebooks if n.status == "failed")
        executed = run_dir / f"{failed.notebook}.ipynb"
        raise RunError(f"run {summary.run} stopped: {failed.error} (executed copy: {executed})")
    return summary
