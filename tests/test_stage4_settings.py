"""Notebook 04's parameters, the command line and the COMICS scorer take Stage 4's settings from one place, the
config dataclasses: a bare notebook run and a bare `comicnb train stage4` train the same model."""

import ast
from dataclasses import MISSING, asdict, fields
from pathlib import Path

import papermill

from comicnb.cli import build_parser
from comicnb.comics.folds import DEFAULT_FOLDS
from comicnb.comics.settings import FitSettings
from comicnb.stage4.config import (
    DERIVED,
    NOTEBOOK_KEYS,
    SETTING_KEYS,
    Stage4ModelConfig,
    Stage4TrainConfig,
    split_stage4_settings,
)
from comicnb.stage4.seed_cli import seed_overrides

ROOT = Path(__file__).resolve().parent.parent


def defaults(notebook: str) -> dict:
    """A notebook's parameters with their default values."""
    found = papermill.inspect_notebook(str(ROOT / "notebooks" / notebook))
    return {key: ast.literal_eval(spec["default"]) for key, spec in found.items()}


def notebook_04_settings() -> dict:
    """Notebook 04's training settings (its parameters less its own keys) with their defaults."""
    return {k: v for k, v in defaults("04_stage4_training.ipynb").items() if k in SETTING_KEYS}


def test_notebook_04_declares_every_setting_and_its_own_keys():
    declared = set(defaults("04_stage4_training.ipynb"))
    assert declared - NOTEBOOK_KEYS == SETTING_KEYS - DERIVED, "notebook 04's settings and the configs' fields differ"
    assert NOTEBOOK_KEYS <= declared | {"ablations"}


def test_notebook_04_run_bare_trains_the_configs_defaults():
    model, train = split_stage4_settings(notebook_04_settings())
    assert (asdict(model), asdict(train)) == (asdict(Stage4ModelConfig()), asdict(Stage4TrainConfig()))


def test_a_bare_command_line_trains_the_same_model():
    args = build_parser().parse_args(["train", "stage4", "--run-dir", "somewhere"])
    model, train = split_stage4_settings(seed_overrides(args))
    assert (model, train) == split_stage4_settings(
        {k: v for k, v in defaults("04_stage4_training.ipynb").items() if k in SETTING_KEYS}
    )
    flagged = build_parser().parse_args(["train", "stage4", "--d_model", "64", "--reading_order_weight", "0.3"])
    model, train = split_stage4_settings(seed_overrides(flagged, {"panel_picking": 2.0}))
    assert (
        model.d_model == 64
        and train.task_weights["reading_order"] == 0.3
        and train.task_weights["panel_picking"] == 2.0
    )


def test_every_config_field_has_a_default():
    for config in (Stage4ModelConfig, Stage4TrainConfig, FitSettings):
        for field in fields(config):
            assert field.default is not MISSING or field.default_factory is not MISSING, (
                f"{config.__name__}.{field.name}"
            )


def test_the_comics_scorer_is_stage4s_model_and_notebook_05_takes_its_defaults():
    scorer, model = FitSettings(), Stage4ModelConfig()
    for name in ("d_model", "nhead", "num_layers", "dim_feedforward", "dropout"):
        assert getattr(scorer, name) == getattr(model, name), name
    notebook = defaults("05_evaluation.ipynb")
    assert notebook["comics_epochs"] == scorer.epochs and notebook["comics_folds"] == DEFAULT_FOLDS
    assert (
        notebook["train_samples"]
        == Stage4TrainConfig().train_samples
        == defaults("04_stage4_training.ipynb")["train_samples"]
    )
