"""File descriptors of the interchange: as many as allowed, and a clear error when they run out.

Each pool holds one connection to the interchange (tasks and results share
it), so 10,000 pools need 10,000 descriptors there (and a few dozen of its
own), and a typical soft limit (``ulimit -n``) is 1,024.  ``raise_limit``
lifts the soft limit to the hard one at start (any process may).

When descriptors do run out, libzmq cannot accept a connection: the pool's
connect succeeds at the kernel (the listen backlog), then nothing happens,
and libzmq says nothing (its I/O thread retries the accept at once, again and
again).  A socket monitor would see each failed accept, but a monitor's events
must be read as fast as that loop makes them, or libzmq's I/O thread blocks on
the monitor and every pool with it.  So ``Probe`` asks the kernel instead,
once a second: it opens a descriptor and closes it; EMFILE means the table is
full, and the interchange logs an error naming the limit and what to do.  The
pool, never answered, says so too (process_worker_pool: "no answer to our
registration").
"""

from __future__ import annotations

import errno
import logging
import os
import resource

log = logging.getLogger("htex.interchange")

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


class Probe:
    """``check`` once a second: out of descriptors is an error in the log (every REPEAT_SECONDS while it lasts)."""

    def __init__(self) -> None:
        self.said_at = -REPEAT_SECONDS

    def check(self, now: float, pools: int) -> bool:
        """True if the descriptor table is full now."""
        try:
            os.close(os.open(os.devnull, os.O_RDONLY))
            return False
        except OSError as exc:
            if exc.errno not in (errno.EMFILE, errno.ENFILE):
                raise
        if now - self.said_at >= REPEAT_SECONDS:
            self.said_at = now
            log.error(
                "out of file descriptors (%s) with %d pools registered: a pool cannot connect, and waits. Each "
                "pool needs one; raise the hard limit for the client's process (ulimit -Hn, or limits.conf), or use "
                "fewer pools", describe_limit(), pools,
            )
        return True
