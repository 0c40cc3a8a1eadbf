"""Stage 3 training: pages table -> page batches -> objectives -> checkpoint, through HF Accelerate.

``python -m comicnb train stage3 --params FILE`` and notebook 02 both call :func:`train_stage3`. Accelerate picks the
device and mixed precision, and ``accelerate launch`` spreads the same loop over several GPUs.

Determinism: the order of pages in epoch ``e`` and the random draws of step ``s`` (masks, augmentation, dropout) are
functions of ``(seed, e)`` and ``(seed, s)`` only, so a run resumed from a checkpoint takes exactly the steps the
uninterrupted run would have taken. With frozen backbones the frozen encoders run once per panel (the feature cache)
and every epoch trains on their stored outputs.
"""

from __future__ import annotations

import math
import os
import random
import time
from collections.abc import Iterator, Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from accelerate import Accelerator, DistributedDataParallelKwargs
from torch import Tensor, nn

from comicnb.dataset import page_chunks, page_loader
from comicnb.model import PanelFeatureExtractor
from comicnb.objectives import TERMS, Stage3Objective, collapse_diagnostics, same_panel_retrieval
from comicnb.seed import set_seed

VAL_SEED = 1234  # fixed draws for validation, whatever the training seed
RESUMABLE_CHANGES = frozenset({"num_workers", "encode_batch_pages"})  # settings that cannot change the result


@dataclass
class TrainConfig:
    """How to train (the model and objective carry their own configs)."""

    epochs: int = 2
    batch_size: int = 8  # pages per optimisation step
    lr: float = 1e-3
    weight_decay: float = 0.01
    warmup_fraction: float = 0.1  # share of all steps spent warming the learning rate up from zero
    grad_clip: float = 1.0
    mixed_precision: str = "auto"  # "auto": bf16 on a GPU that supports it, else full precision; or no/fp16/bf16
    seed: int = 0
    max_panels: int = 12
    cache_features: bool = True  # with frozen backbones, run them once per panel and reuse the features
    num_workers: int = 0
    encode_batch_pages: int = 16  # pages per forward pass when filling the feature cache

    @classmethod
    def from_mapping(cls, values: Mapping[str, Any]) -> TrainConfig:
        """Build from a mapping, refusing unknown keys."""
        unknown = set(values) - set(cls.__dataclass_fields__)
        if unknown:
            raise ValueError(f"unknown training settings {sorted(unknown)}")
        return cls(**values)


class Stage3Trainable(nn.Module):
    """Model and objective in one module, so a distributed wrapper sees one forward that returns the loss terms."""

    def __init__(self, model: PanelFeatureExtractor, objective: Stage3Objective) -> None:
        super().__init__()
        self.model = model
        self.objective = objective

    def forward(self, batch: Mapping[str, Tensor]) -> dict[str, Tensor]:
        """Named loss terms and their weighted total."""
        return self.objective(self.model, batch)


@dataclass
class History:
    """Loss terms per step and validation figures per epoch."""

    steps: list[dict] = field(default_factory=list)
    epochs: list[dict] = field(default_factory=list)

    def frames(self) -> tuple[pd.DataFrame, pd.DataFrame]:
        """(steps, epochs) as DataFrames for plotting."""
        return pd.DataFrame(self.steps), pd.DataFrame(self.epochs)


# ---------------------------------------------------------------------------------------------------- batches


def epoch_batches(num_pages: int, batch_size: int, seed: int, epoch: int) -> list[list[int]]:
    """The page indices of each step of ``epoch``: a permutation drawn from (seed, epoch) only."""
    order = torch.randperm(num_pages, generator=torch.Generator().manual_seed(seed * 100_003 + epoch)).tolist()
    return [order[i:i + batch_size] for i in range(0, num_pages, batch_size)]


def shard_batches(batches: list[list[int]], rank: int, world: int) -> list[list[int]]:
    """This process's batch of each synchronised step: every world-th batch, the last round padded by wrap-around.

    Every process then takes the same number of steps (DistributedSampler pads the same way), and with one process
    the batches come back unchanged.
    """
    if world == 1:
        return batches
    padded = batches + batches[:(-len(batches)) % world]
    return padded[rank::world]


def step_seed(seed: int, step: int) -> int:
    """The seed of one optimisation step's random draws."""
    return (seed * 1_000_003 + step) % (2**63)


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


BATCH_TENSOR_KEYS = ("images", "input_ids", "attention_mask", "comp_feats", "modality_mask", "panel_mask")


