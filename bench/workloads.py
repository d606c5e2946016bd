"""The workloads W1-W5 and MEM, written once against ``backends.Backend``.

Each one checks its results (a wrong answer raises, whatever the timing) and
returns its metrics.  Except W5, which times start-up and shutdown itself,
each runs on a backend that the harness has started and warmed up
(``warm_up``: enough small tasks that every worker exists and has seen the
workload's function), so start-up is not in the numbers.
"""

from __future__ import annotations

import heapq
import os
import random
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any

import benchtasks
import proctree
from backends import Backend


@dataclass(frozen=True)
class Sizes:
    w1_tasks: int = 5000
    w2_trips: int = 200
    w3_tasks: int = 500
    w3_bytes: int = 1_000_000  # MB = 10**6 bytes throughout
    w4_tasks: int = 200
    w4_sleep: float = 0.05
    w6_long: int = 16  # tasks of w6_long_s ...
    w6_long_s: float = 2.0
    w6_short: int = 2000  # ... shuffled among tasks of w6_short_s
    w6_short_s: float = 0.001
    warmup: int = 20
    idle_s: float = 2.0  # MEM: idle time before measuring
    timeout: float = 300.0  # for any one wait; a hang fails the workload instead of the run


FULL = Sizes()
SMOKE = replace(FULL, w1_tasks=200, w2_trips=20, w3_tasks=10, w3_bytes=100_000, w4_tasks=8, warmup=4, idle_s=0.3,
                timeout=20.0, w6_long=4, w6_long_s=0.2, w6_short=100)


@dataclass(frozen=True)
class Metric:
    key: str
    label: str
    unit: str
    better: str  # "higher" or "lower"


Result = tuple[dict[str, float], str]  # metrics, and a line of extra information (may be "")


@dataclass(frozen=True)
class Workload:
    key: str
    title: str
    metrics: tuple[Metric, ...]
    run: Callable[[Backend, Sizes, Callable[[], None]], Result]
    warm_fn: Callable[[Sizes], tuple[Callable[..., Any], tuple[Any, ...]]] | None = None
    lifecycle: bool = False  # starts and stops the backend itself
    two_pools: bool = False  # runs only on backends with pools (Backend.start_two_pools)


def warm_up(b: Backend, s: Sizes, extra: tuple[Callable[..., Any], tuple[Any, ...]] | None) -> None:
    handles = [b.submit(benchtasks.noop) for _ in range(s.warmup)]
    if extra is not None:
        fn, args = extra
        handles += [b.submit(fn, *args) for _ in range(2)]
    b.gather(handles, s.timeout)


def _check(ok: bool, what: str) -> None:
    if not ok:
        raise AssertionError(what)


def w1(b: Backend, s: Sizes, track: Callable[[], None]) -> Result:
    t0 = time.perf_counter()
    handles = [b.submit(benchtasks.noop) for _ in range(s.w1_tasks)]
    results = b.gather(handles, s.timeout)
    dt = time.perf_counter() - t0
    _check(len(results) == s.w1_tasks and all(r is None for r in results), "W1: wrong results")
    return {"rate": s.w1_tasks / dt}, ""


def w2(b: Backend, s: Sizes, track: Callable[[], None]) -> Result:
    lat = []
    for i in range(s.w2_trips):
        t0 = time.perf_counter()
        (r,) = b.gather([b.submit(benchtasks.echo, i)], s.timeout)
        lat.append(time.perf_counter() - t0)
        _check(r == i, f"W2: echo({i}) returned {r!r}")
    lat.sort()
    p90 = lat[min(len(lat) - 1, int(0.9 * len(lat)))]
    return {"p50_ms": 1000 * statistics.median(lat)}, f"p90 {1000 * p90:.2f} ms, max {1000 * lat[-1]:.2f} ms"


_DATA: dict[int, bytes] = {}


def _data(n: int) -> bytes:
    if n not in _DATA:
        _DATA[n] = os.urandom(n)
    return _DATA[n]


def w3(b: Backend, s: Sizes, track: Callable[[], None]) -> Result:
    data = _data(s.w3_bytes)
    t0 = time.perf_counter()
    handles = [b.submit(benchtasks.nbytes, data) for _ in range(s.w3_tasks)]
    results = b.gather(handles, s.timeout)
    dt = time.perf_counter() - t0
    _check(results == [s.w3_bytes] * s.w3_tasks, "W3: wrong results")
    return {"mbps": s.w3_tasks * s.w3_bytes / 1e6 / dt}, ""


def w4(b: Backend, s: Sizes, track: Callable[[], None]) -> Result:
    t0 = time.perf_counter()
    handles = [b.submit(benchtasks.sleep, s.w4_sleep) for _ in range(s.w4_tasks)]
    results = b.gather(handles, s.timeout)
    dt = time.perf_counter() - t0
    _check(results == [s.w4_sleep] * s.w4_tasks, "W4: wrong results")
    ideal = s.w4_tasks * s.w4_sleep / 2
    return {"efficiency": ideal / dt}, f"{dt:.3f} s for an ideal {ideal:.3f} s"


