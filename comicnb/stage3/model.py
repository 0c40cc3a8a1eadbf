"""Stage 3 panel encoder: vision, text and composition of each panel, fused into one L2-normalised embedding.

Batches use the seed's keys: ``images`` ([0, 1] floats, see ``comicnb.stage3.backbones``), ``input_ids``,
``attention_mask``, ``comp_feats``, ``modality_mask`` (vision, text, composition), either flat over panels (P, ...)
or page-shaped (B, N, ...) with ``panel_mask`` (B, N). Each encoder only sees the panels that have its modality,
so padding never reaches a backbone or a BatchNorm. Image-only and text-only queries go through the same fusion with
the other modalities masked, so they live in the space of the stored fused embeddings.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from comicnb.checkpoint import file_sha256, load_checkpoint
from comicnb.stage3.config import PanelModelConfig
from comicnb.stage3.encoders import CompositionEncoder, MultiBackboneVisualEncoder, TextEncoder
from comicnb.stage3.fusion import MODALITIES, AdaptiveFusion

# Settings a checkpoint written before they existed was trained without (their value then, not today's default).
WRITTEN_BEFORE = {"fusion_residual": 0.0}
INPUT_KEYS = {"vision": ("images",), "text": ("input_ids", "attention_mask"), "composition": ("comp_feats",)}
# Outputs of the frozen pretrained encoders (see frozen_features); a batch may carry these instead of raw inputs.
FEATURE_KEYS = {"vision": "vision_features", "text": "text_features"}
BATCH_KEYS = ("images", "input_ids", "attention_mask", "comp_feats", "modality_mask", *FEATURE_KEYS.values())


@dataclass
class PanelEncoding:
    """One encoder pass, shaped like the batch: (B, N, ...) for pages, (P, ...) for flat panels."""

    fused: Tensor  # (..., D) L2-normalised; zero for padding panels
    modalities: Tensor  # (..., 3, D) per-modality embeddings before fusion; zero where masked
    modality_mask: Tensor  # (..., 3) bool; padding panels have none
    gate_weights: Tensor  # (..., 3) fusion weight of each modality; zero where masked
    fixed_gate: Tensor | None = None  # (..., D) training only: ``fused`` with no gradient to fusion's gate

    @property
    def panel_mask(self) -> Tensor:
        """(...) bool: panels that have at least one modality."""
        return self.modality_mask.any(dim=-1)


def modality_only(name: str, count: int, device: torch.device) -> Tensor:
    """(count, 3) mask with only one modality present."""
    mask = torch.zeros(count, len(MODALITIES), dtype=torch.bool, device=device)
    mask[:, MODALITIES.index(name)] = True
    return mask


def flatten_pages(batch: Mapping[str, Tensor]) -> tuple[dict[str, Tensor], tuple[int, ...]]:
    """Flatten a page-shaped batch to panels, masking padding panels out; return the leading shape to restore."""
    if "panel_mask" not in batch:
        return dict(batch), ()
    pages, panels = batch["panel_mask"].shape
    flat = {key: batch[key].flatten(0, 1) for key in BATCH_KEYS if key in batch}  # (B * N, ...)
    valid = batch["panel_mask"].bool().flatten()  # (B * N,)
    flat["modality_mask"] = resolve_modality_mask(flat) & valid[:, None]
    return flat, (pages, panels)


def resolve_modality_mask(flat: Mapping[str, Tensor]) -> Tensor:
    """(P, 3) bool: the batch's modality_mask, or every modality whose inputs are present; inputs must exist."""
    present = [all(key in flat for key in INPUT_KEYS[name]) or FEATURE_KEYS.get(name) in flat for name in MODALITIES]
    if "modality_mask" not in flat:
        first = next(flat[key] for key in BATCH_KEYS if key in flat)
        return torch.tensor(present, device=first.device).expand(first.shape[0], -1)
    mask = flat["modality_mask"].bool()
    missing = [name for i, name in enumerate(MODALITIES) if not present[i] and mask[:, i].any()]
    if missing:
        keys = [INPUT_KEYS[name] for name in missing]
        raise ValueError(f"modality_mask marks {missing} present but the batch lacks {keys}")
    return mask


