"""Stage 3 training: pages table -> page batches -> objectives -> checkpoints, through HF Accelerate.

``python -m comicnb train stage3`` and notebook 02 both call :func:`train_stage3`. Accelerate picks the device and
mixed precision, and ``accelerate launch`` spreads the same loop over several GPUs.

Determinism: the order of pages in epoch ``e`` and the random draws of step ``s`` (masks, augmentation, dropout) are
functions of ``(seed, e)`` and ``(seed, s)`` only. After each step the generator is seeded for the next one, so the
generator's state between steps *is* the next step's seed: a checkpoint stores it and a resumed run restores it,
then continues at the checkpoint's step inside its epoch (the offset), with the scheduler where it was, and takes
exactly the steps of the uninterrupted run. Feature-cache filling and validation run in a forked generator, so they
draw nothing from the training stream. With frozen backbones the frozen encoders run once per panel (the feature
cache) and every epoch trains on their stored outputs.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from accelerate import Accelerator, DistributedDataParallelKwargs
from torch import Tensor, nn

from comicnb.checkpoint import StageCheckpoints, load_checkpoint, resume_conflicts
from comicnb.corpus.checks import checked_run_pages
from comicnb.loop import EpochLoop
from comicnb.metrics import collapse_diagnostics, recall_at_k, same_panel_retrieval
from comicnb.precision import accelerate_mixed_precision
from comicnb.schedule import epoch_batches, shard_batches
from comicnb.seed import isolated_rng, set_seed
from comicnb.stage3 import checkpoints
from comicnb.stage3.batches import page_chunks, page_loader, tensors_only
from comicnb.stage3.config import (
    RESUMABLE_CHANGES,
    ObjectiveConfig,
    PanelModelConfig,
    TrainConfig,
    config_dicts,
    split_settings,
)
from comicnb.stage3.fusion import MODALITIES
from comicnb.stage3.model import PanelFeatureExtractor
from comicnb.stage3.objectives import TERMS, Stage3Objective

VAL_SEED = 1234  # fixed draws for validation, whatever the training seed


class Stage3Trainable(nn.Module):
    """Model and objective in one module, so a distributed wrapper sees one forward that returns the loss terms."""

    def __init__(self, model: PanelFeatureExtractor, objective: Stage3Objective) -> None:
        super().__init__()
        self.model = model
        self.objective = objective

    def forward(self, batch: Mapping[str, Tensor]) -> dict[str, Tensor]:
        """Named loss terms and their weighted total."""
        return self.objective(self.model, batch)


# ---------------------------------------------------------------------------------------------------- batches


class PageTensors:
    """Page-shaped inputs of a set of pages held in memory: (pages, max_panels, ...) tensors and panel_mask."""

    def __init__(self, tensors: dict[str, Tensor]) -> None:
        self.tensors = tensors

    def __len__(self) -> int:
        return self.tensors["panel_mask"].shape[0]

    def batch(self, indices: list[int], device: torch.device) -> dict[str, Tensor]:
        """The pages at ``indices`` as a page-shaped batch on ``device``."""
        index = torch.tensor(indices)
        return {key: value[index].to(device) for key, value in self.tensors.items()}


@torch.no_grad()
def build_feature_cache(
    model: PanelFeatureExtractor, pages: pd.DataFrame, data_root: Path, cfg: TrainConfig, device: torch.device
) -> PageTensors:
    """Run the frozen encoders once over every panel of ``pages``; keep their outputs with the other inputs."""
    chunks = page_chunks(len(pages), cfg.encode_batch_pages)
    parts: dict[str, list[Tensor]] = {}
    for batch in page_loader(pages, data_root, model, chunks, cfg.max_panels, cfg.num_workers):
        inputs = tensors_only(batch, device)
        cached = {
            **model.frozen_features(inputs),
            "comp_feats": inputs["comp_feats"],
            "modality_mask": inputs["modality_mask"],
            "panel_mask": inputs["panel_mask"],
        }
        for key, value in cached.items():
            parts.setdefault(key, []).append(value.cpu())
    return PageTensors({key: torch.cat(values) for key, values in parts.items()})


class BatchSource:
    """Page-shaped batches for a list of page-index batches: from the feature cache, or decoded from images."""

    def __init__(
        self, pages: pd.DataFrame, data_root: Path, model: PanelFeatureExtractor, cfg: TrainConfig, device: torch.device
    ) -> None:
        self.pages, self.data_root, self.model, self.cfg, self.device = pages, data_root, model, cfg, device
        self.cached = cfg.cache_features and model.cfg.freeze_backbones
        self.cache: PageTensors | None = None  # filled by the first pass, so the first epoch pays for it

    def __len__(self) -> int:
        return len(self.pages)

    @torch.no_grad()
    def vision_feature_mean(self) -> Tensor:
        """Mean pretrained image feature over these pages' panels that have an image (the adapters' centre)."""
        total = torch.zeros(sum(self.model.visual.feature_widths), dtype=torch.float64)
        count, mode = 0, self.model.training
        self.model.eval()  # no BatchNorm statistics move while measuring
        with isolated_rng():
            for batch in self.iterate(page_chunks(len(self), self.cfg.encode_batch_pages)):
                present = batch["panel_mask"].bool() & batch["modality_mask"][..., 0].bool()  # (B, N)
                if "vision_features" in batch:
                    features = batch["vision_features"][present]
                else:  # trainable backbones: their features at the start, a fixed centre from then on
                    features = self.model.visual.backbone_features(batch["images"][present])
                total += features.double().sum(dim=0).cpu()
                count += int(present.sum())
        self.model.train(mode)
        return (total / max(count, 1)).float()

    @torch.no_grad()
    def modality_page_scores(self, max_panels: int = 4000, k: int = 5) -> Tensor:
        """(3,) how well each modality alone finds a panel's page-mates among these pages' panels (untrained model).

        Per modality, over the panels that have it (the first ``max_panels``): the share of each panel's k nearest
        other panels, by the cosine of its single-modality query, that lie on its own page, less the share a random
        pick would get, over what is left above chance; 0 for a modality no better than chance, 1 when every hit is a
        page-mate (pages of at most k panels cannot reach it). Page-mates are the label-free stand-in for "same story"
        that the page-contrastive term also uses.
        """
        vectors: dict[int, list[Tensor]] = {i: [] for i in range(len(MODALITIES))}
        pages: dict[int, list[Tensor]] = {i: [] for i in range(len(MODALITIES))}
        mode, seen = self.model.training, 0
        self.model.eval()
        with isolated_rng():
            chunks = page_chunks(len(self), self.cfg.encode_batch_pages)
            for chunk, batch in zip(chunks, self.iterate(chunks), strict=True):
                encoding = self.model.encode(batch)
                page_of = torch.tensor(chunk, device=encoding.fused.device)[:, None].expand_as(encoding.panel_mask)
                for i in range(len(MODALITIES)):
                    rows = encoding.modality_mask[..., i]  # (B, N)
                    only = torch.zeros_like(encoding.modality_mask[rows])
                    only[:, i] = True
                    vectors[i].append(self.model.fuse(encoding.modalities[rows], only).cpu())
                    pages[i].append(page_of[rows].cpu())
                seen += int(encoding.panel_mask.sum())
                if seen >= max_panels:
                    break
        self.model.train(mode)
        scores = torch.zeros(len(MODALITIES))
        for i in range(len(MODALITIES)):
            if not vectors[i]:
                continue
            x, page = torch.cat(vectors[i])[:max_panels], torch.cat(pages[i])[:max_panels]
            if len(x) <= k:
                continue
            same = page[:, None] == page[None, :]
            similarity = (x @ x.T).fill_diagonal_(-math.inf)
            hits = same.gather(1, similarity.topk(k, dim=1).indices).float().mean()
            chance = (same.sum() - len(x)) / (len(x) * (len(x) - 1))
            scores[i] = ((hits - chance) / (1 - chance)).clamp(min=0)
        return scores

    def fill_cache(self) -> bool:
        """Run the frozen encoders over every page once and keep their outputs, unless done already; whether these
        pages are served from a cache at all (False: frozen features are not cached, nothing is run)."""
        if self.cached and self.cache is None:
            with isolated_rng():  # loading draws nothing from the training stream
                self.cache = build_feature_cache(self.model, self.pages, self.data_root, self.cfg, self.device)
        return self.cached

    def iterate(self, batches: list[list[int]]) -> Iterator[dict[str, Tensor]]:
        """Yield one batch per entry of ``batches``."""
        if self.fill_cache():
            yield from (self.cache.batch(indices, self.device) for indices in batches)
        elif batches:
            loader = page_loader(
                self.pages, self.data_root, self.model, batches, self.cfg.max_panels, self.cfg.num_workers
            )
            with isolated_rng():  # a DataLoader iterator draws its base seed from torch
                batches_iter = iter(loader)
            yield from (tensors_only(batch, self.device) for batch in batches_iter)


# ---------------------------------------------------------------------------------------------------- the loop


class Stage3Trainer(EpochLoop):
    """Trains a PanelFeatureExtractor on the train pages and measures it on the validation pages."""

    def __init__(
        self,
        model: PanelFeatureExtractor,
        objective: Stage3Objective,
        cfg: TrainConfig,
        train_pages: pd.DataFrame,
        val_pages: pd.DataFrame,
        data_root: str | Path,
    ) -> None:
        if train_pages.empty:
            raise ValueError("no training pages: the pages table has no row with split == 'train'")
        set_seed(cfg.seed)
        self.cfg = cfg
        # A batch without any text leaves the text adapter unused; DDP must not wait for its gradients.
        self.accelerator = Accelerator(
            mixed_precision=accelerate_mixed_precision(cfg.precision),
            kwargs_handlers=[DistributedDataParallelKwargs(find_unused_parameters=True)],
        )
        self.trainable = Stage3Trainable(model, objective)
        device = self.accelerator.device
        self.trainable.to(device)
        self.train_source = BatchSource(train_pages, Path(data_root), model, cfg, device)
        self.val_source = BatchSource(val_pages, Path(data_root), model, cfg, device)
        # One synchronised step takes one batch on each process.
        batches = math.ceil(len(train_pages) / cfg.batch_size)
        self.steps_per_epoch = math.ceil(batches / self.accelerator.num_processes)
        self.start_loop(self.trainable)
        self.last_validation: dict[str, Tensor] = {}

    @property
    def model(self) -> PanelFeatureExtractor:
        """The panel encoder being trained."""
        return self.trainable.model

    def first_validation(self) -> dict[str, float]:
        """The untrained model's figures, once image features are centred on the training pages' mean and the gate
        starts from its prior (``page_score_<modality>``: each modality's page-mate score, see modality_page_scores)."""
        if self.cfg.center_features:
            self.model.visual.set_feature_mean(self.train_source.vision_feature_mean())
        scores = {}
        if self.cfg.gate_prior:
            prior = self.train_source.modality_page_scores()
            self.model.fusion.set_prior(prior + GATE_PRIOR_FLOOR)
            scores = {f"page_score_{name}": float(value) for name, value in zip(MODALITIES, prior, strict=True)}
        scalars, self.last_validation = self.validate()
        return {**scalars, **scores}

    def epoch_steps(self, epoch: int, offset: int, count: int) -> Iterator[None]:
        """The epoch's page batches from ``offset``, one optimisation step each (see the module)."""
        batches = epoch_batches(len(self.train_source), self.cfg.batch_size, self.cfg.seed, epoch)
        mine = shard_batches(batches, self.accelerator.process_index, self.accelerator.num_processes)
        for batch in self.train_source.iterate(mine[offset : offset + count]):
            self.train_step(batch)
            yield

    def end_epoch(self, epoch: int, seconds: float, files: StageCheckpoints | None) -> None:
        """Validate, record the epoch, and write the last checkpoint and, when the figure improved, the best."""
        scalars, self.last_validation = self.validate()
        self.warn_low_gates(scalars, epoch)
        self.record_epoch(epoch, seconds, scalars, self.cfg.best_metric, files)

    def low_gates(self, scalars: Mapping[str, float] | None = None) -> dict[str, float]:
        """Present modalities whose mean validation gate weight is below ``min_gate_weight`` (latest epoch by default).

        A modality under the floor hardly reaches the stored vectors: fusion has (nearly) collapsed onto the others.
        """
        scalars = scalars if scalars is not None else (self.history.epochs[-1] if self.history.epochs else {})
        floor = self.cfg.min_gate_weight
        found = {name: scalars.get(f"gate_{name}", math.nan) for name in MODALITIES}
        return {name: value for name, value in found.items() if not math.isnan(value) and value < floor}

    def warn_low_gates(self, scalars: Mapping[str, float], epoch: int) -> None:
        """Warn (once per epoch, main process) naming each present modality below the gate floor."""
        low = self.low_gates(scalars)
        if low and self.accelerator.is_main_process:
            warnings.warn(gate_warning(low, self.cfg.min_gate_weight, epoch), CollapseWarning, stacklevel=2)

    def train_step(self, batch: Mapping[str, Tensor]) -> dict[str, float]:
        """One optimisation step; its random draws come from the generator state seeded for it (see the module)."""
        self.wrapped.train()
        with self.accelerator.autocast():
            terms = self.wrapped(batch)
        self.optimise(terms["total"])
        logged = {
            "step": self.step,
            "lr": self.scheduler.get_last_lr()[0],
            **{name: float(value.detach()) for name, value in terms.items()},
        }
        self.history.steps.append(logged)
        return logged

    @torch.no_grad()
    def validate(self) -> tuple[dict[str, float], dict[str, Tensor]]:
        """Deterministic validation (eval mode, fixed draws): scalar figures, and per-panel gate weights."""
        if len(self.val_source) == 0:
            return {}, {}
        with isolated_rng():
            torch.manual_seed(VAL_SEED)
            self.trainable.eval()
            batches = page_chunks(len(self.val_source), self.cfg.batch_size)
            outputs = [self.validate_batch(batch) for batch in self.val_source.iterate(batches)]
        return summarise_validation(outputs)

    def validate_batch(self, batch: Mapping[str, Tensor]) -> dict[str, Any]:
        """Loss terms and the embeddings one validation batch needs for the diagnostics."""
        with self.accelerator.autocast():
            terms = self.trainable(batch)
            encoding = self.model.encode(batch)
            second = self.trainable.objective.second_view(self.model, encoding, None)
            queries = self.model.query_embeddings(encoding)
        valid = encoding.panel_mask
        return dict(
            terms={k: float(v) for k, v in terms.items()},
            fused=encoding.fused.float().cpu(),
            panel_mask=valid.cpu(),
            view1=encoding.fused[valid].float().cpu(),
            view2=second[valid].float().cpu(),
            gates=encoding.gate_weights[valid].float().cpu(),
            modality_mask=encoding.modality_mask[valid].cpu(),
            image_queries=queries["vision"][valid].float().cpu(),
            text_queries=queries["text"][valid].float().cpu(),
        )

    def save(self, path: str | Path) -> Path:
        """Write a checkpoint with everything needed to resume and to rebuild the model (atomically)."""
        objective = self.trainable.objective
        checkpoint = dict(
            model_state_dict=self.model.state_dict(),
            objective_state_dict=objective.state_dict(),
            config=self.configs(),
            epoch=self.step // self.steps_per_epoch,
            **self.loop_state(),
        )
        return self.write_checkpoint(checkpoint, path)

    def configs(self) -> dict[str, dict]:
        """The ``config`` entry of this run's checkpoints."""
        return config_dicts(self.model.cfg, self.trainable.objective.cfg, self.cfg)

    def resume(self, checkpoint: Mapping[str, Any] | str | Path) -> None:
        """Continue from a checkpoint of the same run (same pages, same configs)."""
        checkpoint = load_checkpoint(checkpoint) if isinstance(checkpoint, (str, Path)) else checkpoint
        differ = resume_conflicts(checkpoint["config"], self.configs(), RESUMABLE_CHANGES)
        if differ:
            raise ValueError(
                f"the checkpoint is from another configuration ({', '.join(differ)}); resume with "
                f"the settings it was trained with, or start a new run"
            )
        self.model.load_state_dict(checkpoint["model_state_dict"])
        self.trainable.objective.load_state_dict(checkpoint["objective_state_dict"])
        self.restore_loop_state(checkpoint)


GATE_PRIOR_FLOOR = 0.01  # added to every modality's page score: a modality at chance starts small, not at zero


class CollapseWarning(UserWarning):
    """A run whose fused vectors lost a modality, or lost to a single modality: the run, not the code, went wrong."""


def gate_warning(low: Mapping[str, float], floor: float, epoch: int | None = None) -> str:
    """One line naming each modality whose mean gate weight is under ``floor``."""
    names = ", ".join(f"{name} {value:.3f}" for name, value in low.items())
    when = f" after epoch {epoch}" if epoch is not None else ""
    return (
        f"modality collapse{when}: mean validation gate weight under min_gate_weight={floor} for {names}; the "
        f"stored vectors hardly carry {'it' if len(low) == 1 else 'them'}; keep fusion_dropout (0.3) and "
        f"center_features on, or lower lr (docs/modality-collapse.md)"
    )


def mean_gate_weights(gates: Tensor, modality_mask: Tensor) -> dict[str, float]:
    """``gate_<modality>``: mean gate weight of each modality over the panels that have it (NaN where none has)."""
    out = {}
    for i, name in enumerate(MODALITIES):
        present = modality_mask[:, i].bool()
        out[f"gate_{name}"] = float(gates[present, i].float().mean()) if present.any() else math.nan
    return out


def summarise_validation(outputs: list[dict[str, Any]]) -> tuple[dict[str, float], dict[str, Tensor]]:
    """Mean loss terms, collapse diagnostics, same-panel and image->text retrieval over all validation pages."""
    terms = {f"val_{name}": float(np.mean([o["terms"][name] for o in outputs])) for name in (*TERMS, "total")}
    cat = {
        key: torch.cat([o[key] for o in outputs])
        for key in ("view1", "view2", "gates", "modality_mask", "image_queries", "text_queries")
    }
    width = max(o["fused"].shape[1] for o in outputs)
    fused = torch.cat([nn.functional.pad(o["fused"], (0, 0, 0, width - o["fused"].shape[1])) for o in outputs])
    mask = torch.cat([nn.functional.pad(o["panel_mask"], (0, width - o["panel_mask"].shape[1])) for o in outputs])
    with_text = cat["modality_mask"][:, 0] & cat["modality_mask"][:, 1]
    image_to_text = recall_at_k(cat["image_queries"][with_text], cat["text_queries"][with_text])
    scalars = {
        **terms,
        **collapse_diagnostics(fused, mask),
        **mean_gate_weights(cat["gates"], cat["modality_mask"]),
        "same_panel_recall@1": same_panel_retrieval(cat["view1"], cat["view2"]),
        **{f"image_to_text_{k}": v for k, v in image_to_text.items()},
        "image_to_text_panels": int(with_text.sum()),
        "image_to_text_chance@1": 1 / max(1, int(with_text.sum())),
    }
    return scalars, {"gate_weights": cat["gates"], "modality_mask": cat["modality_mask"]}


# ---------------------------------------------------------------------------------------------------- one call


def build_trainer(run_dir: str | Path, settings: Mapping[str, Any]) -> Stage3Trainer:
    """A trainer over the pages table that notebook 01 wrote into ``run_dir``."""
    model_cfg, objective_cfg, cfg = split_settings(settings)
    return trainer_for(run_dir, model_cfg, objective_cfg, cfg)


def trainer_for(
    run_dir: str | Path, model_cfg: PanelModelConfig, objective_cfg: ObjectiveConfig, cfg: TrainConfig
) -> Stage3Trainer:
    """A trainer for the three configs over ``run_dir``'s pages table."""
    set_seed(cfg.seed)
    pages, data_root = checked_run_pages(run_dir)
    model = PanelFeatureExtractor(model_cfg)
    objective = Stage3Objective(objective_cfg)
    return Stage3Trainer(model, objective, cfg, pages[pages.split == "train"], pages[pages.split == "val"], data_root)


def ensure_fresh_checkpoints(files: StageCheckpoints, overwrite: bool) -> None:
    """Before a new training run (notebook 02): refuse to replace a run's checkpoints unless ``overwrite``, and with
    it remove both the last and the best one, so no best_model.pt of an earlier run survives into this one.

    Raises CheckpointExistsError (a FileExistsError) naming the notebook's fix, ``overwrite=True``.
    """
    files.prepare(
        resume=False,
        overwrite=overwrite,
        remedy=(
            "set overwrite=True to replace them, or rerun the workbook from here: `comicnb run --run <run> --from 02` "
            "(on the command line: --overwrite, or --resume to continue)"
        ),
    )


def train_stage3(
    run_dir: str | Path, settings: Mapping[str, Any], resume: bool = False, overwrite: bool = False
) -> Stage3Trainer:
    """Train Stage 3 on ``run_dir``'s pages table into ``run_dir/stage3/`` (``checkpoint.pt`` written every epoch,
    ``best_model.pt`` at the best validation figure).

    A run folder that already holds checkpoints is a CheckpointExistsError unless ``resume`` (continue from the
    last checkpoint) or ``overwrite`` (remove the last and the best checkpoint first, then train anew) says what to
    do with them; the check comes before any model is built.
    """
    files = checkpoints(run_dir)
    resuming = files.prepare(resume=resume, overwrite=overwrite)
    trainer = build_trainer(run_dir, settings)
    if resuming:
        trainer.resume(files.last)
    trainer.train(files=files)
    return trainer


def loss_change(steps: pd.DataFrame, terms: tuple[str, ...]) -> pd.DataFrame:
    """Mean of each loss term over the first and over the last quarter of the logged steps."""
    quarter = max(1, len(steps) // 4)
    head, tail = steps.head(quarter)[list(terms)].mean(), steps.tail(quarter)[list(terms)].mean()
    return pd.DataFrame({"first quarter": head, "last quarter": tail})
