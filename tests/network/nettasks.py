"""Functions the network tests run on workers (importable there: conftest.py puts this folder on PYTHONPATH)."""

from __future__ import annotations

import collections
import os
import time


def record(path: str, index: int, seconds: float = 0.0) -> int:
    """Append "index pool-id" to ``path`` (one line, one O_APPEND write: whole lines from any number of
    workers), then sleep."""
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, f"{index} {os.environ.get('PARSL_WORKER_POOL_ID', '?')}\n".encode())
    finally:
        os.close(fd)
    if seconds:
        time.sleep(seconds)
    return index


def starts(path: str) -> list[tuple[int, str]]:
    """Every start of a task, in order: (task index, pool id).  Read on the test's side."""
    try:
        with open(path) as f:
            return [(int(i), pool) for i, pool in (line.split() for line in f if line.strip())]
    except FileNotFoundError:
        return []


def runs(path: str) -> collections.Counter[int]:
    """How many times each task index started."""
    return collections.Counter(i for i, _ in starts(path))
