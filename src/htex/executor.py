"""HighThroughputExecutor: the client side, living in the user's process.

::

    user threads          I/O thread (owns the socket)        interchange process
    submit() ---outbox--> send TASKS batches  ---------------> queue, dispatch to pools
    Future   <--set------ RESULTS / TasksFailed  <------------ results from pools
                          Heartbeat both ways; pidfd of the interchange

``submit()`` pickles the arguments, puts the task in an outbox and, if the
I/O thread is not already awake, wakes it through a pipe; the I/O thread
sends everything in the outbox as one batch.  Under load many tasks share
one message and one wake-up; when idle a task leaves at once.

The I/O thread is the only one that touches the ZeroMQ socket.  Other threads
talk to it through the outbox (tasks, commands) and get answers through
futures.

A block watcher thread polls the provider every ``status_polling_interval``,
starts blocks as ``scaling.decide`` says, and puts the executor in the bad
state (every future fails with the reason) when blocks keep failing.
"""

from __future__ import annotations

import atexit
import concurrent.futures
import itertools
import json
import logging
import math
import os
import random
import secrets
import shlex
import socket
import subprocess
import sys
import threading
import time
import weakref
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future
from typing import Any

import zmq

from . import errors, protocol, security, serialize, shm
from .errors import (
    ConfigurationError,
    ExecutorShutdown,
    InterchangeLost,
    InvalidResourceSpecification,
    ScaleOutFailed,
)
from .providers.base import ExecutionProvider, JobState, JobStatus
from .providers.local import LocalProvider
from .scaling import ScalingState, decide

log = logging.getLogger("htex.executor")

DEFAULT_LAUNCH_CMD = (
    "{python} -m htex.process_worker_pool {debug} --max_workers={max_workers} -a {addresses} "
    "-t {task_port} -r {result_port} -p {prefetch_capacity} -c {cores_per_worker} -m {mem_per_worker} "
    "--poll {poll_period} --logdir={logdir} --block_id={block_id} --hb_period={heartbeat_period} "
    "--hb_threshold={heartbeat_threshold} --address_probe_timeout={address_probe_timeout} "
    "--nodes_per_block={nodes_per_block} --cert_dir={cert_dir} {pool_urls}"
)
_BATCH = 1024  # tasks per message to the interchange, at most
# Bytes of payload per message, about: the interchange keeps a task's payload as a view of
# the frame it came in, so one task still running keeps its whole message in memory.
_BATCH_BYTES = 1 << 20
_READY_TIMEOUT = 30.0  # seconds for the interchange to start


def _default_provider() -> LocalProvider:
    # The spec's default for this executor.
    return LocalProvider(init_blocks=4, min_blocks=0, max_blocks=10, nodes_per_block=1, parallelism=1)


