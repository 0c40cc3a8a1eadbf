"""Does Stage 3's fused vector keep what each modality knows? Neighbour agreement of fused against each modality.

    python bench/bench_fusion.py grid [--seeds 0 1 2] [--batches 4 8] [--lrs 1e-4 1e-3] [--variant NAME=JSON ...]
    python bench/bench_fusion.py recipe --run-dir outputs/demo [--seeds 0] [--variant NAME=JSON ...]

``grid`` is the random-backbone recipe of the fusion issue: the demo corpus (generated, or --data-root), a randomly
initialised ResNet-50 saved as a weights file (torch seed 0, identical tensors in every cell), the packaged MiniLM,
one epoch with frozen backbones, for every seed x batch size x learning rate. ``recipe`` trains a run's own Stage 3
settings (its params.yaml) on the run's pages, as notebook 02 does. Both run the frozen encoders once and train every
cell from those features.

Each cell is measured on the held-out books (validation and test pages), as notebook 03 measures a store: how often
a panel's 5 nearest panels on other pages share its scene, and its first character, for the fused vector, each
modality's own embedding, the image-only and text-only queries (the modality alone through fusion) and the raw
pretrained features; and the mean gate weight of each modality. Goals (issue 20): in every grid cell fused >= 0.9 x
the best single modality for scene and character and no gate under the warning floor (0.05); on a recipe, fused >=
the best modality.

Variants are settings of notebook 02 (``--variant old='{"fusion_residual": 0}'``); ``default`` is always run.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import timm
import torch
import yaml
from common import bench_parser, finish, measured_corpus, run_folder, yes_no  # bench/common.py, beside this script

from comicnb.agreement import fusion_against_modalities, neighbour_agreement
from comicnb.corpus import load_run_pages
from comicnb.corpus.truth import panel_labels
from comicnb.stage3.config import SETTING_KEYS
from comicnb.stage3.fusion import MODALITIES
from comicnb.stage3.model import modality_only
from comicnb.stage3.trainer import PageTensors, build_feature_cache, build_trainer
from comicnb.store.schema import store_metadata

LABELS = ("scene", "character")
GRID_SHARE = 0.9  # fused >= this share of the best single modality in every grid cell
GATE_FLOOR = 0.05  # TrainConfig.min_gate_weight


def parse_variants(given: list[str]) -> dict[str, dict]:
    """NAME=JSON pairs -> {name: settings}; ``default`` (no change) first."""
    variants = {"default": {}}
    for item in given:
        name, _, text = item.partition("=")
        variants[name] = json.loads(text)
    return variants


def features(run_dir: Path, settings: dict) -> tuple[PageTensors, pd.DataFrame, pd.DataFrame]:
    """The frozen encoders' features of every page, the pages table and the panel labels (store order)."""
    pages, data_root = load_run_pages(run_dir)
    trainer = build_trainer(run_dir, settings)
    cache = build_feature_cache(trainer.model, pages, data_root, trainer.cfg, torch.device("cpu"))
    labels = panel_labels(pd.DataFrame(store_metadata(pages, int(pages.num_panels.max()))), data_root)
    return cache, pages, labels.reset_index(drop=True)


def train_cell(run_dir: Path, settings: dict, cache: PageTensors, pages: pd.DataFrame):
    """Train on the shared features; the trained trainer."""
    trainer = build_trainer(run_dir, settings)
    for source, split in ((trainer.train_source, "train"), (trainer.val_source, "val")):
        rows = torch.as_tensor(np.flatnonzero(pages.split == split))
        source.cache = PageTensors({key: value[rows] for key, value in cache.tensors.items()})
    trainer.train()
    return trainer


