"""A worker process dies under a task: the task fails with WorkerLost, the pool carries on.  A worker that
hangs holds only its own tasks."""

from __future__ import annotations

import hashlib
import os
import signal
from typing import Any

import psutil
import pytest

from htex import WorkerLost

import tasks
from helpers import pool_pids, worker_pids
from support import wait_for

pytestmark = pytest.mark.timeout(60)


def test_os_exit_in_a_task(make_executor: Any) -> None:
    ex = make_executor(max_workers=1)
    with pytest.raises(WorkerLost, match=r"exited with code 3") as info:
        ex.submit(tasks.hard_exit, {}, 3).result(timeout=20)
    err = info.value
    assert err.rank == 0 and err.exit_code == 3 and err.host
    assert err.pool == ex.connected_managers[0]["manager"]
    assert "worker 0" in str(err) and err.pool in str(err)
    # the pool started a new worker: the next task runs
    assert ex.submit(tasks.add, {}, 1, 2).result(timeout=20) == 3


def test_sigkill_of_a_busy_worker(make_executor: Any, tmp_path: Any) -> None:
    ex = make_executor(max_workers=1)
    marker = tmp_path / "started"
    fut = ex.submit(tasks.mark_then_sleep, {}, str(marker), 30)
    pool = wait_for(lambda: pool_pids(ex), what="the pool")[0]
    (worker,) = wait_for(lambda: worker_pids(pool), what="the worker")
    wait_for(marker.exists, what="the task to start")
    os.kill(worker, signal.SIGKILL)
    with pytest.raises(WorkerLost, match=r"killed by signal 9 \(SIGKILL\)"):
        fut.result(timeout=20)
    assert ex.submit(tasks.add, {}, 2, 2).result(timeout=20) == 4
    assert worker not in worker_pids(pool)


def test_garbage_from_a_worker_gets_it_replaced(make_executor: Any) -> None:
    """The pool cannot find its place again in a corrupt stream: it kills the worker, and carries on."""
    ex = make_executor(max_workers=1)
    with pytest.raises(WorkerLost, match=r"killed by signal 9"):
        ex.submit(tasks.scribble_on_pool_link, {}).result(timeout=20)
    assert ex.submit(tasks.add, {}, 2, 3).result(timeout=20) == 5


def test_lost_tasks_are_retried_when_asked(make_executor: Any, tmp_path: Any) -> None:
    ex = make_executor(max_workers=1, lost_task_retries=1)
    assert ex.submit(tasks.exit_once, {}, str(tmp_path / "m")).result(timeout=30) == "second try"


def test_a_task_s_own_exception_is_never_retried(make_executor: Any, tmp_path: Any) -> None:
    ex = make_executor(max_workers=1, lost_task_retries=3)
    path = tmp_path / "count"
    with pytest.raises(ValueError, match="own error"):
        ex.submit(tasks.count_and_fail, {}, str(path)).result(timeout=30)
    assert path.read_text() == "x"


def test_retries_run_out(make_executor: Any, tmp_path: Any) -> None:
    ex = make_executor(max_workers=1, lost_task_retries=2)
    with pytest.raises(WorkerLost):
        ex.submit(tasks.hard_exit, {}, 9).result(timeout=30)
    assert ex.submit(tasks.add, {}, 1).result(timeout=20) == 1


def test_a_stopped_worker_holds_only_its_own_tasks(make_executor: Any) -> None:
    """The pool never blocks on one worker's link: a batch bigger than the socket buffer, for a worker that is
    stopped (SIGSTOP), waits for it while the other worker goes on; it arrives once the worker resumes."""
    ex = make_executor(shared_memory=False, max_workers=2)
    assert [f.result(timeout=30) for f in [ex.submit(tasks.echo, {}, i) for i in range(4)]] == list(range(4))
    [pool] = pool_pids(ex)
    frozen = worker_pids(pool)[0]
    os.kill(frozen, signal.SIGSTOP)
    try:
        wait_for(lambda: psutil.Process(frozen).status() == psutil.STATUS_STOPPED, what="the worker to stop")
        datas = [os.urandom((1 << 20) + i) for i in range(8)]  # each one far more than a socketpair holds
        futs = [ex.submit(tasks.digest, {}, d) for d in datas]
        wait_for(lambda: sum(f.done() for f in futs) >= 4, timeout=30, what="the other worker's tasks")
        assert [m["pid"] for m in ex.connected_managers] == [pool]  # the pool kept its heartbeats
    finally:
        os.kill(frozen, signal.SIGCONT)
    assert [f.result(timeout=30) for f in futs] == [hashlib.sha256(d).hexdigest() for d in datas]
