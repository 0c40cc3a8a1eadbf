"""Nothing of a finished run is replaced silently, and every error a user can cause names its fix.

Fast checks of the mechanisms: a run's checkpoints are continued only with resume and replaced only with overwrite
(which removes the best checkpoint too), a missing checkpoint names what makes it, and the store writer's lock file
is removed at a clean finish but never from under a shard that holds it. End-to-end uses are in test_training,
test_seed_cli, test_embeddings and test_search.
"""

from __future__ import annotations

import fcntl
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from comicnb.checkpoint import CheckpointExistsError, StageCheckpoints
from comicnb.stage3 import checkpoints
from comicnb.store.writer import lock_path, remove_lock, store_lock


def finished_run(run: Path) -> StageCheckpoints:
    """A run folder whose Stage 3 left both checkpoint files (their content does not matter here)."""
    files = checkpoints(run)
    files.folder.mkdir(parents=True)
    files.last.write_bytes(b"last of an earlier run")
    files.best.write_bytes(b"best of an earlier run")
    (files.folder / "notes.txt").write_text("mine")
    return files


def test_a_finished_run_is_neither_continued_nor_replaced_unless_asked(tmp_path: Path) -> None:
    files = finished_run(tmp_path / "run")
    with pytest.raises(CheckpointExistsError, match="--resume") as refused:
        files.prepare()
    assert isinstance(refused.value, FileExistsError)
    message = str(refused.value)
    assert str(files.folder) in message and "--overwrite" in message and "overwrite=True" in message
    assert files.last.read_bytes() == b"last of an earlier run" and files.best.is_file()  # untouched
    assert files.prepare(resume=True) is True and files.best.is_file()  # continued: both kept
    with pytest.raises(ValueError, match="exclude each other"):
        files.prepare(resume=True, overwrite=True)


def test_overwrite_removes_the_last_and_the_best_checkpoint_and_nothing_else(tmp_path: Path) -> None:
    files = finished_run(tmp_path / "run")
    (files.folder / "checkpoint.pt.partial").write_bytes(b"cut short")
    assert files.prepare(overwrite=True) is False
    assert not files.last.exists() and not files.best.exists() and not (files.folder / "checkpoint.pt.partial").exists()
    assert (files.folder / "notes.txt").read_text() == "mine"
    assert files.prepare() is False and files.prepare(overwrite=True) is False  # nothing left: a fresh start


def test_a_stale_best_without_a_last_checkpoint_is_not_kept_by_resume(tmp_path: Path) -> None:
    files = finished_run(tmp_path / "run")
    files.last.unlink()  # only best_model.pt of an earlier run remains: a new run must not inherit it
    with pytest.raises(CheckpointExistsError, match="no checkpoint.pt to resume from"):
        files.prepare(resume=True)
    with pytest.raises(CheckpointExistsError, match="best_model.pt"):
        files.prepare()
    files.prepare(overwrite=True)
    assert not files.best.exists()


def test_the_notebook_helper_names_its_parameter(tmp_path: Path) -> None:
    from comicnb.stage3.trainer import ensure_fresh_checkpoints

    files = finished_run(tmp_path / "run")
    with pytest.raises(CheckpointExistsError, match=r"set overwrite=True"):
        ensure_fresh_checkpoints(files, overwrite=False)
    assert files.last.is_file() and files.best.is_file()
    ensure_fresh_checkpoints(files, overwrite=True)
    assert not files.last.exists() and not files.best.exists()
    ensure_fresh_checkpoints(checkpoints(tmp_path / "new"), overwrite=False)  # a run without checkpoints: no-op


def test_a_missing_checkpoint_names_the_notebook_and_the_command(tmp_path: Path) -> None:
    run = tmp_path / "run"
    for which in ("best", "last"):
        with pytest.raises(FileNotFoundError) as missing:
            checkpoints(run).pick(which)
        assert str(missing.value) == (
            f"no Stage 3 checkpoint in {run / 'stage3'}/: run notebook 02 or `comicnb train stage3 --run-dir {run}`"
        )


def test_the_lock_file_goes_at_a_clean_finish(tmp_path: Path) -> None:
    store = tmp_path / "panel_embeddings.zarr"
    with store_lock(store):
        assert lock_path(store).is_file()
    remove_lock(store)
    assert not lock_path(store).exists()
    remove_lock(store)  # nothing to remove: fine


HOLDER = textwrap.dedent(
    """
    import sys
    from pathlib import Path
    from comicnb.store.writer import store_lock
    with store_lock(Path(sys.argv[1])):
        print("held", flush=True)
        sys.stdin.readline()
    """
)


def test_the_lock_file_stays_while_another_shard_holds_it(tmp_path: Path) -> None:
    store = tmp_path / "panel_embeddings.zarr"
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLDER, str(store)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    )
    try:
        assert holder.stdout.readline().strip() == "held"
        remove_lock(store)  # another process holds it: left in place
        assert lock_path(store).is_file()
    finally:
        holder.communicate("\n", timeout=60)
    assert holder.returncode == 0
    remove_lock(store)
    assert not lock_path(store).exists()


def test_a_shard_waiting_on_a_removed_lock_file_locks_the_new_one(tmp_path: Path) -> None:
    """Removing the lock file under the lock is safe: whoever waited on the old file takes the lock on the new one."""
    store = tmp_path / "panel_embeddings.zarr"
    with store_lock(store):
        stale = open(lock_path(store))  # a shard that opened the file before it was removed
        os.unlink(lock_path(store))
    with stale, store_lock(store):  # takes the lock on a new file, not on the removed one
        assert lock_path(store).is_file()
        assert os.fstat(stale.fileno()).st_ino != os.stat(lock_path(store)).st_ino
        fcntl.flock(stale, fcntl.LOCK_EX | fcntl.LOCK_NB)  # the old file is free: nobody relies on it
