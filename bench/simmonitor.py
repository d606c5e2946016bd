"""Simulated pools for the hub bench (``monitoring.py``): one PUSH socket per pool, to the hub.

Run as ``python bench/simmonitor.py CONFIG_JSON`` with ``{"url", "pools": [ids], "batches", "run"}``.
Each pool sends ``batches`` batches, as fast as the hub takes them, each what a busy pool of 8
workers sends in one flush: 8 tasks started (one event per worker), 8 tasks ended, 9 resource
samples (the pool and its 8 workers): 25 events.  Task ids are unique across pools.
"""

from __future__ import annotations

import json
import sys
import time
from typing import Any

import zmq

from htex.monitoring import events as ev

WORKERS = 8


def batch(pool: int, n: int) -> bytes:
    now = time.time()
    first = (pool * 1_000_000 + n) * WORKERS
    pid = f"sim-{pool}"
    events: list[Any] = [ev.TasksStarted([first + w], now, pid, w) for w in range(WORKERS)]
    events += [ev.TaskEnded(first + w, now, "done", 20, None, None, None) for w in range(WORKERS)]
    events += [ev.ResourceSample(pid, w, now, 99.0, 50 << 20) for w in range(-1, WORKERS)]
    return ev.encode_batch("bench", pid, events)


def main() -> int:
    cfg = json.loads(sys.argv[1])
    ctx = zmq.Context()
    ctx.set(zmq.MAX_SOCKETS, len(cfg["pools"]) + 64)
    socks = []
    for _ in cfg["pools"]:
        s = ctx.socket(zmq.PUSH)
        s.setsockopt(zmq.LINGER, 60_000)
        s.connect(cfg["url"])
        socks.append(s)
    for n in range(cfg["batches"]):
        for pool, s in zip(cfg["pools"], socks, strict=True):
            s.send(batch(pool, n))
    for s in socks:
        s.close()
    ctx.term()
    return 0


if __name__ == "__main__":
    sys.exit(main())
