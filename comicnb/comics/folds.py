"""Book-disjoint folds that agree across every COMICS file, and the filter that keeps a model's books out of its score.

A book's fold is a stable hash of its id alone (SHA-256, not Python's salted ``hash``), so one book is in the same fold
in every COMICS file, downloaded or not, in every process: the dev folds share 480 of their books, and the hard
text-cloze fold holds the very samples of the easy one with other distractors, so folds drawn per file would let a
model trained on one file be scored on the answers it has seen in another. Fold sizes follow the hash, so they are
near, not exactly, equal.
"""

from __future__ import annotations

import hashlib
from collections.abc import Collection, Iterable, Sequence
from dataclasses import dataclass

from comicnb.comics.reader import ComicsSample, book_sort_key

DEFAULT_FOLDS = 5
FOLD_SALT = "comicnb/comics/fold"
VALIDATION_SALT = "comicnb/comics/validation"


def unit_hash(text: str) -> float:
    """A stable number in [0, 1) from a string."""
    return int.from_bytes(hashlib.sha256(text.encode("utf-8")).digest()[:8], "big") / 2**64


def book_fold(book_id: str | int, folds: int = DEFAULT_FOLDS) -> int:
    """The fold (0 .. folds - 1) of a book: the same in every file and every run."""
    if folds < 2:
        raise ValueError(f"folds must be at least 2, not {folds}")
    return int(unit_hash(f"{FOLD_SALT}/{str(book_id).strip()}") * folds)


def in_folds(samples: Iterable[ComicsSample], folds: Collection[int], k: int = DEFAULT_FOLDS) -> list[ComicsSample]:
    """The samples whose book is in one of ``folds`` (of ``k``)."""
    bad = [f for f in folds if not 0 <= f < k]
    if bad:
        raise ValueError(f"folds {bad} are not among 0..{k - 1}")
    wanted = set(folds)
    return [s for s in samples if book_fold(s.book_id, k) in wanted]


def fold_sizes(samples: Iterable[ComicsSample], k: int = DEFAULT_FOLDS) -> list[dict]:
    """Per fold: its books and rows among the samples."""
    books: list[set[str]] = [set() for _ in range(k)]
    rows = [0] * k
    for s in samples:
        fold = book_fold(s.book_id, k)
        books[fold].add(s.book_id)
        rows[fold] += 1
    return [dict(fold=f, books=len(books[f]), rows=rows[f]) for f in range(k)]


@dataclass
class SeenSplit:
    """Samples of books a model never saw, and what was left out because the model saw their book."""

    unseen: list[ComicsSample]
    seen: list[ComicsSample]
    seen_books: list[str]  # books of the file the model saw

    @property
    def unseen_books(self) -> list[str]:
        """Books of the file the model never saw."""
        return sorted({s.book_id for s in self.unseen}, key=book_sort_key)

    def summary(self) -> str:
        """How many rows and books are left out, in words."""
        if not self.seen:
            return f"no rows left out: none of the {len(self.unseen_books)} books was seen in training"
        return (
            f"{len(self.seen)} rows of {len(self.seen_books)} books left out: the model was trained on those books "
            f"(in this or another COMICS file), so it has seen their answers"
        )


def split_seen(samples: Sequence[ComicsSample], trained_books: Collection[str]) -> SeenSplit:
    """Split samples into those of books outside ``trained_books`` and those of books in it."""
    trained = {str(b) for b in trained_books}
    unseen = [s for s in samples if s.book_id not in trained]
    seen = [s for s in samples if s.book_id in trained]
    return SeenSplit(unseen, seen, sorted({s.book_id for s in seen}, key=book_sort_key))


def validation_books(books: Iterable[str], share: float = 0.1, seed: int = 0) -> set[str]:
    """A share of the books for early stopping, drawn by a seeded hash (whole books, at least one, never all)."""
    books = sorted(set(books), key=book_sort_key)
    if len(books) < 2:
        raise ValueError(f"a validation part needs at least two training books, not {len(books)}")
    ranked = sorted(books, key=lambda b: unit_hash(f"{VALIDATION_SALT}/{seed}/{b}"))
    count = min(len(books) - 1, max(1, round(share * len(books))))
    return set(ranked[:count])
