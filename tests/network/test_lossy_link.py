"""A pool behind a slow, lossy link: 50 ms each way and 5% of frames dropped (relay.py, seeded).

TCP retransmits what is lost; the heartbeats (1 s period, 10 s threshold) cross
the same link.  Every task succeeds and runs exactly once, with prefetch and
without it.
"""

from __future__ import annotations

import collections
import concurrent.futures
import time
from typing import Any

import pytest

from htex import LocalProvider

import netlab
import nettasks

pytestmark = pytest.mark.timeout(90)


def _run(lab: netlab.Lab, make_executor: Any, tmp_path: Any, n: int, prefetch: int, deadline: float) -> float:
    host = lab.relay_host(delay_ms=50, loss=0.05, seed=11)
    provider = LocalProvider(init_blocks=1, max_blocks=1, launcher=netlab.NetnsLauncher([host.ns]))
    ex = make_executor(address=lab.address, provider=provider, max_workers=2, prefetch_capacity=prefetch,
                       heartbeat_period=1, heartbeat_threshold=10)
    netlab.pools_on(ex, [host], timeout=45)
    path = str(tmp_path / "runs")
    t0 = time.monotonic()
    futs = [ex.submit(nettasks.record, {}, path, i) for i in range(n)]
    _, not_done = concurrent.futures.wait(futs, timeout=deadline)
    took = time.monotonic() - t0
    assert not not_done, f"{len(not_done)} of {n} tasks not done after {deadline} s"
    assert [f.result() for f in futs] == list(range(n))
    assert nettasks.runs(path) == collections.Counter(range(n))  # each ran exactly once
    ex.shutdown()  # over the link too
    assert host.relay is not None
    counts = host.relay.stop()
    print(f"\n{n} tasks, prefetch {prefetch}: {took:.1f} s; relay {counts}")
    assert counts["dropped"] > 0, counts  # the loss did happen
    return took


def test_many_short_tasks_with_prefetch(tap_lab: netlab.Lab, make_executor: Any, tmp_path: Any) -> None:
    _run(tap_lab, make_executor, tmp_path, n=300, prefetch=16, deadline=45)


def test_the_default_prefetch(tap_lab: netlab.Lab, make_executor: Any, tmp_path: Any) -> None:
    took = _run(tap_lab, make_executor, tmp_path, n=60, prefetch=0, deadline=45)
    assert took >= 60 / 2 * 0.1  # a round trip (>= 100 ms) per task per worker: the delay is there
