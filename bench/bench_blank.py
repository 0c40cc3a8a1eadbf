"""Blanked pages against the true text-free twins, on a finished run of the embedded corpus (issue 22, part 2).

    python bench/bench_blank.py [--run-dir outputs/<run>] [--split test] [--json PATH]

Where a corpus has no text-free twin of a page, the store can blank its text boxes instead (``text_free: blank``).
On the embedded corpus, which has both, this measures what the stand-in costs, on the run's ``split`` pages:

1. pixels: inside each true text box, the share of pixels that differ (by more than 40 levels in a channel) from
   the twin, for the lettered page and for the blanked page;
2. Stage 3: the cosine between the stored vision embedding of each panel's twin crop and of its blanked crop (a store
   made with ``text_free: blank`` beside the run's own, ``panel_embeddings.blank.zarr``), for panels with text;
3. Stage 4: every text task's accuracy (baselines and the trained models, the run's fixed sets) with the twin store
   and with the blanked one; the models were trained with twins, so this is the swap at test time.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from common import bench_parser, finish, finished_run  # bench/common.py, beside this script
from PIL import Image

from comicnb.corpus import load_run_pages
from comicnb.corpus.blank import blank_text_boxes, page_text_boxes
from comicnb.store import STORE_NAME, EmbedConfig, generate, open_embeddings, text_free_vision
from comicnb.store.writer import run_pages_per_chunk

TEXT_TASKS = ("text_closure", "text_cloze", "caption_relevance")
DIFFERS = 40


def pixel_differences(pages, data_root: Path) -> dict:
    lettered = blanked = area = 0
    for row in pages.itertuples():
        if not row.text_free_path:
            continue
        with Image.open(data_root / row.image_path) as page:
            original = np.asarray(page.convert("RGB")).astype(np.int16)
            boxes = page_text_boxes(row.boxes, row.text_box_boxes)
            blank = np.asarray(blank_text_boxes(page, boxes)).astype(np.int16)
        with Image.open(data_root / row.text_free_path) as twin:
            truth = np.asarray(twin.convert("RGB")).astype(np.int16)
        for x1, y1, x2, y2 in boxes:
            region = (slice(int(y1), int(np.ceil(y2))), slice(int(x1), int(np.ceil(x2))))
            lettered += int((np.abs(original[region] - truth[region]).max(axis=2) > DIFFERS).sum())
            blanked += int((np.abs(blank[region] - truth[region]).max(axis=2) > DIFFERS).sum())
            area += truth[region].shape[0] * truth[region].shape[1]
    return {"text box pixels": area, "lettered page differs": lettered / area, "blanked page differs": blanked / area}


def cosines(run_dir: Path, blank_store: Path, pages, split: str) -> dict:
    twin_vectors, twin_masks = text_free_vision(open_embeddings(run_dir / STORE_NAME))
    blank_vectors, blank_masks = text_free_vision(open_embeddings(blank_store))
    rows = np.flatnonzero(pages.split.to_numpy() == split)
    with_text, without = [], []
    for r in rows:
        for slot, text in enumerate(pages.texts.iloc[r]):
            if twin_masks[r, slot] and blank_masks[r, slot]:
                a, b = twin_vectors[r, slot], blank_vectors[r, slot]
                cosine = float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b)))
                (with_text if str(text).strip() else without).append(cosine)
    return {
        "panels with text": len(with_text),
        "cosine twin-blank (with text)": float(np.mean(with_text)),
        "cosine twin-blank 5th percentile": float(np.percentile(with_text, 5)),
        "cosine twin-blank (no text)": float(np.mean(without)) if without else None,
    }


def accuracies(run_dir: Path, store: Path, split: str) -> dict:
    from comicnb.stage4.baselines import BASELINES, LEARNED, run_baselines
    from comicnb.stage4.results import result_table, sample_frame
    from comicnb.stage4.scoring import model_results
    from comicnb.stage4.task_sets import read_sets
    from comicnb.stage4.view import open_run

    view = open_run(run_dir, store)
    sets = {task: s for task, s in read_sets(run_dir, view, split=split).items() if task in TEXT_TASKS}
    # The learned baselines (fitted on training draws) read no text-free picture; the others are scored as they are.
    plain = [b for b in BASELINES if b not in LEARNED]
    results = run_baselines(list(sets.values()), view, plain) + model_results(run_dir, split, view)
    table = result_table(sample_frame(results), by_difficulty=False)
    table = table[table.task.isin(TEXT_TASKS) & (table.split == split)]
    return {f"{r.task} / {r.method}": float(r.accuracy) for r in table.itertuples()}


def run(run_dir: Path, split: str) -> dict:
    pages, data_root = load_run_pages(run_dir)
    blank_store = run_dir / "panel_embeddings.blank.zarr"
    chunk = run_pages_per_chunk(run_dir)
    generate(run_dir, store=blank_store, cfg=EmbedConfig(pages_per_chunk=chunk, text_free="blank"))
    twin, blank = accuracies(run_dir, run_dir / STORE_NAME, split), accuracies(run_dir, blank_store, split)
    return dict(
        run_dir=str(run_dir),
        split=split,
        pixels=pixel_differences(pages[pages.split == split], data_root),
        vision=cosines(run_dir, blank_store, pages, split),
        accuracy={key: {"twin": twin[key], "blank": blank.get(key)} for key in twin},
    )


def print_report(report: dict) -> None:
    print(f"{report['run_dir']}, {report['split']} pages")
    for name, value in {**report["pixels"], **report["vision"]}.items():
        print(f"  {name:<36}{value}")
    print(f"  {'task / method':<44}{'twin':>7}{'blank':>7}")
    for key, pair in report["accuracy"].items():
        blank = "" if pair["blank"] is None else f"{pair['blank']:.3f}"
        print(f"  {key:<44}{pair['twin']:>7.3f}{blank:>7}")


def main() -> None:
    parser = bench_parser(__doc__, data_root=False, repeats=None)
    parser.add_argument(
        "--run-dir", type=Path, help="a finished run of the embedded corpus (default: the newest under outputs/)"
    )
    parser.add_argument("--split", default="test", help="the split measured")
    args = parser.parse_args()
    finish(run(finished_run(args.run_dir), args.split), print_report, args.json)


if __name__ == "__main__":
    main()
