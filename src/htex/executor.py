"""HighThroughputExecutor: the public face, in the user's process.

It holds the spec's parameters and methods and puts the pieces together; each
piece does one job in a module of its own (docs/architecture.md draws them):

* ``client.ClientThread``: the I/O thread, the only one that talks to the
  interchange (``client.InterchangeProcess``, the child process it watches);
* ``inflight``: the lifecycle (one lock) and the tasks in flight (futures,
  resends, the ``max_outstanding`` window);
* ``scaling.Blocks`` and ``scaling.BlockPoller``: the blocks, and the thread
  that applies ``scaling.decide`` every ``status_polling_interval``;
* ``rundir``: the run directory and its connection file; ``security``: keys
  and the private directory of the run's UNIX sockets.

``start()`` and ``shutdown()`` are written as their lists of named steps.
"""

from __future__ import annotations

import atexit
import concurrent.futures
import dataclasses
import logging
import math
import os
import sys
import threading
import weakref
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import Future
from typing import Any

import psutil

from . import cancel, endpoints, placement, poolcmd, protocol, resources, rundir, security, selectors, serialize, shm
from .client import ClientThread, InterchangeProcess
from .errors import ConfigurationError
from .inflight import Inflight, Lifecycle
from .mapping import map_in_order
from .monitoring.config import Monitoring
from .providers.base import ExecutionProvider, JobStatus
from .providers.cluster import walltime_seconds
from .providers.local import LocalProvider
from .scaling import BlockPoller, Blocks

__all__ = ["HighThroughputExecutor", "StdlibView"]

log = logging.getLogger("htex.executor")

COMMAND_SECONDS = 10.0  # for the interchange to answer a control request
SECOND_SHUTDOWN_SECONDS = 30.0  # a second shutdown() waits this long for the first to finish



