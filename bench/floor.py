"""The latency floor of a chain of Python processes, with no htex in it.

A task's round trip in htex crosses four processes (client, interchange,
pool, worker), so its latency can never be lower than that of bare relays
doing nothing but forwarding.  This measures that floor, next to a plain
UNIX socketpair, so W2's figure can be read against it:

    .venv/bin/python bench/floor.py            # p50 round trip, microseconds

    zmq ipc, client + 1 relay   : one pair of processes (client <-> worker)
    zmq ipc, client + 2 relays  : client -> A -> B and back
    zmq ipc, client + 3 relays  : client -> interchange -> pool -> worker and back
    socketpair, client + 1      : the same single hop without ZeroMQ (what ProcessPoolExecutor's pipe costs)
    socketpairs, client + 3     : the chain of three relays with no ZeroMQ (no I/O thread): what a
                                  transport of framed UNIX sockets between client, interchange and
                                  local pools could reach at best

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


def _relay(i: int, n: int, tag: str) -> None:
    ctx = zmq.Context()
    up = ctx.socket(zmq.PAIR)
    up.bind(f"ipc://@htex-floor-{tag}-{i}")
    if i == n:
        while True:
            up.send_multipart(up.recv_multipart(copy=False), copy=False)
    down = ctx.socket(zmq.PAIR)
    down.connect(f"ipc://@htex-floor-{tag}-{i + 1}")
    while True:
        down.send_multipart(up.recv_multipart(copy=False), copy=False)
        up.send_multipart(down.recv_multipart(copy=False), copy=False)


def zmq_chain(relays: int, trips: int) -> float:
    tag = f"{os.getpid()}-{relays}"
    procs = [mp.Process(target=_relay, args=(i, relays, tag), daemon=True) for i in range(1, relays + 1)]
    for p in procs:
        p.start()
    ctx = zmq.Context()
    s = ctx.socket(zmq.PAIR)
    s.connect(f"ipc://@htex-floor-{tag}-1")
    try:
        for _ in range(200):  # warm up, and wait for every relay to be connected
            s.send_multipart([b"HX", b"x" * 100])
            s.recv_multipart()
        lat = []
        for _ in range(trips):
            t = time.perf_counter()
            s.send_multipart([b"HX", b"x" * 100])
            s.recv_multipart()
            lat.append(time.perf_counter() - t)
        return statistics.median(lat) * 1e6
    finally:
        s.close(linger=0)
        ctx.term()
        for p in procs:
            p.kill()
            p.join()


def _echo(sock: socket.socket) -> None:
    while data := sock.recv(65536):
        sock.send(data)


def socketpair(trips: int) -> float:
    a, b = socket.socketpair()
    p = mp.Process(target=_echo, args=(b,), daemon=True)
    p.start()
    b.close()
    try:
        lat = []
        for i in range(trips + 200):
            t = time.perf_counter()
            a.send(b"x" * 100)
            a.recv(65536)
            if i >= 200:
                lat.append(time.perf_counter() - t)
        return statistics.median(lat) * 1e6
    finally:
        a.close()
        p.join(5)


def _relay_unix(up: socket.socket, down: socket.socket | None) -> None:
    if down is None:
        _echo(up)
        return
    while data := up.recv(65536):
        down.send(data)
        up.send(down.recv(65536))


def unix_chain(relays: int, trips: int) -> float:
    """Round trips through ``relays`` processes linked by socketpairs (messages small enough for one recv)."""
    pairs = [socket.socketpair() for _ in range(relays)]
    procs = []
    for i in range(relays):
        down = pairs[i + 1][0] if i + 1 < relays else None
        procs.append(mp.Process(target=_relay_unix, args=(pairs[i][1], down), daemon=True))
    for p in procs:
        p.start()
    for a, b in pairs:  # each end now lives in its process; the parent keeps only the first
        b.close()
        if a is not pairs[0][0]:
            a.close()
    s = pairs[0][0]
    try:
        lat = []
        for i in range(trips + 200):
            t = time.perf_counter()
            s.send(b"x" * 100)
            s.recv(65536)
            if i >= 200:
                lat.append(time.perf_counter() - t)
        return statistics.median(lat) * 1e6
    finally:
        s.close()
        for p in procs:
            p.kill()
            p.join()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--trips", type=int, default=2000)
    args = ap.parse_args()
    mp.set_start_method("fork")
    for relays in (1, 2, 3):
        print(f"zmq ipc, client + {relays} relay{'s' if relays > 1 else ''}: p50 {zmq_chain(relays, args.trips):6.0f} µs")
    print(f"socketpair, client + 1     : p50 {socketpair(args.trips):6.0f} µs")
    print(f"socketpairs, client + 3    : p50 {unix_chain(3, args.trips):6.0f} µs")


if __name__ == "__main__":
    main()