def tensors_only(batch: Mapping[str, Any], device: torch.device) -> dict[str, Tensor]:
    """The model's tensor inputs of a collated batch, on ``device``."""
    return {key: batch[key].to(device) for key in BATCH_TENSOR_KEYS if key in batch}


@torch.no_grad()
def build_feature_cache(model: PanelFeatureExtractor, pages: pd.DataFrame, data_root: Path,
                        cfg: TrainConfig, device: torch.device) -> PageTensors:
    """Run the frozen encoders once over every panel of ``pages``; keep their outputs with the other inputs."""
    chunks = page_chunks(len(pages), cfg.encode_batch_pages)
    parts: dict[str, list[Tensor]] = {}
    for batch in page_loader(pages, data_root, model, chunks, cfg.max_panels, cfg.num_workers):
        inputs = tensors_only(batch, device)
        cached = {**model.frozen_features(inputs), "comp_feats": inputs["comp_feats"],
                  "modality_mask": inputs["modality_mask"], "panel_mask": inputs["panel_mask"]}
        for key, value in cached.items():
            parts.setdefault(key, []).append(value.cpu())
    return PageTensors({key: torch.cat(values) for key, values in parts.items()})


class BatchSource:
    """Page-shaped batches for a list of page-index batches: from the feature cache, or decoded from images."""

    def __init__(self, pages: pd.DataFrame, data_root: Path, model: PanelFeatureExtractor, cfg: TrainConfig,
                 device: torch.device) -> None:
        self.pages, self.data_root, self.model, self.cfg, self.device = pages, data_root, model, cfg, device
        self.cached = cfg.cache_features and model.config["freeze_backbones"]
        self.cache: PageTensors | None = None  # filled by the first pass, so the first epoch pays for it

    def __len__(self) -> int:
        return len(self.pages)

    def iterate(self, batches: list[list[int]]) -> Iterator[dict[str, Tensor]]:
        """Yield one batch per entry of ``batches``."""
        if self.cached:
            if self.cache is None:
                self.cache = build_feature_cache(self.model, self.pages, self.data_root, self.cfg, self.device)
            yield from (self.cache.batch(indices, self.device) for indices in batches)
        elif batches:
            loader = page_loader(self.pages, self.data_root, self.model, batches, self.cfg.max_panels,
                                 self.cfg.num_workers)
            yield from (tensors_only(batch, self.device) for batch in loader)


# ---------------------------------------------------------------------------------------------------- schedule


def warmup_cosine(total_steps: int, warmup_fraction: float) -> Any:
    """Learning-rate factor: linear warm-up from zero, then cosine decay to zero."""
    warmup = max(1, int(total_steps * warmup_fraction))

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        progress = (step - warmup) / max(1, total_steps - warmup)
        return 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))

    return factor


def mixed_precision(setting: str) -> str:
    """Accelerate's mixed-precision mode for a setting; "auto" uses bf16 only where the GPU supports it."""
    if setting != "auto":
        return setting
    return "bf16" if torch.cuda.is_available() and torch.cuda.is_bf16_supported() else "no"


# ---------------------------------------------------------------------------------------------------- checkpoint


def rng_state() -> dict[str, Any]:
    """Every generator's state, in types that torch.load(weights_only=True) accepts."""
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    return dict(torch=torch.get_rng_state(), cuda=[s for s in torch.cuda.get_rng_state_all()],
                numpy=[kind, torch.from_numpy(keys.astype(np.int64)), pos, has_gauss, cached],
                python=random.getstate())


