"""The kernel on local sockets for papermill, without the TCP warning: ``kernel_config`` (what ``comicnb run`` passes
to papermill) and ``QuietEngine``, papermill's own engine with that config, registered in pyproject.toml so that
papermill's command line takes it: ``papermill IN.ipynb OUT.ipynb --engine comicnb``.

papermill loads its engines' entry points while it imports itself, so papermill is imported here only when the engine
is first asked for (a module ``__getattr__``): by then ``papermill.engines.NBClientEngine`` exists, whichever of
papermill and this module was imported first.
"""

from __future__ import annotations

import functools
import os
import tempfile
from pathlib import Path
from typing import Any

from traitlets.config import Config


def kernel_config(sockets: str) -> Config:
    """The kernel talks to papermill over Unix sockets in the folder ``sockets`` rather than over TCP: nothing listens
    on a port, and ipykernel has no reason to print "Kernel is running over TCP without encryption" into every run's
    stderr. On Windows (no IPC transport), or where a socket's path would pass the 107-byte limit of its address, the
    kernel keeps TCP.
    """
    prefix = str(Path(sockets, "kernel"))
    if os.name != "posix" or len(f"{prefix}-99".encode()) > 100:
        return Config()
    return Config({"KernelManager": {"transport": "ipc", "ip": prefix}})


def __getattr__(name: str) -> Any:
    """``QuietEngine``, built on first use (see the module)."""
    if name == "QuietEngine":
        return quiet_engine()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


@functools.cache
def quiet_engine() -> type:
    """papermill's engine (nbclient) with the kernel on Unix sockets in a temporary folder (``kernel_config``)."""
    from papermill.engines import NBClientEngine

    class QuietEngine(NBClientEngine):
        @classmethod
        def execute_managed_notebook(cls, nb_man: Any, kernel_name: str, **kwargs: Any) -> Any:
            with tempfile.TemporaryDirectory(prefix="comicnb-kernel-") as sockets:
                kwargs.setdefault("config", kernel_config(sockets))
                return super().execute_managed_notebook(nb_man, kernel_name, **kwargs)

    return QuietEngine
