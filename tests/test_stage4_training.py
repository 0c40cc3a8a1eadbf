"""Stage 4 training on a small generated corpus and a tiny-model Stage 3 store (15 books of 8 pages, five per split).

- A short run lifts the validation accuracy of the tasks the tiny store carries enough signal for above chance (the
  figures of every task are printed; see ``test_a_short_run_learns`` and ABOVE_CHANCE for those that do not rise).
- A NaN loss stops the run before the step is taken, naming the step and the task.
- A real ``python -m comicnb train stage4`` process killed (SIGKILL) in the middle of its second epoch resumes with
  the same command and ``--resume`` to exactly the uninterrupted run: weights, optimizer, scheduler, every step's
  losses, the validation figures and the best checkpoint, bit for bit. The uninterrupted run is trained through the
  seed's flags.
- The command line: ``--help`` describes the command and its defaults, the seed's store and metadata flags are
  checked against our layout, missing task sets name ``comicnb tasks``, unknown settings are a one-line error.
"""

from __future__ import annotations

import json
import math
import shutil
import signal
import subprocess
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pytest
import torch
import yaml
from resume_checks import ENV, differences, kill_mid_epoch, without_seconds

from comicnb import checkpoint, cli
from comicnb.checkpoint import CheckpointExistsError, rng_state
from comicnb.corpus import load_corpus, save_corpus, synth
from comicnb.stage3 import checkpoints as stage3_checkpoints
from comicnb.stage3.model import PanelFeatureExtractor
from comicnb.stage4.config import ABLATIONS, checkpoints
from comicnb.stage4.model import GAIN_LR, GAINS, Stage4SequenceModel
from comicnb.stage4.results import COLUMNS
from comicnb.stage4.scoring import evaluate, load_stage4_model, predict_sets, score_models, trained_models
from comicnb.stage4.task_sets import TaskSetsMissingError, build_task_sets, sampling_rules
from comicnb.stage4.tasks import TASKS, TaskSet, read_task_set, task_dir
from comicnb.stage4.trainer import BEST_METRIC, NonFiniteLossError, build_stage4_trainer, prior_table, train_stage4
from comicnb.store import STORE_NAME, EmbedConfig, generate