class HighThroughputExecutor:
    """Run Python functions on pools of workers, through an interchange, over ZeroMQ.

    Parameters are those of Parsl 1.0's HighThroughputExecutor (see the README);
    ``max_workers_per_node`` is accepted as today's Parsl spells ``max_workers``.
    """

    def __init__(
        self,
        label: str = "HighThroughputExecutor",
        provider: ExecutionProvider | None = None,
        launch_cmd: str | None = None,
        address: str | None = None,
        worker_ports: tuple[int, int] | None = None,
        worker_port_range: tuple[int, int] | None = (54000, 55000),
        interchange_port_range: tuple[int, int] | None = (55000, 56000),
        storage_access: list[Any] | None = None,
        working_dir: str | None = None,
        worker_debug: bool = False,
        cores_per_worker: float = 1.0,
        mem_per_worker: float | None = None,
        max_workers: int | float = math.inf,
        prefetch_capacity: int = 0,
        heartbeat_threshold: int = 120,
        heartbeat_period: int = 30,
        poll_period: int = 10,
        address_probe_timeout: int | None = None,
        managed: bool = True,
        worker_logdir_root: str | None = None,
        *,
        max_workers_per_node: int | float | None = None,
        run_dir: str | None = None,
        encrypted: bool | None = None,
        lost_task_retries: int = 0,
        max_outstanding: int | None = 100_000,
        max_idletime: float = 120.0,
        shared_memory: bool | None = None,
    ) -> None:
        if max_workers_per_node is not None:
            max_workers = max_workers_per_node
        _check(cores_per_worker > 0, f"cores_per_worker must be > 0, got {cores_per_worker}")
        _check(max_workers >= 1, f"max_workers must be >= 1, got {max_workers}")
        _check(mem_per_worker is None or mem_per_worker > 0, f"mem_per_worker must be > 0 GB, got {mem_per_worker}")
        _check(prefetch_capacity >= 0, f"prefetch_capacity must be >= 0, got {prefetch_capacity}")
        _check(lost_task_retries >= 0, f"lost_task_retries must be >= 0, got {lost_task_retries}")
        _check(max_outstanding is None or max_outstanding >= 1, f"max_outstanding must be >= 1, got {max_outstanding}")
        _check(not encrypted or security.available(), "encrypted=True but this libzmq has no CURVE support")
        _check(0 < heartbeat_period <= heartbeat_threshold,
               f"need 0 < heartbeat_period ({heartbeat_period}) <= heartbeat_threshold ({heartbeat_threshold})")
        for name, rng in (("worker_port_range", worker_port_range), ("interchange_port_range", interchange_port_range)):
            _check(rng is None or (len(rng) == 2 and 0 < rng[0] < rng[1] < 65536), f"{name} must be (low, high), got {rng}")
        self.label = label
        self.provider: ExecutionProvider = provider if provider is not None else _default_provider()
        self.launch_cmd = launch_cmd
        self.address = address
        self.worker_ports = worker_ports
        self.worker_port_range = worker_port_range or (54000, 55000)
        self.interchange_port_range = interchange_port_range or (55000, 56000)
        self.storage_access = storage_access or []
        self.working_dir = working_dir
        self.worker_debug = worker_debug
        self.cores_per_worker = cores_per_worker
        self.mem_per_worker = mem_per_worker
        self.max_workers = max_workers
        self.prefetch_capacity = prefetch_capacity
        self.heartbeat_threshold = heartbeat_threshold
        self.heartbeat_period = heartbeat_period
        self.poll_period = poll_period  # accepted for Parsl compatibility: htex blocks, never polls
        self.address_probe_timeout = address_probe_timeout
        self.managed = managed
        self.worker_logdir_root = worker_logdir_root
        self.run_dir = run_dir or ""  # chosen at start(): runinfo/NNN, as Parsl numbers its runs
        self.encrypted = encrypted  # None: on when workers may be on other hosts; decided at start()
        self.lost_task_retries = lost_task_retries
        self.max_outstanding = max_outstanding
        self.max_idletime = max_idletime  # seconds a block may sit idle before it is scaled in
        self.shared_memory = shared_memory  # None: on when every pool runs on this host; decided at start()
        self.cert_dir: str | None = None
        self._ipc_name: str | None = None
        self._ipc_dir: str | None = None
        self.hub_address: str | None = None  # monitoring hub: accepted, unused
        self.hub_port: int | None = None

        self.tasks: dict[int, Future[Any]] = {}
        self.blocks: dict[str, str] = {}  # block id -> job id
        self.block_mapping: dict[str, str] = {}  # job id -> block id
        # Reentrant: shutdown() may run in a signal handler that interrupted submit().
        self._lock = threading.RLock()
        self._room = threading.Condition(self._lock)  # submit() waits here when max_outstanding is reached
        self._waiting_for_room = 0
        self._retry: dict[int, tuple[int, bytes, int]] = {}  # task id -> (function key, payload, tries left)
        self._arena: shm.Arena | None = None  # large arguments to pools on this host, see shm.py
        self._leases: dict[int, shm.Lease] = {}  # task id -> its argument's place in the arena
        self._next_trim = 0.0
        self._ids = itertools.count(1)
        self._block_ids = itertools.count(0)
        self._functions = serialize.FunctionRegistry()
        self._outbox: list[tuple[int, int, bytes]] = []
        self._outbox_functions: dict[int, protocol.Blob] = {}
        self._outbox_control: list[protocol.Message] = []
        self._awake = False
        self._replies: dict[int, Future[Any]] = {}
        self._req_ids = itertools.count(1)
        self._bad: BaseException | None = None
        self._started = False
        self._owner_pid = os.getpid()  # a forked child holds a copy of this object, not the executor
        self._shutting_down = False
        self._shutdown_done = threading.Event()
        self._io_stop = False
        self._watch_stop = threading.Event()
        self._pools_by_block: dict[str, set[str]] = {}
        self._block_status: dict[str, JobStatus] = {}
        self._failed_in_a_row = 0
        self._dropped = 0
        self._slots_per_block = 1
        self._interchange: subprocess.Popen[bytes] | None = None
        self._io_thread: threading.Thread | None = None
        self._watch_thread: threading.Thread | None = None
        self.worker_task_port: int | None = None
        self.worker_result_port: int | None = None

    # ------------------------------------------------------------------
    # start
    # ------------------------------------------------------------------

    @property
    def logdir(self) -> str:
        return os.path.join(self.run_dir, self.label)

    def start(self) -> None:
        """Start the interchange, connect to it, and start the first blocks.

        Configuration is checked first, so a bad launch_cmd fails here with
        nothing started; a failure after the interchange is up shuts it down.
        """
        if self._started:
            raise RuntimeError("this executor was already started")
        if self.encrypted is None:
            # Secure by default, as today's Parsl: every TCP socket is CURVE, wherever the pools run.
            self.encrypted = security.available()
        if self.shared_memory is None:
            self.shared_memory = not self.provider.remote and shm.supported()
        _check(not self.shared_memory or shm.supported(), "shared_memory=True needs Linux (memfd)")
        self._arena = shm.Arena() if self.shared_memory else None
        if self.managed:
            self.launch_command("0")  # raises ConfigurationError for an unknown placeholder
        self._started = True
        if not self.run_dir:
            self.run_dir = _next_run_dir("runinfo")
        os.makedirs(self.logdir, mode=0o700, exist_ok=True)  # logs, scripts, keys: the run's user's alone
        if self.provider.script_dir is None:
            self.provider.script_dir = os.path.join(self.logdir, "submit_scripts")
        self.cert_dir = os.path.join(self.logdir, "certs") if self.encrypted else None
        if self.cert_dir:
            security.make_keys(self.cert_dir)
        self._wake_r, self._wake_w = os.pipe()
        os.set_blocking(self._wake_w, False)
        os.set_blocking(self._wake_r, False)
        # Every channel on this host is a UNIX socket in a directory only this user can enter (0700):
        # the kernel keeps other users out, whether or not the run is encrypted.  (Abstract-namespace
        # names, used before, let any local user connect.)
        self._ipc_dir = security.private_dir()
        self._ctx = zmq.Context()
        self._sock = self._ctx.socket(zmq.ROUTER)
        for opt, val in ((zmq.SNDHWM, 0), (zmq.RCVHWM, 0), (zmq.LINGER, 0), (zmq.ROUTER_MANDATORY, 1)):
            self._sock.setsockopt(opt, val)
        # The interchange always runs on this host; ~50 us cheaper per message than loopback TCP.
        client_url = f"ipc://{self._ipc_dir}/client"
        self._sock.bind(client_url)
        self._ic_identity = b"ic-" + secrets.token_hex(16).encode()
        # Pools on this host connect over UNIX sockets too (cheaper than TCP, and private).
        self._ipc_name = None if self.provider.remote else f"{self._ipc_dir}/pools"
        listeners = self._listen_for_pools() if self._needs_tcp() else []
        self._spawn_interchange(client_url, listeners)
        try:
            # The ports are ours already, so the first blocks start while the interchange boots.
            if self.managed:
                self.initialize_scaling()
        except BaseException:
            self._cleanup_failed_start()
            raise
        self._wait_for_interchange()
        self._io_thread = threading.Thread(target=self._io_loop, name=f"htex-io-{self.label}", daemon=True)
        self._io_thread.start()
        _live_executors.add(self)
        try:
            self._write_connection_file()
            if self.managed:
                self._watch_thread = threading.Thread(
                    target=self._watch_blocks, name=f"htex-blocks-{self.label}", daemon=True
                )
                self._watch_thread.start()
        except BaseException:
            self.shutdown(wait=False)
            raise

    def _forked_copy(self) -> bool:
        return os.getpid() != self._owner_pid

    def _bind_address(self) -> str:
        addrs = self._addresses()
        return "127.0.0.1" if all(a.startswith("127.") or a == "localhost" for a in addrs) else "*"

    def _addresses(self) -> list[str]:
        if self.address:
            return [a.strip() for a in self.address.split(",") if a.strip()]
        if not self.provider.remote:
            return ["127.0.0.1"]
        return _all_addresses()

    def _needs_tcp(self) -> bool:
        """Bind the worker ports?  Always when encrypted (CURVE guards them); without encryption only
        when pools may need TCP: they may be remote, an address or launch_cmd was given, or they are
        started by hand."""
        need = bool(self.encrypted or self.provider.remote or self.address or self.launch_cmd or not self.managed)
        if need and not self.encrypted:
            log.warning(
                "executor %s is not encrypted: anyone who can reach ports %s can register a pool and read tasks; "
                "use encrypted=False only on a trusted network", self.label, self.worker_ports or self.worker_port_range,
            )
        return need

    def _listen_for_pools(self) -> list[socket.socket]:
        """Bind the task and result ports here, and hand the listening sockets to the interchange.

        Knowing the ports before the interchange runs lets blocks start at once,
        and no other process can take a port between our choice and its bind.
        """
        host = "0.0.0.0" if self._bind_address() == "*" else "127.0.0.1"
        listeners = []
        for i in range(2):
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if self.worker_ports:
                sock.bind((host, self.worker_ports[i]))
            else:
                _bind_in_range(sock, host, self.worker_port_range)
            sock.listen(1024)
            listeners.append(sock)
        self.worker_task_port, self.worker_result_port = (s.getsockname()[1] for s in listeners)
        return listeners

    def _spawn_interchange(self, client_url: str, listeners: list[socket.socket]) -> None:
        config = {
            "tcp": bool(listeners),
            "client_url": client_url,
            "client_identity": self._ic_identity.decode(),
            "bind_address": self._bind_address(),
            "worker_ports": [self.worker_task_port, self.worker_result_port] if listeners else None,
            "listen_fds": [s.fileno() for s in listeners],
            "heartbeat_period": self.heartbeat_period,
            "heartbeat_threshold": self.heartbeat_threshold,
            "logdir": self.logdir,
            "debug": self.worker_debug,
            "cert_dir": self.cert_dir,
            "ipc_name": self._ipc_name,
        }
        self._ic_stderr = os.path.join(self.logdir, "interchange.stderr")
        try:
            with open(self._ic_stderr, "wb") as err:
                self._interchange = subprocess.Popen(
                    [sys.executable, "-m", "htex.interchange"],
                    stdin=subprocess.PIPE, stdout=err, stderr=err,
                    pass_fds=[s.fileno() for s in listeners],
                    start_new_session=True,  # the terminal's Ctrl-C is ours; we stop it in order
                )
            # On stdin, not the command line: any local user can read /proc/<pid>/cmdline.
            assert self._interchange.stdin is not None
            with self._interchange.stdin as pipe:
                pipe.write(json.dumps(config).encode())
        finally:
            for sock in listeners:
                sock.close()  # the interchange holds them now
        self._ic_pidfd = os.pidfd_open(self._interchange.pid)

    def _wait_for_interchange(self) -> None:
        assert self._interchange is not None
        poller = zmq.Poller()
        poller.register(self._sock, zmq.POLLIN)
        poller.register(self._ic_pidfd, zmq.POLLIN)
        deadline = time.monotonic() + _READY_TIMEOUT
        while time.monotonic() < deadline:
            events = dict(poller.poll(100))
            if self._ic_pidfd in events:
                self._interchange.wait()
                self._cleanup_failed_start()
                raise InterchangeLost(f"the interchange failed to start: {self._interchange_exit()}")
            if self._sock in events:
                ident, *frames = self._sock.recv_multipart()
                if ident != self._ic_identity:
                    continue
                if isinstance(protocol.decode(frames), protocol.Ready):
                    self._ic_last_heard = time.monotonic()
                    return
        self._cleanup_failed_start()
        raise InterchangeLost(f"the interchange did not start within {_READY_TIMEOUT:g} s; see {self.logdir}")

    def _cleanup_failed_start(self) -> None:
        self._shutting_down = True
        if self.blocks:
            self.provider.cancel(list(self.blocks.values()))
        if self._interchange is not None and self._interchange.poll() is None:
            self._interchange.kill()
            self._interchange.wait()
        for fd in (self._ic_pidfd, self._wake_r, self._wake_w):
            os.close(fd)
        self._sock.close()
        self._ctx.term()
        security.remove_private_dir(self._ipc_dir)
        self._shutdown_done.set()

    def _interchange_exit(self) -> str:
        assert self._interchange is not None
        code = self._interchange.returncode
        how = f"was killed by signal {-code}" if code is not None and code < 0 else f"exited with code {code}"
        tail = ""
        try:
            with open(self._ic_stderr, "rb") as f:
                tail = f.read()[-1500:].decode(errors="replace").strip()
        except OSError:
            pass
        return f"it {how}" + (f"; its stderr ends with:\n{tail}" if tail else f"; see {self.logdir}/interchange.log")

    def _write_connection_file(self) -> None:
        """What `htex pool` (or a hand-started process_worker_pool) needs to connect."""
        info = {
            "label": self.label,
            "addresses": self._addresses(),
            "task_port": self.worker_task_port,
            "result_port": self.worker_result_port,
            "heartbeat_period": self.heartbeat_period,
            "heartbeat_threshold": self.heartbeat_threshold,
            "interchange_pid": self._interchange.pid if self._interchange else None,
            "ipc_dir": self._ipc_dir,
            "ipc_tasks": f"ipc://{self._ipc_name}-tasks" if self._ipc_name else None,
            "client_pid": os.getpid(),
        }
        path = os.path.join(self.logdir, "connection.json")
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:
            json.dump(info, f, indent=1)

    # ------------------------------------------------------------------
    # submit and friends
    # ------------------------------------------------------------------

    def submit(
        self, func: Callable[..., Any], resource_specification: dict[str, Any] | None, *args: Any, **kwargs: Any
    ) -> Future[Any]:
        """Run ``func(*args, **kwargs)`` on a worker; return a Future for its result.

        ``resource_specification`` must be empty (``{}`` or None): per-task
        resources are not supported by this executor, as in Parsl 1.0.
        """
        if resource_specification is not None and not isinstance(resource_specification, dict):
            raise TypeError(
                f"submit(func, resource_specification, *args): resource_specification must be a dict or None, "
                f"got {type(resource_specification).__name__}. For the stdlib's submit(fn, *args), use ex.stdlib.submit"
            )
        if resource_specification:
            raise InvalidResourceSpecification(
                f"this executor does not take per-task resource specifications (got keys "
                f"{sorted(resource_specification)}); pass {{}}"
            )
        if not callable(func):
            raise TypeError(f"submit() needs a callable, got {type(func).__name__}")
        if self._forked_copy():
            raise RuntimeError(
                f"this executor belongs to process {self._owner_pid}; a forked child cannot submit to it "
                "(create an executor in the child)"
            )
        if not self._started:
            raise RuntimeError("call start() (or use `with HighThroughputExecutor(...) as ex`) before submit()")
        payload, lease = self._pack_args(args, kwargs)
        fut: Future[Any] = Future()
        fut.set_running_or_notify_cancel()
        with self._lock:
            self._check_open()
            if self.max_outstanding is not None and len(self.tasks) >= self.max_outstanding:
                self._wait_for_room()
            key, blob = self._functions.key_for(func)
            if blob is not None:
                self._outbox_functions[key] = blob
            task_id = next(self._ids)
            fut.parsl_executor_task_id = task_id  # type: ignore[attr-defined]
            self.tasks[task_id] = fut
            if lease is not None:
                self._leases[task_id] = lease
            if self.lost_task_retries:
                self._retry[task_id] = (key, payload, self.lost_task_retries)
            self._outbox.append((task_id, key, payload))
            wake = not self._awake
            self._awake = True
        if wake:
            self._wake()
        return fut

    def _pack_args(self, args: tuple[Any, ...], kwargs: dict[str, Any]) -> tuple[bytes, shm.Lease | None]:
        """The task's payload, in-band or (large, for pools on this host) a reference to shared memory."""
        if self._arena is None:
            return serialize.pack_args(args, kwargs), None
        stream, buffers = serialize.pack_args_split(args, kwargs)
        if not buffers and len(stream) < shm.THRESHOLD:
            return stream, None  # small: in-band
        # Wait for room, but never on the I/O thread: only it frees room (a done-callback that submits).
        on_io = threading.current_thread() is self._io_thread
        placed = self._arena.put([stream, *buffers], wait=0.0 if on_io else shm.WAIT_SECONDS)
        if placed is not None:
            return placed
        # The arena stayed full: in-band, with the bytes inside the stream this time (a second pickling,
        # only after a wait for room, which is when time matters least).
        return (serialize.pack_args(args, kwargs) if buffers else stream), None

    def _wait_for_room(self) -> None:
        """Block (holding no lock while asleep) until fewer than max_outstanding tasks are in flight.

        Not on the I/O thread: a done-callback that submits must not wait for
        results that only that thread can deliver.
        """
        if threading.current_thread() is self._io_thread:
            return
        assert self.max_outstanding is not None
        self._waiting_for_room += 1
        try:
            while len(self.tasks) >= self.max_outstanding:
                self._room.wait(1.0)
                self._check_open()
        finally:
            self._waiting_for_room -= 1

    def _check_open(self) -> None:
        if self._bad is not None:
            raise self._bad
        if self._shutting_down:
            raise RuntimeError("cannot schedule new futures after shutdown")

    def _wake(self) -> None:
        try:
            os.write(self._wake_w, b"x")
        except (BlockingIOError, OSError):
            pass  # already has bytes waiting, or closed at shutdown

    def map(
        self, fn: Callable[..., Any], *iterables: Iterable[Any], timeout: float | None = None, chunksize: int = 1
    ) -> Iterator[Any]:
        """Like ``concurrent.futures.Executor.map``: results in order, lazily.

        With ``chunksize > 1`` each task runs ``chunksize`` calls, which saves
        overhead for very short functions.
        """
        if chunksize < 1:
            raise ValueError("chunksize must be >= 1")
        end = None if timeout is None else time.monotonic() + timeout
        if chunksize == 1:
            futures = [self.submit(fn, {}, *args) for args in zip(*iterables, strict=False)]
        else:
            futures = [self.submit(_run_chunk, {}, fn, chunk) for chunk in _chunks(zip(*iterables, strict=False), chunksize)]

        def results() -> Iterator[Any]:
            try:
                futures.reverse()  # pop from the end: done futures are released as we go
                while futures:
                    fut = futures.pop()
                    left = None if end is None else end - time.monotonic()
                    if chunksize == 1:
                        yield fut.result(left)
                    else:
                        yield from fut.result(left)
            finally:
                for fut in futures:
                    fut.cancel()

        return results()

    @property
    def stdlib(self) -> StdlibView:
        """This executor as a plain ``concurrent.futures.Executor`` (``submit(fn, *args)``)."""
        return StdlibView(self)

    def __enter__(self) -> HighThroughputExecutor:
        if not self._started:
            self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.shutdown(wait=True)

    # ------------------------------------------------------------------
    # state
    # ------------------------------------------------------------------

    @property
    def outstanding(self) -> int:
        """Tasks submitted and not yet done."""
        return len(self.tasks)

    @property
    def connected_managers(self) -> list[dict[str, Any]]:
        """One dict per registered pool: manager, block_id, hostname, worker_count, tasks, active, ..."""
        result: list[dict[str, Any]] = self._command("connected_managers")
        return result

    @property
    def connected_workers(self) -> int:
        return sum(m["worker_count"] for m in self.connected_managers)

    def hold_worker(self, worker_id: str) -> bool:
        """Send no new task to the pool (manager) ``worker_id``; its running tasks finish."""
        held: bool = self._command("hold_worker", worker_id)
        return held

    def stats(self) -> dict[str, Any]:
        """Counters of the interchange: received, dispatched, done, lost, queued, pools, workers."""
        result: dict[str, Any] = self._command("stats")
        return result

    @property
    def bad_state_is_set(self) -> bool:
        return self._bad is not None

    @property
    def executor_exception(self) -> BaseException | None:
        return self._bad

    @property
    def scaling_enabled(self) -> bool:
        return self.managed

    @property
    def status_polling_interval(self) -> float:
        return self.provider.status_polling_interval

    def weakref_cb(self, q: Any = None) -> None:
        """In the spec ("we do not use this yet"); kept so code that calls it runs."""

    def set_bad_state_and_fail_all(self, exception: BaseException) -> None:
        """Mark the executor broken: every pending future fails with ``exception``, and so will every later submit."""
        with self._lock:
            if self._bad is None:
                self._bad = exception
            pending = list(self.tasks.items())
            self.tasks.clear()
        log.error("executor %s is in a bad state: %s", self.label, exception)
        for _, fut in pending:
            _fail(fut, exception)
        self._make_room()

    def _command(self, op: str, *args: Any, timeout: float = 10.0) -> Any:
        if not self._started or self._shutdown_done.is_set():
            raise RuntimeError(f"{op}: the executor is not running")
        if self._bad is not None:
            raise self._bad
        fut: Future[Any] = Future()
        with self._lock:
            req = next(self._req_ids)
            self._replies[req] = fut
            self._outbox_control.append(protocol.Command(req=req, op=op, args=list(args)))
            self._awake = True
        self._wake()
        return fut.result(timeout)

    # ------------------------------------------------------------------
    # the I/O thread
    # ------------------------------------------------------------------

    def _io_loop(self) -> None:
        poller = zmq.Poller()
        poller.register(self._sock, zmq.POLLIN)
        poller.register(self._wake_r, zmq.POLLIN)
        poller.register(self._ic_pidfd, zmq.POLLIN)
        self._ic_last_sent = time.monotonic()
        try:
            while not self._io_stop:
                events = dict(poller.poll(self._io_timeout_ms()))
                if self._wake_r in events:
                    self._send_outbox()
                if self._sock in events:
                    self._read_interchange()
                if self._ic_pidfd in events:
                    self._interchange_died()
                    poller.unregister(self._ic_pidfd)
                self._io_keep_time()
            self._send_outbox()  # the Shutdown message, if queued last
        except BaseException as exc:  # a bug here must not leave futures hanging
            log.exception("the executor's I/O thread failed")
            self.set_bad_state_and_fail_all(errors.ExecutorBroken(f"htex's I/O thread failed: {exc!r} (please report this bug)"))

    def _io_timeout_ms(self) -> int:
        now = time.monotonic()
        due = min(self._ic_last_sent + self.heartbeat_period, self._ic_last_heard + self.heartbeat_threshold)
        if self._arena is not None and self._arena.in_use:
            due = min(due, self._next_trim)  # so idle shared memory goes back within seconds
        return max(0, int((due - now) * 1000) + 1)

    def _send_outbox(self) -> None:
        try:
            while os.read(self._wake_r, 4096):
                pass
        except BlockingIOError:
            pass
        except OSError:
            return
        with self._lock:
            tasks, self._outbox = self._outbox, []
            functions, self._outbox_functions = self._outbox_functions, {}
            control, self._outbox_control = self._outbox_control, []
            self._awake = False
        for chunk in _batches(tasks):
            msg = protocol.Tasks(
                protocol.u64_array(t[0] for t in chunk),
                protocol.u64_array(t[1] for t in chunk),
                [t[2] for t in chunk],
                functions,
            )
            functions = {}
            self._to_interchange(msg)
        if functions:  # functions of tasks already failed at submit; harmless to send
            self._to_interchange(protocol.Tasks(protocol.u64_array(), protocol.u64_array(), [], functions))
        for command in control:
            self._to_interchange(command)

    def _to_interchange(self, msg: protocol.Message) -> None:
        try:
            self._sock.send_multipart([self._ic_identity, *msg.encode()], copy=False)
        except zmq.ZMQError as exc:
            log.warning("cannot reach the interchange: %s", exc)
        self._ic_last_sent = time.monotonic()

    def _read_interchange(self) -> None:
        for _ in range(256):
            try:
                ident, *frames = self._sock.recv_multipart(zmq.NOBLOCK, copy=False)
            except zmq.Again:
                return
            if ident.bytes != self._ic_identity:
                self._dropped += 1
                if self._dropped <= 10 or self._dropped % 1000 == 0:  # a flood must not flood the log
                    log.warning("dropped a message from an unknown peer on the client port (%d so far)", self._dropped)
                continue
            self._ic_last_heard = time.monotonic()
            try:
                msg = protocol.decode(frames)
            except errors.ProtocolError as exc:
                log.error("bad message from the interchange: %s", exc)
                continue
            if isinstance(msg, protocol.Results):
                self._complete(msg)
            elif isinstance(msg, protocol.TasksFailed):
                exc_type = getattr(errors, msg.error, None)
                if not (isinstance(exc_type, type) and issubclass(exc_type, errors.HtexError)):
                    exc_type = errors.TaskLost
                self._fail_lost(msg.ids, exc_type, msg.message)
            elif isinstance(msg, protocol.Reply):
                reply = self._replies.pop(msg.req, None)
                if reply is not None:
                    if msg.error:
                        reply.set_exception(RuntimeError(msg.error))
                    else:
                        reply.set_result(msg.result)
            elif isinstance(msg, protocol.Event):
                self._on_event(msg)

    def _complete(self, msg: protocol.Results) -> None:
        tasks = self.tasks
        for tid, blob in zip(msg.ids, msg.payloads, strict=True):
            fut = tasks.get(tid)
            if fut is None:
                continue
            ok, value = serialize.unpack_result(protocol.as_buffer(blob))
            if not ok and isinstance(value, errors.TaskLost) and self._retry_lost(tid, value):
                continue
            tasks.pop(tid, None)
            if self._retry:
                self._retry.pop(tid, None)
            if self._leases:
                self._release(tid, lost=not ok and isinstance(value, errors.TaskLost))
            _settle(fut, ok, value)
        self._make_room()

    def _make_room(self) -> None:
        if self._waiting_for_room:
            with self._room:
                self._room.notify_all()

    def _retry_lost(self, tid: int, exc: BaseException) -> bool:
        """Send a lost task again if it has tries left; True if it was sent."""
        entry = self._retry.get(tid)
        if entry is None or entry[2] <= 0 or self._shutting_down or self._bad is not None:
            return False
        key, payload, left = entry
        self._retry[tid] = (key, payload, left - 1)
        log.warning("task %d lost (%s); sending it again (%d tries left)", tid, exc, left - 1)
        with self._lock:
            self._outbox.append((tid, key, payload))
            self._awake = True
        self._wake()
        return True

    def _fail_lost(self, ids: list[int], exc_type: type[BaseException], message: str) -> None:
        for tid in ids:
            exc = exc_type(message)
            if tid in self.tasks and self._retry_lost(tid, exc):
                continue
            fut = self.tasks.pop(tid, None)
            self._retry.pop(tid, None)
            self._release(tid, lost=True)
            if fut is not None:
                _fail(fut, exc)
        self._make_room()

    def _release(self, tid: int, lost: bool) -> None:
        lease = self._leases.pop(tid, None)
        if lease is not None and self._arena is not None:
            self._arena.release(lease, lost)

    def _on_event(self, event: protocol.Event) -> None:
        data = event.data
        if event.kind == "pool_registered":
            log.info("pool registered: %s", event.message)
            block = str(data.get("block_id"))
            self._pools_by_block.setdefault(block, set()).add(str(data.get("manager")))
            self._slots_per_block = max(1, int(data.get("worker_count", 1)) + int(data.get("prefetch_capacity", 0)))
            self._failed_in_a_row = 0
        elif event.kind in ("pool_lost", "pool_released"):
            log.log(logging.ERROR if event.kind == "pool_lost" else logging.INFO, "%s", event.message)
            self._pools_by_block.get(str(data.get("block_id")), set()).discard(str(data.get("manager")))
        elif event.kind == "pool_rejected":
            log.error("a pool was refused: %s", event.message)
            if not any(self._pools_by_block.values()):
                # No pool can serve us: waiting would only hide the reason.
                self.set_bad_state_and_fail_all(errors.VersionMismatch(event.message))
        else:
            log.warning("%s: %s", event.kind, event.message)

    def _interchange_died(self) -> None:
        assert self._interchange is not None
        self._interchange.wait()
        if not self._shutting_down:
            self.set_bad_state_and_fail_all(InterchangeLost(
                f"the interchange (pid {self._interchange.pid}) died: {self._interchange_exit()}. "
                "Every pending task failed; create a new executor to go on"
            ))
        self._io_stop = self._io_stop or self._shutting_down

    def _io_keep_time(self) -> None:
        now = time.monotonic()
        if self._bad is None and not self._shutting_down and now - self._ic_last_heard > self.heartbeat_threshold:
            self.set_bad_state_and_fail_all(InterchangeLost(
                f"the interchange sent nothing for {now - self._ic_last_heard:.0f} s "
                f"(heartbeat_threshold={self.heartbeat_threshold}); it is hung or unreachable"
            ))
        if now - self._ic_last_sent >= self.heartbeat_period:
            self._to_interchange(protocol.Heartbeat())
        if self._arena is not None and now >= self._next_trim:
            self._arena.trim()  # an idle executor gives its shared memory back
            self._next_trim = now + 1.0

    # ------------------------------------------------------------------
    # blocks and scaling
    # ------------------------------------------------------------------

    def _launch_values(self, block_id: str) -> dict[str, Any]:
        addresses = self._addresses()
        logdir = os.path.join(self.worker_logdir_root, self.label) if self.worker_logdir_root else self.logdir
        values: dict[str, Any] = {
            "python": shlex.quote(sys.executable),
            "debug": "--debug" if self.worker_debug else "",
            "max_workers": "inf" if self.max_workers == math.inf else self.max_workers,
            "addresses": ",".join(addresses),
            "task_port": self.worker_task_port or 0,  # 0: no TCP port (an unencrypted run on this host)
            "result_port": self.worker_result_port or 0,
            "task_url": f"tcp://{addresses[0]}:{self.worker_task_port}",
            "result_url": f"tcp://{addresses[0]}:{self.worker_result_port}",
            # The default launch_cmd's way in: ipc:// for pools on this host (unless an address was
            # given: pools in another network namespace, say), else the addresses to probe.
            "pool_urls": (
                f"--task_url=ipc://{self._ipc_name}-tasks --result_url=ipc://{self._ipc_name}-results"
                if self._ipc_name and not self.address else ""
            ),
            "prefetch_capacity": self.prefetch_capacity,
            "cores_per_worker": self.cores_per_worker,
            "mem_per_worker": self.mem_per_worker,
            "poll_period": self.poll_period,
            "logdir": shlex.quote(logdir),
            "block_id": block_id,
            "heartbeat_period": self.heartbeat_period,
            "heartbeat_threshold": self.heartbeat_threshold,
            "address_probe_timeout": self.address_probe_timeout or 30,
            "nodes_per_block": self.provider.nodes_per_block,
            "cert_dir": shlex.quote(self.cert_dir) if self.cert_dir else "",
            "uid": "",
        }
        return values

    def launch_command(self, block_id: str) -> str:
        """The shell command that starts one pool of ``block_id`` (launch_cmd, formatted)."""
        template = self.launch_cmd or DEFAULT_LAUNCH_CMD
        try:
            cmd = template.format(**self._launch_values(block_id))
        except (KeyError, IndexError) as exc:
            raise ConfigurationError(
                f"launch_cmd has an unknown placeholder {exc}; known ones: {sorted(self._launch_values(block_id))}"
            ) from None
        cmd = cmd.replace("{block_id}", block_id)  # Parsl-style templates escape it as {{block_id}}
        if self.cert_dir and "{cert_dir}" not in template:
            # A launch_cmd written before encryption (Parsl 1.0's): the pool finds the keys here.
            cmd = f"export HTEX_CERT_DIR={shlex.quote(self.cert_dir)}; {cmd}"
        if self.working_dir:
            cmd = f"cd {shlex.quote(self.working_dir)} && {cmd}"
        return cmd

    def initialize_scaling(self) -> list[str]:
        """Start the provider's first blocks: init_blocks, or min_blocks if that is more."""
        blocks = max(self.provider.init_blocks, self.provider.min_blocks)
        return self.scale_out(blocks) if blocks else []

    def scale_out(self, blocks: int = 1) -> list[str]:
        """Start ``blocks`` more blocks; return their block ids."""
        new = []
        for _ in range(blocks):
            block_id = str(next(self._block_ids))
            try:
                job_id = self.provider.submit(self.launch_command(block_id), 1, f"{self.label}.block-{block_id}")
            except errors.HtexError:
                raise
            except Exception as exc:
                raise ScaleOutFailed(f"the provider could not start block {block_id}: {exc}") from exc
            log.info("started block %s as job %s", block_id, job_id)
            self.blocks[block_id] = job_id
            self.block_mapping[job_id] = block_id
            new.append(block_id)
        return new

    def scale_in(self, blocks: int | None = None, block_ids: list[str] | None = None) -> list[str]:
        """Cancel blocks: those named, or ``blocks`` of them, idle ones first; return their ids.

        Each block's pools are put on hold first, so no new task goes to them
        while the job is being cancelled.
        """
        if block_ids is None:
            live = [b for b in self.blocks if b not in self._block_status or not self._block_status[b].terminal]
            busy = self._busy_blocks()
            live.sort(key=lambda b: (b in busy, -int(b) if b.isdigit() else 0))
            block_ids = live[: blocks if blocks is not None else len(live)]
        for b in block_ids:
            for manager in self._pools_by_block.get(b, ()):
                try:
                    self.hold_worker(manager)
                except Exception:
                    log.warning("could not hold pool %s of block %s", manager, b)
        jobs = [self.blocks[b] for b in block_ids if b in self.blocks]
        if jobs:
            self.provider.cancel(jobs)
        for b in block_ids:
            if self._pools_by_block.get(b) and not self._shutdown_done.is_set():
                try:
                    self._command("drop_block", b, "its block was scaled in", True)
                except Exception:
                    log.warning("could not release the pools of block %s", b)
        for b in block_ids:
            self._block_status[b] = JobStatus(JobState.CANCELLED, "scaled in")
        return list(block_ids)

    def _busy_blocks(self) -> set[str]:
        try:
            return {m["block_id"] for m in self.connected_managers if m["tasks"]}
        except Exception:
            return set()

    def status(self) -> dict[str, JobStatus]:
        """The provider's status of every block this executor started, by block id."""
        ids = list(self.blocks)
        if not ids:
            return {}
        statuses = self.provider.status([self.blocks[b] for b in ids])
        for b, st in zip(ids, statuses, strict=True):
            known = self._block_status.get(b)
            if known is None or known.state is not JobState.CANCELLED:  # keep our own "scaled in" mark
                self._block_status[b] = st
        return {b: self._block_status[b] for b in ids}

    def _watch_blocks(self) -> None:
        """Poll the provider; keep blocks between min and max; give up when blocks keep failing."""
        while not self._watch_stop.wait(self.status_polling_interval):
            try:
                self._watch_once()
            except Exception:
                log.exception("block watcher failed; trying again next period")

    def _watch_once(self) -> None:
        """One round: note ended blocks, then apply the strategy's decision."""
        before = {b: s.state for b, s in self._block_status.items()}
        statuses = self.status()
        for block, st in statuses.items():
            if st.terminal and before.get(block) is not st.state:
                self._block_ended(block, st)
            elif st.state is JobState.HELD and block not in self._pools_by_block:
                # A held job never starts by itself (bad script, unwritable output, ...): a failed start.
                log.error("block %s (job %s) is held by the scheduler: %s; cancelling it", block, self.blocks[block],
                          st.message)
                self._failed_in_a_row += 1
                self._last_failure = f"block {block} (job {self.blocks[block]}) was held by the scheduler: {st.message}"
                self.provider.cancel([self.blocks[block]])
                self._block_status[block] = JobStatus(JobState.FAILED, st.message)
                statuses[block] = self._block_status[block]
        if self._shutting_down or self._bad is not None:
            return
        managers = self.connected_managers if any(self._pools_by_block.values()) else []
        live = [b for b, st in statuses.items() if not st.terminal]
        state = ScalingState(
            outstanding=self.outstanding, live_blocks=len(live), slots_per_block=self._slots_per_block,
            min_blocks=self.provider.min_blocks, max_blocks=self.provider.max_blocks,
            parallelism=self.provider.parallelism, failed_in_a_row=self._failed_in_a_row,
            idle_blocks=_idle_blocks(live, managers, self.max_idletime),
        )
        decision = decide(state)
        if decision.give_up:
            self.set_bad_state_and_fail_all(ScaleOutFailed(
                f"{self._failed_in_a_row} blocks in a row failed to start; the last: {self._last_failure}"
            ))
        elif decision.scale_out:
            self.scale_out(decision.scale_out)
        elif decision.scale_in:
            log.info("scaling in idle blocks %s", list(decision.scale_in))
            self.scale_in(block_ids=list(decision.scale_in))

    def _block_ended(self, block: str, st: JobStatus) -> None:
        """A block's job ended (done, failed, cancelled from outside, walltime): act on it now."""
        ever_connected = block in self._pools_by_block
        log.warning("block %s (job %s) ended: %s %s", block, self.blocks.get(block), st.state.value, st.message)
        if st.state is JobState.FAILED and not ever_connected:
            self._failed_in_a_row += 1
            self._last_failure = f"block {block} (job {self.blocks[block]}) failed before its pool connected: {st.message}"
        if self._pools_by_block.get(block) and not self._shutting_down and self._bad is None:
            # Its pools are gone with the job: fail (or retry) their tasks now, not after heartbeat_threshold.
            try:
                self._command("drop_block", block, f"its job {self.blocks.get(block)} ended ({st.state.value})", False)
            except Exception:
                log.exception("could not tell the interchange that block %s ended", block)

    # ------------------------------------------------------------------
    # shutdown
    # ------------------------------------------------------------------

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False, hub: bool = True,
                 targets: str = "all", block: bool = False) -> None:
        """Stop everything this executor started, in order; safe to call twice.

        1. refuse new tasks;
        2. with ``wait`` (and not ``cancel_futures``), wait for the running tasks;
        3. stop the block watcher;
        4. ask the interchange to stop (it tells the pools), wait up to 2 s, then kill it;
        5. cancel every block with the provider (TERM, then KILL);
        6. fail what is still pending with ExecutorShutdown;
        7. stop the I/O thread and close the socket.

        ``hub``, ``targets`` and ``block`` are accepted for Parsl compatibility.
        """
        if self._forked_copy():
            return  # a forked child's copy: the executor and its blocks are the parent's
        on_our_thread = threading.current_thread() in (self._io_thread, self._watch_thread)
        if wait and on_our_thread:
            # As the stdlib's executors do: waiting here would wait for this very thread.
            raise RuntimeError(
                "shutdown(wait=True) was called from a done-callback (htex's I/O thread), which would wait for "
                "itself; call shutdown(wait=False) there, or shut down from your own thread"
            )
        with self._lock:
            first = self._started and not self._shutting_down
            self._shutting_down = True
        if not first:
            if self._started and threading.current_thread() is not self._io_thread:
                self._shutdown_done.wait(30)
            return
        if wait and not cancel_futures:
            concurrent.futures.wait(list(self.tasks.values()))
        self._watch_stop.set()
        if self._watch_thread is not None and self._watch_thread is not threading.current_thread():
            self._watch_thread.join(10)
        self._stop_interchange()
        if self.blocks:
            try:
                self.provider.cancel(list(self.blocks.values()))
            except Exception:
                log.exception("cancelling blocks failed")
        with self._lock:
            pending = list(self.tasks.values())
            self.tasks.clear()
        for fut in pending:
            _fail(fut, ExecutorShutdown("the executor was shut down before this task finished"))
        self._make_room()
        self._io_stop = True
        self._wake()
        if self._io_thread is not None and self._io_thread is not threading.current_thread():
            self._io_thread.join(5)
        for reply in list(self._replies.values()):
            _fail(reply, ExecutorShutdown("the executor was shut down"))
        self._sock.close(linger=0)
        if self._arena is not None:
            self._arena.close()  # workers that still map a segment keep it until they unmap it
            self._leases.clear()
        self._ctx.term()
        security.remove_private_dir(self._ipc_dir)
        for fd in (self._wake_r, self._wake_w, self._ic_pidfd):
            try:
                os.close(fd)
            except OSError:
                pass
        _live_executors.discard(self)
        self._shutdown_done.set()
        log.info("executor %s shut down", self.label)

    def _stop_interchange(self) -> None:
        ic = self._interchange
        if ic is None or ic.poll() is not None:
            return
        with self._lock:
            self._outbox_control.append(protocol.Shutdown(reason="client shutdown"))
        self._wake()
        try:
            ic.wait(2.0)
        except subprocess.TimeoutExpired:
            log.warning("the interchange did not stop in 2 s; killing it")
            ic.kill()
            ic.wait()


