"""Every exception htex raises, in one place.

The tree, grouped by who is at fault (after trio and httpx): your code or
configuration, the environment (a lost process, a scheduler), or htex itself::

    HtexError
    ├── ConfigurationError (ValueError)        your configuration is wrong
    │   ├── InvalidResourceSpecification       submit() got keys it cannot honour
    │   │   └── MPINodesUnavailable            an MPI task asked for more nodes than a block has
    │   └── PlacementError                     cpu_affinity or available_accelerators cannot be honoured
    ├── SerializationError (pickle.PicklingError)
    │                                          a function, argument or result will not pickle
    ├── DeserializationError (pickle.UnpicklingError)
    │                                          a worker cannot load what was sent (missing module, ...)
    ├── RemoteError                            a task raised an exception that could not be pickled back
    ├── TaskLost                               the task's process went away under it
    │   ├── WorkerLost                         a worker process died while running the task
    │   └── ManagerLost                        a whole pool (node) died or went silent
    ├── ExecutorShutdown                       your shutdown() ended the task before it finished
    ├── TaskCancelled (concurrent.futures.CancelledError)
    │                                          your ex.cancel() stopped the task while it ran
    ├── ExecutorBroken (concurrent.futures.BrokenExecutor)
    │   │                                      the executor can run nothing more
    │   └── InterchangeLost                    the interchange process died or went silent
    ├── CommandFailed                          the interchange could not carry out a control request
    ├── InternalError                          a bug in htex: please report it
    ├── ProtocolError                          a message on the wire is malformed or of another version
    │   └── VersionMismatch                    a pool of another htex/Python version tried to register
    ├── ProviderError                          a batch scheduler refused or failed a command
    │   └── ScaleOutFailed                     blocks could not be started
    └── MonitoringError                        the monitoring hub or its store cannot be used
        └── StoreVersionMismatch               a store of another schema version

Every exception here pickles (it crosses process boundaries) and carries only
a message plus plain attributes.  Foreign errors are translated at the boundary
with ``raise HtexError(...) from exc``.
"""

from __future__ import annotations

import concurrent.futures
import pickle
from typing import Any


class HtexError(Exception):
    """Base of every htex error.  Extra keyword arguments become attributes."""

    def __init__(self, message: str = "", **attributes: Any) -> None:
        super().__init__(message)
        self.__dict__.update(attributes)

    @property
    def message(self) -> str:
        return str(self.args[0]) if self.args else ""

    def __reduce__(self) -> tuple[Any, ...]:
        # Rebuild with the message, then restore attributes: pickles across processes.
        return (self.__class__, (self.message,), dict(self.__dict__))

    def __str__(self) -> str:
        return self.message


class ConfigurationError(HtexError, ValueError):
    """The executor, provider or launcher was configured with values that cannot work."""


class InvalidResourceSpecification(ConfigurationError):
    """submit() was given a resource_specification this executor cannot honour."""


class MPINodesUnavailable(InvalidResourceSpecification):
    """An MPI task asked for more nodes than a block has (``requested``, ``available``): it would never run."""


class PlacementError(ConfigurationError):
    """``cpu_affinity`` or ``available_accelerators`` does not parse, or asks for what the node lacks."""


class SerializationError(HtexError, pickle.PicklingError):
    """A function, an argument or a result could not be pickled."""


class DeserializationError(HtexError, pickle.UnpicklingError):
    """What was sent could not be unpickled on the other side (often a missing module)."""


class RemoteError(HtexError):
    """A task raised an exception that could not cross back; its type and text are kept."""


class TaskLost(HtexError):
    """The process running a task went away; the task may or may not have run."""


class WorkerLost(TaskLost):
    """A worker process died (killed, crashed, exited) while it ran the task."""


class ManagerLost(TaskLost):
    """A worker pool died or stopped answering heartbeats while it held the task."""


class ExecutorBroken(HtexError, concurrent.futures.BrokenExecutor):
    """The executor is in a bad state: every pending and future task fails with this."""


class InterchangeLost(ExecutorBroken):
    """The interchange process exited or stopped answering heartbeats."""


class ExecutorShutdown(HtexError):
    """The executor was shut down (by you) before the task finished.  Not an ExecutorBroken: your
    own shutdown() is no failure of the environment, and ``except BrokenExecutor`` should not catch it."""


class TaskCancelled(HtexError, concurrent.futures.CancelledError):
    """``ex.cancel(future)`` stopped this task while it ran: its worker was killed (and replaced).

    A CancelledError, so ``except CancelledError`` catches it; but the future is not ``cancelled()``:
    the task had started, and the stdlib keeps that state for tasks that never did.  Never retried.
    """


class CommandFailed(HtexError):
    """The interchange could not carry out a control request (hold a pool, drop a block, ...)."""


class InternalError(HtexError):
    """A bug in htex: something that must not happen did.  Please report it with the message."""


class ProtocolError(HtexError):
    """A message could not be decoded: garbage, truncated, or of another protocol version."""


class VersionMismatch(ProtocolError):
    """A pool runs another htex or Python version than the executor."""


class ProviderError(HtexError):
    """A provider command failed; the message quotes the scheduler's own words."""


class ScaleOutFailed(ProviderError):
    """The provider could not start the blocks asked for."""


class MonitoringError(HtexError):
    """Monitoring cannot start or its store cannot be used (not an htex store, the hub did not start)."""


class StoreVersionMismatch(MonitoringError):
    """A monitoring store of another schema version: ``found`` and ``expected`` name both."""


class RemoteTraceback(Exception):
    """Carries a worker's formatted traceback; set as ``__cause__`` of a task's exception."""

    def __init__(self, tb: str) -> None:
        super().__init__(tb)
        self.tb = tb

    def __str__(self) -> str:
        return self.tb


__all__ = [
    "CommandFailed",
    "ConfigurationError",
    "DeserializationError",
    "ExecutorBroken",
    "ExecutorShutdown",
    "HtexError",
    "InterchangeLost",
    "InternalError",
    "InvalidResourceSpecification",
    "MPINodesUnavailable",
    "ManagerLost",
    "MonitoringError",
    "PlacementError",
    "ProtocolError",
    "ProviderError",
    "RemoteError",
    "RemoteTraceback",
    "ScaleOutFailed",
    "SerializationError",
    "StoreVersionMismatch",
    "TaskCancelled",
    "TaskLost",
    "VersionMismatch",
    "WorkerLost",
]
