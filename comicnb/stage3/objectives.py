"""Stage 3 training objectives and collapse diagnostics.

``Stage3Objective`` returns a dict of named loss terms plus their weighted ``total`` (open_clip's
``ClipLoss(output_dict=True)`` pattern): the seed's page contrastive, masked-panel reconstruction and vision-text
alignment terms, an instance term and an optional modality term. The seed's three alone pull every panel of a page
onto one point; the instance term makes a panel's own augmented view its strongest positive, against every other panel
including its page-mates.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from comicnb.metrics import page_index
from comicnb.stage3.config import ObjectiveConfig
from comicnb.stage3.fusion import MODALITIES
from comicnb.stage3.model import PanelEncoding, PanelFeatureExtractor

TERMS = ("contrastive", "reconstruction", "alignment", "instance", "modality", "neighbourhood")
NEIGHBOUR_FILL = -1e4  # a row's own logit: exp underflows to exactly 0, and 0 x it stays finite in the KL


def zero_loss(like: Tensor) -> Tensor:
    """A zero that stays in the graph, for batches where a term has nothing to compare."""
    return like.sum() * 0.0


def info_nce(first: Tensor, second: Tensor, temperature: float) -> Tensor:
    """Symmetric InfoNCE between row-paired (P, D) unit vectors; every other row is a negative."""
    if first.shape[0] < 2:
        return zero_loss(first) + zero_loss(second)
    logits = first @ second.T / temperature  # (P, P)
    labels = torch.arange(first.shape[0], device=first.device)
    return (F.cross_entropy(logits, labels) + F.cross_entropy(logits.T, labels)) / 2


def neighbourhood_loss(student: Tensor, teacher: Tensor, temperature: float) -> Tensor:
    """KL divergence from the teacher's distribution over each row's neighbours to the student's.

    student (P, D) unit vectors, teacher (P, F) any features (compared by cosine); each row's distribution is a softmax
    of its cosines to the *other* rows at ``temperature``. Zero when the student ranks and spaces every row's
    neighbours as the teacher does: the student keeps the teacher's neighbourhoods, not its coordinates.
    """
    if student.shape[0] < 3:  # one other row is no distribution
        return zero_loss(student)
    self_pair = torch.eye(student.shape[0], dtype=torch.bool, device=student.device)
    unit = F.normalize(teacher.float(), dim=-1)
    target = (unit @ unit.T / temperature).masked_fill(self_pair, NEIGHBOUR_FILL).softmax(dim=1)
    log_student = (student.float() @ student.float().T / temperature).masked_fill(self_pair, NEIGHBOUR_FILL)
    return F.kl_div(log_student.log_softmax(dim=1), target, reduction="batchmean")


def page_contrastive_loss(embeddings: Tensor, page_ids: Tensor, temperature: float) -> Tensor:
    """Supervised InfoNCE: panels of the same page are positives, panels of other pages negatives."""
    same = page_ids[:, None] == page_ids[None, :]  # (P, P)
    self_pair = torch.eye(len(page_ids), dtype=torch.bool, device=page_ids.device)
    positives = same & ~self_pair
    anchors = positives.any(dim=1)  # single-panel pages have no positive
    if not anchors.any():
        return zero_loss(embeddings)
    logits = (embeddings @ embeddings.T / temperature).masked_fill(self_pair, torch.finfo(embeddings.dtype).min)
    log_prob = logits - logits.logsumexp(dim=1, keepdim=True)  # (P, P)
    per_anchor = torch.where(positives, log_prob, 0.0).sum(dim=1) / positives.sum(dim=1).clamp(min=1)
    return -per_anchor[anchors].mean()


class MaskedPanelHead(nn.Module):
    """Predicts a masked panel's embedding from the other panels of its page with a small transformer."""

    def __init__(self, feature_dim: int, max_panels: int = 64, num_heads: int = 4, num_layers: int = 1) -> None:
        super().__init__()
        self.mask_token = nn.Parameter(torch.zeros(feature_dim))
        self.position = nn.Embedding(max_panels, feature_dim)  # panels come in reading order
        layer = nn.TransformerEncoderLayer(
            feature_dim, num_heads, 2 * feature_dim, dropout=0.0, batch_first=True, norm_first=True
        )
        self.encoder = nn.TransformerEncoder(layer, num_layers, enable_nested_tensor=False)
        self.out = nn.Linear(feature_dim, feature_dim)

    def forward(self, embeddings: Tensor, panel_mask: Tensor, target: Tensor) -> Tensor:
        """(B, N, D) panels, (B, N) mask, (B,) masked slot -> (B, D) unit-norm prediction for that slot."""
        pages, panels, _ = embeddings.shape
        if panels > self.position.num_embeddings:
            raise ValueError(f"{panels} panels on a page; the head has positions for {self.position.num_embeddings}")
        slot = F.one_hot(target, panels).bool()[..., None]  # (B, N, 1)
        x = torch.where(slot, self.mask_token, embeddings) + self.position.weight[:panels]  # (B, N, D)
        hidden = self.encoder(x, src_key_padding_mask=~panel_mask)  # (B, N, D)
        return F.normalize(self.out(hidden[torch.arange(pages, device=target.device), target]), dim=-1)  # (B, D)

    def loss(self, embeddings: Tensor, panel_mask: Tensor, temperature: float) -> Tensor:
        """InfoNCE of each page's randomly masked panel against every panel of the batch (detached targets)."""
        # Visible page-mates stay among the candidates: telling the missing panel from its neighbours only works
        # while panels of a page remain distinguishable.
        with_context = panel_mask.sum(dim=1) >= 2  # (B,) a page needs another panel to predict from
        if not with_context.any():
            return zero_loss(embeddings)
        embeddings, panel_mask = embeddings[with_context], panel_mask[with_context]
        target = torch.multinomial(panel_mask.float(), 1).squeeze(1)  # (B',) one valid panel per page
        prediction = self(embeddings, panel_mask, target)  # (B', D)
        candidates = embeddings[panel_mask].detach()  # (P', D) valid panels, row-major
        flat_index = (panel_mask.flatten().cumsum(0) - 1).view_as(panel_mask)  # (B', N) position among candidates
        labels = flat_index[torch.arange(len(target), device=target.device), target]  # (B',)
        return F.cross_entropy(prediction @ candidates.T / temperature, labels)


