"""ComicsPAP in and out (comicnb.comicspap), on a fixture folder a test builds in the dataset's exact schema from a
small generated corpus (a tiny untrained Stage 3 store, its task sets and an untrained tiny Stage 4 model), bad rows
included. Every command is run as a user runs it on the real files: ``python -m comicnb comicspap ...``."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
import zarr
from tiny_runs import tiny_store_run

from comicnb import checkpoint, cli
from comicnb.comicspap import encode as pap_encode
from comicnb.comicspap.encode import (
    MANIFEST,
    PARTS,
    STORE,
    EncodeSettings,
    encode,
    open_split,
    read_split_sets,
    split_dir,
)
from comicnb.comicspap.export import candidate_texts, letter
from comicnb.comicspap.fixture import BAD_FILE, BAD_ROWS
from comicnb.comicspap.format import (
    SCHEMA,
    SKILL_OF,
    SKILLS,
    TASK_OF,
    ComicsPAPFormatError,
    check_schema,
    find_files,
    image_struct,
    known_revision,
    png_bytes,
    write_rows,
)
from comicnb.comicspap.scores import PUBLISHED, model_path, report_frame, score_split
from comicnb.stage3 import checkpoints as stage3_checkpoints
from comicnb.stage4.baselines import run_baselines
from comicnb.stage4.config import checkpoints as stage4_checkpoints
from comicnb.stage4.model import Stage4SequenceModel
from comicnb.stage4.task_sets import build_task_sets, read_sets
from comicnb.stage4.view import open_run

DIM = 32
SMALL = dict(input_dim=DIM, d_model=16, nhead=4, num_layers=1, dim_feedforward=32)
IMAGE_ONLY = ("panel_picking", "visual_closure", "caption_relevance")  # tasks whose options are panels as drawn


def pap(*args: str) -> int:
    return cli.main(["comicspap", *args])


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny run with a store, val and test task sets, and an untrained tiny Stage 4 best model."""
    root = tmp_path_factory.mktemp("comicspap")
    run = tiny_store_run(root, DIM, pages=10)
    build_task_sets(run, seed=0)
    torch.manual_seed(0)
    model = Stage4SequenceModel(**SMALL)
    state = {"model_state_dict": model.state_dict(), "config": {"model": model.config, "train": {"seed": 0}}}
    checkpoint.save_checkpoint(state, stage4_checkpoints(run).best)
    return run