class HighThroughputExecutor:
    """Run Python functions on pools of workers, through an interchange, over ZeroMQ.

    Parameters are those of Parsl 1.0's HighThroughputExecutor (see the README);
    ``max_workers_per_node`` is accepted as today's Parsl spells ``max_workers``.
    Node placement, as today's Parsl: ``available_accelerators`` and ``cpu_affinity``
    (placement.py), ``manager_selector`` (selectors.py), ``drain_period`` (counted
    back from the provider's walltime; scaling.py starts the replacement).
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
        prefetch_capacity: int | str = "auto",  # the spec says 0: the one default we change (see prefetch.py)
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
        available_accelerators: int | Sequence[str] | None = None,
        cpu_affinity: str = "none",
        manager_selector: selectors.ManagerSelector | None = None,
        drain_period: float | None = None,
        monitoring: bool | Monitoring | None = None,
    ) -> None:
        if max_workers_per_node is not None:
            max_workers = max_workers_per_node
        _check(cores_per_worker > 0, f"cores_per_worker must be > 0, got {cores_per_worker}")
        _check(max_workers >= 1, f"max_workers must be >= 1, got {max_workers}")
        _check(mem_per_worker is None or mem_per_worker > 0, f"mem_per_worker must be > 0 GB, got {mem_per_worker}")
        _check(prefetch_capacity == "auto" or (type(prefetch_capacity) is int and prefetch_capacity >= 0),
               f'prefetch_capacity must be "auto" or an integer >= 0, got {prefetch_capacity!r}')
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
        self.interchange_port_range = interchange_port_range or (55000, 56000)  # accepted: the interchange is local
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
        self.encrypted = encrypted  # None: on when libzmq has CURVE (decided at start())
        self.lost_task_retries = lost_task_retries
        self.max_outstanding = max_outstanding
        self.max_idletime = max_idletime  # seconds a block may sit idle before it is scaled in
        self.shared_memory = shared_memory  # None: on when every pool runs on this host; decided at start()
        # Node placement (placement.py): checked now; a list of core groups against this host's cores
        # when the pools run here (elsewhere, the pool checks it against its node's).
        self.available_accelerators = placement.accelerator_list(available_accelerators)
        self.cpu_affinity = placement.check_affinity(cpu_affinity)
        if not self.provider.remote:
            placement.check_groups_fit(self.cpu_affinity, placement.node_cores())
        self.manager_selector = manager_selector
        self._packed_selector = selectors.pack(manager_selector)  # checked now: it must pickle
        self.drain_period = drain_period  # seconds before the walltime: pools stop taking tasks (scaling.py)
        self._pool_drain_period()  # checked now against the provider's walltime
        self.cert_dir: str | None = None
        self.client_dir: str | None = None  # the directory start() was called in: where tasks run by default
        self.monitoring = Monitoring.of(monitoring)  # None: off
        self.hub_address: str | None = None  # the monitoring hub's TCP address and port, once started
        self.hub_port: int | None = None
        self._monitoring: Any = None  # monitoring.session.MonitoringSession while it runs
        self._monitor: Any = None  # monitoring.reporters.ClientReporter: the hooks' target
        self.worker_task_port: int | None = None
        self.worker_result_port: int | None = None
        self._lifecycle = Lifecycle()
        self._inflight = Inflight(self._lifecycle, max_outstanding, lost_task_retries, None)
        self._functions = serialize.FunctionRegistry()
        self._blocks = Blocks(self.provider, label, self.launch_command, self._ask, self._lifecycle,
                              lambda: len(self._inflight), max_idletime, self.set_bad_state_and_fail_all)
        self._endpoints = endpoints.Endpoints(address, self.provider)  # made again at start(), as set then
        self._client: ClientThread | None = None
        self._interchange: InterchangeProcess | None = None
        self._poller: BlockPoller | None = None
        self._largest_pool: resources.Limits | None = None  # found at the first task with needs
        # What each TaskFuture's cancel() calls: made once, so submit() pays nothing for it.
        self._cancel_ref: weakref.WeakMethod[cancel.CancelMany] = weakref.WeakMethod(self._cancel)  # type: ignore[arg-type]

    # -- start ---------------------------------------------------------------------

    @property
    def logdir(self) -> str:
        return os.path.join(self.run_dir, self.label)

    def start(self) -> None:
        """Start the interchange, connect to it, and start the first blocks.

        Configuration is checked first, so a bad launch_cmd fails here with
        nothing started; a failure after the interchange is up undoes it all.
        """
        self.client_dir = os.getcwd()
        self._decide_defaults()
        if self.managed:
            self.launch_command("0")  # raises ConfigurationError for an unknown placeholder
        self._lifecycle.start()
        try:
            self._make_run_dir()
            self._open_endpoints()
            if self.monitoring is not None:
                self._start_monitoring()
            self._client = self._make_client()
            self._spawn_interchange()
            if self.managed:  # the ports are ours already: the first blocks start while the interchange boots
                self.initialize_scaling()
            self._client.wait_ready()
        except BaseException:
            self._abandon_start()
            raise
        _live_executors.add(self)
        assert self._interchange is not None
        self._endpoints.write_connection_file(self.logdir, self.label, self.heartbeat_period,
                                              self.heartbeat_threshold, self._interchange.pid)
        if self.managed:
            self._poller = BlockPoller(self._blocks, self.status_polling_interval)
            self._poller.start()

    def _decide_defaults(self) -> None:
        if self.encrypted is None:
            # Secure by default, as today's Parsl: every TCP socket is CURVE, wherever the pools run.
            self.encrypted = security.available()
        if self.shared_memory is None:
            self.shared_memory = not self.provider.remote and shm.supported()
        _check(not self.shared_memory or shm.supported(), "shared_memory=True needs Linux (memfd)")

    def _make_run_dir(self) -> None:
        if not self.run_dir:
            self.run_dir = rundir.next_run_dir("runinfo")
        rundir.make_private_dir(self.logdir)
        if self.provider.script_dir is None:
            self.provider.script_dir = os.path.join(self.logdir, "submit_scripts")
        self.cert_dir = os.path.join(self.logdir, "certs") if self.encrypted else None
        if self.cert_dir:
            security.make_keys(self.cert_dir)

    def _open_endpoints(self) -> None:
        tcp = endpoints.needs_tcp(bool(self.encrypted), self.provider, self.address, self.launch_cmd, self.managed)
        if tcp and not self.encrypted:
            log.warning("executor %s is not encrypted: anyone who can reach its worker ports can register a pool "
                        "and read tasks; use encrypted=False only on a trusted network", self.label)
        self._endpoints = endpoints.Endpoints(self.address, self.provider)
        self._blocks.provider = self.provider
        self._endpoints.open(tcp, self.worker_ports, self.worker_port_range)
        self.worker_task_port = self._endpoints.task_port or None
        self.worker_result_port = self._endpoints.result_port or None

    def _start_monitoring(self) -> None:
        from .monitoring.session import MonitoringSession  # only when asked for

        assert self.monitoring is not None
        ends = self._endpoints
        self._monitoring = MonitoringSession.start(
            self.monitoring, run_dir=self.run_dir, logdir=self.logdir, ipc_dir=ends.ipc_dir, cert_dir=self.cert_dir,
            tcp=bool(ends.task_port), bind_address=ends.bind_address(), local_pools=ends.pool_ipc_prefix is not None)
        self.hub_address, self.hub_port = self._monitoring.hub_address, self._monitoring.hub_port
        self._monitor = self._blocks.monitor = self._monitoring.reporter
        self._monitor.provider = type(self.provider).__name__
        self._monitor.run_started(self.label, self.run_dir)

    def _make_client(self) -> ClientThread:
        self._inflight.arena = shm.Arena() if self.shared_memory else None
        return ClientThread(self.label, self.heartbeat_period, self.heartbeat_threshold,
                            self._lifecycle, self._inflight, self._inflight.arena,
                            on_event=self._blocks.on_event, on_broken=self.set_bad_state_and_fail_all,
                            monitor=self._monitor)

    def _spawn_interchange(self) -> None:
        assert self._client is not None
        ends = self._endpoints
        config = protocol.InterchangeConfig(
            tcp=bool(ends.task_port), client_fd=self._client.interchange_fd,
            bind_address=ends.bind_address(),
            worker_ports=(ends.task_port, ends.result_port) if ends.task_port else None,
            listen_fds=ends.listening_fds(), heartbeat_period=float(self.heartbeat_period),
            heartbeat_threshold=float(self.heartbeat_threshold), logdir=self.logdir, debug=self.worker_debug,
            cert_dir=self.cert_dir, ipc_name=ends.ipc_name, manager_selector=self._packed_selector,
            monitor_url=self._monitoring.interchange_url if self._monitoring else None,
            monitor_run=self._monitoring.run_id if self._monitoring else None,
            monitor_cert_dir=self._monitoring.cert_dir if self._monitoring else None,
        )
        try:
            self._interchange = self._client.spawn_interchange(config, ends.listening_fds(), self.logdir)
        finally:
            ends.handed_over()  # the interchange holds the listening sockets now

    def _abandon_start(self) -> None:
        """start() failed: undo what it did, in reverse."""
        self._lifecycle.begin_shutdown()
        self._blocks.cancel_all()
        if self._client is not None:
            self._client.abandon()
        if self._monitoring is not None:
            self._monitoring.stop()
        self._endpoints.remove()
        self._lifecycle.shut_down.set()

    # -- submit and friends ------------------------------------------------------------

    def submit(
        self, func: Callable[..., Any], resource_specification: dict[str, Any] | None, *args: Any, **kwargs: Any
    ) -> Future[Any]:
        """Run ``func(*args, **kwargs)`` on a worker; return a Future for its result.

        ``resource_specification``: ``{}``, None, or a dict of ``priority`` (as in Parsl's
        HTEX: a number; a lower value runs first, tasks without a priority after every
        task that has one, submission order among equals), ``cores``, ``memory`` (MB) and
        ``gpus``: the task goes to a pool where it fits, and takes that many worker slots
        there (resources.py).  A task no pool of this executor can take fails here.
        """
        spec = _check_submit(func, resource_specification)
        if spec.needs is not None:
            self._limits().check(spec.needs)
        priority = spec.priority
        if self._lifecycle.forked_copy:
            raise RuntimeError(f"this executor belongs to process {self._lifecycle.owner_pid}; a forked child "
                               "cannot submit to it (create an executor in the child)")
        client = self._client
        if client is None:
            raise RuntimeError("call start() (or use `with HighThroughputExecutor(...) as ex`) before submit()")
        payload, lease = serialize.pack_task_args(args, kwargs, self._inflight.arena, may_wait=not client.is_current())
        fut = cancel.TaskFuture()
        fut.cancel_many = self._cancel_ref
        fut.set_running_or_notify_cancel()  # RUNNING: the stdlib's cancel() must not flip it (cancel.py)
        key, blob = self._functions.key_for(func)
        # Not on the I/O thread: a done-callback that submits must not wait for room only that thread makes.
        task_id = self._inflight.add(fut, key, payload, lease, not client.is_current(), priority)
        fut.parsl_executor_task_id = task_id  # type: ignore[attr-defined]
        if self._monitor is not None:
            self._monitor.submitted(task_id, func, len(payload), priority)
        needs = spec.needs
        client.send(task=(task_id, key, payload, priority), function=(key, blob) if blob is not None else None,
                    needs=None if needs is None else (needs.cores, needs.memory, needs.gpus))
        return fut

    def _limits(self) -> resources.Limits:
        """The largest pool this executor can start (for tasks with needs; see resources.limits)."""
        if self._largest_pool is None:
            self._largest_pool = self._find_limits()
        return self._largest_pool

    def _find_limits(self) -> resources.Limits:
        node_cores, node_gb = getattr(self.provider, "cores_per_node", None), getattr(self.provider, "mem_per_node", None)
        if not self.provider.remote:  # pools start on this host
            node_cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
            node_gb = psutil.virtual_memory().total / 2**30
        return resources.limits(self.max_workers, self.cores_per_worker, self.mem_per_worker, node_cores, node_gb,
                                len(self.available_accelerators or ()))

    def map(
        self, fn: Callable[..., Any], *iterables: Iterable[Any], timeout: float | None = None, chunksize: int = 1
    ) -> Iterator[Any]:
        """Like ``concurrent.futures.Executor.map``: results in order, lazily.

        With ``chunksize > 1`` each task runs ``chunksize`` calls, which saves
        overhead for very short functions.
        """
        return map_in_order(lambda f, *a: self.submit(f, {}, *a), fn, iterables, timeout, chunksize,
                            cancel=self._cancel_waiting)

    def cancel(self, future: Future[Any]) -> bool:
        """Stop this task wherever it is; True if it was stopped, False if it had finished.

        Not started (in the client, the interchange or a pool's prefetch): never runs, and the
        future is ``cancelled()``, as ``future.cancel()`` does.  Running: the pool kills the worker
        running it and starts another; the future ends with ``TaskCancelled`` (a CancelledError).
        """
        return self._cancel([future], True)[0]

    def _cancel(self, futures: Sequence[Future[Any]], kill: bool) -> list[bool]:
        client = self._client
        if client is None or not futures:
            return [f.cancelled() for f in futures]
        return cancel.cancel(client, self._inflight, futures, kill, COMMAND_SECONDS, self._cancel_ref)

    def _cancel_waiting(self, futures: list[Future[Any]]) -> None:
        """What ``map`` and ``shutdown(cancel_futures=True)`` do: cancel what has not started, in one request."""
        self._cancel(futures, False)

    @property
    def stdlib(self) -> StdlibView:
        """This executor as a plain ``concurrent.futures.Executor`` (``submit(fn, *args)``)."""
        return StdlibView(self)

    def __enter__(self) -> HighThroughputExecutor:
        if not self._lifecycle.started:
            self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.shutdown(wait=True)

    # -- state ---------------------------------------------------------------------------

    @property
    def tasks(self) -> dict[int, Future[Any]]:
        """Outstanding futures by task id."""
        return self._inflight.futures

    @property
    def dashboard_url(self) -> str | None:
        """Where ``Monitoring(dashboard=True)`` serves this run's dashboard (None: not served)."""
        return self._monitoring.dashboard_url if self._monitoring is not None else None

    @property
    def outstanding(self) -> int:
        """Tasks submitted and not yet done."""
        return len(self._inflight)

    @property
    def connected_managers(self) -> list[dict[str, Any]]:
        """One dict per registered pool: manager, block_id, hostname, worker_count, tasks, active, ..."""
        reply: protocol.StatusReply = self._ask(lambda req: protocol.StatusRequest(req=req))
        return [dataclasses.asdict(p) for p in reply.pools]

    @property
    def connected_workers(self) -> int:
        return sum(m["worker_count"] for m in self.connected_managers)

    def hold_worker(self, worker_id: str) -> bool:
        """Send no new task to the pool (manager) ``worker_id``; its running tasks finish."""
        done: protocol.Done = self._ask(lambda req: protocol.HoldPools(req=req, managers=[worker_id]))
        return done.count > 0

    def stats(self) -> dict[str, Any]:
        """Counters of the interchange: received, dispatched, done, lost, queued, pools, workers."""
        reply: protocol.StatusReply = self._ask(lambda req: protocol.StatusRequest(req=req, pools=False))
        return dataclasses.asdict(reply.stats)

    @property
    def blocks(self) -> dict[str, str]:
        """Block id -> job id, of every block this executor started."""
        with self._blocks.lock:
            return dict(self._blocks.jobs)

    @property
    def block_mapping(self) -> dict[str, str]:
        """Job id -> block id."""
        return {job: block for block, job in self.blocks.items()}

    @property
    def bad_state_is_set(self) -> bool:
        return self._lifecycle.bad is not None

    @property
    def executor_exception(self) -> BaseException | None:
        return self._lifecycle.bad

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
        self._lifecycle.break_with(exception)
        log.error("executor %s is in a bad state: %s", self.label, exception)
        if self._monitor is not None:
            self._monitor.ended_all(list(self._inflight.futures), exception)
        self._inflight.fail_all(exception)

    def _ask(self, make: Callable[[int], protocol.Message], timeout: float = COMMAND_SECONDS) -> Any:
        """Send a control request to the interchange and wait for its answer."""
        if self._client is None or self._lifecycle.shut_down.is_set():
            raise RuntimeError("the executor is not running")
        if self._lifecycle.bad is not None:
            raise self._lifecycle.bad
        return self._client.request(make).result(timeout)

    # -- blocks and scaling ------------------------------------------------------------------

    def launch_command(self, block_id: str) -> str:
        """The shell command that starts one pool of ``block_id`` (launch_cmd, formatted)."""
        return poolcmd.launch_command(self.launch_cmd, self._pool_launch(), block_id)

    def _pool_launch(self) -> poolcmd.PoolLaunch:
        return poolcmd.PoolLaunch(
            python=sys.executable, debug=self.worker_debug, max_workers=self.max_workers,
            addresses=self._endpoints.addresses(), task_port=self._endpoints.task_port,
            result_port=self._endpoints.result_port, ipc_prefix=self._endpoints.pool_ipc_prefix,
            prefetch_capacity=self.prefetch_capacity, cores_per_worker=self.cores_per_worker,
            mem_per_worker=self.mem_per_worker, poll_period=self.poll_period,
            logdir=os.path.join(self.worker_logdir_root, self.label) if self.worker_logdir_root else self.logdir,
            heartbeat_period=self.heartbeat_period, heartbeat_threshold=self.heartbeat_threshold,
            address_probe_timeout=self.address_probe_timeout or poolcmd.DEFAULT_PROBE_TIMEOUT,
            nodes_per_block=self.provider.nodes_per_block, cert_dir=self.cert_dir,
            working_dir=os.path.join(self.client_dir or "", self.working_dir) if self.working_dir else None,
            client_dir=self.client_dir, cpu_affinity=self.cpu_affinity,
            accelerators=tuple(self.available_accelerators), drain_period=self._pool_drain_period(),
            env=self._monitoring.pool_env if self._monitoring else {},
        )

    def _pool_drain_period(self) -> float | None:
        """When a pool drains, in seconds after it starts (the pool's flag): ``drain_period`` before the walltime."""
        if self.drain_period is None:
            return None
        walltime = walltime_seconds(self.provider.walltime)
        _check(0 < self.drain_period < walltime,
               f"drain_period={self.drain_period} must be > 0 and less than the provider's walltime "
               f"({self.provider.walltime!r} = {walltime} s): pools drain that many seconds before their block ends")
        return walltime - self.drain_period

    def initialize_scaling(self) -> list[str]:
        """Start the provider's first blocks: init_blocks, or min_blocks if that is more."""
        blocks = max(self.provider.init_blocks, self.provider.min_blocks)
        return self.scale_out(blocks) if blocks else []

    def scale_out(self, blocks: int = 1) -> list[str]:
        """Start ``blocks`` more blocks; return their block ids."""
        return self._blocks.scale_out(blocks)

    def scale_in(self, blocks: int | None = None, block_ids: list[str] | None = None) -> list[str]:
        """Cancel blocks: those named, or ``blocks`` of them, idle ones first; return their ids.

        Their pools are put on hold first, so no new task goes to them while the jobs are cancelled.
        """
        return self._blocks.scale_in(blocks, block_ids)

    def status(self) -> dict[str, JobStatus]:
        """The provider's status of every block this executor started, by block id."""
        return self._blocks.refresh()

    # -- shutdown ------------------------------------------------------------------------------

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False, hub: bool = True,
                 targets: str = "all", block: bool = False) -> None:
        """Stop everything this executor started, in order; safe to call twice.

        1. refuse new tasks;
        2. with ``cancel_futures``, cancel every task not started (one request, as ``future.cancel()``);
           with ``wait``, wait for the running tasks;
        3. stop the block poller (it may be in a scheduler command: POLLER_JOIN_SECONDS);
        4. ask the interchange to stop (it tells the pools), then kill it after INTERCHANGE_STOP_SECONDS;
        5. cancel every block with the provider;
        6. stop the I/O thread: it fails what is still pending with ExecutorShutdown and closes its
           socket, pipe and pidfd (THREAD_JOIN_SECONDS);
        7. give back the shared memory and the private directory.

        ``hub``, ``targets`` and ``block`` are accepted for Parsl compatibility.
        """
        if self._lifecycle.forked_copy:
            return  # a forked child's copy: the executor and its blocks are the parent's
        client = self._client
        if wait and client is not None and (client.is_current() or (self._poller and self._poller is threading.current_thread())):
            # As the stdlib's executors do: waiting here would wait for this very thread.
            raise RuntimeError(
                "shutdown(wait=True) was called from a done-callback (htex's I/O thread), which would wait for "
                "itself; call shutdown(wait=False) there, or shut down from your own thread"
            )
        if not self._lifecycle.begin_shutdown():
            if self._lifecycle.started and client is not None and not client.is_current():
                self._lifecycle.shut_down.wait(SECOND_SHUTDOWN_SECONDS)
            return
        self._inflight.wake_waiters()
        if cancel_futures and client is not None and not client.is_current():
            self._cancel_waiting(list(self._inflight.futures.values()))
        if wait:
            concurrent.futures.wait(list(self._inflight.futures.values()))
        if self._poller is not None:
            self._poller.stop()
        if client is not None:
            client.stop_interchange()
        self._blocks.cancel_all()
        if client is not None:
            client.close()
        if self._inflight.arena is not None:
            self._inflight.arena.close()  # workers that still map a segment keep it until they unmap it
        if self._monitoring is not None:
            self._monitoring.stop()  # after the interchange and the pools: it gets their last events
        self._endpoints.remove()
        _live_executors.discard(self)
        self._lifecycle.shut_down.set()
        log.info("executor %s shut down", self.label)


