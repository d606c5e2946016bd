"""htex under Parsl: a Parsl executor that runs on htex, and Parsl providers for htex.

A Parsl user changes one line::

    import parsl
    from parsl.config import Config
    from htex.parsl import HighThroughputExecutor   # instead of parsl.executors

    parsl.load(Config(executors=[HighThroughputExecutor(max_workers=4)]))

``HighThroughputExecutor`` here is a ``parsl.executors.base.ParslExecutor``
that owns an ``htex.HighThroughputExecutor`` and hands it every task.  The
DataFlowKernel sets ``run_dir`` and ``run_id``, calls ``start()``,
``submit(func, resource_specification, *args, **kwargs)`` and ``shutdown()``;
everything else Parsl does (python and bash apps, retries, dependencies, join
apps, memoization, checkpointing, file staging) happens in the DFK around
those calls, so it works unchanged.  Logs go where Parsl's own executor puts
them: ``<DFK run_dir>/<label>/``.

Who scales: htex does.  This class derives from ``ParslExecutor`` and *not*
from Parsl's ``BlockProviderExecutor``, so the DFK does not register it with
its job status poller and Parsl's strategy never calls ``scale_out``,
``scale_in`` or ``status`` on it.  htex's own block watcher keeps blocks
between ``min_blocks`` and ``max_blocks`` by ``parallelism``, scales in blocks
idle for ``max_idletime`` (a parameter of this executor, not of Parsl's
``Config``), and fails every task with ``ScaleOutFailed`` when blocks keep
failing to start.  Two schedulers of the same blocks would fight (one scaling
out what the other scales in), and htex's knows things Parsl's cannot see
(which pools are idle, which blocks never connected), so there is one, and it
is htex's.  Consequences: ``Config(strategy=...)``, ``strategy_period`` and
``Config.max_idletime`` have no effect on this executor.  ``scale_out``,
``scale_in`` and ``status`` remain available to call by hand.

Providers: pass an htex provider (``htex.LocalProvider``, ``htex.providers...``)
or a Parsl one (``parsl.providers.LocalProvider``, ``SlurmProvider``, ...).  A
Parsl provider is wrapped in ``ParslProvider``, which presents it through
htex's provider interface (string job ids, htex ``JobStatus``).

Parameters: every one of today's Parsl HTEX and of Parsl 1.0's is accepted;
those htex does not act on yet are stored and named once in an INFO log
line.  ``working_dir`` keeps Parsl's meaning (the executor's directory for
staging): tasks run where the client was at ``start()``, as with Parsl.

Errors: htex's errors leave this module as classes that are both htex's and
Parsl's (``SerializationError`` is a ``parsl.serialize.errors.SerializationError``),
translated at the boundary (``submit`` and the futures it returns), so the
DFK's and users' ``except`` clauses for Parsl's classes work.

Per-task ``resource_specification`` (an app's ``parsl_resource_specification``)
takes ``priority``, as in Parsl's HTEX, plus htex's ``cores``, ``memory`` and
``gpus``; ``MPIExecutor``'s also takes an MPI task's ``num_nodes``,
``ranks_per_node``, ``num_ranks`` and ``launcher_options`` (htex's mpi.py).

Monitoring: with ``Config(monitoring=MonitoringHub(...))``, the default radio
(``ResultRadio``, in ``htex.parsl_monitoring``) brings the tasks' messages back
with their results, and every pool and block is reported to the hub, as
Parsl's HTEX does; any other radio of Parsl's may be given instead.

This module imports Parsl; the rest of htex never does.
"""

from __future__ import annotations

import inspect
import logging
import os
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import Future
from types import MappingProxyType
from typing import Any

try:
    from parsl.executors import errors as parsl_executor_errors
    from parsl.executors.base import ParslExecutor
    from parsl.executors.high_throughput import errors as parsl_htex_errors
    from parsl.executors.high_throughput import manager_selector as parsl_selectors
    from parsl.jobs.states import JobState as ParslJobState
    from parsl.launchers import SimpleLauncher as ParslSimpleLauncher
    from parsl.providers.base import ExecutionProvider as ParslExecutionProvider
    from parsl.providers.local.local import LocalProvider as ParslLocalProvider
    from parsl.serialize import errors as parsl_serialize_errors
