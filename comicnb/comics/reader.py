"""Read a COMICS cloze CSV (Iyyer et al. 2017, miyyer/comics ``folds/``) into typed samples and a report of bad rows.

Every COMICS fold has one sample a row: ``book_id, page_id, answer_panel_id``, the three context panels' ids
(``context_panel_{p}_id``) and up to three text boxes each (``context_text_{p}_{b}``, empty where the panel has fewer),
the candidates of the answer panel and ``correct_answer``, the index of the right candidate. The candidates are

- text cloze (``text_cloze_{dev,test}_{easy,hard}.csv``): ``answer_candidate_{k}_text``, one text box each (3);
- character coherence (``char_coherence_{dev,test}.csv``): ``answer_candidate_{k}_box_{b}``, each the answer panel's
  two boxes in one of the two orders (2 candidates of 2 boxes).

The task is told by the header (or given, and then checked). A file whose header is not a COMICS fold is refused with
a clear error; a row that cannot be a sample (wrong number of fields, no book id, an empty candidate, an answer that
is not an integer or out of range) is skipped and counted by reason with its first line numbers, never fatal.
Fields are parsed with the ``csv`` module: quoted fields hold commas and, in principle, line breaks.
"""

from __future__ import annotations

import csv
import re
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from comicnb.checkpoint import file_sha256

TEXT_CLOZE = "text_cloze"
CHAR_COHERENCE = "char_coherence"
COMICS_TASKS = (TEXT_CLOZE, CHAR_COHERENCE)
ID_COLUMNS = ("book_id", "page_id", "answer_panel_id")
ANSWER_COLUMN = "correct_answer"
EXAMPLE_LINES = 5  # line numbers kept per skip reason

# Skip reasons, as the report prints them.
WRONG_FIELDS = "wrong number of fields"
NO_BOOK = "empty book_id"
EMPTY_CANDIDATE = "empty candidate"
ANSWER_NOT_INTEGER = "answer not an integer"
ANSWER_OUT_OF_RANGE = "answer out of range"
UNREADABLE = "unreadable line (csv error)"
BLANK = "blank line"


class ComicsFormatError(ValueError):
    """The file as a whole is not a COMICS cloze fold (no header, missing columns, another task than asked)."""


@dataclass(frozen=True)
class ComicsSample:
    """One COMICS cloze sample.

    ``context``: per context panel in reading order, its non-empty text boxes (a panel without text: ``()``);
    ``candidates``: per candidate, its text boxes in order (text cloze: one box; character coherence: the answer
    panel's two boxes in this candidate's order); ``answer``: index of the right candidate; ``line``: the file line
    the row starts on.
    """

    line: int
    book_id: str
    page_id: str
    answer_panel_id: str
    context: tuple[tuple[str, ...], ...]
    candidates: tuple[tuple[str, ...], ...]
    answer: int

    @property
    def key(self) -> str:
        """``book_page_panel``, the sample key of the COMICS code."""
        return f"{self.book_id}_{self.page_id}_{self.answer_panel_id}"


@dataclass
class ReadReport:
    """Rows read and rows skipped, by reason, with the first line numbers of each reason."""

    rows: int = 0  # data rows in the file (header excluded), skipped ones included
    skipped: Counter = field(default_factory=Counter)
    examples: dict[str, list[int]] = field(default_factory=dict)
    tied: int = 0  # kept rows with two identical candidates: no scorer can tell them apart

    def skip(self, reason: str, line: int) -> None:
        """Count one skipped row."""
        self.skipped[reason] += 1
        lines = self.examples.setdefault(reason, [])
        if len(lines) < EXAMPLE_LINES:
            lines.append(line)

    @property
    def kept(self) -> int:
        """Rows that became samples."""
        return self.rows - sum(self.skipped.values())

    def lines(self) -> list[str]:
        """One line per skip reason: count and first line numbers (empty when nothing was skipped)."""
        return [
            f"{count} row{'s' * (count != 1)} skipped: {reason} (line {', '.join(map(str, self.examples[reason]))}"
            f"{', ...' if count > len(self.examples[reason]) else ''})"
            for reason, count in self.skipped.most_common()
        ]

    def as_dict(self) -> dict:
        """Plain dict for a JSON manifest."""
        return dict(rows=self.rows, kept=self.kept, skipped=dict(self.skipped), examples=self.examples, tied=self.tied)


