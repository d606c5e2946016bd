"""Cancel (issue 15, point 2) end to end: real interchange, pool and worker processes.

A worker is held busy by a task that waits for a gate file, so the tasks
submitted meanwhile wait where the test wants them: in the interchange's
queue (no prefetch) or in the pool's prefetch queue.  Whether a task ran is
read from a side-effect file each task appends its label to, once the queue
has drained (a last task, submitted after, has run).  Nothing sleeps to
synchronise: the test waits for states it can observe.
"""

from __future__ import annotations

import threading
from concurrent.futures import CancelledError, Future, wait
from typing import Any

import psutil
import pytest

from htex import TaskCancelled

import tasks
from support import alive, read_lines, wait_for

pytestmark = pytest.mark.timeout(120)



def held(ex: Any) -> int:
    """Tasks the interchange has sent to pools and has no result for."""
    return sum(m["tasks"] for m in ex.connected_managers)


def worker_pids(ex: Any) -> list[int]:
    (pool,) = [m["pid"] for m in ex.connected_managers]
    return [p.pid for p in psutil.Process(pool).children() if "htex.worker" in " ".join(p.cmdline())]


class Busy:
    """An executor whose workers are each held by a task until ``release()``."""

    def __init__(self, ex: Any, tmp: Any, workers: int = 1) -> None:
        self.ex = ex
        self.log = str(tmp / "started")
        self.gate = str(tmp / "gate")
        self.busy = [ex.submit(tasks.record_then_wait_for, {}, self.log, f"busy{i}", self.gate) for i in range(workers)]
        wait_for(lambda: len(read_lines(self.log)) == workers, timeout=30, what="the long tasks to start")

    def release(self) -> None:
        with open(self.gate, "w"):
            pass

    def drain(self) -> list[str]:
        """Release the workers, run one more task after everything, and return the labels that ran."""
        self.release()
        assert self.ex.submit(tasks.record, {}, self.log, "last").result(timeout=60) is None
        done, _ = wait(self.busy, timeout=60)
        assert len(done) == len(self.busy)
        return read_lines(self.log)


def test_cancel_a_task_queued_in_the_interchange(make_executor: Any, tmp_path: Any) -> None:
    b = Busy(make_executor(max_workers=1, prefetch_capacity=0), tmp_path)
    victim = b.ex.submit(tasks.record, {}, b.log, "victim")
    keep = b.ex.submit(tasks.record, {}, b.log, "keep")
    wait_for(lambda: b.ex.stats()["queued"] == 2, timeout=30, what="2 tasks queued in the interchange")
    assert victim.cancel() is True
    assert victim.cancelled() and victim.done()
    with pytest.raises(CancelledError):
        victim.result(timeout=0)
    assert victim.cancel() is True  # as the stdlib: cancelling a cancelled future says True again
    assert b.ex.stats()["queued"] == 1
    assert b.drain() == ["busy0", "keep", "last"]
    assert keep.result(timeout=0) is None
    assert b.ex.outstanding == 0


def test_cancel_a_prefetched_task(make_executor: Any, tmp_path: Any) -> None:
    b = Busy(make_executor(max_workers=1, prefetch_capacity=4), tmp_path)
    futs = [b.ex.submit(tasks.record, {}, b.log, f"t{i}") for i in range(3)]
    wait_for(lambda: held(b.ex) == 4, timeout=30, what="3 tasks prefetched by the pool")
    assert b.ex.stats()["queued"] == 0
    assert futs[1].cancel() is True
    assert futs[1].cancelled()
    assert held(b.ex) == 3  # the pool gave it back: the interchange no longer counts it there
    assert b.drain() == ["busy0", "t0", "t2", "last"]


def test_future_cancel_leaves_a_running_task_alone(make_executor: Any, tmp_path: Any) -> None:
    b = Busy(make_executor(max_workers=1), tmp_path)
    assert b.busy[0].cancel() is False  # started: the stdlib's cancel() says False, and it runs on
    assert not b.busy[0].done()
    assert b.drain() == ["busy0", "last"]
    assert b.busy[0].result(timeout=0) is None


