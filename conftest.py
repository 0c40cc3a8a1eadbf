"""Notebook runs under nbval share the smoke run folder their parameters default to: a full run starts afresh.

Notebook 02 trains a new checkpoint every session, and notebook 03 rightly refuses to resume a store made from
another checkpoint, so the previous session's smoke run must not survive into the next.
"""

import shutil
from pathlib import Path

SMOKE_RUN = Path(__file__).resolve().parent / "outputs" / "smoke"


def pytest_collection_modifyitems(session, config, items):
    """Clear outputs/smoke when notebook 01, which starts the chain, is collected; a later notebook run on its own
    reuses the smoke run the last full session left."""
    if any(Path(str(item.fspath)).name.startswith("01_") for item in items):
        shutil.rmtree(SMOKE_RUN, ignore_errors=True)
