"""The worker: one process that runs tasks, one batch at a time.

Started by the pool as ``python -m htex.worker --fd N``; talks to its pool over
its end of a Unix socketpair, inherited as file descriptor N (see framing.py
for why not ZeroMQ).  Its loop: receive a TASKS batch, run each task, send one
RESULTS batch back.  It has no timers and no threads: reads and writes block,
the pool watches it (through a pidfd) and the kernel kills it if the pool dies
(PR_SET_PDEATHSIG), so it can never outlive its pool.

Before each task (before its arguments are even unpickled) the worker writes
the task's id into a word of memory it shares with the pool (``--started-fd``,
a memfd): if the worker dies, the pool knows which task it was running, and
that the tasks after it in the batch never started.  The same memory holds
the results the worker has not sent yet (``Held``): a worker killed to
cancel a task (or dead for any reason) loses no result of a task it
finished, because the pool reads them there once the worker is gone.

Nothing a task does or returns may kill the worker: every BaseException it
raises, or that pickling its result or its exception raises, becomes that
task's error.

Environment, as in Parsl: PARSL_WORKER_RANK, PARSL_WORKER_COUNT, PARSL_WORKER_POOL_ID
(set by the pool before this process starts), and a placed worker's (placement.py).
"""

from __future__ import annotations

import argparse
import logging
import mmap
import os
import signal
import socket
import struct
import sys
import time
from collections import deque
from collections.abc import Callable
from typing import Any

from . import framing, procs, protocol, serialize, shm
from .errors import DeserializationError

log = logging.getLogger("htex.worker")

# A batch that runs longer than this sends the results it has, so they are not held back.
FLUSH_SECONDS = 0.005
# The memory a worker shares with its pool (a memfd): a head (the STARTED word, then how many bytes of
# results follow it), then the results the worker holds.  Pages are touched only as results fill them;
# a result that does not fit is sent at once.
HEAD = struct.Struct("<QQ")
_ENTRY = struct.Struct("<QQ")  # an entry: task id, size of the result; then the result's bytes
SHARED_SIZE = 1 << 20


class Held:
    """The results a worker finished and has not sent, copied to the memory it shares with its pool.

    Why: batching results (FLUSH_SECONDS) means a finished task's result may wait while the next
    task runs; if that task is cancelled (its worker SIGKILLed) or kills the worker, a result only
    in the worker's own memory would die with it.  ``start`` writes the head in one go as a task
    starts: its id, and the size of the entries written before (each complete).  So the pool,
    reading this after the worker died, finds every result finished before the task that was
    running; it may find a result it also received (sent, then killed before the next head), and
    keeps the first.  The pool also reads it while a task runs long (``peek_held``): results held
    behind a task of 2 s would otherwise wait 2 s, and the interchange counts them as work the
    pool still holds.  The worker sends from its own list: the copy is for the pool.
    """

    def __init__(self, mem: mmap.mmap) -> None:
        self.mem = memoryview(mem)  # writes through a memoryview cost less than through the mmap
        self.end = HEAD.size
        self.ids: list[int] = []
        self.blobs: list[protocol.Blob] = []

    def start(self, task_id: int) -> None:
        """A task starts: before anything of it runs, the pool must be able to tell (see above)."""
        HEAD.pack_into(self.mem, 0, task_id, self.end - HEAD.size)

    def add(self, task_id: int, blob: bytes) -> bool:
        """Keep a result; False if it does not fit (then send it with the others at once)."""
        at, end = self.end, self.end + _ENTRY.size + len(blob)
        if end > SHARED_SIZE:
            return False
        self.mem[at:end] = _ENTRY.pack(task_id, len(blob)) + blob
        self.end = end
        self.ids.append(task_id)
        self.blobs.append(blob)
        return True

    def sent(self) -> None:
        self.end = HEAD.size
        self.ids, self.blobs = [], []


