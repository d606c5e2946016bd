"""A busy worker is handed its next task ahead, and the pool takes it back if the task before it runs long.

process_worker_pool.Lookahead: the hop from a worker's result to its next task is gone for short
tasks, and no task waits behind a long one, or runs twice.  Each task records its start in a
file (one O_APPEND write), so "ran exactly once" is read there, not inferred.
"""

from __future__ import annotations

import collections
import glob
import os
import signal
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import psutil
import pytest

from htex import WorkerLost

import tasks
from support import wait_for

pytestmark = pytest.mark.timeout(90)


def _starts(log: Path) -> collections.Counter[str]:
    return collections.Counter(log.read_text().split()) if log.exists() else collections.Counter()


def _manager_log(ex: Any) -> str:
    (path,) = glob.glob(os.path.join(ex.logdir, "block-0", "*", "manager.log"))
    with open(path) as f:
        return f.read()


def _warm(ex: Any, tmp: Path, n: int = 40, seconds: float = 0.002) -> None:
    """Short tasks first: the pool learns that tasks are short, and gives ahead (no-op tasks: in batches)."""
    futs = [ex.submit(tasks.append_then_sleep, {}, str(tmp / "warm"), i, seconds) for i in range(n)]
    assert [f.result(timeout=60) for f in futs] == list(range(n))


def _held_then_short(ex: Any, tmp: Path, n: int) -> tuple[Any, list[Any], Path, Path]:
    log, gate = tmp / "starts", tmp / "gate"
    held = ex.submit(tasks.record_then_wait_for, {}, str(log), "L", str(gate))
    wait_for(lambda: _starts(log)["L"] == 1, what="the long task to start")
    shorts = [ex.submit(tasks.append_then_sleep, {}, str(log), i, 0.002) for i in range(n)]
    return held, shorts, log, gate


def _in_one_message(ex: Any, tmp: Path, submit: Callable[[], list[Any]]) -> list[Any]:
    """Futures of ``submit()``, whose tasks leave the client in one message: submitted from a done-callback
    (on the I/O thread), so the pool holds them all when it hands a worker its batch."""
    submitted: list[Any] = []
    ex.submit(tasks.append_then_sleep, {}, str(tmp / "warm"), -1, 0.0).add_done_callback(
        lambda _: submitted.extend(submit()))
    wait_for(lambda: submitted, what="the tasks to be submitted")
    return submitted


def test_a_task_given_ahead_of_a_long_one_is_taken_back_and_waits_its_turn(make_executor: Any, tmp_path: Path) -> None:
    """One worker: the task handed behind the held one is taken back (not run ahead of its turn), and
    every task runs once after the held one."""
    ex = make_executor(max_workers=1, worker_debug=True)
    _warm(ex, tmp_path)
    held, shorts, log, gate = _held_then_short(ex, tmp_path, 20)
    wait_for(lambda: "took back task" in _manager_log(ex), timeout=30, what="the pool to take back the task given ahead")
    assert _starts(log) == {"L": 1}  # nothing ran while the only worker was held
    gate.touch()
    assert held.result(timeout=30) is None
    assert [f.result(timeout=30) for f in shorts] == list(range(20))
    starts = _starts(log)
    assert starts == {"L": 1, **{str(i): 1 for i in range(20)}}, starts


def test_tasks_never_wait_behind_a_long_one_when_another_worker_is_free(make_executor: Any, tmp_path: Path) -> None:
    ex = make_executor(max_workers=2, worker_debug=True)
    _warm(ex, tmp_path)
    held, shorts, log, gate = _held_then_short(ex, tmp_path, 60)
    try:
        # All of them finish while the long one is still held: none stayed behind it at its worker.
        assert [f.result(timeout=30) for f in shorts] == list(range(60))
        assert not held.done()
    finally:
        gate.touch()
    assert held.result(timeout=30) is None
    assert _starts(log) == {"L": 1, **{str(i): 1 for i in range(60)}}


