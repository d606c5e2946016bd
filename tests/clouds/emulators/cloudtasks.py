"""Functions the cloud tests run on workers; the boot script's worker_init puts tests/clouds on PYTHONPATH."""

from __future__ import annotations

import os
import socket
import time


def host() -> str:
    """The machine the task ran on (the hypervisor names each instance's host ip-198-18-0-N)."""
    return socket.gethostname()


def host_when_open(gate: str, marker: str, timeout: float = 90.0) -> str:
    """Say the task started (``marker``), wait until ``gate`` exists (at most ``timeout`` s), return the host."""
    with open(marker, "w") as f:
        f.write(socket.gethostname())
    deadline = time.monotonic() + timeout
    while not os.path.exists(gate) and time.monotonic() < deadline:
        time.sleep(0.05)
    return socket.gethostname()
