"""Shutdown as users meet it: Ctrl-C, a signal handler, hold_worker, and a bounded in-flight window."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
from typing import Any

import psutil
import pytest

from htex import LocalProvider

import tasks
from support import wait_for

pytestmark = pytest.mark.timeout(60)

SCRIPT = textwrap.dedent("""
    import signal, sys, tasks
    from htex import HighThroughputExecutor, LocalProvider
    ex = HighThroughputExecutor(provider=LocalProvider(init_blocks=1), max_workers=1, run_dir=sys.argv[1])
    ex.start()
    if sys.argv[2] == "handler":
        signal.signal(signal.SIGUSR1, lambda *a: ex.shutdown(wait=False))
    fut = ex.submit(tasks.sleep_then, {}, 60)
    ex.submit(tasks.noop, {})
    print("ready", flush=True)
    try:
        fut.result()
    except Exception as exc:
        print(type(exc).__name__, flush=True)
""")


def _run(tmp_path: Any, mode: str) -> subprocess.Popen[str]:
    proc = subprocess.Popen([sys.executable, "-c", SCRIPT, str(tmp_path), mode], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, start_new_session=True)
    assert proc.stdout is not None
    assert proc.stdout.readline().strip() == "ready"
    wait_for(lambda: any("htex.worker" in " ".join(p.cmdline()) for p in psutil.Process(proc.pid).children(True)),
             what="the worker")
    return proc


def test_ctrl_c_ends_the_script_promptly_and_leaves_nothing(tmp_path: Any) -> None:
    proc = _run(tmp_path, "plain")
    descendants = psutil.Process(proc.pid).children(recursive=True)
    t0 = time.monotonic()
    os.killpg(proc.pid, signal.SIGINT)  # what a terminal does: the foreground process group
    _out, err = proc.communicate(timeout=15)
    assert time.monotonic() - t0 < 5
    assert "KeyboardInterrupt" in err
    _, alive = psutil.wait_procs(descendants, timeout=5)
    assert not alive


def test_shutdown_from_a_signal_handler(tmp_path: Any) -> None:
    proc = _run(tmp_path, "handler")
    os.kill(proc.pid, signal.SIGUSR1)
    out, _ = proc.communicate(timeout=15)
    assert out.strip().endswith("ExecutorShutdown")
    assert proc.returncode == 0


def test_hold_worker_sends_no_new_tasks_but_lets_running_ones_finish(make_executor: Any) -> None:
    ex = make_executor(max_workers=1, provider=LocalProvider(init_blocks=2, max_blocks=2))
    wait_for(lambda: len(ex.connected_managers) == 2, what="two pools")
    first = [ex.submit(tasks.pool_id_after, {}, 1.0) for _ in range(2)]  # one on each pool
    wait_for(lambda: all(m["tasks"] == 1 for m in ex.connected_managers), what="one task on each pool")
    held = ex.connected_managers[0]["manager"]
    assert ex.hold_worker(held)
    assert not ex.hold_worker("no-such-manager")
    assert {f.result(timeout=20) for f in first} == {held, ex.connected_managers[1]["manager"]}
    later = [ex.submit(tasks.pool_id_after, {}, 0.01) for _ in range(6)]
    assert held not in {f.result(timeout=20) for f in later}
    assert [m["active"] for m in ex.connected_managers if m["manager"] == held] == [False]


def test_submit_blocks_at_max_outstanding(make_executor: Any) -> None:
    ex = make_executor(max_outstanding=20, prefetch_capacity=100)
    peak = 0
    stop = threading.Event()

    def watch() -> None:
        nonlocal peak
        while not stop.is_set():
            peak = max(peak, ex.outstanding)
            time.sleep(0.001)

    watcher = threading.Thread(target=watch)
    watcher.start()
    try:
        futs = [ex.submit(tasks.sleep_then, {}, 0.002, i) for i in range(300)]
        assert [f.result(timeout=30) for f in futs] == list(range(300))
    finally:
        stop.set()
        watcher.join()
    assert 0 < peak <= 20


def test_a_waiting_submit_is_released_by_shutdown(make_executor: Any) -> None:
    ex = make_executor(max_outstanding=1)
    ex.submit(tasks.sleep_then, {}, 60)
    errors: list[BaseException] = []

    def submit() -> None:
        try:
            ex.submit(tasks.noop, {})
        except BaseException as exc:
            errors.append(exc)

    t = threading.Thread(target=submit)
    t.start()
    time.sleep(0.2)  # not synchronisation: gives the thread the chance to block, which is what is tested
    assert t.is_alive()
    ex.shutdown(wait=False)
    t.join(10)
    assert not t.is_alive()
    assert errors and "after shutdown" in str(errors[0])
