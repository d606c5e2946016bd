"""The latency floor of a chain of Python processes, with no htex in it.

A task's round trip in htex crosses four processes (client, interchange,
pool, worker), so its latency can never be lower than that of bare relays
doing nothing but forwarding.  This measures that floor, next to a plain
UNIX socketpair, so W2's figure can be read against it:

    .venv/bin/python bench/floor.py            # p50 round trip, microseconds

    zmq                          : one pair of processes over ZeroMQ ipc (client <-> worker)
    zmq, zmq                     : client -> A -> B and back
    zmq, zmq, zmq                : client -> interchange -> pool -> worker and back, all ZeroMQ
    socketpair                   : the single hop without ZeroMQ (what ProcessPoolExecutor's pipe costs)
    zmq, zmq, socketpair         : htex's chain before the client link became a socketpair
    socketpair, zmq, socketpair  : htex's chain now: ZeroMQ only between the interchange and a pool
    socketpair x3                : no ZeroMQ (no I/O thread) at all: what framed UNIX sockets between
                                   the interchange and local pools too could reach at best

Each relay blocks in recv and forwards at once: no poller, no decoding.
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import socket
import statistics
import time

import zmq

ZMQ, UNIX = "zmq", "socketpair"
_MSG = b"x" * 100


class _End:
    """One end of a link, either kind: a ZeroMQ PAIR (made in the process that uses it) or a socketpair's end."""

    def __init__(self, kind: str, where: str | socket.socket, bind: bool) -> None:
        self.sock: socket.socket | None = None
        self.zsock: zmq.Socket[bytes] | None = None
        if kind == ZMQ:
            assert isinstance(where, str)
            self.zsock = zmq.Context.instance().socket(zmq.PAIR)
            self.zsock.setsockopt(zmq.LINGER, 0)
            self.zsock.bind(where) if bind else self.zsock.connect(where)
        else:
            assert isinstance(where, socket.socket)
            self.sock = where

    def send(self, data: bytes) -> None:
        if self.zsock is not None:
            self.zsock.send(data, copy=False)
        else:
            assert self.sock is not None
            self.sock.sendall(data)

    def recv(self) -> bytes:
        if self.zsock is not None:
            return self.zsock.recv()
        assert self.sock is not None
        return self.sock.recv(65536)  # small messages: one recv each


def _relay(up: tuple[str, str | socket.socket], down: tuple[str, str | socket.socket] | None) -> None:
    u = _End(*up, bind=True)
    if down is None:  # the last one echoes
        while data := u.recv():
            u.send(data)
        return
    d = _End(*down, bind=False)
    while data := u.recv():
        d.send(data)
        u.send(d.recv())


def chain(kinds: list[str], trips: int) -> float:
    """p50 round trip (µs) from this process through len(kinds) relays; kinds[i] is the link into relay i."""
    tag = f"ipc://@htex-floor-{os.getpid()}-{'-'.join(kinds)}"
    links: list[tuple[str, str | socket.socket, str | socket.socket]] = []  # (kind, our end, the relay's end)
    for i, kind in enumerate(kinds):
        if kind == ZMQ:
            links.append((kind, f"{tag}-{i}", f"{tag}-{i}"))
        else:
            a, b = socket.socketpair()
            links.append((kind, a, b))
    procs = []
    for i in range(len(kinds)):
        down = (links[i + 1][0], links[i + 1][1]) if i + 1 < len(kinds) else None
        procs.append(mp.Process(target=_relay, args=((links[i][0], links[i][2]), down), daemon=True))
    for p in procs:
        p.start()
    for _, a, b in links:  # each end now lives in its process; the parent keeps only the first link's
        for end in (a, b):
            if isinstance(end, socket.socket) and end is not links[0][1]:
                end.close()
    first = _End(links[0][0], links[0][1], bind=False)
    try:
        lat = []
        for i in range(trips + 200):  # 200 to warm up (and for every ZeroMQ relay to be connected)
            t = time.perf_counter()
            first.send(_MSG)
            first.recv()
            if i >= 200:
                lat.append(time.perf_counter() - t)
        return statistics.median(lat) * 1e6
    finally:
        if first.zsock is not None:
            first.zsock.close()
        if first.sock is not None:
            first.sock.close()
        for p in procs:
            p.kill()
            p.join()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--trips", type=int, default=2000)
    args = ap.parse_args()
    mp.set_start_method("fork")
    for kinds in ([ZMQ], [ZMQ] * 2, [ZMQ] * 3, [UNIX], [ZMQ, ZMQ, UNIX], [UNIX, ZMQ, UNIX], [UNIX] * 3):
        print(f"{', '.join(kinds):36s}: p50 {chain(kinds, args.trips):6.0f} µs")


if __name__ == "__main__":
    main()