def test_ex_cancel_kills_a_running_task_and_spares_its_neighbour(make_executor: Any, tmp_path: Any) -> None:
    ex = make_executor(max_workers=2, lost_task_retries=2)
    b = Busy(ex, tmp_path, workers=2)
    before = set(worker_pids(ex))
    assert len(before) == 2
    victim, neighbour = b.busy
    assert ex.cancel(victim) is True
    exc = victim.exception(timeout=0)
    assert isinstance(exc, TaskCancelled) and isinstance(exc, CancelledError)
    assert not victim.cancelled()  # it had started: it ends with the error, not in the CANCELLED state
    assert "killed" in str(exc)
    # Its worker is gone (no process left behind) and replaced; the neighbour runs on.
    after = wait_for(lambda: len(worker_pids(ex)) == 2 and set(worker_pids(ex)), what="a new worker")
    (killed,) = before - after
    assert not alive(killed)
    assert not neighbour.done()
    b.busy = [neighbour]
    lines = b.drain()
    assert neighbour.result(timeout=0) is None
    # Cancelled, never retried (lost_task_retries=2 would have resent a lost task).
    assert sorted(lines) == ["busy0", "busy1", "last"]
    assert ex.cancel(neighbour) is False  # finished
    assert ex.cancel(victim) is True  # cancelled already: True again, as the stdlib's cancel() says


def test_cancelling_a_finished_future_returns_false(make_executor: Any) -> None:
    ex = make_executor()
    fut = ex.submit(tasks.add, {}, 1, 2)
    assert fut.result(timeout=30) == 3
    assert fut.cancel() is False and ex.cancel(fut) is False
    assert not fut.cancelled() and fut.result(timeout=0) == 3


def test_ex_cancel_touches_only_its_own_futures(make_executor: Any, tmp_path: Any) -> None:
    """Task ids are per executor: another executor's future (or a plain one) is never taken for one of ours."""
    b = Busy(make_executor(max_workers=1), tmp_path)
    other = Future()  # type: ignore[var-annotated]
    other.set_running_or_notify_cancel()
    other.parsl_executor_task_id = b.busy[0].parsl_executor_task_id  # type: ignore[attr-defined]
    assert b.ex.cancel(other) is False
    assert not b.busy[0].done()
    other.set_result(None)
    assert b.drain() == ["busy0", "last"]


def test_cancel_in_a_done_callback_stops_a_task_still_in_the_client(make_executor: Any, tmp_path: Any) -> None:
    """The callback runs on the I/O thread: a task it submits waits in the client's Outbox until it returns."""
    ex = make_executor(max_workers=1)
    log = str(tmp_path / "started")
    seen: dict[str, Any] = {}

    def callback(_: Future[Any]) -> None:
        fut = ex.submit(tasks.record, {}, log, "from-callback")
        seen["cancelled"] = fut.cancel()
        seen["fut"] = fut

    ex.submit(tasks.noop, {}).add_done_callback(callback)
    wait_for(lambda: "fut" in seen, timeout=30, what="the callback")
    assert seen["cancelled"] is True and seen["fut"].cancelled()
    assert ex.submit(tasks.record, {}, log, "after").result(timeout=30) is None
    assert read_lines(log) == ["after"]


def test_closing_a_map_iterator_cancels_what_has_not_started(make_executor: Any, tmp_path: Any) -> None:
    ex = make_executor(max_workers=1, prefetch_capacity=0)
    log, first_gate, gate = str(tmp_path / "started"), str(tmp_path / "gate0"), str(tmp_path / "gate")
    labels = [f"m{i}" for i in range(20)]
    gates = [first_gate] + [gate] * 19
    results = ex.map(tasks.record_then_wait_for, [log] * 20, labels, gates)
    with open(first_gate, "w"):
        pass
    assert next(results) is None  # m0 ran; m1 now holds the worker, m2.. wait in the interchange
    wait_for(lambda: read_lines(log) == ["m0", "m1"], timeout=30, what="m1 to start")
    results.close()
    assert ex.stats()["queued"] == 0
    with open(gate, "w"):
        pass
    assert ex.submit(tasks.record, {}, log, "last").result(timeout=30) is None
    assert read_lines(log) == ["m0", "m1", "last"]  # m1 had started: map's close lets it finish
    wait_for(lambda: ex.outstanding == 0, timeout=30, what="m1 to finish")


