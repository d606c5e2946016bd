"""A task the cloud scenarios hold until they open a gate (the rest are in tests/clouds/cloudtasks.py).

Workers import it as ``emulators.gated``: the boot script's worker_init puts tests/clouds on PYTHONPATH.
"""

from __future__ import annotations

import os
import socket
import time


def host_when_open(gate: str, marker: str, timeout: float = 90.0) -> str:
    """Say the task started (``marker``), wait until ``gate`` exists (at most ``timeout`` s), return the host."""
    with open(marker, "w") as f:
        f.write(socket.gethostname())
    deadline = time.monotonic() + timeout
    while not os.path.exists(gate) and time.monotonic() < deadline:
        time.sleep(0.05)
    return socket.gethostname()
