"""Chaos soak: tasks stream through two pools while workers and pools are SIGKILLed at random.

For DURATION seconds a seeded chaos thread kills a worker (or, less often, a whole pool) every
0.5-2 s, while the main thread keeps up to IN_FLIGHT tasks in flight.  Each task appends its
index to a side-effect file (one O_APPEND write: atomic) before it works, so the file tells
how many times each task started.  Then:

* every future has ended, with its own value or with WorkerLost / ManagerLost, nothing else;
* no task started twice (at most once: lost_task_retries=0, so nothing may run again);
* every task that succeeded started exactly once;
* the executor still serves tasks (its block watcher replaced the killed pools' blocks);
* shutdown is clean and no process leaked (the autouse ``no_leaks`` fixture).

Two ways a kill can cut into a pool's work, and both are exercised:

* short phases (tasks of under a millisecond): the pool hands a worker batches of two or
  three tasks, and a kill often lands after some of them ran but before their results left
  the worker: those ran and must never run again;
* long phases (1-30 ms, some 0.2 s: batches of one): a kill lands mid-task; a pool killed
  holds prefetched tasks, some of which its workers had started.

Most worker kills aim at a worker that is running a task (not waiting for its pool): a kill
of an idle worker loses nothing, so it tests little.

HTEX_CHAOS_SEED and HTEX_CHAOS_SECONDS replay or lengthen a run (the seed fixes the
choices, not the timing).
"""

from __future__ import annotations

import collections
import concurrent.futures
import os
import random
import signal
import threading
import time
from concurrent.futures import Future
from typing import Any

import psutil
import pytest

from htex import LocalProvider, ManagerLost, WorkerLost

import tasks
from helpers import pool_pids
from support import alive, wait_for

DURATION = float(os.environ.get("HTEX_CHAOS_SECONDS", "60"))  # seconds of chaos
SEED = int(os.environ.get("HTEX_CHAOS_SEED", "11"))
IN_FLIGHT = 150  # tasks submitted and not ended, at most (the stream refills as they end)
KILL_INTERVAL = (0.5, 2.0)  # seconds between two kills (uniform)
POOL_SHARE = 0.2  # of the kills, the share that kills a whole pool rather than one worker
BUSY_SHARE = 0.9  # of the worker kills, the share aimed at a worker running a task (when there is one)
MIN_AGE = 1.5  # seconds: only kill processes that have had time to start (and say hello)
PHASE_SECONDS = 2.0  # two short phases, then a long one, and again
WORKERS = 2
# With 4, a pool's queue is nearly always drained by the time a worker asks again, so batches
# of more than one task (the first case above) are rare; 8 makes them common.
PREFETCH = 8
HEARTBEAT_PERIOD = 1
HEARTBEAT_THRESHOLD = 4
FINAL_BATCH = 20

pytestmark = pytest.mark.timeout(180)


def _age(pid: int) -> float:
    """Seconds since the process started; -1 if it is gone (or a zombie)."""
    try:
        p = psutil.Process(pid)
        if p.status() == psutil.STATUS_ZOMBIE:
            return -1.0
        return time.time() - p.create_time()
    except psutil.Error:
        return -1.0


def _workers(pool: int) -> list[psutil.Process]:
    """The worker processes of a pool, in pid order; none if the pool is gone."""
    try:
        children = psutil.Process(pool).children()
    except psutil.Error:
        return []
    found = []
    for p in children:
        try:
            if "htex.worker" in " ".join(p.cmdline()):
                found.append(p)
        except psutil.Error:
            pass
    return sorted(found, key=lambda p: p.pid)


def _busy(pid: int) -> bool:
    """True if the worker is running a task: not blocked reading its link to the pool."""
    try:
        with open(f"/proc/{pid}/wchan") as f:
            return "unix_stream" not in f.read()
    except OSError:
        return False


def _kill(p: psutil.Process) -> bool:
    try:
        p.send_signal(signal.SIGKILL)  # psutil checks it is still the same process (no pid reuse)
    except psutil.Error:
        return False
    return True


class Chaos(threading.Thread):
    """Every KILL_INTERVAL, SIGKILL a worker or (POOL_SHARE of the time) a pool, chosen with a seeded RNG.

    Only processes older than MIN_AGE are killed: a worker killed before it said hello counts as
    a failed start, and three of those in a row make a pool give up (another fault, tested
    elsewhere); a pool that young may not be known to the executor yet.
    """

    def __init__(self, ex: Any, seed: int) -> None:
        super().__init__(name="chaos", daemon=True)
        self.ex = ex
        self.rng = random.Random(seed)
        self.halt = threading.Event()
        self.worker_kills = 0
        self.pool_kills = 0
        self.killed_pools: set[int] = set()
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            while not self.halt.wait(self.rng.uniform(*KILL_INTERVAL)):  # the fault's pacing
                self.strike()
        except BaseException as exc:  # raised again by the test, not lost in this thread
            self.error = exc

    def stop(self) -> None:
        self.halt.set()
        self.join(30)
        assert not self.is_alive(), "the chaos thread did not stop"

    def strike(self) -> None:
        pools = sorted(p for p in pool_pids(self.ex) if p not in self.killed_pools and _age(p) >= MIN_AGE)
        if not pools:
            return
        if self.rng.random() < POOL_SHARE:
            victim = self.rng.choice(pools)
            if _kill(psutil.Process(victim)):
                self.pool_kills += 1
                self.killed_pools.add(victim)
            return
        workers = [w for p in pools for w in _workers(p) if _age(w.pid) >= MIN_AGE]
        busy = [w for w in workers if _busy(w.pid)]
        if busy and self.rng.random() < BUSY_SHARE:
            workers = busy
        if workers and _kill(self.rng.choice(workers)):
            self.worker_kills += 1