except ImportError as exc:  # pragma: no cover - exercised only where Parsl is missing
    raise ImportError(
        f"htex.parsl needs Parsl, which is not installed here ({exc}). Install it with: pip install htex[parsl]"
    ) from exc

from . import errors, procs, resources, selectors
from .errors import ConfigurationError, ProviderError
from .executor import HighThroughputExecutor as _HtexExecutor
from .launchers import SimpleLauncher
from .mpi_executor import MPIExecutor as _HtexMPIExecutor
from .parsl_monitoring import EXC_ATTRIBUTE, Monitored, Reporter, ResultRadio, run_with_radio
from .providers.base import ExecutionProvider, JobState, JobStatus

__all__ = [
    "BadStateException", "DeserializationError", "HighThroughputExecutor", "InterchangeLost",
    "InvalidResourceSpecification", "MPIExecutor", "ManagerLost", "ParslProvider", "ResultRadio", "ScaleOutFailed",
    "SerializationError", "WorkerLost", "to_htex_state",
]

log = logging.getLogger("htex.parsl")

# Parsl's JobState -> htex's.  SCALED_IN is Parsl's name for "we cancelled it on purpose".
_STATES: dict[ParslJobState, JobState] = {
    ParslJobState.UNKNOWN: JobState.UNKNOWN,
    ParslJobState.PENDING: JobState.PENDING,
    ParslJobState.RUNNING: JobState.RUNNING,
    ParslJobState.CANCELLED: JobState.CANCELLED,
    ParslJobState.COMPLETED: JobState.COMPLETED,
    ParslJobState.FAILED: JobState.FAILED,
    ParslJobState.TIMEOUT: JobState.TIMEOUT,
    ParslJobState.HELD: JobState.HELD,
    ParslJobState.MISSING: JobState.MISSING,
}
if hasattr(ParslJobState, "SCALED_IN"):  # newer Parsl only
    _STATES[ParslJobState.SCALED_IN] = JobState.CANCELLED


def to_htex_state(state: Any) -> JobState:
    """Map a Parsl ``JobState`` to htex's; anything unknown (a newer Parsl) is UNKNOWN."""
    return _STATES.get(state, JobState.UNKNOWN)


def _forwarded(name: str, default: Any = None) -> Any:
    """A property that reads and writes ``name`` on the wrapped Parsl provider."""
    return property(
        lambda self: getattr(self.parsl_provider, name, default),
        lambda self, value: setattr(self.parsl_provider, name, value),
    )