def test_a_worker_killed_after_a_task_was_taken_back_from_it(make_executor: Any, tmp_path: Path) -> None:
    """The held task fails with WorkerLost; the one taken back runs once, on the new worker."""
    ex = make_executor(max_workers=1, worker_debug=True)
    _warm(ex, tmp_path)
    held, shorts, log, gate = _held_then_short(ex, tmp_path, 10)
    wait_for(lambda: "took back task" in _manager_log(ex), timeout=30, what="the pool to take back the task given ahead")
    (pool,) = [m["pid"] for m in ex.connected_managers]
    (worker,) = [p for p in psutil.Process(pool).children() if "htex.worker" in " ".join(p.cmdline())]
    os.kill(worker.pid, signal.SIGKILL)
    with pytest.raises(WorkerLost):
        held.result(timeout=30)
    assert [f.result(timeout=30) for f in shorts] == list(range(10))
    assert _starts(log) == {"L": 1, **{str(i): 1 for i in range(10)}}
    gate.touch()


def test_many_tasks_of_mixed_lengths_each_run_once(make_executor: Any, tmp_path: Path) -> None:
    """Tasks given ahead and taken back as they come (some run long): each one runs exactly once."""
    ex = make_executor(max_workers=2)
    log = tmp_path / "starts"
    lengths = [0.05 if i % 37 == 0 else 0.001 * (i % 4) for i in range(600)]
    futs = [ex.submit(tasks.append_then_sleep, {}, str(log), i, s) for i, s in enumerate(lengths)]
    assert [f.result(timeout=60) for f in futs] == list(range(600))
    starts = _starts(log)
    assert starts == {str(i): 1 for i in range(600)}, [k for k, v in starts.items() if v != 1]


def test_the_last_task_of_a_batch_behind_a_long_one_is_taken_back_exactly(make_executor: Any, tmp_path: Path) -> None:
    """One worker is handed a batch (short tasks: several a message) whose first task runs long: the pool
    takes back the batch's last task, which the worker has not claimed, and every task runs once.

    The tasks leave the client in one message (submitted from a done-callback), so the pool holds them
    all when it hands the batch: a batch's tasks after its first are claimed as a TasksAhead's are."""
    ex = make_executor(max_workers=1, worker_debug=True)
    _warm(ex, tmp_path, 100, 0.0)
    log, gate = tmp_path / "starts", tmp_path / "gate"
    held, *shorts = _in_one_message(ex, tmp_path, lambda: [
        ex.submit(tasks.record_then_wait_for, {}, str(log), "L", str(gate)),
        *(ex.submit(tasks.append_then_sleep, {}, str(log), i, 0.0) for i in range(20))])
    wait_for(lambda: "took back task" in _manager_log(ex), timeout=30, what="the pool to take back a task of the batch")
    assert _starts(log) == {"L": 1}
    gate.touch()
    assert held.result(timeout=30) is None
    assert [f.result(timeout=30) for f in shorts] == list(range(20))
    assert _starts(log) == {"L": 1, **{str(i): 1 for i in range(20)}}


def test_a_whole_batch_given_ahead_of_a_long_task_comes_back(make_executor: Any, tmp_path: Path) -> None:
    """Short tasks go ahead in batches: behind a held task, a worker is handed several (one message), and
    all of them come back, in one take-back, to run on the other worker while the first is still held.

    The short tasks leave the client in one message (submitted from a done-callback), so the pool holds
    them all when it hands the held task's worker its next batch (a fixed prefetch: "auto" would send
    little to a pool whose task runs long)."""
    ex = make_executor(max_workers=2, worker_debug=True, prefetch_capacity=64)
    _warm(ex, tmp_path, 100, 0.0)
    held, _, log, gate = _held_then_short(ex, tmp_path, 0)
    shorts = _in_one_message(ex, tmp_path, lambda: [
        ex.submit(tasks.append_then_sleep, {}, str(log), i, 0.001) for i in range(40)])
    try:
        assert [f.result(timeout=30) for f in shorts] == list(range(40))
        assert not held.done()
    finally:
        gate.touch()
    assert held.result(timeout=30) is None
    assert _starts(log) == {"L": 1, **{str(i): 1 for i in range(40)}}
    took = [line.split("took back task ")[1].split(" from")[0] for line in _manager_log(ex).splitlines()
            if "took back task" in line]
    assert any("," in ids for ids in took), f"no batch was taken back whole: {took}"


