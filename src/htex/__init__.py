"""htex: run Python functions at high throughput, from a laptop to thousands of nodes.

The public names are these; everything else lives in private-by-convention modules.
"""

__version__ = "0.1.0"

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
from .providers import ExecutionProvider, JobState, JobStatus, LocalProvider

__all__ = [
    "AprunLauncher",
    "ConfigurationError",
    "DeserializationError",
    "ExecutionProvider",
    "ExecutorBroken",
    "ExecutorShutdown",
    "GnuParallelLauncher",
    "HighThroughputExecutor",
    "HtexError",
    "InterchangeLost",
    "InvalidResourceSpecification",
    "JobState",
    "JobStatus",
    "JsrunLauncher",
    "Launcher",
    "LocalProvider",
    "ManagerLost",
    "MpiExecLauncher",
    "MpiRunLauncher",
    "ProtocolError",
    "ProviderError",
    "RemoteError",
    "RemoteTraceback",
    "ScaleOutFailed",
    "SerializationError",
    "SimpleLauncher",
    "SingleNodeLauncher",
    "SrunLauncher",
    "SrunMPILauncher",
    "StdlibView",
    "TaskLost",
    "VersionMismatch",
    "WorkerLost",
    "WrappedLauncher",
    "__version__",
]
