"""What each process reports, as methods that build events: the hooks in the core files call these.

Each hook in a core file is one line, guarded by ``if self._monitor is not None``,
so a run without monitoring pays one attribute test.  A method here only builds
a tuple and queues it (``EventSender.emit``); the sender's thread does the rest.
"""

from __future__ import annotations

import os
import socket
import time
from collections import deque
from collections.abc import Callable, Iterable, Mapping
from concurrent.futures import CancelledError
from typing import Any

from .. import errors
from . import events as ev
from .sender import EventSender

ROWS_PER_EVENT = 5000  # tasks in one packed event (a batch of one such event is ~270 kB)
TEXT_MAX = 20_000  # characters of an exception message or traceback kept

# A provider's job state -> the store's block state (schema.BLOCK_STATES).
_BLOCK_STATE = {"pending": "pending", "held": "pending", "running": "running", "completed": "ended",
                "timeout": "ended", "missing": "ended", "failed": "failed", "cancelled": "cancelled"}


def outcome_of(ok: bool, value: Any) -> str:
    """done, failed (the task raised), lost (its process died), cancelled."""
    if ok:
        return "done"
    if isinstance(value, errors.TaskLost):
        return "lost"
    if isinstance(value, CancelledError | errors.ExecutorShutdown):
        return "cancelled"
    return "failed"


class ClientReporter:
    """The executor's events: the run, tasks submitted and ended, blocks."""

    def __init__(self, sender: EventSender, provider: str) -> None:
        self.sender = sender
        self.provider = provider
        # The two events of every task are kept as plain tuples (a deque append: the cheapest thing
        # the hot path can do) and leave packed (TasksSubmittedPacked, TasksDonePacked: one struct.pack
        # per 5,000 tasks on the sender's thread, a fraction of the cost of columns of JSON numbers).
        self._submitted: deque[tuple[int, float, int, int, float]] = deque()  # id, time, bytes, func index, priority
        self._done: deque[tuple[int, float, int]] = deque()  # id, time, result bytes
        self._func_index: dict[str, int] = {}
        self._funcs: list[str] = []  # by index; a name is appended before any row uses its index
        sender.collect = self.collect
        self._retries: dict[int, int] = {}
        self._blocks: dict[str, str] = {}  # block id -> the last state reported
        self._ended: set[str] = set()  # blocks reported as ended: nothing more to say about them

    def run_started(self, label: str, run_dir: str) -> None:
        self.sender.emit(ev.RunStarted(time.time(), label, run_dir, socket.gethostname()))

    def run_ended(self) -> None:
        self.sender.emit(ev.RunEnded(time.time()))

    def submitted(self, task_id: int, func: Callable[..., Any], args_bytes: int, priority: float) -> None:
        if len(self._submitted) >= self.sender.max_queued:
            self.sender.dropped += 1
            return
        name = getattr(func, "__qualname__", None) or type(func).__name__
        index = self._func_index.get(name)
        if index is None:
            index = self._func_index[name] = len(self._funcs)
            self._funcs.append(name)
        self._submitted.append((task_id, time.time(), args_bytes, index, priority))

    def collect(self) -> list[Any]:
        """The tasks submitted and done since the last call, as packed events (on the sender's thread)."""
        out: list[Any] = []
        for queue, packed in ((self._submitted, True), (self._done, False)):
            while queue:
                rows: list[Any] = [queue.popleft() for _ in range(min(len(queue), ROWS_PER_EVENT))]
                if packed:  # the names after the rows: each name went in before the first row using it
                    out.append(ev.TasksSubmittedPacked(len(rows), _names_for(rows, self._funcs[:]),
                                                       ev.pack_rows(rows, 5)))
                else:
                    out.append(ev.TasksDonePacked(len(rows), ev.pack_rows(rows, 3)))
        return out

    def resent(self, task_id: int) -> None:
        n = self._retries[task_id] = self._retries.get(task_id, 0) + 1
        self.sender.emit(ev.TaskResent(task_id, time.time(), n))

    def ended(self, task_id: int, ok: bool, value: Any, result_bytes: int | None) -> None:
        if self._retries:
            self._retries.pop(task_id, None)
        if ok:
            if len(self._done) < self.sender.max_queued:
                self._done.append((task_id, time.time(), result_bytes or 0))
            else:
                self.sender.dropped += 1
            return
        cause = getattr(value, "__cause__", None)
        tb = cause.tb if isinstance(cause, errors.RemoteTraceback) else None
        self.sender.emit(ev.TaskEnded(task_id, time.time(), outcome_of(False, value), result_bytes,
                                      type(value).__name__, _text(value), tb[-TEXT_MAX:] if tb else None))

    def ended_all(self, task_ids: Iterable[int], exc: BaseException) -> None:
        for tid in task_ids:
            self.ended(tid, False, exc, None)

    def cancelled(self, task_id: int) -> None:
        """A task cancelled before it ran (Future.cancel)."""
        self.ended(task_id, False, CancelledError(), None)

    def block_requested(self, block_id: str, job_id: str) -> None:
        self._blocks[block_id] = "requested"
        self.sender.emit(ev.BlockState(block_id, time.time(), "requested", "", str(job_id), self.provider))

    def blocks_cancelled(self, jobs: Mapping[str, str], reason: str) -> None:
        """Blocks cancelled at shutdown (those not reported as ended already)."""
        for block, job in jobs.items():
            if block not in self._ended:
                self._ended.add(block)
                self.sender.emit(ev.BlockState(block, time.time(), "cancelled", reason, job, self.provider))

    def blocks_seen(self, statuses: Mapping[str, Any], jobs: Mapping[str, str]) -> None:
        """The provider's latest states (JobStatus by block id): report those that changed."""
        for block, st in statuses.items():
            state = _BLOCK_STATE.get(st.state.value, "pending")
            reason = f"{st.state.value}: {st.message}" if st.message else st.state.value
            if self._blocks.get(block) != reason and block not in self._ended:
                self._blocks[block] = reason
                if st.state.terminal:
                    self._ended.add(block)
                self.sender.emit(ev.BlockState(block, time.time(), state, reason, jobs.get(block), self.provider))


