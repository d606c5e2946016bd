"""Large arguments through shared memory, end to end with real processes (see src/htex/shm.py)."""

from __future__ import annotations

import hashlib
import os
import signal
from typing import Any

import pytest

from htex import LocalProvider, ManagerLost, shm

import tasks
from support import wait_for

pytestmark = [pytest.mark.timeout(90), pytest.mark.skipif(not shm.supported(), reason="needs Linux memfd")]

MB = 1024 * 1024


def _sha(data: bytes, extra: bytes = b"") -> str:
    return hashlib.sha256(data + extra).hexdigest()


def _memfds() -> int:
    n = 0
    for fd in os.listdir("/proc/self/fd"):
        try:
            n += "htex-args" in os.readlink(f"/proc/self/fd/{fd}")
        except OSError:
            pass
    return n


def test_large_arguments_arrive_whole_through_shared_memory(make_executor: Any) -> None:
    ex = make_executor()
    assert ex.shared_memory is True  # LocalProvider: every pool is on this host
    datas = [os.urandom(MB + i) for i in range(8)]
    futs = [ex.submit(tasks.digest, {}, d, extra=d[:100_000], tag=str(i)) for i, d in enumerate(datas)]
    assert [f.result(timeout=60) for f in futs] == [str(i) + _sha(d, d[:100_000]) for i, d in enumerate(datas)]
    # it went through the arena, and every lease ended
    assert ex._inflight.arena.in_use >= 1 and not any(t.lease for t in ex._inflight._tasks.values())
    assert ex.submit(tasks.add, {}, 1, 2).result(timeout=30) == 3  # small ones stay in-band
    ex.shutdown()
    assert _memfds() == 0


def test_more_than_the_arena_holds_streams_through_it(make_executor: Any) -> None:
    """The arena is 64 MB; 150 MB of arguments wait for room (or go in-band) and all arrive."""
    ex = make_executor()
    data = os.urandom(MB)
    futs = [ex.submit(tasks.digest, {}, data, extra=b"%d" % i) for i in range(150)]
    assert [f.result(timeout=80) for f in futs] == [_sha(data, b"%d" % i) for i in range(150)]
    assert sum(s.size for s in ex._inflight.arena._segments) <= shm.LIMIT_BYTES


def test_in_band_when_turned_off(make_executor: Any) -> None:
    ex = make_executor(shared_memory=False)
    data = os.urandom(2 * MB)
    assert ex.submit(tasks.digest, {}, data).result(timeout=60) == _sha(data)
    assert ex._inflight.arena is None and _memfds() == 0


def test_a_lost_task_is_sent_again_from_shared_memory(make_executor: Any) -> None:
    """The retry reuses the same region (its lease lives until the task ends); the result is right."""
    ex = make_executor(max_workers=1, lost_task_retries=1, provider=LocalProvider(init_blocks=1, max_blocks=1))
    data = os.urandom(2 * MB)
    marker = os.path.join(ex.run_dir, "killed-once")
    fut = ex.submit(tasks.exit_once_then_digest, {}, marker, data)
    assert fut.result(timeout=60) == _sha(data)
    assert os.path.exists(marker)


def test_a_killed_pool_fails_its_tasks_and_the_next_ones_still_arrive_whole(make_executor: Any) -> None:
    ex = make_executor(max_workers=1)
    (pool,) = wait_for(lambda: [m["pid"] for m in ex.connected_managers], what="the pool")
    doomed = ex.submit(tasks.sleep_then, {}, 60, os.urandom(MB))
    wait_for(lambda: sum(m["tasks"] for m in ex.connected_managers) == 1, what="the task to reach a worker")
    os.kill(pool, signal.SIGKILL)
    with pytest.raises(ManagerLost):
        doomed.result(timeout=ex.heartbeat_threshold + 10)
    # The block is replaced; new payloads go to another segment than the lost one.
    data = os.urandom(MB)
    assert ex.submit(tasks.digest, {}, data).result(timeout=60) == _sha(data)


def test_an_idle_executor_gives_its_shared_memory_back(make_executor: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(shm, "IDLE_SECONDS", 0.5)
    ex = make_executor()
    data = os.urandom(MB)
    assert ex.submit(tasks.digest, {}, data).result(timeout=60) == _sha(data)
    assert _memfds() >= 1
    wait_for(lambda: _memfds() == 0, timeout=15, what="idle segments to be closed")
    assert ex.submit(tasks.digest, {}, data).result(timeout=60) == _sha(data)  # and a new one opens on demand
