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

``start()`` and ``shutdown()`` are written as their lists of named steps;
``start()``'s steps are in ``executor_start.StartSteps`` and the read-only
queries (``connected_managers``, ``stats``, ...) in ``executor_state.ExecutorState``,
the two bases of the executor's class.
"""

from __future__ import annotations

import atexit
import concurrent.futures
import logging
import math
import os
import threading
import weakref
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import Future
from typing import Any

from . import cancel, endpoints, placement, resources, security, selectors, serialize
from .client import ClientThread, InterchangeProcess
from .executor_start import StartSteps, check
from .executor_state import COMMAND_SECONDS, ExecutorState
from .inflight import Inflight, Lifecycle
from .mapping import map_in_order
from .monitoring.config import Monitoring
from .providers.base import ExecutionProvider, JobStatus
from .providers.local import LocalProvider
from .scaling import BlockPoller, Blocks

__all__ = ["HighThroughputExecutor", "StdlibView"]

log = logging.getLogger("htex.executor")

SECOND_SHUTDOWN_SECONDS = 30.0  # a second shutdown() waits this long for the first to finish


class HighThroughputExecutor(StartSteps, ExecutorState):
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
        *,  # below: not in Parsl 1.0's signature (today's Parsl, or htex's own)
        max_workers_per_node: int | float | None = None, run_dir: str | None = None, encrypted: bool | None = None,
        lost_task_retries: int = 0, max_outstanding: int | None = 100_000, max_idletime: float = 120.0,
        shared_memory: bool | None = None, available_accelerators: int | Sequence[str] | None = None,
        cpu_affinity: str = "none", manager_selector: selectors.ManagerSelector | None = None,
        drain_period: float | None = None, monitoring: bool | Monitoring | None = None,
    ) -> None:
        if max_workers_per_node is not None:
            max_workers = max_workers_per_node
        _check_parameters(cores_per_worker, max_workers, mem_per_worker, prefetch_capacity, lost_task_retries,
                          max_outstanding, encrypted, heartbeat_period, heartbeat_threshold,
                          worker_port_range, interchange_port_range)
        self.label, self.launch_cmd, self.address, self.managed = label, launch_cmd, address, managed
        self.provider: ExecutionProvider = provider if provider is not None else _default_provider()
        self.worker_ports = worker_ports
        self.worker_port_range = worker_port_range or (54000, 55000)
        self.interchange_port_range = interchange_port_range or (55000, 56000)  # accepted: the interchange is local
        self.storage_access = storage_access or []
        self.working_dir, self.worker_debug, self.worker_logdir_root = working_dir, worker_debug, worker_logdir_root
        self.cores_per_worker, self.mem_per_worker, self.max_workers = cores_per_worker, mem_per_worker, max_workers
        self.prefetch_capacity = prefetch_capacity
        self.heartbeat_threshold, self.heartbeat_period = heartbeat_threshold, heartbeat_period
        self.poll_period = poll_period  # accepted for Parsl compatibility: htex blocks, never polls
        self.address_probe_timeout = address_probe_timeout
        self.run_dir = run_dir or ""  # chosen at start(): runinfo/NNN, as Parsl numbers its runs
        self.encrypted = encrypted  # None: on when libzmq has CURVE (decided at start())
        self.lost_task_retries = lost_task_retries
        self.max_outstanding = max_outstanding
        self.max_idletime = max_idletime  # seconds a block may sit idle before it is scaled in
        self.shared_memory = shared_memory  # None: on when every pool runs on this host; decided at start()
        self._check_placement(available_accelerators, cpu_affinity, manager_selector, drain_period)
        self.monitoring = Monitoring.of(monitoring)  # None: off
        self._make_parts(max_outstanding, lost_task_retries, max_idletime)

    def _check_placement(self, available_accelerators: int | Sequence[str] | None, cpu_affinity: str,
                         manager_selector: selectors.ManagerSelector | None, drain_period: float | None) -> None:
        """Node placement (placement.py, selectors.py), checked now; a list of core groups against this
        host's cores when the pools run here (elsewhere, the pool checks it against its node's)."""
        self.available_accelerators = placement.accelerator_list(available_accelerators)
        self.cpu_affinity = placement.check_affinity(cpu_affinity)
        if not self.provider.remote:
            placement.check_groups_fit(self.cpu_affinity, placement.node_cores())
        self.manager_selector = manager_selector
        self._packed_selector = selectors.pack(manager_selector)  # checked now: it must pickle
        self.drain_period = drain_period  # seconds before the walltime: pools stop taking tasks (scaling.py)
        self._pool_drain_period()  # checked now against the provider's walltime

    def _make_parts(self, max_outstanding: int | None, lost_task_retries: int, max_idletime: float) -> None:
        """What start() fills in and shutdown() empties; the futures' bookkeeping and the blocks."""
        self.cert_dir: str | None = None
        self.client_dir: str | None = None  # the directory start() was called in: where tasks run by default
        self.hub_address: str | None = None  # the monitoring hub's TCP address and port, once started
        self.hub_port: int | None = None
        self._monitoring: Any = None  # monitoring.session.MonitoringSession while it runs
        self._monitor: Any = None  # monitoring.reporters.ClientReporter: the hooks' target
        self.worker_task_port: int | None = None
        self.worker_result_port: int | None = None
        self._lifecycle = Lifecycle()
        self._inflight = Inflight(self._lifecycle, max_outstanding, lost_task_retries, None)
        self._functions = serialize.FunctionRegistry()
        self._blocks = Blocks(self.provider, self.label, self.launch_command, self._ask, self._lifecycle,
                              lambda: len(self._inflight), max_idletime, self.set_bad_state_and_fail_all)
        self._endpoints = endpoints.Endpoints(self.address, self.provider)  # made again at start(), as set then
        self._client: ClientThread | None = None
        self._interchange: InterchangeProcess | None = None
        self._poller: BlockPoller | None = None
        self._largest_pool: resources.Limits | None = None  # found at the first task with needs
        # What each TaskFuture's cancel() calls: made once, so submit() pays nothing for it.
        self._cancel_ref: weakref.WeakMethod[cancel.CancelMany] = weakref.WeakMethod(self._cancel)  # type: ignore[arg-type]

    # -- start ---------------------------------------------------------------------

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

    # -- state (the queries are executor_state.py's) ------------------------------------------

    def set_bad_state_and_fail_all(self, exception: BaseException) -> None:
        """Mark the executor broken: every pending future fails with ``exception``, and so will every later submit."""
        self._lifecycle.break_with(exception)
        log.error("executor %s is in a bad state: %s", self.label, exception)
        if self._monitor is not None:
            self._monitor.ended_all(list(self._inflight.futures), exception)
        self._inflight.fail_all(exception)

    # -- blocks and scaling ------------------------------------------------------------------

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