@torch.no_grad()
def measure(trainer, cache: PageTensors, pages: pd.DataFrame, labels: pd.DataFrame) -> dict:
    """Agreement on held-out panels: fused, each modality, single-modality queries, raw features; gate means."""
    model = trainer.model.eval()
    held_out = np.flatnonzero(pages.split.isin(["val", "test"]).to_numpy())
    batch = cache.batch(list(held_out), torch.device("cpu"))
    encoding = model.encode(batch)
    valid = encoding.panel_mask  # (B, N)
    page = torch.as_tensor(held_out)[:, None].expand_as(valid)[valid].numpy()
    all_valid = cache.tensors["panel_mask"].bool()
    order = torch.arange(all_valid.numel()).view_as(all_valid)[all_valid]  # flat slot -> label row
    slot_to_row = torch.full((all_valid.numel(),), -1, dtype=torch.long)
    slot_to_row[order] = torch.arange(len(order))
    rows = slot_to_row.view_as(all_valid)[torch.as_tensor(held_out)][valid].numpy()
    panel_labels_ = labels.iloc[rows][list(LABELS)].reset_index(drop=True)
    fused = encoding.fused[valid].numpy()
    modalities, mask = encoding.modalities[valid], encoding.modality_mask[valid]
    table = fusion_against_modalities(fused, modalities.numpy(), mask.numpy(), page, panel_labels_, MODALITIES)
    out: dict = {"panels": int(len(fused))}
    for label in LABELS:
        for name in MODALITIES:
            if (label, name) in table.index:
                out[f"{label}_{name}"] = float(table.loc[(label, name), "modality"])
                out[f"{label}_fused_on_{name}"] = float(table.loc[(label, name), "fused"])
        together = neighbour_agreement(fused, page, panel_labels_).loc[label]
        out[f"{label}_fused"], out[f"{label}_chance"] = float(together.agreement), float(together.chance)
    for i, name in enumerate(MODALITIES):  # each modality's own vectors with their mean taken off (held-out panels)
        present = mask[:, i].numpy()
        own = modalities[present, i].numpy()
        subset = panel_labels_.iloc[np.flatnonzero(present)].reset_index(drop=True)
        centred = neighbour_agreement(own - own.mean(axis=0), page[present], subset)
        for label in LABELS:
            out[f"{label}_{name}_centred"] = float(centred.loc[label, "agreement"])
    for i, name in enumerate(MODALITIES):
        present = mask[:, i]
        out[f"gate_{name}"] = float(encoding.gate_weights[valid][present, i].mean())
    # Queries of one modality through fusion, and the raw pretrained features, on the panels that have it.
    raw = {"vision": "vision_features", "text": "text_features"}
    for i, name in ((0, "vision"), (1, "text")):
        present = mask[:, i].numpy()
        query = model.fuse(modalities[present], modality_only(name, int(present.sum()), torch.device("cpu")))
        subset = panel_labels_.iloc[np.flatnonzero(present)].reset_index(drop=True)
        raw_vectors = batch[raw[name]][valid][present]
        if name == "vision":  # as the adapters see them: uncentred random-backbone features share one direction
            raw_vectors = raw_vectors - model.visual.feature_mean
        raw_vectors = raw_vectors.numpy()
        for label in LABELS:
            out[f"{label}_{name}_query"] = float(
                neighbour_agreement(query.numpy(), page[present], subset).loc[label, "agreement"]
            )
            out[f"{label}_{name}_raw"] = float(
                neighbour_agreement(raw_vectors, page[present], subset).loc[label, "agreement"]
            )
    return out


def verdict(cell: dict, share: float) -> bool:
    """Fused >= share x the best single modality for every label, and no gate under the floor."""
    for label in LABELS:
        best = max(cell.get(f"{label}_{name}", 0.0) for name in MODALITIES)
        if cell[f"{label}_fused"] < share * best:
            return False
    return all(cell[f"gate_{name}"] >= GATE_FLOOR for name in MODALITIES)


def random_resnet(scratch: Path) -> Path:
    """A randomly initialised ResNet-50 saved as a weights file (torch seed 0: the same tensors every time)."""
    weights = scratch / "resnet50-random.pth"
    with torch.random.fork_rng():
        torch.manual_seed(0)
        torch.save(timm.create_model("resnet50", pretrained=False, num_classes=0).state_dict(), weights)
    return weights


