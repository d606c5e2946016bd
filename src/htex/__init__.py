"""htex: run Python functions at high throughput, from a laptop to thousands of nodes.

The public names below are imported lazily (PEP 562): a worker or a pool that
runs ``python -m htex.worker`` pays only for the modules it uses, which keeps
start-up fast and idle memory small.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

_ERRORS = [
    "ConfigurationError", "DeserializationError", "ExecutorBroken", "ExecutorShutdown", "HtexError",
    "InterchangeLost", "InvalidResourceSpecification", "ManagerLost", "ProtocolError", "ProviderError",
    "RemoteError", "RemoteTraceback", "ScaleOutFailed", "SerializationError", "TaskLost", "VersionMismatch",
    "WorkerLost",
]
_LAUNCHERS = [
    "AprunLauncher", "GnuParallelLauncher", "JsrunLauncher", "Launcher", "MpiExecLauncher", "MpiRunLauncher",
    "SimpleLauncher", "SingleNodeLauncher", "SrunLauncher", "SrunMPILauncher", "WrappedLauncher",
]
_WHERE: dict[str, str] = {
    **{name: "htex.errors" for name in _ERRORS},
    **{name: "htex.launchers" for name in _LAUNCHERS},
    "HighThroughputExecutor": "htex.executor",
    "StdlibView": "htex.executor",
    "ExecutionProvider": "htex.providers",
    "JobState": "htex.providers",
    "JobStatus": "htex.providers",
    "LocalProvider": "htex.providers",
    "ClusterProvider": "htex.providers",
    "CobaltProvider": "htex.providers",
    "CondorProvider": "htex.providers",
    "GridEngineProvider": "htex.providers",
    "LSFProvider": "htex.providers",
    "PBSProProvider": "htex.providers",
    "SlurmProvider": "htex.providers",
    "TorqueProvider": "htex.providers",
}

__all__ = [
    "AprunLauncher",
    "ClusterProvider",
    "CobaltProvider",
    "CondorProvider",
    "ConfigurationError",
    "DeserializationError",
    "ExecutionProvider",
    "ExecutorBroken",
    "ExecutorShutdown",
    "GnuParallelLauncher",
    "GridEngineProvider",
    "HighThroughputExecutor",
    "HtexError",
    "InterchangeLost",
    "InvalidResourceSpecification",
    "JobState",
    "JobStatus",
    "JsrunLauncher",
    "LSFProvider",
    "Launcher",
    "LocalProvider",
    "ManagerLost",
    "MpiExecLauncher",
    "MpiRunLauncher",
    "PBSProProvider",
    "ProtocolError",
    "ProviderError",
    "RemoteError",
    "RemoteTraceback",
    "ScaleOutFailed",
    "SerializationError",
    "SimpleLauncher",
    "SingleNodeLauncher",
    "SlurmProvider",
    "SrunLauncher",
    "SrunMPILauncher",
    "StdlibView",
    "TaskLost",
    "TorqueProvider",
    "VersionMismatch",
    "WorkerLost",
    "WrappedLauncher",
    "__version__",
]


def __getattr__(name: str) -> Any:
    module = _WHERE.get(name)
    if module is None:
        raise AttributeError(f"module 'htex' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value  # later look-ups skip this function
    return value


def __dir__() -> list[str]:
    return __all__


if TYPE_CHECKING:
    from .errors import (
        ConfigurationError,
        DeserializationError,
        ExecutorBroken,
        ExecutorShutdown,
        HtexError,
        InterchangeLost,
        InvalidResourceSpecification,
        ManagerLost,
        ProtocolError,
        ProviderError,
        RemoteError,
        RemoteTraceback,
        ScaleOutFailed,
        SerializationError,
        TaskLost,
        VersionMismatch,
        WorkerLost,
    )
    from .executor import HighThroughputExecutor, StdlibView
    from .launchers import (
        AprunLauncher,
        GnuParallelLauncher,
        JsrunLauncher,
        Launcher,
        MpiExecLauncher,
        MpiRunLauncher,
        SimpleLauncher,
        SingleNodeLauncher,
        SrunLauncher,
        SrunMPILauncher,
        WrappedLauncher,
    )
    from .providers import (
        ClusterProvider,
        CobaltProvider,
        CondorProvider,
        ExecutionProvider,
        GridEngineProvider,
        JobState,
        JobStatus,
        LocalProvider,
        LSFProvider,
        PBSProProvider,
        SlurmProvider,
        TorqueProvider,
    )