def w5(b: Backend, s: Sizes, track: Callable[[], None]) -> Result:
    t0 = time.perf_counter()
    b.start()
    (r,) = b.gather([b.submit(benchtasks.echo, 42)], s.timeout)
    t1 = time.perf_counter()
    _check(r == 42, f"W5: echo(42) returned {r!r}")
    track()
    t2 = time.perf_counter()
    b.shutdown()
    t3 = time.perf_counter()
    return {"first_s": t1 - t0, "shutdown_s": t3 - t2}, ""


def w6(b: Backend, s: Sizes, track: Callable[[], None]) -> Result:
    """Balance: two pools of 2 workers, long tasks shuffled among many short ones; makespan against the ideal."""
    b.start_two_pools(s.timeout)
    warm_up(b, s, (benchtasks.sleep, (0.0,)))
    track()
    durations = [s.w6_long_s] * s.w6_long + [s.w6_short_s] * s.w6_short
    random.Random(6).shuffle(durations)  # the same order for every backend and round
    t0 = time.perf_counter()
    results = b.gather([b.submit(benchtasks.sleep, d) for d in durations], s.timeout)
    dt = time.perf_counter() - t0
    track()
    b.shutdown()
    _check(results == durations, "W6: wrong results")
    ideal = max(sum(durations) / 4, max(durations))
    short = _slept(s.w6_short_s)
    as_slept = [short if d == s.w6_short_s else d for d in durations]
    return {"vs_ideal": dt / ideal, "makespan_s": dt}, (
        f"{dt:.3f} s for an ideal {ideal:.3f} s; {_greedy(durations, 4):.3f} s for any scheduler that starts "
        "tasks in submission order with no overhead (the ideal needs the long tasks first), "
        f"{_greedy(as_slept, 4):.3f} s with sleep({s.w6_short_s:g}) as long as it took here ({short * 1000:.3f} ms, "
        "p50 in this process)")


def _slept(seconds: float, n: int = 101) -> float:
    """How long time.sleep(seconds) takes on this machine (p50): a short task is that long, not ``seconds``."""
    took = []
    for _ in range(n):
        t0 = time.perf_counter()
        time.sleep(seconds)
        took.append(time.perf_counter() - t0)
    return statistics.median(took)


def _greedy(durations: list[float], workers: int) -> float:
    """The makespan of list scheduling in order (each task to the first free worker), with no overhead."""
    free = [0.0] * workers
    for d in durations:
        heapq.heappush(free, heapq.heappop(free) + d)
    return max(free)


def mem(b: Backend, s: Sizes, track: Callable[[], None]) -> Result:
    time.sleep(s.idle_s)
    total, roles = proctree.pss_by_role(b.markers())
    _check(total > 0, "MEM: found no worker process to measure")
    parts = ", ".join(f"{r} x{n}: {m:.1f}" for r, (n, m) in sorted(roles.items()))
    return {"pss_mib": total}, f"{sum(n for n, _ in roles.values())} processes: {parts} MiB"


WORKLOADS: dict[str, Workload] = {
    w.key: w
    for w in (
        Workload("W1", "5,000 no-op tasks (submit all, wait all)",
                 (Metric("rate", "throughput", "tasks/s", "higher"),), w1),
        Workload("W2", "200 sequential round trips", (Metric("p50_ms", "p50 latency", "ms", "lower"),), w2,
                 warm_fn=lambda s: (benchtasks.echo, (0,))),
        Workload("W3", "500 tasks with a 1 MB argument, returning len",
                 (Metric("mbps", "throughput", "MB/s", "higher"),), w3,
                 warm_fn=lambda s: (benchtasks.nbytes, (b"x",))),
        Workload("W4", "200 x sleep(0.05) on 2 workers",
                 (Metric("efficiency", "efficiency (ideal/measured)", "", "higher"),), w4,
                 warm_fn=lambda s: (benchtasks.sleep, (0.0,))),
        Workload("W6", "balance: 16 x 2 s among 2,000 x 1 ms, shuffled, on two pools of 2 workers",
                 (Metric("vs_ideal", "makespan / ideal", "", "lower"),
                  Metric("makespan_s", "makespan", "s", "lower")), w6, lifecycle=True, two_pools=True),
        Workload("W5", "start -> first result; shutdown",
                 (Metric("first_s", "start() to first result", "s", "lower"),
                  Metric("shutdown_s", "shutdown()", "s", "lower")), w5, lifecycle=True),
        Workload("MEM", "idle after start (executor's processes, client excluded)",
                 (Metric("pss_mib", "PSS, sum over child processes", "MiB", "lower"),), mem),
    )
}
