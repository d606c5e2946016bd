"""Blocks with LocalProvider: scale out under load, in when idle, replace ended jobs, give up on broken ones."""

from __future__ import annotations

import os
import signal
import time
from typing import Any

import psutil
import pytest

from htex import JobState, LocalProvider, ManagerLost, ScaleOutFailed

import tasks
from support import wait_for

pytestmark = pytest.mark.timeout(90)


def _live_blocks(ex: Any) -> list[str]:
    return [b for b, st in ex.status().items() if not st.terminal]


def test_burst_scales_out_to_max_then_idle_scales_in_to_min(make_executor: Any) -> None:
    ex = make_executor(max_workers=1, max_idletime=1.0,
                       provider=LocalProvider(init_blocks=0, min_blocks=0, max_blocks=3))
    assert ex.blocks == {}
    futs = [ex.submit(tasks.pool_id_after, {}, 1.5) for _ in range(6)]
    wait_for(lambda: len(ex.connected_managers) == 3, timeout=20, what="three blocks")
    assert len({f.result(timeout=30) for f in futs}) == 3  # the work was spread over all three
    assert len(ex.blocks) == 3  # never more than max_blocks
    wait_for(lambda: not _live_blocks(ex), timeout=20, what="idle blocks to be scaled in")
    jobs = [int(j) for j in ex.blocks.values()]
    assert not [j for j in jobs if psutil.pid_exists(j)]  # gone from the "queue": no process left
    assert {st.state for st in ex.status().values()} == {JobState.CANCELLED}
    assert ex.submit(tasks.add, {}, 1).result(timeout=30) == 1  # more work scales out again


def test_min_blocks_are_kept(make_executor: Any) -> None:
    ex = make_executor(max_workers=1, max_idletime=0.5,
                       provider=LocalProvider(init_blocks=2, min_blocks=1, max_blocks=2))
    ex.submit(tasks.noop, {}).result(timeout=30)
    wait_for(lambda: len(_live_blocks(ex)) == 1, timeout=20, what="scale in to min_blocks")
    time.sleep(2)  # not synchronisation: a window in which a wrong strategy would scale in further
    assert len(_live_blocks(ex)) == 1


def test_a_job_ended_from_outside_is_noticed_and_replaced(make_executor: Any) -> None:
    # address=: pools connect over TCP, whose end the interchange does not see (the network may be
    # between): the provider's status tells.  (Over UNIX: test_manager_lost.py.)
    ex = make_executor(max_workers=1, heartbeat_period=5, heartbeat_threshold=30, address="127.0.0.1",
                       provider=LocalProvider(init_blocks=1, min_blocks=1, max_blocks=1))
    fut = ex.submit(tasks.sleep_then, {}, 60)
    wait_for(lambda: sum(m["tasks"] for m in ex.connected_managers) == 1, what="the task to start")
    (job,) = ex.blocks.values()
    t0 = time.monotonic()
    os.killpg(int(job), signal.SIGKILL)  # as `scancel` would
    with pytest.raises(ManagerLost, match="ended"):
        fut.result(timeout=20)
    assert time.monotonic() - t0 < 10  # from the provider's status, long before heartbeat_threshold (30 s)
    assert ex.submit(tasks.add, {}, 2, 3).result(timeout=30) == 5  # a new block took its place
    assert len(ex.blocks) == 2


def test_blocks_that_keep_failing_put_the_executor_in_the_bad_state(make_executor: Any) -> None:
    ex = make_executor(provider=LocalProvider(init_blocks=1, max_blocks=1,
                                              worker_init="echo 'module load: no such env' >&2; exit 3"))
    fut = ex.submit(tasks.noop, {})
    with pytest.raises(ScaleOutFailed, match="no such env") as info:
        fut.result(timeout=30)
    assert "3 blocks in a row" in str(info.value) and "exited with code 3" in str(info.value)
    assert ex.bad_state_is_set