def _check_parameters(cores_per_worker: float, max_workers: float, mem_per_worker: float | None,
                      prefetch_capacity: int | str, lost_task_retries: int, max_outstanding: int | None,
                      encrypted: bool | None, heartbeat_period: int, heartbeat_threshold: int,
                      worker_port_range: tuple[int, int] | None, interchange_port_range: tuple[int, int] | None) -> None:
    """Raise ConfigurationError, naming the parameter, for a value the executor cannot run with."""
    check(cores_per_worker > 0, f"cores_per_worker must be > 0, got {cores_per_worker}")
    check(max_workers >= 1, f"max_workers must be >= 1, got {max_workers}")
    check(mem_per_worker is None or mem_per_worker > 0, f"mem_per_worker must be > 0 GB, got {mem_per_worker}")
    check(prefetch_capacity == "auto" or (type(prefetch_capacity) is int and prefetch_capacity >= 0),
          f'prefetch_capacity must be "auto" or an integer >= 0, got {prefetch_capacity!r}')
    check(lost_task_retries >= 0, f"lost_task_retries must be >= 0, got {lost_task_retries}")
    check(max_outstanding is None or max_outstanding >= 1, f"max_outstanding must be >= 1, got {max_outstanding}")
    check(not encrypted or security.available(), "encrypted=True but this libzmq has no CURVE support")
    check(0 < heartbeat_period <= heartbeat_threshold,
          f"need 0 < heartbeat_period ({heartbeat_period}) <= heartbeat_threshold ({heartbeat_threshold})")
    for name, rng in (("worker_port_range", worker_port_range), ("interchange_port_range", interchange_port_range)):
        check(rng is None or (len(rng) == 2 and 0 < rng[0] < rng[1] < 65536), f"{name} must be (low, high), got {rng}")


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
