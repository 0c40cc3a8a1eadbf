"""What the two SIGKILL resume tests (Stage 3's and Stage 4's) share: the subprocess environment, killing a training
process inside an epoch after the first, and comparing two checkpoints value by value."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pytest
import torch

ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}


def kill_mid_epoch(
    process: subprocess.Popen, last: Path, steps_per_epoch: int, timeout: float = 300.0
) -> dict[str, Any]:
    """SIGKILL ``process`` once the last checkpoint on disk is inside an epoch after the first; that checkpoint.

    Each new checkpoint file (written atomically by os.replace) is read while the process is stopped, so the file
    read is the one the killed process leaves behind.
    """
    seen, deadline = None, time.monotonic() + timeout
    while process.poll() is None and time.monotonic() < deadline:
        try:
            stat = last.stat()
        except FileNotFoundError:
            stat = None
        if stat is None or (stat.st_ino, stat.st_mtime_ns) == seen:
            time.sleep(0.005)
            continue
        os.kill(process.pid, signal.SIGSTOP)
        stat = last.stat()  # the file may have been replaced again before the process stopped
        seen = (stat.st_ino, stat.st_mtime_ns)
        checkpoint = torch.load(last, weights_only=True)
        if checkpoint["step"] > steps_per_epoch and checkpoint["step"] % steps_per_epoch:
            process.send_signal(signal.SIGKILL)
            process.wait()
            assert torch.load(last, weights_only=True)["step"] == checkpoint["step"]
            return checkpoint
        os.kill(process.pid, signal.SIGCONT)
    process.kill()
    pytest.fail(
        f"the training process ended (exit {process.wait()}) before it left a checkpoint inside an epoch "
        f"after the first; make the run longer (more epochs or pages, smaller batches)"
    )


def differences(expected: Any, got: Any, where: str = "") -> list[str]:
    """Where two nested checkpoint values differ: tensors by dtype and torch.equal, the rest by ==."""
    if isinstance(expected, torch.Tensor) or isinstance(got, torch.Tensor):
        same = (
            isinstance(expected, torch.Tensor)
            and isinstance(got, torch.Tensor)
            and expected.dtype == got.dtype
            and torch.equal(expected, got)
        )
        return [] if same else [where]
    if isinstance(expected, Mapping) and isinstance(got, Mapping):
        if set(expected) != set(got):
            return [f"{where} keys {sorted(map(str, set(expected) ^ set(got)))}"]
        return [d for key in expected for d in differences(expected[key], got[key], f"{where}.{key}")]
    if isinstance(expected, (list, tuple)) and isinstance(got, (list, tuple)):
        if len(expected) != len(got):
            return [f"{where} length {len(expected)} != {len(got)}"]
        return [d for i, (e, g) in enumerate(zip(expected, got)) for d in differences(e, g, f"{where}[{i}]")]
    return [] if expected == got else [f"{where}: {expected!r} != {got!r}"]


def without_seconds(epochs: list[dict]) -> list[dict]:
    """Epoch records without the wall-clock time, the one thing two runs never share."""
    return [{k: v for k, v in epoch.items() if k != "train_seconds"} for epoch in epochs]
