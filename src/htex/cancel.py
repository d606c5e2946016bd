"""Cancelling tasks: the client's futures, and the interchange's cancels in progress.

Where a task can be when it is cancelled, and what happens::

    client's Outbox       taken out under the Outbox's lock: it never left     -> future cancelled()
    interchange's queue   CancelTasks: dropped from dispatch.TaskQueue           -> future cancelled()
    a pool's prefetch     the interchange sends that pool a Withdraw; the pool  -> future cancelled()
                          gives back what no worker was handed (Withdrawn)
    at a worker           may have started: ``future.cancel()`` leaves it (False, as the stdlib does for a
                          running task); ``ex.cancel(future)`` has the pool kill that worker (and start
                          another): the future ends with TaskCancelled, unless its result came first

Why ``future.cancel()`` waits for an answer: the stdlib's cancel() says True only
for a task that will never run.  Once a task has left this process, only the
interchange (and maybe a pool) can say that, so cancel() asks and waits for
the answer (one round trip, or two with a pool: milliseconds; COMMAND_SECONDS
at most).  On the I/O thread (a done-callback) it cannot wait for that thread
itself: there cancel() stops only tasks still in the Outbox.

Whoever waits, the answer is applied by the I/O thread when it comes
(``apply``): a withdrawn task's future is cancelled even if the caller gave up
waiting.  A task a cancel was asked for is never resent (lost_task_retries),
and a withdrawn one is never reported lost: it left every list of tasks held.
"""

from __future__ import annotations

import concurrent.futures
import weakref
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import Future
from concurrent.futures._base import PENDING, RUNNING  # the states a future moves between (stdlib, stable)
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from . import protocol
from .errors import TaskCancelled

if TYPE_CHECKING:
    from .client import ClientThread
    from .inflight import Inflight

CancelMany = Callable[[Sequence["Future[Any]"], bool], list[bool]]


class TaskFuture(Future[Any]):
    """The future of an htex task: ``cancel()`` reaches the task wherever it waits (see the module's docstring)."""

    # Set by submit() (an attribute, not an __init__ of our own: 140 ns less a submit): the executor's
    # cancel, weakly (one reference made once per executor), so a future kept by the user does not keep
    # a shut-down executor alive.
    cancel_many: weakref.WeakMethod[CancelMany] | None = None

    def cancel(self) -> bool:
        """True if the task will never run (it had not started); False if it started, ran or ended."""
        if self.done():
            return self.cancelled()
        cancel_many = self.cancel_many() if self.cancel_many is not None else None
        return bool(cancel_many is not None and cancel_many([self], False)[0])


def mark_cancelled(fut: Future[Any]) -> bool:
    """Move a future whose task will never run to the CANCELLED state, waking waiters and callbacks.

    htex futures are RUNNING from submit() on (the stdlib's cancel() must not flip them behind our
    back); the base class's own cancel() then does the rest, and set_running_or_notify_cancel()
    tells ``concurrent.futures.wait`` and ``as_completed``, as the stdlib's executors do.
    """
    with fut._condition:
        if fut._state != RUNNING:
            return False
        fut._state = PENDING
    if not Future.cancel(fut):
        return False
    fut.set_running_or_notify_cancel()
    return True


def cancel(client: ClientThread, inflight: Inflight, futures: Sequence[Future[Any]], kill: bool,
           timeout: float, owner: weakref.WeakMethod[CancelMany]) -> list[bool]:
    """Cancel these futures' tasks (``kill``: running ones too); for each, whether it was stopped.

    Only futures of this executor (``owner``: their ``cancel_many``): another executor's task ids are not ours.
    """
    ids = {fut.parsl_executor_task_id: fut for fut in futures  # type: ignore[attr-defined]
           if not fut.done() and getattr(fut, "cancel_many", None) is owner}
    for tid in client.outbox.withdraw(set(ids)):
        finish_cancelled(inflight, tid, client.monitor)
    rest = sorted(tid for tid, fut in ids.items() if not fut.done())
    if rest and not client.is_current():  # the I/O thread cannot wait for its own answer
        inflight.no_retries(rest)
        try:
            answer: protocol.Cancelled = client.request(
                lambda req: protocol.CancelTasks(req=req, ids=rest, kill=kill)).result(timeout)
        except Exception:  # shut down, broken, or no answer in time: nothing more is known to be stopped
            answer = protocol.Cancelled(req=0, withdrawn=[], started=[])
        if kill and answer.started:
            concurrent.futures.wait([ids[t] for t in answer.started if t in ids], timeout)
    return [fut.cancelled() or (kill and fut.done() and isinstance(fut.exception(0), TaskCancelled))
            for fut in futures]


