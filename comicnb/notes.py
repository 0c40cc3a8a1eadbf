"""Findings a notebook reports as warnings (a loss that did not fall, fusion losing to its input, a leak in a task
set), shown as one line: ``Warning: <message>``, without the file, line and source of the notebook cell that raised
them, which Python's default format adds and which tell a reader nothing.

``from comicnb.notes import warn; warn("...")``: a ``Finding`` (a UserWarning), so filters and ``pytest.warns`` treat
it as any other; only its display changes.
"""

from __future__ import annotations

import warnings


class Finding(UserWarning):
    """A finding a notebook reports."""


_DEFAULT_FORMAT = warnings.formatwarning


def format_finding(message: Warning | str, category: type[Warning], filename: str, lineno: int, line=None) -> str:
    """``warnings.formatwarning`` that writes a Finding as one line and anything else as Python does."""
    if issubclass(category, Finding):
        return f"Warning: {message}\n"
    return _DEFAULT_FORMAT(message, category, filename, lineno, line)


def warn(message: str) -> None:
    """Report a finding (see the module)."""
    warnings.formatwarning = format_finding
    warnings.warn(message, Finding, stacklevel=2)
