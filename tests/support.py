"""Helpers shared by the tests: polling with a deadline, and finding this session's processes."""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from typing import Any

import psutil
import pytest

HTEX_MARKERS = ("htex.interchange", "htex.process_worker_pool", "htex.worker", "process_worker_pool")


def _cmdline(p: psutil.Process) -> str:
    try:
        return " ".join(p.cmdline())
    except psutil.Error:
        return ""


# A process is this session's if it descends from us, or if its command line (or an
# ancestor's) names one of these paths: pools started by a batch scheduler are not our
# children, but their --logdir is under our temp directory. Processes of another
# session running at the same time (a benchmark, another pytest) are left alone.
SESSION_MARKS: list[str] = []


def _ours(p: psutil.Process, me: int) -> bool:
    try:
        chain = [p, *p.parents()]
    except psutil.Error:
        return False
    if any(q.pid == me for q in chain):
        return True
    return any(mark in _cmdline(q) for q in chain for mark in SESSION_MARKS)


def session_processes() -> dict[int, str]:
    me = os.getpid()
    found = {p.pid: _cmdline(p) for p in psutil.Process().children(recursive=True)}
    for p in psutil.process_iter(["pid", "cmdline"]):
        cmd = " ".join(p.info["cmdline"] or [])
        if any(m in cmd for m in HTEX_MARKERS) and _ours(p, me):
            found[p.info["pid"]] = cmd
    return found


def wait_for(predicate: Callable[[], Any], timeout: float = 10.0, interval: float = 0.02, what: str = "condition") -> Any:
    """Poll ``predicate`` until it returns something true; fail the test after ``timeout`` s."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout} s waiting for {what}")
        time.sleep(interval)




def alive(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


def read_lines(path: str) -> list[str]:
    """The lines of a file tasks append to (their side effects); none while it does not exist."""
    if not os.path.exists(path):
        return []
    with open(path) as f:
        return f.read().splitlines()
