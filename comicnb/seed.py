"""One call seeds every random number generator a run uses."""

from __future__ import annotations

import contextlib
import random

import numpy as np
import torch


def set_seed(seed: int) -> None:
    """Seed Python's ``random``, NumPy's global generator and torch (CPU and every GPU)."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def isolated_rng() -> contextlib.AbstractContextManager:
    """A block whose random draws (CPU and every GPU) leave the generators as they were: loading and validation
    must not shift a training run's stream."""
    return torch.random.fork_rng(devices=range(torch.cuda.device_count()))
