"""A corpus of one's own, as a new user brings it: the traps of reading it, each reproduced and fixed.

The corpus is the issue's: 6 books, PNG and JPEG pages, grayscale and RGBA pages, xyxy boxes, flat CoSMo labels
(story, first-page, textstory, cover), page names like ``Page 10.png``, books nested one folder deeper, stray
files, and a nested book nobody labelled. All books but one bring text-free twins (``Page 10.textfree.png``), and
one twin has lost its page. It is drawn by ``synth.generate`` and then rewritten the way real exports
look.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
from PIL import Image

from comicnb.corpus import TEXT_FREE, load_corpus, prepare_data_root, synth, text_free_name

ROOT = Path(__file__).resolve().parent.parent
COSMO_NARRATIVE = ["story", "first-page", "textstory"]
# page_000 .. page_003 of every synthetic book become these names, in this (reading) order.
NAMES = ["page_3", "page-5", "Page 10", "PAGE_12"]
LABELS = ["cover", "first-page", "story", "story"]
NESTED, UNLABELLED = "series/book_005", "series/book_004"
STRAY = {"README.txt", "scan.png", "book_000/Thumbs.db", "book_000/notes.md", f"{NESTED}/cover.pdf"}
WITHOUT_TWINS = "book_003"  # the one book whose export has no text-free twins
ORPHAN_TWIN = "book_001/page_7.textfree.png"  # a twin whose page is not there: an unused file
SIDECARS = {"pss_labels.json", "ground_truth.json"}


def own_corpus(root: Path) -> Path:
    """The issue's own-data corpus under root/own (see the module docstring); returns its folder."""
    src, own = root / "synthetic", root / "own"
    synth.generate(src, books=6, pages=4, seed=0, bbox_format="xyxy")
    labels: dict[str, str] = {}
    for b in range(6):
        book = {4: UNLABELLED, 5: NESTED}.get(b, f"book_{b:03d}")
        (own / book).mkdir(parents=True)
        for p, name in enumerate(NAMES):
            image = next((src / f"book_{b:03d}").glob(f"page_{p:03d}.[jp][pn]g"))
            suffix = ".png" if b in (1, 2) or image.suffix == ".png" else ".jpg"
            for source, target in ((image, name), (image.with_name(text_free_name(image.name)), f"{name}.textfree")):
                if target == name or book != WITHOUT_TWINS:
                    with Image.open(source) as img:
                        page = {1: img.convert("L"), 2: img.convert("RGBA")}.get(b, img.convert("RGB"))
                        page.save(own / book / f"{target}{suffix}")
            shutil.copy(image.with_suffix(".json"), own / book / f"{name}.json")
            label = "textstory" if (b, p) == (2, 3) else LABELS[p]
            if book != UNLABELLED:  # nobody labelled this book
                key = f"{book}/{name}{suffix}" if b == 3 else f"{book}/{name}"  # CoSMo may key by file name
                labels[key] = label
    (own / "pss_labels.json").write_text(json.dumps(labels, indent=1), encoding="utf-8")
    shutil.copy(src / "ground_truth.json", own / "ground_truth.json")
    for stray in STRAY:
        (own / stray).write_bytes(b"not a page")
    shutil.copy(own / "book_000" / "page-5.jpg", own / "scan.png")  # a page image outside any book
    shutil.copy(own / "book_001" / "page_3.textfree.png", own / ORPHAN_TWIN)
    (own / "book_001" / ".DS_Store").write_bytes(b"hidden")  # hidden files are not looked at
    return own