@dataclass
class ComicsTable:
    """The samples of one COMICS CSV, its task, layout and read report."""

    path: Path
    task: str
    samples: list[ComicsSample]
    report: ReadReport
    n_candidates: int
    sha256: str

    def __len__(self) -> int:
        return len(self.samples)

    @property
    def books(self) -> list[str]:
        """The book ids of the samples, sorted, each once."""
        return sorted({s.book_id for s in self.samples}, key=book_sort_key)

    @property
    def chance(self) -> float:
        """Accuracy of a uniform guess."""
        return 1.0 / self.n_candidates

    def subset(self, samples: Sequence[ComicsSample]) -> ComicsTable:
        """The same file's table restricted to some of its samples (the report stays the file's)."""
        return ComicsTable(self.path, self.task, list(samples), self.report, self.n_candidates, self.sha256)


def book_sort_key(book_id: str) -> tuple[int, int | str]:
    """Numeric ids in numeric order, then any others."""
    return (0, int(book_id)) if book_id.isdigit() else (1, book_id)


@dataclass(frozen=True)
class Layout:
    """Where a fold's fields are: column indices of ids, context boxes per panel, candidate boxes, answer."""

    task: str
    width: int
    ids: tuple[int, int, int]
    context: tuple[tuple[int, ...], ...]
    candidates: tuple[tuple[int, ...], ...]
    answer: int


def numbered(header: Sequence[str], pattern: str) -> dict[tuple[int, ...], int]:
    """Columns matching a pattern with integer groups: {groups: column index}."""
    found = {}
    for i, name in enumerate(header):
        match = re.fullmatch(pattern, name.strip())
        if match:
            found[tuple(int(g) for g in match.groups())] = i
    return found


def grouped(columns: dict[tuple[int, int], int], what: str) -> tuple[tuple[int, ...], ...]:
    """Column indices grouped by their first number, each group ordered by the second; numbering must be 0..n-1."""
    outer = sorted({a for a, _ in columns})
    if outer != list(range(len(outer))):
        raise ComicsFormatError(f"{what} columns are numbered {outer}, not 0..{len(outer) - 1}")
    groups = []
    for a in outer:
        inner = sorted(b for x, b in columns if x == a)
        if inner != list(range(len(inner))):
            raise ComicsFormatError(f"{what} {a} has boxes numbered {inner}, not 0..{len(inner) - 1}")
        groups.append(tuple(columns[(a, b)] for b in inner))
    return tuple(groups)


def detect_layout(header: Sequence[str], task: str | None = None) -> Layout:
    """The task and column layout a header says; ``task`` given: checked against the header."""
    names = [h.strip() for h in header]
    missing = [c for c in (*ID_COLUMNS, ANSWER_COLUMN) if c not in names]
    if missing:
        raise ComicsFormatError(
            f"not a COMICS cloze fold: no column {', '.join(missing)} in the header ({', '.join(names[:6])}, ...)"
        )
    texts = numbered(names, r"answer_candidate_(\d+)_text")
    boxes = numbered(names, r"answer_candidate_(\d+)_box_(\d+)")
    if texts and boxes:
        raise ComicsFormatError("the header has both text-cloze and character-coherence candidate columns")
    if not texts and not boxes:
        raise ComicsFormatError(
            "no candidate columns: a text-cloze fold has answer_candidate_{k}_text, a character-coherence fold "
            "answer_candidate_{k}_box_{b} (visual cloze folds have no candidate texts and are not read here)"
        )
    found = TEXT_CLOZE if texts else CHAR_COHERENCE
    if task is not None and task != found:
        raise ComicsFormatError(f"the file is a {found} fold (by its candidate columns), not {task}")
    candidates = tuple((texts[(k,)],) for k in sorted(k for (k,) in texts)) if texts else grouped(boxes, "candidate")
    if found == TEXT_CLOZE and [k for (k,) in sorted(texts)] != list(range(len(texts))):
        raise ComicsFormatError(f"candidate columns are numbered {sorted(k for (k,) in texts)}, not 0..n-1")
    if len(candidates) < 2:
        raise ComicsFormatError(f"the header has {len(candidates)} candidate: a cloze needs at least two")
    context = numbered(names, r"context_text_(\d+)_(\d+)")
    if not context:
        raise ComicsFormatError("no context_text_{panel}_{box} columns in the header")
    return Layout(
        task=found,
        width=len(names),
        ids=tuple(names.index(c) for c in ID_COLUMNS),
        context=grouped(context, "context panel"),
        candidates=candidates,
        answer=names.index(ANSWER_COLUMN),
    )


