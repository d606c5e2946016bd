"""The worker pool: one manager process per node, supervising N worker processes.

::

    interchange  --TASKS-->  [one socket]  manager  --TASKS (1 each)-->  worker 0..N-1
                 <--RESULTS-                (this)     <--RESULTS---------  (a socketpair each)

The manager holds one connection to the interchange, both ways (a DEALER:
tasks in; registration, heartbeats, results out): it costs the interchange
one descriptor per pool.  ``--result_port``/``--result_url`` are accepted for
Parsl's launch commands and not used (poolcmd.py).

The manager's loop has four steps: read what the interchange sent, read what
the workers sent, hand queued tasks to idle workers, then keep time
(heartbeats, liveness).  It blocks on its sockets and on the workers' pidfds,
so a worker's death wakes it at once; the only timeout is the next heartbeat.

Each worker is linked to the manager by a Unix socketpair (framing.py says
why not ZeroMQ).  The manager reads and writes them without blocking: a
batch the socket cannot take at once waits, and goes as the link becomes
writable.  It only ever writes to an idle worker, which is waiting in recv()
and drains the socket; but a worker that is stopped (SIGSTOP) or swapped out
must not stop the pool and every other worker with it.

Tasks go to an idle worker in batches: its share of the queue, at most
WORKER_BATCH, so a deep queue of short tasks costs one message per batch on
every hop, and a shallow queue (long tasks) still spreads one task per worker.
A worker sends its results when its batch is done, or sooner if the batch
runs long (see worker.py).

Exactly once, when a worker dies: before it starts a task (before it even
unpickles the arguments) a worker writes the task's id into a word of shared
memory that the pool reads when it reaps the worker.  So the pool knows which
task was running (it fails with WorkerLost) and which never started (back to
the queue).  The tasks before it finished: their results reached the pool,
or wait in the same shared memory (worker.Held), where the pool reads them.

Withdraw (the interchange takes tasks back, for a cancel): what is still in
the pool's queue leaves it; what a worker was handed may have started and
stays.  With ``kill`` the pool SIGKILLs the worker running such a task (at
once, or as the worker reaches it in its batch: the shared word tells), and
the accounting above makes it TaskCancelled instead of WorkerLost.

The pool is a child subreaper: a process a task leaves behind, even in a
session of its own (a daemon), becomes our child when its parent exits, and
is stopped when the pool stops.

The classes: ``Manager`` runs the loop and keeps the tasks (the queue, the
batches handed out, the results going back); ``Workers`` keeps the worker
processes (start, link, notice a death, replace); ``Cancels`` answers a
Withdraw, kills to cancel, and says what a dead worker's batch becomes;
``Wide`` seats tasks that ask for more than one GPU; ``Lookahead`` hands a
busy worker its next batch early, takes it back (a claim byte per such task), and sends on the results a
worker holds behind a task that runs long.  Each worker's link is
a ``framing.WorkerLink``.

Started by the provider as ``process_worker_pool`` (or ``python -m
htex.process_worker_pool``) with the flags Parsl's pool takes (poolcmd.py
reads them, and writes them for the executor).
"""

from __future__ import annotations

import logging
import math
import mmap
import os
import platform
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import psutil
import zmq

from . import __version__, framing, placement, poolcmd, poollink, prefetch, procs, protocol, serialize, worker
from .errors import PlacementError, ProtocolError, TaskCancelled, WorkerLost

log = logging.getLogger("htex.pool")

EXIT_REJECTED = 3  # the interchange refused this pool (version mismatch, or declared lost)
EXIT_NO_WORKERS = 4  # workers die before they start
EXIT_INTERCHANGE_LOST = 5  # the interchange went silent (or was never reached)
EXIT_BAD_PLACEMENT = 6  # cpu_affinity asks for cores this node does not give
# A worker that dies this many times in a row before saying hello means workers cannot start here.
MAX_START_FAILURES = 3
# The most tasks one worker is handed at once, and how long a batch should take:
# long enough to amortise a message, short enough that long tasks go one by one (W6's tasks of 1 ms go
# four to a message: at 2 ms they went one by one, and each message costs every process a wake-up).
WORKER_BATCH = 32
BATCH_SECONDS = 0.005
# While a task to cancel waits in a worker's batch, how often to look whether the worker has reached it.
DOOMED_CHECK_SECONDS = 0.005
# Lookahead: a busy worker is handed its next batch while tasks take less than prefetch.LOOKAHEAD_TASK s; what
# waits LOOKAHEAD_PATIENCE times a task's usual time (and at least LOOKAHEAD_MIN_WAIT s) is taken back.  The
# least wait is above worker.FLUSH_SECONDS: a worker busy with short tasks says so (results) that often.
LOOKAHEAD_PATIENCE = 4.0
LOOKAHEAD_MIN_WAIT = 0.01
# A worker silent this long while it runs a task after others of its batch may hold their results (worker.Held):
# we read them where it keeps them and send them on (Lookahead._collect).  Above worker.FLUSH_SECONDS likewise.
HELD_WAIT = 0.01
# Seconds without an answer to our registration before we say so (the interchange may be out of descriptors).
REGISTER_PATIENCE = 10.0
# At shutdown: how long workers, and then what tasks left behind, get between SIGTERM and SIGKILL.
STOP_GRACE = 2.0

Task = tuple[int, int, protocol.Blob]  # task id, function key, payload


class _Stop(Exception):
    """Raised from the signal handler to leave the loop and clean up."""


@dataclass
class PoolConfig:
    task_url: str  # the interchange: the pool's one connection
    manager_id: str
    block_id: str = "-1"
    max_workers: float = math.inf
    cores_per_worker: float = 1.0
    mem_per_worker: float | None = None
    prefetch_capacity: int = prefetch.AUTO  # the interchange adapts it; a number >= 0: fixed
    heartbeat_period: float = 30.0
    heartbeat_threshold: float = 120.0
    logdir: str = "."
    debug: bool = False
    cert_dir: str | None = None  # CurveZMQ keys of the run; None = plain TCP
    cpu_affinity: str = "none"  # placement.py
    accelerators: list[str] = field(default_factory=list)
    drain_period: float | None = None  # drain this many seconds after start
    mpi_launcher: str | None = None  # MPI mode (mpi.py); None: not


