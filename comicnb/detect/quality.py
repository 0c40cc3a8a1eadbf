"""Detection scored against a corpus's own Stage 1 JSON: panel boxes, reading order, text boxes and OCR text.

For every page present in both data roots, detected and true panels are matched one to one (the matching of
largest total IoU). A detected panel is right at IoU t when it is matched to a true panel with IoU >= t:

- ``precision@t`` = right detected panels / detected panels, ``recall@t`` = right / true panels (pooled over pages);
- ``order exact``: the page has as many detected panels as true ones, each matched at IoU 0.5, and the i-th
  detected panel is matched to the i-th true one (the JSON lists panels in reading order);
- ``CER``: per matched panel whose true text is not empty, the edit distance between the detected and the true
  text (lower case, runs of spaces as one) over the true text's length; the mean over those panels, and the same
  with spaces left out (what the OCR reads of the letters alone);
- ``text-box recall``: the true text boxes (``text_box_bboxes``) holding the centre of at least one detected text
  box.

Where the true data root has the generator's sidecar, each page's ``reading`` (fixed, across, down) is kept, so the
order can be read apart on pages whose layout decides it (``fixed``) and grids (``across``/``down``), where only the
story does (docs/corpus.md).
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from scipy.optimize import linear_sum_assignment

from comicnb.detect.run import RECORDS

IOUS = (0.5, 0.75)
# A dirty corpus's defects that change a page's JSON (its boxes or panels), so that the JSON is no truth to score
# detection against; image defects are detection's own to report (docs/corpus.md, section 2).
JSON_DEFECTS = {"bbox_out_of_bounds", "bbox_outside_page", "bbox_negative", "bbox_zero_area", "no_panels"}
GOALS = {"recall@0.5": 0.97, "precision@0.5": 0.95, "order exact": 0.95, "CER": 0.10}


def edit_distance(a: str, b: str) -> int:
    """Levenshtein distance (insertions, deletions and substitutions cost one)."""
    if len(a) < len(b):
        a, b = b, a
    row = list(range(len(b) + 1))
    for i, ca in enumerate(a, 1):
        prev, row[0] = row[0], i
        for j, cb in enumerate(b, 1):
            prev, row[j] = row[j], min(row[j] + 1, row[j - 1] + 1, prev + (ca != cb))
    return row[-1]


def _norm(text: str) -> str:
    return re.sub(r"\s+", " ", (text or "").lower()).strip()


def _xyxy(bbox, fmt: str) -> tuple[float, float, float, float]:
    x, y, a, b = (float(v) for v in bbox)
    return (x, y, x + a, y + b) if fmt == "xywh" else (x, y, a, b)


def iou_matrix(a: list, b: list) -> np.ndarray:
    """IoU of every box of a (rows) with every box of b (columns), boxes as x1, y1, x2, y2."""
    if not a or not b:
        return np.zeros((len(a), len(b)))
    p, q = np.asarray(a, float)[:, None, :], np.asarray(b, float)[None, :, :]
    w = np.clip(np.minimum(p[..., 2], q[..., 2]) - np.maximum(p[..., 0], q[..., 0]), 0, None)
    h = np.clip(np.minimum(p[..., 3], q[..., 3]) - np.maximum(p[..., 1], q[..., 1]), 0, None)
    inter = w * h
    area = lambda r: (r[..., 2] - r[..., 0]) * (r[..., 3] - r[..., 1])  # noqa: E731
    return inter / np.maximum(area(p) + area(q) - inter, 1e-9)


def score_page(truth: dict, detected: dict, truth_format: str = "xywh") -> dict:
    """One page's counts: panels true and detected, right at each IoU, order, text errors and text boxes."""
    t_panels, d_panels = truth["panels"], detected["panels"]
    t_boxes = [_xyxy(p["bbox"], truth_format) for p in t_panels]
    d_boxes = [_xyxy(p["bbox"], "xywh") for p in d_panels]
    iou = iou_matrix(d_boxes, t_boxes)
    rows, cols = linear_sum_assignment(-iou) if iou.size else (np.array([], int), np.array([], int))
    got = {"true": len(t_boxes), "detected": len(d_boxes)}
    for t in IOUS:
        got[f"right@{t}"] = int(sum(iou[r, c] >= t for r, c in zip(rows, cols)))
    pairs = {int(r): int(c) for r, c in zip(rows, cols) if iou[r, c] >= 0.5}
    got["order_exact"] = len(d_boxes) == len(t_boxes) and all(pairs.get(i) == i for i in range(len(d_boxes)))
    errors, errors_no_space = [], []
    for r, c in pairs.items():
        true_text = _norm(t_panels[c].get("text") or " ".join(t_panels[c].get("text_boxes") or []))
        if not true_text:
            continue
        text = _norm(d_panels[r].get("text", ""))
        errors.append(edit_distance(text, true_text) / len(true_text))
        ns_true, ns = true_text.replace(" ", ""), text.replace(" ", "")
        errors_no_space.append(edit_distance(ns, ns_true) / max(1, len(ns_true)))
    got["cer"], got["cer_no_space"] = errors, errors_no_space
    centres = [
        ((x1 + x2) / 2, (y1 + y2) / 2)
        for p in d_panels
        for x1, y1, x2, y2 in (_xyxy(b, "xywh") for b in p.get("text_box_bboxes") or [])
    ]
    true_text_boxes = [_xyxy(b, truth_format) for p in t_panels for b in p.get("text_box_bboxes") or []]
    got["text_boxes"] = len(true_text_boxes)
    got["text_boxes_found"] = sum(
        any(x1 <= cx <= x2 and y1 <= cy <= y2 for cx, cy in centres) for x1, y1, x2, y2 in true_text_boxes
    )
    return got


