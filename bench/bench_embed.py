"""Embedding generation against its backbone, and each backbone against the machine's matmul peak, in one run.

    python bench/bench_embed.py [--data-root DIR] [--batch 32] [--repeats 3] [--json PATH]

(a) Pipeline: the demo corpus (generated into a temporary folder without --data-root) is encoded into a new store
by comicnb.store.generate with the default model, --repeats + 1 times (the first warms up), each followed by
the vision backbone alone on the very same batches of panel images, already decoded and in memory; the medians
give end-to-end and backbone-only panels/s.
Goal: end-to-end / backbone-only >= 0.8. On a 2-core CPU the text model alone costs about a tenth of the vision
backbone's time and cannot overlap with it, which is why the second ratio is printed beside the first.

(b) Backbones: the fp32 matmul peak is the best of square matrices of 1024, 2048 and 4096; then ResNet-50 and
EfficientNet-Lite0 (timm, random weights: FLOPs do not depend on them) run batches of --batch images after a
warm-up in every layout and precision torch offers on this device (contiguous or channels-last, fp32 or bf16
autocast). FLOPs per image come from torch's FlopCounterMode. Goals: ResNet-50 at >= 0.5 of the matmul peak in its
best setting; for EfficientNet-Lite0, whose depthwise convolutions are memory-bound, the report names the fastest
setting, and the comicnb backbone (what generation runs) is timed beside it.
"""

from __future__ import annotations

import contextlib
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import timm
import torch
from common import bench_parser, finish, measured_corpus, run_folder, yes_no  # bench/common.py, beside this script
from torch.utils.flop_counter import FlopCounterMode

from comicnb import corpus, store
from comicnb.checkpoint import save_checkpoint
from comicnb.stage3 import checkpoints
from comicnb.stage3.backbones import build_backbone
from comicnb.stage3.batches import page_chunks, page_loader
from comicnb.stage3.model import PanelFeatureExtractor, model_from_checkpoint

PIPELINE_GOAL, RESNET_GOAL = 0.8, 0.5


def median_seconds(work: Callable[[], object], repeats: int, warmup: int = 2) -> float:
    """Median wall time of work() after warm-up calls (the first batches of a new shape are slow)."""
    for _ in range(warmup):
        work()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        work()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def matmul_peak(device: torch.device, sizes: tuple[int, ...] = (1024, 2048, 4096), repeats: int = 5) -> float:
    """fp32 matmul FLOP/s on square matrices: the best over a few sizes."""
    rates = []
    for size in sizes:
        a, b = torch.rand(size, size, device=device), torch.rand(size, size, device=device)
        rates.append(2 * size**3 / median_seconds(lambda a=a, b=b: sync(device, torch.mm(a, b)), repeats))
    return max(rates)


def sync(device: torch.device, value: object = None) -> object:
    """Wait for queued GPU work, so wall time measures it."""
    if device.type == "cuda":
        torch.cuda.synchronize()
    return value


def flops_per_image(model: torch.nn.Module, size: int) -> float:
    """Forward FLOPs of one image, counted by torch."""
    counter = FlopCounterMode(display=False)
    with torch.inference_mode(), counter:
        model(torch.rand(1, 3, size, size))
    return float(counter.get_total_flops())


def settings(device: torch.device) -> dict[str, tuple[bool, torch.dtype | None]]:
    """Layouts and precisions to try: name -> (channels_last, autocast dtype)."""
    options = {"contiguous fp32": (False, None), "channels-last fp32": (True, None)}
    if device.type == "cpu" or torch.cuda.is_bf16_supported():
        options |= {"contiguous bf16": (False, torch.bfloat16), "channels-last bf16": (True, torch.bfloat16)}
    return options


def bench_backbone(name: str, device: torch.device, batch: int, repeats: int, peak: float) -> dict:
    """img/s, FLOP/s and fraction of the matmul peak of one timm model in every setting."""
    model = timm.create_model(name, pretrained=False, num_classes=0).eval()
    size = model.pretrained_cfg["input_size"][-1]
    flops = flops_per_image(model, size)
    model.to(device)
    rows = {}
    for label, (channels_last, dtype) in settings(device).items():
        model.to(memory_format=torch.channels_last if channels_last else torch.contiguous_format)
        images = torch.rand(batch, 3, size, size, device=device)
        images = images.contiguous(memory_format=torch.channels_last) if channels_last else images
        autocast = torch.autocast(device.type, dtype=dtype) if dtype else contextlib.nullcontext()

        def forward(images: torch.Tensor = images, autocast: contextlib.AbstractContextManager = autocast) -> None:
            with torch.inference_mode(), autocast:
                sync(device, model(images))

        per_image = median_seconds(forward, repeats) / batch
        rows[label] = dict(images_per_s=1 / per_image, flops_per_s=flops / per_image, of_peak=flops / per_image / peak)
    best = max(rows, key=lambda k: rows[k]["images_per_s"])
    return dict(model=name, input_size=size, gflops_per_image=flops / 1e9, settings=rows, fastest=best)


def comicnb_backbone_rate(device: torch.device, batch: int, repeats: int) -> float:
    """img/s of the comicnb EfficientNet-Lite0 backbone as generation runs it (channels-last, CPU micro-batches)."""
    backbone = build_backbone("efficientnet_lite0").to(device).eval()
    images = torch.rand(batch, 3, 224, 224, device=device)

    def forward() -> None:
        with torch.inference_mode():
            sync(device, backbone(images))

    return batch / median_seconds(forward, repeats)


