"""A pool dies or hangs: running tasks fail with ManagerLost, prefetched tasks run elsewhere."""

from __future__ import annotations

import collections
import concurrent.futures
import os
import signal
from typing import Any

import psutil
import pytest

from htex import LocalProvider, ManagerLost

import tasks
from helpers import handed, pool_pids
from support import wait_for

pytestmark = pytest.mark.timeout(60)


def test_sigkill_of_the_pool(make_executor: Any) -> None:
    ex = make_executor(max_workers=1)
    fut = ex.submit(tasks.sleep_then, {}, 60)
    (pool,) = wait_for(lambda: pool_pids(ex), what="the pool")
    manager = ex.connected_managers[0]
    wait_for(lambda: handed(ex) == 1, what="the task to reach a worker")
    os.kill(pool, signal.SIGKILL)
    with pytest.raises(ManagerLost) as info:
        fut.result(timeout=ex.heartbeat_threshold + 10)
    msg = str(info.value)
    assert manager["manager"] in msg and manager["hostname"] in msg and "block 0" in msg
    # Noticed either through the block's job ending (LocalProvider's status) or the heartbeat.
    assert "heartbeat_threshold" in msg or "ended" in msg


def test_prefetched_tasks_of_a_lost_pool_run_elsewhere(make_executor: Any) -> None:
    ex = make_executor(max_workers=1, prefetch_capacity=4, provider=LocalProvider(init_blocks=2, max_blocks=2))
    wait_for(lambda: len(ex.connected_managers) == 2, what="two pools")
    futs = [ex.submit(tasks.pool_id_after, {}, 1.0) for _ in range(10)]  # 5 per pool: 1 running, 4 prefetched
    wait_for(lambda: ex.stats()["dispatched"] == 10, what="dispatch")
    wait_for(lambda: all(m["handed"] >= 1 for m in ex.connected_managers), what="a task on each worker")
    victim = ex.connected_managers[0]
    os.kill(victim["pid"], signal.SIGKILL)
    _done, not_done = concurrent.futures.wait(futs, timeout=ex.heartbeat_threshold + 30)
    assert not not_done
    outcomes = collections.Counter(
        "lost" if isinstance(f.exception(), ManagerLost) else ("victim" if f.result() == victim["manager"] else "other")
        for f in futs
    )
    # Only the task the victim's worker was running is lost (it may have finished one before the kill).
    assert outcomes["lost"] == 1, outcomes
    assert outcomes["other"] >= 4, outcomes
    assert outcomes["lost"] + outcomes["victim"] + outcomes["other"] == 10


def test_a_stopped_pool_is_declared_lost_and_told_to_go_when_it_wakes(make_executor: Any) -> None:
    ex = make_executor(max_workers=1)
    fut = ex.submit(tasks.sleep_then, {}, 60)
    (pool,) = wait_for(lambda: pool_pids(ex), what="the pool")
    wait_for(lambda: handed(ex) == 1, what="the task to reach a worker")
    os.kill(pool, signal.SIGSTOP)
    try:
        with pytest.raises(ManagerLost):
            fut.result(timeout=ex.heartbeat_threshold + 10)
    finally:
        os.kill(pool, signal.SIGCONT)
    # Awake again, it is refused and exits by itself (the leak check would catch it otherwise).
    wait_for(lambda: not psutil.pid_exists(pool) or psutil.Process(pool).status() == psutil.STATUS_ZOMBIE,
             timeout=ex.heartbeat_period * 3 + 5, what="the stale pool to exit")