@pytest.fixture(scope="module")
def data(run: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The fixture folder, made by the command a user would run."""
    out = tmp_path_factory.mktemp("fixture") / "ComicsPAP"
    assert pap("fixture", "--run-dir", str(run), "--out", str(out)) == 0
    return out


@pytest.fixture(scope="module")
def encoded(run: Path, data: Path) -> dict:
    """The val, train and test splits encoded (text masked: OCR has its own test), as a user runs it."""
    for split in ("val", "train", "test"):
        args = ["encode", "--data", str(data), "--split", split, "--run-dir", str(run), "--text", "none"]
        assert pap(*args, "--no-progress", "--rows-per-chunk", "4") == 0
    return json.loads((split_dir(run, "val") / MANIFEST).read_text())


# ----------------------------------------------------------------------------------------------------- the format


def test_the_fixture_has_comicspaps_exact_schema(data: Path) -> None:
    for split in ("train", "val", "test"):
        files = find_files(data, split)
        assert set(files.files) == set(SKILLS), f"{split}: every skill has a file"
        for _, path in files.all:
            schema = pq.read_schema(path)
            assert schema.names == SCHEMA.names
            assert [f.type for f in schema] == [f.type for f in SCHEMA]
            image = schema.field("options").type.value_type
            assert [image.field(i).name for i in range(image.num_fields)] == ["bytes", "path"]
            assert json.loads(schema.metadata[b"huggingface"])["info"]["features"]["options"]["feature"] == {
                "_type": "Image"
            }
            assert pq.ParquetFile(path).num_row_groups >= 1
    test = pq.read_table(data / "sequence_filling" / "test-00000-of-00001.parquet")
    assert set(test.column("solution_index").to_pylist()) == {-1}, "the test split's labels are hidden"
    assert (data / "sequence_filling" / BAD_FILE).is_file()


def test_the_schema_check_names_the_column_that_differs(tmp_path: Path, data: Path, run: Path) -> None:
    good = pq.read_table(data / "char_coherence" / "val-00000-of-00001.parquet")
    wrong_type = good.set_column(good.schema.get_field_index("index"), "index", good.column("index").cast(pa.int64()))
    with pytest.raises(ComicsPAPFormatError, match="column 'index' is int64"):
        check_schema(wrong_type.schema)
    with pytest.raises(ComicsPAPFormatError, match="no column 'options'"):
        check_schema(good.drop_columns(["options"]).schema)
    large = good.cast(pa.schema([(f.name, pa.large_string()) if f.type == pa.string() else f for f in good.schema]))
    check_schema(large.schema)  # large strings are strings
    folder = tmp_path / "bad" / "char_coherence"
    folder.mkdir(parents=True)
    pq.write_table(wrong_type, folder / "val-00000-of-00001.parquet")
    args = ["encode", "--data", str(tmp_path / "bad"), "--split", "val", "--run-dir", str(tmp_path / "r")]
    assert pap(*args, "--text", "none", "--checkpoint", str(stage3_checkpoints(run).last)) == 2


# ----------------------------------------------------------------------------------------------------- encode


def test_encode_counts_every_bad_row_and_keeps_every_good_one(run: Path, data: Path, encoded: dict) -> None:
    assert encoded["bad_rows"] == {reason: 1 for reason in BAD_ROWS}
    rows = {skill: pq.read_table(p).num_rows for skill, p in find_files(data, "val").all if "bad" not in p.name}
    assert encoded["samples"] == rows, "every good row is a sample"
    assert sum(encoded["rows"].values()) == sum(rows.values()) + len(BAD_ROWS)
    assert all(f["sha256"] and f["rows"] for f in encoded["files"])
    assert encoded["index_inside_context"] == {}, "the fixture's closure samples continue their context"
    assert set(encoded["revision_by_counts"].values()) == {"unknown"}, "the fixture's counts are no published ones"
    assert known_revision("text_closure", 274) == "earlier" and known_revision("text_closure", 259) == "current"
    assert known_revision("char_coherence", 143) == "current"
    sets = read_split_sets(run, "val")
    view = open_split(run, "val")
    for path in (data / skill / "val-00000-of-00001.parquet" for skill in SKILLS):
        table = pq.read_table(path).to_pylist()
        task_set = sets[TASK_OF[path.parent.name]]
        by_id = {s.sample_id: s for s in task_set.samples}
        for row in table:
            sample = by_id[row["sample_id"]]
            assert sample.answer == row["solution_index"]
            assert len(sample.candidates) == len(row["options"]) and len(sample.context) == len(row["context"])
            page = view.locate(sample.candidates[0].panel_id)[0]
            assert view.modality_masks[page].any(-1).sum() == len(row["options"]) + len(row["context"])
            assert not view.modality_masks[page, :, 2].any(), "ComicsPAP panels have no place on a page"


def test_options_may_vary_in_number(run: Path, data: Path, tmp_path: Path) -> None:
    rows = pq.read_table(data / "visual_closure" / "val-00000-of-00001.parquet").to_pylist()[:2]
    rows[0]["options"] = [o for i, o in enumerate(rows[0]["options"]) if i == rows[0]["solution_index"] or i < 2][:3]
    rows[0]["solution_index"] = min(rows[0]["solution_index"], len(rows[0]["options"]) - 1)
    write_rows(tmp_path / "d" / "visual_closure" / "val-00000-of-00001.parquet", rows)
    manifest = encode(tmp_path / "d", "val", tmp_path / "r", stage3_checkpoints(run).last, EncodeSettings(text="none"))
    samples = read_split_sets(tmp_path / "r", "val")["visual_closure"].samples
    assert [len(s.candidates) for s in samples] == [len(r["options"]) for r in rows]
    assert manifest["chance"]["visual_closure"] == pytest.approx(np.mean([1 / len(r["options"]) for r in rows]))


def test_encode_reads_one_row_group_at_a_time(run: Path, data: Path, tmp_path: Path, monkeypatch) -> None:
    read = []
    original = pap_encode.read_group
    monkeypatch.setattr(
        pap_encode, "read_group", lambda path, group, first: read.append((path, group)) or original(path, group, first)
    )
    encode(
        data,
        "val",
        tmp_path / "r",
        stage3_checkpoints(run).last,
        EncodeSettings(text="none", rows_per_chunk=4),
        skills=["sequence_filling"],
        progress=False,
    )
    groups = [
        (p, g)
        for p in find_files(data, "val", ["sequence_filling"]).files["sequence_filling"]
        for g in range(pq.ParquetFile(p).num_row_groups)
    ]
    assert sorted(read) == sorted(groups) and len(groups) > 2, "each row group read once, never a whole file"


def test_a_killed_encode_resumes_to_the_same_files(run: Path, data: Path, tmp_path: Path) -> None:
    settings = EncodeSettings(text="none", rows_per_chunk=4)
    ckpt = stage3_checkpoints(run).last
    whole = encode(data, "val", tmp_path / "a", ckpt, settings, skills=["sequence_filling"], progress=False)
    first = encode(data, "val", tmp_path / "b", ckpt, settings, ["sequence_filling"], progress=False, max_chunks=3)
    assert not first["complete"] and first["remaining"] > 0
    parts = sorted((split_dir(tmp_path / "b", "val") / PARTS).glob("*.json"))
    parts[-1].unlink()  # the kill came after a chunk's arrays, before its record
    (parts[-1].parent / "leftover.json.partial").write_text("{")
    again = encode(data, "val", tmp_path / "b", ckpt, settings, ["sequence_filling"], progress=False)
    assert again["complete"] and again["timing"]["rows_computed"] < sum(again["rows"].values())
    strip = lambda m: {k: v for k, v in m.items() if k not in ("timing", "checkpoint")}  # noqa: E731
    assert strip(again) == strip(whole)
    a, b = (zarr.open_group(str(split_dir(r, "val") / STORE), mode="r") for r in (tmp_path / "a", tmp_path / "b"))
    for name in ("panel_embeddings", "modalities", "colour_histograms", "done"):
        np.testing.assert_array_equal(np.asarray(a[name][:]), np.asarray(b[name][:]))
    with pytest.raises(FileExistsError, match="--overwrite"):
        encode(data, "val", tmp_path / "b", ckpt, EncodeSettings(text="none", rows_per_chunk=8), ["sequence_filling"])


def test_ocr_reads_the_text_of_each_panel(run: Path, data: Path, tmp_path: Path) -> None:
    """Character coherence's options are the answer panel lettered with each candidate's texts (the fixture is the
    run's test sets): OCR reads most of their words back, and each option's text is its own."""
    manifest = encode(
        data,
        "val",
        tmp_path / "r",
        stage3_checkpoints(run).last,
        EncodeSettings(text="ocr"),
        skills=["char_coherence"],
        progress=False,
    )
    assert manifest["samples"]["char_coherence"] > 0
    view, ours = open_split(tmp_path / "r", "val"), open_run(run)
    truth = {s.sample_id: s for s in read_sets(run, ours, split="test")["character_coherence"].samples}
    words = lambda text: re.findall(r"[a-z']+", text.lower())  # noqa: E731
    recalls = []
    for sample in read_split_sets(tmp_path / "r", "val")["character_coherence"].samples:
        for i, option in enumerate(sample.candidates):
            assert option.text_from == option.panel_id, "each option's text is its own"
            lettered = words(" ".join(candidate_texts(truth[sample.sample_id], i, ours)))
            read = set(words(view.text(option.panel_id)))
            recalls.append(np.mean([w in read for w in lettered]))
    assert np.mean(recalls) >= 0.6, f"OCR read {np.mean(recalls):.2f} of the lettered words"


def test_the_command_line_names_comicspaps_skills() -> None:
    from comicnb.comicspap.cli import SKILL_NAMES  # kept apart so that `comicnb --help` does not import pyarrow

    assert SKILL_NAMES == SKILLS


def test_letter_puts_each_text_in_its_box() -> None:
    from PIL import Image

    blank = Image.new("RGB", (200, 100), "white")
    lettered = letter(blank, ["HELLO", "THERE"], [[0.0, 0.0, 0.5, 0.5], [0.5, 0.5, 1.0, 1.0]])
    ink = np.asarray(lettered.convert("L")) < 128
    assert ink[:50, :100].any() and ink[50:, 100:].any() and not ink[50:, :100].any() and not ink[:50, 100:].any()
    assert png_bytes(lettered) and image_struct(b"x")["bytes"] == b"x"


# ----------------------------------------------------------------------------------------------------- scores


def test_eval_pools_as_comicspaps_evaluate_and_sets_baselines_beside_the_published(
    run: Path, encoded: dict, tmp_path: Path
) -> None:
    assert pap("fit", "--run-dir", str(run), "--zero-shot") == 0
    assert model_path(run).read_bytes() == stage4_checkpoints(run).best.read_bytes()
    report_path = tmp_path / "eval.json"
    assert pap("eval", "--run-dir", str(run), "--split", "val", "--report", str(report_path)) == 0
    report = json.loads(report_path.read_text())
    methods = {row["method"]: row for row in report["table"]}
    assert {"chance", "option_shape", "stage3_cosine", "colour_histogram", "text_similarity"} <= set(methods)
    assert "stage4 zero-shot" in methods
    for skill in ("char_coherence", "text_closure", "caption_relevance"):  # options of one panel, or no context
        assert methods["option_shape"][skill]["accuracy"] == pytest.approx(methods["chance"][skill]["accuracy"])
    for row in methods.values():
        skills = [s for s in SKILLS if s in row]
        if row["total"] is None:
            continue
        pooled = sum(row[s]["n"] * row[s]["accuracy"] for s in skills) / sum(row[s]["n"] for s in skills)
        assert row["total"]["accuracy"] == pytest.approx(pooled), "skills weighted by their sample counts"
        assert row["total"]["low"] <= row["total"]["accuracy"] <= row["total"]["high"]
    assert methods["chance"]["total"]["accuracy"] == pytest.approx(100 * report["chance"]["total"])
    assert methods["text_similarity"]["total"] is None, "a method that answers some skills has no pooled figure"
    assert report["published"] == list(PUBLISHED) and report["published_chance"] == 24.30
    frame = report_frame(report)
    assert "Qwen2.5-VL-7B fine-tuned" in frame.index and frame.loc["chance", "total"] == pytest.approx(
        methods["chance"]["total"]["accuracy"]
    )


def test_the_test_split_is_never_scored_and_predict_writes_its_answers(run: Path, encoded: dict) -> None:
    with pytest.raises(ValueError, match="hidden"):
        score_split(run, "test")
    assert pap("eval", "--run-dir", str(run), "--split", "test") == 2
    if not model_path(run).is_file():
        assert pap("fit", "--run-dir", str(run), "--zero-shot") == 0
    assert pap("predict", "--run-dir", str(run), "--split", "test") == 0
    folder = run / "comicspap" / "predictions" / "test"
    sets = read_split_sets(run, "test")
    for task, task_set in sets.items():
        rows = json.loads((folder / f"results_{SKILL_OF[task]}.json").read_text())
        assert [r["sample_id"] for r in rows] == [s.sample_id for s in task_set.samples]
        assert all(0 <= r["prediction"] < len(s.candidates) for r, s in zip(rows, task_set.samples))


def test_fit_trains_on_the_train_split_and_keeps_val_unseen(run: Path, encoded: dict) -> None:
    args = ["fit", "--run-dir", str(run), "--epochs", "2", "--patience", "1", "--hold-out", "0.3", "--overwrite"]
    assert pap(*args) == 0
    record = json.loads((model_path(run).parent / "fit.json").read_text())
    train = read_split_sets(run, "train")
    assert sum(record["samples"].values()) + sum(record["held_out"].values()) == sum(len(s) for s in train.values())
    assert record["history"][0]["epoch"] == 0 and record["best_epoch"] in range(0, 3)
    val_ids = {s.sample_id for s in read_split_sets(run, "val")["panel_picking"].samples}
    assert not val_ids & {s.sample_id for s in train["panel_picking"].samples}
    assert pap("eval", "--run-dir", str(run), "--split", "val") == 0
    assert pap(*args, "--init", "fresh") == 0
    assert json.loads((model_path(run).parent / "fit.json").read_text())["init"] == "fresh"


def test_export_then_encode_gives_the_runs_own_baseline_accuracies(run: Path, tmp_path: Path) -> None:
    """The round trip: the run's test sets exported, encoded with the run's Stage 3 model and scored, against the
    same baselines on the run's own files: the panels exported are the crops the colour histogram reads."""
    out = tmp_path / "export"
    assert pap("export", "--run-dir", str(run), "--out", str(out)) == 0
    record = json.loads((out / "comicnb_export.json").read_text())
    assert set(record["not_exported"]) == {"text_cloze", "reading_order"}
    ckpt = str(stage3_checkpoints(run).last)
    args = ["encode", "--data", str(out), "--split", "val", "--run-dir", str(tmp_path / "r"), "--text", "none"]
    assert pap(*args, "--checkpoint", ckpt, "--no-progress") == 0
    view = open_run(run)
    ours = {t: s for t, s in read_sets(run, view, split="test").items() if t in IMAGE_ONLY}
    mine = {(r.method, r.task): r.correct.mean() for r in run_baselines(ours, view, ["chance", "colour_histogram"])}
    back_view = open_split(tmp_path / "r", "val")
    back_sets = {t: s for t, s in read_split_sets(tmp_path / "r", "val").items() if t in IMAGE_ONLY}
    back = run_baselines(back_sets, back_view, ["chance", "colour_histogram"])
    assert {(r.method, r.task): r.correct.mean() for r in back} == pytest.approx(mine)
    assert {t: len(s) for t, s in back_sets.items()} == {t: len(s) for t, s in ours.items()}


def test_a_missing_split_or_model_names_the_command(run: Path, tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="comicspap encode"):
        read_split_sets(tmp_path, "val")
    shutil.rmtree(tmp_path, ignore_errors=True)


def test_notebook_05_sets_a_comicspap_run_beside_the_published_table(run: Path, encoded: dict, tmp_path: Path) -> None:
    """Notebook 05's ComicsPAP cell, run as the notebook runs it (its parameters and helpers in scope)."""
    from comicnb.paths import resolve

    if not model_path(run).is_file():
        assert pap("fit", "--run-dir", str(run), "--zero-shot") == 0
    notebook = json.loads((Path(__file__).parents[1] / "notebooks" / "05_evaluation.ipynb").read_text())
    cell = next(c for c in notebook["cells"] if "comicspap_run:" in "".join(c["source"]) and "if " in c["source"][0])
    shown = []
    scope = dict(
        comicspap_run=str(run),
        out=tmp_path,
        json=json,
        resolve=resolve,
        display=shown.append,
        bootstrap_resamples=200,
        level=0.95,
        seed=0,
    )
    exec("".join(cell["source"]), scope)  # noqa: S102 - the notebook's own cell
    assert json.loads((tmp_path / "comicspap.json").read_text())["split"] == "val"
    assert "Qwen2.5-VL-7B fine-tuned" in shown[0].index and any(m.startswith("stage4") for m in shown[0].index)
    scope["comicspap_run"] = ""
    exec("".join(cell["source"]), scope)  # noqa: S102


def test_the_readme_commands_run_as_written_on_the_fixture(run: Path, data: Path, tmp_path: Path) -> None:
    """The README's ComicsPAP block, its folder and run replaced by the fixture's: what a user runs on real files."""
    from test_readme import block_with  # tests/, beside this module

    mine, small = tmp_path / "run", tmp_path / "ComicsPAP"
    shutil.copytree(run, mine, ignore=shutil.ignore_patterns("comicspap"))
    for split in ("val", "test"):  # one row of each file (OCR reads every panel: a second or so each), bad rows all
        for _, path in find_files(data, split).all:
            table = pq.read_table(path)
            write_rows(
                small / path.parent.name / path.name, table.to_pylist()[: len(table) if "bad" in path.name else 1]
            )
    script = block_with("ComicsPAP", "bash", "comicspap encode")
    lines = [line.split("python -m comicnb ", 1)[1] for line in script.splitlines() if line.strip()]
    assert [line.split()[1] for line in lines] == ["encode", "encode", "fit", "eval", "predict", "export"]
    for line in lines:
        args = line.replace("--data ComicsPAP", f"--data {small}").replace("outputs/<run>", str(mine)).split()
        assert cli.main(args) == 0, line
    manifest = json.loads((split_dir(mine, "val") / MANIFEST).read_text())
    assert manifest["settings"]["text"] == "ocr" and manifest["bad_rows"] == {reason: 1 for reason in BAD_ROWS}
    assert (mine / "comicspap" / "predictions" / "test" / "predictions.json").is_file()
    assert (mine / "comicspap" / "export" / "comicnb_export.json").is_file()
