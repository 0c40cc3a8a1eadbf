"""The runner executes notebooks in order, renders them, summarises, continues a run from a notebook, and stops at
a failure naming the cell as the report shows it."""

import json
import re
from pathlib import Path

import nbformat
import pytest
import yaml

from comicnb import cli, runner
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
        "from pathlib import Path\nPath(run_dir, 'first.txt').write_text(str(n * 2))\n"
        "with open(Path(run_dir, 'ran.txt'), 'a') as f: f.write('01 ')",
    )
    notebook(
        tmp_path / "notebooks" / "02_second.ipynb",
        'run_dir: str = ""\noverwrite: bool = False\nresume: bool = False\nm: int = 0',
        "from pathlib import Path\nassert Path(run_dir, 'first.txt').read_text() == '14'\n"
        "Path(run_dir, 'second.txt').write_text(f'{m} {overwrite}')\n"
        "with open(Path(run_dir, 'ran.txt'), 'a') as f: f.write('02 ')",
    )
    (tmp_path / "params" / "p" / "01_first.yaml").write_text("n: 7\n")
    return tmp_path


def test_run_executes_in_order_with_params_and_writes_html_and_summary(project):
    summary = run("p", "r1", root=project)
    run_dir = project / "outputs" / "r1"
    assert [n.status for n in summary.notebooks] == ["ok", "ok"]
    assert (run_dir / "first.txt").read_text() == "14"
    assert (run_dir / "second.txt").read_text() == "0 False"  # a new run is not told to overwrite anything
    assert (run_dir / "01_first.html").read_text().lstrip().lower().startswith("<!doctype html")
    on_disk = json.loads((run_dir / "summary.json").read_text())
    assert [n["notebook"] for n in on_disk["notebooks"]] == ["01_first", "02_second"]
    assert all(n["seconds"] > 0 for n in on_disk["notebooks"])
    [entry] = on_disk["history"]
    assert entry["status"] == "ok" and entry["selection"] == "all" and entry["finished"]
    assert entry["notebooks"][0]["params"] == {"n": 7, "run_dir": "outputs/r1"}
    assert "n: 7" in (run_dir / "params.yaml").read_text()


def test_a_failing_notebook_stops_the_run_and_is_named_with_its_cell_as_the_report_shows_it(project):
    (project / "params" / "p" / "01_first.yaml").write_text("n: 3\n")
    # cell index 2, but the third cell executed (parameters, papermill's injected parameters, body): In [3]
    with pytest.raises(RunError, match=r"02_second\.ipynb, cell In \[3\] .*AssertionError"):
        run("p", "r2", root=project)
    on_disk = json.loads((project / "outputs" / "r2" / "summary.json").read_text())
    assert [n["status"] for n in on_disk["history"][0]["notebooks"]] == ["ok", "failed"]
    assert on_disk["history"][0]["status"] == "failed"
    html = (project / "outputs" / "r2" / "02_second.html").read_text()
    assert "In&nbsp;[3]" in html or "In [3]" in html


def test_unknown_parameter_fails_before_anything_runs(project):
    (project / "params" / "p" / "02_second.yaml").write_text("typo_epochs: 3\n")
    with pytest.raises(RunError, match="typo_epochs"):
        run("p", "r3", root=project)
    assert not (project / "outputs" / "r3").exists()


def test_every_misnamed_key_of_every_notebook_is_reported_at_once(project):
    (project / "params" / "p" / "01_first.yaml").write_text("n: 7\nnn: 1\n")
    (project / "params" / "p" / "02_second.yaml").write_text("typo_epochs: 3\nlr_typo: 1\n")
    with pytest.raises(RunError) as caught:
        run("p", "r3", root=project)
    message = str(caught.value)
    assert "01_first.ipynb does not declare nn (did you mean n?)" in message
    assert "02_second.ipynb does not declare lr_typo, typo_epochs (set by params/p/02_second.yaml)" in message
    assert not (project / "outputs" / "r3").exists()


def test_a_misspelt_profile_gets_a_suggestion(project):
    with pytest.raises(RunError, match=r"no profile 'pp'.*did you mean p\?"):
        run("pp", "r3", root=project)


def test_run_takes_a_name_or_a_path_under_outputs(project, monkeypatch):
    monkeypatch.chdir(project)
    summary = run("p", "outputs/r10", root=project, only=["01"])  # as a shell completes it
    assert summary.run_dir == "outputs/r10" and (project / "outputs" / "r10" / "summary.json").is_file()
    assert not (project / "outputs" / "outputs").exists()
    with pytest.raises(RunError, match=r"--run takes the name of a run folder under .*--run r11"):
        run("p", "elsewhere/r11", root=project)