def set_rng_state(state: Mapping[str, Any]) -> None:
    """Restore the generators saved by rng_state."""
    torch.set_rng_state(state["torch"])
    if state["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
    kind, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((kind, keys.numpy().astype(np.uint32), pos, has_gauss, cached))
    random.setstate(tuple(item if not isinstance(item, list) else tuple(item) for item in state["python"]))


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """A Stage 3 checkpoint, loaded with weights_only=True (no pickled code runs)."""
    return torch.load(path, map_location=map_location, weights_only=True)


def model_from_checkpoint(checkpoint: Mapping[str, Any] | str | Path) -> PanelFeatureExtractor:
    """The trained panel encoder of a checkpoint (or checkpoint path), in eval mode."""
    checkpoint = load_checkpoint(checkpoint) if isinstance(checkpoint, (str, Path)) else checkpoint
    model = PanelFeatureExtractor.from_config(checkpoint["config"]["model"])
    model.load_state_dict(checkpoint["model_state_dict"])
    return model.eval()


# ---------------------------------------------------------------------------------------------------- the loop


class Stage3Trainer:
    """Trains a PanelFeatureExtractor on the train pages and measures it on the validation pages."""

    def __init__(self, model: PanelFeatureExtractor, objective: Stage3Objective, cfg: TrainConfig,
                 train_pages: pd.DataFrame, val_pages: pd.DataFrame, data_root: str | Path) -> None:
        if train_pages.empty:
            raise ValueError("no training pages: the pages table has no row with split == 'train'")
        set_seed(cfg.seed)
        self.cfg = cfg
        # A batch without any text leaves the text adapter unused; DDP must not wait for its gradients.
        self.accelerator = Accelerator(mixed_precision=mixed_precision(cfg.mixed_precision),
                                       kwargs_handlers=[DistributedDataParallelKwargs(find_unused_parameters=True)])
        self.trainable = Stage3Trainable(model, objective)
        device = self.accelerator.device
        self.trainable.to(device)
        self.train_source = BatchSource(train_pages, Path(data_root), model, cfg, device)
        self.val_source = BatchSource(val_pages, Path(data_root), model, cfg, device)
        # One synchronised step takes one batch on each process.
        batches = math.ceil(len(train_pages) / cfg.batch_size)
        self.steps_per_epoch = math.ceil(batches / self.accelerator.num_processes)
        params = [p for p in self.trainable.parameters() if p.requires_grad]
        optimizer = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
        self.wrapped, self.optimizer = self.accelerator.prepare(self.trainable, optimizer)
        # Not prepared: Accelerate would step it once per process, and our steps already count synchronised steps.
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, warmup_cosine(self.total_steps,
                                                                                    cfg.warmup_fraction))
        self.step = 0
        self.history = History()
        self.last_validation: dict[str, Tensor] = {}

    @property
    def model(self) -> PanelFeatureExtractor:
        """The panel encoder being trained."""
        return self.trainable.model

    @property
    def total_steps(self) -> int:
        """Steps of the whole run."""
        return self.cfg.epochs * self.steps_per_epoch

    def train(self, until_step: int | None = None, checkpoint_path: str | Path | None = None) -> History:
        """Train to the end (or to ``until_step``), validating after each epoch.

        With ``checkpoint_path`` a checkpoint is written after every epoch and at the end, so an interrupted run
        resumes (``resume``) from its last epoch and still ends exactly where the uninterrupted run would.
        """
        stop = self.total_steps if until_step is None else min(until_step, self.total_steps)
        if self.step == 0 and not self.history.epochs:  # the untrained model: the no-learning baseline
            scalars, self.last_validation = self.validate()
            self.history.epochs.append({"epoch": 0, "step": 0, "train_seconds": 0.0, **scalars})
        while self.step < stop:
            epoch, offset = divmod(self.step, self.steps_per_epoch)
            batches = epoch_batches(len(self.train_source), self.cfg.batch_size, self.cfg.seed, epoch)
            mine = shard_batches(batches, self.accelerator.process_index, self.accelerator.num_processes)
            start = time.perf_counter()
            for batch in self.train_source.iterate(mine[offset:offset + stop - self.step]):
                self.train_step(batch)
            seconds = time.perf_counter() - start
            if self.step % self.steps_per_epoch == 0:
                scalars, self.last_validation = self.validate()
                self.history.epochs.append({"epoch": epoch + 1, "step": self.step, "train_seconds": seconds, **scalars})
                if checkpoint_path is not None and self.step < stop:
                    self.save(checkpoint_path)
        if checkpoint_path is not None:
            self.save(checkpoint_path)
        return self.history

    def train_step(self, batch: Mapping[str, Tensor]) -> dict[str, float]:
        """One optimisation step; its random draws depend on (seed, step) only."""
        torch.manual_seed(step_seed(self.cfg.seed, self.step))
        self.wrapped.train()
        with self.accelerator.autocast():
            terms = self.wrapped(batch)
        self.accelerator.backward(terms["total"])
        if self.cfg.grad_clip > 0:
            self.accelerator.clip_grad_norm_(self.wrapped.parameters(), self.cfg.grad_clip)
        self.optimizer.step()
        self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.step += 1
        logged = {"step": self.step, "lr": self.scheduler.get_last_lr()[0],
                  **{name: float(value.detach()) for name, value in terms.items()}}
        self.history.steps.append(logged)
        return logged

    @torch.no_grad()
    def validate(self) -> tuple[dict[str, float], dict[str, Tensor]]:
        """Deterministic validation (eval mode, fixed draws): scalar figures, and per-panel gate weights."""
        if len(self.val_source) == 0:
            return {}, {}
        state = torch.get_rng_state()
        torch.manual_seed(VAL_SEED)
        self.trainable.eval()
        batches = page_chunks(len(self.val_source), self.cfg.batch_size)
        outputs = [self.validate_batch(batch) for batch in self.val_source.iterate(batches)]
        torch.set_rng_state(state)
        return summarise_validation(outputs)

    def validate_batch(self, batch: Mapping[str, Tensor]) -> dict[str, Any]:
        """Loss terms and the embeddings one validation batch needs for the diagnostics."""
        with self.accelerator.autocast():
            terms = self.trainable(batch)
            encoding = self.model.encode(batch)
            second = self.trainable.objective.second_view(self.model, encoding, None)
            queries = self.model.query_embeddings(encoding)
        valid = encoding.panel_mask
        return dict(terms={k: float(v) for k, v in terms.items()}, fused=encoding.fused.float().cpu(),
                    panel_mask=valid.cpu(), view1=encoding.fused[valid].float().cpu(),
                    view2=second[valid].float().cpu(), gates=encoding.gate_weights[valid].float().cpu(),
                    modality_mask=encoding.modality_mask[valid].cpu(),
                    image_queries=queries["vision"][valid].float().cpu(),
                    text_queries=queries["text"][valid].float().cpu())

    def save(self, path: str | Path) -> Path:
        """Write a checkpoint with everything needed to resume and to rebuild the model."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        objective = self.trainable.objective
        checkpoint = dict(
            model_state_dict=self.model.state_dict(), objective_state_dict=objective.state_dict(),
            optimizer_state_dict=self.optimizer.state_dict(), scheduler_state_dict=self.scheduler.state_dict(),
            config=dict(model=self.model.config, objective=objective.config, train=asdict(self.cfg)),
            step=self.step, epoch=self.step // self.steps_per_epoch, rng=rng_state(),
            history=dict(steps=self.history.steps, epochs=self.history.epochs))
        self.accelerator.wait_for_everyone()
        if self.accelerator.is_main_process:
            partial = path.with_name(path.name + ".partial")
            torch.save(checkpoint, partial)
            os.replace(partial, path)  # a run killed while saving keeps the previous checkpoint whole
        return path

    def resume(self, checkpoint: Mapping[str, Any] | str | Path) -> None:
        """Continue from a checkpoint of the same run (same pages, same configs)."""
        checkpoint = load_checkpoint(checkpoint) if isinstance(checkpoint, (str, Path)) else checkpoint
        mine = dict(model=self.model.config, objective=self.trainable.objective.config, train=asdict(self.cfg))
        differ = sorted(f"{part}.{key}" for part, config in mine.items() for key in config
                        if key not in RESUMABLE_CHANGES and checkpoint["config"][part].get(key) != config[key])
        if differ:
            raise ValueError(f"the checkpoint is from another configuration ({', '.join(differ)}); resume with "
                             f"the settings it was trained with, or start a new run")
        self.model.load_state_dict(checkpoint["model_state_dict"])
        self.trainable.objective.load_state_dict(checkpoint["objective_state_dict"])
        self.optimizer.load_state_dict(checkpoint["optimizer_state_dict"])
        self.scheduler.load_state_dict(checkpoint["scheduler_state_dict"])
        self.step = checkpoint["step"]
        self.history = History(list(checkpoint["history"]["steps"]), list(checkpoint["history"]["epochs"]))
        set_rng_state(checkpoint["rng"])


def recall_at_k(queries: Tensor, keys: Tensor, ks: tuple[int, ...] = (1, 5, 10)) -> dict[str, float]:
    """Recall@k of query i finding key i among all keys, by cosine."""
    scores = nn.functional.normalize(queries, dim=-1) @ nn.functional.normalize(keys, dim=-1).T  # (Q, Q)
    rank = (scores > scores.diagonal()[:, None]).sum(dim=1)  # (Q,) keys scoring above the true one
    return {f"recall@{k}": float((rank < k).float().mean()) for k in ks if k <= len(queries)}


def summarise_validation(outputs: list[dict[str, Any]]) -> tuple[dict[str, float], dict[str, Tensor]]:
    """Mean loss terms, collapse diagnostics, same-panel and image->text retrieval over all validation pages."""
    terms = {f"val_{name}": float(np.mean([o["terms"][name] for o in outputs])) for name in (*TERMS, "total")}
    cat = {key: torch.cat([o[key] for o in outputs]) for key in
           ("view1", "view2", "gates", "modality_mask", "image_queries", "text_queries")}
    width = max(o["fused"].shape[1] for o in outputs)
    fused = torch.cat([nn.functional.pad(o["fused"], (0, 0, 0, width - o["fused"].shape[1])) for o in outputs])
    mask = torch.cat([nn.functional.pad(o["panel_mask"], (0, width - o["panel_mask"].shape[1])) for o in outputs])
    with_text = cat["modality_mask"][:, 0] & cat["modality_mask"][:, 1]
    image_to_text = recall_at_k(cat["image_queries"][with_text], cat["text_queries"][with_text])
    scalars = {**terms, **collapse_diagnostics(fused, mask),
               "same_panel_recall@1": same_panel_retrieval(cat["view1"], cat["view2"]),
               **{f"image_to_text_{k}": v for k, v in image_to_text.items()},
               "image_to_text_panels": int(with_text.sum()), "image_to_text_chance@1": 1 / max(1, int(with_text.sum()))}
    return scalars, {"gate_weights": cat["gates"], "modality_mask": cat["modality_mask"]}


# ---------------------------------------------------------------------------------------------------- one call

MODEL_KEYS = ("visual_backbone", "visual_fusion", "feature_dim", "freeze_backbones", "text_model", "backbone_weights",
              "tiny", "max_text_length")
OBJECTIVE_KEYS = ("temperature", "contrastive_weight", "reconstruction_weight", "alignment_weight", "instance_weight",
                  "feature_noise", "feature_dropout", "modality_drop")
CHECKPOINT_NAME = "stage3_checkpoint.pt"
SETTING_KEYS = frozenset((*MODEL_KEYS, *OBJECTIVE_KEYS, *TrainConfig.__dataclass_fields__))


def settings_from(namespace: Mapping[str, Any]) -> dict[str, Any]:
    """The training settings among a namespace's names (a notebook's parameters: ``settings_from(globals())``)."""
    return {key: value for key, value in namespace.items() if key in SETTING_KEYS}


def split_settings(settings: Mapping[str, Any]) -> tuple[dict, dict, TrainConfig]:
    """Flat settings (a params file, the notebook's parameters) -> model kwargs, objective kwargs, TrainConfig."""
    model = {k: settings[k] for k in MODEL_KEYS if k in settings}
    if isinstance(model.get("visual_backbone"), str) and "," in model["visual_backbone"]:
        model["visual_backbone"] = [name.strip() for name in model["visual_backbone"].split(",")]
    model["text_model"] = model.get("text_model") or None  # "" means the packaged default
    objective = {k: settings[k] for k in OBJECTIVE_KEYS if k in settings}
    train = TrainConfig.from_mapping({k: v for k, v in settings.items() if k not in (*MODEL_KEYS, *OBJECTIVE_KEYS)})
    return model, objective, train


def parameter_summary(model: nn.Module) -> pd.DataFrame:
    """Trainable and frozen parameter counts of each named part of the model."""
    rows = {}
    for name, param in model.named_parameters():
        part = ".".join(name.split(".")[:3 if name.startswith("visual.backbones") else 2])
        counts = rows.setdefault(part, {"trainable": 0, "frozen": 0})
        counts["trainable" if param.requires_grad else "frozen"] += param.numel()
    table = pd.DataFrame.from_dict(rows, orient="index").rename_axis("part")
    table.loc["total"] = table.sum()
    return table


def build_trainer(run_dir: str | Path, settings: Mapping[str, Any]) -> Stage3Trainer:
    """A trainer over the pages table that notebook 01 wrote into ``run_dir``."""
    from comicnb.data import load_run_pages

    model_kwargs, objective_kwargs, cfg = split_settings(settings)
    set_seed(cfg.seed)
    pages, data_root = load_run_pages(run_dir)
    model = PanelFeatureExtractor(**model_kwargs)
    objective = Stage3Objective(feature_dim=model.feature_dim, max_panels=cfg.max_panels, **objective_kwargs)
    return Stage3Trainer(model, objective, cfg, pages[pages.split == "train"], pages[pages.split == "val"], data_root)


def train_stage3(run_dir: str | Path, settings: Mapping[str, Any], resume: bool = False) -> Stage3Trainer:
    """Train Stage 3 on ``run_dir``'s pages table into ``run_dir/stage3_checkpoint.pt`` (written every epoch);
    with ``resume``, continue from that checkpoint when there is one."""
    trainer = build_trainer(run_dir, settings)
    path = Path(run_dir) / CHECKPOINT_NAME
    if resume and path.is_file():
        trainer.resume(path)
    trainer.train(checkpoint_path=path)
    return trainer