def worker_count(max_workers: float, cores_per_worker: float, mem_per_worker: float | None) -> int:
    """How many workers this node can take: the spec's three limits, at least one."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    limits = [max_workers, math.floor(cores / cores_per_worker)]
    if mem_per_worker:
        available_gb = psutil.virtual_memory().available / 2**30
        limits.append(math.floor(available_gb / mem_per_worker))
    count = min(limits)
    if count < 1:
        log.warning("limits %s allow no worker on this node; starting one anyway", limits)
        count = 1
    return int(count)


@dataclass
class _WorkerSlot:
    rank: int
    proc: subprocess.Popen[bytes] | None = None
    pidfd: int = -1
    link: framing.WorkerLink | None = None  # None once the worker is gone or going
    ready: bool = False
    tasks: list[int] = field(default_factory=list)  # handed to it, no result yet, in order
    sent_at: float = 0.0
    functions: set[int] = field(default_factory=set)
    started: mmap.mmap | None = None  # shared with the worker: the id of the task it started last
    # A task with gpus > 1 (Wide): the worker started for it, in this slot, gets ``seat`` (the devices and cores
    # of the slots it holds: its own and ``borrowed``) and is handed ``wide`` once it says hello.
    seat: placement.Seat | None = None
    wide: Task | None = None
    borrowed: list[int] = field(default_factory=list)
    lent: bool = False  # its worker waits, idle, while another slot's wide task uses its device
    restart: bool = False  # we stopped its (idle) worker to start it on another seat: not a failure
    claim: tuple[int, int] = (-1, -1)  # the pipe of its tasks' bytes: (read end, also the worker's; write end)
    # At most this many bytes are left in that pipe: tasks we may still take back.  An upper bound (the worker
    # reads them unseen); 0 once a read found fewer than it asked for.  Without it, a worker whose waiting tasks
    # it had all claimed still looked as if some waited, and the loop spun, looking again at once, for as long
    # as a long task ran: a core per pool in W6.
    unclaimed: int = 0
    peeked: bool = False  # since its last results, we read what it holds (Lookahead._collect): not again
    early: set[int] = field(default_factory=set)  # results we read there and sent on: drop them when it sends them
    last_hand: int = 0  # how many tasks we handed it last: while it holds no more, nothing waits behind them
    taken_back: set[int] = field(default_factory=set)  # we took these back: nothing new for it until it saw them
    robbed: bool = False  # idle since we took a task back from it: it takes none back from others (Lookahead.reclaim)

    def started_task(self) -> int:
        return protocol.STARTED.unpack_from(self.started)[0] if self.started is not None else 0


class Workers:
    """The pool's worker processes: start each one with its link, notice its death, replace it.

    Every worker's link and pidfd are registered with the pool's poller; the
    pool hands the fds its poller reports to ``lookup``.  Which tasks a
    worker holds is the Manager's business (``_WorkerSlot.tasks``).
    """

    def __init__(self, cfg: PoolConfig, count: int, poller: zmq.Poller,
                 seats: list[placement.Seat] | None = None) -> None:
        self.cfg = cfg
        self.count = count
        self.seats = seats  # each worker's cores and accelerator (placement.py); None: not placed
        self.extra_env: dict[str, str] = {}  # for every worker (MPI mode: the block's nodes)
        self.poller = poller
        self.slots = [_WorkerSlot(rank) for rank in range(count)]
        self.idle: deque[int] = deque()  # ranks of the workers waiting for a batch, in the order they freed up
        self.by_pidfd: dict[int, _WorkerSlot] = {}
        self.by_link: dict[int, _WorkerSlot] = {}  # fd of our end of a worker's socketpair
        self.start_failures = 0

    def lookup(self, events: dict[Any, int]) -> tuple[list[_WorkerSlot], list[_WorkerSlot], list[_WorkerSlot]]:
        """The workers whose link is readable, whose link is writable, and that have exited.

        Looked up at once, before any is handled: reaping closes fds and
        opens new ones, which may reuse their numbers.
        """
        readable, writable, dead = [], [], []
        for fd, ev in events.items():
            if (slot := self.by_link.get(fd)) is not None:
                if ev & ~framing.POLLOUT:
                    readable.append(slot)
                if ev & framing.POLLOUT:
                    writable.append(slot)
            elif (slot := self.by_pidfd.get(fd)) is not None:
                dead.append(slot)
        return readable, writable, dead

    def start(self, slot: _WorkerSlot) -> None:
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        started_fd = os.memfd_create(f"htex-started-{slot.rank}")
        os.ftruncate(started_fd, worker.SHARED_SIZE)
        self._close_claim(slot)
        slot.claim = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)  # a new worker, new bytes: none left from the last
        slot.unclaimed = 0
        slot.taken_back, slot.early = set(), set()
        try:
            if slot.started is not None:
                slot.started.close()
            slot.started = mmap.mmap(started_fd, worker.SHARED_SIZE)
            slot.proc = subprocess.Popen(
                self._command(slot, theirs.fileno(), started_fd), env=self._environment(slot),
                stdin=subprocess.DEVNULL, pass_fds=(theirs.fileno(), started_fd, slot.claim[0]),
            )
        except BaseException:
            ours.close()
            raise
        finally:
            # Only the worker may hold its end: then its exit is an end of stream on ours.
            theirs.close()
            os.close(started_fd)  # the mapping stays
        slot.pidfd = os.pidfd_open(slot.proc.pid)
        slot.link = framing.WorkerLink(ours, self.poller)
        self.by_link[slot.link.fd] = slot
        slot.ready = False
        slot.tasks = []
        slot.functions = set()
        self.by_pidfd[slot.pidfd] = slot
        self.poller.register(slot.pidfd, zmq.POLLIN)

    def _command(self, slot: _WorkerSlot, link_fd: int, started_fd: int) -> list[str]:
        cmd = [sys.executable, "-m", "htex.worker", "--fd", str(link_fd), "--rank", str(slot.rank),
               "--started-fd", str(started_fd), "--claim-fd", str(slot.claim[0])]
        seat = slot.seat or (self.seats[slot.rank] if self.seats else None)
        if seat and seat.cores:
            cmd += ["--cores", ",".join(map(str, seat.cores))]
        if self.cfg.debug:
            cmd += ["--debug", "--logfile", os.path.join(self.cfg.logdir, f"worker_{slot.rank}.log")]
        return cmd

    def _environment(self, slot: _WorkerSlot) -> dict[str, str]:
        env = dict(os.environ)
        env.update(
            PARSL_WORKER_RANK=str(slot.rank),
            PARSL_WORKER_COUNT=str(self.count),
            PARSL_WORKER_POOL_ID=self.cfg.manager_id,
            PARSL_WORKER_BLOCK_ID=self.cfg.block_id,
        )
        if slot.seat is not None:
            env.update(slot.seat.environment())
        elif self.seats:
            env.update(self.seats[slot.rank].environment())
        env.update(self.extra_env)
        return env

    def read(self, slot: _WorkerSlot) -> list[protocol.Message]:
        """What one read from a worker's link completed.

        End of stream or a reset means the worker is exiting: its pidfd
        reports that too, and the Manager's _reap does the accounting, so here
        the link is just closed.
        """
        messages: list[protocol.Message] = []
        if slot.link is None:
            return messages
        try:
            frames = slot.link.read()
            if frames is None:
                self.drop_link(slot)
                return messages
            for f in frames:
                messages.append(protocol.decode(f))
        except ProtocolError as exc:
            self._garbage(slot, exc)  # what came before the garbage still counts
        return messages

    def _garbage(self, slot: _WorkerSlot, exc: ProtocolError) -> None:
        # A stream cannot be resynchronised: stop the worker; _reap fails its task and replaces it.
        log.error("worker %d sent garbage (%s); killing it", slot.rank, exc)
        assert slot.proc is not None
        slot.proc.kill()
        self.drop_link(slot)

    def send(self, slot: _WorkerSlot, frames: list[protocol.Blob]) -> None:
        """Send without blocking (a worker that does not read must not stop the pool: see WorkerLink)."""
        assert slot.link is not None  # a slot whose link is closed is never idle
        try:
            slot.link.send(frames)
        except OSError as exc:
            self._gone(slot, exc)

    def flush(self, slot: _WorkerSlot) -> None:
        if slot.link is not None:
            try:
                slot.link.flush()
            except OSError as exc:
                self._gone(slot, exc)

    def send_tasks(self, slot: _WorkerSlot, n: int, frames: list[protocol.Blob]) -> None:
        """Send a worker a batch with ``n`` tasks to claim: their bytes first (the worker reads one before each
        of those starts).  Not one a task: the system calls on both sides showed in W2's round trip."""
        if n:
            os.write(slot.claim[1], bytes(n))
            slot.unclaimed += n
        self.send(slot, frames)

    def take_back(self, slot: _WorkerSlot, n: int) -> int:
        """Take back up to ``n`` of the last tasks handed to the worker, those it has not claimed (read the
        byte of) yet: how many came back."""
        try:
            got = len(os.read(slot.claim[0], n))
        except BlockingIOError:
            got = 0
        slot.unclaimed = slot.unclaimed - got if got == n else 0  # fewer than asked: the pipe is empty
        return got

    @staticmethod
    def _close_claim(slot: _WorkerSlot) -> None:
        for fd in slot.claim:
            if fd >= 0:
                os.close(fd)
        slot.claim = (-1, -1)

    def _gone(self, slot: _WorkerSlot, exc: OSError) -> None:
        # It died (EPIPE, ECONNRESET): its pidfd says so too, and _reap fails or requeues the batch.
        log.info("worker %d is gone before its batch went out: %s", slot.rank, exc)
        self.drop_link(slot)

    def drop_link(self, slot: _WorkerSlot) -> None:
        """Close our end of a worker's socketpair: the worker is gone or going, give it nothing more."""
        if slot.link is None:
            return
        del self.by_link[slot.link.fd]
        slot.link.close()
        slot.link = None
        if slot.rank in self.idle:
            self.idle.remove(slot.rank)

    def reap(self, slot: _WorkerSlot) -> tuple[int, list[protocol.Message]]:
        """A worker exited: its exit code, and what it sent before it died (results still count)."""
        assert slot.proc is not None
        code = slot.proc.wait()
        messages: list[protocol.Message] = []
        if slot.link is not None:
            try:
                for frames in slot.link.drain():
                    messages.append(protocol.decode(frames))
            except ProtocolError as exc:
                log.error("worker %d sent garbage before it died (%s)", slot.rank, exc)
        if (held := self._held(slot, messages)) is not None:
            messages.append(held)
        self.drop_link(slot)
        self.poller.unregister(slot.pidfd)
        del self.by_pidfd[slot.pidfd]
        os.close(slot.pidfd)
        return code, messages

    @staticmethod
    def _held(slot: _WorkerSlot, sent: list[protocol.Message]) -> protocol.Results | None:
        """The results a dead worker finished and had not sent (worker.Held), minus those it did send."""
        if slot.started is None:
            return None
        got = {tid for msg in sent if isinstance(msg, protocol.Results) for tid in msg.ids}
        held = [(tid, blob) for tid, blob in worker.read_held(slot.started) if tid in slot.tasks and tid not in got]
        if not held:
            return None
        log.info("worker %d died holding %d results; they count", slot.rank, len(held))
        return protocol.Results(protocol.u64_array(t for t, _ in held), [b for _, b in held])

    def ready(self, slot: _WorkerSlot, pid: int) -> None:
        """A worker said hello: it takes tasks, and workers can start here."""
        slot.ready = True
        self.start_failures = 0
        if not slot.lent:
            self.idle.append(slot.rank)
        log.debug("worker %d ready (pid %d)", slot.rank, pid)

    def replace(self, slot: _WorkerSlot) -> bool:
        """Start a worker in a dead one's place; False if workers die before they start, again and again."""
        if not slot.ready and not slot.restart:  # a worker we stopped ourselves did not fail
            self.start_failures += 1
            if self.start_failures >= MAX_START_FAILURES:
                return False
        slot.restart = False
        self.start(slot)
        return True

    def reap_orphans(self) -> None:
        """Collect processes that tasks left behind and that have exited since (we are their subreaper)."""
        workers = {s.proc.pid for s in self.slots if s.proc is not None}
        for child in psutil.Process().children():
            if child.pid not in workers:
                try:
                    os.waitpid(child.pid, os.WNOHANG)
                except ChildProcessError:
                    pass

    def stop(self) -> None:
        """Stop every worker, then whatever tasks started and left running (daemons included)."""
        procs.stop([s.proc for s in self.slots if s.proc is not None], STOP_GRACE,
                   f"workers of pool {self.cfg.manager_id}")
        procs.stop(psutil.Process().children(recursive=True), STOP_GRACE,
                   f"processes that tasks of pool {self.cfg.manager_id} left behind")
        procs.reap_exited()
        for fd in self.by_pidfd:
            os.close(fd)
        self.by_pidfd.clear()
        for slot in self.slots:
            self.drop_link(slot)
            self._close_claim(slot)
            if slot.started is not None:
                slot.started.close()
                slot.started = None


