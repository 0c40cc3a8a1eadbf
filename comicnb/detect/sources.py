"""The pages of a folder of images or of CBZ/ZIP archives, as (book, page, bytes) in the order a reader has them.

- A folder: every folder (at any depth) that holds page images is a book, named by its path under the input
  (``series/book_1``); its pages are its images in natural order (docs/corpus.md, "Page order"). An archive in the
  folder is a book of its own, named by its path without the suffix.
- A ``.cbz`` or ``.zip`` file: one book, named by the file's stem; its pages are its image members in natural order
  of their paths inside the archive (folders in it are chapters and join the page's name: ``ch1/003`` ->
  ``ch1_003``).

Anything else is a problems row naming the file: a member or file that is not a page image (``not_an_image``), an
archive that cannot be opened (``bad_archive``), an archive without a page image (``empty_archive``). Text-free twins
(``*.textfree.*``) are left out with a ``noted`` row: detection reads the lettered page.
"""

from __future__ import annotations

import os
import re
import shutil
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from comicnb.corpus.reader import IMAGE_SUFFIXES, _name_key, _twin_of

ARCHIVE_SUFFIXES = (".cbz", ".zip")
# Files a comics folder often holds beside its pages; still a row, but say what they are.
_IGNORED_SUFFIXES = {".xml": "ComicInfo metadata", ".txt": "text file", ".db": "thumbnail cache"}


@dataclass(frozen=True)
class PageSource:
    """Where one page's image bytes are: a file, or a member of an archive."""

    book_id: str
    page_name: str
    file: str  # as a problems row names it: the path under the input, "archive.cbz:member" for a member
    path: str  # the file, or the archive
    member: str | None = None
    suffix: str = ".png"

    def read(self) -> bytes:
        if self.member is None:
            return Path(self.path).read_bytes()
        with zipfile.ZipFile(self.path) as archive:
            return archive.read(self.member)


def _natural(text: str) -> tuple:
    return _name_key(text), text


def _is_image(name: str) -> bool:
    return Path(name).suffix.lower() in IMAGE_SUFFIXES


def _is_twin(name: str) -> bool:
    return _twin_of(Path(name)) is not None


def _row(book_id: str, page_name: str, file: str, problem: str, action: str, detail: str) -> dict:
    return {
        "book_id": book_id,
        "page_name": page_name,
        "panel": None,
        "file": file,
        "problem": problem,
        "action": action,
        "detail": detail,
    }


def list_pages(source: str | Path) -> tuple[list[PageSource], list[dict]]:
    """Every page of a folder or archive, books and pages in natural order, and a problems row per file not used."""
    source = Path(source)
    if not source.exists():
        raise FileNotFoundError(f"no page images at {source}: give a folder of page images or a .cbz/.zip archive")
    if source.is_file():
        if source.suffix.lower() not in ARCHIVE_SUFFIXES:
            raise ValueError(f"{source} is neither a folder nor a {'/'.join(ARCHIVE_SUFFIXES)} archive")
        return _archive(source, source.stem, source.name)
    pages: list[PageSource] = []
    problems: list[dict] = []
    books: dict[str, list[Path]] = {}
    for folder, subfolders, names in os.walk(source):
        subfolders[:] = sorted(d for d in subfolders if not d.startswith("."))
        here = Path(folder)
        book_id = here.relative_to(source).as_posix()
        for name in sorted(n for n in names if not n.startswith(".")):
            path = here / name
            file = path.relative_to(source).as_posix()
            if path.suffix.lower() in ARCHIVE_SUFFIXES:
                stem = path.with_suffix("").relative_to(source).as_posix()
                got, rows = _archive(path, stem, file)
                pages += got
                problems += rows
            elif _is_image(name) and not _is_twin(name) and book_id != ".":
                books.setdefault(book_id, []).append(path)
            else:
                reason = _reason(name, book_id)
                problems.append(_row("" if book_id == "." else book_id, Path(name).stem, file, *reason))
    for book_id, paths in books.items():
        for path in sorted(paths, key=lambda p: _natural(p.stem)):
            pages.append(
                PageSource(book_id, path.stem, path.relative_to(source).as_posix(), str(path), None, path.suffix)
            )
    pages.sort(key=lambda p: (_natural(p.book_id), _natural(p.page_name)))
    _deduplicate(pages, problems)
    return pages, problems


