"""Stage 3: backbones, per-modality encoders, fusion, the panel model, objectives, batches and the trainer.

Importing this package, or ``comicnb.stage3.model``, loads no training code of ours: the trainer comes in only with
``comicnb.stage3.trainer``. (transformers itself imports Accelerate's utilities when the package is installed.)
"""

from __future__ import annotations

from pathlib import Path

from comicnb.checkpoint import StageCheckpoints

STAGE = "stage3"


def checkpoints(run_dir: str | Path) -> StageCheckpoints:
    """The Stage 3 checkpoint files of a run: ``<run_dir>/stage3/checkpoint.pt`` and ``best_model.pt``."""
    return StageCheckpoints(Path(run_dir), STAGE)
