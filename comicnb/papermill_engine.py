"""The kernel on local sockets for papermill, without the TCP warning: ``kernel_config`` (what ``comicnb run`` passes
to papermill) and ``QuietEngine``, papermill's own engine with that config, registered in pyproject.toml so that
papermill's command line takes it: ``papermill IN.ipynb OUT.ipynb --engine comicnb``.

papermill loads its engines' entry points while it imports itself, so this module imports only what is defined by
then (``papermill.engines.NBClientEngine``) and nothing of comicnb that imports papermill.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any

from papermill.engines import NBClientEngine
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


class QuietEngine(NBClientEngine):
    """papermill's engine (nbclient) with the kernel on Unix sockets in a temporary folder (``kernel_config``)."""

    @classmethod
    def execute_managed_notebook(cls, nb_man: Any, kernel_name: str, **kwargs: Any) -> Any:
        with tempfile.TemporaryDirectory(prefix="comicnb-kernel-") as sockets:
            kwargs.setdefault("config", kernel_config(sockets))
            return super().execute_managed_notebook(nb_man, kernel_name, **kwargs)