class Wide:
    """Tasks that ask for more than one GPU (``gpus=g``, g > 1): each runs on a worker that sees its g devices.

    The interchange holds g of this pool's worker slots for such a task, and tells us its needs
    (TaskNeeds) before it sends it.  A GPU runtime reads CUDA_VISIBLE_DEVICES (ROCR_VISIBLE_DEVICES,
    ZE_AFFINITY_MASK) once, as it initialises: setting them in a worker that may have initialised
    CUDA for an earlier task would not do.  So the task waits until g workers are idle; one of
    them (the host) is stopped and started again with the devices and cores of all g
    (placement.joined), the others are lent to it (they stay idle and take no task, so no device is
    shared), and the task goes to the new worker as it says hello.  When it ends (its result, or its
    worker's death: a crash, a cancel) the lent workers take tasks again and the host starts again
    on its own seat.  Cost: two worker starts (~0.1 s each) per such task, beside GPU work.
    """

    def __init__(self, workers: Workers) -> None:
        self.workers = workers
        self.gpus: dict[int, int] = {}  # such tasks this pool holds -> the GPUs each asks
        self.waiting: deque[Task] = deque()  # in the order they came, until handed to their worker

    def expect(self, msg: protocol.TaskNeeds) -> None:
        if self.workers.seats:  # a pool without accelerators is never sent gpus tasks
            self.gpus.update((tid, int(gpus)) for tid, (_, _, gpus) in zip(msg.ids, msg.needs, strict=False) if gpus > 1)

    def divert(self, queue: deque[Task]) -> deque[Task]:
        """Take such tasks out of the plain queue (they came in a TASKS, or back from a dead worker's batch)."""
        if not any(t[0] in self.gpus for t in queue):
            return queue
        self.waiting.extend(t for t in queue if t[0] in self.gpus)
        return deque(t for t in queue if t[0] not in self.gpus)

    def seat(self) -> None:
        """Give each waiting task its workers if enough are idle; the host restarts on their joined seat."""
        slots, seats, idle = self.workers.slots, self.workers.seats, self.workers.idle
        seated = {s.wide[0] for s in slots if s.wide is not None}
        for task in self.waiting:
            g = self.gpus[task[0]]
            if task[0] in seated or len(idle) < g or seats is None:
                continue
            ranks = [idle.popleft() for _ in range(g)]
            host = slots[ranks[0]]
            for rank in ranks[1:]:
                slots[rank].lent = True
            host.borrowed, host.wide = ranks[1:], task
            host.seat = placement.joined([seats[r] for r in sorted(ranks)])  # in the order of the pool's devices
            log.info("task %d (gpus=%d): worker %d restarts with accelerators %s (workers %s lent to it)",
                     task[0], g, host.rank, host.seat.accelerator, host.borrowed)
            assert host.proc is not None
            host.restart = True
            host.proc.kill()  # idle (it holds no task): _reap starts it again on the joined seat

    def start(self, slot: _WorkerSlot) -> Task:
        """The host's new worker said hello: the task it was started for, to hand to it now."""
        assert slot.wide is not None
        self.workers.idle.remove(slot.rank)
        self.waiting.remove(slot.wide)
        return slot.wide

    def finished(self, slot: _WorkerSlot) -> None:
        """The host sent the task's result: give back the lent workers, start the host again on its own seat."""
        assert slot.wide is not None and slot.proc is not None
        self.gpus.pop(slot.wide[0], None)
        self._release(slot)
        slot.restart = True
        slot.proc.kill()  # idle again; _reap starts it on its own seat

    def died(self, slot: _WorkerSlot, queue: deque[Task]) -> None:
        """The host's worker died (before _reap starts another): restarted for the task, or the task ended."""
        assert slot.wide is not None
        if slot.wide in self.waiting:  # the restart for it (or a death before it was handed): start it seated
            return
        if not any(t[0] == slot.wide[0] for t in queue):  # it ran (failed, or cancelled); else it goes again
            self.gpus.pop(slot.wide[0], None)
        self._release(slot)

    def withdraw(self, wanted: set[int]) -> list[int]:
        """Take waiting tasks back (a cancel): not handed to a worker, they never started."""
        out = [t for t in self.waiting if t[0] in wanted]
        for task in out:
            self.waiting.remove(task)
            self.gpus.pop(task[0], None)
            for slot in self.workers.slots:
                if slot.wide is task and slot.proc is not None:
                    self._release(slot)
                    slot.restart = True
                    slot.proc.kill()  # its new worker has the joined seat: start it on its own
        return [t[0] for t in out]

    def _release(self, slot: _WorkerSlot) -> None:
        for rank in slot.borrowed:
            lent = self.workers.slots[rank]
            lent.lent = False
            if lent.ready and lent.link is not None and rank not in self.workers.idle:
                self.workers.idle.append(rank)
        slot.borrowed, slot.wide, slot.seat = [], None, None


