"""Hostile results, callbacks and tasks: each fails only what it belongs to, and nothing hangs.

Issue 11's "nothing kills the client's threads" and "fork-safe, leak-free" cases, each with
real processes: a result that raises SystemExit when unpickled, a done-callback that calls
sys.exit(), shutdown(wait=True) from a callback, a script that forks after start(), a
function of __main__ passed inside the arguments, a task that leaves a daemon behind, and
results or exceptions that raise while being pickled.
"""

from __future__ import annotations

import collections
import concurrent.futures
import os
import subprocess
import sys
import textwrap
from typing import Any

import psutil
import pytest

from htex import DeserializationError, RemoteError, SerializationError, WorkerLost

import tasks
from support import wait_for

pytestmark = pytest.mark.timeout(90)


@pytest.mark.parametrize("kind", ["SystemExit", "KeyboardInterrupt"])
def test_a_result_that_exits_when_unpickled_fails_only_its_future(make_executor: Any, kind: str) -> None:
    ex = make_executor()
    with pytest.raises(DeserializationError, match=kind):
        ex.submit(tasks.return_exit_on_unpickle, {}, kind).result(timeout=30)
    assert not ex.bad_state_is_set
    assert [f.result(timeout=30) for f in [ex.submit(tasks.add, {}, i) for i in range(20)]] == list(range(20))


def test_a_callback_that_calls_sys_exit_stops_nothing(make_executor: Any) -> None:
    ex = make_executor()
    first = ex.submit(tasks.add, {}, 1, 1)
    first.add_done_callback(lambda f: sys.exit("a callback's exit"))
    assert first.result(timeout=30) == 2
    assert [f.result(timeout=30) for f in [ex.submit(tasks.add, {}, i) for i in range(20)]] == list(range(20))
    assert not ex.bad_state_is_set


def test_shutdown_wait_true_from_a_callback_raises_as_the_stdlib_does(make_executor: Any) -> None:
    ex = make_executor()
    raised: concurrent.futures.Future[BaseException | None] = concurrent.futures.Future()

    def callback(_: Any) -> None:
        try:
            ex.shutdown(wait=True)
            raised.set_result(None)
        except BaseException as exc:
            raised.set_result(exc)

    ex.submit(tasks.add, {}, 1, 1).add_done_callback(callback)
    exc = raised.result(timeout=30)
    assert isinstance(exc, RuntimeError) and "done-callback" in str(exc)
    assert ex.submit(tasks.add, {}, 2, 2).result(timeout=30) == 4  # no deadlock, still serving


def test_a_result_whose_reduce_raises_keyboardinterrupt_is_a_serialization_error(make_executor: Any) -> None:
    ex = make_executor(max_workers=1)
    pid = ex.submit(tasks.worker_pid, {}).result(timeout=30)
    with pytest.raises(SerializationError, match="KeyboardInterrupt"):
        ex.submit(tasks.return_interrupt_on_pickle, {}).result(timeout=30)
    assert ex.submit(tasks.worker_pid, {}).result(timeout=30) == pid  # the same worker lives on


def test_an_exception_whose_str_raises_does_not_kill_the_worker(make_executor: Any) -> None:
    ex = make_executor(max_workers=1)
    pid = ex.submit(tasks.worker_pid, {}).result(timeout=30)
    with pytest.raises((RemoteError, tasks.StrRaises)):
        ex.submit(tasks.raise_str_raises, {}).result(timeout=30)
    assert ex.submit(tasks.worker_pid, {}).result(timeout=30) == pid


def test_a_worker_dying_mid_batch_blames_exactly_the_task_it_ran(make_executor: Any, tmp_path: Any) -> None:
    """Tasks before the crash ran and keep their results (the worker holds unsent results in memory its
    pool reads after its death), the crashing task fails, the tasks after it run once on the new worker."""
    ex = make_executor(max_workers=1, prefetch_capacity=16)
    for f in [ex.submit(tasks.noop, {}) for _ in range(200)]:  # the pool learns tasks are short: big batches
        f.result(timeout=30)
    log = str(tmp_path / "runs")
    futs = [ex.submit(tasks.record_pid, {}, log, i) for i in range(4)]
    crash = ex.submit(tasks.record_then_exit, {}, log, 4, 3)
    futs += [ex.submit(tasks.record_pid, {}, log, i) for i in range(5, 10)]
    concurrent.futures.wait([*futs, crash], timeout=60)
    with pytest.raises(WorkerLost, match="while running this task"):
        crash.result(timeout=0)
    before, after = futs[:4], futs[4:]
    assert all(f.exception() is None for f in before), [f.exception() for f in before]
    crashed_pid = before[0].result()
    assert all(f.exception() is None for f in after), [f.exception() for f in after]
    assert all(f.result() != crashed_pid for f in after)
    with open(log) as f:
        runs = collections.Counter(int(x) for x in f.read().split())
    assert runs == collections.Counter(range(10)), runs  # every task ran exactly once


def test_a_daemon_a_task_left_in_its_own_session_is_stopped_at_shutdown(make_executor: Any) -> None:
    ex = make_executor(max_workers=1)
    daemon = ex.submit(tasks.start_daemon, {}).result(timeout=30)
    assert os.getsid(daemon) != os.getsid(0)  # a session of its own: out of reach of the block's group
    ex.shutdown()
    wait_for(lambda: not psutil.pid_exists(daemon) or psutil.Process(daemon).status() == psutil.STATUS_ZOMBIE,
             timeout=15, what="the daemon to be stopped")


def _run_script(tmp_path: Any, body: str) -> subprocess.CompletedProcess[str]:
    script = tmp_path / "script.py"
    script.write_text(textwrap.dedent(f"""
        import os, sys
        from htex import HighThroughputExecutor, LocalProvider
        ex = HighThroughputExecutor(max_workers=1, provider=LocalProvider(init_blocks=1, max_blocks=1),
                                    run_dir={str(tmp_path / "run")!r}, heartbeat_period=1, heartbeat_threshold=5)
        ex.start()
    """) + textwrap.dedent(body))
    return subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=60, cwd=tmp_path)


def test_a_function_of_main_inside_the_arguments_travels_by_value(tmp_path: Any) -> None:
    done = _run_script(tmp_path, """
        def square(x):
            return x * x
        def apply(fn, x):
            return fn(x)
        print(list(ex.map(square, range(6), chunksize=4)))
        print(ex.submit(apply, {}, square, 7).result(30))
        ex.shutdown()
    """)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split("\n")[:2] == ["[0, 1, 4, 9, 16, 25]", "49"]


def test_a_forked_child_that_exits_leaves_the_parents_executor_alone(tmp_path: Any) -> None:
    done = _run_script(tmp_path, """
        import time
        fut = ex.submit(time.sleep, {}, 2)
        pid = os.fork()
        if pid == 0:
            try:
                ex.submit(abs, {}, 1)
            except RuntimeError as exc:
                print("child refused:", exc, flush=True)
            sys.exit(0)  # a normal exit: atexit hooks run in the child
        os.waitpid(pid, 0)
        print("parent:", fut.result(30), ex.submit(abs, {}, -5).result(30), flush=True)
        ex.shutdown()
    """)
    assert done.returncode == 0, done.stderr
    assert "child refused: this executor belongs to process" in done.stdout
    assert "parent: None 5" in done.stdout
