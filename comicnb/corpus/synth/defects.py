"""The dirty mode: one page for each class of bad input of docs/corpus.md section 2, planned, then broken."""

from __future__ import annotations

import unicodedata

import numpy as np
from PIL import Image

from comicnb.corpus.synth.layouts import dense, page_area, page_plan, to_bbox
from comicnb.corpus.synth.story import pick, plan_story, speech

BOMB_SIDE = 10_000  # 1e8 pixels, above PIL's default MAX_IMAGE_PIXELS (89,478,485)

# (problem, variant, expected reader action) as in docs/corpus.md section 2; each gets a page of its own.
DEFECTS = [
    ("corrupt_image", "garbage", "skipped_page"),
    ("truncated_image", "cut", "skipped_page"),
    ("huge_image", "bomb", "skipped_page"),
    ("missing_json", "missing_json", "skipped_page"),
    ("missing_image", "missing_image", "skipped_page"),
    ("invalid_json", "invalid_json", "skipped_page"),
    ("bad_json_shape", "panels_dict", "skipped_page"),
    ("bad_json_shape", "panel_without_bbox", "skipped_page"),
    ("no_panels", "no_panels", "skipped_page"),
    ("bbox_out_of_bounds", "partly_outside", "repaired"),
    ("bbox_outside_page", "wholly_outside", "skipped_panel"),
    ("bbox_negative", "negative", "repaired"),
    ("bbox_zero_area", "zero_area", "skipped_panel"),
    ("too_many_panels", "too_many", "split"),
    ("page_without_label", "unlabelled", "skipped_page"),
    ("image_mode", "L", "converted"),
    ("image_mode", "CMYK", "converted"),
    ("image_mode", "RGBA", "converted"),
    ("image_mode", "I;16", "converted"),
    ("text_encoding", "cp1252", "repaired"),
    ("text_unicode", "odd_unicode", "repaired"),
    ("duplicate_image", "second_image", "noted"),
    ("duplicate_json", "second_json", "noted"),
]
# Defects of one panel: the sidecar names its index. panel_without_bbox and cp1252 also touch one panel,
# but the reader's action concerns the whole page, so the sidecar says null for them.
PANEL_DEFECTS = {"partly_outside", "wholly_outside", "negative", "zero_area", "odd_unicode"}
_ONE_PANEL = PANEL_DEFECTS | {"panel_without_bbox", "cp1252"}
_FORMAT_OF = {
    "garbage": "jpg",
    "cut": "jpg",
    "L": "jpg",
    "CMYK": "jpg",
    "RGBA": "png",
    "I;16": "png",
    "bomb": "png",
    "second_image": "jpg",
}
ACCENTED = [
    "Un café, s'il vous plaît!",
    "Déjà vu at the pier, señor?",
    "Crème brûlée for everyone!",
    "Voilà, the piñata is here!",
]


def plan_defects(plan: dict, rng: np.random.Generator, pages: int, max_panels: int) -> None:
    """Give each defect its own narrative page, adjust that page's plan, and list it in plan['dirty']."""
    targets = [
        (b, p) for b, book in plan["books"].items() for p, page in book["pages"].items() if page["label"] == "narrative"
    ]
    if len(targets) < len(DEFECTS):
        raise ValueError(
            f"dirty=True needs {len(DEFECTS)} narrative pages and this corpus has {len(targets)}: "
            "ask for more books or pages"
        )
    for (problem, variant, action), i in zip(DEFECTS, rng.choice(len(targets), len(DEFECTS), replace=False)):
        b, p = targets[int(i)]
        panel = _break_plan(rng, plan["books"][b], plan["books"][b]["pages"][p], variant, max_panels)
        plan["dirty"].append({"problem": problem, "book_id": b, "page_name": p, "panel": panel, "action": action})
        if variant == "unlabelled":
            del plan["labels"][b][p]
    b, ghost = pick(rng, list(plan["books"])), f"page_{pages:03d}"
    plan["labels"][b][ghost] = "narrative"
    plan["dirty"].append(
        {"problem": "label_without_page", "book_id": b, "page_name": ghost, "panel": None, "action": "noted"}
    )
    plan["dirty"].sort(key=lambda d: (d["book_id"], d["page_name"]))


def _break_plan(rng: np.random.Generator, book: dict, page: dict, variant: str, max_panels: int) -> int | None:
    """Change a page's plan for its defect; return the defective panel's index where the sidecar names one."""
    area, gap = page_area(book["size"])
    if variant == "too_many":
        n = max_panels + 3
        # A story of its own, numbered past the book's beats and scene runs so that no number names two of them.
        numbered = [panel for other in book["pages"].values() for panel in other["panels"] if panel["beat"] is not None]
        first_beat = 1 + max((panel["beat"] for panel in numbered), default=-1)
        first_run = 1 + max((panel["scene_run"] for panel in numbered), default=-1)
        story = plan_story(rng, book["cast"], n, first_beat, first_run)
        page.update(page_plan("narrative", "dense", dense(rng, area, gap, n), story, book, page["format"]))
    elif variant == "no_panels":
        page.update(page_plan("narrative", "empty", [], [], book, page["format"]))
    k = _defect_panel(rng, page, variant) if variant in _ONE_PANEL else None
    if variant in ("cp1252", "odd_unicode"):
        text = pick(rng, ACCENTED) + (" \U0001f642" if variant == "odd_unicode" else "")
        page["panels"][k]["lines"] = [speech(page["panels"][k]["characters"][0], text)]
    page.update(defect={"variant": variant, "panel": k}, format=_FORMAT_OF.get(variant, page["format"]))
    return k if variant in PANEL_DEFECTS else None


