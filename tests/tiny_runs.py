"""A run folder several test modules share the shape of: a small generated corpus, notebook 01's tables, a tiny
untrained Stage 3 checkpoint and its complete embedding store."""

from __future__ import annotations

from pathlib import Path

import torch

from comicnb import checkpoint
from comicnb.corpus import load_corpus, save_corpus, synth
from comicnb.stage3 import checkpoints
from comicnb.stage3.model import PanelFeatureExtractor
from comicnb.store import EmbedConfig, generate


def tiny_store_run(root: Path, feature_dim: int = 32, pages: int = 4) -> Path:
    """``root/run``: 4 books of ``pages`` pages (split by book 0.5 / 0.25 / 0.25, so one book is held out for test)
    and a store made by a tiny untrained Stage 3 model of width ``feature_dim`` (seeded)."""
    synth.generate(root / "data", books=4, pages=pages, seed=3, page_size=(320, 480))
    save_corpus(load_corpus(root / "data", split=(0.5, 0.25, 0.25), seed=0), root / "run")
    torch.manual_seed(0)
    model = PanelFeatureExtractor(feature_dim=feature_dim, tiny=True)
    state = {"model_state_dict": model.state_dict(), "config": {"model": model.config, "train": {"seed": 0}}}
    checkpoint.save_checkpoint(state, checkpoints(root / "run").last)
    assert generate(root / "run", cfg=EmbedConfig(pages_per_chunk=8))["complete"]
    return root / "run"