SMALL_MODEL = dict(d_model=32, nhead=2, num_layers=1, dim_feedforward=64)
# The short run: every training sample each epoch, larger steps; reading order has one sample per training page (40),
# so its weight is raised to give it a share of the few steps.
LEARN = dict(
    epochs=5,
    batch_size=32,
    lr=3e-3,
    d_model=64,
    nhead=4,
    num_layers=2,
    dim_feedforward=128,
    train_samples=0,
    seed=0,
    task_weights=dict(reading_order=3.0),
)
# Tasks the short run lifts at least MARGIN above chance, and whose Wilson interval clears chance (at seed 0, the
# test's, after 5 epochs: panel picking 0.62, visual closure 0.60, reading order's exact page order 0.90 (chance 0.04;
# it starts as the geometry model)). Character coherence has 35 training and 25 validation samples here: the input
# prior fitted on the training draw points away from the answer (-1.5) while on validation it would point towards it,
# so its 0.40 (chance 0.5) says nothing either way. The text tasks do not rise on this store, whose random tiny text
# encoder keeps little of the words: text closure 0.18 (chance 0.25), text-cloze 0.31 (0.33), caption relevance 0.32
# (0.25; the study profile, with the packaged MiniLM, measures them).
ABOVE_CHANCE = ("panel_picking", "visual_closure", "reading_order")
CLEARLY = ABOVE_CHANCE
MARGIN = 0.05
# Two epochs of 7 tasks x 2 batches of 8 samples: 14 steps an epoch, a checkpoint after every step.
RESUME = dict(epochs=2, batch_size=8, train_samples=16, lr=1e-3, seed=0, checkpoint_every=1, **SMALL_MODEL)


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A run folder with notebook 01's artefacts, a tiny untrained Stage 3 checkpoint (feature_dim 64: at 16 the
    random features keep too little of the pictures to learn from), its store, and the fixed val/test task sets."""
    root = tmp_path_factory.mktemp("stage4-training")
    synth.generate(root / "data", books=15, pages=8, seed=5, page_size=(320, 480))
    save_corpus(load_corpus(root / "data", split=(0.34, 0.33, 0.33), seed=0), root / "run")
    torch.manual_seed(0)
    model = PanelFeatureExtractor(feature_dim=64, tiny=True)
    state = {"model_state_dict": model.state_dict(), "config": {"model": model.config, "train": {"seed": 0}}}
    checkpoint.save_checkpoint(state, stage3_checkpoints(root / "run").last)
    generate(root / "run", cfg=EmbedConfig(pages_per_chunk=8))
    build_task_sets(root / "run", seed=0)
    return root / "run"


def copy_run(run: Path, to: Path, tasks: bool = True) -> Path:
    """A fresh run folder with the same tables and store (no Stage 4 checkpoints; task sets only with ``tasks``)."""
    ignore = ["stage4", *([] if tasks else ["tasks"])]
    shutil.copytree(run, to, ignore=shutil.ignore_patterns(*ignore))
    return to


# ---------------------------------------------------------------------------------------------------- learning


@pytest.fixture(scope="module")
def learned(run: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Any, Path]:
    """(trainer, run folder) of the short run, trained into a copy of the run."""
    target = copy_run(run, tmp_path_factory.mktemp("learn") / "run")
    return train_stage4(target, LEARN), target


def test_a_short_run_learns(learned: tuple[Any, Path]) -> None:
    """On this store (five training books, a random tiny Stage 3 model) the run learns panel picking, character
    coherence, visual closure and reading order (whole-page order and pairwise), each with its Wilson interval above
    chance; the text tasks do not rise on so little signal (their figures are printed, not asserted; see
    ABOVE_CHANCE)."""
    trainer, target = learned
    epochs = trainer.history.epochs
    first, last = epochs[0], epochs[-1]
    table = trainer.last_validation
    rows = table[table.difficulty == "all"].set_index("task")
    print("\ntask, untrained, after the run, chance, 95 % interval, n")
    for task in TASKS:
        row = rows.loc[task]
        print(
            f"{task:20s} {first[f'val_{task}']:.3f} {last[f'val_{task}']:.3f} {row.chance:.3f} "
            f"[{row.low:.3f}, {row.high:.3f}] {row.n}"
        )
    print(
        f"reading order pairwise {first['val_reading_order_pairwise']:.3f} -> {last['val_reading_order_pairwise']:.3f}"
    )

    for task in ABOVE_CHANCE:
        assert last[f"val_{task}"] > last[f"val_{task}_chance"] + MARGIN, (task, last[f"val_{task}"])
    for task in CLEARLY:
        assert rows.loc[task, "low"] > rows.loc[task, "chance"], (task, rows.loc[task].to_dict())
    # Reading order starts as the geometry model (layout_prior; pairwise 0.98 here) and must not lose it.
    assert first["val_reading_order_pairwise"] > 0.9
    assert last["val_reading_order_pairwise"] >= first["val_reading_order_pairwise"] - 0.02
    # The untrained model starts from its skips (the input prior, the geometry model), so the mean over the tasks
    # starts high (0.534 here, and 0.534 at the best epoch); the picking tasks rise above where the skip puts them.
    picking = ("panel_picking", "visual_closure")
    assert sum(last[f"val_{t}"] for t in picking) > sum(first[f"val_{t}"] for t in picking)

    # Each candidate head's prior multiple started where it fits the first epoch's draw (saved in the checkpoint),
    # and the heads' scalar gains learn in their own group at GAIN_LR times the rate, without weight decay.
    fitted = torch.load(checkpoints(target).last, weights_only=True)["prior_fit"]
    assert fitted == trainer.prior_weights and set(fitted) == set(TASKS) - {"reading_order"}
    assert fitted["panel_picking"] > 5  # the Stage 3 cosine finds the missing panel: it starts with weight
    gains = trainer.optimizer.param_groups[1]
    names = {id(p): n for n, p in trainer.model.named_parameters()}
    assert {names[id(p)].rsplit(".", 1)[-1] for p in gains["params"]} == set(GAINS)
    assert len(gains["params"]) == 2 * len(fitted)
    assert gains["initial_lr"] == LEARN["lr"] * GAIN_LR and gains["weight_decay"] == 0.0
    priors = prior_table({"stage4": trainer}).set_index("task")
    assert priors.fitted.to_dict() == fitted and (priors.learned_scale > 0).all()
    assert (priors.trained != priors.fitted).all()  # training moved every multiple from where it was fitted

    # Every step logs its task's loss; the strip term is trained alongside.
    steps = trainer.history.steps
    assert {s["task"] for s in steps} == set(TASKS)
    assert all(math.isfinite(s[f"loss_{s['task']}"]) and math.isfinite(s["strip"]) for s in steps)
    # best_model.pt is the epoch with the best mean validation accuracy.
    best = torch.load(checkpoints(target).best, weights_only=True)
    values = [e[BEST_METRIC] for e in epochs[1:]]
    assert best["best"]["value"] == max(values) and best["best"]["epoch"] == 1 + values.index(max(values))


def test_evaluate_gives_the_baselines_table(learned: tuple[Any, Path], run: Path) -> None:
    """evaluate scores any sets (here the test split) per task and difficulty with Wilson intervals, in the
    baselines' columns."""
    sets = {task: read_task_set(task_dir(run, "test"), task) for task in ("panel_picking", "reading_order")}
    trainer, _ = learned
    table = evaluate(trainer.model, sets, trainer.builder)
    assert list(table.columns) == COLUMNS
    assert set(table.method) == {"stage4"} and set(table.split) == {"test"}
    assert set(table[table.task == "panel_picking"].difficulty) == {"hard", "easy", "all"}
    assert ((table.low <= table.accuracy) & (table.accuracy <= table.high)).all()
    order = table[table.task == "reading_order"].iloc[0]
    assert 0 <= order.accuracy <= order.pairwise <= 1