class ParslProvider(ExecutionProvider):
    """A Parsl provider seen through htex's provider interface.

    Attributes (blocks, parallelism, ``script_dir``, ...) are read from and
    written to the Parsl provider itself, so a change made through either
    object (the DFK sets ``script_dir`` on the Parsl one) is seen by both.
    Parsl job ids may be any object: htex keys blocks by string, so each id is
    kept here by its string form.
    """

    def __init__(self, provider: ParslExecutionProvider) -> None:
        self.parsl_provider = provider
        self._jobs: dict[str, Any] = {}
        # Parsl's LocalProvider starts processes on this host; every other Parsl provider
        # may put workers elsewhere, so the interchange must listen beyond loopback.
        self.remote = not isinstance(provider, ParslLocalProvider)

    def __getattr__(self, name: str) -> Any:
        # Called only for names not found normally: anything else a Parsl provider has
        # (cores_per_node, resources, ...).  Not for our own: that would recurse before __init__.
        if name in ("parsl_provider", "_jobs"):
            raise AttributeError(name)
        return getattr(self.parsl_provider, name)

    # Properties, not copies: the base class declares these as class attributes, and the
    # DFK or the user may change them on the Parsl provider after this wrapper is made.
    init_blocks = _forwarded("init_blocks")
    min_blocks = _forwarded("min_blocks")
    max_blocks = _forwarded("max_blocks")
    nodes_per_block = _forwarded("nodes_per_block")
    parallelism = _forwarded("parallelism")
    script_dir = _forwarded("script_dir")
    walltime = _forwarded("walltime", "")
    worker_init = _forwarded("worker_init", "")
    launcher = _forwarded("launcher")

    @property
    def label(self) -> str:  # type: ignore[override]
        return f"parsl:{self.parsl_provider.label}"

    @property
    def status_polling_interval(self) -> float:
        return float(self.parsl_provider.status_polling_interval)

    def submit(self, command: str, tasks_per_node: int, job_name: str = "htex.block") -> str:
        job = self.parsl_provider.submit(command, tasks_per_node, job_name)
        if not job:
            # Parsl's contract allows a false job id for "could not submit, no exception".
            raise ProviderError(f"the Parsl provider {self.parsl_provider.label} did not start {job_name} (job id {job!r})")
        key = str(job)
        self._jobs[key] = job
        return key

    def status(self, job_ids: list[str]) -> list[JobStatus]:
        statuses = self.parsl_provider.status([self._jobs.get(j, j) for j in job_ids])
        return [self._convert(st) for st in statuses]

    def cancel(self, job_ids: list[str]) -> list[bool]:
        return [bool(ok) for ok in self.parsl_provider.cancel([self._jobs.get(j, j) for j in job_ids])]

    @staticmethod
    def _convert(st: Any) -> JobStatus:
        state = to_htex_state(st.state)
        message = st.message or ""
        if state is JobState.FAILED and not message:
            # Parsl's LocalProvider reports a failed block with only an exit code and the
            # paths of its output: put the end of its stderr where htex's errors look.
            tail = procs.tail(getattr(st, "stderr_path", None))
            message = f"exit code {st.exit_code}" + (f"; stderr ends with:\n{tail}" if tail else "")
        return JobStatus(state, message, st.exit_code, getattr(st, "stdout_path", None), getattr(st, "stderr_path", None))

    def __repr__(self) -> str:
        return f"ParslProvider({self.parsl_provider!r})"


def as_htex_provider(provider: Any) -> ExecutionProvider | None:
    """An htex provider for ``provider``: itself if it is one, wrapped if it is Parsl's."""
    if provider is None or isinstance(provider, ExecutionProvider):
        return provider
    if isinstance(provider, ParslExecutionProvider):
        return ParslProvider(provider)
    raise ConfigurationError(
        f"provider must be an htex or a Parsl ExecutionProvider, got {type(provider).__name__}"
    )


class ParslManagerSelector(selectors.ManagerSelector):
    """A Parsl ``ManagerSelector`` of your own, run by htex's interchange: it is given Parsl's arguments
    (manager id -> a record with ``block_id``, ``worker_count``, ``hostname``, ``tasks``; the ids to sort)."""

    def __init__(self, parsl_selector: Any) -> None:
        self.parsl_selector = parsl_selector

    def order(self, pools: list[selectors.P]) -> Sequence[selectors.P]:
        by_id = {p.reg.manager_id.encode(): p for p in pools}
        records = {mid: {"block_id": p.reg.block_id, "worker_count": p.reg.worker_count, "hostname": p.reg.hostname,
                         "tasks": [], "active": True, "draining": False} for mid, p in by_id.items()}
        return [by_id[m] for m in self.parsl_selector.sort_managers(records, set(by_id)) if m in by_id]


def as_htex_selector(selector: Any) -> selectors.ManagerSelector | None:
    """htex's selector for ``selector``: itself if htex's, ours for Parsl's two, a ParslManagerSelector for another."""
    if selector is None or isinstance(selector, selectors.ManagerSelector):
        return selector
    if isinstance(selector, parsl_selectors.RandomManagerSelector):
        return selectors.RandomManagerSelector()
    if isinstance(selector, parsl_selectors.BlockIdManagerSelector):
        return selectors.BlockIdManagerSelector()
    if isinstance(selector, parsl_selectors.ManagerSelector):
        return ParslManagerSelector(selector)
    raise ConfigurationError(f"manager_selector must be a Parsl or htex ManagerSelector, got {type(selector).__name__}")


