"""COMICS cloze folds: the reader (real rows of both folds, bad rows), book folds across files, the seen-books filter,
and a tiny fit + eval through the command line."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from comicnb.cli import main
from comicnb.comics.evaluate import evaluate
from comicnb.comics.folds import book_fold, fold_sizes, in_folds, split_seen, validation_books
from comicnb.comics.reader import (
    ANSWER_NOT_INTEGER,
    ANSWER_OUT_OF_RANGE,
    BLANK,
    CHAR_COHERENCE,
    EMPTY_CANDIDATE,
    TEXT_CLOZE,
    WRONG_FIELDS,
    ComicsFormatError,
    read_comics,
)
from comicnb.comics.scorer import MANIFEST, MODEL_FILE, select_training
from comicnb.comics.study import COMICS_FILES, missing_files, subset_books
from comicnb.metrics import expected_hits
from comicnb.store.schema import file_sha256

FOLDS = Path(__file__).parents[1] / ".." / "shared" / "data" / "comics-folds"
REAL = COMICS_FILES  # the shared folds, read by the reader tests where they exist
IDS = ["book_id", "page_id", "answer_panel_id", "context_panel_0_id", "context_panel_1_id", "context_panel_2_id"]
CONTEXT = [f"context_text_{p}_{b}" for p in range(3) for b in range(3)]
CLOZE_HEADER = IDS + CONTEXT + [f"answer_candidate_{k}_text" for k in range(3)] + ["correct_answer"]
COHERENCE_HEADER = (
    IDS + CONTEXT + [f"answer_candidate_{k}_box_{b}" for k in range(2) for b in range(2)] + ["correct_answer"]
)
WORDS = "gun moat bridge spirit money ferry reds hills drown walk commissioner gang treasure cave ship river".split()


def write_csv(path: Path, header: list[str], rows: list[list]) -> Path:
    """A CSV as the csv module writes it (quoted where a field needs it)."""
    with open(path, "w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(header)
        writer.writerows(rows)
    return path


def cloze_row(book: int, page: int, answer: int = 1, rng: np.random.Generator | None = None) -> list:
    """A well-formed text-cloze row with a few words per box (some boxes empty)."""
    rng = rng or np.random.default_rng(book * 100 + page)

    def text() -> str:
        return " ".join(rng.choice(WORDS, size=int(rng.integers(2, 6))))

    context = [text() if b == 0 or rng.random() < 0.4 else "" for _ in range(3) for b in range(3)]
    return [book, page, 4, 1, 2, 3, *context, text(), text(), text(), answer]


def coherence_row(book: int, page: int, answer: int = 0) -> list:
    """A well-formed character-coherence row: the two orders of two boxes."""
    first, second = f"book {book} page {page} first , box", f"then second {page}"
    context = [f"panel {p} of {book}" if b == 0 else "" for p in range(3) for b in range(3)]
    return [book, page, 4, 1, 2, 3, *context, first, second, second, first, answer]


def real_rows(name: str, count: int, tmp_path: Path) -> Path:
    """The header and the first rows of a shared COMICS fold, copied to a temporary CSV."""
    source = FOLDS / name
    if not source.is_file():
        pytest.skip(f"the shared COMICS folds are not at {FOLDS} (a checkout without ../shared/data)")
    with open(source, newline="", encoding="utf-8") as handle:
        reader = csv.reader(handle)
        rows = [next(reader) for _ in range(count + 1)]
    return write_csv(tmp_path / name, rows[0], rows[1:])


# ------------------------------------------------------------------------------------------------------ reader


def test_reader_real_text_cloze_rows(tmp_path: Path) -> None:
    table = read_comics(real_rows(REAL[TEXT_CLOZE], 6, tmp_path))
    assert table.task == TEXT_CLOZE and table.n_candidates == 3 and table.chance == pytest.approx(1 / 3)
    assert len(table) == table.report.rows == 6 and not table.report.skipped
    first = table.samples[0]
    assert first.book_id == "2946" and first.key == "2946_4_4" and first.line == 2
    moat = "UNK house there , beyond moat climb on back , we cross ,,, no bridge"
    assert first.context == (("UNK , arent you ?",), (moat,), ("hey i can walk ,",))
    assert first.candidates[1] == ("you too short to walk you drown deep here !",) and first.answer == 1
    assert all(len(c) == 1 and c[0] for s in table.samples for c in s.candidates)
    assert all(box for s in table.samples for panel in s.context for box in panel)  # empty boxes dropped


def test_reader_real_char_coherence_rows(tmp_path: Path) -> None:
    table = read_comics(real_rows(REAL[CHAR_COHERENCE], 6, tmp_path), task=CHAR_COHERENCE)
    assert table.task == CHAR_COHERENCE and table.n_candidates == 2 and len(table) == 6
    for sample in table.samples:
        assert len(sample.candidates) == 2 and all(len(c) == 2 for c in sample.candidates)
        assert sample.candidates[1] == sample.candidates[0][::-1]  # the two orders of the answer panel's boxes
        assert sample.answer in (0, 1)
    first = table.samples[0]
    assert first.candidates[first.answer] == ("whew ! you weigh a ton !", "you save me you strong feller '")
    assert first.context[1] == ("say !",)


def test_reader_counts_bad_rows(tmp_path: Path) -> None:
    good = cloze_row(1, 1)
    quoted = cloze_row(1, 2)
    quoted[6] = 'a box, with "quotes", and commas'
    rows = [
        good,  # line 2
        good[:-2] + [good[-1]],  # line 3: a field short
        good + ["extra"],  # line 4: a field too many
        good[:15] + ["", "b", "c", 0],  # line 5: empty candidate
        good[:-1] + ["one"],  # line 6: answer not an integer
        good[:-1] + [3],  # line 7: answer out of range
        good[:-1] + [-1],  # line 8: answer out of range
        quoted,  # line 9
    ]
    path = write_csv(tmp_path / "bad.csv", CLOZE_HEADER, rows)
    with open(path, "a", encoding="utf-8") as handle:
        handle.write("\n")  # line 10: blank
        handle.write(",".join(map(str, cloze_row(2, 1))) + "\n")  # line 11: fine
    table = read_comics(path)
    report = table.report
    assert report.rows == 10 and report.kept == len(table) == 3
    assert dict(report.skipped) == {
        WRONG_FIELDS: 2,
        EMPTY_CANDIDATE: 1,
        ANSWER_NOT_INTEGER: 1,
        ANSWER_OUT_OF_RANGE: 2,
        BLANK: 1,
    }
    assert report.examples[WRONG_FIELDS] == [3, 4] and report.examples[ANSWER_OUT_OF_RANGE] == [7, 8]
    assert [s.line for s in table.samples] == [2, 9, 11]
    assert table.samples[1].context[0][0] == 'a box, with "quotes", and commas'
    lines = report.lines()
    assert any(line.startswith("2 rows skipped: wrong number of fields (line 3, 4)") for line in lines)


def test_reader_refuses_other_files(tmp_path: Path) -> None:
    cloze = write_csv(tmp_path / "cloze.csv", CLOZE_HEADER, [cloze_row(1, 1)])
    with pytest.raises(ComicsFormatError, match="text_cloze fold .* not char_coherence"):
        read_comics(cloze, task=CHAR_COHERENCE)
    other = write_csv(tmp_path / "other.csv", ["a", "b"], [[1, 2]])
    with pytest.raises(ComicsFormatError, match="not a COMICS cloze fold"):
        read_comics(other)
    (tmp_path / "empty.csv").write_text("", encoding="utf-8")
    with pytest.raises(ComicsFormatError, match="empty"):
        read_comics(tmp_path / "empty.csv")
    with pytest.raises(FileNotFoundError):
        read_comics(tmp_path / "missing.csv")


# ------------------------------------------------------------------------------------------------------- folds


def test_book_folds_stable_and_disjoint_across_files(tmp_path: Path) -> None:
    assert [book_fold(b) for b in ("2946", "1", "2", "3")] == [0, 4, 3, 4]  # pinned: a book keeps its fold
    books = range(1, 31)
    cloze = read_comics(write_csv(tmp_path / "c.csv", CLOZE_HEADER, [cloze_row(b, p) for b in books for p in (1, 2)]))
    coherence = read_comics(
        write_csv(tmp_path / "h.csv", COHERENCE_HEADER, [coherence_row(b, 3) for b in books if b % 3])
    )
    for held in range(5):
        test_books = {s.book_id for t in (cloze, coherence) for s in in_folds(t.samples, [held])}
        train_books = {s.book_id for t in (cloze, coherence) for s in in_folds(t.samples, set(range(5)) - {held})}
        assert test_books and not test_books & train_books
    for s in cloze.samples + coherence.samples:
        assert book_fold(s.book_id) == book_fold(int(s.book_id))
    assert sum(f["rows"] for f in fold_sizes(cloze.samples)) == len(cloze)
    # training rows selected for held-out fold 0 never include a fold-0 book, in either file
    chosen = select_training(cloze.samples, hold_out=[0])
    assert chosen and not {s.book_id for s in chosen} & {s.book_id for s in in_folds(coherence.samples, [0])}
    with pytest.raises(ValueError, match="not among"):
        in_folds(cloze.samples, [5])


def test_split_seen_and_validation_books(tmp_path: Path) -> None:
    table = read_comics(
        write_csv(tmp_path / "c.csv", CLOZE_HEADER, [cloze_row(b, p) for b in (1, 2, 3) for p in (1, 2)])
    )
    split = split_seen(table.samples, {"1", "3", "99"})
    assert len(split.seen) == 4 and split.seen_books == ["1", "3"] and split.unseen_books == ["2"]
    assert "4 rows of 2 books left out" in split.summary()
    assert split_seen(table.samples, set()).summary().startswith("no rows left out")
    held = validation_books([str(b) for b in range(20)], share=0.1, seed=0)
    assert len(held) == 2 and held == validation_books([str(b) for b in range(20)], share=0.1, seed=0)
    assert len(validation_books(["a", "b"], share=0.9)) == 1  # never every book


def test_expected_hits_score_ties_as_chance() -> None:
    scores = np.array([[0.1, 0.9, 0.2], [0.5, 0.5, 0.5], [0.7, 0.7, 0.1], [0.3, 0.2, 0.1]])
    hits = expected_hits(scores, np.array([1, 2, 0, 2]))
    assert hits.tolist() == pytest.approx([1.0, 1 / 3, 0.5, 0.0])


# --------------------------------------------------------------------------------------------- fit and eval


TINY = ["--text-model", "tiny", "--epochs", "1", "--d-model", "16", "--num-layers", "1", "--batch-size", "8"]


def test_fit_eval_end_to_end(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    train_books, other_books = (1, 2, 3, 4, 5), (6, 7)
    train_csv = write_csv(
        tmp_path / "train.csv", CLOZE_HEADER, [cloze_row(b, p, answer=p % 3) for b in train_books for p in range(6)]
    )
    rows = [cloze_row(b, p, answer=p % 3) for b in train_books + other_books for p in range(2, 6)]
    eval_csv = write_csv(tmp_path / "eval.csv", CLOZE_HEADER, rows + [cloze_row(6, 9)[:-1] + [7]])  # one bad row
    out = tmp_path / "model"

    assert main(["comics", "fit", "--csv", str(train_csv), "--task", "text_cloze", "--out", str(out), *TINY]) == 0
    assert (out / MODEL_FILE).is_file()
    manifest = json.loads((out / MANIFEST).read_text())
    assert manifest["task"] == "text_cloze" and manifest["stage4_task"] == "text_cloze"
    assert manifest["trained_books"] == ["1", "2", "3", "4", "5"]
    assert set(manifest["validation_books"]) < set(manifest["trained_books"])
    assert manifest["csv"]["sha256"] == file_sha256(train_csv) and manifest["csv"]["read"]["rows"] == 30
    assert manifest["rows"]["training"] + manifest["rows"]["validation"] == 30
    assert main(["comics", "fit", "--csv", str(train_csv), "--out", str(out), *TINY]) == 2  # refuses to overwrite
    assert "already holds" in capsys.readouterr().err

    report = tmp_path / "eval.json"
    assert main(["comics", "eval", "--csv", str(eval_csv), "--model", str(out), "--report", str(report)]) == 0
    printed = capsys.readouterr().out
    assert "20 rows of 5 books left out" in printed and "CONTAMINATED" not in printed
    assert (
        "1 bad (skipped)" in printed
        and "answer out of range" in printed
        and "chance" in printed
        and "zero-shot" in printed
    )
    result = json.loads(report.read_text())
    assert result["scored"] == 8 and result["left_out"] == 20 and not result["contaminated"]
    assert result["bad_rows"] == {"answer out of range": 1}
    assert {s["name"] for s in result["scores"]} == {"trained (text only)", "zero-shot tiny"}
    assert all(0 <= s["low"] <= s["accuracy"] <= s["high"] <= 1 and s["n"] == 8 for s in result["scores"])

    assert main(["comics", "eval", "--csv", str(eval_csv), "--model", str(out), "--include-seen"]) == 0
    assert "CONTAMINATED: --include-seen scores 20 rows of 5 books" in capsys.readouterr().out

    assert main(["comics", "eval", "--csv", str(train_csv), "--model", str(out)]) == 1  # every book seen
    assert "nothing to score" in capsys.readouterr().err

    coherence = write_csv(tmp_path / "h.csv", COHERENCE_HEADER, [coherence_row(9, 1)])
    assert main(["comics", "eval", "--csv", str(coherence), "--model", str(out)]) == 2
    assert "not text_cloze" in capsys.readouterr().err
    assert main(["comics", "eval", "--csv", str(eval_csv), "--model", str(tmp_path / "none")]) == 2

    # A run that uses a subset of whole books (notebook 05's comics_max_rows) accounts for every row of the file.
    table = read_comics(eval_csv)
    subset = evaluate(out, table.subset([s for s in table.samples if s.book_id in ("1", "6")]))
    assert (subset.rows, subset.outside_subset, subset.scored, subset.left_out) == (29, 20, 4, 4)
    assert subset.rows == sum(subset.bad_rows.values()) + subset.outside_subset + subset.scored + subset.left_out
    assert "29 rows in the file: 1 bad (skipped), 20 outside this run's subset of whole books, 4 scored" in (
        "\n".join(subset.lines())
    )


def test_fit_holds_out_folds_and_baseline(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    books = range(1, 13)
    path = write_csv(tmp_path / "h.csv", COHERENCE_HEADER, [coherence_row(b, p, p % 2) for b in books for p in (1, 2)])
    out = tmp_path / "model"
    assert main(["comics", "fit", "--csv", str(path), "--out", str(out), "--hold-out", "0", *TINY]) == 0
    manifest = json.loads((out / MANIFEST).read_text())
    assert manifest["task"] == "char_coherence" and manifest["selection"]["hold_out"] == [0]
    assert manifest["trained_books"] == sorted({str(b) for b in books if book_fold(b) != 0}, key=int)
    capsys.readouterr()
    assert main(["comics", "eval", "--csv", str(path), "--model", str(out), "--no-baseline"]) == 0
    held = [b for b in books if book_fold(b) == 0]
    assert f"({2 * len(held)} rows of {len(held)} books)" in capsys.readouterr().out
    assert main(["comics", "baseline", "--csv", str(path), "--text-model", "tiny", "--fold", "0"]) == 0
    printed = capsys.readouterr().out
    assert f"({2 * len(held)} rows of {len(held)} books" in printed and "published" in printed


class FakeEncoder:
    """Stands in for the sentence encoder: a fixed vector per text, counting what it is asked to encode."""

    def __init__(self) -> None:
        self.asked: list[str] = []

    def get_embedding_dimension(self) -> int:
        return 4

    def encode(self, texts: list[str], **_: object) -> np.ndarray:
        self.asked.extend(texts)
        return np.array([[len(t), 1.0, 0.0, 0.0] for t in texts], dtype=np.float32) / 10


def test_text_vectors_cache_round_trip(tmp_path: Path) -> None:
    import hashlib

    from comicnb.comics.embed import TextVectors

    zero_ended = next(t for t in (f"box {i}" for i in range(5000)) if hashlib.sha1(t.encode()).digest()[-1] == 0)
    texts = ["a moat", zero_ended, "", "a moat"]
    first = TextVectors(None, tmp_path / "cache.npz")
    first._model = FakeEncoder()
    vectors = first(texts)
    assert first._model.asked == ["a moat", zero_ended] and not vectors[2].any()
    first.save()
    second = TextVectors(None, tmp_path / "cache.npz")
    second._model = FakeEncoder()
    assert np.allclose(second(texts), vectors, atol=1e-3) and second._model.asked == []  # every text from the cache
    with pytest.raises(ValueError, match="holds vectors of"):
        TextVectors("tiny", tmp_path / "cache.npz")


def test_candidate_vectors_and_prior_settings() -> None:
    from comicnb.comics.embed import candidate_text, candidate_vector_text
    from comicnb.comics.settings import FitSettings

    pair = ("first box", "second box")
    assert candidate_vector_text(pair, "first_box") == "first box"
    assert candidate_vector_text(pair, "joined") == candidate_text(pair) == "first box / second box"
    assert candidate_vector_text(("only",), "first_box") == "only"
    with pytest.raises(ValueError, match="pair_vectors"):
        candidate_vector_text(pair, "both")
    assert "input_prior" not in FitSettings().model_config(384, "text_cloze")  # Stage 4's default
    assert FitSettings().model_config(384, "char_coherence")["input_prior"] is False
    assert FitSettings(input_prior=True).model_config(384, "char_coherence")["input_prior"] is True


def test_box_tokens_give_every_text_box_its_own_token(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    """``context_tokens="box"`` (speech per balloon): panel p's box b at p * B + b (B the most boxes of a panel), its
    own text's vector; the places after a panel's boxes are zeros and masked; a fit saves the setting and eval
    reads the context the same way."""
    from comicnb.comics.embed import TextVectors, sample_vectors
    from comicnb.comics.heads import make_batch

    rows = [cloze_row(1, p, answer=p % 3) for p in range(4)]
    table = read_comics(write_csv(tmp_path / "t.csv", CLOZE_HEADER, rows))
    vectors = TextVectors(None)
    vectors._model = FakeEncoder()
    by_panel, _ = sample_vectors(table.samples, vectors, tokens="panel")
    by_box, candidates = sample_vectors(table.samples, vectors, tokens="box")
    width = max(len(p) for s in table.samples for p in s.context)
    assert by_panel.shape[1] == 3 and by_box.shape[1] == 3 * width and candidates.shape[1] == 3
    for n, sample in enumerate(table.samples):
        for p, boxes in enumerate(sample.context):
            for b in range(width):
                expected = vectors([boxes[b]])[0] if b < len(boxes) else np.zeros(by_box.shape[-1])
                assert np.allclose(by_box[n, p * width + b], expected)
    batch = make_batch(torch.from_numpy(by_box), torch.from_numpy(candidates), torch.zeros(4, dtype=torch.long), "box")
    assert torch.equal(batch["context_mask"], torch.from_numpy(np.abs(by_box).sum(-1) > 0))
    assert make_batch(torch.from_numpy(by_panel), torch.from_numpy(candidates), torch.zeros(4), "panel")[
        "context_mask"
    ].all()
    with pytest.raises(ValueError, match="context tokens"):
        sample_vectors(table.samples, vectors, tokens="words")

    train = write_csv(
        tmp_path / "train.csv", CLOZE_HEADER, [cloze_row(b, p, p % 3) for b in range(1, 6) for p in range(6)]
    )
    held = write_csv(tmp_path / "held.csv", CLOZE_HEADER, [cloze_row(b, p, p % 3) for b in (7, 8) for p in range(6)])
    out = tmp_path / "box-model"
    args = ["comics", "fit", "--csv", str(train), "--out", str(out), "--context-tokens", "box", *TINY]
    assert main(args) == 0
    assert json.loads((out / MANIFEST).read_text())["settings"]["context_tokens"] == "box"
    assert main(["comics", "eval", "--csv", str(held), "--model", str(out), "--no-baseline"]) == 0
    assert "(12 rows of 2 books)" in capsys.readouterr().out


def test_the_study_subset_keeps_whole_books_shared_across_files(tmp_path: Path) -> None:
    books = range(1, 41)
    tables = {
        TEXT_CLOZE: read_comics(
            write_csv(tmp_path / "c.csv", CLOZE_HEADER, [cloze_row(b, p) for b in books for p in (1, 2)])
        ),
        CHAR_COHERENCE: read_comics(
            write_csv(tmp_path / "h.csv", COHERENCE_HEADER, [coherence_row(b, 3) for b in books])
        ),
    }
    assert subset_books(tables, 0) == tables
    subset = subset_books(tables, 20, seed=1)
    kept = {task: {s.book_id for s in t.samples} for task, t in subset.items()}
    assert kept[TEXT_CLOZE] == kept[CHAR_COHERENCE]  # the same books in both files
    assert 0 < len(subset[TEXT_CLOZE]) < len(tables[TEXT_CLOZE])
    for task, table in subset.items():  # whole books: every row of a kept book stays
        assert len(table) == sum(s.book_id in kept[task] for s in tables[task].samples)
    assert missing_files(tmp_path) == list(COMICS_FILES.values()) and missing_files(None) == list(COMICS_FILES.values())
