"""Simulated htex managers (pools), many per process, for the interchange scale test.

Run by ``scale.py`` as ``python bench/simmanagers.py CONFIG_JSON``.  Each
simulated manager is what a real ``process_worker_pool`` looks like to the
interchange: one DEALER socket with the manager id as identity, connected to
``task_url`` (if the config also names a ``result_url`` other than it, as an
htex that took two connections per pool does, a second one there: the same
simulator then measures either).  It sends ``Register`` (with the given
``worker_count``), answers every ``Tasks`` at once (after a ``Progress``, if this protocol has
it, as a real pool sends before handing tasks to workers) with a ``Results`` of
``None`` per task (nothing is unpickled or run), and
sends a ``Heartbeat`` every ``heartbeat_period`` s; their
phases are spread at random over one period, as real pools started at
different times would be.

It stops when its stdin closes (or says anything), then prints one JSON line
of counters on stdout: tasks answered, heartbeats sent and received, managers
that got at least one task, Registered/Rejected/Shutdown messages seen.
"""

from __future__ import annotations

import dataclasses
import heapq
import json
import os
import platform
import random
import selectors
import socket
import sys
import time
from typing import Any

import zmq

import htex
from htex import protocol, serialize


def _register_message(**known: Any) -> protocol.Register:
    """A Register with the fields this htex's protocol has (it changes): unknown extras are left out."""
    names = {f.name for f in dataclasses.fields(protocol.Register)}
    missing = names - set(known)
    if missing:
        raise SystemExit(f"simmanagers: protocol.Register has fields this simulator does not know: {sorted(missing)}")
    return protocol.Register(**{k: v for k, v in known.items() if k in names})


def main() -> int:
    cfg: dict[str, Any] = json.loads(sys.argv[1])
    ids: list[str] = cfg["manager_ids"]
    period: float = cfg["heartbeat_period"]
    rng = random.Random(cfg.get("seed", 0))

    ctx = zmq.Context()
    urls = [cfg["task_url"]]
    if cfg.get("result_url", cfg["task_url"]) != cfg["task_url"]:
        urls.append(cfg["result_url"])
    ctx.set(zmq.MAX_SOCKETS, len(urls) * len(ids) + 64)
    result_blob = serialize.pack_result(None)
    heartbeat = protocol.Heartbeat().encode()
    task_socks: list[zmq.Socket[Any]] = []
    result_socks: list[zmq.Socket[Any]] = []
    # epoll on each task socket's ZMQ_FD, so a wake-up costs O(ready sockets), not O(all): with
    # hundreds of managers per process, zmq_poll over all of them would make the simulator, not
    # the interchange, the bottleneck.  (ZMQ_FD is a notification: drain the socket until EAGAIN.)
    sel = selectors.EpollSelector()
    stdin = sys.stdin.fileno()
    sel.register(stdin, selectors.EVENT_READ, -1)
    hb_due: list[tuple[float, int]] = []
    now = time.monotonic()
    for i, mid in enumerate(ids):
        pair = []
        for url in urls:
            s = ctx.socket(zmq.DEALER)
            s.setsockopt(zmq.IDENTITY, mid.encode())
            for opt, val in ((zmq.LINGER, 0), (zmq.SNDHWM, 0), (zmq.RCVHWM, 0)):
                s.setsockopt(opt, val)
            s.connect(url)
            pair.append(s)
        task_socks.append(pair[0])
        result_socks.append(pair[-1])
        fd = pair[0].getsockopt(zmq.FD)
        assert isinstance(fd, int)
        sel.register(fd, selectors.EVENT_READ, i)
        reg = _register_message(
            manager_id=mid, block_id="sim", hostname=socket.gethostname(), pid=os.getpid(),
            worker_count=cfg["worker_count"], prefetch_capacity=cfg.get("prefetch_capacity", 0),
            worker_batch=1, htex_version=htex.__version__, python_version=platform.python_version(),
            cores=cfg["worker_count"], memory_mb=0, accelerators=[],
        )
        pair[0].send_multipart(reg.encode())
        hb_due.append((now + rng.random() * period, i))
    heapq.heapify(hb_due)

    counts = {"tasks": 0, "task_msgs": 0, "hb_sent": 0, "hb_received": 0, "registered": 0, "rejected": 0,
              "shutdown": 0, "other": 0, "found_by_sweep": 0}
    used = [False] * len(ids)
    handed = [0] * len(ids)
    progress = getattr(protocol, "Progress", None)  # newer protocols: pool -> interchange before hand-off

    def drain(i: int) -> int:
        sock = task_socks[i]
        got = 0
        while True:
            try:
                frames = sock.recv_multipart(zmq.NOBLOCK, copy=False)
            except zmq.Again:
                return got
            got += 1
            msg = protocol.decode(frames)
            if isinstance(msg, protocol.Tasks):
                n = len(msg.ids)
                handed[i] += n
                if progress is not None:  # as a real pool does, before it hands tasks to workers
                    sock.send_multipart(progress(handed=handed[i]).encode())
                result_socks[i].send_multipart(protocol.Results(msg.ids, [result_blob] * n).encode(), copy=False)
                counts["tasks"] += n
                counts["task_msgs"] += 1
                used[i] = True
            elif isinstance(msg, protocol.Heartbeat):
                counts["hb_received"] += 1
            elif isinstance(msg, protocol.Registered):
                counts["registered"] += 1
            elif isinstance(msg, protocol.Rejected):
                counts["rejected"] += 1
                print(f"simmanagers: {ids[i]} rejected: {msg.reason}", file=sys.stderr)
            elif isinstance(msg, protocol.Shutdown):
                counts["shutdown"] += 1
            else:
                counts["other"] += 1

    running = True
    next_sweep = time.monotonic() + 1.0
    while running:
        timeout = max(0.0, min(hb_due[0][0], next_sweep) - time.monotonic())
        for key, _ in sel.select(timeout):
            if key.data == -1:
                running = False
            else:
                drain(key.data)
        now = time.monotonic()
        while hb_due[0][0] <= now:
            due, i = heapq.heappop(hb_due)
            task_socks[i].send_multipart(heartbeat)
            drain(i)  # a send may consume the FD's notification of a message that arrived meanwhile
            counts["hb_sent"] += 1
            nxt = due + period
            heapq.heappush(hb_due, (nxt if nxt > now else now + period, i))  # never a burst to catch up
        if now >= next_sweep:  # safety net for a missed notification; counted, so it would show
            counts["found_by_sweep"] += sum(drain(i) for i in range(len(ids)))
            next_sweep = now + 1.0
    counts["managers_used"] = sum(used)
    ctx.destroy(linger=0)
    print(json.dumps(counts), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
