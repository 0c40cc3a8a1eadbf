"""One precision vocabulary for training and inference: ``auto``, ``fp32``, ``bf16``, ``fp16``.

``auto`` means bf16 on a GPU that supports it and fp32 everywhere else. Accelerate calls fp32 ``no``; that word stays
inside this module.
"""

from __future__ import annotations

import contextlib

import torch

PRECISIONS = ("auto", "fp32", "bf16", "fp16")


def resolve_precision(setting: str, device: torch.device | str | None = None) -> str:
    """The precision actually used for ``setting`` on ``device`` (default: the GPU when there is one)."""
    if setting not in PRECISIONS:
        raise ValueError(f"precision must be one of {', '.join(PRECISIONS)}, not {setting!r}")
    if setting != "auto":
        return setting
    kind = torch.device(device).type if device is not None else ("cuda" if torch.cuda.is_available() else "cpu")
    return "bf16" if kind == "cuda" and torch.cuda.is_bf16_supported() else "fp32"


def accelerate_mixed_precision(setting: str) -> str:
    """Accelerate's ``mixed_precision`` argument for a precision setting."""
    precision = resolve_precision(setting)
    return "no" if precision == "fp32" else precision


def autocast(precision: str, device: torch.device) -> contextlib.AbstractContextManager:
    """Autocast for a resolved precision on ``device`` (a no-op for fp32)."""
    if precision == "fp32":
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=torch.bfloat16 if precision == "bf16" else torch.float16)