@pytest.fixture(scope="module")
def own(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return own_corpus(tmp_path_factory.mktemp("own"))


def files_on_disk(root: Path) -> set[str]:
    """Every non-hidden file under root, relative, except the corpus's own label and truth files."""
    found = set()
    for folder, subfolders, names in os.walk(root):
        subfolders[:] = [d for d in subfolders if not d.startswith(".")]
        found |= {(Path(folder) / n).relative_to(root).as_posix() for n in names if not n.startswith(".")}
    return found - SIDECARS


def page_files(root: Path, book_id: str, page_name: str) -> set[str]:
    """The image, JSON and text-free twin files of one page (same stem, same book folder)."""
    folder = root / book_id
    stems = {page_name, f"{page_name}.textfree"}
    return {f"{book_id}/{p.name}" for p in folder.iterdir() if p.is_file() and p.stem in stems}


# --- a mistyped data_root --------------------------------------------------------------------------------------


def fake_project(tmp_path: Path) -> Path:
    """A folder project_root recognises (pyproject.toml and notebooks/), so outputs/corpus/ lies inside tmp_path."""
    project = tmp_path / "project"
    (project / "notebooks").mkdir(parents=True)
    (project / "pyproject.toml").write_text("")
    return project


def test_mistyped_data_root_is_an_error_naming_near_matches(own: Path) -> None:
    """The default synthesize='auto' draws nothing into the user's tree: the error names the folder and own/."""
    typo = own.parent / "onw"
    with pytest.raises(FileNotFoundError) as err:
        prepare_data_root(typo)
    message = str(err.value)
    assert str(typo) in message and str(own) in message and "synthesize='always'" in message
    assert not typo.exists()
    with pytest.raises(FileNotFoundError, match="Did you mean"):
        prepare_data_root(own.parent / "onw" / "book_000", "never")  # the near match keeps the rest of the path
    assert prepare_data_root(own) is None  # an existing folder is read as it is


def test_synthesis_only_under_outputs_corpus_or_when_asked(tmp_path: Path) -> None:
    project = fake_project(tmp_path)
    home = project / "outputs" / "corpus"
    drawn = prepare_data_root(home / "demo", books=1, pages=2, project=project)
    assert drawn["books"] == 1 and (home / "demo" / "pss_labels.json").is_file()
    with pytest.raises(FileNotFoundError):
        prepare_data_root(project / "outputs" / "mine", books=1, pages=2, project=project)
    with pytest.raises(FileNotFoundError):
        prepare_data_root(home / "other", "never", books=1, pages=2, project=project)
    assert prepare_data_root(tmp_path / "anywhere", "always", books=1, pages=2, project=project)["pages"] == 2
    assert not (project / "outputs" / "mine").exists() and not (home / "other").exists()
    with pytest.raises(ValueError, match="synthesize"):
        prepare_data_root(tmp_path / "x", "yes")


def test_an_embedded_corpus_of_an_older_generator_is_drawn_again(tmp_path: Path) -> None:
    project = fake_project(tmp_path)
    demo = project / "outputs" / "corpus" / "demo"
    prepare_data_root(demo, books=1, pages=2, project=project)
    sidecar = demo / "ground_truth.json"
    truth = json.loads(sidecar.read_text())
    twins = sorted(demo.rglob(f"*.{TEXT_FREE}.*"))
    assert twins
    for twin in twins:  # as an older generator left it: no twins, sidecar version 1
        twin.unlink()
    sidecar.write_text(json.dumps({**truth, "version": 1}))
    with pytest.warns(UserWarning, match="older generator"):
        assert prepare_data_root(demo, books=1, pages=2, project=project)["books"] == 1
    assert sorted(demo.rglob(f"*.{TEXT_FREE}.*")) == twins
    assert prepare_data_root(demo, books=1, pages=2, project=project) is None  # current: read as it is
    mine = tmp_path / "mine"  # outside the embedded home an old sidecar is the user's business
    prepare_data_root(mine, "always", books=1, pages=2, project=project)
    (mine / "ground_truth.json").write_text(json.dumps({**truth, "version": 1}))
    assert prepare_data_root(mine, project=project) is None


def test_notebook_01_refuses_a_mistyped_data_root(own: Path, tmp_path: Path) -> None:
    """Notebook 01 with its defaults and a typo in data_root fails naming it, and writes nothing there."""
    typo = own.parent / "own_corpsu"
    run = subprocess.run(
        [
            sys.executable,
            "-m",
            "papermill",
            str(ROOT / "notebooks" / "01_data_inspection.ipynb"),
            str(tmp_path / "out.ipynb"),
            "-p",
            "data_root",
            str(typo),
            "-p",
            "run_dir",
            str(tmp_path / "run"),
        ],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=300,
    )
    assert run.returncode != 0, "notebook 01 succeeded on a data_root that does not exist"
    assert "FileNotFoundError" in run.stderr + run.stdout and str(typo) in run.stderr + run.stdout
    assert not typo.exists()


# --- nested books and files the reader does not use -------------------------------------------------------------


def test_nested_book_is_read_with_its_relative_path_as_id(own: Path) -> None:
    corpus = load_corpus(own, narrative_labels=COSMO_NARRATIVE, bbox_format="xyxy")
    nested = corpus.pages[corpus.pages.book_id == NESTED]
    assert nested.page_name.tolist() == NAMES[1:]
    assert nested.page_id.tolist() == [f"{NESTED}/{name}" for name in NAMES[1:]]
    assert nested.image_path.str.startswith(f"{NESTED}/").all()
    # Grayscale and RGBA pages are read (converted, with a row), PNG and JPEG alike.
    assert set(corpus.pages.book_id) == {"book_000", "book_001", "book_002", "book_003", NESTED}
    converted = corpus.problems[corpus.problems.problem == "image_mode"]
    assert set(converted.book_id) == {"book_001", "book_002"} and set(converted.action) == {"converted"}


def test_every_file_on_disk_is_read_or_has_a_row(own: Path) -> None:
    """Files on disk == files of pages read, of pages left out by label, and files or pages named in problems rows."""
    corpus = load_corpus(own, narrative_labels=COSMO_NARRATIVE, bbox_format="xyxy")
    read = {f for row in corpus.pages.itertuples() for f in page_files(own, row.book_id, row.page_name)}
    kept = {n.lower() for n in COSMO_NARRATIVE}
    by_label = {
        f for (b, p), label in corpus.labels.items() if label.lower() not in kept for f in page_files(own, b, p)
    }
    named = set(corpus.problems.file.dropna())
    skipped = corpus.problems[corpus.problems.action == "skipped_page"]
    pages_skipped = {f for r in skipped.itertuples() for f in page_files(own, r.book_id, r.page_name)}
    on_disk = files_on_disk(own)
    assert on_disk - (read | by_label | named | pages_skipped) == set()
    unused = corpus.problems[corpus.problems.problem == "unused_file"]
    assert set(unused.file) == STRAY | {ORPHAN_TWIN} and set(unused.action) == {"noted"}
    assert read.isdisjoint(set(unused.file))
    twins = {f for f in on_disk if ".textfree." in f} - {ORPHAN_TWIN}
    assert twins and twins <= read | by_label | pages_skipped  # each twin counts as a file of its page


def test_twins_are_read_as_the_pages_text_free_path(own: Path) -> None:
    corpus = load_corpus(own, narrative_labels=COSMO_NARRATIVE, bbox_format="xyxy")
    pages = corpus.pages
    with_twin = pages[pages.book_id != WITHOUT_TWINS]
    assert with_twin.text_free_path.tolist() == [text_free_name(path) for path in with_twin.image_path]
    assert (pages[pages.book_id == WITHOUT_TWINS].text_free_path == "").all()
    assert set(corpus.problems.problem) & {"text_free_unusable", "duplicate_image"} == set()


def test_unlabelled_nested_book_gets_a_row_per_page(own: Path) -> None:
    corpus = load_corpus(own, narrative_labels=COSMO_NARRATIVE, bbox_format="xyxy")
    rows = corpus.problems[corpus.problems.book_id == UNLABELLED]
    assert sorted(rows.page_name) == sorted(NAMES) and set(rows.problem) == {"page_without_label"}
    assert set(rows.action) == {"skipped_page"}
    read = load_corpus(own, narrative_labels=COSMO_NARRATIVE, bbox_format="xyxy", unlabelled="narrative").pages
    assert (read.book_id == UNLABELLED).sum() == len(NAMES)


# --- which labels count as narrative ----------------------------------------------------------------------------


def test_label_report_lists_every_label_and_whether_it_is_kept(own: Path) -> None:
    default = load_corpus(own, bbox_format="xyxy")
    report = default.label_report().set_index("pss label")
    assert set(report.index) == {"cover", "first-page", "story", "textstory"}
    assert report.loc["story", "kept"] and not report.loc[["cover", "first-page", "textstory"], "kept"].any()
    assert report.pages.to_dict() == {"story": 9, "cover": 5, "first-page": 5, "textstory": 1}
    cosmo = load_corpus(own, narrative_labels=COSMO_NARRATIVE, bbox_format="xyxy")
    assert cosmo.label_report().set_index("pss label").kept.to_dict() == {
        "cover": False,
        "first-page": True,
        "story": True,
        "textstory": True,
    }
    assert len(cosmo.pages) == 15 and len(default.pages) == 9
    assert set(cosmo.pages.label) == {"first-page", "story", "textstory"}


def test_docs_say_what_narrative_labels_cosmo_output_needs() -> None:
    docs = (ROOT / "docs" / "corpus.md").read_text(encoding="utf-8")
    assert '["story", "first-page", "textstory"]' in docs


# --- page order -------------------------------------------------------------------------------------------------


def test_pages_in_natural_order_ignoring_case_and_separators(own: Path) -> None:
    pages = load_corpus(own, narrative_labels=["cover", *COSMO_NARRATIVE], bbox_format="xyxy").pages
    for book, names in pages.groupby("book_id", sort=False).page_name:
        assert names.tolist() == NAMES, book
    assert pages.book_id.drop_duplicates().tolist() == ["book_000", "book_001", "book_002", "book_003", NESTED]


def test_page_order_matches_the_books_own_order(own: Path) -> None:
    """The names sort into the synthetic book's page order, so each page's boxes are its own page's boxes."""
    truth = json.loads((own / "ground_truth.json").read_text(encoding="utf-8"))
    pages = load_corpus(own, narrative_labels=["cover", *COSMO_NARRATIVE], bbox_format="xyxy").pages
    for book, group in pages.groupby("book_id", sort=False):
        original = f"book_{book[-3:]}"
        expected = [len(page["panels"]) for page in truth["books"][original]["pages"].values()]
        assert group.num_panels.tolist() == expected, book
    assert isinstance(pages, pd.DataFrame)
