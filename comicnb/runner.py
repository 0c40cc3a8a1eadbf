"""Run the numbered notebooks in order with papermill, render them to HTML, and summarise the run.

A run reads ``params/<profile>/<notebook>.yaml`` for each notebook, injects ``run_dir`` so every notebook of
the run reads and writes the same ``outputs/<run>/``, and stops at the first failing notebook with an error
that names the notebook and the cell (``In [n]``, as the rendered report shows it).

An existing run folder is continued from a named notebook (``start="02"``, the command line's ``--from 02``):
the artefacts of the notebooks before it are kept and read, the named notebook and every later one run again and
replace theirs (each notebook that declares an ``overwrite`` parameter gets ``overwrite=True``, unless its parameters
say ``resume: true``: then it continues, or reuses, what it trained before). ``summary.json``
keeps the run folder's history: every invocation, with its notebooks, their parameters, status and seconds.
"""

from __future__ import annotations

import ast
import json
import re
import signal
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import nbformat
import papermill
import yaml
from nbconvert import HTMLExporter

from comicnb.papermill_engine import kernel_config
from comicnb.paths import git_revision, project_root
from comicnb.settings import closest

NOTEBOOK_PATTERN = re.compile(r"^\d\d_[a-z0-9_]+\.ipynb$")
SUMMARY = "summary.json"
PARAMS = "params.yaml"

# What each notebook of the workbook writes into its run folder and a later notebook reads (the README's pipeline
# table). A notebook not listed here counts as done when the run's history records it as ok.
ARTEFACTS: dict[str, tuple[str, ...]] = {
    "01_data_inspection": ("pages.jsonl",),
    "02_stage3_training": ("stage3/checkpoint.pt",),
    "03_embedding_generation": ("panel_embeddings.zarr",),
}


class RunError(RuntimeError):
    """A notebook of the run failed or was misconfigured."""


@dataclass
class NotebookResult:
    """What one notebook of a run did."""

    notebook: str
    status: str  # "ok", "failed", "interrupted" or "not run"
    seconds: float = 0.0
    html: str | None = None
    error: str | None = None
    started: str | None = None
    params: dict = field(default_factory=dict)


@dataclass
class RunSummary:
    """One invocation of the runner on a run folder: an entry of ``summary.json``'s history."""

    run: str
    profile: str
    run_dir: str
    git_revision: str
    started: str
    selection: str = "all"  # "all", "from 02" or "only 01 03"
    finished: str | None = None
    notebooks: list[NotebookResult] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        """True when every notebook ran."""
        return all(n.status == "ok" for n in self.notebooks)

    @property
    def status(self) -> str:
        """``ok``, ``failed``, ``interrupted`` (Ctrl-C or a TERM signal) or ``running`` (while the runner is at it)."""
        for status in ("failed", "interrupted"):
            if any(n.status == status for n in self.notebooks):
                return status
        return "ok" if self.finished else "running"

    @property
    def seconds(self) -> float:
        """Wall seconds of the notebooks that ran."""
        return sum(n.seconds for n in self.notebooks)

    def entry(self) -> dict:
        """This invocation as an entry of the history."""
        fields = asdict(self)
        del fields["run"], fields["run_dir"]
        return {**fields, "status": self.status, "seconds": self.seconds}


def read_history(run_dir: Path) -> list[dict]:
    """The history in a run folder's ``summary.json`` (oldest first); a summary of the old one-run form is one entry."""
    path = run_dir / SUMMARY
    if not path.is_file():
        return []
    data = json.loads(path.read_text(encoding="utf-8"))
    if "history" in data:
        return data["history"]
    old = {key: value for key, value in data.items() if key not in ("run", "run_dir")}
    failed = any(n.get("status") == "failed" for n in old.get("notebooks", []))
    return [{**old, "selection": "all", "status": "failed" if failed else "ok"}]


def latest_results(history: list[dict]) -> dict[str, dict]:
    """Per notebook, its result in the latest invocation that ran it (a "not run" is no result)."""
    latest = {}
    for entry in history:
        for result in entry.get("notebooks", []):
            if result.get("status") != "not run":
                latest[result["notebook"]] = result
    return latest


def write_summary(run_dir: Path, rel_run_dir: str, history: list[dict]) -> None:
    """Write ``summary.json``: the run folder's current state per notebook, then every invocation (``history``)."""
    latest = latest_results(history)
    data = {
        "run": run_dir.name,
        "run_dir": rel_run_dir,
        "notebooks": [latest[name] for name in sorted(latest)],
        "history": history,
    }
    (run_dir / SUMMARY).write_text(json.dumps(data, indent=2) + "\n", encoding="utf-8")