class StdlibView(concurrent.futures.Executor):
    """A ``concurrent.futures.Executor`` over an htex executor, for code written for the stdlib.

    ``submit(fn, *args)`` has no room for a priority (every positional argument is
    ``fn``'s), so a view carries one: ``ex.stdlib.with_priority(1).submit(fn, x)``;
    its ``map`` submits at that priority too.
    """

    def __init__(self, htex: HighThroughputExecutor, priority: float | None = None) -> None:
        self.htex = htex
        # Checked now, so a bad priority fails where it was written, not at the first submit.
        self._spec: dict[str, Any] = {} if priority is None else {"priority": priority}
        resources.parse(self._spec)

    def with_priority(self, priority: float | None) -> StdlibView:
        """A view whose tasks have this priority (None: none), as ``submit(func, {"priority": p})``."""
        return StdlibView(self.htex, priority)

    def submit(self, fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> Future[Any]:
        return self.htex.submit(fn, self._spec, *args, **kwargs)

    def map(self, fn: Callable[..., Any], *iterables: Iterable[Any], timeout: float | None = None,
            chunksize: int = 1, **kw: Any) -> Iterator[Any]:
        if not self._spec:
            return self.htex.map(fn, *iterables, timeout=timeout, chunksize=chunksize)
        return map_in_order(lambda f, *a: self.htex.submit(f, self._spec, *a), fn, iterables, timeout, chunksize,
                            cancel=self.htex._cancel_waiting)

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        self.htex.shutdown(wait, cancel_futures=cancel_futures)


def _check_submit(func: Callable[..., Any], resource_specification: dict[str, Any] | None) -> resources.Spec:
    """The task's checked resource specification; raises for a bad specification or function."""
    if resource_specification is not None and not isinstance(resource_specification, dict):
        raise TypeError(
            f"submit(func, resource_specification, *args): resource_specification must be a dict or None, "
            f"got {type(resource_specification).__name__}. For the stdlib's submit(fn, *args), use ex.stdlib.submit"
        )
    spec = resources.parse(resource_specification)
    if not callable(func):
        raise TypeError(f"submit() needs a callable, got {type(func).__name__}")
    return spec


def _check(ok: bool, message: str) -> None:
    if not ok:
        raise ConfigurationError(message)


def _default_provider() -> LocalProvider:
    # The spec's default for this executor.
    return LocalProvider(init_blocks=4, min_blocks=0, max_blocks=10, nodes_per_block=1, parallelism=1)


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