def read_held(mem: mmap.mmap) -> list[tuple[int, bytes]]:
    """The results a dead worker held (``Held``), in the order it finished them: for its pool."""
    return _entries(mem, HEAD.unpack_from(mem, 0)[1])


def peek_held(mem: mmap.mmap) -> list[tuple[int, bytes]]:
    """The results a *running* worker holds, for its pool to send on while a long task runs after them.

    Read while the worker may write: the copy is whole if the head did not move meanwhile.  The worker
    writes entries past those the head counts, and writes over counted ones only after ``start`` moved the
    head to another task (ids are never reused), so an unmoved head means what we read stood still.
    Empty if it moved: the worker is between tasks, and sends its results itself.
    """
    head = HEAD.unpack_from(mem, 0)
    held = _entries(mem, head[1])
    return held if HEAD.unpack_from(mem, 0) == head else []


def _entries(mem: mmap.mmap, size: int) -> list[tuple[int, bytes]]:
    at, end = HEAD.size, min(HEAD.size + size, SHARED_SIZE)
    held = []
    while at + _ENTRY.size <= end:
        task_id, n = _ENTRY.unpack_from(mem, at)
        at += _ENTRY.size
        if at + n > end:
            break
        held.append((task_id, bytes(mem[at : at + n])))
        at += n
    return held