def test_from_without_run_names_the_runs_to_continue(project):
    with pytest.raises(RunError, match=r"naming it with --run \(there is none in outputs/ yet"):
        run("p", None, root=project, start="02")
    run("p", "r12", root=project)
    with pytest.raises(RunError, match=r"02_second\.ipynb reads what earlier notebooks write.*runs in outputs/: r12"):
        run("p", None, root=project, start="02")


def test_an_existing_run_is_never_overwritten_whole_and_the_error_suggests_from(project):
    run("p", "r4", root=project, only=["01"])
    with pytest.raises(RunError, match=r"already holds a run.*--run r4 --from NN"):
        run("p", "r4", root=project)


def test_from_continues_an_existing_run_keeping_upstream_and_replacing_downstream(project):
    run("p", "r5", root=project)
    run_dir = project / "outputs" / "r5"
    first_html = (run_dir / "01_first.ipynb").stat().st_mtime_ns
    (project / "params" / "p" / "02_second.yaml").write_text("m: 5\n")
    summary = run("p", "r5", root=project, start="02")
    assert [n.notebook for n in summary.notebooks] == ["02_second"]
    assert (run_dir / "ran.txt").read_text() == "01 02 02 "  # 01 ran once; its artefact was read again
    assert (run_dir / "01_first.ipynb").stat().st_mtime_ns == first_html
    assert (run_dir / "second.txt").read_text() == "5 True"  # replaced, told to overwrite (it declares it)
    on_disk = json.loads((run_dir / "summary.json").read_text())
    assert [e["selection"] for e in on_disk["history"]] == ["all", "from 02"]
    second = on_disk["history"][1]
    assert second["status"] == "ok" and second["started"] and second["seconds"] > 0
    # every parameter the notebook ran with: the profile's, the run's and told to overwrite, the rest its defaults
    assert second["notebooks"][0]["params"] == {"m": 5, "run_dir": "outputs/r5", "overwrite": True, "resume": False}
    # the current state: 01 from the first invocation, 02 from the second
    assert [n["params"].get("m") for n in on_disk["notebooks"]] == [None, 5]
    assert yaml.safe_load((run_dir / "params.yaml").read_text())["02_second"]["m"] == 5
    # A notebook whose parameters say resume keeps (continues) what it wrote: it is not told to overwrite.
    (project / "params" / "p" / "02_second.yaml").write_text("m: 6\nresume: true\n")
    run("p", "r5", root=project, start="02")
    assert (run_dir / "second.txt").read_text() == "6 False"


def test_from_on_the_command_line(project, monkeypatch, capsys):
    monkeypatch.chdir(project)
    assert cli.main(["run", "--profile", "p", "--run", "r6"]) == 0
    assert "[comicnb] the last report: outputs/r6/02_second.html" in capsys.readouterr().out  # where to look next
    assert cli.main(["run", "--profile", "p", "--run", "r6", "--from", "02"]) == 0
    assert cli.main(["run", "--profile", "p", "--run", "r6"]) == 1
    assert "--from" in capsys.readouterr().err
    history = json.loads((project / "outputs" / "r6" / "summary.json").read_text())["history"]
    assert [e["selection"] for e in history] == ["all", "from 02"]


def test_only_on_a_new_run_names_the_missing_artefacts_and_the_from_to_use(project, monkeypatch):
    monkeypatch.setitem(runner.ARTEFACTS, "01_first", ("first.txt",))
    with pytest.raises(RunError, match=r"01_first: first\.txt.*--run r7 --from 01"):
        run("p", "r7", root=project, only=["02"])
    with pytest.raises(RunError, match=r"first\.txt.*--from 01"):
        run("p", "r7", root=project, start="02")
    assert not (project / "outputs" / "r7").exists()


def test_only_continues_a_run_whose_upstream_is_there(project):
    run("p", "r8", root=project, only=["01"])
    run("p", "r8", root=project, only=["02"])
    assert (project / "outputs" / "r8" / "ran.txt").read_text() == "01 02 "


def test_a_notebook_without_a_record_or_artefacts_upstream_is_missing(project):
    (project / "outputs" / "r9").mkdir(parents=True)
    (project / "outputs" / "r9" / "stray.txt").write_text("")
    with pytest.raises(RunError, match=r"01_first: no record of it in summary\.json.*--from 01"):
        run("p", "r9", root=project, start="02")


def test_the_workbook_artefacts_name_what_notebook_01_writes():
    assert runner.ARTEFACTS["01_data_inspection"] == ("pages.jsonl",)


def test_a_summary_of_the_old_form_becomes_the_first_entry_of_the_history(project):
    run("p", "r10", root=project)
    path = project / "outputs" / "r10" / "summary.json"
    data = json.loads(path.read_text())
    old = {key: data["history"][0][key] for key in ("profile", "git_revision", "started", "notebooks")}
    path.write_text(json.dumps({"run": "r10", "run_dir": "outputs/r10", **old}))
    run("p", "r10", root=project, start="02")
    history = json.loads(path.read_text())["history"]
    assert [len(e["notebooks"]) for e in history] == [2, 1]


