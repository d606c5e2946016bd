"""The client's shared state: the executor's lifecycle, and the tasks in flight.

Both are touched by the user's threads (``submit()``, ``shutdown()``) and by the
executor's I/O thread (results), so each is one object behind one lock.  The
lock is reentrant: ``shutdown()`` may run in a signal handler that interrupted
``submit()`` on the same thread.
"""

from __future__ import annotations

import concurrent.futures
import logging
import os
import threading
from concurrent.futures import Future
from dataclasses import dataclass
from typing import Any

from . import shm
from .errors import ExecutorShutdown

log = logging.getLogger("htex.executor")


class Lifecycle:
    """new -> started -> shutting down -> shut down; broken (the bad state) may come at any time.

    Also who owns the executor: a forked child holds a copy of the object, not the executor.
    """

    def __init__(self) -> None:
        self.lock = threading.RLock()
        self.started = False
        self.shutting_down = False
        self.shut_down = threading.Event()
        self.bad: BaseException | None = None
        self.owner_pid = os.getpid()

    @property
    def forked_copy(self) -> bool:
        return os.getpid() != self.owner_pid

    def start(self) -> None:
        with self.lock:
            if self.started:
                raise RuntimeError("this executor was already started")
            self.started = True

    def begin_shutdown(self) -> bool:
        """Refuse new tasks from now on; True for the first caller (who does the shutdown)."""
        with self.lock:
            first = self.started and not self.shutting_down
            self.shutting_down = True
            return first

    def break_with(self, exc: BaseException) -> bool:
        """Enter the bad state; True if this call did (the first reason is kept)."""
        with self.lock:
            if self.bad is not None:
                return False
            self.bad = exc
            return True

    def check_open(self) -> None:
        if self.bad is not None:
            raise self.bad
        if self.shutting_down:
            raise RuntimeError("cannot schedule new futures after shutdown")

    @property
    def running(self) -> bool:
        """Started, not shutting down, not broken: what the block poller checks before acting."""
        return self.started and not self.shutting_down and self.bad is None


@dataclass
class _Task:
    future: Future[Any]
    fn_key: int
    payload: bytes
    tries_left: int
    lease: shm.Lease | None
    priority: float  # protocol.NO_PRIORITY (NaN) for none; a resend keeps it


class Inflight:
    """Tasks submitted and not yet done: their futures, what a resend needs, their shared memory.

    At most ``max_outstanding`` at once: ``add()`` waits for room (never on the
    I/O thread, which is the one that makes room: a done-callback that submits
    must not wait for itself).
    """

    def __init__(self, lifecycle: Lifecycle, max_outstanding: int | None, retries: int, arena: shm.Arena | None) -> None:
        self.lifecycle = lifecycle
        self.max_outstanding = max_outstanding
        self.retries = retries
        self.arena = arena
        self.futures: dict[int, Future[Any]] = {}  # the executor's `tasks`
        self._tasks: dict[int, _Task] = {}
        self._room = threading.Condition(lifecycle.lock)
        self._waiting = 0
        self._next_id = 1

    def __len__(self) -> int:
        return len(self._tasks)

    def add(self, fut: Future[Any], fn_key: int, payload: bytes, lease: shm.Lease | None, may_wait: bool,
            priority: float) -> int:
        """Register a task (waiting for room if the window is full and ``may_wait``); return its id."""
        with self._room:
            self.lifecycle.check_open()
            if may_wait and self.max_outstanding is not None:
                self._waiting += 1
                try:
                    while len(self._tasks) >= self.max_outstanding:
                        self._room.wait(1.0)
                        self.lifecycle.check_open()
                finally:
                    self._waiting -= 1
            task_id = self._next_id
            self._next_id += 1
            self._tasks[task_id] = _Task(fut, fn_key, payload, self.retries, lease, priority)
            self.futures[task_id] = fut
            return task_id

    def resend(self, task_id: int, why: BaseException) -> tuple[int, bytes, float] | None:
        """(function key, payload, priority) if a lost task may be sent again (lost_task_retries); else None."""
        with self._room:
            task = self._tasks.get(task_id)
            if task is None or task.tries_left <= 0 or not self.lifecycle.running:
                return None
            task.tries_left -= 1
            log.warning("task %d lost (%s); sending it again (%d tries left)", task_id, why, task.tries_left)
            return task.fn_key, task.payload, task.priority

    def no_retries(self, task_ids: list[int]) -> None:
        """A cancel was asked for these tasks: whatever becomes of them, they are never sent again."""
        with self._room:
            for tid in task_ids:
                if (task := self._tasks.get(tid)) is not None:
                    task.tries_left = 0

    def finish(self, task_id: int, lost: bool = False) -> Future[Any] | None:
        """Forget a task that ended; return its future (None if it had ended already)."""
        with self._room:
            task = self._tasks.pop(task_id, None)
            self.futures.pop(task_id, None)
            if self._waiting:
                self._room.notify_all()
        if task is None:
            return None
        if task.lease is not None and self.arena is not None:
            self.arena.release(task.lease, lost)
        return task.future

    def fail_all(self, exc: BaseException) -> None:
        """Every task in flight fails with ``exc``."""
        with self._room:
            tasks, self._tasks = self._tasks, {}
            self.futures.clear()
            self._room.notify_all()
        for task in tasks.values():
            settle(task.future, False, exc)

    def wake_waiters(self) -> None:
        """Let submit()s waiting for room see that the executor closed."""
        with self._room:
            self._room.notify_all()


def settle(fut: Future[Any], ok: bool, value: Any) -> None:
    """Complete a future.  Done-callbacks run here, on our thread: whatever they raise (even
    SystemExit) is logged and goes no further, so one callback cannot stop every other future."""
    try:
        if ok:
            fut.set_result(value)
        else:
            fut.set_exception(value)
    except concurrent.futures.InvalidStateError:
        pass
    except BaseException:
        log.exception("a done-callback raised; ignored (the future itself is done)")


def shutdown_error() -> ExecutorShutdown:
    return ExecutorShutdown("the executor was shut down before this task finished")