def write_params(run_dir: Path, history: list[dict]) -> None:
    """Write ``params.yaml``: per notebook, the parameters its artefacts in the run folder were made with."""
    latest = latest_results(history)
    resolved = {name: latest[name].get("params", {}) for name in sorted(latest)}
    (run_dir / PARAMS).write_text(yaml.safe_dump(resolved, sort_keys=False), encoding="utf-8")


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


def notebook_defaults(notebook: Path) -> dict:
    """The parameters a notebook declares, with their defaults (literals, as the parameters cell must hold)."""
    declared = papermill.inspect_notebook(str(notebook))
    return {name: ast.literal_eval(spec["default"]) for name, spec in declared.items()}


def check_params(notebooks: list[Path], params_dir: Path, profile: str) -> dict[str, dict]:
    """Every notebook's parameters under ``profile``: its defaults, with what the profile's file changes; fail on the
    keys the notebooks do not declare, all at once. (A params file states only what it changes: every setting's
    default lives in one place, and ``params.yaml`` of a run still records every parameter.)"""
    resolved, problems = {}, []
    for nb in notebooks:
        params = load_params(params_dir, profile, nb)
        unknown = unknown_parameters(nb, params)
        if unknown:
            declared = list(papermill.inspect_notebook(str(nb)))
            hints = [f"{k} (did you mean {close[0]}?)" if (close := closest(k, declared)) else k for k in unknown]
            where = f"params/{profile}/{nb.stem}.yaml"
            problems.append(f"  {nb.name} does not declare {', '.join(hints)} (set by {where})")
        resolved[nb.stem] = {**notebook_defaults(nb), **params}
    if problems:
        raise RunError("parameters the notebooks do not declare:\n" + "\n".join(problems))
    return resolved


def declares(notebook: Path, name: str) -> bool:
    """True when the notebook's parameters cell declares ``name``."""
    return name in papermill.inspect_notebook(str(notebook))


def render_html(executed: Path) -> Path:
    """Render an executed notebook to HTML beside it."""
    body, _ = HTMLExporter(template_name="lab").from_notebook_node(nbformat.read(executed, as_version=4))
    html = executed.with_suffix(".html")
    html.write_text(body, encoding="utf-8")
    return html


def describe_failure(nb: Path, exc: papermill.PapermillExecutionError) -> str:
    """One line naming the notebook, the cell (by its execution count, ``In [n]`` as in the report) and the error."""
    first_line = (exc.source or "").strip().splitlines()[:1]
    where = f"cell In [{exc.exec_count}]" if exc.exec_count is not None else f"cell {exc.cell_index}"
    where += f" (`{first_line[0][:60]}`)" if first_line else ""
    return f"{nb.name}, {where}: {exc.ename}: {exc.evalue}"


class LogLines:
    """A file for tqdm where the output is no terminal: each redraw becomes a line of its own (tqdm redraws in place
    with carriage returns, which run together in a log file)."""

    def __init__(self, stream: Any) -> None:
        self.stream = stream

    def write(self, text: str) -> None:
        line = text.replace("\r", "").rstrip()
        if line:
            self.stream.write(line + "\n")

    def flush(self) -> None:
        self.stream.flush()


def progress_bar(nb: Path) -> dict[str, Any]:
    """papermill's progress bar as the runner shows it: the notebook and the cell it is at, on stderr; redrawn every
    second on a terminal and cleared at the end, written at most once a minute into a log file and kept."""
    terminal = sys.stderr.isatty()
    return dict(
        desc=f"[comicnb] {nb.stem}",
        bar_format="{desc}: cell {n_fmt}/{total_fmt}, {elapsed} so far",
        file=sys.stderr if terminal else LogLines(sys.stderr),
        mininterval=1 if terminal else 60,
        leave=not terminal,  # a log keeps the last count on its own line; a terminal clears the bar
    )


def previous_seconds(outputs: Path, profile: str, notebook: str) -> float | None:
    """How long ``notebook`` last ran successfully in any run of ``profile`` under ``outputs/`` (None if never)."""
    latest: tuple[str, float] | None = None
    for path in outputs.glob(f"*/{SUMMARY}"):
        try:
            history = read_history(path.parent)
        except (OSError, ValueError):
            continue
        for entry in history:
            if entry.get("profile") != profile:
                continue
            for result in entry.get("notebooks", []):
                if result.get("notebook") == notebook and result.get("status") == "ok" and result.get("started"):
                    if latest is None or result["started"] > latest[0]:
                        latest = (result["started"], float(result.get("seconds") or 0.0))
    return None if latest is None else latest[1]