def _seconds(rng: random.Random, short_phase: bool) -> float:
    """How long a task works: under a millisecond in short phases; 1-30 ms, 1 in 10 0.2 s, in long ones."""
    if short_phase:
        return rng.uniform(0.0, 0.0008)
    return 0.2 if rng.random() < 0.1 else rng.uniform(0.001, 0.030)


def _starts(path: str) -> collections.Counter[int]:
    """How many times each task index started, from the side-effect file."""
    try:
        with open(path) as f:
            return collections.Counter(int(line) for line in f if line.strip())
    except FileNotFoundError:
        return collections.Counter()


def test_chaos_soak(make_executor: Any, tmp_path: Any) -> None:
    ex = make_executor(
        provider=LocalProvider(init_blocks=2, min_blocks=2, max_blocks=2),
        max_workers=WORKERS,
        prefetch_capacity=PREFETCH,
        heartbeat_period=HEARTBEAT_PERIOD,
        heartbeat_threshold=HEARTBEAT_THRESHOLD,
        lost_task_retries=0,
    )
    side = str(tmp_path / "starts")
    # Chaos starts once both pools have registered and started their workers.
    wait_for(lambda: len(pools := pool_pids(ex)) == 2 and all(len(_workers(p)) == WORKERS for p in pools),
             timeout=30, what="two pools with their workers")

    rng = random.Random(SEED + 1)
    room = threading.BoundedSemaphore(IN_FLIGHT)
    futures: list[Future[Any]] = []
    chaos = Chaos(ex, SEED)
    started = time.monotonic()
    chaos.start()
    try:
        end = started + DURATION
        while (now := time.monotonic()) < end:
            if not room.acquire(timeout=1.0):  # nothing ended for 1 s (both pools down): look at the clock again
                continue
            short_phase = int((now - started) / PHASE_SECONDS) % 3 != 2
            fut = ex.submit(tasks.append_then_sleep, {}, side, len(futures), _seconds(rng, short_phase))
            fut.add_done_callback(lambda _f: room.release())
            futures.append(fut)
    finally:
        chaos.stop()
    if chaos.error is not None:
        raise chaos.error

    concurrent.futures.wait(futures, timeout=HEARTBEAT_THRESHOLD + 60)
    outcomes: collections.Counter[str] = collections.Counter()
    unexpected: list[BaseException] = []
    wrong: list[tuple[int, Any]] = []
    succeeded: list[int] = []
    for i, fut in enumerate(futures):
        if not fut.done():
            outcomes["not ended"] += 1
        elif (exc := fut.exception()) is None:
            outcomes["ok"] += 1
            succeeded.append(i)
            if fut.result() != i:
                wrong.append((i, fut.result()))
        elif isinstance(exc, (WorkerLost, ManagerLost)):
            outcomes[type(exc).__name__] += 1
        else:
            outcomes["other"] += 1
            unexpected.append(exc)
    starts = _starts(side)
    twice = {i: n for i, n in sorted(starts.items()) if n > 1}
    not_once = {i: starts[i] for i in succeeded if starts[i] != 1}
    summary = (
        f"chaos soak (seed {SEED}, {time.monotonic() - started:.0f} s): {len(futures)} tasks, {outcomes['ok']} ok, "
        f"{outcomes['WorkerLost']} WorkerLost, {outcomes['ManagerLost']} ManagerLost, {outcomes['other']} other, "
        f"{outcomes['not ended']} not ended; {len(twice)} started more than once; "
        f"kills: {chaos.worker_kills} workers, {chaos.pool_kills} pools"
    )
    print(summary)

    assert outcomes["not ended"] == 0, f"{outcomes['not ended']} futures never ended. {summary}"
    if unexpected:
        raise AssertionError(f"a task failed with neither WorkerLost nor ManagerLost: {unexpected[0]!r}. {summary}"
                             ) from unexpected[0]
    assert not twice, f"tasks started more than once (index: times): {dict(list(twice.items())[:20])}. {summary}"
    assert not wrong, f"futures with another value than their task's (index, value): {wrong[:20]}. {summary}"
    assert not not_once, f"succeeded, but did not start once (index: times): {dict(list(not_once.items())[:20])}. {summary}"
    assert chaos.worker_kills and (chaos.pool_kills or DURATION < 30), f"the chaos thread did not kill both kinds. {summary}"

    # After the chaos: the block watcher has replaced the killed pools' blocks.  Once no killed
    # pool is still registered (a dead pool is dropped when its job's end is noticed, or after
    # heartbeat_threshold), a final batch runs with no loss.
    wait_for(lambda: (pools := pool_pids(ex)) and all(p not in chaos.killed_pools and alive(p) for p in pools),
             timeout=HEARTBEAT_THRESHOLD + 30, what="a live pool, and no killed one still registered")
    first = len(futures)
    final = [ex.submit(tasks.append_then_sleep, {}, side, first + k, 0.001) for k in range(FINAL_BATCH)]
    assert [f.result(timeout=30) for f in final] == list(range(first, first + FINAL_BATCH)), summary
    ex.shutdown()
    starts = _starts(side)
    assert all(starts[first + k] == 1 for k in range(FINAL_BATCH)), f"the final batch did not start once each. {summary}"
