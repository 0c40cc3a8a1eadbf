"""COMICS (Iyyer et al. 2017) cloze folds: read them, fold them by book across files, train Stage 4's text-cloze and
character-coherence heads on them as text-only panels, and score on books the model never saw.

- ``reader``: a COMICS cloze CSV -> typed samples and a report of the rows skipped (never fatal);
- ``folds``: a book's fold from a stable hash of its id, the same in every COMICS file; the seen-books filter;
- ``embed``: text vectors of panels and candidates (packaged all-MiniLM-L6-v2), cached by text;
- ``scorer``: the Stage 4 model trained on them (``fit``), saved with the books it saw (``load_scorer``);
- ``evaluate``: accuracy on unseen books with an interval, beside the zero-shot text-similarity baseline and chance;
- ``cli``: ``python -m comicnb comics fit|eval|baseline|folds`` (docs/comics.md).
"""

from comicnb.comics.folds import DEFAULT_FOLDS, book_fold, in_folds, split_seen
from comicnb.comics.reader import CHAR_COHERENCE, COMICS_TASKS, TEXT_CLOZE, ComicsFormatError, ComicsSample, read_comics

__all__ = [
    "CHAR_COHERENCE",
    "COMICS_TASKS",
    "DEFAULT_FOLDS",
    "TEXT_CLOZE",
    "ComicsFormatError",
    "ComicsSample",
    "book_fold",
    "in_folds",
    "read_comics",
    "split_seen",
]
