"""Panel labels for the neighbour-agreement figures: ground truth where it fits the corpus, else the book."""

import json
import shutil
from pathlib import Path

import pytest

from comicnb.corpus import load_corpus, synth
from comicnb.corpus.truth import panel_labels
from comicnb.store import store_metadata


@pytest.fixture(scope="module")
def corpus_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("labels") / "data"
    synth.generate(root, books=3, pages=4, seed=0)
    return root


def metadata_of(root: Path):
    import pandas as pd

    return pd.DataFrame(store_metadata(load_corpus(root).pages, max_panels=12))


def test_the_sidecar_gives_character_and_scene(corpus_root: Path) -> None:
    metadata = metadata_of(corpus_root)
    labels = panel_labels(metadata, corpus_root)
    assert list(labels.columns) == ["book_id", "character", "scene"]
    assert len(labels) == metadata.num_panels.sum() and labels.scene.notna().all()


def test_a_sidecar_that_does_not_fit_the_corpus_falls_back_to_the_book(corpus_root: Path, tmp_path: Path) -> None:
    renamed = tmp_path / "renamed"
    shutil.copytree(corpus_root, renamed)
    for image in (renamed / "book_000").glob("page_001.*"):  # the user renamed a page after drawing the corpus
        image.rename(image.with_name(image.name.replace("page_001", "Page 1")))  # its text-free twin too
    labels_file = renamed / "pss_labels.json"
    labels = json.loads(labels_file.read_text())
    labels["book_000"]["Page 1"] = labels["book_000"].pop("page_001")
    labels_file.write_text(json.dumps(labels))
    metadata = metadata_of(renamed)
    with pytest.warns(UserWarning, match="does not describe this corpus"):
        fallback = panel_labels(metadata, renamed)
    assert list(fallback.columns) == ["book_id"] and len(fallback) == metadata.num_panels.sum()
