"""A user-space wire with delay and loss between two TAP devices (this kernel has no sch_netem).

The parent opens both TAP devices (``open_tap``), moves one into a host's
namespace and starts ``Relay``: a child process (``python relay.py``) that
copies Ethernet frames both ways, holds each for ``delay_ms`` and drops each
with probability ``loss`` (a seeded RNG, so a run can be repeated).  ARP goes
through it too, like any frame.

It stops by itself: when its stdin reaches end of file (the parent closed the
pipe in ``stop()``, or died), or after ``max_seconds`` in any case.  On exit it
prints its counts as one JSON line, which ``stop()`` returns.
"""

from __future__ import annotations

import argparse
import collections
import fcntl
import json
import math
import os
import random
import select
import struct
import subprocess
import sys
import time
from typing import Any

TUNSETIFF = 0x400454CA
IFF_TAP = 0x0002
IFF_NO_PI = 0x1000
MAX_QUEUED = 20_000  # frames held at once, per direction: beyond that the wire drops (bounded memory)


def open_tap(name: str) -> int:
    """Create TAP device ``name`` (Ethernet frames, no packet-info header); return its fd (non-blocking).

    The device lives as long as an fd on it is open, in whichever namespace it was moved to.
    """
    fd = os.open("/dev/net/tun", os.O_RDWR | os.O_NONBLOCK)
    try:
        fcntl.ioctl(fd, TUNSETIFF, struct.pack("16sH", name.encode(), IFF_TAP | IFF_NO_PI))
    except BaseException:
        os.close(fd)
        raise
    return fd


class Relay:
    """The relay process between two TAP fds.  ``stop()`` ends it and returns its counts."""

    def __init__(self, fd_a: int, fd_b: int, *, delay_ms: float, loss: float, seed: int, max_seconds: float) -> None:
        if not 0.0 <= loss < 1.0 or delay_ms < 0:
            raise ValueError(f"need 0 <= loss < 1 and delay_ms >= 0, not {loss}, {delay_ms}")
        self.delay_ms, self.loss, self.seed = delay_ms, loss, seed
        argv = [
            sys.executable, os.path.abspath(__file__), "--fds", f"{fd_a},{fd_b}", "--delay-ms", str(delay_ms),
            "--loss", str(loss), "--seed", str(seed), "--max-seconds", str(max_seconds),
        ]
        self.proc = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, pass_fds=(fd_a, fd_b))
        self.counts: dict[str, Any] | None = None

    def stop(self, timeout: float = 10.0) -> dict[str, Any]:
        if self.counts is not None:
            return self.counts
        try:  # communicate() closes the relay's stdin first: at end of file it exits
            out, _ = self.proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            out, _ = self.proc.communicate()
        lines = out.decode(errors="replace").strip().splitlines()
        self.counts = json.loads(lines[-1]) if lines else {"exit_code": self.proc.returncode}
        return self.counts


def run(fds: tuple[int, int], delay_ms: float, loss: float, seed: int, max_seconds: float,
        control: int | None = 0) -> dict[str, Any]:
    """Copy frames between the two fds until ``control`` reaches end of file or ``max_seconds`` pass."""
    rng = random.Random(seed)
    delay = delay_ms / 1000.0
    a, b = fds
    peer = {a: b, b: a}
    # One FIFO per direction: a constant delay keeps frames in order.
    held: dict[int, collections.deque[tuple[float, bytes]]] = {a: collections.deque(), b: collections.deque()}
    counts = {"forwarded": 0, "dropped": 0, "overflow": 0, "write_errors": 0}
    reason = "deadline"
    poller = select.poll()
    for fd in fds:
        poller.register(fd, select.POLLIN)
    if control is not None:
        poller.register(control, select.POLLIN)
    deadline = time.monotonic() + max_seconds
    while True:
        now = time.monotonic()
        if now >= deadline:
            break
        due = min([q[0][0] for q in held.values() if q] + [deadline])
        timeout_ms = max(0, math.ceil((due - now) * 1000))
        stop = False
        for fd, _ in poller.poll(timeout_ms):
            if fd == control:
                stop = True  # data or hang-up on the control pipe: the parent is done
                continue
            for _ in range(256):  # one frame per read; bounded, so the other side gets its turn
                try:
                    frame = os.read(fd, 65536)
                except (BlockingIOError, InterruptedError):
                    break
                except OSError:  # the device went away or down
                    break
                if not frame:
                    break
                if loss and rng.random() < loss:
                    counts["dropped"] += 1
                elif len(held[peer[fd]]) >= MAX_QUEUED:
                    counts["overflow"] += 1
                else:
                    held[peer[fd]].append((time.monotonic() + delay, frame))
        if stop:
            reason = "stopped"
            break
        now = time.monotonic()
        for dst, queue in held.items():
            while queue and queue[0][0] <= now:
                _, frame = queue.popleft()
                try:
                    os.write(dst, frame)
                    counts["forwarded"] += 1
                except OSError:  # the device is down (a cut) or its queue is full: the frame is lost
                    counts["write_errors"] += 1
    return {**counts, "reason": reason}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description="Copy Ethernet frames between two TAP fds with delay and loss.")
    p.add_argument("--fds", required=True, help="the two TAP fds, comma-separated")
    p.add_argument("--delay-ms", type=float, default=0.0, help="each frame is held this long (each way)")
    p.add_argument("--loss", type=float, default=0.0, help="each frame is dropped with this probability")
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--max-seconds", type=float, default=300.0, help="exit after this long in any case")
    args = p.parse_args(argv)
    fd_a, fd_b = (int(x) for x in args.fds.split(","))
    counts = run((fd_a, fd_b), args.delay_ms, args.loss, args.seed, args.max_seconds)
    print(json.dumps(counts), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
