"""Work stealing: tasks prefetched by a busy pool move to an idle one.

Prefetch (``prefetch.py``) queues tasks in a pool before a worker there is
free.  When another pool's workers are idle and the interchange has nothing
left to give them, those queued tasks would wait while workers idle: the
interchange takes them back and dispatches them again, idle workers first.

The exchange, on the pool's task socket (protocol.py, Withdraw)::

    interchange -> victim   Withdraw(req, ids)     the last ids it sent (most likely still queued)
    victim -> interchange   Withdrawn(req, withdrawn, started)

Only ``withdrawn`` move: the pool removed them from its queue before any
worker had them, so they never ran there and no result will come for them.
A task at a worker may have started: it stays (``started``).  An id in
neither list is done, its result on its way.  So a task still runs once.

When the answer comes the interchange takes back only those of ``withdrawn``
the victim still holds: a task of a pool declared lost meanwhile has failed
with ManagerLost (and the answer is dropped with the pool), a task cancelled
meanwhile is no longer held.  Neither is ever run elsewhere.

One Withdraw is in flight at a time (a steal takes one round trip, and the
next one looks at the pools as they are then).  A victim whose answer moved
nothing (every task it holds is at a worker) is not asked again until it is
sent new tasks.  The scan for a thief runs only when something may have
freed a worker (results, a new pool): with prefetch at 0 there are no victims
and none of this runs.
"""

from __future__ import annotations

import itertools
import logging
from collections.abc import Iterable
from typing import Protocol

log = logging.getLogger("htex.interchange")

# Withdraw's req numbers of stealing start here: other users of Withdraw (cancelling) count from 1, and
# the interchange routes a Withdrawn by its req.
FIRST_REQ = 1 << 40


class PoolView(Protocol):
    """What stealing reads of the interchange's pool (``interchange._Pool``)."""

    @property
    def identity(self) -> bytes: ...
    @property
    def idle(self) -> int: ...
    @property
    def free(self) -> int: ...
    @property
    def workers(self) -> int: ...
    @property
    def held_ids(self) -> Iterable[int]: ...  # in the order they were sent
    @property
    def held_count(self) -> int: ...


class Stealing:
    """The interchange's book of who holds prefetched tasks, and the one Withdraw in flight."""

    def __init__(self) -> None:
        self.victims: dict[bytes, PoolView] = {}  # pools holding more tasks than workers
        self.exhausted: set[bytes] = set()  # their last answer moved nothing; new tasks make them victims again
        self.in_flight: tuple[int, bytes, frozenset[int]] | None = None  # (req, victim, ids) of the Withdraw sent
        self.look = False  # a worker may have been freed since the last scan
        self.stolen = 0  # tasks moved, since start
        self._reqs = itertools.count(FIRST_REQ)

    def sent(self, pool: PoolView) -> None:
        """Tasks went to ``pool``."""
        self.exhausted.discard(pool.identity)
        if pool.held_count > pool.workers:
            self.victims[pool.identity] = pool

    def finished(self, pool: PoolView) -> None:
        """``pool`` sent results (or gave tasks back): it may have idle workers now, and fewer to give."""
        self.look = True
        if pool.held_count <= pool.workers:
            self.victims.pop(pool.identity, None)

    def gone(self, identity: bytes) -> None:
        """The pool is lost or released: its tasks have failed, nothing of it may move."""
        self.victims.pop(identity, None)
        self.exhausted.discard(identity)
        if self.in_flight is not None and self.in_flight[1] == identity:
            self.in_flight = None

    def plan(self, with_room: Iterable[PoolView]) -> tuple[int, PoolView, list[int]] | None:
        """A Withdraw to send now, (req, victim, ids), or None.  Call when the interchange's queue is empty."""
        if self.in_flight is not None or not self.victims or not self.look:
            return None
        self.look = False
        thief = next((p for p in with_room if p.idle > 0), None)
        if thief is None:
            return None
        candidates = [v for v in self.victims.values() if v.identity not in self.exhausted and v is not thief]
        if not candidates:
            return None
        victim = max(candidates, key=lambda v: v.held_count - v.workers)
        extra = victim.held_count - victim.workers
        n = max(1, min(thief.free, -(-extra // 2)))  # half of what it queues: both end with about as much
        ids = list(itertools.islice(reversed(list(victim.held_ids)), n))
        req = next(self._reqs)
        self.in_flight = (req, victim.identity, frozenset(ids))
        log.debug("stealing up to %d tasks from %r for %r (req %d)", n, victim.identity[:32], thief.identity[:32], req)
        return req, victim, ids

    def answered(self, req: int, victim: bytes) -> frozenset[int] | None:
        """A Withdrawn came: the ids we asked for, if it answers our Withdraw (None if not: drop it).

        Only those may move: a pool (or whoever holds its key) cannot make other tasks look withdrawn."""
        if self.in_flight is None or self.in_flight[:2] != (req, victim):
            return None
        asked = self.in_flight[2]
        self.in_flight = None
        self.look = True  # the thief is still idle: look again (another victim, or the same one)
        return asked

    def moved(self, victim: bytes, n: int) -> None:
        """The answer moved ``n`` tasks back to the queue."""
        self.stolen += n
        if not n:
            self.exhausted.add(victim)