class PanelFeatureExtractor(nn.Module):
    """Multimodal panel encoder of the seed, with image/text query encoders landing in the fused space."""

    def __init__(self, config: PanelModelConfig | None = None, **settings: Any) -> None:
        """Build from a config, or from its fields as keywords, as the seed does:
        ``PanelFeatureExtractor(visual_backbone="both", feature_dim=512)``."""
        super().__init__()
        if config is not None and not isinstance(config, PanelModelConfig):  # the seed's PanelFeatureExtractor("both")
            raise TypeError(
                f"the first argument is a PanelModelConfig; give the backbone by name: "
                f"PanelFeatureExtractor(visual_backbone={config!r})"
            )
        cfg = config if config is not None else PanelModelConfig(**settings)
        self.cfg = cfg
        self.visual = MultiBackboneVisualEncoder(
            cfg.visual_backbone,
            cfg.feature_dim,
            cfg.visual_fusion,
            cfg.freeze_backbones,
            cfg.backbone_weights,
            cfg.tiny,
        )
        self.text = TextEncoder(cfg.text_model, cfg.feature_dim, cfg.freeze_backbones, cfg.max_text_length)
        self.composition = CompositionEncoder(cfg.comp_dim, cfg.feature_dim)
        self.fusion = AdaptiveFusion(cfg.feature_dim, modality_dropout=cfg.fusion_dropout, residual=cfg.fusion_residual)

    @classmethod
    def from_config(cls, config: Mapping[str, Any] | PanelModelConfig) -> PanelFeatureExtractor:
        """Rebuild a model from its config (a checkpoint's ``config["model"]``), then load its state dict into it.

        A config written before the fusion residual existed has none: it rebuilds without one, as it was trained."""
        if isinstance(config, PanelModelConfig):
            return cls(config)
        return cls(PanelModelConfig(**{**WRITTEN_BEFORE, **config}))

    @property
    def config(self) -> dict[str, Any]:
        """The model's config as the plain dict a checkpoint stores."""
        return asdict(self.cfg)

    @property
    def feature_dim(self) -> int:
        """Width of every embedding this model returns."""
        return self.cfg.feature_dim

    @property
    def tokenizer(self) -> Any:
        """The text model's own tokenizer, for input_ids/attention_mask."""
        return self.text.tokenizer

    @property
    def image_transform(self) -> Callable:
        """PIL -> [0, 1] tensor at the common size; backbones normalise inside forward."""
        return self.visual.transform

    @property
    def device(self) -> torch.device:
        """Where the model's parameters live."""
        return self.fusion.gate[0].weight.device

    def forward(self, batch: Mapping[str, Tensor]) -> Tensor:
        """Fused panel embeddings, (P, D) or (B, N, D) like the batch."""
        return self.encode(batch).fused

    def encode(self, batch: Mapping[str, Tensor]) -> PanelEncoding:
        """Per-modality embeddings, their fusion and the gate weights, shaped like the batch."""
        flat, pages = flatten_pages(batch)
        mask = resolve_modality_mask(flat)  # (P, 3)
        modalities = self.encode_rows(flat, mask)  # (P, 3, D)
        fused = self.fusion(modalities, mask, fixed_gate=True)  # the objective's terms pick live or held (training)
        parts = (fused.embedding, modalities, mask, fused.weights, fused.fixed_gate)
        return PanelEncoding(*(part.unflatten(0, pages) if pages and part is not None else part for part in parts))

    def encode_modalities(self, batch: Mapping[str, Tensor]) -> Tensor:
        """(..., 3, D) per-modality embeddings (vision, text, composition), zero where masked: storable for `fuse`."""
        return self.encode(batch).modalities

    def fuse(self, modalities: Tensor, modality_mask: Tensor, detach_gate: bool = False) -> Tensor:
        """Fuse stored per-modality embeddings (..., 3, D) under any mask (..., 3): re-fuse image and text freely.

        detach_gate: no gradient through the gate weights (see AdaptiveFusion.forward)."""
        lead = modalities.shape[:-2]
        flat = modalities.reshape(-1, *modalities.shape[-2:])
        fused = self.fusion(flat, modality_mask.reshape(-1, 3), detach_gate=detach_gate).embedding
        return fused.view(*lead, fused.shape[-1])

    def encode_rows(self, flat: Mapping[str, Tensor], mask: Tensor) -> Tensor:
        """(P, 3, D): each modality encoded only on the panels that have it, zeros elsewhere.

        Cached outputs of the pretrained encoders (``vision_features``, ``text_features``) skip those encoders.
        """

        def vision(rows: Tensor) -> Tensor:
            if "vision_features" in flat:
                return self.visual.adapt(flat["vision_features"][rows])
            return self.visual(flat["images"][rows])

        def text(rows: Tensor) -> Tensor:
            if "text_features" in flat:
                return self.text.adapter(flat["text_features"][rows])
            return self.text(flat["input_ids"][rows], flat["attention_mask"][rows])

        encoders = (vision, text, lambda rows: self.composition(flat["comp_feats"][rows]))
        return torch.stack(
            [self.scatter_rows(mask[:, i], encode, self.feature_dim) for i, encode in enumerate(encoders)], dim=1
        )

    def scatter_rows(
        self, present: Tensor, encode: Callable[[Tensor], Tensor], width: int, dtype: torch.dtype | None = None
    ) -> Tensor:
        """(P, width): encode the selected rows, scatter them back among zeros."""
        rows = present.nonzero().squeeze(1)  # (Q,)
        dtype = dtype or self.fusion.gate[0].weight.dtype  # the model's dtype, whatever autocast made of the encoders
        out = torch.zeros(present.shape[0], width, device=present.device, dtype=dtype)
        if rows.numel() == 0:
            return out
        return out.index_copy(0, rows, encode(rows).to(out.dtype))  # (P, width)

    @torch.no_grad()
    def frozen_features(self, batch: Mapping[str, Tensor]) -> dict[str, Tensor]:
        """Outputs of the frozen pretrained encoders, shaped like the batch, zero where a modality is absent.

        A batch carrying these in place of ``images`` / ``input_ids`` encodes exactly as the raw batch would, so
        training with frozen backbones runs them once per panel and reuses the features every epoch.
        """
        if not self.cfg.freeze_backbones:
            raise ValueError("frozen_features needs freeze_backbones=True: trainable backbones cannot be cached")
        return self.pretrained_features(batch)

    @torch.no_grad()
    def pretrained_features(self, batch: Mapping[str, Tensor]) -> dict[str, Tensor]:
        """The pretrained encoders' outputs as they are now (``frozen_features`` when frozen), without gradients."""
        flat, pages = flatten_pages(batch)
        mask = resolve_modality_mask(flat)  # (P, 3)
        vision = self.scatter_rows(
            mask[:, 0],
            lambda rows: self.visual.backbone_features(flat["images"][rows]),
            sum(self.visual.feature_widths),
            torch.float32,
        )
        text = self.scatter_rows(
            mask[:, 1],
            lambda rows: self.text.sentence_features(flat["input_ids"][rows], flat["attention_mask"][rows]),
            self.text.sentence_dim,
            torch.float32,
        )
        features = {"vision_features": vision, "text_features": text}
        return {key: value.unflatten(0, pages) if pages else value for key, value in features.items()}

    def teacher_features(self, batch: Mapping[str, Tensor]) -> dict[str, Tensor]:
        """What the pretrained encoders know of each panel, shaped like the batch: ``vision`` the backbone features
        centred on the training mean (as the adapters see them; uncentred, random-backbone features share one
        direction), ``text`` the sentence embeddings. Cached features of the batch are used where it carries them."""
        features = {key: batch[key] for key in FEATURE_KEYS.values() if key in batch}
        if len(features) < len(FEATURE_KEYS):
            features = {**self.pretrained_features(batch), **features}
        vision = features["vision_features"].float() - self.visual.feature_mean.to(features["vision_features"].device)
        return {"vision": vision.detach(), "text": features["text_features"].float().detach()}

    def query_embeddings(self, encoding: PanelEncoding) -> dict[str, Tensor]:
        """Image-only and text-only queries of the encoded panels in the fused space; zero where the modality is absent.

        Equal to encode_image_only / encode_text_only of the same panels, without running the encoders again.
        """
        queries = {}
        for name in ("vision", "text"):
            only = torch.zeros_like(encoding.modality_mask)
            only[..., MODALITIES.index(name)] = encoding.modality_mask[..., MODALITIES.index(name)]
            queries[name] = self.fuse(encoding.modalities, only)
        return queries

    def encode_image_only(self, images: Tensor) -> Tensor:
        """(P, 3, H, W) [0, 1] images -> (P, D) queries in the fused space (text and composition masked)."""
        return self({"images": images, "modality_mask": modality_only("vision", images.shape[0], images.device)})

    def encode_text_only(self, input_ids: Tensor, attention_mask: Tensor) -> Tensor:
        """(P, L) tokens -> (P, D) queries in the fused space (vision and composition masked)."""
        mask = modality_only("text", input_ids.shape[0], input_ids.device)
        return self({"input_ids": input_ids, "attention_mask": attention_mask, "modality_mask": mask})

    def encode_query(self, images: Tensor | None = None, texts: Sequence[str] | None = None) -> Tensor:
        """(P, D) search queries in the fused space from images, texts, or both paired row by row (layout masked).

        For an embedding store, query through ``comicnb.search.PanelSearch(store).encode_query(model, ...)``: it
        refuses a model of another checkpoint than the store's, whose vectors would live in another space.
        """
        if images is None and texts is None:
            raise ValueError("a query needs images, texts or both")
        if images is not None and texts is not None and len(images) != len(texts):
            raise ValueError(f"{len(images)} images but {len(texts)} texts: pair them row by row")
        batch: dict[str, Tensor] = {}
        if images is not None:
            batch["images"] = images.to(self.device)
        if texts is not None:
            batch.update({key: value.to(self.device) for key, value in self.text.tokenize(texts).items()})
        count = len(images) if images is not None else len(texts)
        present = torch.tensor([images is not None, texts is not None, False], device=self.device)
        return self({**batch, "modality_mask": present.expand(count, -1)})

    def encode_texts(self, texts: Sequence[str]) -> Tensor:
        """Raw strings -> (P, D) text queries in the fused space."""
        return self.encode_query(texts=texts)


def model_from_checkpoint(checkpoint: Mapping[str, Any] | str | Path) -> PanelFeatureExtractor:
    """The trained panel encoder of a checkpoint (or checkpoint path), in eval mode.

    Loaded from a path, the model records the file (``checkpoint_path``) and its SHA-256 (``checkpoint_sha256``), which
    embedding stores record too: search refuses to pair a store with a model of another checkpoint.
    """
    path = Path(checkpoint) if isinstance(checkpoint, (str, Path)) else None
    checkpoint = load_checkpoint(path) if path is not None else checkpoint
    model = PanelFeatureExtractor.from_config(checkpoint["config"]["model"])
    model.load_state_dict(checkpoint["model_state_dict"])
    model.checkpoint_path = None if path is None else str(path)
    model.checkpoint_sha256 = None if path is None else file_sha256(path)
    return model.eval()
