"""Fusion: of several visual backbones into one visual embedding, and of the panel's modalities into one embedding.

Masking contract of ``AdaptiveFusion`` (in eval mode; training may also hide present modalities, see
``modality_dropout``): a masked modality is replaced by exact zeros before anything reads it and its
gate weight is exactly zero, so its input (even NaN) cannot change the output by a single bit; a panel with no
modality (padding) comes out as the zero vector.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

MODALITIES = ("vision", "text", "composition")


class ConcatFusion(nn.Module):
    """Project the concatenated adapted backbone features; sized from the adapted dim, so backbones may differ."""

    def __init__(self, num_inputs: int, dim: int) -> None:
        super().__init__()
        self.proj = nn.Sequential(nn.LayerNorm(num_inputs * dim), nn.Linear(num_inputs * dim, dim))

    def forward(self, features: Tensor) -> Tensor:
        """(B, K, D) -> (B, D)."""
        return self.proj(features.flatten(1))  # (B, K * D) -> (B, D)


class AttentionFusion(nn.Module):
    """Attention pooling over backbones: each adapted feature is scored, softmax weights mix them."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.score = nn.Sequential(nn.Linear(dim, dim), nn.Tanh(), nn.Linear(dim, 1))

    def forward(self, features: Tensor) -> Tensor:
        """(B, K, D) -> (B, D)."""
        weights = self.score(features).softmax(dim=1)  # (B, K, 1)
        return (weights * features).sum(dim=1)


class GateFusion(nn.Module):
    """Per-dimension sigmoid gates, computed from all backbones together, weight each backbone's feature."""

    def __init__(self, num_inputs: int, dim: int) -> None:
        super().__init__()
        self.gate = nn.Linear(num_inputs * dim, num_inputs * dim)

    def forward(self, features: Tensor) -> Tensor:
        """(B, K, D) -> (B, D)."""
        gates = torch.sigmoid(self.gate(features.flatten(1))).view_as(features)  # (B, K, D)
        return (gates * features).sum(dim=1)


def build_visual_fusion(kind: str, num_inputs: int, dim: int) -> nn.Module:
    """The seed's visual fusions by name: concat, attention or gate."""
    if kind == "concat":
        return ConcatFusion(num_inputs, dim)
    if kind == "attention":
        return AttentionFusion(dim)
    if kind == "gate":
        return GateFusion(num_inputs, dim)
    raise ValueError(f"unknown visual fusion {kind!r}: use concat, attention or gate")


class Fused(NamedTuple):
    """Fused panel embeddings and the weight each modality got."""

    embedding: Tensor  # (B, D), L2-normalised; zero for padding panels
    weights: Tensor  # (B, M), zero for masked modalities


class AdaptiveFusion(nn.Module):
    """Gated fusion of per-modality embeddings; gates see which modalities are present and what they say."""

    def __init__(self, dim: int, num_modalities: int = len(MODALITIES), modality_dropout: float = 0.0) -> None:
        super().__init__()
        # In training, each present modality is hidden from a panel's fusion with this chance (never all of them).
        # Why: the instance term asks every panel to be told apart from every other, and layout (each box is unique)
        # does that from the first step, so a softmax gate settles on it and starves the others of gradient
        # (docs/modality-collapse.md: gates 0 / 0 / 1 with a random ResNet-50). Hidden now and then, layout cannot
        # carry a panel alone, so every modality must make it identifiable. A floor on the gate was measured to keep
        # weight but not information, and a term after fusion (``modality_weight``) did not undo the collapse.
        self.modality_dropout = modality_dropout
        self.norms = nn.ModuleList(nn.LayerNorm(dim) for _ in range(num_modalities))
        self.gate = nn.Sequential(nn.Linear(num_modalities * (dim + 1), dim), nn.GELU(), nn.Linear(dim, num_modalities))
        self.out = nn.Sequential(nn.LayerNorm(dim), nn.Linear(dim, dim), nn.GELU(), nn.Linear(dim, dim))

    def forward(self, modalities: Tensor, mask: Tensor) -> Fused:
        """(B, M, D) embeddings and (B, M) mask -> Fused((B, D), (B, M))."""
        mask = mask.bool()
        if self.training and self.modality_dropout > 0:
            keep = mask & (torch.rand(mask.shape, device=mask.device) >= self.modality_dropout)
            mask = torch.where(keep.any(dim=-1, keepdim=True), keep, mask)  # a panel keeps at least one modality
        present = mask[..., None]  # (B, M, 1)
        # Zero masked inputs before the norms too: a NaN behind a mask would otherwise poison LayerNorm's gradients.
        x = torch.where(present, modalities, 0.0)
        x = torch.stack([norm(x[:, i]) for i, norm in enumerate(self.norms)], dim=1)  # (B, M, D)
        x = torch.where(present, x, 0.0)  # LayerNorm(0) is its bias, not zero
        logits = self.gate(torch.cat([x.flatten(1), present.flatten(1).to(x.dtype)], dim=1))  # (B, M)
        # A finite fill (not -inf) keeps all-masked rows free of NaN; exp underflows to exactly 0 for masked ones.
        weights = logits.masked_fill(~present[..., 0], torch.finfo(logits.dtype).min).softmax(dim=-1)
        weights = weights * present[..., 0]  # padding rows: uniform softmax -> zeros
        fused = (weights[..., None] * x).sum(dim=1)  # (B, D)
        fused = torch.where(present.any(dim=1), fused + self.out(fused), 0.0)  # padding stays exactly zero
        return Fused(F.normalize(fused, dim=-1), weights)
