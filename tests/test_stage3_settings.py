"""Notebook 02's parameters and the Stage 3 config dataclasses name the same settings with the same defaults."""

import ast
from dataclasses import MISSING, fields
from pathlib import Path

import papermill

from comicnb.stage3.config import DERIVED, ObjectiveConfig, PanelModelConfig, TrainConfig, split_settings

ROOT = Path(__file__).resolve().parent.parent
NOTEBOOK_02 = ROOT / "notebooks" / "02_stage3_training.ipynb"
# Settings a notebook user does not set: derived from others, or the model's own input width.
NOT_IN_NOTEBOOK = DERIVED | {"comp_dim"}
# Notebook 02's parameters that are not training settings: where the run lives, and what to do with its checkpoints.
NOT_SETTINGS = {"run_dir", "overwrite"}


def notebook_defaults() -> dict:
    """Notebook 02's training parameters (run_dir and overwrite aside) with their default values."""
    found = papermill.inspect_notebook(str(NOTEBOOK_02))
    return {key: ast.literal_eval(spec["default"]) for key, spec in found.items() if key not in NOT_SETTINGS}


def config_fields() -> set[str]:
    """Every field of the three configs a notebook user can set."""
    return {f.name for config in (PanelModelConfig, ObjectiveConfig, TrainConfig) for f in fields(config)}


def test_notebook_02_sets_exactly_the_config_fields():
    declared = set(notebook_defaults())
    assert declared - config_fields() == set(), "notebook 02 declares parameters no config has"
    assert config_fields() - NOT_IN_NOTEBOOK - declared == set(), "a config field is missing from notebook 02"


def test_notebook_02_defaults_build_valid_configs():
    model, objective, train = split_settings(notebook_defaults())
    assert objective.feature_dim == model.feature_dim and objective.max_panels == train.max_panels
    assert model.text_model is None  # the notebook's "" means the packaged MiniLM


def test_notebook_02_run_bare_trains_the_configs_defaults():
    """One default per setting: the notebook repeats the dataclasses', so `comicnb train stage3` without --params
    trains what notebook 02 run bare trains."""
    assert split_settings(notebook_defaults()) == split_settings({})


def test_every_config_field_has_a_default():
    for config in (PanelModelConfig, ObjectiveConfig, TrainConfig):
        for field in fields(config):
            has_default = field.default is not MISSING or field.default_factory is not MISSING
            assert has_default, f"{config.__name__}.{field.name}"