def execute(nb: Path, run_dir: Path, params: dict, root: Path, log_output: bool) -> NotebookResult:
    """Execute one notebook into ``run_dir`` and render it; a failure is returned, not raised. An interruption
    (KeyboardInterrupt) is returned as ``interrupted`` too, for the runner to record before it stops."""
    executed = run_dir / nb.name
    started = datetime.now(UTC).isoformat(timespec="seconds")
    start = time.perf_counter()
    try:
        with tempfile.TemporaryDirectory(prefix="comicnb-kernel-") as sockets:
            papermill.execute_notebook(
                str(nb),
                str(executed),
                parameters=params,
                cwd=str(root),
                progress_bar=False if log_output else progress_bar(nb),
                log_output=log_output,
                config=kernel_config(sockets),
            )
    except papermill.PapermillExecutionError as exc:
        status, error = "failed", describe_failure(nb, exc)
    except KeyboardInterrupt:
        status, error = "interrupted", "interrupted (Ctrl-C or a TERM signal) while it ran"
    else:
        status, error = "ok", None
    result = NotebookResult(nb.stem, status, time.perf_counter() - start, error=error, started=started, params=params)
    if executed.exists():
        result.html = render_html(executed).name
    return result


@contextmanager
def terminate_as_interrupt() -> Iterator[None]:
    """Within it, a TERM signal (a job scheduler, ``kill``) interrupts like Ctrl-C, so the run records where it
    stopped; outside the main thread, where signals cannot be handled, it does nothing."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def interrupt(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def select(notebooks: list[Path], start: str | None, only: list[str] | None) -> list[Path]:
    """The notebooks to run: all of them, those from ``start`` on, or those named in ``only`` (number or name)."""

    def named(nb: Path, names: list[str]) -> bool:
        return nb.stem in names or nb.stem[:2] in names

    if start and only:
        raise RunError("give --from or --only, not both")
    if start:
        first = next((i for i, nb in enumerate(notebooks) if named(nb, [start])), None)
        if first is None:
            raise RunError(f"--from {start}: no such notebook (there are {[nb.stem for nb in notebooks]})")
        return notebooks[first:]
    if only:
        unknown = [name for name in only if not any(named(nb, [name]) for nb in notebooks)]
        if unknown:
            raise RunError(f"--only {' '.join(unknown)}: no such notebook (there are {[nb.stem for nb in notebooks]})")
        return [nb for nb in notebooks if named(nb, only)]
    return notebooks


def missing_upstream(notebooks: list[Path], selected: list[Path], run_dir: Path) -> dict[str, list[str]]:
    """Per notebook before the last selected one and not itself selected: what the run folder lacks of it."""
    latest = latest_results(read_history(run_dir)) if run_dir.is_dir() else {}
    missing = {}
    for nb in notebooks[: notebooks.index(selected[-1])]:
        if nb in selected:
            continue
        result = latest.get(nb.stem)
        if result is not None and result.get("status") != "ok":
            missing[nb.stem] = [f"its last run {result.get('status')}"]
        elif nb.stem in ARTEFACTS:
            lacking = [name for name in ARTEFACTS[nb.stem] if not (run_dir / name).exists()]
            if lacking:
                missing[nb.stem] = lacking
        elif result is None:
            missing[nb.stem] = ["no record of it in summary.json"]
    return missing


def existing_runs(outputs: Path) -> list[str]:
    """The run folders under ``outputs/`` (those holding a summary.json), sorted."""
    return sorted(p.parent.name for p in outputs.glob("*/summary.json"))


def run_name(outputs: Path, run: str) -> str:
    """The run folder's name from ``--run``: a name, or a path to a folder directly under ``outputs/`` (as a shell
    completes it); any other path is a RunError, since runs live in ``outputs/``."""
    path = Path(run)
    if len(path.parts) == 1:
        return run
    if path.parent.resolve() == outputs.resolve() or (len(path.parts) == 2 and path.parts[0] == outputs.name):
        return path.name
    raise RunError(f"--run takes the name of a run folder under {outputs}/ (e.g. --run {path.name}), not {run}")


def resolve_run_dir(outputs: Path, profile: str, run: str | None, continuing: bool) -> Path:
    """``outputs/<run>/`` (default name: profile and time). An existing run is only continued, never rerun whole."""
    run = run_name(outputs, run) if run else f"{profile}-{datetime.now().strftime('%Y%m%d-%H%M%S')}"
    run_dir = outputs / run
    if run_dir.exists() and any(run_dir.iterdir()) and not continuing:
        raise RunError(
            f"{run_dir} already holds a run; choose another --run name, or continue it from a notebook with "
            f"--run {run} --from NN (e.g. --from 02 reruns 02 and every later notebook, keeping 01's artefacts)"
        )
    return run_dir


def run(
    profile: str = "demo",
    run: str | None = None,
    *,
    only: list[str] | None = None,
    start: str | None = None,
    root: str | Path | None = None,
    log_output: bool = False,
) -> RunSummary:
    """Run the profile's notebooks in order into ``outputs/<run>/``; raise ``RunError`` at the first failure.

    ``start`` (``--from``) runs that notebook and every later one; ``only`` runs the named ones. Either may continue
    an existing run folder, whose upstream artefacts must then be there; the error otherwise names what is missing.
    """
    root = project_root(root)
    all_notebooks = numbered_notebooks(root / "notebooks")
    if not all_notebooks:
        raise RunError(f"no notebooks to run in {root / 'notebooks'}")
    notebooks = select(all_notebooks, start, only)
    if not (root / "params" / profile).is_dir():
        profiles = sorted(p.name for p in (root / "params").iterdir() if p.is_dir())
        close = closest(profile, profiles)
        hint = f"did you mean {close[0]}? " if close else ""
        raise RunError(f"no profile {profile!r} in {root / 'params'}: {hint}(profiles: {', '.join(profiles)})")
    all_params = check_params(notebooks, root / "params", profile)
    run_dir = resolve_run_dir(root / "outputs", profile, run, continuing=bool(start or only))
    missing = missing_upstream(all_notebooks, notebooks, run_dir)
    if missing and not run:
        runs = existing_runs(root / "outputs")
        raise RunError(
            f"{notebooks[0].name} reads what earlier notebooks write: continue an existing run by naming it with --run "
            + (f"(runs in outputs/: {', '.join(runs)})" if runs else "(there is none in outputs/ yet: run them all)")
        )
    if missing:
        earliest = next(nb.stem for nb in all_notebooks if nb.stem in missing)
        what = "; ".join(f"{name}: {', '.join(items)}" for name, items in missing.items())
        raise RunError(
            f"{notebooks[0].name} reads what earlier notebooks write, and {run_dir} lacks it ({what}); "
            f"run from there: --run {run_dir.name} --from {earliest[:2]}"
        )
    history = read_history(run_dir)
    replacing = bool(history) or (run_dir.is_dir() and any(run_dir.iterdir()))
    run_dir.mkdir(parents=True, exist_ok=True)
    rel_run_dir = str(run_dir.relative_to(root))
    resolved = {}
    for nb in notebooks:
        resolved[nb.stem] = {**all_params[nb.stem], "run_dir": rel_run_dir}
        if replacing and declares(nb, "overwrite") and not resolved[nb.stem].get("resume"):
            resolved[nb.stem]["overwrite"] = True  # continuing: the notebook replaces what it wrote before
    selection = f"from {start}" if start else (f"only {' '.join(only)}" if only else "all")
    summary = RunSummary(
        run_dir.name,
        profile,
        rel_run_dir,
        git_revision(root),
        datetime.now(UTC).isoformat(timespec="seconds"),
        selection=selection,
    )
    history.append(summary.entry())
    for nb in notebooks:
        if not summary.ok:
            summary.notebooks.append(NotebookResult(nb.stem, "not run", params=resolved[nb.stem]))
            continue
        before = previous_seconds(root / "outputs", profile, nb.stem)
        estimate = f" (its last {profile} run took {before:.0f} s)" if before else ""
        print(f"[comicnb] {nb.name} ...{estimate}", flush=True)
        with terminate_as_interrupt():
            result = execute(nb, run_dir, resolved[nb.stem], root, log_output)
        print(f"[comicnb] {nb.name}: {result.status} in {result.seconds:.1f} s", flush=True)
        summary.notebooks.append(result)
        history[-1] = summary.entry()
        write_summary(run_dir, rel_run_dir, history)
        write_params(run_dir, history)
        if result.status == "interrupted":
            remaining = [n.name for n in notebooks[notebooks.index(nb) + 1 :]]
            raise RunError(
                f"run {summary.run} interrupted in {nb.name}"
                + (f" ({', '.join(remaining)} not run)" if remaining else "")
                + f": continue with --run {summary.run} --from {nb.stem[:2]}"
            )
    summary.finished = datetime.now(UTC).isoformat(timespec="seconds")
    history[-1] = summary.entry()
    write_summary(run_dir, rel_run_dir, history)
    write_params(run_dir, history)
    if not summary.ok:
        failed = next(n for n in summary.notebooks if n.status == "failed")
        executed = run_dir / f"{failed.notebook}.ipynb"
        raise RunError(f"run {summary.run} stopped: {failed.error} (executed copy: {executed})")
    return summary