def test_shutdown_cancel_futures_cancels_the_waiting_and_waits_for_the_running(make_executor: Any,
                                                                               tmp_path: Any) -> None:
    b = Busy(make_executor(max_workers=1, prefetch_capacity=1), tmp_path)
    waiting = [b.ex.submit(tasks.record, {}, b.log, f"w{i}") for i in range(5)]
    wait_for(lambda: b.ex.stats()["queued"] == 4, timeout=30, what="1 prefetched, 4 queued")
    stopper = threading.Thread(target=b.ex.shutdown, kwargs=dict(wait=True, cancel_futures=True))
    stopper.start()
    wait_for(lambda: all(f.cancelled() for f in waiting), timeout=30, what="the waiting tasks to be cancelled")
    assert not b.busy[0].done()  # shutdown waits for it
    b.release()
    stopper.join(60)
    assert not stopper.is_alive()
    assert b.busy[0].result(timeout=0) is None
    assert read_lines(b.log) == ["busy0"]
    assert not any(p for p in psutil.Process().children(recursive=True) if "htex" in " ".join(p.cmdline()))


def test_a_withdrawn_task_is_not_lost_with_its_pool(make_executor: Any, tmp_path: Any) -> None:
    """The pool that had prefetched it dies: only the task it still held is lost (ManagerLost); the cancelled
    one stays cancelled, and the interchange counts one task lost."""
    from htex import ManagerLost

    b = Busy(make_executor(max_workers=1, prefetch_capacity=1), tmp_path)
    fut = b.ex.submit(tasks.record, {}, b.log, "victim")
    wait_for(lambda: held(b.ex) == 2, timeout=30, what="the task prefetched")
    assert fut.cancel() is True
    (pool,) = [m["pid"] for m in b.ex.connected_managers]
    psutil.Process(pool).kill()
    with pytest.raises(ManagerLost):
        b.busy[0].result(timeout=60)
    assert fut.cancelled()
    assert b.ex.stats()["lost"] == 1
    assert read_lines(b.log) == ["busy0"]


def _count_endings(fut: Future[Any]) -> list[Future[Any]]:
    ended: list[Future[Any]] = []
    fut.add_done_callback(ended.append)
    return ended


@pytest.mark.parametrize("how", ["ex.cancel of the running task", "future.cancel of a prefetched task"])
def test_a_pool_lost_while_a_cancel_waits_for_it(make_executor: Any, tmp_path: Any, how: str) -> None:
    """The pool cannot answer (stopped), then dies: the cancel returns False (the task may have started, so it
    was not stopped by the cancel), the future ends once, with ManagerLost, and nothing hangs or leaks."""
    import os
    import signal

    from htex import ManagerLost

    ex = make_executor(max_workers=1, prefetch_capacity=1, heartbeat_threshold=3)
    b = Busy(ex, tmp_path)
    queued = ex.submit(tasks.record, {}, b.log, "victim")
    wait_for(lambda: held(ex) == 2, timeout=30, what="the task prefetched")
    target = b.busy[0] if how.startswith("ex.cancel") else queued
    endings = _count_endings(target)
    (pool,) = [m["pid"] for m in ex.connected_managers]
    os.kill(pool, signal.SIGSTOP)  # its answer to the interchange's Withdraw cannot come
    answer: list[bool] = []
    canceller = threading.Thread(
        target=lambda: answer.append(ex.cancel(target) if how.startswith("ex.cancel") else target.cancel()))
    canceller.start()
    try:
        # The cancel's request is on its way (the client waits for its answer); a request sent after it is
        # answered after the interchange read it, and sent the stopped pool its Withdraw.
        wait_for(lambda: ex._client._replies or answer, timeout=10, what="the cancel to be sent")
        ex.stats()
        assert not answer, "the cancel answered though the pool holding the task could not"
    finally:
        os.kill(pool, signal.SIGKILL)  # lost while the cancel waits for it
    canceller.join(timeout=30)
    assert not canceller.is_alive(), "the cancel hangs on a lost pool"
    assert answer == [False]
    with pytest.raises(ManagerLost):
        target.result(timeout=30)
    assert not target.cancelled()
    other = b.busy[0] if target is queued else queued
    with pytest.raises(ManagerLost):
        other.result(timeout=30)
    assert endings == [target]  # ended once
    assert read_lines(b.log) == ["busy0"]  # the prefetched task never ran
    assert ex.stats()["lost"] == 2
    assert ex.cancel(target) is False and target.cancel() is False  # asked again: it ended, not cancelled
    assert endings == [target]
