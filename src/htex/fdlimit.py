"""File descriptors of the interchange: as many as allowed, and a clear error when they run out.

Each pool holds two connections to the interchange (its task and result
sockets), so 10,000 pools need 20,000 descriptors there, and a typical soft
limit (``ulimit -n``) is 1,024.  ``raise_limit`` lifts the soft limit to the
hard one at start (any process may).

When descriptors do run out, libzmq cannot accept a connection: the pool's
connect succeeds at the kernel (the listen backlog) and then nothing happens,
and libzmq says nothing unless asked.  ``AcceptWatch`` asks: a monitor on the
listening sockets reports each failed accept, and the interchange logs it as
an error that names the limit and what to do.  The pool, never answered, says
so when it gives up (process_worker_pool: "never answered our registration").
"""

from __future__ import annotations

import errno
import logging
import resource
import struct
import time
from typing import Any

import zmq

log = logging.getLogger("htex.interchange")

# A monitor event's first frame: the event (u16) and its value (i32, here the errno), native order, packed.
# (zmq.utils.monitor would parse it too, but it imports asyncio: 6 MiB in the interchange.)
_EVENT = struct.Struct("=Hi")
REPEAT_SECONDS = 10.0  # the same error is logged at most this often (a flood of failed accepts)


def raise_limit() -> tuple[int, int]:
    """Raise the soft RLIMIT_NOFILE to the hard limit; return (soft, hard) as they are now."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY or soft == resource.RLIM_INFINITY or soft < hard:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
            soft = hard
        except (ValueError, OSError) as exc:  # RLIM_INFINITY may be refused: keep what we have
            log.warning("could not raise the descriptor limit from %d to %d: %s", soft, hard, exc)
    return soft, hard


def describe_limit() -> str:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    return f"soft {soft}, hard {hard}"


class AcceptWatch:
    """Monitors of the interchange's listening sockets; ``sockets`` go in its poller, ``read`` when they are ready."""

    def __init__(self, socks: list[zmq.Socket[Any]]) -> None:
        self.sockets = [s.get_monitor_socket(zmq.EVENT_ACCEPT_FAILED) for s in socks]
        self.failed = 0
        self._last_logged = 0.0

    def read(self, sock: zmq.Socket[Any]) -> None:
        while True:
            try:
                frames = sock.recv_multipart(zmq.NOBLOCK)
            except zmq.Again:
                return
            if len(frames) < 2 or len(frames[0]) < _EVENT.size:
                continue
            self.failed += 1
            _, code = _EVENT.unpack_from(frames[0])
            endpoint = frames[1].decode(errors="replace")
            now = time.monotonic()
            if now - self._last_logged < REPEAT_SECONDS:
                continue
            self._last_logged = now
            if code in (errno.EMFILE, errno.ENFILE):
                log.error(
                    "out of file descriptors (%s): a pool cannot connect, and waits. Each pool needs 2; "
                    "raise the hard limit for the client's process (ulimit -Hn, or limits.conf), or use fewer "
                    "pools. %d connections refused so far", describe_limit(), self.failed,
                )
            else:
                log.error("could not accept a pool's connection at %s: %s (%d so far)",
                          endpoint, errno.errorcode.get(code, code), self.failed)

    def close(self) -> None:
        for sock in self.sockets:
            sock.close(linger=0)
