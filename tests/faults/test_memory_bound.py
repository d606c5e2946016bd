"""Many more tasks than the in-flight window: no process's memory grows with the number of tasks."""

from __future__ import annotations

from typing import Any

import psutil
import pytest

import tasks
from helpers import interchange_pid, pool_pids

pytestmark = pytest.mark.timeout(120)


def _rss_mb(pid: int) -> float:
    return psutil.Process(pid).memory_info().rss / 2**20


def test_memory_stays_flat_past_the_window(make_executor: Any) -> None:
    ex = make_executor(max_outstanding=2000, prefetch_capacity=200)
    ex.submit(tasks.noop, {}).result(timeout=30)
    watched = {"interchange": interchange_pid(ex), "pool": pool_pids(ex)[0]}
    payload = b"x" * 1000  # 1 kB per task: 100,000 tasks would be 100 MB if anything kept them

    def run(n: int) -> None:
        window: list[Any] = []
        for _ in range(n):
            window.append(ex.submit(tasks.nbytes, {}, payload))
            if len(window) >= 5000:  # the caller drops its futures as they finish, as a long stream would
                assert all(f.result(timeout=60) == 1000 for f in window)
                window.clear()
        assert all(f.result(timeout=60) == 1000 for f in window)

    run(20_000)  # warm up: allocator pools, caches
    before = {name: _rss_mb(pid) for name, pid in watched.items()}
    client_before = _rss_mb(psutil.Process().pid)
    run(100_000)
    after = {name: _rss_mb(pid) for name, pid in watched.items()}
    for name in watched:
        assert after[name] - before[name] < 20, (name, before[name], after[name])
    assert _rss_mb(psutil.Process().pid) - client_before < 30
    assert ex.outstanding == 0
