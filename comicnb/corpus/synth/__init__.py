"""The embedded corpus: synthetic comic books drawn with PIL, in the Stage 1/2 formats, with ground truth.

`generate(out, books, pages, seed)` writes (the contract is docs/corpus.md)::

    out/pss_labels.json          {book: {page: label}}, labels cover / narrative / advertisement / text
    out/book_000/page_000.jpg    page image (JPEG; a few PNG)
    out/book_000/page_000.json   {"image_width", "image_height", "panels": [{"bbox", "text", ...}]}
    out/book_000/page_000.textfree.jpg  the page's text-free twin: the same drawing, balloons and captions empty
    out/ground_truth.json        cast, per-page layout and per-panel story truth (beats, scene runs), defects

Each book opens with a cover; every second book carries an advertisement and every third a text page. Its
narrative pages tell one story (the story module): a recurring cast drawn the same way everywhere, scenes with
their own backdrop and landmark, actions that progress visibly over consecutive panels, and speech balloons
whose tails point at the speaker. Pages are laid out as grids, unequal rows, a tall panel beside two stacked
ones, a splash with a strip, or staggered gutters, read left-to-right or (some books) right-to-left, so the
naive (top, then left) sort of the boxes is sometimes wrong.

`dirty=True` gives each class of bad input of docs/corpus.md section 2 a narrative page of its own (except
label_without_page, which labels a page that is not there) and lists them in the sidecar with the action a
reader should take.

Every random draw comes from a numpy Generator keyed by (seed, purpose, book, page), so a seed gives
byte-identical files.

The modules, in the order a page is made: story (the story grammar), layouts (panel boxes), plan (the corpus
as plain dicts), defects (the dirty mode), primitives, scenery, actors and paint (drawing), truth (the
sidecar) and generator (writing files, the command line).
"""

from comicnb.corpus.synth.defects import BOMB_SIDE, DEFECTS, PANEL_DEFECTS
from comicnb.corpus.synth.generator import add_arguments, describe, generate, main, ocr_noise, page_doc, page_files
from comicnb.corpus.synth.layouts import LAYOUTS, Box, mirror, naive_order_correct, page_area, to_bbox
from comicnb.corpus.synth.paint import render_page
from comicnb.corpus.synth.plan import plan_corpus
from comicnb.corpus.synth.truth import VERSION, ground_truth, panel_truth

__all__ = [
    "describe",
    "BOMB_SIDE",
    "DEFECTS",
    "LAYOUTS",
    "PANEL_DEFECTS",
    "VERSION",
    "Box",
    "add_arguments",
    "generate",
    "ground_truth",
    "main",
    "mirror",
    "naive_order_correct",
    "ocr_noise",
    "page_area",
    "page_doc",
    "page_files",
    "panel_truth",
    "plan_corpus",
    "render_page",
    "to_bbox",
]