def test_reports_and_stderr_carry_no_kernel_or_progress_bar_noise(project, capfd):
    notebook(
        project / "notebooks" / "01_first.ipynb",
        'run_dir: str = ""',
        "from pathlib import Path\nfrom tqdm.auto import tqdm\nfor _ in tqdm(range(3)):\n    pass\nprint('done')\n"
        "from ipykernel.kernelapp import IPKernelApp\napp = IPKernelApp.instance()\n"
        "print('transport', app.transport, 'in a folder of its own:', Path(app.ip).is_absolute())",
    )
    (project / "params" / "p" / "01_first.yaml").write_text("")
    run("p", "r11", root=project, only=["01"])
    run_dir = project / "outputs" / "r11"
    texts = {
        "stderr": capfd.readouterr().err,
        "notebook": (run_dir / "01_first.ipynb").read_text(),
        "html": (run_dir / "01_first.html").read_text(),
    }
    assert "done" in texts["notebook"]
    # the kernel's sockets: Unix sockets in a temporary folder, not TCP ports nor files in the project root
    assert "transport ipc in a folder of its own: True" in texts["notebook"]
    for where, text in texts.items():
        for noise in ("without encryption", "IProgress not found", "TqdmWarning"):
            assert noise not in text, f"{noise!r} in the {where}"


def help_text(capsys, *command: str) -> str:
    """What ``comicnb ... --help`` prints."""
    with pytest.raises(SystemExit):
        cli.main([*command, "--help"])
    return " ".join(capsys.readouterr().out.split())  # argparse wraps lines: compare words


def test_help_texts_read_plainly(capsys):
    top = help_text(capsys)
    assert "``" not in top and "`comicnb COMMAND --help` describes each" in top
    synth_help = help_text(capsys, "synth")
    assert "--no-text-free leave out the pages' text-free twins" in synth_help and "(default: True)" not in synth_help
    comics_help = help_text(capsys, "comics", "eval")
    assert "95 % interval" in comics_help and "%%" not in comics_help
    for command in (("train", "stage3"), ("train", "stage4")):
        text = help_text(capsys, *command)
        assert "(default: the run_dir of --params)" in text and "(default: params)" not in text


def test_an_interrupted_run_says_so_in_its_summary_and_names_how_to_continue(project, monkeypatch):
    real = runner.papermill.execute_notebook

    def interrupt_the_second(source, *args, **kwargs):
        if source.endswith("02_second.ipynb"):
            raise KeyboardInterrupt  # Ctrl-C, or a TERM signal turned into one by terminate_as_interrupt
        return real(source, *args, **kwargs)

    monkeypatch.setattr(runner.papermill, "execute_notebook", interrupt_the_second)
    with pytest.raises(RunError, match=r"run r13 interrupted in 02_second\.ipynb: continue with --run r13 --from 02"):
        run("p", "r13", root=project)
    on_disk = json.loads((project / "outputs" / "r13" / "summary.json").read_text())
    assert on_disk["history"][-1]["status"] == "interrupted"  # not left at "running"
    assert [n["status"] for n in on_disk["history"][-1]["notebooks"]] == ["ok", "interrupted"]
    monkeypatch.setattr(runner.papermill, "execute_notebook", real)
    assert run("p", "r13", root=project, start="02").ok


def test_headless_runs_show_the_cell_and_the_last_runs_time(project, capsys):
    run("p", "r14", root=project, only=["01"])
    captured = capsys.readouterr()
    assert "[comicnb] 01_first: cell" in captured.err  # papermill's bar, as the runner words it
    assert "\r" not in captured.err and "[comicnb] 01_first: cell 3/3" in captured.err  # a line per count
    assert not re.search(r"ERROR|KeyboardInterrupt|TCP", captured.out + captured.err)  # no alarming noise
    assert "its last p run took" not in captured.out  # no earlier run of the profile to go by
    run("p", "r15", root=project, only=["01"])
    assert "[comicnb] 01_first.ipynb ... (its last p run took" in capsys.readouterr().out


def test_a_term_signal_interrupts_like_ctrl_c():
    import os
    import signal

    with pytest.raises(KeyboardInterrupt), runner.terminate_as_interrupt():
        os.kill(os.getpid(), signal.SIGTERM)
    assert signal.getsignal(signal.SIGTERM) == signal.SIG_DFL  # the handler is put back


@pytest.mark.parametrize(
    "code",
    [
        "import comicnb.papermill_engine as m; print(m.QuietEngine.__name__)",  # ours first
        "import papermill.engines as e; print(e.papermill_engines.get_engine('comicnb').__name__)",  # papermill first
    ],
)
def test_the_papermill_engine_loads_whichever_is_imported_first(code):
    import subprocess
    import sys

    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0 and done.stdout.strip() == "QuietEngine", done.stderr[-2000:]
