"""Shared test fixtures: every test that starts processes is checked for leaks.

``no_leaks`` (autouse) records this session's processes before the test (our
descendants, and htex processes whose command line names this session's temp
directory: pools a batch scheduler started), and after it polls (with a
deadline) until the new ones are gone; if any remain, the test fails and they
are killed.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from support import SESSION_MARKS, alive, session_processes

# Workers import the functions of tests/tasks.py by reference: let them find it.
_TESTS = os.path.dirname(os.path.abspath(__file__))
os.environ["PYTHONPATH"] = os.pathsep.join(p for p in (_TESTS, os.environ.get("PYTHONPATH")) if p)


@pytest.fixture(scope="session", autouse=True)
def _session_marks(tmp_path_factory: pytest.TempPathFactory) -> None:
    SESSION_MARKS.append(str(tmp_path_factory.getbasetemp()))


@pytest.fixture(autouse=True)
def no_leaks() -> Iterator[None]:
    before = set(session_processes())
    yield
    deadline = time.monotonic() + 10.0
    leaked: dict[int, str] = {}
    while time.monotonic() < deadline:
        leaked = {pid: cmd for pid, cmd in session_processes().items() if pid not in before and alive(pid)}
        if not leaked:
            return
        time.sleep(0.05)
    for pid in leaked:
        try:
            os.kill(pid, 9)
        except OSError:
            pass
    pytest.fail(f"processes leaked by this test: {leaked}")


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