class Cancels:
    """The pool's side of a cancel: a Withdraw (the tasks still in the queue leave it), with ``kill``
    the worker running a task to cancel; and what a dead worker's batch becomes (where a task killed
    to cancel becomes TaskCancelled).  The tasks are the Manager's (its queue, what its workers were
    handed, the results going back): reached through ``m``, which only this thread touches."""

    def __init__(self, manager: Manager) -> None:
        self.m = manager
        self.doomed: set[int] = set()  # to cancel (Withdraw with kill): kill the worker that runs one
        self.killed: set[int] = set()  # the task each worker we killed to cancel was running

    def withdraw(self, msg: protocol.Withdraw) -> None:
        """Give back the asked-for tasks still in our queue; those handed to a worker may have started: they stay,
        but for those waiting there unclaimed, which come back first (Lookahead.give_back; not for a Withdraw
        with kill, whose tasks at a worker are killed as it reaches them: kill_doomed).

        Exact because only this thread hands tasks to workers: a task in ``m.queue`` has not left
        this process (a dead worker's unstarted tasks come back here too, see account_for_dead_worker).
        """
        m = self.m
        wanted = set(msg.ids)
        withdrawn: list[int] = []
        if not msg.kill:  # those waiting unclaimed at a worker come back to the queue first (to be stolen)
            m.lookahead.give_back(wanted)
        if wanted and m.queue:
            kept: deque[Task] = deque()
            for task in m.queue:
                if task[0] in wanted:
                    withdrawn.append(task[0])
                else:
                    kept.append(task)
            m.queue = kept
        if m.wide.waiting:
            withdrawn += m.wide.withdraw(wanted)
        started = [tid for tid in msg.ids if tid in m.handed]
        log.debug("withdraw %d tasks: %d withdrawn, %d started", len(wanted), len(withdrawn), len(started))
        m._send(protocol.Withdrawn(req=msg.req, withdrawn=withdrawn, started=started))
        if msg.kill and started:
            self.doomed.update(started)
            self.kill_doomed()

    def kill_doomed(self) -> None:
        """Kill each worker running a task to cancel; forget those that finished.

        A doomed task still behind others in its worker's batch is looked at again every
        DOOMED_CHECK_SECONDS: the worker writes its id in the shared word as it starts it.
        The kill is SIGKILL (a task may ignore anything else); _reap then fails the task with
        TaskCancelled, sends the batch's unstarted tasks back to the queue, and replaces the worker.
        """
        m = self.m
        self.doomed.intersection_update(m.handed)  # a task with a result (or lost) is past cancelling
        for slot in m.workers.slots:
            started = slot.started_task()
            if started in self.doomed and started in slot.tasks and slot.proc is not None:
                log.info("cancelling task %d: killing worker %d (pid %d)", started, slot.rank, slot.proc.pid)
                slot.proc.kill()
                self.doomed.discard(started)
                self.killed.add(started)

    def account_for_dead_worker(self, slot: _WorkerSlot, how: str, code: int) -> None:
        """Tasks of a dead worker's batch without a result: the one it ran and those before it fail
        (they started: they must not run again), those after it go back to the queue (they never did).
        """
        m = self.m
        started = slot.started_task()
        ran = slot.tasks.index(started) + 1 if started in slot.tasks else 0
        crashed, unstarted = slot.tasks[:ran], slot.tasks[ran:]
        if self.doomed:  # a task to cancel that never started ends here (the interchange waits for its result)
            for tid in [t for t in unstarted if t in self.doomed]:
                unstarted.remove(tid)
                m.handed.pop(tid, None)
                self.doomed.discard(tid)
                m.done_ids.append(tid)
                m.done_payloads.append(serialize.pack_exception(TaskCancelled("task cancelled before it started"), ""))
        m.queue.extendleft(reversed([m.handed.pop(t) for t in unstarted]))
        host = socket.gethostname()
        assert slot.proc is not None
        where = f"worker {slot.rank} (pid {slot.proc.pid}) of pool {m.cfg.manager_id} on host {host} {how}"
        for tid in crashed:
            m.handed.pop(tid, None)
            if tid == started and tid in self.killed:
                self.killed.discard(tid)
                m.done_ids.append(tid)
                m.done_payloads.append(serialize.pack_exception(TaskCancelled(
                    f"task cancelled while it ran: {where} (killed to stop it; a new worker took its place)"), ""))
                continue
            if tid == started:
                text = (f"{where} while running this task. This can be a crash in native code, os._exit(), "
                        "or the kernel's OOM killer; check the task's memory use")
            else:
                text = f"{where} after this task finished but before its result was sent: the result is lost"
            err = WorkerLost(text, rank=slot.rank, pool=m.cfg.manager_id, host=host, exit_code=code)
            m.done_ids.append(tid)
            m.done_payloads.append(serialize.pack_exception(err, ""))
        log.warning("worker %d %s while running task %d; %d tasks of its batch go back to the queue",
                    slot.rank, how, started, len(unstarted))