def apply(inflight: Inflight, answer: protocol.Cancelled, monitor: Any) -> None:
    """On the I/O thread, as the answer comes: the withdrawn tasks' futures are cancelled."""
    for tid in answer.withdrawn:
        finish_cancelled(inflight, tid, monitor)


def finish_cancelled(inflight: Inflight, tid: int, monitor: Any) -> None:
    """A task that will never run: its future is cancelled, and monitoring (a ClientReporter, or None) is told."""
    fut = inflight.finish(tid)
    if fut is not None and mark_cancelled(fut) and monitor is not None:
        monitor.cancelled(tid)


# ---------------------------------------------------------------------------
# The interchange's side: a CancelTasks waits for the Withdrawn of each pool it asked
# ---------------------------------------------------------------------------


@dataclass
class _Cancel:
    req: int  # the client's
    withdrawn: list[int]
    started: list[int] = field(default_factory=list)
    waiting: set[int] = field(default_factory=set)  # reqs of the Withdraws not answered yet


class Withdrawals:
    """The interchange's cancels in progress.  Pure bookkeeping: the interchange sends and forwards.

    Each Withdraw it sends has a req of its own (counted here), so answers find their cancel; a
    Withdrawn whose req is not one of ours (another user of Withdraw) is left to its owner.
    """

    def __init__(self) -> None:
        self._next = 0
        self._by_req: dict[int, tuple[_Cancel, bytes, list[int]]] = {}  # Withdraw req -> cancel, pool, ids

    def begin(self, req: int, withdrawn: list[int], held: dict[bytes, list[int]],
              kill: bool) -> tuple[list[tuple[bytes, protocol.Withdraw]], protocol.Cancelled | None]:
        """A client's CancelTasks: the Withdraws to send (pool identity, message), and the answer if it needs none."""
        cancel = _Cancel(req, withdrawn)
        sends = []
        for identity, ids in held.items():
            self._next += 1
            cancel.waiting.add(self._next)
            self._by_req[self._next] = (cancel, identity, ids)
            sends.append((identity, protocol.Withdraw(req=self._next, ids=ids, kill=kill)))
        return sends, None if sends else self._answer(cancel)

    def answered(self, identity: bytes, msg: protocol.Withdrawn) -> tuple[list[int], protocol.Cancelled | None]:
        """A pool's answer: the tasks it gave back (of those asked), and the client's answer once the cancel
        has heard from every pool.

        Only the pool asked may answer, and only for what it was asked: a peer holding the pool key
        must not make the client believe tasks were withdrawn that were not.
        """
        entry = self._by_req.get(msg.req)
        if entry is None or entry[1] != identity:
            return [], None
        del self._by_req[msg.req]
        cancel, _, asked = entry
        wanted = set(asked)
        withdrawn = [t for t in msg.withdrawn if t in wanted]
        cancel.withdrawn += withdrawn
        cancel.started += [t for t in msg.started if t in wanted]
        cancel.waiting.discard(msg.req)
        return withdrawn, None if cancel.waiting else self._answer(cancel)

    def taken_back(self, ids: Iterable[int]) -> set[int]:
        """Tasks a pool gave back for another reason (stealing) that a cancel waits for: they count as
        withdrawn for that cancel (they will never run), and the pool's own answer no longer covers them."""
        taken = set(ids)
        found: set[int] = set()
        for cancel, _, asked in self._by_req.values():
            mine = taken.intersection(asked)
            if mine:
                cancel.withdrawn += sorted(mine)
                asked[:] = [t for t in asked if t not in mine]
                found |= mine
        return found

    def pool_gone(self, identity: bytes) -> list[protocol.Cancelled]:
        """A pool lost or unreachable before it answered: its tasks may have started (they fail with it)."""
        answers = []
        for wreq, (_, pool, ids) in list(self._by_req.items()):
            if pool == identity:
                _, answer = self.answered(identity, protocol.Withdrawn(req=wreq, withdrawn=[], started=ids))
                if answer is not None:
                    answers.append(answer)
        return answers

    @staticmethod
    def _answer(cancel: _Cancel) -> protocol.Cancelled:
        return protocol.Cancelled(req=cancel.req, withdrawn=cancel.withdrawn, started=cancel.started)
