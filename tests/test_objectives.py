"""Stage 3 objectives: finite terms that fall with training, an instance term against collapse, diagnostics."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from page_batches import page_batch

from comicnb.metrics import collapse_diagnostics, page_index, recall_at_k, same_panel_retrieval
from comicnb.stage3.config import ObjectiveConfig
from comicnb.stage3.model import PanelFeatureExtractor
from comicnb.stage3.objectives import TERMS, Stage3Objective, info_nce, neighbourhood_loss, page_contrastive_loss

DIM = 32


def tiny_model(seed: int = 0) -> PanelFeatureExtractor:
    """A tiny model with frozen random backbones, reproducibly initialised."""
    torch.manual_seed(seed)
    return PanelFeatureExtractor(feature_dim=DIM, tiny=True)


def evaluate(objective: Stage3Objective, model: PanelFeatureExtractor, batch: dict) -> dict[str, float]:
    """Loss terms averaged over fixed draws of masked panels and augmentations, leaving training's RNG untouched."""
    with torch.no_grad(), torch.random.fork_rng():
        draws = [torch.manual_seed(seed) and objective(model, batch) for seed in range(4)]
    return {name: sum(d[name].item() for d in draws) / len(draws) for name in draws[0]}


def train(objective: Stage3Objective, model: PanelFeatureExtractor, batch: dict, steps: int) -> None:
    """A few Adam steps on the objective's total, in training mode."""
    params = [p for p in [*model.parameters(), *objective.parameters()] if p.requires_grad]
    optimiser = torch.optim.Adam(params, lr=3e-3)
    model.train()
    for _ in range(steps):
        optimiser.zero_grad()
        objective(model, batch)["total"].backward()
        optimiser.step()


@pytest.mark.parametrize("term", TERMS)
def test_each_term_is_finite_and_falls_when_trained(term: str) -> None:
    model, batch = tiny_model(), page_batch((4, 3, 2))
    objective = Stage3Objective(feature_dim=DIM, **{f"{name}_weight": float(name == term) for name in TERMS})
    before = evaluate(objective, model, batch)
    train(objective, model, batch, steps=15)
    after = evaluate(objective, model, batch)
    assert all(map(torch.isfinite, torch.tensor([*before.values(), *after.values()])))
    assert after[term] < before[term] * 0.9


def test_total_is_the_weighted_sum_and_the_head_is_checkpointed() -> None:
    model, objective = tiny_model(), Stage3Objective(feature_dim=DIM, alignment_weight=2.0)
    terms = objective(model, page_batch((4, 3, 2)))
    weights = dict(contrastive=1.0, reconstruction=0.5, alignment=2.0, instance=1.0, modality=0.0, neighbourhood=0.0)
    assert torch.allclose(terms["total"], sum(weights[name] * terms[name] for name in TERMS))
    assert any(key.startswith("reconstruction_head.") for key in objective.state_dict())
    rebuilt = Stage3Objective.from_config(objective.config)
    assert rebuilt.config == objective.config and rebuilt.weights["alignment"] == 2.0
    assert Stage3Objective(ObjectiveConfig(feature_dim=DIM, alignment_weight=2.0)).config == objective.config


def test_degenerate_batches_give_finite_zero_terms() -> None:
    model = tiny_model()
    batch = page_batch(counts=(1,), panels=2)
    batch["modality_mask"][0, 0, 1] = 0  # one page, one panel, no text
    terms = Stage3Objective(feature_dim=DIM)(model, batch)
    assert all(terms[name].item() == 0 for name in ("contrastive", "reconstruction", "alignment", "instance"))
    terms["total"].backward()


def test_caller_supplied_second_view_is_the_instance_positive() -> None:
    model, batch = tiny_model().eval(), page_batch((4, 3, 2))
    terms = Stage3Objective(feature_dim=DIM)(model, batch, view2=batch)
    valid = batch["panel_mask"].bool()
    panels = model(batch)[valid]
    assert torch.allclose(terms["instance"], info_nce(panels, panels, 0.07))
    torch.manual_seed(0)
    augmented = Stage3Objective(feature_dim=DIM)(model, batch)["instance"]  # no view2: feature-level augmentation
    assert augmented > terms["instance"] + 1e-3  # a noisier positive than the panel itself


def test_instance_term_keeps_panels_of_a_page_apart() -> None:
    def fit(instance_weight: float) -> tuple[dict[str, float], float]:
        torch.manual_seed(0)
        points = torch.nn.Parameter(F.normalize(torch.randn(4, 5, 16), dim=-1))  # 4 pages of 5 panels
        page_ids = torch.arange(4).repeat_interleave(5)
        optimiser = torch.optim.Adam([points], lr=0.1)
        for _ in range(60):
            panels = F.normalize(points, dim=-1).flatten(0, 1)  # (20, 16)
            view = F.normalize(panels + 0.075 * torch.randn_like(panels), dim=-1)  # feature-level augmentation
            loss = page_contrastive_loss(panels, page_ids, 0.07) + instance_weight * info_nce(panels, view, 0.07)
            optimiser.zero_grad()
            loss.backward()
            optimiser.step()
            points.data = F.normalize(points.data, dim=-1)
        panels = points.detach().flatten(0, 1)
        held_out_view = F.normalize(panels + 0.125 * torch.randn_like(panels), dim=-1)
        return collapse_diagnostics(points.detach(), torch.ones(4, 5)), same_panel_retrieval(panels, held_out_view)

    (page_only, recall_page_only), (with_instance, recall_with_instance) = fit(0.0), fit(1.0)
    assert page_only["within_page_cosine"] > 0.85  # the seed's objectives pull a page onto one point
    assert with_instance["within_page_cosine"] < page_only["within_page_cosine"] - 0.3
    assert with_instance["gap"] > 0.3  # pages still separate
    assert recall_with_instance == 1.0 > recall_page_only