def _defect_panel(rng: np.random.Generator, page: dict, variant: str) -> int:
    """The index of the panel to damage."""
    boxes, panels = page["boxes"], page["panels"]
    silent = [i for i, panel in enumerate(panels) if not panel["lines"]]
    # A box on the right edge is pushed past it and one on the left edge below zero; new text goes into a
    # silent panel where there is one, so that no question loses its answer.
    choices = {
        "partly_outside": [i for i, box in enumerate(boxes) if box[2] == max(b[2] for b in boxes)],
        "negative": [i for i, box in enumerate(boxes) if box[0] == min(b[0] for b in boxes)],
        "cp1252": silent,
        "odd_unicode": silent,
    }.get(variant)
    return pick(rng, choices or list(range(len(boxes))))


_BOX_DEFECTS = {
    "partly_outside": lambda b, w: (b[0], b[1], w + 40, b[3]),
    "wholly_outside": lambda b, w: (w + 20, b[1], w + 20 + b[2] - b[0], b[3]),
    "negative": lambda b, w: (-30, b[1], b[2], b[3]),
    "zero_area": lambda b, w: (b[0], b[1], b[0], b[3]),
}


def _odd(text: str) -> str:
    """Text as a careless pipeline leaves it: decomposed accents, bidi and zero-width marks, a control char."""
    # NFC plus dropping control (Cc) and format (Cf) characters gives the text back exactly.
    head, _, tail = unicodedata.normalize("NFD", text).partition(" ")
    return f"\u200f{head}\u200b \x07{tail}"


def break_doc(doc: dict, page: dict, bbox_format: str) -> dict:
    """Apply a JSON-level defect to a page document."""
    if not page["defect"]:
        return doc
    variant, k = page["defect"]["variant"], page["defect"]["panel"]
    if variant in _BOX_DEFECTS:
        doc["panels"][k]["bbox"] = to_bbox(_BOX_DEFECTS[variant](page["boxes"][k], doc["image_width"]), bbox_format)
    elif variant == "panels_dict":
        doc["panels"] = {str(i): panel for i, panel in enumerate(doc["panels"])}
    elif variant == "panel_without_bbox":
        del doc["panels"][k]["bbox"]
    elif variant == "odd_unicode":
        doc["panels"][k]["text_boxes"] = [_odd(text) for text in doc["panels"][k]["text_boxes"]]
        doc["panels"][k]["text"] = " ".join(doc["panels"][k]["text_boxes"])
    return doc


def break_image(img: Image.Image, variant: str | None) -> Image.Image:
    """Apply an image-level defect: another mode, or a decompression-bomb-sized blank."""
    if variant in ("L", "CMYK"):
        return img.convert(variant)
    if variant == "RGBA":  # transparent margins, so that dropping alpha and compositing it give different paper
        alpha = Image.new("L", img.size, 0)
        alpha.paste(255, page_area(img.size)[0])
        rgba = img.convert("RGBA")
        rgba.putalpha(alpha)
        return rgba
    if variant == "I;16":
        return Image.fromarray(np.asarray(img.convert("L"), dtype=np.uint16) * 257)
    if variant == "bomb":  # 1 bit a pixel and all white: 12 MB in memory, a few kB as PNG
        return Image.new("1", (BOMB_SIDE, BOMB_SIDE), 1)
    return img


def break_files(files: dict[str, bytes], variant: str | None, image: str, doc: str, rng: np.random.Generator) -> None:
    """Apply a file-level defect: garbage, truncation, a missing file or a second file with the same stem."""
    if variant == "garbage":  # SOI + JFIF APP0 (20 bytes) stay; the rest never contains a 0xFF marker byte
        data = files[image]
        files[image] = data[:20] + rng.integers(0, 255, len(data) - 20, dtype=np.uint8).tobytes()
    elif variant == "cut":
        files[image] = files[image][: len(files[image]) // 2]
    elif variant == "invalid_json":
        files[doc] = files[doc][: len(files[doc]) // 2]
    elif variant in ("missing_json", "missing_image"):
        del files[doc if variant == "missing_json" else image]
    elif variant == "second_image":  # the same bytes, so the page reads the same whichever file is taken
        files[image.replace(".jpg", ".jpeg")] = files[image]
    elif variant == "second_json":  # only the suffix's case differs: a case-insensitive file system keeps one
        files[doc.replace(".json", ".JSON")] = files[doc]
