"""Drawing negatives: pools of candidate panels (rules) of one split, tried in order, hard ones first.

A ``Rule`` is a pool with a name (recorded per negative in ``built_from``) and whether it makes a sample hard: the
answer's scene run or scene (where the corpus has truth), nearby pages of its book, its book, other books of the
split. ``draw`` takes k rows from the rules in order; ``difficulty_of`` says a sample is hard when every negative came
from a hard rule.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from comicnb.stage4.tasks import SHAPE_TOLERANCES, TEXT_LENGTH_TOLERANCE, log_length
from comicnb.stage4.view import RunView, log_box_shape

NEARBY_PAGES = 2  # "nearby" and "neighbouring" pages: at most this many narrative pages away in the same book
SCENE_COLUMNS = ("scene_run", "scene")  # hard negatives: the same scene run, else the same place in the book


@dataclass
class Rule:
    """A pool of negatives: its name (recorded per negative), whether it makes a sample hard, and its rows."""

    name: str
    hard: bool
    rows: np.ndarray


class SplitIndex:
    """The panels of one split, grouped the ways the rules need (rows are positions in ``view.panels``)."""

    def __init__(self, view: RunView, split: str) -> None:
        panels = view.panels
        self.panels = panels
        self.shape = log_box_shape(panels)  # (P, 2) of every row
        self.text_length = np.array([log_length(t) for t in panels.text])  # (P,) of every row
        self.text_boxes = panels.n_boxes.to_numpy()  # (P,) balloons and captions of every row; -1 unknown
        self.rows = np.flatnonzero((panels.split == split).to_numpy())
        part = panels.iloc[self.rows]
        self.streams = {b: g.index.to_numpy() for b, g in part.sort_values(["page_index", "slot"]).groupby("book_id")}
        self.pages = {p: g.sort_values("slot").index.to_numpy() for p, g in part.groupby("page_index")}
        self.groups: dict[str, dict[tuple, np.ndarray]] = {}
        for column in SCENE_COLUMNS:
            if column in panels:
                labelled = part[part[column].map(known).astype(bool)]
                self.groups[column] = {k: g.index.to_numpy() for k, g in labelled.groupby(["book_id", column])}

    def same_shape(self, row: int, level: int = 0) -> Callable[[np.ndarray], np.ndarray]:
        """A ``draw`` filter keeping the rows whose box has the shape and size of ``row``'s within
        ``SHAPE_TOLERANCES[level]`` (log aspect ratio, log area in page pixels): what survives of a crop's shape in
        its image embedding."""
        tolerance = SHAPE_TOLERANCES[level]
        limits = np.array([tolerance["log_aspect"], tolerance["log_area"]])

        def fits(rows: np.ndarray) -> np.ndarray:
            return (np.abs(self.shape[rows] - self.shape[row]) <= limits).all(axis=1)

        return fits

    def same_text(self, row: int) -> Callable[[np.ndarray], np.ndarray]:
        """A ``draw`` filter keeping the rows whose text has as many text boxes as ``row``'s and a length in the same
        cell of a fixed grid of width TEXT_LENGTH_TOLERANCE: the answer panel's empty balloons show how much text it
        held and in how many boxes. Fixed cells, not a window around the answer: centred on the answer, the answer
        would be the candidates' median length; a window placed at random would spread the answer evenly across it
        while the negatives crowd to its more common lengths."""
        cell = np.floor(self.text_length[row] / TEXT_LENGTH_TOLERANCE)

        def fits(rows: np.ndarray) -> np.ndarray:
            length = np.floor(self.text_length[rows] / TEXT_LENGTH_TOLERANCE) == cell
            return length & (self.text_boxes[rows] == self.text_boxes[row])

        return fits

    def stream_items(self) -> Iterator[tuple[str, np.ndarray]]:
        """(book, its rows in reading order), books sorted."""
        return iter(sorted(self.streams.items()))

    def scene_rules(self, row: int) -> list[Rule]:
        """The hard rules: the row's scene run, then its scene (place), in its book, where the truth has them."""
        book, rules = self.panels.book_id[row], []
        for column, name in zip(SCENE_COLUMNS, ("same_scene_run", "same_scene"), strict=True):
            value = self.panels[column][row] if column in self.groups else None
            if known(value):
                rules.append(Rule(name, True, self.groups[column].get((book, value), np.zeros(0, int))))
        return rules

    def book_rule(self, row: int) -> Rule:
        """Every panel of the row's book (in this split)."""
        return Rule("same_book", False, self.streams[self.panels.book_id[row]])

    def nearby_rule(self, row: int, name: str = "nearby_pages", hard: bool = False) -> Rule:
        """Panels of the row's book at most NEARBY_PAGES narrative pages away (its own page included)."""
        book_rows = self.streams[self.panels.book_id[row]]
        ranks = self.panels.page_rank.to_numpy()[book_rows]
        return Rule(name, hard, book_rows[np.abs(ranks - self.panels.page_rank[row]) <= NEARBY_PAGES])

    def other_books_rule(self, row: int) -> Rule:
        """Panels of the split's other books."""
        book = self.panels.book_id[row]
        others = [rows for b, rows in self.stream_items() if b != book]
        return Rule("other_books", False, np.concatenate(others) if others else np.zeros(0, dtype=int))


def known(value: Any) -> bool:
    """A truth value that names something (not None / NaN)."""
    return value is not None and not (isinstance(value, float) and np.isnan(value))


def draw(
    rng: np.random.Generator,
    rules: Sequence[Rule],
    k: int,
    exclude: set[int],
    key: Callable[[int], Hashable] | None = None,
    taken: set | None = None,
    fits: Callable[[np.ndarray], np.ndarray] | None = None,
) -> tuple[list[int], list[str]] | None:
    """k rows from the rules' pools in order (random within a pool), none excluded, with ``fits`` only rows it keeps
    ((n,) rows -> (n,) bool), and with ``key`` none sharing a key with another or with ``taken``; with their rules'
    names. None if too few."""
    chosen: list[int] = []
    names: list[str] = []
    seen, keys = set(exclude), set(taken or ())
    for rule in rules:
        drawn = rng.permutation(np.asarray(rule.rows, dtype=int))  # the same draw whatever the filters keep
        if fits is not None:
            drawn = drawn[fits(drawn)]
        pool = [int(r) for r in drawn if int(r) not in seen]
        for row in pool:
            if len(chosen) == k:
                break
            if key is not None and key(row) in keys:
                continue
            chosen.append(row)
            names.append(rule.name)
            seen.add(row)
            if key is not None:
                keys.add(key(row))
    return (chosen, names) if len(chosen) == k else None


def draw_shaped(
    rng: np.random.Generator,
    index: SplitIndex,
    answer: int,
    rules: Sequence[Rule],
    k: int,
    exclude: set[int],
    **keys: Any,
) -> tuple[list[int], list[str], int] | None:
    """``draw`` of k negatives of ``answer``'s shape at the tightest level of SHAPE_TOLERANCES that gives them, with
    that level; None where even the loosest gives too few. ``keys``: draw's ``key`` and ``taken``."""
    for level in range(len(SHAPE_TOLERANCES)):
        drawn = draw(rng, rules, k, exclude, fits=index.same_shape(answer, level), **keys)
        if drawn is not None:
            return (*drawn, level)
    return None


def difficulty_of(names: Sequence[str], rules: Sequence[Rule]) -> str:
    """hard when every negative came from a hard rule, else easy."""
    hard = {rule.name for rule in rules if rule.hard}
    return "hard" if names and all(n in hard for n in names) else "easy"