def _reason(name: str, book_id: str) -> tuple[str, str, str]:
    if _is_twin(name):
        return "text_free_input", "noted", "a text-free twin: detection reads the lettered page"
    if _is_image(name):
        return "unused_file", "noted", "page image at the top of the input, not in a book folder"
    what = _IGNORED_SUFFIXES.get(Path(name).suffix.lower(), f"suffix {Path(name).suffix or '(none)'!r}")
    return "not_an_image", "noted", f"{what}: not a page image ({', '.join(IMAGE_SUFFIXES)})"


def _archive(path: Path, book_id: str, file: str) -> tuple[list[PageSource], list[dict]]:
    try:
        with zipfile.ZipFile(path) as archive:
            infos = [info for info in archive.infolist() if not info.is_dir()]
    except (zipfile.BadZipFile, OSError) as err:
        return [], [_row(book_id, "", file, "bad_archive", "skipped_book", f"{type(err).__name__}: {err}")]
    pages, problems = [], []
    for info in sorted(infos, key=lambda i: _natural(i.filename)):
        member = info.filename
        parts = [p for p in Path(member).parts if p]
        if any(p.startswith(".") or p == "__MACOSX" for p in parts):
            continue  # the archiver's own files (macOS resource forks, hidden files)
        page_name = re.sub(r"[\\/]+", "_", str(Path(member).with_suffix("")))
        if _is_image(member) and not _is_twin(member):
            pages.append(PageSource(book_id, page_name, f"{file}:{member}", str(path), member, Path(member).suffix))
        else:
            problems.append(_row(book_id, page_name, f"{file}:{member}", *_reason(Path(member).name, book_id)))
    if not pages:
        problems.append(_row(book_id, "", file, "empty_archive", "skipped_book", "no page image in the archive"))
    return pages, problems


def _deduplicate(pages: list[PageSource], problems: list[dict]) -> None:
    """Two pages of a book with one name (page_9.png and page_9.jpg): the first keeps it, a row for the other."""
    seen: set[tuple[str, str]] = set()
    keep = []
    for page in pages:
        key = (page.book_id, page.page_name)
        if key in seen:
            problems.append(
                _row(*key, page.file, "duplicate_image", "noted", "another image of the book has this name; skipped")
            )
            continue
        seen.add(key)
        keep.append(page)
    pages[:] = keep


def iter_books(pages: list[PageSource]) -> Iterator[tuple[str, list[PageSource]]]:
    """Pages grouped by book, in order."""
    book: list[PageSource] = []
    for page in pages:
        if book and page.book_id != book[0].book_id:
            yield book[0].book_id, book
            book = []
        book.append(page)
    if book:
        yield book[0].book_id, book


def copy_page_images(data_root: str | Path, dest: str | Path, books: list[str] | None = None) -> Path:
    """The page images of a corpus alone (no JSON, labels, twins or sidecar), copied into ``dest`` book by book: the
    input a researcher with nothing but scans has. ``books`` limits the copy to those book ids."""
    data_root, dest = Path(data_root), Path(dest)
    for path in sorted(data_root.rglob("*")):
        rel = path.relative_to(data_root)
        if any(part.startswith(".") for part in rel.parts) or not path.is_file() or len(rel.parts) < 2:
            continue
        if not _is_image(path.name) or _is_twin(path.name):
            continue
        if books is not None and rel.parent.as_posix() not in books:
            continue
        (dest / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(path, dest / rel)
    return dest
