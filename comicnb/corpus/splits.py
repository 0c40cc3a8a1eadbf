"""Train / validation / test splits by book, so no book is in two splits."""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import numpy as np

SPLITS = ("train", "val", "test")


def split_books(book_ids: Iterable[str], fractions: Sequence[float] = (0.8, 0.1, 0.1), seed: int = 0) -> dict[str, str]:
    """Assign each book to train/val/test, shuffled by seed; see split_counts for the number in each."""
    books = sorted(set(book_ids))
    order = np.random.default_rng(seed).permutation(len(books))
    names = np.repeat(SPLITS, split_counts(len(books), fractions))
    return {books[i]: str(name) for i, name in zip(order, names)}


def split_counts(n_books: int, fractions: Sequence[float] = (0.8, 0.1, 0.1)) -> list[int]:
    """Books per split: proportional, at least one in each split with a positive fraction when there are >= 3 books.

    With fewer books every split cannot be filled: one book goes to train, a second to val, and test stays empty.
    """
    if n_books < 3:
        return [min(n_books, 1), max(n_books - 1, 0), 0]
    total = float(sum(fractions))
    counts = [max(1, round(n_books * f / total)) if f > 0 else 0 for f in fractions]
    counts[0] = n_books - counts[1] - counts[2]
    while counts[0] < 1:
        larger = 1 if counts[1] >= counts[2] else 2
        counts[larger] -= 1
        counts[0] += 1
    return counts