def augment_modalities(
    modalities: Tensor, mask: Tensor, noise: float, dropout: float, modality_drop: float
) -> tuple[Tensor, Tensor]:
    """Feature-level second view: dropout and scaled Gaussian noise per modality, random modality drop (never all)."""
    scale = modalities.detach().std(dim=-1, keepdim=True)  # (..., 3, 1) noise relative to each embedding
    views = F.dropout(modalities, dropout, training=True) + noise * scale * torch.randn_like(modalities)
    keep = mask & (torch.rand(mask.shape, device=mask.device) >= modality_drop)  # (..., 3)
    return views, torch.where(keep.any(dim=-1, keepdim=True), keep, mask)


class Stage3Objective(nn.Module):
    """The Stage 3 training losses; owns the reconstruction head so it is saved with the checkpoint."""

    def __init__(self, config: ObjectiveConfig | None = None, **settings: Any) -> None:
        super().__init__()
        if config is not None and not isinstance(config, ObjectiveConfig):
            raise TypeError(f"the first argument is an ObjectiveConfig, not {config!r}; give settings by name")
        cfg = config if config is not None else ObjectiveConfig(**settings)
        self.cfg = cfg
        self.temperature = cfg.temperature
        weights = (
            cfg.contrastive_weight,
            cfg.reconstruction_weight,
            cfg.alignment_weight,
            cfg.instance_weight,
            cfg.modality_weight,
            cfg.neighbourhood_weight,
        )
        self.weights = dict(zip(TERMS, weights, strict=True))
        self.reconstruction_head = MaskedPanelHead(cfg.feature_dim, cfg.max_panels)

    @classmethod
    def from_config(cls, config: Mapping[str, Any] | ObjectiveConfig) -> Stage3Objective:
        """Rebuild from a config (a checkpoint's ``config["objective"]``)."""
        return cls(config if isinstance(config, ObjectiveConfig) else ObjectiveConfig(**config))

    @property
    def config(self) -> dict[str, Any]:
        """The objective's config as the plain dict a checkpoint stores."""
        return asdict(self.cfg)

    def forward(
        self, model: PanelFeatureExtractor, batch: Mapping[str, Tensor], view2: Mapping[str, Tensor] | None = None
    ) -> dict[str, Tensor]:
        """Named loss terms and their weighted `total` for a page-shaped batch; view2: same panels, other views."""
        if "panel_mask" not in batch:
            raise ValueError("Stage 3 objectives need page-shaped batches (B, N, ...) with panel_mask")
        encoding = model.encode(batch)
        valid = encoding.panel_mask  # (B, N)
        page_ids = page_index(valid)  # (P,)
        contrastive = self.fused_for("contrastive", encoding)[valid]  # (P, D)
        instance = self.fused_for("instance", encoding)[valid]
        terms = {
            "contrastive": page_contrastive_loss(contrastive, page_ids, self.temperature),
            "reconstruction": self.reconstruction_head.loss(
                self.fused_for("reconstruction", encoding), valid, self.temperature
            ),
            "alignment": self.alignment(model, encoding),
            "instance": info_nce(instance, self.second_view(model, encoding, view2)[valid], self.temperature),
            "modality": self.modality_keep(model, encoding),
            "neighbourhood": self.neighbourhood(model, batch, encoding),
        }
        terms["total"] = sum(self.weights[name] * value for name, value in terms.items())
        return terms

    def alignment(self, model: PanelFeatureExtractor, encoding: PanelEncoding) -> Tensor:
        """Symmetric InfoNCE between image-only and text-only queries of panels that have both."""
        both = encoding.modality_mask[..., 0] & encoding.modality_mask[..., 1]  # (B, N)
        modalities = encoding.modalities[both]  # (Q, 3, D)
        only = torch.eye(len(MODALITIES), dtype=torch.bool, device=both.device)  # row i: modality i alone
        vision = model.fuse(modalities, only[0].expand(len(modalities), -1))  # (Q, D)
        text = model.fuse(modalities, only[1].expand(len(modalities), -1))  # (Q, D)
        return info_nce(vision, text, self.temperature)

    def modality_keep(self, model: PanelFeatureExtractor, encoding: PanelEncoding) -> Tensor:
        """Mean over modalities of InfoNCE between each panel's fused embedding and its single-modality query.

        An optional term (``modality_weight``, off by default): it asks the fused vector to find each of its own
        modalities among the batch's panels. The queries are detached targets, so a modality cannot learn to imitate
        the fused vector instead. Measured at 0.5 it did not undo the random-ResNet-50 collapse and pushed a pretrained
        run onto vision alone; what keeps the modalities is centring and fusion dropout (docs/modality-collapse.md).
        """
        mask = encoding.modality_mask[encoding.panel_mask]  # (P, 3)
        modalities = encoding.modalities[encoding.panel_mask]  # (P, 3, D)
        fused = self.fused_for("modality", encoding)[encoding.panel_mask]  # (P, D)
        losses = []
        for i in range(len(MODALITIES)):
            # Panels with only this modality are their own query: nothing to keep there.
            rows = mask[:, i] & (mask.sum(dim=1) > 1)  # (P,)
            if rows.sum() < 2:
                continue
            only = torch.zeros_like(mask[rows])
            only[:, i] = True
            # The query is the target (detached): the fused vector must carry the modality, not the reverse.
            target = model.fuse(modalities[rows], only).detach()
            losses.append(info_nce(fused[rows], target, self.temperature))
        return torch.stack(losses).mean() if losses else zero_loss(fused)

    def neighbourhood(
        self, model: PanelFeatureExtractor, batch: Mapping[str, Tensor], encoding: PanelEncoding
    ) -> Tensor:
        """Mean over image and text of the neighbourhood loss (``neighbourhood_loss``) of the fused vectors and of
        that modality's single-modality queries against the pretrained encoder's own features, over the batch's panels
        that have the modality.

        Why: the other terms reward whatever tells panels apart, and a modality's vectors (and the gate) drift away
        from what its pretrained encoder knew of them; this term asks the fused space, and each query, to keep the
        encoder's neighbours (docs/modality-collapse.md). Skipped (zero, no encoder pass) at weight 0.
        """
        if self.weights["neighbourhood"] == 0:
            return zero_loss(encoding.fused)
        teachers = model.teacher_features(batch)
        queries = model.query_embeddings(encoding)
        fused = self.fused_for("neighbourhood", encoding)
        losses = []
        for name in ("vision", "text"):
            rows = encoding.modality_mask[..., MODALITIES.index(name)]  # (B, N)
            teacher = teachers[name][rows]
            losses.append(neighbourhood_loss(fused[rows], teacher, self.temperature))
            losses.append(neighbourhood_loss(queries[name][rows], teacher, self.temperature))
        return torch.stack(losses).mean()

    def fused_for(self, term: str, encoding: PanelEncoding) -> Tensor:
        """The fused vectors a term reads: live, or with the gate held where ``gate_terms`` does not name the term.

        Why: reconstruction and the instance term are easiest on layout (a page's boxes tile it, and every box is
        unique), so through the gate they pull the fused vector onto layout and away from what the panel shows and
        says (docs/modality-collapse.md); held, they still shape each modality's vectors.
        """
        if term in self.cfg.gate_terms or encoding.fixed_gate is None:
            return encoding.fused
        return encoding.fixed_gate

    def second_view(
        self, model: PanelFeatureExtractor, encoding: PanelEncoding, view2: Mapping[str, Tensor] | None
    ) -> Tensor:
        """(B, N, D) fused embeddings of a second view: the caller's augmented batch, or feature-level augmentation."""
        detach = "instance" not in self.cfg.gate_terms
        if view2 is not None:
            view = model.encode(view2)
            return model.fuse(view.modalities, view.modality_mask, detach_gate=True) if detach else view.fused
        cfg = self.cfg
        views, mask = augment_modalities(
            encoding.modalities, encoding.modality_mask, cfg.feature_noise, cfg.feature_dropout, cfg.modality_drop
        )
        return model.fuse(views, mask, detach_gate=detach)
