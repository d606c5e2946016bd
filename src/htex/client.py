"""The executor's side of the wire: the interchange process, and the one thread that talks to it.

::

    user threads           ClientThread (owns the socket)          interchange process
    submit() ---Outbox---> send TASKS batches  ------------------> queue, dispatch to pools
    Future   <--settle---- RESULTS / TasksFailed  <--------------- results from pools
    request() <-Future---- StatusReply / Done / Failed             (typed control messages)
                           Heartbeat both ways; the pidfd of the interchange

``submit()`` puts a task in the Outbox and, if the thread is not already
awake, wakes it through a pipe; the thread sends everything waiting as one
batch.  Under load many tasks share one message and one wake-up; when idle a
task leaves at once.

The link to the interchange is a socketpair made here, whose other end the
interchange inherits: framed messages (``framing.py``) with no ZeroMQ I/O
thread on either side, and no name anywhere, so no other process can reach
it.  The thread owns its resources: the link, the wake-up pipe and the
interchange's pidfd.  When it
ends (asked to, or the interchange died, or a bug) it fails every future
still pending and closes what it owns.
"""

from __future__ import annotations

import logging
import os
import socket
import subprocess
import sys
import threading
import time
from array import array
from collections.abc import Callable, Iterator
from concurrent.futures import Future
from typing import Any

import zmq

from . import cancel, framing, procs, protocol, serialize, shm
from .errors import CommandFailed, InterchangeLost, InternalError, ManagerLost, ProtocolError, TaskLost
from .inflight import Inflight, Lifecycle, settle, shutdown_error

log = logging.getLogger("htex.executor")

READY_SECONDS = 30.0  # for the interchange to start and say Ready
INTERCHANGE_STOP_SECONDS = 2.0  # for the interchange to stop when asked, before it is killed
THREAD_JOIN_SECONDS = 5.0  # for the I/O thread to finish at shutdown
_BATCH = 1024  # tasks per message to the interchange, at most
# Bytes of payload per message, about: the interchange keeps a task's payload as a view of
# the frame it came in, so one task still running keeps its whole message in memory.
_BATCH_BYTES = 1 << 20
_LOST = {protocol.LostReason.MANAGER_LOST: ManagerLost}
# A task as the Outbox holds it: (id, function key, payload, priority: protocol.NO_PRIORITY for none).
Task = tuple[int, int, bytes, float]


class InterchangeProcess:
    """The interchange, a child process: spawned with its configuration on stdin, stopped in order."""

    def __init__(self, config: protocol.InterchangeConfig, pass_fds: list[int], logdir: str) -> None:
        self.stderr_path = os.path.join(logdir, "interchange.stderr")
        with open(self.stderr_path, "wb") as err:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "htex.interchange"],
                stdin=subprocess.PIPE, stdout=err, stderr=err, pass_fds=pass_fds,
                start_new_session=True,  # the terminal's Ctrl-C is ours; we stop it in order
            )
        # On stdin, not the command line: any local user can read /proc/<pid>/cmdline.
        assert self.proc.stdin is not None
        with self.proc.stdin as pipe:
            pipe.write(config.to_json())
        self.logdir = logdir

    @property
    def pid(self) -> int:
        return self.proc.pid

    def stop(self, grace: float = INTERCHANGE_STOP_SECONDS) -> None:
        """Wait up to ``grace`` s for it to exit (it was asked to, over the socket), then kill it."""
        try:
            self.proc.wait(grace)
        except subprocess.TimeoutExpired:
            log.warning("the interchange did not stop in %g s; killing it", grace)
            self.proc.kill()
            self.proc.wait()

    def describe_exit(self) -> str:
        how = procs.describe_exit(self.proc.poll())
        tail = procs.tail(self.stderr_path)
        return f"it {how}" + (f"; its stderr ends with:\n{tail}" if tail else f"; see {self.logdir}/interchange.log")