def _sidecar(root: Path) -> tuple[dict[tuple[str, str], str], set[tuple[str, str]]]:
    """Each page's reading, and the pages whose JSON a dirty corpus broke on purpose (their boxes are not the
    truth), from the generator's sidecar; nothing for a corpus without one."""
    sidecar = root / "ground_truth.json"
    if not sidecar.is_file():
        return {}, set()
    truth = json.loads(sidecar.read_text(encoding="utf-8"))
    books = truth.get("books", {})
    readings = {(b, p): page.get("reading", "fixed") for b, book in books.items() for p, page in book["pages"].items()}
    broken = {(d["book_id"], d["page_name"]) for d in truth.get("dirty", []) if d["problem"] in JSON_DEFECTS}
    return readings, broken


def score_detection(detected_root: str | Path, truth_root: str | Path, truth_format: str = "xywh") -> pd.DataFrame:
    """One row per page detected and true (both JSON readable, and not broken on purpose by a dirty corpus), with
    score_page's counts and the page's reading."""
    detected_root, truth_root = Path(detected_root), Path(truth_root)
    readings, broken = _sidecar(truth_root)
    rows = []
    for path in sorted(detected_root.rglob("*.json")):
        rel = path.relative_to(detected_root)
        if rel.parts[0].startswith(".") or len(rel.parts) < 2:
            continue
        truth_path = truth_root / rel
        if (rel.parent.as_posix(), rel.stem) in broken:
            continue
        try:
            truth = json.loads(truth_path.read_text(encoding="utf-8"))
            detected = json.loads(path.read_text(encoding="utf-8"))
            got = score_page(truth, detected, truth_format)
        except (OSError, ValueError, KeyError, TypeError):
            continue  # no usable true JSON for this page (a dirty corpus's broken files): nothing to score against
        book, page = rel.parent.as_posix(), rel.stem
        rows.append({"book_id": book, "page_name": page, "reading": readings.get((book, page), ""), **got})
    return pd.DataFrame(rows)


def summarise(pages: pd.DataFrame, data_root: str | Path | None = None) -> dict:
    """Pooled figures over the scored pages (and pages per second from the detect run's timing, when given)."""
    if pages.empty:
        return {"pages": 0}
    out = {
        "pages": len(pages),
        "panels true": int(pages["true"].sum()),
        "panels detected": int(pages["detected"].sum()),
    }
    for t in IOUS:
        right = int(pages[f"right@{t}"].sum())
        out[f"precision@{t}"] = right / max(1, out["panels detected"])
        out[f"recall@{t}"] = right / max(1, out["panels true"])
    out["order exact"] = float(pages["order_exact"].mean())
    for reading, group in pages.groupby("reading"):
        if reading:
            out[f"order exact ({reading})"] = float(group["order_exact"].mean())
    cer = [e for errors in pages["cer"] for e in errors]
    cer_ns = [e for errors in pages["cer_no_space"] for e in errors]
    out["CER"] = float(np.mean(cer)) if cer else float("nan")
    out["CER without spaces"] = float(np.mean(cer_ns)) if cer_ns else float("nan")
    out["panels with text scored"] = len(cer)
    boxes = int(pages["text_boxes"].sum())
    out["text-box recall"] = int(pages["text_boxes_found"].sum()) / boxes if boxes else float("nan")
    timing = Path(data_root) / RECORDS / "timing.json" if data_root is not None else None
    if timing is not None and timing.is_file():
        out["pages per second"] = json.loads(timing.read_text(encoding="utf-8")).get("pages_per_second")
    return out


