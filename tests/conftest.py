"""Shared test fixtures: every test that starts processes is checked for leaks.

``no_leaks`` (autouse) records this process's children and every htex process
on the machine before the test, and after it polls (with a deadline) until
the new ones are gone; if any remain, the test fails and they are killed.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterator
from typing import Any

import psutil
import pytest

# Workers import the functions of tests/tasks.py by reference: let them find it.
_TESTS = os.path.dirname(os.path.abspath(__file__))
os.environ["PYTHONPATH"] = os.pathsep.join(p for p in (_TESTS, os.environ.get("PYTHONPATH")) if p)

HTEX_MARKERS = ("htex.interchange", "htex.process_worker_pool", "htex.worker", "process_worker_pool")


def _htex_processes() -> dict[int, str]:
    found = {}
    for p in psutil.process_iter(["pid", "cmdline"]):
        cmd = " ".join(p.info["cmdline"] or [])
        if any(m in cmd for m in HTEX_MARKERS):
            found[p.info["pid"]] = cmd
    return found


def _children() -> dict[int, str]:
    out = {}
    for p in psutil.Process().children(recursive=True):
        try:
            out[p.pid] = " ".join(p.cmdline())
        except psutil.Error:
            pass
    return out


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


@pytest.fixture(autouse=True)
def no_leaks() -> Iterator[None]:
    before = set(_htex_processes()) | set(_children())
    yield
    deadline = time.monotonic() + 10.0
    leaked: dict[int, str] = {}
    while time.monotonic() < deadline:
        now = {**_htex_processes(), **_children()}
        leaked = {pid: cmd for pid, cmd in now.items() if pid not in before and _alive(pid)}
        if not leaked:
            return
        time.sleep(0.05)
    for pid in leaked:
        try:
            os.kill(pid, 9)
        except OSError:
            pass
    pytest.fail(f"processes leaked by this test: {leaked}")


def _alive(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


@pytest.fixture
def run_dir(tmp_path: Any) -> str:
    return str(tmp_path / "runinfo")


@pytest.fixture
def make_executor(run_dir: str) -> Iterator[Callable[..., Any]]:
    """Build started executors with fast heartbeats; shut them all down after the test."""
    from htex import HighThroughputExecutor, LocalProvider

    made: list[Any] = []

    def make(**kw: Any) -> Any:
        kw.setdefault("provider", LocalProvider(init_blocks=1, max_blocks=1))
        kw.setdefault("heartbeat_period", 1)
        kw.setdefault("heartbeat_threshold", 4)
        kw.setdefault("max_workers", 2)
        kw.setdefault("run_dir", os.path.join(run_dir, str(len(made))))
        ex = HighThroughputExecutor(**kw)
        made.append(ex)
        ex.start()
        return ex

    yield make
    for ex in made:
        ex.shutdown(wait=False)