def test_ablations_train_into_their_own_folder_and_score_beside_the_model(
    learned: tuple[Any, Path], capsys: pytest.CaptureFixture
) -> None:
    """``--ablation`` trains the same settings with the ablation's change into stage4/ablations/<name>/, the main
    model's checkpoints untouched; score_models scores every trained model on the test sets, each with its inputs."""
    _, target = learned
    main_best = checkpoints(target).best.read_bytes()
    params = target / "params.yaml"
    params.write_text(yaml.safe_dump({**LEARN, "epochs": 1, "ablations": ["no_transformer"]}))
    for name in ("no_transformer", "text_only"):
        code = cli.main(["train", "stage4", "--params", str(params), "--run-dir", str(target), "--ablation", name])
        assert code == 0, capsys.readouterr().err
        assert checkpoints(target, name).best.is_file()
        assert str(checkpoints(target, name).best) in capsys.readouterr().out
    assert checkpoints(target).best.read_bytes() == main_best
    assert set(cli.STAGE4_ABLATIONS) == set(ABLATIONS)

    models = trained_models(target)
    assert list(models) == ["stage4", "no_transformer", "text_only"]
    no_layers, config = load_stage4_model(models["no_transformer"])
    assert no_layers.encoder is None and config["model"]["use_transformer"] is False
    assert load_stage4_model(models["text_only"])[1]["train"]["modalities"] == ["text"]
    table = score_models(target, "test")
    assert list(table.columns) == COLUMNS and set(table.split) == {"test"}
    assert set(table.method) == set(models)
    assert table.groupby("method").task.nunique().to_dict() == {name: len(TASKS) for name in models}
    # The main model scores here exactly as evaluate scores it with its own trainer's inputs.
    own = evaluate(load_stage4_model(models["stage4"])[0], read_sets(target, "test"), learned[0].builder)
    mine = table[table.method == "stage4"].reset_index(drop=True)
    assert mine.accuracy.tolist() == own.accuracy.tolist()