def bench_pipeline(data_root: Path, scratch: Path, repeats: int) -> dict:
    """End-to-end generation panels/s against the vision backbone alone on the same panel batches."""
    run_dir = run_folder(data_root, scratch)
    torch.manual_seed(0)
    model = PanelFeatureExtractor()
    checkpoint = save_checkpoint(
        {"model_state_dict": model.state_dict(), "config": {"model": model.config}}, checkpoints(run_dir).last
    )
    model = model_from_checkpoint(checkpoint)
    pages, root = corpus.load_run_pages(run_dir)
    chunks = page_chunks(len(pages), store.EmbedConfig().pages_per_chunk)
    inputs = []
    for batch in page_loader(pages, root, model, chunks, 12):
        text = batch["modality_mask"][..., 1].bool()
        inputs.append(
            (batch["images"][batch["panel_mask"].bool()], batch["input_ids"][text], batch["attention_mask"][text])
        )

    def encoders_pass(with_text: bool) -> float:
        """Seconds for the vision backbone (and the text model) over every chunk's decoded panels."""
        start = time.perf_counter()
        with torch.inference_mode():
            for images, ids, mask in inputs:
                model.visual.backbone_features(images)
                if with_text:
                    model.text.sentence_features(ids, mask)
        return time.perf_counter() - start

    encoders_pass(True)  # warm-up, as generation's first run below is
    runs, seconds = [], {"backbone": [], "encoders": []}
    for i in range(repeats + 1):  # interleaved, so drift of the machine's speed touches all alike
        runs.append(store.generate(run_dir, store=scratch / f"store{i}.zarr"))
        seconds["backbone"].append(encoders_pass(False))
        seconds["encoders"].append(encoders_pass(True))
    panels = runs[-1]["encoded_panels"]
    rate = {name: panels / statistics.median(values[1:]) for name, values in seconds.items()}  # first warms up
    end_to_end = panels / statistics.median(r["seconds"] for r in runs[1:])
    return dict(
        panels=panels,
        end_to_end_panels_per_s=end_to_end,
        backbone_only_panels_per_s=rate["backbone"],
        encoders_only_panels_per_s=rate["encoders"],
        ratio=end_to_end / rate["backbone"],
        ratio_to_encoders=end_to_end / rate["encoders"],
        goal=PIPELINE_GOAL,
        meets_goal=end_to_end / rate["backbone"] >= PIPELINE_GOAL,
        precision=runs[-1]["precision"],
    )


def print_report(report: dict) -> None:
    """The two parts as small tables."""
    p = report["pipeline"]
    print(
        f"(a) generation of {p['panels']} panels ({p['precision']}): end-to-end {p['end_to_end_panels_per_s']:.1f} "
        f"panels/s, backbone alone on the same batches {p['backbone_only_panels_per_s']:.1f} panels/s"
    )
    print(f"    end-to-end / backbone-only = {p['ratio']:.2f} >= {p['goal']}: {yes_no(p['meets_goal'])}")
    print(
        f"    with the text model too (all pretrained encoders, {p['encoders_only_panels_per_s']:.1f} panels/s): "
        f"end-to-end / encoders-only = {p['ratio_to_encoders']:.2f} (decoding, fusion and writing)"
    )
    print(
        f"(b) fp32 matmul peak {report['matmul_peak_gflops']:.0f} GFLOP/s on {report['device']}, batch "
        f"{report['batch']}"
    )
    print(f"    {'model / setting':<36}{'img/s':>8}{'GFLOP/s':>9}{'of peak':>9}")
    for bench in report["backbones"]:
        print(f"    {bench['model']} ({bench['gflops_per_image']:.2f} GFLOP/img), fastest: {bench['fastest']}")
        for label, row in bench["settings"].items():
            print(f"      {label:<34}{row['images_per_s']:>8.1f}{row['flops_per_s'] / 1e9:>9.1f}{row['of_peak']:>9.2f}")
    resnet = next(b for b in report["backbones"] if b["model"] == "resnet50")
    best = resnet["settings"][resnet["fastest"]]["of_peak"]
    print(f"    ResNet-50 best of peak = {best:.2f} >= {RESNET_GOAL}: {yes_no(best >= RESNET_GOAL)}")
    print(
        f"    comicnb efficientnet_lite0 backbone as generation runs it: {report['comicnb_lite0_images_per_s']:.1f}"
        f" img/s"
    )


def main() -> int:
    parser = bench_parser(__doc__)
    parser.add_argument("--batch", type=int, default=32, help="images per backbone batch in part (b)")
    args = parser.parse_args()
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    with measured_corpus(args.data_root) as (data_root, scratch):
        pipeline = bench_pipeline(data_root, scratch, args.repeats)
    peak = matmul_peak(device)
    report = dict(
        device=str(device),
        batch=args.batch,
        pipeline=pipeline,
        matmul_peak_gflops=peak / 1e9,
        backbones=[
            bench_backbone(name, device, args.batch, args.repeats, peak)
            for name in ("resnet50", "tf_efficientnet_lite0")
        ],
        comicnb_lite0_images_per_s=comicnb_backbone_rate(device, args.batch, args.repeats),
    )
    finish(report, print_report, args.json)
    return 0


if __name__ == "__main__":
    sys.exit(main())