class Lookahead:
    """Hands a busy worker its next batch ahead of time, and takes it back if the batch before it runs long.

    Why: a worker that finishes a batch otherwise waits for its results to reach us and its next
    batch to come back, about 0.7 ms on a 2-core VM (ProcessPoolExecutor's workers find theirs in
    a shared pipe: 0.3 ms), and every short task paid it (W4, W6).  A batch, not one task: each
    message costs every process on the way a wake-up, and with tasks of 1 ms (W6) one message a
    task kept two cores busy with little else (the client, the interchange, the pools and the
    workers used 2.2 s of CPU for W6's 2,016 tasks, 1.2-1.3 s with batches handed ahead).  Tasks given ahead
    cost balance only while they wait behind a long one, so: one batch waits at a worker at most
    (``_batch_size``: about BATCH_SECONDS of work), only while tasks are short
    (prefetch.LOOKAHEAD_TASK), and what waits LOOKAHEAD_PATIENCE tasks' time goes back to the
    front of our queue, for the next worker free.

    Taking back is exact.  For each task it may take back (those handed ahead, and each but the
    first of a batch: protocol.TasksAhead), the pool writes a byte into the worker's claim pipe;
    the worker reads one before it starts such a task (before it writes the shared word), in the
    order they were handed.  So the bytes in the pipe are as many as the last tasks not claimed,
    and the pool takes back the last n by reading n bytes itself: the kernel gives each byte to one
    reader, so either the worker has a task or we do.  A worker that finds no byte skips the rest of
    that batch and says so (a Withdrawn: one a batch); until it said so for every task taken back it
    is handed nothing, or a new byte could stand in for one taken.  A task to cancel
    (Cancels.doomed) is never taken back, nor one handed before it.

    The other way, results: a worker holds those of its batch's short tasks to send them with the next
    (worker.Held); behind a task that runs long, we read them where it keeps them and send them on
    (``_collect``), and drop them when the worker sends them itself (``fresh``).
    """

    def __init__(self, manager: Manager) -> None:
        self.m = manager
        # Some worker may have a task waiting (set by Manager._hand; cleared when a look finds none): the
        # loop's every turn looks, and with one task at a time (W2) the looks showed in the round trip.
        self.armed = False

    def give(self) -> None:
        """To each busy worker running its last batch, its next one (while tasks are short).  None while a worker
        starts: it will be free at once, and what we hand ahead would wait behind a running task (a pool whose
        second worker was still starting ran a later task there while the one handed ahead waited)."""
        m = self.m
        if not m.queue or not 0 < m.task_seconds < prefetch.LOOKAHEAD_TASK or m.wide.gpus:
            return
        if any(not s.ready and s.link is not None for s in m.workers.slots):
            return
        for slot in m.workers.slots:
            if not m.queue:
                return
            if (0 < len(slot.tasks) <= slot.last_hand and not slot.taken_back and slot.wide is None
                    and not slot.lent and slot.ready and slot.link is not None):
                m._hand(slot, [m.queue.popleft() for _ in range(m._batch_size())], ahead=True)

    def _patience(self) -> float:
        return max(LOOKAHEAD_PATIENCE * self.m.task_seconds, LOOKAHEAD_MIN_WAIT)

    @staticmethod
    def _waiting(slot: _WorkerSlot) -> bool:
        """A task waits at this worker behind the one it runs, and may not be claimed yet.  Some taken back
        before may be unseen yet: we may take more (the bytes still count the tasks not claimed), and hand it
        nothing until it saw them."""
        return len(slot.tasks) > 1 and slot.unclaimed > 0

    @staticmethod
    def _holding(slot: _WorkerSlot) -> bool:
        """It may hold results of tasks before the one it runs (worker.Held), and we have not looked."""
        return len(slot.tasks) > 1 and not slot.peeked

    def due(self) -> float:
        """When the soonest worker is to be looked at: tasks waiting there, results held (inf: neither)."""
        if not self.armed:
            return math.inf
        patience = self._patience()
        dues = [s.sent_at + (HELD_WAIT if self._holding(s) else patience)
                for s in self.m.workers.slots if self._holding(s) or self._waiting(s)]
        self.armed = bool(dues)
        return min(dues) if dues else math.inf

    def check(self, now: float) -> None:
        """At each worker whose current task has run long: send on the results it holds, and take back what
        waits there, to the front of our queue."""
        if not self.armed:
            return
        if any([self._collect(s) for s in self.m.workers.slots if self._holding(s) and now - s.sent_at > HELD_WAIT]):
            self.m._flush_results()  # now: the loop flushed before it came here
        patience = self._patience()
        late = [(s, len(s.tasks) - 1) for s in self.m.workers.slots if now - s.sent_at > patience]
        if self._take_back(late):
            self.m._dispatch()  # now: nothing else may wake the loop soon

    def _collect(self, slot: _WorkerSlot) -> bool:
        """Send on the results a worker holds behind a task that runs long, read where it keeps them (worker.Held).
        In W6 a worker held two results of 1 ms behind a task of 2 s: the interchange, counting three tasks
        at that pool, sent it nothing while its other worker idled, 60-180 ms in one run of two."""
        slot.peeked = True
        if slot.started is None:
            return False
        held = [(tid, blob) for tid, blob in worker.peek_held(slot.started) if tid in slot.tasks and tid not in slot.early]
        if not held:
            return False
        m, ids = self.m, {tid for tid, _ in held}
        slot.tasks = [tid for tid in slot.tasks if tid not in ids]
        slot.early |= ids
        for tid, blob in held:
            m.handed.pop(tid, None)
            m.done_ids.append(tid)
            m.done_payloads.append(blob)
        log.debug("sent on %d results worker %d holds", len(held), slot.rank)
        return True

    def fresh(self, slot: _WorkerSlot, msg: protocol.Results) -> protocol.Results:
        """The worker's results, but those we sent on already (``_collect``).  It has news: look at it again."""
        slot.peeked = False
        if slot.early and any(tid in slot.early for tid in msg.ids):
            keep = [i for i, tid in enumerate(msg.ids) if tid not in slot.early]
            slot.early.difference_update(msg.ids)
            msg = protocol.Results(protocol.u64_array(msg.ids[i] for i in keep), [msg.payloads[i] for i in keep])
            if not keep:
                slot.sent_at = time.monotonic()  # news all the same: its next task started since
        slot.unclaimed = max(0, min(slot.unclaimed, len(slot.tasks) - len(msg.ids)))  # a task with a result was claimed
        if len(slot.tasks) > len(msg.ids) + 1:
            self.armed = True
        return msg

    def handed(self, slot: _WorkerSlot, n: int, ahead: bool) -> None:
        """The manager handed ``slot`` ``n`` tasks (``ahead``: behind the ones it runs)."""
        slot.last_hand = n
        if not ahead:
            slot.robbed = False
        if len(slot.tasks) > 1:
            self.armed = True  # a task waits at this worker: look again

    def reclaim(self, idle: deque[int]) -> None:
        """Workers are idle and our queue cannot keep them busy: what waits at as many busy workers comes back
        (the oldest first; all that waits there, for the idle ones to share).  Not while the queue can: the
        worker tasks were taken from waits a hop for its next ones, and is idle in turn when another worker
        has some waiting.  In W4 (tasks of 50 ms) every task given ahead was taken back that way, once it
        had started, and each worker waited 1.3 ms between tasks instead of 0.4.  For the same reason a
        worker idle because we took tasks back from it (``robbed``) waits for the next ones to come rather
        than take some back in turn.  What waits at a worker behind one that runs long is still taken back
        (``check``)."""
        m = self.m
        surplus = len(idle) - len(m.queue)  # idle workers that will get nothing from the queue
        if not self.armed or surplus <= 0:
            return
        takers = min(surplus, sum(not m.workers.slots[r].robbed for r in idle))
        waiting = sorted((s for s in m.workers.slots if self._waiting(s)), key=lambda s: s.tasks[-1])
        self._take_back([(s, len(s.tasks) - 1) for s in waiting[:takers]])

    def give_back(self, wanted: set[int]) -> None:
        """Take back, to the front of our queue, each wanted task waiting at a worker that has not claimed it (and
        what waits after it: bytes come back from the end), for a Withdraw to find it there.  Else a task handed
        ahead was never stolen: the interchange does not ask a pool again whose answer moved nothing, and W6 at
        prefetch 256 lost 1.6 s in 4 rounds of 5 (its last long task waited behind another long one)."""
        asks = []
        for slot in self.m.workers.slots:
            first = next((i for i in range(1, len(slot.tasks)) if slot.tasks[i] in wanted), None)
            if first is not None:
                asks.append((slot, len(slot.tasks) - first))
        self._take_back(asks)

    def _take_back(self, wanted: list[tuple[_WorkerSlot, int]]) -> bool:
        """Take back up to n of the last tasks of each (slot, n) that waits, none to cancel nor before one;
        back to the queue's front, in their order (ids grow with submission).  True if any came back."""
        m = self.m
        back = []
        for slot, n in wanted:
            if not self._waiting(slot):
                continue
            tail = slot.tasks[len(slot.tasks) - min(n, len(slot.tasks) - 1):]
            doomed = [i for i, tid in enumerate(tail) if tid in m.cancels.doomed]
            n = len(tail) - (doomed[-1] + 1 if doomed else 0)  # only those after the last task to cancel
            got = m.workers.take_back(slot, n) if n else 0
            if got:
                ids = slot.tasks[-got:]
                del slot.tasks[-got:]
                slot.last_hand = max(0, slot.last_hand - got)
                slot.taken_back.update(ids)
                back += [m.handed.pop(tid) for tid in ids]
                log.debug("took back task %s from worker %d", ", ".join(map(str, ids)), slot.rank)
        m.queue.extendleft(sorted(back, key=lambda t: t[0], reverse=True))
        return bool(back)

    def seen(self, slot: _WorkerSlot, ids: Sequence[int]) -> None:
        """The worker skipped these (we took them back): once it saw every one, it may be handed tasks again."""
        slot.taken_back.difference_update(ids)
        if slot.taken_back:
            return
        if not slot.tasks and slot.wide is None and not slot.lent and slot.ready and slot.link is not None:
            slot.robbed = True
            self.m.workers.idle.append(slot.rank)


