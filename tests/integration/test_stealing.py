"""Work stealing (stealing.py): tasks a busy pool has queued move to an idle pool, and each runs once.

Real executor, real interchange, two real pools (two LocalProvider blocks of
one worker each).  A task that holds its worker until the test opens a gate
keeps one pool busy for as long as the test needs, so nothing depends on
timing: the tasks queued behind it can only finish while the gate is shut if
they moved to the other pool.
"""

from __future__ import annotations

import os
import signal
from collections import Counter
from typing import Any

import pytest

from htex import LocalProvider, ManagerLost

import tasks
from support import read_lines, wait_for

pytestmark = pytest.mark.timeout(90)



def _holding(ex: Any) -> dict[str, int]:
    return {m["manager"]: m["tasks"] for m in ex.connected_managers}


def _hold_one_pool(ex: Any, log: str, gate: str, label: str = "blocker") -> tuple[Any, str]:
    """Start the gate task; return its future and the manager running it."""
    blocker = ex.submit(tasks.record_then_wait_for, {}, log, label, gate)
    wait_for(lambda: label in read_lines(log), timeout=30, what="the blocking task to start")
    (busy,) = wait_for(lambda: [m for m, n in _holding(ex).items() if n == 1], timeout=30,
                       what="the interchange to count it")
    return blocker, busy


def test_tasks_queued_behind_a_long_task_move_to_the_idle_pool_and_run_once(make_executor: Any, tmp_path: Any) -> None:
    ex = make_executor(max_workers=1, prefetch_capacity=8,
                       provider=LocalProvider(init_blocks=2, min_blocks=2, max_blocks=2))
    wait_for(lambda: len(ex.connected_managers) == 2, timeout=30, what="two pools")
    log, gate = str(tmp_path / "ran"), str(tmp_path / "gate")
    blocker, busy = _hold_one_pool(ex, log, gate)
    # The busy pool has room for 8 more: the fair share puts some of these in its queue, behind the blocker.
    futs = [ex.submit(tasks.record_then, {}, log, i, 0) for i in range(12)]
    pools = [f.result(timeout=30) for f in futs]  # all done while the busy pool's only worker is held
    assert busy not in pools, "a task ran on the pool whose worker is held: impossible"
    assert not blocker.done()
    with open(gate, "w"):
        pass
    blocker.result(timeout=30)
    assert Counter(read_lines(log)) == Counter(["blocker", *map(str, range(12))])  # each ran exactly once
    stats = ex.stats()
    assert (stats["done"], stats["lost"]) == (13, 0)  # one result each
    assert stats["dispatched"] > 13  # some went to the busy pool first: a stolen task is dispatched twice


def test_a_pool_that_dies_holding_prefetched_tasks_fails_exactly_those(make_executor: Any, tmp_path: Any) -> None:
    """Its queued tasks never ran, but a pool we cannot hear may have started them: all fail with ManagerLost,
    none runs elsewhere (lost_task_retries=0), and the other pool's tasks are untouched."""
    ex = make_executor(max_workers=1, prefetch_capacity=4,
                       provider=LocalProvider(init_blocks=1, min_blocks=1, max_blocks=1))
    log, gate = str(tmp_path / "ran"), str(tmp_path / "gate")
    blocker, busy = _hold_one_pool(ex, log, gate)
    queued = [ex.submit(tasks.record_then, {}, log, i, 0) for i in range(4)]
    wait_for(lambda: _holding(ex).get(busy) == 5, timeout=30, what="the pool to hold its 4 prefetched tasks")
    (job,) = ex.blocks.values()
    os.killpg(int(job), signal.SIGKILL)  # the whole block: manager and worker, as a node failure would
    for fut in [blocker, *queued]:
        with pytest.raises(ManagerLost):
            fut.result(timeout=30)
    assert read_lines(log) == ["blocker"]  # the prefetched ones never ran
    assert ex.stats()["lost"] == 5


def test_a_pool_lost_while_asked_for_its_tasks_fails_them_once_and_stealing_goes_on(
        make_executor: Any, tmp_path: Any) -> None:
    """The victim never answers the Withdraw (stopped, then killed): the tasks it held fail with ManagerLost
    exactly once and never run; the steal in flight is forgotten with the pool, and stealing goes on."""
    ex = make_executor(max_workers=1, prefetch_capacity=8,
                       provider=LocalProvider(init_blocks=2, min_blocks=2, max_blocks=2))
    wait_for(lambda: len(ex.connected_managers) == 2, timeout=30, what="two pools")
    log, gate = str(tmp_path / "ran"), str(tmp_path / "gate")
    blocker, busy = _hold_one_pool(ex, log, gate)
    (info,) = [m for m in ex.connected_managers if m["manager"] == busy]
    os.kill(info["pid"], signal.SIGSTOP)  # it hears nothing now: what it is sent waits in its socket
    futs = [ex.submit(tasks.record_then, {}, log, i, 0) for i in range(12)]
    wait_for(lambda: sum(f.done() for f in futs) + _holding(ex).get(busy, 0) >= 13, timeout=30,
             what="the idle pool to run its share while the stopped one holds the rest")
    job = next(j for b, j in ex.blocks.items() if b == info["block_id"])
    os.killpg(int(job), signal.SIGKILL)
    outcomes = []
    for f in [blocker, *futs]:
        try:
            outcomes.append(f.result(timeout=30) != busy)
        except ManagerLost:
            outcomes.append(False)
    ran = Counter(read_lines(log))
    assert all(n == 1 for n in ran.values())  # nothing ran twice
    lost = outcomes.count(False)
    assert lost >= 2 and ex.stats()["lost"] == lost  # the blocker and what the stopped pool held
    assert len(ran) == 1 + outcomes.count(True)  # only the blocker ran of what the stopped pool held
    # Stealing was not left waiting for an answer that will never come: queued tasks still move.
    blocker2, busy2 = _hold_one_pool(ex, log, gate + "2", "blocker2")
    more = [ex.submit(tasks.record_then, {}, log, 100 + i, 0) for i in range(12)]
    assert busy2 not in [f.result(timeout=30) for f in more]
    with open(gate + "2", "w"):
        pass
    blocker2.result(timeout=30)
