"""PanelFeatureExtractor: shapes, exact masking, padding, query encoders in the fused space, freezing, checkpoints and
the Stage 3 config dataclasses."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from page_batches import LENGTH, page_batch
from PIL import Image
from torchvision import transforms as T

from comicnb.stage3.batches import collate_pages
from comicnb.stage3.config import (
    ObjectiveConfig,
    PanelModelConfig,
    TrainConfig,
    UnknownSettingError,
    settings_from,
    split_settings,
)
from comicnb.stage3.encoders import MultiBackboneVisualEncoder, packaged_minilm
from comicnb.stage3.fusion import AdaptiveFusion
from comicnb.stage3.model import PanelFeatureExtractor, model_from_checkpoint
from comicnb.stage3.objectives import Stage3Objective

DIM = 32
TEXTS = [
    "Look out, the ship is sinking!",
    "Meanwhile, at the lighthouse...",
    "Rain again!",
    "The lamp flickers.",
    "Who left the door open?",
    "Three crows sit on the wire.",
]


def flat_batch(panels: int = 5) -> dict:
    """Random flat batch of panels that have every modality."""
    return dict(
        images=torch.rand(panels, 3, 32, 32),
        input_ids=torch.randint(1000, 3000, (panels, LENGTH)),
        attention_mask=torch.ones(panels, LENGTH, dtype=torch.long),
        comp_feats=torch.rand(panels, 7),
        modality_mask=torch.ones(panels, 3),
    )


@pytest.fixture(scope="module")
def model() -> PanelFeatureExtractor:
    """A tiny eval-mode model with a single backbone."""
    torch.manual_seed(0)
    return PanelFeatureExtractor(feature_dim=DIM, tiny=True).eval()


@pytest.mark.parametrize("backbone", ["efficientnet_lite0", "resnet50", "siglip", "both", "test_vit"])
@pytest.mark.parametrize("fusion", ["concat", "attention", "gate"])
def test_every_backbone_and_fusion_gives_finite_features(backbone: str, fusion: str) -> None:
    encoder = MultiBackboneVisualEncoder(backbone, feature_dim=DIM, fusion=fusion, tiny=True)
    features = encoder(torch.rand(3, 3, 36, 36))
    assert features.shape == (3, DIM) and torch.isfinite(features).all()


def test_concat_fuses_backbones_of_different_widths() -> None:
    model = PanelFeatureExtractor(
        visual_backbone=["siglip", "resnet50", "efficientnet_lite0"], visual_fusion="concat", feature_dim=DIM, tiny=True
    )
    assert len({backbone.out_dim for backbone in model.visual.backbones}) == 3
    out = model(page_batch())
    assert out.shape == (2, 4, DIM) and torch.isfinite(out).all()


def test_page_batch_shapes_and_zero_padding(model: PanelFeatureExtractor) -> None:
    batch = page_batch()
    batch["images"][1, 2:] = float("nan")  # padding content must never be read
    encoding = model.encode(batch)
    assert encoding.fused.shape == (2, 4, DIM) and encoding.modalities.shape == (2, 4, 3, DIM)
    assert torch.equal(encoding.fused[1, 2:], torch.zeros(2, DIM))
    assert torch.equal(encoding.gate_weights[1, 2:], torch.zeros(2, 3))
    valid = encoding.panel_mask
    assert torch.allclose(encoding.fused[valid].norm(dim=-1), torch.ones(int(valid.sum())))
    assert torch.allclose(encoding.gate_weights[valid].sum(-1), torch.ones(int(valid.sum())))


def test_padding_and_masked_panels_never_reach_the_backbone(model: PanelFeatureExtractor) -> None:
    rows = []
    handle = model.visual.backbones[0].register_forward_hook(lambda module, args, out: rows.append(len(args[0])))
    batch = page_batch(counts=(3, 2))
    batch["modality_mask"][0, 0, 0] = 0  # a panel whose image is missing
    model(batch)
    handle.remove()
    assert rows == [4]


def test_page_batch_matches_flat_batch_of_its_panels(model: PanelFeatureExtractor) -> None:
    batch = page_batch()
    valid = batch["panel_mask"].bool()
    flat = {key: batch[key][valid] for key in ("images", "input_ids", "attention_mask", "comp_feats", "modality_mask")}
    assert torch.allclose(model(batch)[valid], model(flat), atol=1e-6)


def seeded_forward(model: PanelFeatureExtractor, batch: dict) -> torch.Tensor:
    """Forward with a fixed seed, so dropout draws alike whenever the same rows are encoded."""
    torch.manual_seed(0)
    return model(batch)


def test_masked_modalities_change_nothing_even_in_training_mode() -> None:
    torch.manual_seed(0)
    model = PanelFeatureExtractor(feature_dim=DIM, tiny=True, freeze_backbones=False).train()
    batch = flat_batch(6)
    batch["modality_mask"] = torch.tensor([[1, 0, 1], [0, 1, 1], [1, 1, 0], [0, 0, 1], [1, 1, 1], [0, 0, 0]]).float()
    changed = {
        **batch,
        "images": torch.rand(6, 3, 32, 32),
        "input_ids": torch.randint(1000, 3000, (6, LENGTH)),
        "comp_feats": torch.rand(6, 7),
    }
    keep = batch["modality_mask"].bool()  # present inputs stay as they were; only masked ones change
    changed["images"][keep[:, 0]] = batch["images"][keep[:, 0]]
    changed["input_ids"][keep[:, 1]] = batch["input_ids"][keep[:, 1]]
    changed["comp_feats"][keep[:, 2]] = batch["comp_feats"][keep[:, 2]]
    out = seeded_forward(model, batch)
    assert torch.equal(out, seeded_forward(model, changed))  # bit-identical, BatchNorm in training mode included
    assert torch.equal(out[5], torch.zeros(DIM))


def test_fusion_ignores_masked_inputs_bit_exactly_even_nan() -> None:
    fusion = AdaptiveFusion(DIM)
    embeddings, mask = torch.randn(4, 3, DIM), torch.tensor([[1, 0, 1], [0, 1, 0], [1, 1, 1], [0, 0, 0]])
    poisoned = torch.where(mask.bool()[..., None], embeddings, torch.tensor(float("nan")))
    fused, weights = fusion(embeddings, mask)
    fused_poisoned, _ = fusion(poisoned.requires_grad_(), mask)
    assert torch.equal(fused, fused_poisoned) and torch.equal(fused[3], torch.zeros(DIM))
    assert torch.equal(weights[~mask.bool()], torch.zeros(int((mask == 0).sum())))
    fused_poisoned.sum().backward()
    assert all(torch.isfinite(p.grad).all() for p in fusion.parameters() if p.grad is not None)


def test_the_residual_share_keeps_every_present_modality_in_the_mix_whatever_the_gate_says() -> None:
    torch.manual_seed(0)
    fusion = AdaptiveFusion(DIM, residual=0.3)
    with torch.no_grad():  # a gate that wants vision alone, by a margin no softmax can soften
        fusion.gate[-1].weight.zero_()
        fusion.gate[-1].bias.copy_(torch.tensor([50.0, -50.0, -50.0]))
    mask = torch.tensor([[1, 1, 1], [0, 1, 1], [1, 0, 0], [0, 0, 0]])
    _, weights = fusion(torch.randn(4, 3, DIM), mask)
    assert torch.allclose(weights[0], torch.tensor([0.7 + 0.1, 0.1, 0.1]))  # 1 - 0.3 to the gate, 0.3 shared by 3
    assert torch.allclose(weights[1], torch.tensor([0.0, 0.15 + 0.7 * 0.5, 0.15 + 0.7 * 0.5]), atol=1e-6)
    assert torch.equal(weights[2], torch.tensor([1.0, 0.0, 0.0])) and torch.equal(weights[3], torch.zeros(3))
    _, plain = AdaptiveFusion(DIM)(torch.randn(2, 3, DIM), mask[:2])
    assert torch.allclose(plain.sum(dim=1), torch.ones(2))
    with pytest.raises(ValueError, match="fusion_residual"):
        AdaptiveFusion(DIM, residual=1.5)


def test_a_detached_gate_gives_the_same_vectors_and_no_gradient_to_the_gate() -> None:
    torch.manual_seed(0)
    fusion = AdaptiveFusion(DIM, residual=0.2)
    embeddings, mask = torch.randn(5, 3, DIM, requires_grad=True), torch.ones(5, 3)
    fused, _ = fusion(embeddings, mask)
    detached, _ = fusion(embeddings, mask, detach_gate=True)
    assert torch.equal(fused, detached)
    detached.sum().backward()
    assert all(p.grad is None or not p.grad.any() for p in fusion.gate.parameters())
    assert embeddings.grad.abs().sum() > 0 and fusion.out[1].weight.grad.abs().sum() > 0


def test_image_query_lands_in_the_fused_space(model: PanelFeatureExtractor) -> None:
    torch.manual_seed(0)
    batch = {**flat_batch(6), "images": torch.rand(6, 3, 1, 1).expand(-1, -1, 32, 32)}  # distinct flat colours
    query = model.encode_image_only(batch["images"])
    assert torch.equal(query, model({**batch, "modality_mask": torch.tensor([[1.0, 0, 0]]).expand(6, -1)}))
    cosine = query @ model(batch).T  # (query panel, stored panel); untrained, so only on average
    assert cosine.diag().mean() > cosine[~torch.eye(6, dtype=torch.bool)].mean() + 0.1


def test_text_query_equals_the_text_only_fusion_of_a_collated_page(model: PanelFeatureExtractor) -> None:
    items = [
        dict(images=torch.rand(4, 3, 32, 32), texts=[*TEXTS[:3], ""], comp_feats=torch.rand(4, 7), page_id="b/0"),
        dict(images=torch.rand(2, 3, 32, 32), texts=TEXTS[3:5], comp_feats=torch.rand(2, 7), page_id="b/1"),
    ]
    batch = collate_pages(items, tokenizer=model.tokenizer, max_length=model.cfg.max_text_length)
    text_only = batch["modality_mask"].clone()
    text_only[..., [0, 2]] = 0  # images and layout present in the batch, but masked
    inputs = {key: batch[key] for key in ("images", "input_ids", "attention_mask", "comp_feats", "panel_mask")}
    fused = model({**inputs, "modality_mask": text_only})  # (2, 4, D): the page path, tokens padded batch-wide
    has_text = batch["modality_mask"][..., 1].bool()
    assert has_text.sum() == 5 and not fused[~has_text].any()
    torch.testing.assert_close(model.encode_query(texts=TEXTS[:5]), fused[has_text], atol=1e-5, rtol=1e-5)
    tokens = model.text.tokenize(TEXTS[:5])  # the token path of the same queries: each text padded on its own batch
    by_tokens = model.encode_text_only(tokens["input_ids"], tokens["attention_mask"])
    torch.testing.assert_close(by_tokens, fused[has_text], atol=1e-5, rtol=1e-5)


@pytest.fixture(scope="module")
def minilm_model() -> PanelFeatureExtractor:
    """Tiny random image backbone and fusion, but the packaged pretrained MiniLM as text model: texts that differ
    in meaning get different sentence embeddings, which a random tiny BERT barely gives."""
    torch.manual_seed(0)
    return PanelFeatureExtractor(feature_dim=DIM, tiny=True, text_model=packaged_minilm()).eval()


@torch.no_grad()
def test_a_text_query_finds_its_own_panel_among_panels_differing_only_in_text(
    minilm_model: PanelFeatureExtractor,
) -> None:
    count = len(TEXTS)
    torch.manual_seed(1)
    same_look = {
        "images": torch.rand(1, 3, 32, 32).expand(count, -1, -1, -1),
        "comp_feats": torch.rand(1, 7).expand(count, -1),
    }  # one image and one layout for every panel
    stored = minilm_model({**same_look, **minilm_model.text.tokenize(TEXTS), "modality_mask": torch.ones(count, 3)})
    cosine = minilm_model.encode_query(texts=TEXTS) @ stored.T  # (text query, stored fused panel)
    assert cosine.argmax(dim=1).tolist() == list(range(count))


def test_refusing_one_panels_image_with_anothers_text(model: PanelFeatureExtractor) -> None:
    pages = model.encode(page_batch())  # stored per-modality embeddings of pages with padding re-fuse to the store
    assert torch.allclose(model.fuse(pages.modalities, pages.modality_mask), pages.fused, atol=1e-6)
    batch = flat_batch(2)
    encoding = model.encode(batch)
    swapped = encoding.modalities.clone()
    swapped[0, 1] = encoding.modalities[1, 1]  # panel 0's image and layout, panel 1's text
    text_swapped = {**batch, "input_ids": batch["input_ids"][[1, 1]]}
    assert torch.allclose(model.fuse(swapped, encoding.modality_mask)[0], model(text_swapped)[0], atol=1e-6)


def test_imagenet_normalised_images_are_undone_and_others_refused(model: PanelFeatureExtractor) -> None:
    images = torch.rand(2, 3, 32, 32)
    images[:, :, 0, 0], images[:, :, 0, 1] = 0.0, 1.0  # black and white somewhere, as on any comic page
    imagenet_normalised = T.Normalize(mean=[0.485, 0.456, 0.406], std=[0.229, 0.224, 0.225])(images)
    with pytest.warns(UserWarning, match="ImageNet-normalised"):
        restored = model.encode_image_only(imagenet_normalised)
    assert torch.allclose(restored, model.encode_image_only(images), atol=1e-5)
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        model.encode_image_only(images * 2 - 1)  # a [-1, 1] normalisation is ambiguous: refused


def backbone_state(model: PanelFeatureExtractor) -> dict[str, torch.Tensor]:
    """Copy of every backbone parameter and buffer (BatchNorm running statistics included)."""
    return {k: v.clone() for k, v in model.visual.backbones.state_dict().items()}


def train_step(model: PanelFeatureExtractor) -> None:
    """One optimiser step on the Stage 3 objective, in training mode."""
    objective = Stage3Objective(feature_dim=DIM)
    params = [p for p in [*model.parameters(), *objective.parameters()] if p.requires_grad]
    optimiser = torch.optim.SGD(params, lr=0.1)
    model.train()
    objective(model, page_batch(size=48))["total"].backward()
    optimiser.step()


@pytest.mark.parametrize("frozen", [True, False])
def test_frozen_means_frozen(frozen: bool) -> None:
    torch.manual_seed(0)
    model = PanelFeatureExtractor(feature_dim=DIM, tiny=True, freeze_backbones=frozen)
    before, adapter = backbone_state(model), model.visual.adapters[0].mlp[0].weight.clone()
    text_before = model.text.model[0].model.embeddings.word_embeddings.weight.clone()
    train_step(model)
    after = backbone_state(model)
    running = [k for k in before if "running_mean" in k]
    assert running and model.visual.backbones[0].model.training is not frozen
    assert all(torch.equal(before[k], after[k]) for k in before) is frozen
    assert all(torch.equal(before[k], after[k]) for k in running) is frozen  # BatchNorm statistics
    assert torch.equal(text_before, model.text.model[0].model.embeddings.word_embeddings.weight) is frozen
    assert not torch.equal(adapter, model.visual.adapters[0].mlp[0].weight)
    assert model.visual.backbones[0](torch.rand(2, 3, 32, 32)).requires_grad is not frozen  # no graph when frozen


def test_checkpoint_config_rebuilds_the_same_model(tmp_path: Path) -> None:
    settings = dict(
        visual_backbone=["siglip", "efficientnet_lite0"],
        visual_fusion="gate",
        feature_dim=16,
        freeze_backbones=False,
        tiny=True,
        max_text_length=20,
    )
    torch.manual_seed(0)
    model = PanelFeatureExtractor(**settings).eval()
    torch.save({"model_state_dict": model.state_dict(), "config": {"model": model.config}}, tmp_path / "best_model.pt")
    checkpoint = torch.load(tmp_path / "best_model.pt", weights_only=True)  # plain types only
    rebuilt = PanelFeatureExtractor.from_config(checkpoint["config"]["model"])
    assert rebuilt.config == model.config and rebuilt.cfg == PanelModelConfig(**settings)
    assert [b.name for b in rebuilt.visual.backbones] == ["siglip", "efficientnet_lite0"] and rebuilt.feature_dim == 16
    assert rebuilt.cfg.text_model == "tiny" and not rebuilt.cfg.freeze_backbones
    restored = model_from_checkpoint(tmp_path / "best_model.pt")
    batch = page_batch()
    assert not restored.training and torch.equal(restored(batch), model(batch))


def test_flat_settings_split_into_the_three_configs() -> None:
    settings = dict(feature_dim=16, visual_backbone="siglip, resnet50", lr=0.01, max_panels=9, temperature=0.1)
    model_cfg, objective_cfg, train_cfg = split_settings(settings)
    assert model_cfg.visual_backbone == ["siglip", "resnet50"] and model_cfg.feature_dim == 16
    assert (objective_cfg.feature_dim, objective_cfg.max_panels, objective_cfg.temperature) == (16, 9, 0.1)
    assert (train_cfg.lr, train_cfg.max_panels, train_cfg.epochs) == (0.01, 9, TrainConfig().epochs)
    assert objective_cfg == ObjectiveConfig(feature_dim=16, max_panels=9, temperature=0.1)
    assert settings_from({"lr": 0.5, "run_dir": "outputs/x", "tiny": True}) == {"lr": 0.5, "tiny": True}
    with pytest.raises(UnknownSettingError, match=r"^unknown Stage 3 setting 'learning_rate'") as err:
        split_settings(dict(lr=0.01, learning_rate=0.01))
    assert "\n" not in str(err.value)
    with pytest.raises(UnknownSettingError, match=r"'epochz' \(did you mean 'epochs'\?\)"):
        split_settings(dict(epochz=3))
    assert PanelModelConfig(visual_backbone="a, b").visual_backbone == ["a", "b"]
    assert PanelModelConfig(visual_backbone=("a",)).visual_backbone == ["a"]
    assert PanelModelConfig().visual_backbone == "efficientnet_lite0"
    with pytest.raises(ValueError, match="precision"):
        TrainConfig(precision="fp64")


def test_default_model_uses_packaged_pretrained_weights() -> None:
    model = PanelFeatureExtractor(feature_dim=DIM).eval()
    sentences = model.text.model.encode(
        ["A dog runs in the park.", "A puppy is running on the grass.", "Quarterly stock market report."],
        convert_to_tensor=True,
    )
    similar, unrelated = (
        F.cosine_similarity(sentences[0], sentences[1], 0),
        F.cosine_similarity(sentences[0], sentences[2], 0),
    )
    assert similar > unrelated + 0.2
    with torch.no_grad():
        out = model(page_batch(size=224))
    assert out.shape == (2, 4, DIM) and torch.isfinite(out).all()


def test_cached_frozen_features_encode_exactly_like_raw_inputs(model: PanelFeatureExtractor) -> None:
    batch = page_batch()
    cached = {**model.frozen_features(batch), **{k: batch[k] for k in ("comp_feats", "modality_mask", "panel_mask")}}
    assert cached["vision_features"].shape == (2, 4, sum(model.visual.feature_widths))
    assert torch.equal(cached["text_features"][0, 3], torch.zeros(model.text.sentence_dim))  # panel without text
    assert torch.allclose(model(cached), model(batch), atol=1e-6)


def test_trainable_backbones_refuse_a_feature_cache() -> None:
    model = PanelFeatureExtractor(feature_dim=DIM, tiny=True, freeze_backbones=False)
    with pytest.raises(ValueError, match="freeze_backbones"):
        model.frozen_features(page_batch())


def test_query_embeddings_equal_the_query_encoders(model: PanelFeatureExtractor) -> None:
    batch = page_batch()
    valid = batch["panel_mask"].bool()
    queries = model.query_embeddings(model.encode(batch))
    assert torch.allclose(queries["vision"][valid], model.encode_image_only(batch["images"][valid]), atol=1e-6)
    text_only = model.encode_text_only(batch["input_ids"][valid], batch["attention_mask"][valid])
    has_text = batch["modality_mask"][valid][:, 1].bool()
    assert torch.allclose(queries["text"][valid][has_text], text_only[has_text], atol=1e-6)
    assert torch.equal(queries["text"][0, 3], torch.zeros(DIM))  # no text, no text query


def test_the_seeds_inference_example_runs_with_its_import_changed(tmp_path: Path) -> None:
    from comicnb.model import PanelFeatureExtractor  # the seed's import line, module name changed

    trained = PanelFeatureExtractor(feature_dim=512)
    (tmp_path / "checkpoints").mkdir()
    torch.save({"model_state_dict": trained.state_dict()}, tmp_path / "checkpoints" / "best_model.pt")
    Image.new("RGB", (300, 200), (250, 240, 20)).save(tmp_path / "panel.jpg")
    # From here on, the seed's README (its 'both' needs SigLIP and ResNet-50 weights; offline we use the default).
    model = PanelFeatureExtractor(feature_dim=512)
    checkpoint = torch.load(tmp_path / "checkpoints" / "best_model.pt")
    model.load_state_dict(checkpoint["model_state_dict"])
    model.eval()
    transform = T.Compose(
        [T.Resize((224, 224)), T.ToTensor(), T.Normalize(mean=[0.485, 0.456, 0.406], std=[0.229, 0.224, 0.225])]
    )
    image = Image.open(tmp_path / "panel.jpg").convert("RGB")
    image_tensor = transform(image).unsqueeze(0)
    with torch.no_grad(), pytest.warns(UserWarning, match="ImageNet-normalised"):
        embedding = model.encode_image_only(image_tensor)
    assert embedding.shape == (1, 512) and torch.isfinite(embedding).all()


@pytest.mark.parametrize("frozen", [True, False])
def test_both_backbones_honour_the_freeze_flag(frozen: bool) -> None:
    model = PanelFeatureExtractor(visual_backbone="both", feature_dim=DIM, tiny=True, freeze_backbones=frozen).train()
    assert [b.name for b in model.visual.backbones] == ["siglip", "resnet50"]
    for backbone in model.visual.backbones:
        assert all(p.requires_grad is not frozen for p in backbone.parameters())
        assert backbone.model.training is not frozen


def test_queries_by_image_text_or_both_land_in_the_fused_space(model: PanelFeatureExtractor) -> None:
    images, texts = torch.rand(2, 3, 32, 32), ["The lamp flickers.", "Rain again!"]
    full = {"images": images, **model.text.tokenize(texts), "comp_feats": torch.rand(2, 7)}  # layout given, masked
    image_only, both = torch.tensor([[1.0, 0.0, 0.0]]).expand(2, -1), torch.tensor([[1.0, 1.0, 0.0]]).expand(2, -1)
    assert torch.allclose(model.encode_query(images=images), model({**full, "modality_mask": image_only}), atol=1e-6)
    paired = model.encode_query(images, texts)
    assert torch.allclose(paired, model({**full, "modality_mask": both}), atol=1e-6)
    assert not torch.allclose(paired, model({**full, "modality_mask": torch.ones(2, 3)}), atol=1e-3)
    with pytest.raises(ValueError, match="pair them"):
        model.encode_query(images, texts[:1])
    with pytest.raises(ValueError, match="images, texts or both"):
        model.encode_query()


def test_a_checkpoint_written_before_the_fusion_residual_loads_as_it_was_trained() -> None:
    torch.manual_seed(0)
    old = PanelFeatureExtractor(feature_dim=DIM, tiny=True, fusion_residual=0.0).eval()
    config = old.config
    del config["fusion_residual"]  # what a checkpoint of that time holds
    state = {key: value for key, value in old.state_dict().items() if not key.endswith("fusion.prior")}
    rebuilt = PanelFeatureExtractor.from_config(config)
    rebuilt.load_state_dict(state)
    batch = flat_batch(4)
    assert rebuilt.cfg.fusion_residual == 0.0 and torch.equal(rebuilt.eval()(batch), old(batch))
    assert PanelFeatureExtractor.from_config(old.config).cfg.fusion_residual == 0.0  # a stated value is kept
    assert PanelFeatureExtractor.from_config({"feature_dim": DIM, "tiny": True}).cfg.fusion_residual == 0.0
