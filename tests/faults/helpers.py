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


def held(ex: Any) -> int:
    """Tasks the interchange has sent to pools and has no result for: they fail if their pool is lost."""
    return sum(m["tasks"] for m in ex.connected_managers)