class Outbox:
    """What the user's threads hand to the I/O thread: tasks, the functions they need, control messages.

    It holds the write end of the wake-up pipe, under its lock: the I/O thread closes it when it
    ends, and a write after that must not land in whatever file reused the descriptor.

    A task submitted while the I/O thread has nothing to send and no other task is in flight
    (``quiet()``: a caller waiting for each result in turn, not on the I/O thread) goes straight
    onto the link from the caller's thread, under the lock: no thread of ours is woken on the way
    out (W2 measured it).  Under load tasks still wait for the I/O thread, which sends them in
    batches, and a task never passes one taken and not yet sent (``sending``).
    """

    def __init__(self, wake_fd: int, link: framing.StreamLink, quiet: Callable[[], bool]) -> None:
        self.lock = threading.Lock()
        self.wake_fd = wake_fd
        self.link = link  # written under the lock, by whichever thread sends
        self.quiet = quiet
        self.sending = False  # the I/O thread took what waited and has not sent it all yet
        self.tasks: list[Task] = []
        self.ranked = False  # some task waiting has a priority: the batch carries them
        self.functions: dict[int, protocol.Blob] = {}
        self.control: list[protocol.Message] = []
        self.needs: dict[int, tuple[float, float, int]] = {}  # tasks with cores/memory/gpus: a TaskNeeds goes first
        self.awake = False  # a wake-up is on its way: no need for another

    def put(self, task: Task | None = None, function: tuple[int, bytes] | None = None,
            control: protocol.Message | None = None, needs: tuple[float, float, int] | None = None) -> None:
        """Queue, and wake the I/O thread unless a wake-up is on its way already (or send it now)."""
        with self.lock:
            if (task is not None and control is None and needs is None and not self.awake and not self.sending
                    and not self.link.closed and self.wake_fd >= 0 and self.quiet() and self._send_now(task, function)):
                return
            if needs is not None and task is not None:
                self.needs[task[0]] = needs
            if function is not None:
                self.functions[function[0]] = function[1]
            if task is not None:
                self.tasks.append(task)
                if task[3] == task[3]:  # not NaN: it has a priority
                    self.ranked = True
            if control is not None:
                self.control.append(control)
            if not self.awake:
                self.awake = True
                self._wake()

    def _send_now(self, task: Task, function: tuple[int, bytes] | None) -> bool:
        """Send one task from the caller's thread (the lock held); False if the interchange is gone."""
        ranked = task[3] == task[3]  # not NaN: it has a priority
        msg = protocol.Tasks(protocol.u64_array((task[0],)), protocol.u64_array((task[1],)), [task[2]],
                             dict((function,)) if function is not None else {},
                             array("d", (task[3],)) if ranked else None)
        try:
            if not self.link.send_now(msg.encode()):  # the rest goes when the socket has room
                self.awake = True
                self._wake()  # the I/O thread flushes it
        except OSError:
            return False  # queued instead: the I/O thread fails it when it sees the interchange's end
        return True

    def wake(self) -> None:
        with self.lock:
            self._wake()

    def _wake(self) -> None:
        if self.wake_fd >= 0:
            try:
                os.write(self.wake_fd, b"x")
            except BlockingIOError:
                pass  # the pipe has bytes waiting: the thread will wake

    def close(self) -> None:
        with self.lock:
            fd, self.wake_fd = self.wake_fd, -1
        os.close(fd)

    def withdraw(self, ids: set[int]) -> list[int]:
        """Take out the waiting tasks with these ids (cancelled before they left); return their ids."""
        with self.lock:
            if not ids or not self.tasks:
                return []
            kept = [t for t in self.tasks if t[0] not in ids]
            out = [t[0] for t in self.tasks if t[0] in ids]
            self.tasks = kept
            for tid in out:
                self.needs.pop(tid, None)
            return out

    def take(self) -> tuple[list[Task], bool, dict[int, protocol.Blob], list[protocol.Message]]:
        """Everything waiting: tasks, whether any of them has a priority, functions, control messages
        (a TaskNeeds first, for the tasks that have needs: the interchange must know before they come)."""
        with self.lock:
            taken = self.tasks, self.ranked, self.functions, self.control
            if self.needs:
                ids = list(self.needs)
                taken[3].insert(0, protocol.TaskNeeds(ids=ids, needs=[self.needs[i] for i in ids]))
                self.needs = {}
            self.tasks, self.ranked, self.functions, self.control = [], False, {}, []
            self.awake = False
            self.sending = True  # until sent(): a task sent now would pass them (and the functions they carry)
            return taken

    def sent(self) -> None:
        with self.lock:
            self.sending = False