# ---------------------------------------------------------------------------
# Errors: htex's, as Parsl's classes
# ---------------------------------------------------------------------------
#
# Parsl code (the DFK, Parsl's tests, users' except clauses) catches Parsl's classes; htex code
# catches htex's.  Each class here is both, so that either except clause works.  htex's core
# never imports Parsl: its errors are translated here, at the boundary, by _to_parsl.


class _ParslFlavour(errors.HtexError):
    """Made from a message and attributes, as every htex error; pickles without the executor that
    Parsl's ExecutorError family carries as an attribute."""

    def __init__(self, message: str = "", **attributes: Any) -> None:
        # Not HtexError's (it calls super()): past htex's classes the MRO reaches Parsl's __init__s,
        # whose arguments differ.  Parsl's attributes are set by _to_parsl.
        Exception.__init__(self, message)
        self.__dict__.update(attributes)

    def __reduce__(self) -> tuple[Any, ...]:
        state = {k: v for k, v in self.__dict__.items() if k != "executor"}
        return (self.__class__, (self.message,), state)


class SerializationError(_ParslFlavour, errors.SerializationError, parsl_serialize_errors.SerializationError):
    """A function or argument will not pickle (Parsl's class: ``fname`` names the function)."""


class DeserializationError(_ParslFlavour, errors.DeserializationError, parsl_serialize_errors.DeserializationError):
    """A worker could not load what was sent, or a result could not be loaded (``reason`` says why)."""


# Parsl's class declares a writable ``message``; ours is htex's read-only property (same text).
class InvalidResourceSpecification(_ParslFlavour, errors.InvalidResourceSpecification,  # type: ignore[override]
                                   parsl_executor_errors.InvalidResourceSpecification):
    """submit() got a resource_specification htex cannot honour (``invalid_keys`` names them)."""


class BadStateException(_ParslFlavour, errors.ExecutorBroken, parsl_executor_errors.BadStateException):
    """The executor can run nothing more (Parsl's class for every task of a broken executor)."""


class InterchangeLost(BadStateException, errors.InterchangeLost):
    """The interchange died or went silent."""


class ScaleOutFailed(_ParslFlavour, errors.ScaleOutFailed, parsl_executor_errors.BadStateException):
    """Blocks kept failing to start: Parsl fails the tasks of such an executor with BadStateException."""


class ManagerLost(_ParslFlavour, errors.ManagerLost, parsl_htex_errors.ManagerLost):
    """A whole pool (node) died or went silent with the task."""


class WorkerLost(_ParslFlavour, errors.WorkerLost, parsl_htex_errors.WorkerLost):
    """The worker process running the task died."""


# Most specific first: _to_parsl takes the first class the error is an instance of.
_PARSL_CLASSES: list[tuple[type[errors.HtexError], type[errors.HtexError]]] = [
    (errors.SerializationError, SerializationError),
    (errors.DeserializationError, DeserializationError),
    (errors.InvalidResourceSpecification, InvalidResourceSpecification),
    (errors.InterchangeLost, InterchangeLost),
    (errors.ExecutorBroken, BadStateException),
    (errors.ScaleOutFailed, ScaleOutFailed),
    (errors.ManagerLost, ManagerLost),
    (errors.WorkerLost, WorkerLost),
]


def _to_parsl(exc: BaseException, executor: Any, fname: str = "") -> BaseException:
    """``exc`` as the class Parsl code catches (with the attributes Parsl's class has); others unchanged."""
    if isinstance(exc, _ParslFlavour) or not isinstance(exc, errors.HtexError):
        return exc
    for htex_cls, parsl_cls in _PARSL_CLASSES:
        if isinstance(exc, htex_cls):
            new = parsl_cls(exc.message, **exc.__dict__)
            # What Parsl's own classes set in their __init__ (ours keep htex's message as str()).
            new.__dict__.setdefault("reason", exc.message)
            if isinstance(new, parsl_executor_errors.ExecutorError):
                new.__dict__["executor"] = executor
            if isinstance(new, SerializationError):
                new.__dict__.update(fname=fname, troubleshooting="https://parsl.readthedocs.io/en/latest/faq.html"
                                                                 "#addressing-serializationerror")
            new.__cause__ = exc
            new.__traceback__ = exc.__traceback__
            return new
    return exc


