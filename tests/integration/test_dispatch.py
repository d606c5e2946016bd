"""How the interchange shares queued tasks among pools (interchange.Interchange._dispatch, dispatch.plan).

A real Interchange object with its real sockets on 127.0.0.1, and pools that
are plain DEALER sockets speaking the protocol (registering, then reading
what they are sent).  The test drives the interchange's loop steps itself, so
the queue seen by one dispatch is exactly what the test put there.
"""

from __future__ import annotations

import socket
import time
from collections.abc import Iterator
from typing import Any

import pytest
import zmq

from htex import __version__, protocol
from htex.interchange import Interchange, InterchangeConfig

pytestmark = pytest.mark.timeout(30)


class Bench:
    def __init__(self) -> None:
        self.ctx = zmq.Context()
        # The test stands where the executor is, at the other end of the client link.
        self.client, theirs = socket.socketpair()
        self.ic = Interchange(InterchangeConfig(client_fd=theirs.detach()))
        self.pools: dict[str, zmq.Socket[Any]] = {}

    def add_pool(self, name: str, workers: int, prefetch: int) -> None:
        sock = self.ctx.socket(zmq.DEALER)
        sock.setsockopt(zmq.IDENTITY, name.encode())
        sock.connect(f"tcp://127.0.0.1:{self.ic.port}")
        sock.send_multipart(protocol.Register(
            manager_id=name, block_id="0", hostname="h", pid=1, worker_count=workers, prefetch_capacity=prefetch,
            htex_version=__version__, python_version=".".join(map(str, __import__("sys").version_info[:3])),
        ).encode())
        deadline = time.monotonic() + 10
        while name.encode() not in self.ic.pools:
            assert time.monotonic() < deadline, f"pool {name} did not register"
            self.ic.pool_sock.poll(100)
            self.ic._read_pools()
        self.pools[name] = sock

    def dispatch(self, n: int) -> dict[str, list[int]]:
        """Queue n new tasks, dispatch once, and return the task ids each pool received."""
        start = self.ic.counts.received
        self.ic.functions[7] = b"fn"
        self.ic.queue.extend((start + i, 7, b"payload") for i in range(n))
        self.ic.counts.received += n
        self.ic._dispatch()
        got: dict[str, list[int]] = {}
        for name, sock in self.pools.items():
            got[name] = []
            while sock.poll(200):
                msg = protocol.decode(sock.recv_multipart())
                if isinstance(msg, protocol.Tasks):
                    got[name] += list(msg.ids)
        return got

    def close(self) -> None:
        self.ic.ctx.destroy(linger=0)
        self.ic.client.close()
        self.client.close()
        self.ctx.destroy(linger=0)


@pytest.fixture
def bench() -> Iterator[Bench]:
    b = Bench()
    yield b
    b.close()


def test_idle_workers_are_filled_a_pool_at_a_time_oldest_task_first(bench: Bench) -> None:
    bench.add_pool("A", workers=2, prefetch=0)
    bench.add_pool("B", workers=2, prefetch=0)
    # One message of two tasks to A (both start at once there), then the third to B.
    assert bench.dispatch(3) == {"A": [0, 1], "B": [2]}
    # A is full; B's idle worker gets the next; the rest waits in the interchange.
    assert bench.dispatch(3) == {"A": [], "B": [3]}
    assert len(bench.ic.queue) == 2


def test_pools_take_turns(bench: Bench) -> None:
    bench.add_pool("A", workers=4, prefetch=0)
    bench.add_pool("B", workers=4, prefetch=0)
    assert bench.dispatch(1) == {"A": [0], "B": []}
    assert bench.dispatch(1) == {"A": [], "B": [1]}  # A was served last: B goes first now
    assert bench.dispatch(1) == {"A": [2], "B": []}


def test_prefetch_slots_are_shared_fairly_after_the_idle_workers(bench: Bench) -> None:
    bench.add_pool("A", workers=1, prefetch=4)
    bench.add_pool("B", workers=1, prefetch=4)
    got = bench.dispatch(6)
    # Each idle worker gets one, then the four that must queue behind a busy worker are split evenly,
    # not all in the first pool.
    assert sorted(got["A"] + got["B"]) == list(range(6))
    assert (len(got["A"]), len(got["B"])) == (3, 3)
    # Capacity is never exceeded: 5 per pool, 10 in all.
    got = bench.dispatch(10)
    assert (len(got["A"]), len(got["B"])) == (2, 2)
    assert len(bench.ic.queue) == 6


def test_prefetch_follows_priority_order(bench: Bench) -> None:
    bench.add_pool("A", workers=1, prefetch=3)
    bench.ic.functions[7] = b"fn"
    # Queued before the pool had a look: 0-3 without priority, 4-7 with priorities 5, 1, 5, 1.
    bench.ic.queue.extend((i, 7, b"p") for i in range(4))
    bench.ic.queue.extend_ranked(((i, 7, b"p") for i in range(4, 8)), [5.0, 1.0, 5.0, 1.0])
    assert bench.dispatch(0) == {"A": [5, 7, 4, 6]}  # the idle worker's task, then its prefetch, in order
    assert [t[0] for t in bench.ic.queue.take(4)[0]] == [0, 1, 2, 3]