def run_cells(run_dir: Path, base: dict, cells: list[dict], variants: dict[str, dict]) -> list[dict]:
    """Every variant on every cell, from one feature cache."""
    started = time.perf_counter()
    cache, pages, labels = features(run_dir, base)
    print(f"features of {len(pages)} pages in {time.perf_counter() - started:.0f} s", file=sys.stderr)
    results = []
    for name, change in variants.items():
        for cell in cells:
            settings = {**base, **cell, **change}
            started = time.perf_counter()
            trainer = train_cell(run_dir, settings, cache, pages)
            row = {"variant": name, **cell, **measure(trainer, cache, pages, labels)}
            row["seconds"] = round(time.perf_counter() - started, 1)
            results.append(row)
            shown = {
                k: round(v, 3) for k, v in row.items() if isinstance(v, float) and k[:5] in ("scene", "chara", "gate_")
            }
            print(json.dumps({"variant": name, **cell, **shown}), file=sys.stderr)
    return results


def summary(results: list[dict], share: float) -> pd.DataFrame:
    """One line per cell: fused, vision, text, composition per label, gates, the verdict."""
    frame = pd.DataFrame(results)
    frame["holds"] = [verdict(row, share) for row in results]
    keep = [c for c in frame.columns if c in ("variant", "seed", "batch_size", "lr", "epochs", "holds")]
    keep += [f"{label}_{name}" for label in LABELS for name in ("fused", *MODALITIES)]
    keep += [f"gate_{name}" for name in MODALITIES]
    return frame[[c for c in keep if c in frame.columns]]


def main() -> int:
    parser = bench_parser(__doc__, repeats=None)
    parser.add_argument("mode", nargs="?", default="grid", choices=("grid", "recipe"), help="default: grid")
    parser.add_argument("--run-dir", type=Path, help="recipe: a run folder (notebook 01's tables and params.yaml)")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--batches", type=int, nargs="+", default=[4, 8])
    parser.add_argument("--lrs", type=float, nargs="+", default=[1e-4, 1e-3])
    parser.add_argument("--variant", action="append", default=[], help="NAME=JSON settings of notebook 02")
    parser.add_argument("--no-default", action="store_true", help="run only the --variant settings")
    args = parser.parse_args()
    variants = parse_variants(args.variant)
    if args.no_default:
        variants.pop("default")
    if args.mode == "grid":
        with measured_corpus(args.data_root) as (data_root, scratch):
            run_dir = run_folder(data_root, scratch, split=(0.7, 0.15, 0.15), seed=0)
            base = dict(
                visual_backbone="resnet50", backbone_weights={"resnet50": str(random_resnet(scratch))}, epochs=1
            )
            cells = [dict(seed=s, batch_size=b, lr=lr) for s in args.seeds for b in args.batches for lr in args.lrs]
            results = run_cells(run_dir, base, cells, variants)
        share = GRID_SHARE
    else:
        if args.run_dir is None:
            parser.error("recipe needs --run-dir")
        given = yaml.safe_load((args.run_dir / "params.yaml").read_text()) or {}
        given = given.get("02_stage3_training", given)  # a run's params.yaml is by notebook
        base = {k: v for k, v in given.items() if k in SETTING_KEYS}
        results = run_cells(args.run_dir, base, [dict(seed=s) for s in args.seeds], variants)
        share = 1.0
    report = {"mode": args.mode, "share": share, "variants": variants, "cells": results}
    finish(report, print_report, args.json)
    return 0


def print_report(report: dict) -> None:
    """The cells as a table, then one goal line per variant."""
    table = summary(report["cells"], report["share"])
    with pd.option_context("display.width", 250, "display.max_columns", 40, "display.precision", 3):
        print(table.to_string(index=False))
    for name in report["variants"]:
        rows = table[table.variant == name]
        print(f"{name}: goal held in {int(rows.holds.sum())} of {len(rows)} cells -> {yes_no(bool(rows.holds.all()))}")


if __name__ == "__main__":
    sys.exit(main())
