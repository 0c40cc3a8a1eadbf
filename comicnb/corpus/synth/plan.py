"""The corpus plan: books, their page kinds, layouts and story, as plain dicts; nothing drawn or written."""

from __future__ import annotations

import numpy as np

from comicnb.corpus.synth.defects import plan_defects
from comicnb.corpus.synth.layouts import AMBIGUOUS, choose_layout, down_the_columns, page_area, page_plan
from comicnb.corpus.synth.story import CAST, advert_panel, book_title, cover_panel, plan_story, prose_panel

# Purposes that key the generators, so drawing more numbers for one thing leaves the others unchanged.
CORPUS_KEY, BOOK_KEY, PAGE_KEY, DEFECT_KEY, ORDER_KEY = range(5)
DOWN_SHARE = 0.5  # share of grid pages read down their columns (see layouts.AMBIGUOUS)


def plan_corpus(
    books: int = 12,
    pages: int = 10,
    seed: int = 0,
    dirty: bool = False,
    *,
    page_size: tuple[int, int] = (640, 960),
    rtl_fraction: float = 0.2,
    max_panels: int = 12,
    down_share: float = DOWN_SHARE,
) -> dict:
    """The whole corpus as plain dicts (books, pages, boxes, story truth, labels, defects); nothing drawn.

    down_share: the share of grid pages (layouts.AMBIGUOUS) whose story reads down the columns rather than across the
    rows; on those pages only the content tells the two orders apart."""
    rng = np.random.default_rng([seed, CORPUS_KEY])
    # A fixed share rather than a coin per book, so a small corpus with rtl_fraction > 0 has a right-to-left book.
    n_rtl = min(books, max(round(books * rtl_fraction), int(rtl_fraction > 0)))
    rtl = {int(b) for b in rng.choice(books, n_rtl, replace=False)}
    plan = {
        "seed": seed,
        "dirty": [],
        "books": {
            f"book_{b:03d}": _plan_book(seed, b, pages, page_size, "rtl" if b in rtl else "ltr", max_panels, down_share)
            for b in range(books)
        },
    }
    plan["labels"] = {b: {p: page["label"] for p, page in book["pages"].items()} for b, book in plan["books"].items()}
    if dirty:
        plan_defects(plan, np.random.default_rng([seed, DEFECT_KEY]), pages, max_panels)
    return plan


def _page_labels(rng: np.random.Generator, b: int, pages: int) -> list[str]:
    """Cover first; every second book an advertisement, every third a text page, somewhere after page 1."""
    labels = ["cover"] + ["narrative"] * (pages - 1)
    extras = (["advertisement"] if b % 2 == 1 and pages >= 5 else []) + (["text"] if b % 3 == 2 and pages >= 6 else [])
    for label, at in zip(extras, rng.choice(np.arange(2, pages), len(extras), replace=False)):
        labels[int(at)] = label
    return labels


def _image_format(b: int, p: int, pages: int) -> str:
    """PNG for about one page in eleven (spread over books and positions), JPEG otherwise."""
    return "png" if (b * pages + p) % 11 == 3 else "jpg"


def _plan_book(
    seed: int, b: int, pages: int, page_size: tuple[int, int], direction: str, limit: int, down_share: float
) -> dict:
    """One book: page size, cast, page kinds and layouts, and its story cut into the narrative pages."""
    rng = np.random.default_rng([seed, BOOK_KEY, b])
    # Its own generator: which grids read down draws nothing from the book's, so everything else stays as it was.
    order_rng = np.random.default_rng([seed, ORDER_KEY, b])
    size = tuple(2 * int(round(s * rng.uniform(0.94, 1.06) / 2)) for s in page_size)
    cast = [str(c) for c in rng.choice(list(CAST), int(rng.integers(3, 6)), replace=False)]
    labels = _page_labels(rng, b, pages)
    layouts = [choose_layout(rng, size, limit) if label == "narrative" else (label, []) for label in labels]
    story = plan_story(rng, cast, sum(len(boxes) for _, boxes in layouts))
    book = {"direction": direction, "size": size, "cast": cast, "title": book_title(rng, cast), "pages": {}}
    cursor = 0
    for p, (label, (layout, boxes)) in enumerate(zip(labels, layouts)):
        reading = "fixed"
        if label == "narrative":
            panels, cursor = story[cursor : cursor + len(boxes)], cursor + len(boxes)
            if layout in AMBIGUOUS:
                reading = "down" if order_rng.random() < down_share else "across"
                boxes = down_the_columns(boxes, AMBIGUOUS[layout]) if reading == "down" else boxes
        else:
            boxes, panels = [page_area(size)[0]], [_single_panel(rng, label, book, story[:cursor])]
        fmt = _image_format(b, p, pages)
        book["pages"][f"page_{p:03d}"] = page_plan(label, layout, boxes, panels, book, fmt, reading)
    return book


def _single_panel(rng: np.random.Generator, label: str, book: dict, story_so_far: list[dict]) -> dict:
    """The one panel of a cover, advertisement or text page."""
    if label == "cover":
        return cover_panel(rng, book["cast"], book["title"])
    return advert_panel(rng) if label == "advertisement" else prose_panel(story_so_far)
