"""Where a corpus is: the data_root notebook 01 reads, and when the embedded synthetic corpus may be drawn there."""

from __future__ import annotations

import difflib
import json
import warnings
from pathlib import Path

from comicnb.paths import project_root

SYNTHESIZE = ("auto", "always", "never")


def embedded_corpus_home(root: str | Path | None = None) -> Path:
    """The folder the embedded synthetic corpora live in: <project>/outputs/corpus/."""
    return project_root(root) / "outputs" / "corpus"


def prepare_data_root(
    data_root: str | Path,
    synthesize: str | bool = "auto",
    *,
    books: int = 4,
    pages: int = 8,
    seed: int = 0,
    dirty: bool = False,
    project: str | Path | None = None,
) -> dict | None:
    """Make sure data_root exists: draw the synthetic corpus there when allowed, else raise naming the folder.

    synthesize says what a *missing* data_root means (an existing folder is always read as it is):

    - ``"auto"`` (default): draw the embedded corpus only when data_root lies under <project>/outputs/corpus/, the
      embedded corpora's home; anywhere else a missing folder is the user's folder mistyped, and an error.
    - ``"always"``: draw it wherever data_root points (a profile or a test that wants a corpus in its own folder).
    - ``"never"``: a missing data_root is always an error.

    ``True`` and ``False`` are read as ``"auto"`` and ``"never"``. Returns the generator's summary when it drew the
    corpus, None when data_root already existed. The error names the folder and near matches that do exist.
    """
    mode = ("auto" if synthesize else "never") if isinstance(synthesize, bool) else synthesize
    if mode not in SYNTHESIZE:
        raise ValueError(f"synthesize={synthesize!r}: use one of {', '.join(map(repr, SYNTHESIZE))}")
    root = Path(data_root).expanduser().absolute()
    home, place = embedded_corpus_home(project).resolve(), root.resolve()  # symlinks of the existing part resolved
    inside_home = place.is_relative_to(home) and place != home
    if root.exists():
        if not root.is_dir():
            raise NotADirectoryError(f"data_root {root} is a file, not a corpus folder")
        older = _older_embedded_version(root) if inside_home and mode != "never" else None
        if older is None:
            return None
        from comicnb.corpus import synth
        from comicnb.corpus.synth.truth import VERSION

        # Our own corpus, drawn by an older generator (no text-free twins, fewer truth fields): a workbook that
        # silently kept it would run the Stage 4 text tasks without images. Only book folders and the corpus JSON
        # files are replaced (synth.generate's overwrite), and only under the embedded corpora's home.
        warnings.warn(
            f"the embedded corpus {root} was drawn by an older generator (ground truth version {older}, now "
            f"{VERSION}): drawing it again",
            stacklevel=2,
        )
        return synth.generate(root, books=books, pages=pages, seed=seed, dirty=dirty, overwrite=True)
    if mode == "always" or (mode == "auto" and inside_home):
        from comicnb.corpus import synth

        return synth.generate(root, books=books, pages=pages, seed=seed, dirty=dirty)
    raise FileNotFoundError(_missing_message(root, mode, home))


def _older_embedded_version(root: Path) -> int | None:
    """The ground-truth version of a synthetic corpus older than today's generator, or None (current, or not ours)."""
    from comicnb.corpus.synth.truth import VERSION

    sidecar = root / "ground_truth.json"
    if not sidecar.is_file():
        return None
    try:
        version = int(json.loads(sidecar.read_text(encoding="utf-8")).get("version", 0))
    except (ValueError, TypeError, AttributeError):
        return None
    return version if version < VERSION else None


def _missing_message(root: Path, mode: str, home: Path) -> str:
    """Why a missing data_root is an error, with the nearest existing folder and near matches of the missing name."""
    parent, missing = root, []
    while not parent.exists():
        parent, missing = parent.parent, [parent.name, *missing]
    message = f"data_root {root} does not exist (nearest existing folder: {parent})."
    if parent.is_dir():
        siblings = sorted(p.name for p in parent.iterdir() if p.is_dir() and not p.name.startswith("."))
        near = difflib.get_close_matches(missing[0], siblings, n=3, cutoff=0.6)
        if near:
            rest = Path(*missing[1:]) if len(missing) > 1 else Path()
            candidates = ", ".join(str(parent / name / rest) for name in near)
            message += f" Did you mean {candidates}?"
    if mode == "never":
        message += " Point data_root at your corpus (synthesize='never': nothing is drawn)."
    else:
        message += (
            f" Point data_root at your corpus. The synthetic corpus is only drawn under {home} (synthesize='auto'); "
            "set synthesize='always' to draw it here."
        )
    return message