def _translated(fut: Future[Any], executor: Any, fname: str, reporter: Reporter | None = None) -> Future[Any]:
    """A future that ends as ``fut`` does, its exception as Parsl's class; monitoring messages to ``reporter``."""
    out: Future[Any] = Future()
    if hasattr(fut, "parsl_executor_task_id"):  # the DFK logs it
        out.parsl_executor_task_id = fut.parsl_executor_task_id  # type: ignore[attr-defined]

    def copy(done: Future[Any]) -> None:
        if done.cancelled():
            out.cancel()
        elif (exc := done.exception()) is not None:
            monitored = exc.__dict__.pop(EXC_ATTRIBUTE, None)
            if reporter is not None and isinstance(monitored, Monitored):
                reporter.deliver(monitored)
            out.set_exception(_to_parsl(exc, executor, fname))
        else:
            value = done.result()
            if reporter is not None and isinstance(value, Monitored):
                reporter.deliver(value)
                value = value.value
            out.set_result(value)

    fut.add_done_callback(copy)
    return out


# ---------------------------------------------------------------------------
# The executor
# ---------------------------------------------------------------------------

_HTEX_PARAMS = frozenset(inspect.signature(_HtexExecutor.__init__).parameters) - {"self"}

# Today's Parsl parameters htex does not act on yet, with Parsl's defaults: stored, and logged
# once at INFO when given another value (a site config copied from Parsl's docs must load).
_NOT_USED_YET: dict[str, Any] = {
    "interchange_launch_cmd": None,
    "loopback_address": "127.0.0.1",
    "block_error_handler": True,
}


class _ParslHtex(_HtexExecutor):
    """htex's executor, with Parsl's meaning of drain_period."""

    # Parsl's drain_period, set by htex.parsl.HighThroughputExecutor: seconds after a pool starts
    # (htex's counts back from the walltime).
    parsl_drain_period: float | None = None

    def _pool_drain_period(self) -> float | None:
        return self.parsl_drain_period


