"""Finding the processes of a running executor, to inject faults into them."""

from __future__ import annotations

from typing import Any

import psutil


def pool_pids(ex: Any) -> list[int]:
    return [m["pid"] for m in ex.connected_managers]


def worker_pids(pool_pid: int) -> list[int]:
    return [p.pid for p in psutil.Process(pool_pid).children() if "htex.worker" in " ".join(p.cmdline())]


def interchange_pid(ex: Any) -> int:
    pid: int = ex._interchange.pid
    return pid


def handed(ex: Any) -> int:
    """Tasks the pools have handed to their workers (so they may have started)."""
    return sum(m["handed"] for m in ex.connected_managers)