def records(handle) -> Iterator[tuple[int, list[str] | None]]:
    """(first line, fields) of each CSV record; fields None where the csv module could not parse the record."""
    reader = csv.reader(handle)
    start = 1
    while True:
        try:
            row = next(reader)
        except StopIteration:
            return
        except csv.Error:
            row = None
        yield start, row
        start = reader.line_num + 1


def parse_row(row: list[str], line: int, layout: Layout, report: ReadReport) -> ComicsSample | None:
    """A sample from one record, or None after counting why it cannot be one."""
    if len(row) != layout.width:
        report.skip(WRONG_FIELDS, line)
        return None
    book, page, panel = (row[i].strip() for i in layout.ids)
    if not book:
        report.skip(NO_BOOK, line)
        return None
    candidates = tuple(tuple(row[i].strip() for i in boxes) for boxes in layout.candidates)
    if any(not box for candidate in candidates for box in candidate):
        report.skip(EMPTY_CANDIDATE, line)
        return None
    try:
        answer = int(row[layout.answer].strip())
    except ValueError:
        report.skip(ANSWER_NOT_INTEGER, line)
        return None
    if not 0 <= answer < len(candidates):
        report.skip(ANSWER_OUT_OF_RANGE, line)
        return None
    context = tuple(tuple(t for t in (row[i].strip() for i in boxes) if t) for boxes in layout.context)
    if len(set(candidates)) < len(candidates):
        report.tied += 1
    return ComicsSample(line, book, page, panel, context, candidates, answer)


def read_comics(path: str | Path, task: str | None = None) -> ComicsTable:
    """Read a COMICS cloze CSV: its samples and the report of the rows skipped (see the module).

    ``task``: ``text_cloze`` or ``char_coherence`` to insist on one (None: told by the header). Raises
    FileNotFoundError for no file and ComicsFormatError for a file that is not a COMICS cloze fold.
    """
    path = Path(path)
    if task is not None and task not in COMICS_TASKS:
        raise ValueError(f"unknown COMICS task {task!r}: one of {', '.join(COMICS_TASKS)}")
    if not path.is_file():
        raise FileNotFoundError(f"no COMICS CSV at {path}")
    report, samples = ReadReport(), []
    with open(path, newline="", encoding="utf-8", errors="replace") as handle:
        rows = records(handle)
        first = next(rows, None)
        if first is None or not first[1]:
            raise ComicsFormatError(f"{path} is empty or does not start with a header row")
        layout = detect_layout(first[1], task)
        for line, row in rows:
            report.rows += 1
            if row is None:
                report.skip(UNREADABLE, line)
            elif not row or not any(f.strip() for f in row):
                report.skip(BLANK, line)
            else:
                sample = parse_row(row, line, layout, report)
                if sample is not None:
                    samples.append(sample)
    return ComicsTable(path, layout.task, samples, report, len(layout.candidates), file_sha256(path))