def test_neighbourhood_loss_is_zero_only_for_a_student_that_keeps_the_teachers_neighbours() -> None:
    torch.manual_seed(0)
    teacher = torch.randn(12, 40)  # any width: compared by cosine
    basis = torch.linalg.qr(torch.randn(40, 40))[0]  # a rotation keeps every cosine
    kept = F.normalize(teacher @ basis, dim=-1)
    assert neighbourhood_loss(kept, teacher, 0.07).abs() < 1e-5
    shuffled = kept[torch.randperm(12)]  # the same points, other panels' neighbours
    assert neighbourhood_loss(shuffled, teacher, 0.07) > 0.5
    student = torch.nn.Parameter(F.normalize(torch.randn(12, 16), dim=-1))
    optimiser = torch.optim.Adam([student], lr=0.05)
    start = neighbourhood_loss(F.normalize(student, dim=-1), teacher, 0.07).item()
    for _ in range(100):
        optimiser.zero_grad()
        neighbourhood_loss(F.normalize(student, dim=-1), teacher, 0.07).backward()
        optimiser.step()
    assert neighbourhood_loss(F.normalize(student, dim=-1), teacher, 0.07) < 0.2 * start
    assert neighbourhood_loss(kept[:2], teacher[:2], 0.07) == 0  # one neighbour is no distribution


def test_the_neighbourhood_term_reads_cached_features_and_skips_the_encoders_at_weight_zero() -> None:
    model, batch = tiny_model(), page_batch((4, 3, 2))
    cached = {**batch, **model.frozen_features(batch)}
    objective = Stage3Objective(feature_dim=DIM, neighbourhood_weight=1.0)
    with torch.random.fork_rng():
        torch.manual_seed(0)
        from_images = objective(model.eval(), batch)["neighbourhood"]
        torch.manual_seed(0)
        from_cache = objective(model, {key: value for key, value in cached.items() if key != "images"})
    assert torch.allclose(from_images, from_cache["neighbourhood"]) and from_images > 0
    off = Stage3Objective(feature_dim=DIM)
    model.teacher_features = None  # would raise if the term at weight 0 asked for the encoders
    assert off(model, batch)["neighbourhood"] == 0


@pytest.mark.parametrize("term", ["instance", "reconstruction"])
def test_only_the_terms_named_in_gate_terms_move_the_gate(term: str) -> None:
    model, batch = tiny_model(), page_batch((4, 3, 2))
    instance_only = {f"{name}_weight": float(name == term) for name in TERMS}
    for gate_terms, expect_gradient in (([term], True), (["contrastive"], False)):
        model.zero_grad()
        objective = Stage3Objective(feature_dim=DIM, gate_terms=gate_terms, **instance_only)
        objective(model.train(), batch)["total"].backward()
        gate_gradient = sum(float(p.grad.abs().sum()) for p in model.fusion.gate.parameters() if p.grad is not None)
        assert (gate_gradient > 0) == expect_gradient, gate_terms
        assert model.visual.adapters[0].mlp[0].weight.grad.abs().sum() > 0  # the modalities still learn from it
    with pytest.raises(ValueError, match="gate_terms names"):
        ObjectiveConfig(gate_terms=["alignment"])  # it never reads the fused vector


def test_diagnostics_on_known_geometry() -> None:
    axes = torch.eye(4)
    collapsed = axes[:2, None, :].expand(2, 3, 4)  # every panel of a page on its page's axis
    report = collapse_diagnostics(collapsed, torch.tensor([[1, 1, 1], [1, 1, 0]]))
    assert report == {"within_page_cosine": 1.0, "between_page_cosine": 0.0, "gap": 1.0}
    assert same_panel_retrieval(axes, axes) == 1.0 and same_panel_retrieval(axes, axes.roll(1, 0)) == 0.0
    # Query i's own key is axis i - 1, orthogonal to it: one key (axis i) scores above it and two tie with it, so it
    # is second, third or fourth with chance 1/3 each.
    found = recall_at_k(axes, axes.roll(1, 0), ks=(1, 2, 3, 10))
    assert found == pytest.approx({"recall@1": 0.0, "recall@2": 1 / 3, "recall@3": 2 / 3})
    collapsed = torch.ones(4, 3)  # every key ties with the true one: a collapsed model finds it by chance only
    assert recall_at_k(collapsed, collapsed, ks=(1, 4)) == {"recall@1": 0.25, "recall@4": 1.0}
    assert page_index(torch.tensor([[True, True, False], [False, True, True]])).tolist() == [0, 0, 1, 1]
