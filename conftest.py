"""Notebook runs under nbval share the smoke run folder their parameters default to: start each session afresh.

Notebook 02 trains a new checkpoint every session, and notebook 03 rightly refuses to resume a store made from
another checkpoint, so the previous session's smoke run must not survive into the next.
"""

import shutil
from pathlib import Path

SMOKE_RUN = Path(__file__).resolve().parent / "outputs" / "smoke"


def pytest_collection_modifyitems(session, config, items):
    """Clear outputs/smoke when notebooks are among the collected tests."""
    if any(str(item.fspath).endswith(".ipynb") for item in items):
        shutil.rmtree(SMOKE_RUN, ignore_errors=True)
