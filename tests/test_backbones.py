"""Backbones: packaged weights load exactly, each model gets its own preprocessing, missing weights fail clearly."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
import timm
import torch
import transformers
from PIL import Image
from safetensors.torch import save_file
from sklearn import datasets
from transformers import SiglipConfig, SiglipImageProcessor, SiglipModel

from comicnb.stage3 import backbones, encoders
from comicnb.stage3.backbones import (
    BACKBONES,
    TINY_SIGLIP,
    MissingWeightsError,
    build_backbone,
    packaged_efficientnet_lite0,
    resolve_backbone_names,
)
from comicnb.stage3.encoders import DomainAdaptedResNet, DomainAdaptedSigLIP, MultiBackboneVisualEncoder, TextEncoder

PALACE, DAISY = 698, 985  # ImageNet classes of scikit-learn's two sample photos
IMAGENET_MEAN = timm.data.IMAGENET_DEFAULT_MEAN


@pytest.fixture(scope="module")
def lite0() -> backbones.Backbone:
    """The default backbone with its packaged ImageNet weights."""
    return build_backbone("efficientnet_lite0")


def test_efficientnet_lite0_loads_every_packaged_tensor(lite0: backbones.Backbone) -> None:
    source = torch.load(packaged_efficientnet_lite0(), map_location="cpu", weights_only=True)
    dropped = [key for key in source if key in backbones.CLASSIFIER_KEYS]
    loaded = list(lite0.model.state_dict().values())
    assert dropped == ["_fc.weight", "_fc.bias"] and len(loaded) == len(source) - 2
    kept = [tensor for key, tensor in source.items() if key not in dropped]
    assert all(torch.equal(a, b) for a, b in zip(loaded, kept, strict=True))


def test_efficientnet_lite0_classifies_sample_photos(lite0: backbones.Backbone) -> None:
    folder = Path(datasets.__file__).parent / "images"
    photos = torch.stack(
        [lite0.transform(Image.open(folder / name).convert("RGB")) for name in ("china.jpg", "flower.jpg")]
    )  # (2, 3, 224, 224) in [0, 1]
    source = torch.load(packaged_efficientnet_lite0(), map_location="cpu", weights_only=True)
    features = lite0(photos)  # (2, 1280)
    top5 = (features @ source["_fc.weight"].T + source["_fc.bias"]).topk(5).indices
    assert PALACE in top5[0] and top5[1, 0] == DAISY
    untrained = timm.create_model("tf_efficientnet_lite0", pretrained=False, num_classes=0)
    random_features = backbones.wrap_timm("efficientnet_lite0", untrained, frozen=True)(photos)
    assert torch.isfinite(features).all() and torch.isfinite(random_features).all()
    assert not torch.allclose(features, random_features, atol=1e-2)


@pytest.mark.parametrize("name", [*BACKBONES, "test_vit"])
def test_tiny_backbone_shapes_and_own_transform(name: str) -> None:
    backbone = build_backbone(name, tiny=True)
    features = backbone(torch.rand(2, 3, 40, 40))
    assert features.shape == (2, backbone.out_dim) and torch.isfinite(features).all()
    pixels = backbone.transform(Image.new("RGB", (50, 70), (255, 128, 0)))
    assert pixels.shape == (3, *backbone.input_size)
    # The model's own pipeline minus its normalisation (forward applies that): the colour comes out as RGB / 255.
    centre = pixels[:, backbone.input_size[0] // 2, backbone.input_size[1] // 2]
    torch.testing.assert_close(centre, torch.tensor([1.0, 128 / 255, 0.0]), atol=2 / 255, rtol=0)


@pytest.mark.parametrize(
    ("seed_class", "backbone"), [(DomainAdaptedSigLIP, "siglip"), (DomainAdaptedResNet, "resnet50")]
)
def test_the_seeds_visual_encoder_names(seed_class: type, backbone: str) -> None:
    torch.manual_seed(0)
    encoder = seed_class(feature_dim=16, tiny=True).eval()
    assert isinstance(encoder, MultiBackboneVisualEncoder) and [b.name for b in encoder.backbones] == [backbone]
    images = torch.rand(3, 3, 40, 40)  # (B, 3, H, W) in [0, 1], any size: the backbone resizes
    features = encoder(images)
    assert features.shape == (3, 16) and torch.isfinite(features).all()
    assert not torch.allclose(features[0], features[1], atol=1e-4)  # each image its own feature
    assert all(not p.requires_grad for p in encoder.backbones.parameters())  # frozen, as the seed's default
    trainable = seed_class(feature_dim=16, tiny=True, freeze_backbone=False)
    assert all(p.requires_grad for p in trainable.backbones.parameters())


def test_aliases_follow_the_seed() -> None:
    assert resolve_backbone_names("both") == ["siglip", "resnet50"]
    assert resolve_backbone_names(["resnet", "efficientnet_lite0"]) == ["resnet50", "efficientnet_lite0"]
    with pytest.raises(ValueError, match="unknown visual backbone"):
        resolve_backbone_names("not_a_model")


def record_pixels(seen: dict[str, torch.Tensor], name: str) -> Callable:
    """Forward pre-hook storing the pixels a model receives (timm: positional, transformers: pixel_values)."""

    def hook(module: torch.nn.Module, args: tuple, kwargs: dict) -> None:
        seen[name] = args[0] if args else kwargs["pixel_values"]

    return hook


def test_each_backbone_normalises_with_its_own_statistics() -> None:
    encoder = MultiBackboneVisualEncoder(["siglip", "efficientnet_lite0"], feature_dim=16, tiny=True)
    seen: dict[str, torch.Tensor] = {}
    for backbone in encoder.backbones:
        backbone.model.register_forward_pre_hook(record_pixels(seen, backbone.name), with_kwargs=True)
    encoder(torch.full((1, 3, 48, 48), 0.25))
    processor = SiglipImageProcessor()
    assert encoder.backbones[0].mean.flatten().tolist() == list(processor.image_mean) != list(IMAGENET_MEAN)
    assert torch.allclose(seen["siglip"], torch.tensor((0.25 - 0.5) / 0.5))  # SigLIP's mean/std, not ImageNet's
    imagenet = (0.25 - torch.tensor(IMAGENET_MEAN)) / torch.tensor(timm.data.IMAGENET_DEFAULT_STD)
    assert torch.allclose(seen["efficientnet_lite0"][0, :, 0, 0], imagenet)  # timm test model's pretrained_cfg
    assert seen["siglip"].shape[-1] == TINY_SIGLIP["image_size"]


def test_siglip_loads_a_local_folder_with_its_own_processor(tmp_path: Path) -> None:
    text = dict(
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=1,
        num_attention_heads=2,
        vocab_size=64,
        bos_token_id=None,
        eos_token_id=None,
        pad_token_id=1,
    )
    full = SiglipModel(SiglipConfig(vision_config=TINY_SIGLIP, text_config=text))  # laid out like the hub's
    full.save_pretrained(tmp_path)
    model = full.vision_model
    SiglipImageProcessor(
        image_mean=[0.3, 0.3, 0.3],
        image_std=[0.2, 0.2, 0.2],
        size={"height": 32, "width": 32},
    ).save_pretrained(tmp_path)
    backbone = build_backbone("siglip", weights=str(tmp_path))
    assert backbone.mean.flatten().tolist() == pytest.approx([0.3] * 3) and backbone.input_size == (32, 32)
    pairs = zip(backbone.model.state_dict().values(), model.state_dict().values(), strict=True)
    assert all(torch.equal(a, b) for a, b in pairs)


def test_timm_backbone_loads_a_local_weights_file(tmp_path: Path) -> None:
    reference = timm.create_model("test_resnet", pretrained=False)  # with its classifier, as published
    save_file(reference.state_dict(), tmp_path / "model.safetensors")
    backbone = build_backbone("test_resnet", weights=str(tmp_path / "model.safetensors"))
    assert torch.equal(backbone.model.conv1[0].weight, reference.conv1[0].weight)


def raise_offline(*args: object, **kwargs: object) -> None:
    """Stand-in for a download attempted without network."""
    raise OSError("couldn't connect to 'https://huggingface.co'")


@pytest.mark.parametrize(
    "name, patch, fix",
    [
        ("resnet50", (timm, "create_model"), "backbone_weights={'resnet50'"),
        ("siglip", (transformers.SiglipVisionModel, "from_pretrained"), "preprocessor_config.json"),
    ],
)
def test_missing_weights_name_the_model_and_the_fix(
    monkeypatch: pytest.MonkeyPatch, name: str, patch: tuple[object, str], fix: str
) -> None:
    monkeypatch.setattr(*patch, raise_offline)
    with pytest.raises(MissingWeightsError) as caught:
        build_backbone(name)
    assert f"'{name}'" in str(caught.value) and fix in str(caught.value) and "hf download" in str(caught.value)


def test_missing_local_file_and_text_model_fail_clearly(monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(MissingWeightsError, match=r"efficientnet_lite0.*backbone_weights"):
        build_backbone("efficientnet_lite0", weights="/nonexistent/lite0.pth")
    monkeypatch.setattr(encoders, "SentenceTransformer", raise_offline)
    with pytest.raises(MissingWeightsError, match=r"text model.*text_model="):
        TextEncoder("some-org/some-text-model")


def test_cnn_backbones_run_channels_last_with_the_same_features(lite0: backbones.Backbone) -> None:
    assert lite0.channels_last and build_backbone("resnet50", tiny=True).channels_last
    assert not build_backbone("siglip", tiny=True).channels_last  # a transformer gains nothing from NHWC
    images = torch.rand(2, 3, 224, 224)
    nhwc = lite0(images)
    lite0.channels_last = False
    try:
        nchw = lite0(images)  # the same weights, fed contiguous pixels
    finally:
        lite0.channels_last = True
    assert torch.allclose(nhwc, nchw, atol=1e-4)


def test_large_eval_batches_split_on_the_cpu_without_changing_features() -> None:
    backbone = build_backbone("efficientnet_lite0", tiny=True).eval()
    calls = []
    handle = backbone.model.register_forward_hook(lambda module, args, out: calls.append(len(args[0])))
    images = torch.rand(backbones.CPU_MICRO_BATCH * 2 + 3, 3, 32, 32)
    split = backbone(images)
    handle.remove()
    assert calls == [backbones.CPU_MICRO_BATCH, backbones.CPU_MICRO_BATCH, 3]
    whole = backbone.features(backbone.preprocess(images))
    assert torch.allclose(split, whole, atol=1e-5)
    trainable = build_backbone("efficientnet_lite0", tiny=True, frozen=False).train()
    calls.clear()
    trainable.model.register_forward_hook(lambda module, args, out: calls.append(len(args[0])))
    trainable(images)
    assert calls == [len(images)]  # training BatchNorm sees the whole batch


def test_quiet_loading_silences_progress_bars_and_restores_the_setting() -> None:
    from transformers.utils import logging as hf_logging

    hf_logging.enable_progress_bar()
    with backbones.quiet_loading():
        assert not hf_logging.is_progress_bar_enabled()
    assert hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    with backbones.quiet_loading():
        pass
    assert not hf_logging.is_progress_bar_enabled()  # a user's own choice stays
    hf_logging.enable_progress_bar()