def read_sets(run: Path, split: str) -> dict:
    return {task: read_task_set(task_dir(run, split), task) for task in TASKS}


# ---------------------------------------------------------------------------------------------------- NaN


def test_a_nan_loss_stops_the_run_naming_step_and_task(run: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    trainer = build_stage4_trainer(run, dict(RESUME, checkpoint_every=0, epochs=1))
    task_loss = trainer.model.task_loss

    def poisoned(task: str, batch: Mapping[str, torch.Tensor]) -> torch.Tensor:
        loss = task_loss(task, batch)
        return loss * math.nan if task == "visual_closure" else loss

    monkeypatch.setattr(trainer.model, "task_loss", poisoned)
    first = 1 + [task for task, _ in trainer.plan(0).steps].index("visual_closure")
    with pytest.raises(NonFiniteLossError, match=rf"step {first} \(epoch 1\), task visual_closure: the visual_closure"):
        trainer.train()
    assert trainer.step == first - 1  # the poisoned step was not taken
    assert all(math.isfinite(s["total"]) for s in trainer.history.steps)


# ---------------------------------------------------------------------------------------------------- resume


def seed_flags(store: Path, run_name: str, output_dir: Path) -> list[str]:
    """The seed's train_stage4.py flags for RESUME (the rest comes from a params file)."""
    metadata = str(store / "metadata.json")
    return [
        *("--train_embeddings", str(store), "--train_metadata", metadata),
        *("--val_embeddings", str(store), "--val_metadata", metadata),
        *("--d_model", "32", "--num_layers", "1", "--nhead", "2", "--dim_feedforward", "64"),
        *("--batch_size", "8", "--epochs", "2", "--lr", "0.001"),
        *("--run_name", run_name, "--output_dir", str(output_dir), "--use_wandb"),
    ]


@pytest.fixture(scope="module")
def uninterrupted(run: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """RESUME trained without interruption through the seed's flags, in this process, into a run folder that has no
    task sets at first: the command names ``comicnb tasks``, which builds them."""
    root = tmp_path_factory.mktemp("uninterrupted")
    target = copy_run(run, root / "outputs" / "seeded", tasks=False)
    store = run / STORE_NAME  # the original run's store: --train_embeddings may point anywhere
    params = root / "rest.yaml"
    params.write_text(yaml.safe_dump(dict(train_samples=16, seed=0, checkpoint_every=1)))
    command = ["train", "stage4", "--params", str(params), *seed_flags(store, "seeded", root / "outputs")]
    assert cli.main(command) == 2  # no task sets yet
    assert cli.main(["tasks", "--run-dir", str(target), "--store", str(store)]) == 0
    assert cli.main(["tasks", "--run-dir", str(target), "--store", str(store)]) == 0  # up to date: left alone
    assert cli.main(command) == 0
    return target


def train_command(params: Path, run: Path, *extra: str) -> list[str]:
    """``python -m comicnb train stage4`` of a params file into a run folder."""
    return [sys.executable, "-m", "comicnb", "train", "stage4", "--params", str(params), "--run-dir", str(run), *extra]


@pytest.fixture(scope="module")
def killed(run: Path, uninterrupted: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, dict]:
    """(params file, run folder, last checkpoint) of a real training process killed in its second epoch."""
    root = tmp_path_factory.mktemp("killed")
    params = root / "stage4.yaml"
    params.write_text(yaml.safe_dump(RESUME))
    target = copy_run(run, root / "run")
    steps_per_epoch = torch.load(checkpoints(uninterrupted).last, weights_only=True)["steps_per_epoch"]
    with open(root / "train.log", "w") as log:
        process = subprocess.Popen(train_command(params, target), env=ENV, stdout=log, stderr=subprocess.STDOUT)
        state = kill_mid_epoch(process, checkpoints(target).last, steps_per_epoch)
    assert process.returncode == -signal.SIGKILL
    return params, target, state


def test_a_killed_process_resumes_to_the_uninterrupted_result(killed: tuple, uninterrupted: Path) -> None:
    params, target, at_kill = killed
    expected = torch.load(checkpoints(uninterrupted).last, weights_only=True)
    steps_per_epoch, total = expected["steps_per_epoch"], expected["step"]
    assert steps_per_epoch == 14 and total == 2 * steps_per_epoch
    assert steps_per_epoch < at_kill["step"] < total and at_kill["offset"] == at_kill["step"] % steps_per_epoch
    assert checkpoints(target).best.is_file()  # the first epoch's validation already picked a best checkpoint

    # The same command with --resume, in this process (one thread, as the killed process had with OMP_NUM_THREADS=1).
    assert cli.main(train_command(params, target, "--resume")[3:]) == 0
    got = torch.load(checkpoints(target).last, weights_only=True)
    assert got["step"] == total
    # It resumed: the epochs finished before the kill keep the killed process's own wall-clock times ...
    assert got["history"]["epochs"][: len(at_kill["history"]["epochs"])] == at_kill["history"]["epochs"]
    # ... and took exactly the uninterrupted run's steps: same task, losses and learning rate at every step.
    differ = differences(expected["history"]["steps"], got["history"]["steps"], "history.steps")
    assert not differ, f"steps after the kill at step {at_kill['step']} differ: {differ[:5]}"
    assert without_seconds(got["history"]["epochs"]) == without_seconds(expected["history"]["epochs"])
    for part in ("model_state_dict", "optimizer_state_dict", "scheduler_state_dict", "config", "task_counts"):
        differ = differences(expected[part], got[part], part)
        assert not differ, f"{part} differs after resuming at step {at_kill['step']}: {differ[:5]}"
    assert got["best"] == expected["best"] and got["best"]["metric"] == BEST_METRIC
    best_expected, best_got = (torch.load(checkpoints(r).best, weights_only=True) for r in (uninterrupted, target))
    assert best_got["step"] == best_expected["step"]
    assert not differences(best_expected["model_state_dict"], best_got["model_state_dict"])


def test_the_random_draws_change_the_weights(killed: tuple, uninterrupted: Path) -> None:
    """Resuming the same checkpoint with the generator elsewhere ends elsewhere (dropout and the strip term's panel
    drops draw from it), so a resume that did not restore it would fail the test above."""
    _, target, at_kill = killed
    torch.manual_seed(12345)
    trainer = build_stage4_trainer(target, RESUME)
    trainer.resume(dict(at_kill, rng=rng_state()))
    trainer.train()
    expected = torch.load(checkpoints(uninterrupted).last, weights_only=True)["model_state_dict"]
    assert differences(expected, trainer.model.state_dict())


def test_a_checkpoint_trained_under_other_sampling_rules_is_not_resumed(killed: tuple) -> None:
    """A model whose training samples were drawn by other rules (an older version, with its leaks) is refused on
    resume, naming the rules; the checkpoint records the rules it was trained under."""
    _, target, at_kill = killed
    assert at_kill["data"]["sampling_rules"] == sampling_rules()
    older = dict(at_kill, data={**at_kill["data"], "sampling_rules": {**sampling_rules(), "version": 1}})
    trainer = build_stage4_trainer(target, RESUME)
    with pytest.raises(ValueError, match="data.sampling_rules"):
        trainer.resume(older)


def test_existing_checkpoints_are_refused_without_resume_or_overwrite(uninterrupted: Path) -> None:
    before = checkpoints(uninterrupted).last.read_bytes()
    with pytest.raises(CheckpointExistsError, match="--resume.*--overwrite"):
        train_stage4(uninterrupted, RESUME)
    assert checkpoints(uninterrupted).last.read_bytes() == before


# ---------------------------------------------------------------------------------------------------- the CLI


def test_missing_or_stale_task_sets_name_the_command_that_builds_them(run: Path, tmp_path: Path) -> None:
    target = copy_run(run, tmp_path / "run", tasks=False)
    with pytest.raises(TaskSetsMissingError, match=rf"`python -m comicnb tasks --run-dir {target}` \(or notebook 04"):
        build_stage4_trainer(target, RESUME)
    shutil.copytree(run / "tasks", target / "tasks")
    manifest = target / "tasks" / "val" / "manifest.json"
    manifest.write_text(manifest.read_text().replace('"store_metadata_sha256": "', '"store_metadata_sha256": "0'))
    differ = r"another store or by other sampling rules \(store_metadata_sha256 differ\).*--overwrite"
    with pytest.raises(TaskSetsMissingError, match=differ):
        build_stage4_trainer(target, RESUME)
    manifest.write_text(manifest.read_text().replace('"store_metadata_sha256": "0', '"store_metadata_sha256": "'))
    build_stage4_trainer(target, RESUME)  # current again
    record = json.loads(manifest.read_text())
    record["rules"]["version"] -= 1  # sets of an older comicnb, whose samplers drew differently
    manifest.write_text(json.dumps(record))
    with pytest.raises(TaskSetsMissingError, match=r"\(rules differ\)"):
        build_stage4_trainer(target, RESUME)


def test_help_describes_the_command_and_its_defaults(capsys: pytest.CaptureFixture) -> None:
    with pytest.raises(SystemExit) as exit_:
        cli.main(["train", "stage4", "--help"])
    assert exit_.value.code == 0
    text = " ".join(capsys.readouterr().out.split())
    assert "Train Stage 4, the panel sequence model" in text and "comicnb tasks --run-dir RUN_DIR" in text
    for flag in ("--train_embeddings", "--train_metadata", "--val_embeddings", "--val_metadata", "--run_name"):
        assert flag in text
    assert "sets d_model (default: the params file's, else 128)" in text  # Stage4ModelConfig's, notebook 04's
    assert "sets lr (default: the params file's, else 0.001)" in text
    with pytest.raises(SystemExit):
        cli.main(["tasks", "--help"])
    assert "--max-samples" in capsys.readouterr().out


def test_the_seed_flags_set_the_model_and_training(uninterrupted: Path) -> None:
    state = torch.load(checkpoints(uninterrupted).last, weights_only=True)
    model, train = state["config"]["model"], state["config"]["train"]
    assert (model["d_model"], model["num_layers"], model["nhead"], model["dim_feedforward"]) == (32, 1, 2, 64)
    assert model["input_dim"] == 64  # the store's width
    assert (train["batch_size"], train["epochs"], train["lr"]) == (8, 2, 1e-3)
    assert train["train_samples"] == 16 and train["task_weights"]["reading_order"] == 0.7  # params file; seed table


@pytest.mark.parametrize(
    ("flag", "value", "message"),
    [
        ("--val_embeddings", "elsewhere.zarr", "one comicnb store holds every split"),
        ("--val_metadata", "other.json", "is not the store's metadata"),
    ],
)
def test_the_seed_store_flags_are_checked(
    run: Path, tmp_path: Path, capsys: pytest.CaptureFixture, flag: str, value: str, message: str
) -> None:
    other = tmp_path / "other.json"
    other.write_text("[]")
    store = run / STORE_NAME
    argv = ["train", "stage4", "--run-dir", str(tmp_path / "r"), "--train_embeddings", str(store)]
    path = str(tmp_path / value) if value.endswith(".zarr") else str(other)
    assert cli.main([*argv, flag, path]) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and message in lines[0], lines


def test_an_unknown_setting_is_a_one_line_error(run: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    params = tmp_path / "typo.yaml"
    params.write_text(yaml.safe_dump(dict(epochz=3, store="")))
    assert cli.main(["train", "stage4", "--params", str(params), "--run-dir", str(run)]) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and "'epochz' (did you mean 'epochs'?)" in lines[0], lines
    assert not checkpoints(run).folder.exists()


# ---------------------------------------------------------------------------------------------------- layout prior


def test_reading_order_starts_where_the_geometry_model_reads(run: Path, tmp_path: Path) -> None:
    """With ``layout_prior`` the reading-order head starts as the geometry baseline fitted on the first epoch's
    training pages (held), its content term at zero: before any step it orders every test page as that baseline
    does. A checkpoint config written before the setting rebuilds without the branch."""
    from comicnb.stage4.baselines.geometry import GeometryBaseline

    target = copy_run(run, tmp_path / "run")
    trainer = build_stage4_trainer(target, dict(SMALL_MODEL, epochs=1, train_samples=40, seed=0))
    head = trainer.model.reading_order_head
    assert head.layout is not None and not any(p.requires_grad for p in head.layout.parameters())
    assert head.out[-1].weight.abs().sum() == 0
    first = trainer.plan(0).sets["reading_order"]
    geometry = GeometryBaseline(seed=0).fit(first, trainer.view)
    test_set = read_task_set(task_dir(target, "test"), "reading_order")
    mine = predict_sets(trainer.model, [test_set], trainer.builder)[0]
    theirs = geometry.predict(test_set, trainer.view)
    # The same pair logits as the baseline's, page by page; each decodes them its own way (the model also swaps
    # adjacent panels its pairs disagree with, which only raises pairwise agreement).
    with torch.no_grad():
        logits = trainer.model.eval().task_logits("reading_order", trainer.builder.collate(test_set))
    for b, sample in enumerate(test_set.samples):
        single = TaskSet("reading_order", "test", [sample])
        theirs_pairs = geometry._pair_logits(geometry.net, geometry._pairs(single, trainer.view, False)[0])
        i, j = torch.nonzero(~torch.eye(len(sample.context), dtype=torch.bool), as_tuple=True)
        assert torch.allclose(logits[b][i, j], theirs_pairs, atol=1e-4)
    assert mine.pairwise.mean() >= theirs.pairwise.mean() - 1e-9 and mine.correct.mean() > 0

    old = dict(trainer.model.config)
    old.pop("layout_prior")
    assert Stage4SequenceModel.from_config(old).reading_order_head.layout is None
    with pytest.raises(ValueError, match="no layout branch"):
        Stage4SequenceModel.from_config(old).reading_order_head.set_layout(geometry.net, geometry.mean, geometry.std)


def test_modality_dropout_leaves_a_modality_out_of_its_share_of_steps(run: Path, tmp_path: Path) -> None:
    target = copy_run(run, tmp_path / "run")
    settings = dict(RESUME, checkpoint_every=0, epochs=1, modality_dropout=0.25)
    trainer = build_stage4_trainer(target, settings)
    assert set(trainer.without) == {"vision", "text"}
    picked = []
    for step in range(400):
        trainer.step = step
        builder = trainer.dropped_builder(0)
        picked.append("none" if builder is None else next(k for k, b in trainer.without.items() if b is builder))
    shares = {k: picked.count(k) / len(picked) for k in ("vision", "text", "none")}
    assert abs(shares["vision"] - 0.25) < 0.07 and abs(shares["text"] - 0.25) < 0.07, shares
    trainer.step = 0
    assert [trainer.dropped_builder(0) for _ in range(3)].count(trainer.dropped_builder(0)) == 3  # seeded per step
    assert build_stage4_trainer(copy_run(run, tmp_path / "off"), dict(RESUME, epochs=1)).dropped_builder(0) is None
    with pytest.raises(ValueError, match="modality_dropout needs every modality"):
        build_stage4_trainer(target, dict(settings, modalities=["text"]))
    with pytest.raises(ValueError, match=r"within \[0, 0.5\]"):
        build_stage4_trainer(target, dict(settings, modality_dropout=0.7))