class Worker:
    def __init__(self, fd: int, rank: int, started_fd: int | None = None, claim_fd: int | None = None) -> None:
        self.rank = rank
        # One byte for each task the pool may take back (protocol.TasksAhead), written as it hands the task:
        # such a task may start only once its byte is read here.  The pool reads the same pipe to take a
        # task back (process_worker_pool's Lookahead): whoever reads the byte has the task, and the kernel
        # lets only one of us read it.
        self.claim = claim_fd
        if claim_fd is not None:
            os.set_inheritable(claim_fd, False)
        # Without a pool's memfd (a worker started by hand), memory of its own: the same code runs.
        self.held = Held(mmap.mmap(started_fd if started_fd is not None else -1, SHARED_SIZE))
        if started_fd is not None:
            os.close(started_fd)  # the mapping stays; a program a task starts must not inherit the fd
        self.functions: dict[int, Callable[..., Any] | DeserializationError] = {}
        self.shared = shm.Reader()  # large arguments the client left in shared memory
        # Blocking: this process has nothing else to do while it waits.  What sendmsg() has
        # written is in the pool's receive buffer, so results survive this process exiting.
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM, fileno=fd)
        self.sock.setblocking(True)
        # Inherited on purpose, but a program a task starts must not hold the link to the pool open.
        self.sock.set_inheritable(False)
        self.decoder = framing.Decoder()
        self.inbox: deque[list[bytes | memoryview]] = deque()

    def run(self) -> None:
        framing.send(self.sock, protocol.WorkerReady(rank=self.rank, pid=os.getpid()).encode())
        try:
            while (frames := self._receive()) is not None:
                msg = protocol.decode(frames)
                if isinstance(msg, protocol.Tasks):
                    self.run_batch(msg)
                elif isinstance(msg, protocol.Shutdown):
                    return
        finally:
            self.sock.close()

    def _receive(self) -> list[bytes | memoryview] | None:
        """The next message from the pool; None if the pool closed its end (it is gone)."""
        while not self.inbox:
            try:
                if self.decoder.read(self.sock) == 0:
                    return None
            except ConnectionResetError:
                return None
            self.inbox.extend(self.decoder.messages())
        return self.inbox.popleft()

    def run_batch(self, batch: protocol.Tasks) -> None:
        """Run the tasks in order; send results when done, or every FLUSH_SECONDS if the batch runs long."""
        for key, blob in batch.functions.items():
            try:
                self.functions[key] = serialize.unpack_function(protocol.as_buffer(blob))
            except DeserializationError as exc:
                self.functions[key] = exc  # every task of this function fails with it
        last_sent = time.monotonic()
        last = len(batch.ids) - 1
        first_claimed = 0 if isinstance(batch, protocol.TasksAhead) else 1  # see protocol.TasksAhead
        start, hold = self.held.start, self.held.add
        for i, (task_id, key, payload) in enumerate(zip(batch.ids, batch.fn_keys, batch.payloads, strict=True)):
            if i >= first_claimed and not self._claimed():
                self._given_back(list(batch.ids[i:]))
                return
            start(task_id)  # before anything of the task runs
            result = self.run_one(key, protocol.as_buffer(payload))
            if i != last and time.monotonic() - last_sent <= FLUSH_SECONDS and hold(task_id, result):
                continue  # held until the batch ends or runs long
            self._send(task_id, result)
            last_sent = time.monotonic()

    def _claimed(self) -> bool:
        """Read this task's byte; False if the pool took it back (then this task and the rest of the batch)."""
        if self.claim is None:
            return True
        try:
            return len(os.read(self.claim, 1)) == 1
        except BlockingIOError:
            return False

    def _given_back(self, ids: list[int]) -> None:
        """Tell the pool we saw that it took these back: until then it gives us nothing new.  Held results first."""
        if self.held.ids:
            self._send_results([], [])
        framing.send(self.sock, protocol.Withdrawn(req=0, withdrawn=ids, started=[]).encode())

    def _send(self, task_id: int, result: bytes) -> None:
        self._send_results([task_id], [result])

    def _send_results(self, ids: list[int], results: list[bytes]) -> None:
        """Send the held results and these (held ones first: results go back in the order tasks came)."""
        held = self.held
        framing.send(self.sock, protocol.Results(protocol.u64_array([*held.ids, *ids]), [*held.blobs, *results]).encode())
        held.sent()

    def run_one(self, fn_key: int, payload: memoryview | bytes) -> bytes:
        fn = self.functions.get(fn_key)
        if fn is None:
            return serialize.pack_exception(
                DeserializationError(f"function key {fn_key} never reached this worker (htex bug)"), ""
            )
        if isinstance(fn, DeserializationError):
            return serialize.pack_exception(fn, "")
        try:
            args, kwargs = serialize.unpack_args(*self.shared.resolve(payload))
        except DeserializationError as exc:
            return serialize.pack_exception(exc, "")
        try:
            value = fn(*args, **kwargs)
        except BaseException as exc:
            # Drop this frame from the traceback: the user's code starts one level down.
            return serialize.pack_exception(exc, serialize.format_traceback(exc, skip=1))
        return serialize.pack_result(value)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m htex.worker")
    parser.add_argument("--fd", type=int, required=True, help="this worker's end of the socketpair to the pool")
    parser.add_argument("--rank", type=int, required=True)
    parser.add_argument("--started-fd", type=int, default=None, help="a memfd shared with the pool (see above)")
    parser.add_argument("--claim-fd", type=int, default=None, help="the pipe of the tasks' bytes (see Worker)")
    parser.add_argument("--logfile", default=None, help="debug log file (only with --debug)")
    parser.add_argument("--debug", action="store_true")
    parser.add_argument("--cores", default=None, help="pin this worker to these cores (cpu_affinity), e.g. 0,1")
    args = parser.parse_args(argv)
    procs.die_with_parent()
    if args.cores:  # before any task runs; what a task starts inherits it (OpenMP's variables are set by the pool)
        os.sched_setaffinity(0, [int(c) for c in args.cores.split(",")])
    # The terminal's Ctrl-C is for the client; the pool decides when workers stop.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    if args.debug and args.logfile:
        logging.basicConfig(
            filename=args.logfile,
            level=logging.DEBUG,
            format="%(asctime)s %(process)d %(levelname)s %(name)s: %(message)s",
        )
        log.debug("worker rank %d started, pid %d", args.rank, os.getpid())
    Worker(args.fd, args.rank, args.started_fd, args.claim_fd).run()
    return 0


if __name__ == "__main__":
    sys.exit(main())