class StdlibView(concurrent.futures.Executor):
    """A ``concurrent.futures.Executor`` over an htex executor, for code written for the stdlib."""

    def __init__(self, htex: HighThroughputExecutor) -> None:
        self.htex = htex

    def submit(self, fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> Future[Any]:
        return self.htex.submit(fn, {}, *args, **kwargs)

    def map(self, fn: Callable[..., Any], *iterables: Iterable[Any], timeout: float | None = None,
            chunksize: int = 1, **kw: Any) -> Iterator[Any]:
        return self.htex.map(fn, *iterables, timeout=timeout, chunksize=chunksize)

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        self.htex.shutdown(wait, cancel_futures=cancel_futures)


def _idle_blocks(live: list[str], managers: list[dict[str, Any]], max_idletime: float) -> tuple[str, ...]:
    """Live blocks whose every pool has had no task for max_idletime, longest idle first.

    A block with no pool registered yet is not idle: it may still be starting.
    """
    idle: dict[str, float] = {}
    busy = set()
    for m in managers:
        block = str(m["block_id"])
        if m["tasks"] or m["idle_duration"] < max_idletime:
            busy.add(block)
        else:
            idle[block] = min(idle.get(block, math.inf), m["idle_duration"])
    return tuple(sorted((b for b in idle if b in live and b not in busy), key=lambda b: -idle[b]))


def _batches(tasks: list[tuple[int, int, bytes]]) -> Iterator[list[tuple[int, int, bytes]]]:
    """Cut the outbox into messages of at most _BATCH tasks and about _BATCH_BYTES of payload."""
    start, size = 0, 0
    for i, task in enumerate(tasks):
        if i > start and (i - start >= _BATCH or size + len(task[2]) > _BATCH_BYTES):
            yield tasks[start:i]
            start, size = i, 0
        size += len(task[2])
    if start < len(tasks):
        yield tasks[start:]


def _run_chunk(fn: Callable[..., Any], chunk: list[tuple[Any, ...]]) -> list[Any]:
    return [fn(*args) for args in chunk]


def _chunks(iterable: Iterator[tuple[Any, ...]], size: int) -> Iterator[list[tuple[Any, ...]]]:
    while chunk := list(itertools.islice(iterable, size)):
        yield chunk


def _settle(fut: Future[Any], ok: bool, value: Any) -> None:
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


def _fail(fut: Future[Any], exc: BaseException) -> None:
    _settle(fut, False, exc)


def _check(ok: bool, message: str) -> None:
    if not ok:
        raise ConfigurationError(message)


def _next_run_dir(base: str) -> str:
    """runinfo/000, runinfo/001, ... as Parsl numbers its runs."""
    os.makedirs(base, exist_ok=True)
    taken = [int(d) for d in os.listdir(base) if d.isdigit()]
    n = max(taken, default=-1) + 1
    while True:
        path = os.path.join(base, f"{n:03d}")
        try:
            os.makedirs(path)
            return os.path.abspath(path)
        except FileExistsError:
            n += 1


def _bind_in_range(sock: socket.socket, host: str, port_range: tuple[int, int]) -> None:
    """Bind to a random free port in [low, high), as ZeroMQ's bind_to_random_port does."""
    low, high = port_range
    for _ in range(200):
        try:
            sock.bind((host, random.randrange(low, high)))
            return
        except OSError:
            continue
    raise ConfigurationError(f"no free port in {port_range} after 200 tries; widen worker_port_range")


def _all_addresses() -> list[str]:
    """Every IPv4 address of this host, loopback last: the pools probe them in parallel."""
    import psutil

    found = []
    for addrs in psutil.net_if_addrs().values():
        for a in addrs:
            if a.family == socket.AF_INET:
                found.append(a.address)
    found.sort(key=lambda a: a.startswith("127."))
    return found or ["127.0.0.1"]


# Executors still running at interpreter exit are shut down, so that Ctrl-C or a
# forgotten shutdown() leaves no interchange or pool behind.
_live_executors: weakref.WeakSet[HighThroughputExecutor] = weakref.WeakSet()


@atexit.register
def _shutdown_all() -> None:
    for ex in list(_live_executors):
        try:
            ex.shutdown(wait=False)
        except Exception:
            pass


def _forget_executors_in_child() -> None:
    # A forked child inherits the parent's executors (and this atexit hook) but none of its threads:
    # it must not stop the parent's interchange and blocks when it exits.
    _live_executors.clear()


os.register_at_fork(after_in_child=_forget_executors_in_child)