class InterchangeReporter:
    """The interchange's events: tasks dispatched, pools registered, draining, lost, gone."""

    def __init__(self, sender: EventSender) -> None:
        self.sender = sender

    def dispatched(self, ids: Iterable[int], pool_id: str) -> None:
        self.sender.emit(ev.TasksDispatched(list(ids), time.time(), pool_id))

    def registered(self, pool_id: str, block_id: str, host: str, workers: int) -> None:
        self.sender.emit(ev.PoolRegistered(pool_id, time.time(), block_id, host, workers))

    def pool_state(self, pool_id: str, state: str, reason: str) -> None:
        self.sender.emit(ev.PoolState(pool_id, time.time(), state, reason))


class PoolReporter:
    """A pool's events: its node, tasks handed to workers, and resource samples of every worker."""

    def __init__(self, sender: EventSender, pool_id: str) -> None:
        self.sender = sender
        self.pool_id = pool_id
        self._procs: dict[int, Any] = {}  # pid -> psutil.Process (cpu_percent measures since the last call)
        self.workers: Callable[[], list[tuple[int, int]]] = list  # (rank, pid) of live workers: set by the pool

    def info(self, block_id: str, workers: int) -> None:
        import psutil

        cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
        self.sender.emit(ev.PoolInfo(self.pool_id, time.time(), block_id, socket.gethostname(), workers, cores,
                                     psutil.virtual_memory().total // 2**20, _accelerators()))

    def started(self, ids: Iterable[int], worker: int) -> None:
        self.sender.emit(ev.TasksStarted(list(ids), time.time(), self.pool_id, worker))

    def stopped(self, reason: str) -> None:
        """The pool's last event; then its sender sends what is left and stops."""
        self.sender.emit(ev.PoolState(self.pool_id, time.time(), "gone", reason))
        self.sender.stop()

    def sample(self) -> list[Any]:
        """One sample of the pool (worker -1) and of each worker; called on the sender's thread."""
        import psutil

        now = time.time()
        out = []
        seen = set()
        for rank, pid in [(-1, os.getpid()), *self.workers()]:
            seen.add(pid)
            try:
                proc = self._procs.get(pid)
                if proc is None:
                    proc = self._procs[pid] = psutil.Process(pid)
                rss = proc.memory_info().rss
            except psutil.Error:
                continue
            if rss:  # 0: a worker that is exiting (its memory is gone, the pool has not reaped it): no sample
                out.append(ev.ResourceSample(self.pool_id, rank, now, proc.cpu_percent(), rss))
        for pid in set(self._procs) - seen:
            del self._procs[pid]
        return out


def _names_for(rows: list[tuple[int, float, int, int, float]], names: list[str]) -> list[str]:
    """The function names rows point at, by index ("" for those they do not use: a run of many functions
    does not resend them all with every batch)."""
    if len(names) <= 64:
        return names
    used = {row[3] for row in rows}
    return [name if i in used else "" for i, name in enumerate(names[:max(used) + 1])]


def _text(exc: Any) -> str:
    try:
        return str(exc)[:TEXT_MAX]
    except Exception:
        return f"<{type(exc).__name__}: its str() raised>"


def _accelerators() -> list[str]:
    """Devices this pool's node offers, as the environment names them (CUDA/ROCm visible devices)."""
    for var in ("CUDA_VISIBLE_DEVICES", "ROCR_VISIBLE_DEVICES", "HIP_VISIBLE_DEVICES"):
        value = os.environ.get(var)
        if value:
            return [d.strip() for d in value.split(",") if d.strip()]
    return []


def pool_reporter_from_env(pool_id: str, task_url: str, cert_dir: str | None) -> PoolReporter | None:
    """The pool's reporter, if the executor asked for monitoring (HTEX_MONITOR_* in the launch command)."""
    url = os.environ.get("HTEX_MONITOR_URL")
    run_id = os.environ.get("HTEX_MONITOR_RUN")
    if not url or not run_id:
        return None
    if "{interchange}" in url:  # the hub is on the interchange's host: the address this pool reached it at
        url = url.replace("{interchange}", task_url.split("://", 1)[-1].rsplit(":", 1)[0])
    period = float(os.environ.get("HTEX_MONITOR_PERIOD", "10"))
    cert_dir = os.environ.get("HTEX_MONITOR_CERT_DIR", cert_dir) or None
    reporter = PoolReporter(EventSender(url, run_id, f"pool {pool_id}", cert_dir, stop_seconds=2.0), pool_id)
    reporter.sender.sample, reporter.sender.sample_period = reporter.sample, period
    reporter.sender.start()
    return reporter