class ClientThread(threading.Thread):
    """The I/O thread: sends the Outbox, completes futures from results, answers requests, keeps time."""

    def __init__(self, label: str, heartbeat_period: float, heartbeat_threshold: float,
                 lifecycle: Lifecycle, inflight: Inflight, arena: shm.Arena | None,
                 on_event: Callable[[protocol.Message], None], on_broken: Callable[[BaseException], None],
                 monitor: Any = None) -> None:
        super().__init__(name=f"htex-io-{label}", daemon=True)
        self.heartbeat_period = heartbeat_period
        self.heartbeat_threshold = heartbeat_threshold
        self.lifecycle = lifecycle
        self.inflight = inflight
        self.arena = arena
        self.on_event = on_event
        self.on_broken = on_broken
        self.monitor = monitor  # monitoring.reporters.ClientReporter, or None
        # Made here, before the interchange is spawned (it inherits the other end); from now on only
        # run() reads the link, and every thread that writes to it holds outbox.lock.
        ours, self._peer = socket.socketpair()
        self.interchange_fd = self._peer.fileno()
        self._poller = zmq.Poller()
        self._link = framing.StreamLink(ours, self._poller)
        self._wake_r, wake_w = os.pipe()
        os.set_blocking(self._wake_r, False)
        os.set_blocking(wake_w, False)
        # Not from this thread (a done-callback that submits): its tasks leave when the callback returns,
        # in one batch, and until then cancel() finds them in the Outbox.
        self.outbox = Outbox(wake_w, self._link, lambda: len(inflight) <= 1 and not self.is_current())
        self.ready = threading.Event()
        self.start_error: BaseException | None = None
        self.process: InterchangeProcess | None = None
        self._replies: dict[int, Future[Any]] = {}  # under outbox.lock: request() adds, the loop settles
        self._closed = False
        self._req = 0
        self._stopping = False
        self._last_heard = self._last_sent = self._next_trim = 0.0
        self._pidfd = -1

    # -- from other threads ------------------------------------------------------

    def spawn_interchange(self, config: protocol.InterchangeConfig, pass_fds: list[int],
                          logdir: str) -> InterchangeProcess:
        """Start the interchange, watch it (its pidfd), and start the loop."""
        try:
            self.process = InterchangeProcess(config, [*pass_fds, self.interchange_fd], logdir)
        finally:
            self._peer.close()  # the interchange's now: its death must end our stream
        self._pidfd = os.pidfd_open(self.process.pid)
        self.start()
        return self.process

    def wait_ready(self) -> None:
        """Until the interchange says Ready; raises InterchangeLost if it died or stayed silent."""
        self.ready.wait(READY_SECONDS + THREAD_JOIN_SECONDS)  # the thread itself gives up at READY_SECONDS
        if self.start_error is not None:
            raise self.start_error

    def abandon(self) -> None:
        """start() failed: kill the interchange, stop the loop (or close what a loop never ran for)."""
        if self.process is not None and self.process.proc.poll() is None:
            self.process.proc.kill()
            self.process.proc.wait()
        if self.is_alive():
            self.stop()
            self.join(READY_SECONDS)
        elif self.ident is None:
            self.discard()

    def send(self, task: Task | None = None, function: tuple[int, bytes] | None = None,
             control: protocol.Message | None = None, needs: tuple[float, float, int] | None = None) -> None:
        self.outbox.put(task, function, control, needs)

    def request(self, make: Callable[[int], protocol.Message]) -> Future[Any]:
        """Send the control message ``make(req)``; the future gets the interchange's answer."""
        fut: Future[Any] = Future()
        with self.outbox.lock:
            closed = self._closed
            self._req += 1
            req = self._req
            if not closed:
                self._replies[req] = fut
        if closed:  # nobody would ever answer
            settle(fut, False, shutdown_error())
        else:
            self.send(control=make(req))
        return fut

    def stop(self) -> None:
        self._stopping = True
        self.outbox.wake()

    def stop_interchange(self) -> None:
        """Ask the interchange to stop (it tells its pools), and kill it after INTERCHANGE_STOP_SECONDS."""
        if self.process is not None and self.process.proc.poll() is None:
            self.send(control=protocol.Shutdown(reason="client shutdown"))
            self.process.stop()

    def close(self) -> None:
        """Stop the loop: it fails what is still pending with ExecutorShutdown and closes what it owns."""
        self.stop()
        if self.is_current():  # shutdown() from a done-callback: the loop closes when the callback returns
            self.inflight.fail_all(shutdown_error())
            return
        self.join(THREAD_JOIN_SECONDS)
        if self.is_alive():
            log.warning("the I/O thread did not stop in %g s (a done-callback still running?)", THREAD_JOIN_SECONDS)

    def discard(self) -> None:
        """Close what was made for a thread that never ran (start() failed before the interchange)."""
        assert not self.is_alive()
        self._peer.close()
        self._link.close()
        self.outbox.close()
        os.close(self._wake_r)

    def is_current(self) -> bool:
        return threading.current_thread() is self

    # -- the loop ------------------------------------------------------------------

    def run(self) -> None:
        poller = self._poller
        for fd in (self._wake_r, self._pidfd):
            poller.register(fd, zmq.POLLIN)
        self._last_heard = self._last_sent = time.monotonic()
        reason: BaseException = shutdown_error()
        try:
            while not self._stopping:
                events = dict(poller.poll(self._timeout_ms()))
                if self._wake_r in events:
                    self._drain_wakeups()
                if self._link.fd in events:
                    self._link_ready(events[self._link.fd])
                if self._pidfd in events:
                    poller.unregister(self._pidfd)
                    self._interchange_died()
                self._send_outbox()
                self._keep_time()
        except BaseException as exc:  # a bug here must not leave futures hanging
            log.exception("the executor's I/O thread failed")
            reason = InternalError(f"htex's I/O thread failed: {exc!r}; every pending task failed with this. "
                                   "This is a bug in htex: please report it")
            self.on_broken(reason)
        finally:
            self._close(reason)

    def _timeout_ms(self) -> int:
        now = time.monotonic()
        due = min(self._last_sent + self.heartbeat_period, self._last_heard + self.heartbeat_threshold)
        if not self.ready.is_set():
            due = min(due, self._last_heard + READY_SECONDS)
        if self.arena is not None and self.arena.in_use:
            due = min(due, self._next_trim)  # so idle shared memory goes back within seconds
        return max(0, int((due - now) * 1000) + 1)

    def _drain_wakeups(self) -> None:
        try:
            while os.read(self._wake_r, 4096):
                pass
        except BlockingIOError:
            pass

    def _send_outbox(self) -> None:
        if not self.outbox.awake:
            return
        if self._link.outgoing:  # left by a task sent from a user's thread (Outbox.put)
            self._link_io(self._link.flush)
        try:
            for msg in _messages(*self.outbox.take()):
                self._to_interchange(msg)
        finally:
            self.outbox.sent()

    def _to_interchange(self, msg: protocol.Message) -> None:
        frames = msg.encode()
        self._link_io(lambda: self._link.send(frames))

    def _link_io(self, op: Callable[[], None]) -> None:
        try:
            with self.outbox.lock:  # user threads may be sending too (Outbox.put)
                op()
        except OSError as exc:  # its end is closed: the pidfd tells us why at once
            log.warning("cannot reach the interchange: %s", exc)
        self._last_sent = time.monotonic()

    def _link_ready(self, events: int) -> None:
        if events & framing.POLLOUT:
            self._link_io(self._link.flush)
        if not events & framing.POLLIN:
            return
        batch = self._link.read()  # a corrupt stream raises ProtocolError: a bug, the loop fails everything
        if batch is None:  # the interchange closed its end: it is stopping or dead (the pidfd will say)
            with self.outbox.lock:
                self._link.close()
            return
        self._last_heard = time.monotonic()
        for frames in batch:
            try:
                self._on_message(protocol.decode(frames))
            except ProtocolError as exc:
                log.error("bad message from the interchange: %s", exc)

    def _on_message(self, msg: protocol.Message) -> None:
        if isinstance(msg, protocol.Results):
            self._complete(msg)
        elif isinstance(msg, protocol.TasksFailed):
            cls = _LOST.get(msg.error, TaskLost)
            for tid in msg.ids:
                self._lost(tid, cls(msg.message))
        elif isinstance(msg, protocol.StatusReply | protocol.Done | protocol.Failed | protocol.Cancelled):
            if isinstance(msg, protocol.Cancelled):  # applied here, whether or not someone still waits for it
                cancel.apply(self.inflight, msg, self.monitor)
            with self.outbox.lock:  # request() adds replies from other threads
                reply = self._replies.pop(msg.req, None)
            if reply is not None and isinstance(msg, protocol.Failed):
                settle(reply, False, CommandFailed(f"the interchange could not do it: {msg.reason}"))
            elif reply is not None:
                settle(reply, True, msg)
        elif isinstance(msg, protocol.Ready):
            self.ready.set()
        elif not isinstance(msg, protocol.Heartbeat):
            self.on_event(msg)

    def _complete(self, msg: protocol.Results) -> None:
        for tid, blob in zip(msg.ids, msg.payloads, strict=True):
            ok, value = serialize.unpack_result(protocol.as_buffer(blob))
            if not ok and isinstance(value, TaskLost):
                self._lost(tid, value)
                continue
            fut = self.inflight.finish(tid)
            if fut is not None:
                if self.monitor is not None:
                    self.monitor.ended(tid, ok, value, len(protocol.as_buffer(blob)))
                settle(fut, ok, value)

    def _lost(self, tid: int, exc: TaskLost) -> None:
        again = self.inflight.resend(tid, exc)
        if again is not None:
            if self.monitor is not None:
                self.monitor.resent(tid)
            self.outbox.put(task=(tid, *again))
            return
        fut = self.inflight.finish(tid, lost=True)
        if fut is not None:
            if self.monitor is not None:
                self.monitor.ended(tid, False, exc, None)
            settle(fut, False, exc)

    def _interchange_died(self) -> None:
        assert self.process is not None
        self.process.proc.wait()
        if self.lifecycle.shutting_down:
            self._stopping = True
            return
        reason = InterchangeLost(f"the interchange (pid {self.process.pid}) died: {self.process.describe_exit()}. "
                                 "Every pending task failed; create a new executor to go on")
        self._fail_start_or_break(reason)

    def _keep_time(self) -> None:
        now = time.monotonic()
        if not self.ready.is_set() and now - self._last_heard > READY_SECONDS:
            self._fail_start_or_break(InterchangeLost(f"the interchange did not start within {READY_SECONDS:g} s"))
        elif now - self._last_heard > self.heartbeat_threshold and self.lifecycle.running:
            self.on_broken(InterchangeLost(
                f"the interchange sent nothing for {now - self._last_heard:.0f} s "
                f"(heartbeat_threshold={self.heartbeat_threshold}); it is hung or unreachable"
            ))
        if now - self._last_sent >= self.heartbeat_period:
            self._to_interchange(protocol.Heartbeat())
        if self.arena is not None and now >= self._next_trim:
            self.arena.trim()  # an idle executor gives its shared memory back
            self._next_trim = now + 1.0

    def _fail_start_or_break(self, reason: BaseException) -> None:
        if not self.ready.is_set():
            self.start_error = reason
            self._stopping = True
            self.ready.set()  # start() is waiting: it raises start_error
        else:
            self.on_broken(reason)

    def _close(self, reason: BaseException) -> None:
        """The thread's last act: fail what still waits, close what it owns."""
        self._send_outbox()  # a Shutdown queued last
        if self.monitor is not None:
            self.monitor.ended_all(list(self.inflight.futures), reason)
        self.inflight.fail_all(reason)
        with self.outbox.lock:
            replies, self._replies = self._replies, {}
            self._closed = True
        for reply in replies.values():
            settle(reply, False, reason)
        with self.outbox.lock:
            self._link.close()
        self.outbox.close()
        os.close(self._wake_r)
        if self._pidfd >= 0:
            os.close(self._pidfd)
        self.ready.set()


