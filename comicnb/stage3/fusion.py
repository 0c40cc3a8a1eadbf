"""Fusion: of several visual backbones into one visual embedding, and of the panel's modalities into one embedding.

Masking contract of ``AdaptiveFusion`` (in eval mode; training may also hide present modalities, see
``modality_dropout``): a masked modality is replaced by exact zeros before anything reads it and its
gate weight is exactly zero, so its input (even NaN) cannot change the output by a single bit; a panel with no
modality (padding) comes out as the zero vector.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

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


@dataclass
class Fused:
    """Fused panel embeddings and the weight each modality got; unpacks as ``embedding, weights``."""

    embedding: Tensor  # (B, D), L2-normalised; zero for padding panels
    weights: Tensor  # (B, M), zero for masked modalities
    fixed_gate: Tensor | None = None  # (B, D) the same vectors with no gradient to the gate (training only)

    def __iter__(self) -> Iterator[Tensor]:
        return iter((self.embedding, self.weights))


class AdaptiveFusion(nn.Module):
    """Gated fusion of per-modality embeddings; gates see which modalities are present and what they say."""

    def __init__(
        self, dim: int, num_modalities: int = len(MODALITIES), modality_dropout: float = 0.0, residual: float = 0.0
    ) -> None:
        super().__init__()
        if not 0.0 <= residual <= 1.0:
            raise ValueError(f"fusion_residual is a share of the fused mix, in [0, 1]; got {residual}")
        # This share of the mix goes to the present modalities equally, beside the gate: each present modality's
        # weight is at least residual / (modalities present), whatever the gate learns, so no modality can be dropped
        # from the fused vector (the seed adds 0.1 x the mean of the modality vectors after its gate for the same
        # effect). What it keeps is information only while the modality's own vectors keep theirs: the objective's
        # neighbourhood term sees to that (docs/modality-collapse.md).
        self.residual = residual
        # Log-weights added to the gate's logits: where training starts from (``set_prior``); zero is a uniform start.
        self.register_buffer("prior", torch.zeros(num_modalities))
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

    @torch.no_grad()
    def set_prior(self, weights: Tensor) -> None:
        """Start the gate from these modality weights (M,), positive: their logs are added to its logits, and the
        gate's own output starts at zero, so every panel starts from exactly these weights (over its present
        modalities); training's ``gate_terms`` say which losses may move it from there."""
        self.prior.copy_(weights.to(self.prior).clamp(min=1e-4).log())
        nn.init.zeros_(self.gate[-1].weight)
        nn.init.zeros_(self.gate[-1].bias)

    def _load_from_state_dict(self, state_dict: dict, prefix: str, *args, **kwargs) -> None:
        # Checkpoints written before the prior have none: zero adds nothing, the fusion they were trained with.
        state_dict.setdefault(prefix + "prior", torch.zeros_like(self.prior))
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def forward(self, modalities: Tensor, mask: Tensor, detach_gate: bool = False, fixed_gate: bool = False) -> Fused:
        """(B, M, D) embeddings and (B, M) mask -> Fused((B, D), (B, M)).

        detach_gate: the same vectors, but no gradient reaches the gate through the weights (a loss that should
        shape the modalities' vectors without choosing between them). fixed_gate: in training, also return that
        version beside the live one (``Fused.fixed_gate``), from the same draw of the fusion dropout.
        """
        mask = mask.bool()
        if self.training and self.modality_dropout > 0:
            keep = mask & (torch.rand(mask.shape, device=mask.device) >= self.modality_dropout)
            mask = torch.where(keep.any(dim=-1, keepdim=True), keep, mask)  # a panel keeps at least one modality
        present = mask[..., None]  # (B, M, 1)
        # Zero masked inputs before the norms too: a NaN behind a mask would otherwise poison LayerNorm's gradients.
        x = torch.where(present, modalities, 0.0)
        x = torch.stack([norm(x[:, i]) for i, norm in enumerate(self.norms)], dim=1)  # (B, M, D)
        x = torch.where(present, x, 0.0)  # LayerNorm(0) is its bias, not zero
        logits = self.gate(torch.cat([x.flatten(1), present.flatten(1).to(x.dtype)], dim=1)) + self.prior  # (B, M)
        # A finite fill (not -inf) keeps all-masked rows free of NaN; exp underflows to exactly 0 for masked ones.
        weights = logits.masked_fill(~present[..., 0], torch.finfo(logits.dtype).min).softmax(dim=-1)
        weights = weights * present[..., 0]  # padding rows: uniform softmax -> zeros
        if self.residual > 0:
            share = present[..., 0].to(weights.dtype) / present[..., 0].sum(dim=-1, keepdim=True).clamp(min=1)
            weights = (1 - self.residual) * weights + self.residual * share  # still sums to one over present ones
        if detach_gate:
            weights = weights.detach()
        fused = self.mix(weights, x, present)
        # Training: the same mix once more with the weights held, for loss terms that must not choose the modalities.
        fixed = self.mix(weights.detach(), x, present) if fixed_gate and self.training and not detach_gate else None
        return Fused(fused, weights, fixed)

    def mix(self, weights: Tensor, x: Tensor, present: Tensor) -> Tensor:
        """(B, D) unit vectors: the weighted sum of the normalised modalities, refined by ``out``; padding zero."""
        fused = (weights[..., None] * x).sum(dim=1)  # (B, D)
        fused = torch.where(present.any(dim=1), fused + self.out(fused), 0.0)  # padding stays exactly zero
        return F.normalize(fused, dim=-1)