def goal_table(summary: dict) -> pd.DataFrame:
    """The clean-corpus goals of issue 22 beside the measured figures."""
    rows = []
    for name, goal in GOALS.items():
        value = summary.get(name, float("nan"))
        met = value <= goal if name == "CER" else value >= goal
        rows.append(
            {"measure": name, "measured": value, "goal": ("≤ " if name == "CER" else "≥ ") + f"{goal}", "met": met}
        )
    return pd.DataFrame(rows)


def transfer_truth(detected_root: str | Path, truth_root: str | Path) -> dict:
    """Give a detected corpus the truth of the corpus it was detected from, panel by panel: its ground_truth.json.

    Each detected panel takes the truth of the true panel the one-to-one matching pairs it with at IoU >= 0.5, or
    else of the true panel it overlaps most (else the nearest by centre): evaluation's labels for what detection
    found (character, scene, story), so that a run on detected pages is scored on the same questions as the run on
    the true JSON. Training never reads a sidecar. Returns the counts of panels labelled each way.
    """
    detected_root, truth_root = Path(detected_root), Path(truth_root)
    truth = json.loads((truth_root / "ground_truth.json").read_text(encoding="utf-8"))
    counts = {"matched": 0, "overlapping": 0, "nearest": 0, "pages without truth": 0}
    books: dict[str, dict] = {}
    for path in sorted(detected_root.rglob("*.json")):
        rel = path.relative_to(detected_root)
        if rel.parts[0].startswith(".") or len(rel.parts) < 2:
            continue
        book, page = rel.parent.as_posix(), rel.stem
        try:
            true_page = truth["books"][book]["pages"][page]
            true_doc = json.loads((truth_root / rel).read_text(encoding="utf-8"))
            t_boxes = [_xyxy(p["bbox"], truth.get("bbox_format", "xywh")) for p in true_doc["panels"]]
        except (KeyError, OSError, ValueError):
            counts["pages without truth"] += 1
            continue
        d_boxes = [_xyxy(p["bbox"], "xywh") for p in json.loads(path.read_text(encoding="utf-8"))["panels"]]
        iou = iou_matrix(d_boxes, t_boxes)
        pairs = {}
        if iou.size:
            rows, cols = linear_sum_assignment(-iou)
            pairs = {int(r): int(c) for r, c in zip(rows, cols) if iou[r, c] >= 0.5}
        panels = []
        for i, box in enumerate(d_boxes):
            if i in pairs:
                source, how = pairs[i], "matched"
            elif len(t_boxes) and iou[i].max() > 0:
                source, how = int(iou[i].argmax()), "overlapping"
            elif len(t_boxes):
                centre = np.array([(box[0] + box[2]) / 2, (box[1] + box[3]) / 2])
                centres = np.array([[(b[0] + b[2]) / 2, (b[1] + b[3]) / 2] for b in t_boxes])
                source, how = int(np.linalg.norm(centres - centre, axis=1).argmin()), "nearest"
            else:
                continue
            counts[how] += 1
            panels.append({**true_page["panels"][source], "reading_position": i})
        entry = books.setdefault(book, {**truth["books"][book], "pages": {}})
        entry["pages"][page] = {**true_page, "panels": panels}
    sidecar = {
        **{k: v for k, v in truth.items() if k not in ("books", "dirty")},
        "bbox_format": "xywh",
        "books": books,
        "dirty": [],
        "transferred_from": truth_root.name,
        "transferred": counts,
    }
    (detected_root / "ground_truth.json").write_text(json.dumps(sidecar, indent=1) + "\n", encoding="utf-8")
    return counts


def detect_against_truth(
    pages_in: str | Path, data_root: str | Path, truth_root: str | Path, prepare: Any = None, **detect_options: Any
) -> tuple[dict, dict]:
    """Notebook 01's raw-pages step with a true corpus beside it (the raw profile): where ``pages_in`` is missing,
    the true corpus (made by ``prepare(truth_root)`` where given, e.g. drawn) gives its page images alone; they are
    detected into ``data_root`` (``detect_options`` as ``run.detect`` takes them), and the detected panels take the
    truth of the panels they match (``transfer_truth``). Returns detect's manifest and the transfer's counts."""
    from comicnb.detect.run import detect
    from comicnb.detect.sources import copy_page_images

    pages_in, truth_root = Path(pages_in), Path(truth_root)
    if not pages_in.exists():
        if prepare is not None:
            prepare(truth_root)
        copy_page_images(truth_root, pages_in)
    manifest = detect(pages_in, data_root, **detect_options)
    return manifest, transfer_truth(data_root, truth_root)
