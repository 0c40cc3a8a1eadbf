"""The README's commands work as written: its papermill example, the `comicnb embed` command, the search snippet
and the runner's options, run on a small corpus (the README's run paths replaced by the fixture's)."""

from __future__ import annotations

import contextlib
import io
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from comicnb import checkpoint
from comicnb.cli import build_parser
from comicnb.corpus import load_corpus, save_corpus, synth
from comicnb.stage3 import checkpoints
from comicnb.stage3.model import PanelFeatureExtractor

ROOT = Path(__file__).resolve().parent.parent
README = (ROOT / "README.md").read_text(encoding="utf-8")
ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}


def section(title: str) -> str:
    """The text of the README's ``## title`` section."""
    found = re.search(rf"^## {re.escape(title)}\n(.*?)(?=^## |\Z)", README, flags=re.M | re.S)
    assert found, f"the README lost its section {title!r}"
    return found.group(1)


def blocks(text: str, language: str) -> list[str]:
    """The fenced code blocks of ``language`` in ``text``."""
    return re.findall(rf"^```{language}\n(.*?)^```", text, flags=re.M | re.S)


def block_with(title: str, language: str, needle: str) -> str:
    """The one ``language`` block of a section that contains ``needle``."""
    found = [b for b in blocks(section(title), language) if needle in b]
    assert len(found) == 1, f"README section {title!r}: expected one {language} block with {needle!r}, got {found}"
    return found[0]


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Notebook 01's artefacts for a small corpus and a tiny-model Stage 3 checkpoint as notebook 02's best."""
    root = tmp_path_factory.mktemp("readme")
    synth.generate(root / "data", books=3, pages=4, seed=0, page_size=(320, 480))
    save_corpus(load_corpus(root / "data", split=(0.34, 0.33, 0.33), seed=0), root / "run")
    torch.manual_seed(0)
    model = PanelFeatureExtractor(feature_dim=16, tiny=True)
    state = {"model_state_dict": model.state_dict(), "config": {"model": model.config, "train": {"seed": 0}}}
    checkpoint.save_checkpoint(state, checkpoints(root / "run").best)
    return root / "run"


def test_the_papermill_example_runs_as_written_on_a_fresh_clone(tmp_path):
    script = block_with("Running headless", "bash", "-m papermill")
    mine = tmp_path / "outputs" / "mine"  # as in a fresh clone, the folder does not exist yet
    script = script.replace("outputs/mine", str(mine)).replace(".venv/bin/python", shlex.quote(sys.executable))
    # a small corpus instead of the demo's 12 books; the command itself as the README prints it
    synth.generate(tmp_path / "corpus", books=4, pages=6, seed=0, page_size=(320, 480))
    script = script.rstrip() + f" -p data_root {tmp_path / 'corpus'}\n"
    done = subprocess.run(["bash", "-euo", "pipefail", "-c", script], cwd=ROOT, env=ENV, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-3000:]
    assert (mine / "01_data_inspection.ipynb").is_file()
    assert (mine / "pages.jsonl").is_file()
    noise = [line for line in done.stderr.splitlines() if re.search(r"TCP|ERROR|KeyboardInterrupt", line)]
    assert not noise, noise  # nothing that reads as a failure when nothing failed


def test_the_embed_command_and_the_search_snippet_run_as_written(run_dir):
    found = re.findall(r"`(python -m comicnb embed [^`]*)`", section("The embedding store and panel search"))
    assert found, "the README lost its `python -m comicnb embed` command"
    command = shlex.split(found[0].replace("outputs/<run>", str(run_dir)))
    done = subprocess.run([sys.executable, *command[1:]], cwd=ROOT, env=ENV, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-3000:]
    assert (run_dir / "panel_embeddings.zarr").is_dir()

    snippet = block_with("The embedding store and panel search", "python", "PanelSearch(")
    snippet = snippet.replace("outputs/<run>", str(run_dir))
    scope: dict = {}
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        exec(compile(snippet, "README.md", "exec"), scope)
    assert len(scope["hits"]) == 5
    header, *rows = printed.getvalue().strip().splitlines()
    assert header.split() == ["rank", "score", "book_id", "page_name", "slot", "text"] and len(rows) == 5

    script = block_with("The embedding store and panel search", "bash", "comicnb search")
    for line in script.strip().splitlines():  # both search commands, the text one run as written
        command = shlex.split(line.replace("outputs/<run>", str(run_dir)).split("python -m comicnb ", 1)[1])
        build_parser().parse_args(command)
    text_search = [c for c in script.splitlines() if "--text" in c][0].replace("outputs/<run>", str(run_dir))
    command = shlex.split(text_search.split("python -m ", 1)[1].replace("hits.png", str(run_dir / "hits.png")))
    done = subprocess.run([sys.executable, "-m", *command], cwd=ROOT, env=ENV, capture_output=True, text=True)
    assert done.returncode == 0 and "score" in done.stdout, done.stderr[-3000:]
    assert (run_dir / "hits.png").is_file()


def test_the_stage4_task_snippet_runs_as_written(run_dir):
    if not (run_dir / "panel_embeddings.zarr").is_dir():  # the embed test made it; alone, make it here
        from comicnb.store import generate

        generate(run_dir)
    snippet = block_with("Stage 4: the tasks and their baselines", "python", "build_task_sets(")
    snippet = snippet.replace("outputs/<run>", str(run_dir))
    *body, last = snippet.strip().splitlines()
    scope: dict = {}
    exec(compile("\n".join(body), "README.md", "exec"), scope)
    candidates, answer = eval(compile(last, "README.md", "eval"), scope)
    assert 0 <= answer < len(candidates) == 5
    assert (run_dir / "tasks" / "test" / "manifest.json").is_file()


@pytest.mark.parametrize(
    "command", re.findall(r"python -m comicnb (run [^`\n]*)", README), ids=lambda c: c.replace(" ", "_")
)
def test_the_runner_options_in_the_readme_exist(command):
    args = build_parser().parse_args(shlex.split(command.replace("<run>", "r")))
    assert args.command == "run"


def test_the_stage4_commands_in_the_readme_parse():
    script = block_with("Stage 4: the tasks and their baselines", "bash", "train stage4")
    commands = [line.split("#")[0].split("python -m comicnb ", 1)[1] for line in script.splitlines() if line.strip()]
    assert [c.split()[0] for c in commands] == ["tasks", "train", "train"]
    for command in commands:
        build_parser().parse_args(shlex.split(command.replace("<run>", "r").replace("[--resume]", "--resume")))
    assert (ROOT / "params" / "demo" / "04_stage4_training.yaml").is_file()  # the file the README names


def test_the_evaluation_commands_in_the_readme_parse():
    section = "Evaluation, real comic text and the Stage 5 export"
    script = block_with(section, "bash", "comics fit") + "\n" + block_with(section, "bash", "export-stage4")
    commands = [line.split("#")[0].split("python -m comicnb ", 1)[1] for line in script.splitlines() if line.strip()]
    assert [c.split()[0] for c in commands] == ["comics", "comics", "export-stage4", "search-strips"]
    for command in commands:
        build_parser().parse_args(shlex.split(command.replace("<run>", "r")))


def test_where_the_results_are_names_files_a_run_writes() -> None:
    from comicnb import runner
    from comicnb.stage4.tasks import MANIFEST

    text = section("Where the results are")
    named = set(re.findall(r"`([\w<>./-]+\.(?:html|json|csv|yaml))`", text))
    reports = {f"{nb.stem}.html" for nb in runner.numbered_notebooks(ROOT / "notebooks")}
    written = reports | {runner.SUMMARY, runner.PARAMS, "metrics.json", "problems.csv", f"tasks/<split>/{MANIFEST}"}
    assert named and named - {"docs/results.md"} <= written, named - written
    assert "05_evaluation.html" in named and "metrics.json" in named  # the answers, not only the corpus report
    assert "metrics.json" in (ROOT / "notebooks" / "05_evaluation.ipynb").read_text()  # notebook 05 writes it


def test_the_readme_says_how_long_and_defines_its_words() -> None:
    setup = section("Set-up: two commands")
    assert re.search(r"`make demo` about \d+ minutes", setup) and re.search(r"`make test` about \d+", setup)
    assert "study" in setup and "docs/results.md" in setup
    words = section("Words used here")
    for word in ("the seed", "Stage 1, Stage 2", "PSS", "text-free twin", "profile"):
        assert f"**{word}**" in words or word in words, word
    first_use = {w: README.index(w) for w in ("PSS", "text-free twin")}
    assert all(README.index("## Words used here") < at for at in first_use.values()), first_use


def test_the_readme_says_where_the_comics_folds_come_from_and_what_happens_without_them() -> None:
    from comicnb.comics.study import COMICS_FILES

    text = section("Evaluation, real comic text and the Stage 5 export")
    assert all(f"`{name}`" in text for name in COMICS_FILES.values())
    assert "miyyer/comics" in text and "comics_dir:" in text
    skipped = "this part is skipped"
    assert skipped in text and skipped in (ROOT / "notebooks" / "05_evaluation.ipynb").read_text()


def test_the_detect_command_runs_as_written(tmp_path):
    """`From page images`: the detect command, on a folder of the embedded corpus's page images alone."""
    from comicnb.detect.sources import copy_page_images

    synth.generate(tmp_path / "data", books=1, pages=3, seed=0, page_size=(320, 480))
    scans = copy_page_images(tmp_path / "data", tmp_path / "scans")
    line = block_with("From page images", "bash", "comicnb detect").strip().split("   #")[0]
    line = line.replace("~/scans", str(scans)).replace("outputs/corpus/mine", str(tmp_path / "mine"))
    command = shlex.split(line.split("python -m ", 1)[1])
    done = subprocess.run([sys.executable, "-m", *command], cwd=ROOT, env=ENV, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-3000:]
    corpus = load_corpus(tmp_path / "mine")
    assert corpus.pages.num_panels.sum() > 0 and (tmp_path / "mine" / "detection.json").is_file()
