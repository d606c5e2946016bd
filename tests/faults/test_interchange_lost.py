"""The interchange dies or hangs: the executor goes to the bad state, every future fails, nothing leaks."""

from __future__ import annotations

import glob
import os
import signal
import time
from typing import Any

import psutil
import pytest

from htex import InterchangeLost

import tasks
from helpers import interchange_pid, pool_pids
from support import wait_for

pytestmark = pytest.mark.timeout(60)


def test_sigkill_of_the_interchange(make_executor: Any) -> None:
    ex = make_executor()
    running = ex.submit(tasks.sleep_then, {}, 60)
    wait_for(lambda: pool_pids(ex), what="the pool")
    t0 = time.monotonic()
    os.kill(interchange_pid(ex), signal.SIGKILL)
    with pytest.raises(InterchangeLost, match=r"died.*killed by signal 9"):
        running.result(timeout=10)
    assert time.monotonic() - t0 < 2  # noticed at once (pidfd), not after heartbeat_threshold
    assert ex.bad_state_is_set and isinstance(ex.executor_exception, InterchangeLost)
    with pytest.raises(InterchangeLost):
        ex.submit(tasks.noop, {})
    ex.shutdown()  # pools exit by themselves within heartbeat_threshold: the leak check waits


def test_a_hung_interchange_is_noticed_by_heartbeat(make_executor: Any) -> None:
    ex = make_executor()
    running = ex.submit(tasks.sleep_then, {}, 60)
    wait_for(lambda: pool_pids(ex), what="the pool")
    os.kill(interchange_pid(ex), signal.SIGSTOP)
    with pytest.raises(InterchangeLost, match="sent nothing for"):
        running.result(timeout=ex.heartbeat_threshold + 10)
    ex.shutdown()  # kills the stopped interchange


def test_a_pool_on_this_host_stops_at_once_when_the_interchange_dies(make_executor: Any) -> None:
    ex = make_executor(heartbeat_period=30, heartbeat_threshold=120)
    assert ex.submit(tasks.add, {}, 1, 2).result(timeout=30) == 3
    (pool,) = wait_for(lambda: pool_pids(ex), what="the pool")
    os.kill(interchange_pid(ex), signal.SIGKILL)
    # Its UNIX stream ends (poollink.py): no waiting for heartbeat_threshold (120 s).
    wait_for(lambda: not psutil.pid_exists(pool), timeout=30, what="the pool to stop")
    (log,) = glob.glob(os.path.join(ex.logdir, "block-0", "*", "manager.log"))
    with open(log) as f:
        assert "the interchange closed the connection: it stopped or died; stopping" in f.read()
    ex.shutdown()
