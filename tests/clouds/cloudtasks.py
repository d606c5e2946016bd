"""Functions the cloud tests run on instances (worker_init puts this directory on their PYTHONPATH)."""

from __future__ import annotations

import os
import socket
import time


def hostname() -> str:
    return socket.gethostname()


def hang_first_time(marker: str, seconds: float) -> str:
    """The first run marks ``marker`` and hangs (the test then kills its instance); a retry returns at once."""
    if os.path.exists(marker):
        return socket.gethostname()
    with open(marker, "w"):
        pass
    time.sleep(seconds)
    return socket.gethostname()


def nap(seconds: float) -> str:
    time.sleep(seconds)
    return socket.gethostname()