class HighThroughputExecutor(ParslExecutor):
    """Parsl's HighThroughputExecutor, run by htex.

    Takes every parameter of today's Parsl HTEX and of Parsl 1.0's, and
    those of ``htex.HighThroughputExecutor`` (see htex's README).  Those htex
    does not act on yet (``_NOT_USED_YET``) are stored as attributes and
    named in one INFO log line.  ``working_dir`` keeps Parsl's meaning: it is
    stored for Parsl's staging, and tasks run in the directory the client
    was in at ``start()``.  ``provider`` may be an htex or a Parsl provider.
    A parameter that neither Parsl nor htex knows is a ``ConfigurationError``
    that names it, not a silent no-op.
    """

    _htex_class: type[_ParslHtex] = _ParslHtex  # the htex executor it runs
    _htex_options: Mapping[str, Any] = MappingProxyType({})  # what a subclass adds to its parameters

    def __init__(
        self,
        label: str = "HighThroughputExecutor",
        provider: Any = None,
        *,
        storage_access: list[Any] | None = None,
        working_dir: str | None = None,
        remote_monitoring_radio: Any = None,
        interchange_launch_cmd: Sequence[str] | None = None,
        loopback_address: str = "127.0.0.1",
        worker_port: int | None = None,
        cpu_affinity: str = "none",
        available_accelerators: int | Sequence[str] = (),
        drain_period: int | None = None,
        manager_selector: Any = None,
        block_error_handler: Any = True,
        **kwargs: Any,
    ) -> None:
        unknown = sorted(set(kwargs) - _HTEX_PARAMS)
        if unknown:
            raise ConfigurationError(
                f"htex.parsl.HighThroughputExecutor does not support {', '.join(unknown)}; "
                f"supported: {', '.join(sorted(_HTEX_PARAMS | set(_NOT_USED_YET) | {'remote_monitoring_radio'}))}"
            )
        run_dir = kwargs.pop("run_dir", None)
        super().__init__(run_dir=run_dir or ".")
        self.label = label
        # The object the user passed, as Parsl users expect to find it (the DFK sets its script_dir).
        self.provider = provider
        # None, not []: Parsl's data manager falls back to its default staging only on None.
        self.storage_access = storage_access
        # Parsl's meaning (the executor's own directory, for staging): not where tasks run, so not htex's.
        self.working_dir = working_dir
        # As Parsl's HTEX: a default radio, so MonitoringHub works with no radio given.
        self.remote_monitoring_radio = remote_monitoring_radio if remote_monitoring_radio is not None else ResultRadio()
        self._reporter: Reporter | None = None
        self.worker_port = worker_port  # today's Parsl has one port for its pools; so has htex (one connection each)
        if worker_port is not None and kwargs.get("worker_ports") is None:
            kwargs["worker_ports"] = (worker_port, worker_port)
        given = dict(interchange_launch_cmd=interchange_launch_cmd, loopback_address=loopback_address,
                     block_error_handler=block_error_handler)
        for name, value in given.items():
            setattr(self, name, value)
        unused = [f"{n}={v!r}" for n, v in sorted(given.items()) if v != _NOT_USED_YET[n]]
        if unused:
            log.info("executor %s: accepted, not used yet: %s", label, ", ".join(unused))
        # Parsl's "no accelerators" is 0 or an empty list; htex's is None (an empty list there is a mistake).
        self.htex = self._htex_class(
            label=label, provider=as_htex_provider(provider), storage_access=storage_access,
            available_accelerators=available_accelerators or None, cpu_affinity=cpu_affinity,
            manager_selector=as_htex_selector(manager_selector), **kwargs, **self._htex_options,
        )
        self.manager_selector = manager_selector
        self.cpu_affinity = self.htex.cpu_affinity
        self.available_accelerators = list(self.htex.available_accelerators)  # a list, as Parsl keeps it
        if drain_period is not None and drain_period <= 0:
            raise ConfigurationError(f"drain_period={drain_period} must be > 0 (seconds after a pool starts)")
        self.drain_period = self.htex.parsl_drain_period = drain_period
        if provider is None:
            self.provider = self.htex.provider

    # -- what the DFK calls -----------------------------------------------------

    def start(self) -> None:
        # The DFK has set run_dir by now: htex writes under <run_dir>/<label>, as Parsl's executor does.
        self.htex.run_dir = os.path.abspath(self.run_dir)
        self.htex.start()
        if self.monitoring_messages is not None:  # the DFK has a MonitoringHub
            self._reporter = Reporter(self.monitoring_messages, self.htex, self.run_id or "", self.label,
                                      self.htex.status_polling_interval)
            self._reporter.start()

    def submit(self, func: Callable[..., Any], resource_specification: dict[str, Any], *args: Any,
               **kwargs: Any) -> Future[Any]:
        fname = getattr(func, "__name__", repr(func))
        # Under MonitoringHub, with our radio, the task's messages come back with its result.
        reporter = self._reporter if isinstance(self.remote_monitoring_radio, ResultRadio) else None
        if reporter is not None:
            func, args = run_with_radio, (func, *args)
        try:
            fut = self.htex.submit(func, resource_specification, *args, **kwargs)
        except errors.HtexError as exc:
            parsl_exc = _to_parsl(exc, self, fname)
            if isinstance(parsl_exc, InvalidResourceSpecification) and not hasattr(parsl_exc, "invalid_keys"):
                # Parsl's attribute: the unknown keys, or the bad one's (an MPI task's error names its own)
                given = set(resource_specification or ())
                parsl_exc.invalid_keys = {k for k in given if k not in resources.KEYS} or given
            raise parsl_exc from exc
        return _translated(fut, self, fname, reporter)

    def shutdown(self) -> None:
        # As Parsl's own executor: the DFK has waited for what it wanted; what still runs is abandoned
        # (its futures fail with ExecutorShutdown) rather than holding cleanup() hostage.
        try:
            if self._reporter is not None:
                self._reporter.stop()  # the pools, while they are still connected
            self.htex.shutdown(wait=False)
            if self._reporter is not None:
                self._reporter.poll()  # the blocks' last states
        finally:
            super().shutdown()

    # -- the rest of the spec, delegated ------------------------------------------

    @property
    def outstanding(self) -> int:
        return self.htex.outstanding

    @property
    def connected_managers(self) -> list[dict[str, Any]]:
        return self.htex.connected_managers

    @property
    def connected_workers(self) -> int:
        return self.htex.connected_workers

    @property
    def tasks(self) -> dict[int, Future[Any]]:
        return self.htex.tasks

    @property
    def bad_state_is_set(self) -> bool:
        return self.htex.bad_state_is_set

    @property
    def executor_exception(self) -> BaseException | None:
        exc = self.htex.executor_exception
        return None if exc is None else _to_parsl(exc, self)

    def set_bad_state_and_fail_all(self, exception: BaseException) -> None:
        # As Parsl's executor: every task fails with a BadStateException whose cause is ``exception``.
        if not isinstance(exception, parsl_executor_errors.BadStateException):
            cause = exception
            exception = BadStateException(str(cause), executor=self, reason=str(cause))
            exception.__cause__ = cause
        self.htex.set_bad_state_and_fail_all(exception)

    @property
    def status_polling_interval(self) -> float:
        return self.htex.status_polling_interval

    @property
    def logdir(self) -> str:
        return self.htex.logdir

    def scale_out(self, blocks: int = 1) -> list[str]:
        return self.htex.scale_out(blocks)

    def scale_in(self, blocks: int | None = None, block_ids: Sequence[str] | None = None) -> list[str]:
        return self.htex.scale_in(blocks, list(block_ids) if block_ids is not None else None)

    def status(self) -> dict[str, JobStatus]:
        return self.htex.status()

    def hold_worker(self, worker_id: str) -> bool:
        return self.htex.hold_worker(worker_id)

    def stats(self) -> dict[str, Any]:
        return self.htex.stats()

    def __repr__(self) -> str:
        return f"htex.parsl.{type(self).__name__}(label={self.label!r}, provider={self.provider!r})"