class Manager:
    """The pool's loop (``run``: the four steps of the module's docstring) and its tasks: the queue, the
    batch each worker holds, the results going back, and what a dead worker's batch becomes."""

    def __init__(self, cfg: PoolConfig) -> None:
        self.cfg = cfg
        self.identity = cfg.manager_id.encode()
        count = worker_count(cfg.max_workers, cfg.cores_per_worker, cfg.mem_per_worker)
        self.count, seats = placement.place(cfg.cpu_affinity, cfg.accelerators, count)
        self.ctx = zmq.Context()
        self.queue: deque[Task] = deque()
        self.handed: dict[int, Task] = {}  # at a worker, no result yet
        self.functions: dict[int, protocol.Blob] = {}
        self.done_ids: list[int] = []
        self.done_payloads: list[protocol.Blob] = []
        self.cancels = Cancels(self)
        self.lookahead = Lookahead(self)
        self.task_seconds = 0.0  # moving average; 0 = not known yet, so batches start at one task
        self.stopping = False
        self.exit_code = 0
        self.last_sent = 0.0
        self.last_heard = self.started = time.monotonic()
        self.registered = self.unanswered_told = False
        # drain_period: when to stop taking tasks (the interchange stops us once we hold none).
        self.drain_at = self.last_heard + cfg.drain_period if cfg.drain_period is not None else math.inf

        self.poller = zmq.Poller()
        self.link = poollink.connect(cfg.task_url, self.ctx, self.identity, cfg.cert_dir, self.poller)
        self.workers = Workers(cfg, self.count, self.poller, seats)
        self.wide = Wide(self.workers)
        if cfg.mpi_launcher:
            from . import mpi  # only in MPI mode

            self.workers.extra_env = mpi.pool_environment(cfg.mpi_launcher, os.path.join(cfg.logdir, "mpi-nodes"))
            log.info("MPI mode (%s): the block's nodes are %s", cfg.mpi_launcher, self.workers.extra_env[mpi.NODES_ENV])
        self._monitor = _monitor(cfg, self.count, self.workers)  # monitoring.reporters.PoolReporter, or None

    # -- the loop ---------------------------------------------------------

    def run(self) -> int:
        procs.become_subreaper()
        log.info(
            "manager %s (block %s) on %s: %d workers, prefetch %s, interchange %s",
            self.cfg.manager_id, self.cfg.block_id, socket.gethostname(), self.count,
            prefetch.flag(self.cfg.prefetch_capacity), self.cfg.task_url,
        )
        try:
            self._register()
            for slot in self.workers.slots:
                self.workers.start(slot)
            while not self.stopping:
                events = dict(self.poller.poll(self._timeout_ms()))
                readable, writable, dead = self.workers.lookup(events)
                if self.link.key in events:
                    self._read_interchange(events[self.link.key])
                for slot in readable:
                    for msg in self.workers.read(slot):
                        self._on_worker_message(slot, msg)
                for slot in writable:
                    self.workers.flush(slot)
                for slot in dead:
                    self._reap(slot)
                self._dispatch()
                self._flush_results()
                self._keep_time()
        except _Stop:
            log.info("manager stopping on a signal")
        finally:
            self._shutdown()
        return self.exit_code

    def _register(self) -> None:
        reg = protocol.Register(
            manager_id=self.cfg.manager_id,
            block_id=self.cfg.block_id,
            hostname=socket.gethostname(),
            pid=os.getpid(),
            worker_count=self.count,
            prefetch_capacity=self.cfg.prefetch_capacity,
            htex_version=__version__,
            python_version=platform.python_version(),
            # What tasks with cores or memory are placed by (resources.py): a worker slot stands for its share.
            cores=max(1, math.floor(self.count * self.cfg.cores_per_worker)),
            memory_mb=int(self.count * self.cfg.mem_per_worker * 1024 if self.cfg.mem_per_worker
                          else psutil.virtual_memory().available / 2**20),
            accelerators=self.cfg.accelerators[: self.count],
        )
        self._send(reg)

    def _timeout_ms(self) -> int:
        now = time.monotonic()
        due = min(self.last_sent + self.cfg.heartbeat_period, self.last_heard + self.cfg.heartbeat_threshold,
                  self.drain_at)
        if self.cancels.doomed:
            due = min(due, now + DOOMED_CHECK_SECONDS)
        due = min(due, self.lookahead.due())
        if not self.unanswered_told:
            due = min(due, self.started + REGISTER_PATIENCE)  # to say so on time if nobody answers
        return max(0, int((due - now) * 1000) + 1)

    # -- step 1: the interchange -------------------------------------------

    def _read_interchange(self, events: int) -> None:
        try:
            for frames in self.link.messages(events):
                self._from_interchange(frames)
                if self.stopping:
                    return
        except poollink.Closed as exc:
            self._interchange_gone(str(exc))

    def _from_interchange(self, frames: Sequence[protocol.Blob]) -> None:
        self.last_heard = time.monotonic()
        msg = protocol.decode(frames)  # the interchange is trusted once connected
        if isinstance(msg, protocol.Tasks):
            self.functions.update(msg.functions)
            self.queue.extend(zip(msg.ids, msg.fn_keys, msg.payloads, strict=False))
        elif isinstance(msg, protocol.Withdraw):
            self.cancels.withdraw(msg)
        elif isinstance(msg, protocol.TaskNeeds):
            self.wide.expect(msg)
        elif isinstance(msg, protocol.Shutdown):
            log.info("interchange asked us to stop: %s", msg.reason)
            self._stop()
        elif isinstance(msg, protocol.Rejected):
            log.error("interchange refused this pool: %s", msg.reason)
            print(f"htex pool: the interchange refused this pool: {msg.reason}", file=sys.stderr)
            self._stop(EXIT_REJECTED)
        elif isinstance(msg, protocol.Registered):
            self.registered = True
            log.info("registered with the interchange")

    def _interchange_gone(self, why: str) -> None:
        log.error("%s: it stopped or died; stopping", why)
        print(f"htex pool: {why} at {self.cfg.task_url}; stopping", file=sys.stderr)
        self._stop(EXIT_INTERCHANGE_LOST)

    # -- step 2: the workers -------------------------------------------------

    def _on_worker_message(self, slot: _WorkerSlot, msg: protocol.Message) -> None:
        if isinstance(msg, protocol.Results):
            msg = self.lookahead.fresh(slot, msg)
            if not msg.ids:
                return  # nothing to account for (and nothing to divide by)
            self._measure(slot, len(msg.ids))
            del slot.tasks[: len(msg.ids)]  # results come back in the order tasks went out
            for tid in msg.ids:
                self.handed.pop(tid, None)
            if slot.tasks or slot.taken_back:
                pass  # busy, or to be handed nothing before it says it saw a task taken back
            elif slot.wide is not None:
                self.wide.finished(slot)
            else:
                self.workers.idle.append(slot.rank)
            self.done_ids.extend(msg.ids)
            self.done_payloads.extend(msg.payloads)
        elif isinstance(msg, protocol.Withdrawn):
            self.lookahead.seen(slot, msg.withdrawn)
        elif isinstance(msg, protocol.WorkerReady):
            self.workers.ready(slot, msg.pid)
            if slot.wide is not None:
                self._hand(slot, [self.wide.start(slot)])

    def _measure(self, slot: _WorkerSlot, n: int) -> None:
        """Keep a moving average of how long a task takes (send to result, per task)."""
        now = time.monotonic()
        sample = (now - slot.sent_at) / n
        slot.sent_at = now
        self.task_seconds = sample if self.task_seconds <= 0 else 0.8 * self.task_seconds + 0.2 * sample

    def _reap(self, slot: _WorkerSlot) -> None:
        """A worker exited: fail its task with WorkerLost and start another in its place."""
        code, messages = self.workers.reap(slot)
        for msg in messages:  # what it sent before it died (results) still counts
            self._on_worker_message(slot, msg)
        how = procs.describe_exit(code)
        if slot.rank in self.workers.idle:
            self.workers.idle.remove(slot.rank)
        if slot.tasks:
            self.cancels.account_for_dead_worker(slot, how, code)
        elif slot.restart:
            log.debug("worker %d stopped, to start on another seat", slot.rank)
        else:
            log.warning("worker %d %s", slot.rank, how)
        self.cancels.killed.intersection_update(self.handed)  # a task killed to cancel that finished first: forget it
        if slot.wide is not None:
            self.wide.died(slot, self.queue)
        if self.stopping or self.workers.replace(slot):
            return
        log.error("workers die before they start (%s); giving up", how)
        print(f"htex pool: workers cannot start on this node ({how}); see {self.cfg.logdir}", file=sys.stderr)
        self._stop(EXIT_NO_WORKERS)

    # -- step 3: hand out tasks ---------------------------------------------

    def _batch_size(self) -> int:
        """Enough tasks for about BATCH_SECONDS of work, and no more than a fair share of the queue."""
        by_time = int(BATCH_SECONDS / self.task_seconds) if self.task_seconds > 0 else 1
        fair = -(-len(self.queue) // self.count)
        return max(1, min(WORKER_BATCH, by_time, fair))

    def _dispatch(self) -> None:
        """Give each idle worker its share of the queue, oldest tasks first."""
        if self.wide.gpus:  # tasks with gpus > 1 are here: they wait for their workers apart
            self.queue = self.wide.divert(self.queue)
            self.wide.seat()
        idle = self.workers.idle
        self.lookahead.reclaim(idle)
        batches = []
        while idle and self.queue:
            slot = self.workers.slots[idle.popleft()]
            batches.append((slot, [self.queue.popleft() for _ in range(self._batch_size())]))
        for slot, batch in batches:
            self._hand(slot, batch)
        self.lookahead.give()

    def _hand(self, slot: _WorkerSlot, batch: list[Task], ahead: bool = False) -> None:
        """Send a worker its batch (with the functions it has not seen); ``ahead``: behind what it runs (Lookahead)."""
        ids = [t[0] for t in batch]
        if ahead:
            slot.tasks += ids
        else:
            slot.tasks, slot.sent_at = ids, time.monotonic()
        self.lookahead.handed(slot, len(ids), ahead)
        functions = {}
        for task in batch:
            self.handed[task[0]] = task
            if task[1] not in slot.functions:
                functions[task[1]] = self.functions[task[1]]
                slot.functions.add(task[1])
        kind = protocol.TasksAhead if ahead else protocol.Tasks
        msg = kind(protocol.u64_array(ids), protocol.u64_array(t[1] for t in batch), [t[2] for t in batch], functions)
        self.workers.send_tasks(slot, len(ids) if ahead else len(ids) - 1, msg.encode())  # the claims: see TasksAhead
        if self._monitor is not None:
            self._monitor.started(ids, slot.rank)

    def _flush_results(self) -> None:
        if self.done_ids:
            self._send(protocol.Results(protocol.u64_array(self.done_ids), self.done_payloads))
            self.done_ids, self.done_payloads = [], []

    # -- step 4: time ----------------------------------------------------------

    def _keep_time(self) -> None:
        now = time.monotonic()
        if now - self.last_heard > self.cfg.heartbeat_threshold:
            log.error("no word from the interchange for %.0f s: it is gone; stopping", now - self.last_heard)
            hint = "" if self.cfg.cert_dir else " (if the executor is encrypted, give its keys: --cert_dir)"
            print(f"htex pool: no word from the interchange at {self.cfg.task_url} for "
                  f"{now - self.last_heard:.0f} s; stopping{hint}", file=sys.stderr)
            self._stop(EXIT_INTERCHANGE_LOST)
        elif now - self.last_sent >= self.cfg.heartbeat_period:
            self._send(protocol.Heartbeat())
            self.workers.reap_orphans()
        if self.cancels.doomed:
            self.cancels.kill_doomed()
        self.lookahead.check(now)
        if not self.unanswered_told and now - self.started >= REGISTER_PATIENCE:
            self.unanswered_told = True
            if not self.registered:  # not silent: the likely cause, once, then go on waiting
                self._say_unanswered()
        if now >= self.drain_at:
            log.info("drain time (drain_period %s s after start): asking for no new task", self.cfg.drain_period)
            self._send(protocol.Draining())
            self.drain_at = math.inf

    def _say_unanswered(self) -> None:
        text = (f"no answer to our registration from the interchange at {self.cfg.task_url} after "
                f"{REGISTER_PATIENCE:.0f} s; still waiting. If it serves many pools, it may be out of file "
                "descriptors: its log (interchange.log) says so")
        log.error("%s", text)
        print(f"htex pool: {text}", file=sys.stderr)

    def _send(self, msg: protocol.Message) -> None:
        self.last_sent = time.monotonic()
        if self.stopping and self.exit_code == EXIT_INTERCHANGE_LOST:
            return
        try:
            self.link.send(msg.encode())
        except poollink.Closed as exc:
            self._interchange_gone(str(exc))

    # -- shutdown ----------------------------------------------------------------

    def _stop(self, exit_code: int = 0) -> None:
        """Leave the loop, and let the shutdown finish: from now on a TERM (the provider's, to the whole
        block) must not cut it short, or what tasks started would be left running."""
        self.stopping = True
        self.exit_code = exit_code
        _ignore_stop_signals()

    def _shutdown(self) -> None:
        """Stop workers (TERM, then KILL after a grace period) and what tasks left running, close sockets."""
        self._stop(self.exit_code)
        self.workers.stop()
        self.link.close()
        if self._monitor is not None:
            self._monitor.stopped(f"the pool stopped (exit code {self.exit_code})")
        self.ctx.destroy(linger=500)
        log.info("manager %s stopped", self.cfg.manager_id)


def _monitor(cfg: PoolConfig, count: int, workers: Workers) -> Any:
    """The pool's monitoring reporter, started, if the launch command exported HTEX_MONITOR_*."""
    if not os.environ.get("HTEX_MONITOR_URL"):
        return None
    from .monitoring.reporters import pool_reporter_from_env

    reporter = pool_reporter_from_env(cfg.manager_id, cfg.task_url, cfg.cert_dir)
    if reporter is not None:
        reporter.workers = lambda: [(s.rank, s.proc.pid) for s in workers.slots if s.proc is not None]
        reporter.info(cfg.block_id, count)
    return reporter


def _ignore_stop_signals() -> None:
    """SIGTERM and SIGINT no longer interrupt: the pool is stopping already.

    Else a pool that the interchange has just told to stop gets its block's
    TERM in the middle of its shutdown, and leaves what its tasks started
    running.  The shutdown is bounded (STOP_GRACE twice, for workers and then
    for what tasks left), and a provider KILLs what outlives its own grace.
    """
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        signal.signal(signal.SIGINT, signal.SIG_IGN)


def main(argv: list[str] | None = None) -> int:
    args = poolcmd.build_parser().parse_args(argv)
    manager_id = args.uid or uuid.uuid4().hex[:12]
    logdir = os.path.join(args.logdir, f"block-{args.block_id}", manager_id)
    os.makedirs(logdir, exist_ok=True)
    logging.basicConfig(
        filename=os.path.join(logdir, "manager.log"),
        level=logging.DEBUG if args.debug else logging.INFO,
        format="%(asctime)s %(process)d %(levelname)s %(name)s: %(message)s",
    )

    def on_signal(signum: int, frame: object) -> None:
        raise _Stop()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    cfg = PoolConfig(
        task_url=poolcmd.resolve_url(args),
        manager_id=manager_id,
        block_id=args.block_id,
        max_workers=args.max_workers,
        cores_per_worker=args.cores_per_worker,
        mem_per_worker=args.mem_per_worker,
        prefetch_capacity=args.prefetch_capacity,
        heartbeat_period=args.hb_period,
        heartbeat_threshold=args.hb_threshold,
        logdir=logdir,
        debug=args.debug,
        cert_dir=args.cert_dir or os.environ.get("HTEX_CERT_DIR") or None,
        cpu_affinity=args.cpu_affinity, accelerators=args.accelerators, drain_period=args.drain_period,
        mpi_launcher=args.mpi_launcher if args.enable_mpi_mode else None,
    )
    try:
        return Manager(cfg).run()
    except PlacementError as exc:
        log.error("%s", exc)
        print(f"htex pool: {exc}", file=sys.stderr)
        return EXIT_BAD_PLACEMENT
    except poollink.Closed as exc:  # a unix:// interchange that is gone already
        log.error("%s", exc)
        print(f"htex pool: {exc}", file=sys.stderr)
        return EXIT_INTERCHANGE_LOST
    except _Stop:
        return 0


if __name__ == "__main__":
    sys.exit(main())