def test_one_take_back_does_not_start_a_chain_of_them(make_executor: Any, tmp_path: Path) -> None:
    """A worker we took a task back from idles a hop later, while the other worker has a task waiting:
    taking that one back in turn goes on for ever (in W4 every task was taken back, and each worker
    waited 1.3 ms between tasks instead of 0.4).  After one take-back (behind a long task), the tasks
    of 20 ms that follow start where they were handed, but for a few at the end."""
    ex = make_executor(max_workers=2, worker_debug=True)
    _warm(ex, tmp_path)
    held, _, log, gate = _held_then_short(ex, tmp_path, 0)
    shorts = [ex.submit(tasks.append_then_sleep, {}, str(log), i, 0.02) for i in range(80)]
    wait_for(lambda: "took back task" in _manager_log(ex), timeout=30, what="the pool to take back the task given ahead")
    before = _manager_log(ex).count("took back task")
    gate.touch()
    assert held.result(timeout=30) is None
    assert [f.result(timeout=60) for f in shorts] == list(range(80))
    assert _starts(log) == {"L": 1, **{str(i): 1 for i in range(80)}}
    after = _manager_log(ex).count("took back task") - before
    assert after <= 4, f"{after} tasks were taken back after the first, of 80"


def _batch_then_held(ex: Any, tmp: Path, n: int) -> tuple[list[Any], Any, Path, Path]:
    """``n`` no-op tasks and then a held one, leaving the client in one message (submitted from a done-callback):
    the only worker is handed them as one batch, runs the short ones (holding their results: worker.Held), and
    is held by the last."""
    log, gate = tmp / "starts", tmp / "gate"
    *shorts, held = _in_one_message(ex, tmp, lambda: [
        *(ex.submit(tasks.append_then_sleep, {}, str(log), i, 0.0) for i in range(n)),
        ex.submit(tasks.record_then_wait_for, {}, str(log), "L", str(gate))])
    return shorts, held, log, gate


def test_results_held_behind_a_long_task_reach_the_client_while_it_runs(make_executor: Any, tmp_path: Path) -> None:
    """The worker holds the short tasks' results while it starts the long one (to send them with the next);
    the pool reads them where the worker keeps them and sends them on, so they do not wait for the long task.
    When the worker does send them, with the long task's, the pool drops them: each result reaches the
    interchange once (it logs any result for a task a pool does not hold)."""
    ex = make_executor(max_workers=1, worker_debug=True)
    _warm(ex, tmp_path, 100, 0.0)
    shorts, held, log, gate = _batch_then_held(ex, tmp_path, 8)
    try:
        assert [f.result(timeout=30) for f in shorts] == list(range(8))
        assert not held.done()
        assert "results worker 0 holds" in _manager_log(ex)  # they came that way, not by luck of a flush
    finally:
        gate.touch()
    assert held.result(timeout=30) is None
    assert _starts(log) == {"L": 1, **{str(i): 1 for i in range(8)}}
    assert [f.result(timeout=30) for f in [ex.submit(tasks.append_then_sleep, {}, str(log), 9, 0.0)]] == [9]
    with open(os.path.join(ex.logdir, "interchange.log")) as f:
        assert "results for tasks it does not hold" not in f.read()


def test_the_pool_sleeps_while_a_worker_runs_the_last_task_of_its_batch(make_executor: Any, tmp_path: Path) -> None:
    """A worker running the last task of a batch has nothing left to take back: the pool must not keep looking
    (it did, without sleeping: a core per pool for as long as the long task ran, in W6)."""
    ex = make_executor(max_workers=1, worker_debug=True)
    _warm(ex, tmp_path, 100, 0.0)
    shorts, held, log, gate = _batch_then_held(ex, tmp_path, 8)
    try:
        wait_for(lambda: _starts(log)["L"] == 1, what="the long task to start")
        (pid,) = [m["pid"] for m in ex.connected_managers]
        pool = psutil.Process(pid)
        before = sum(pool.cpu_times()[:2])
        time.sleep(1.0)  # the window we measure in, not a wait for anything
        used = sum(pool.cpu_times()[:2]) - before
        assert not held.done()
        assert used < 0.2, f"the pool used {used:.2f} s of CPU in a second while its worker ran one task"
    finally:
        gate.touch()
    assert held.result(timeout=30) is None
    assert [f.result(timeout=30) for f in shorts] == list(range(8))
