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

Per-task ``resource_specification`` (an app's ``parsl_resource_specification``)
takes ``priority``, as in Parsl's HTEX, and nothing else.  Not supported:
Parsl's resource monitoring unless a ``remote_monitoring_radio``
(e.g. ``parsl.monitoring.radios.filesystem.FilesystemRadio()``) is given.

This module imports Parsl; the rest of htex never does.
"""

from __future__ import annotations

import inspect
import os
from collections.abc import Callable, Sequence
from concurrent.futures import Future
from typing import Any

try:
    from parsl.executors.base import ParslExecutor
    from parsl.jobs.states import JobState as ParslJobState
    from parsl.providers.base import ExecutionProvider as ParslExecutionProvider
    from parsl.providers.local.local import LocalProvider as ParslLocalProvider
except ImportError as exc:  # pragma: no cover - exercised only where Parsl is missing
    raise ImportError(
        f"htex.parsl needs Parsl, which is not installed here ({exc}). Install it with: pip install htex[parsl]"
    ) from exc

from . import procs
from .errors import ConfigurationError, ProviderError
from .executor import HighThroughputExecutor as _HtexExecutor
from .providers.base import ExecutionProvider, JobState, JobStatus

__all__ = ["HighThroughputExecutor", "ParslProvider", "to_htex_state"]

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


_HTEX_PARAMS = frozenset(inspect.signature(_HtexExecutor.__init__).parameters) - {"self"}


class HighThroughputExecutor(ParslExecutor):
    """Parsl's HighThroughputExecutor, run by htex.

    Takes the parameters of ``htex.HighThroughputExecutor`` (see htex's
    README), and ``remote_monitoring_radio`` for Parsl's resource monitoring.
    ``provider`` may be an htex or a Parsl provider.  A parameter htex does
    not know is a ``ConfigurationError`` that names it, not a silent no-op.
    """

    def __init__(
        self,
        label: str = "HighThroughputExecutor",
        provider: Any = None,
        *,
        storage_access: list[Any] | None = None,
        working_dir: str | None = None,
        remote_monitoring_radio: Any = None,
        **kwargs: Any,
    ) -> None:
        unknown = sorted(set(kwargs) - _HTEX_PARAMS)
        if unknown:
            raise ConfigurationError(
                f"htex.parsl.HighThroughputExecutor does not support {', '.join(unknown)}; "
                f"supported: {', '.join(sorted(_HTEX_PARAMS))}"
            )
        run_dir = kwargs.pop("run_dir", None)
        super().__init__(run_dir=run_dir or ".")
        self.label = label
        # The object the user passed, as Parsl users expect to find it (the DFK sets its script_dir).
        self.provider = provider
        # None, not []: Parsl's data manager falls back to its default staging only on None.
        self.storage_access = storage_access
        self.working_dir = working_dir
        if remote_monitoring_radio is not None:
            self.remote_monitoring_radio = remote_monitoring_radio
        self.htex = _HtexExecutor(
            label=label, provider=as_htex_provider(provider), storage_access=storage_access,
            working_dir=working_dir, **kwargs,
        )
        if provider is None:
            self.provider = self.htex.provider

    # -- what the DFK calls -----------------------------------------------------

    def start(self) -> None:
        # The DFK has set run_dir by now: htex writes under <run_dir>/<label>, as Parsl's executor does.
        self.htex.run_dir = os.path.abspath(self.run_dir)
        self.htex.start()

    def submit(self, func: Callable[..., Any], resource_specification: dict[str, Any], *args: Any,
               **kwargs: Any) -> Future[Any]:
        return self.htex.submit(func, resource_specification, *args, **kwargs)

    def shutdown(self) -> None:
        # As Parsl's own executor: the DFK has waited for what it wanted; what still runs is abandoned
        # (its futures fail with ExecutorShutdown) rather than holding cleanup() hostage.
        try:
            self.htex.shutdown(wait=False)
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
        return self.htex.executor_exception

    def set_bad_state_and_fail_all(self, exception: BaseException) -> None:
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
        return f"htex.parsl.HighThroughputExecutor(label={self.label!r}, provider={self.provider!r})"