class _ParslMPIHtex(_ParslHtex, _HtexMPIExecutor):
    """htex's MPIExecutor with Parsl's meaning of drain_period, taking Parsl's SimpleLauncher too."""

    @staticmethod
    def _one_pool_per_block(provider: ExecutionProvider) -> bool:
        launcher = provider.launcher
        return isinstance(launcher, (SimpleLauncher, ParslSimpleLauncher))


class MPIExecutor(HighThroughputExecutor):
    """Parsl's MPIExecutor, run by htex (``htex.MPIExecutor``): ``max_workers_per_block`` MPI tasks at once per
    block, each started by its app with ``$PARSL_MPI_PREFIX`` over the nodes its ``parsl_resource_specification``
    asks for (``num_nodes``, ``ranks_per_node`` or ``num_ranks``, ``launcher_options``).  The provider's launcher
    must be a SimpleLauncher (Parsl's or htex's).  Unlike Parsl's, ``encrypted`` defaults to on, as everywhere in
    htex."""

    _htex_class = _ParslMPIHtex

    def __init__(self, label: str = "MPIExecutor", provider: Any = None, *, max_workers_per_block: int = 1,
                 mpi_launcher: str = "mpiexec", **kwargs: Any) -> None:
        self._htex_options = {"max_workers_per_block": max_workers_per_block, "mpi_launcher": mpi_launcher}
        super().__init__(label, provider, **kwargs)
        self.max_workers_per_block = max_workers_per_block
        self.mpi_launcher = mpi_launcher
        self.enable_mpi_mode = True