def _messages(tasks: list[Task], ranked: bool, functions: dict[int, protocol.Blob],
              control: list[protocol.Message]) -> Iterator[protocol.Message]:
    """What the Outbox held, as messages in the order they must go: a TaskNeeds before the tasks it
    speaks of, each function with the first batch that needs it, then the control messages."""
    if control and isinstance(control[0], protocol.TaskNeeds):
        yield control.pop(0)
    for chunk in _batches(tasks):
        ids = protocol.u64_array(t[0] for t in chunk)
        # Priorities only when some task has one: plain batches stay as small and cheap as before.
        priorities = array("d", [t[3] for t in chunk]) if ranked else None
        yield protocol.Tasks(ids, protocol.u64_array(t[1] for t in chunk), [t[2] for t in chunk], functions, priorities)
        functions = {}
    if functions:  # functions of tasks already failed at submit: harmless to send
        yield protocol.Tasks(protocol.u64_array(), protocol.u64_array(), [], functions)
    yield from control


def _batches(tasks: list[Task]) -> Iterator[list[Task]]:
    """Cut the outbox into messages of at most _BATCH tasks and about _BATCH_BYTES of payload."""
    start, size = 0, 0
    for i, task in enumerate(tasks):
        if i > start and (i - start >= _BATCH or size + len(task[2]) > _BATCH_BYTES):
            yield tasks[start:i]
            start, size = i, 0
        size += len(task[2])
    if start < len(tasks):
        yield tasks[start:]
