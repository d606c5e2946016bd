"""What every provider offers: three verbs over blocks of nodes.

A provider gets *blocks* (one batch job each) from a resource manager:

* ``submit(command, tasks_per_node, job_name) -> job_id`` starts one block
  running ``command`` (wrapped by the provider's launcher) on every node;
* ``status(job_ids) -> [JobStatus]``, in the same order;
* ``cancel(job_ids) -> [bool]``.

The executor's scaling code uses only these and the attributes below.
"""

from __future__ import annotations

import enum
from abc import ABC, abstractmethod
from dataclasses import dataclass

from ..errors import ConfigurationError
from ..launchers import Launcher


class JobState(enum.Enum):
    PENDING = "pending"
    RUNNING = "running"
    COMPLETED = "completed"
    FAILED = "failed"
    CANCELLED = "cancelled"
    TIMEOUT = "timeout"
    HELD = "held"
    UNKNOWN = "unknown"
    MISSING = "missing"

    @property
    def terminal(self) -> bool:
        return self in _TERMINAL


_TERMINAL = {JobState.COMPLETED, JobState.FAILED, JobState.CANCELLED, JobState.TIMEOUT, JobState.MISSING}


@dataclass
class JobStatus:
    state: JobState
    message: str = ""
    exit_code: int | None = None
    stdout_path: str | None = None
    stderr_path: str | None = None

    @property
    def terminal(self) -> bool:
        return self.state.terminal


class ExecutionProvider(ABC):
    """Base of all providers; subclasses set these attributes in ``__init__``."""

    label: str = "provider"
    nodes_per_block: int = 1
    init_blocks: int = 1
    min_blocks: int = 0
    max_blocks: int = 1
    parallelism: float = 1.0
    walltime: str = "00:15:00"
    worker_init: str = ""
    cmd_timeout: int = 30
    launcher: Launcher
    script_dir: str | None = None
    # Workers run on other hosts (so the interchange listens on every interface).
    remote: bool = False

    def _configure(
        self, *, label: str, nodes_per_block: int, init_blocks: int, min_blocks: int, max_blocks: int,
        parallelism: float, walltime: str, worker_init: str, launcher: Launcher, cmd_timeout: int,
    ) -> None:
        """Set what every provider has, refusing block limits that no scaling could keep.

        Checked here, when the provider is made: the executor starts
        max(init_blocks, min_blocks) blocks before it scales, so a
        min_blocks above max_blocks would start more blocks than allowed.
        """
        if not 0 <= min_blocks <= max_blocks:
            raise ConfigurationError(f"need 0 <= min_blocks ({min_blocks}) <= max_blocks ({max_blocks})")
        self.label = label
        self.nodes_per_block = nodes_per_block
        self.init_blocks = init_blocks
        self.min_blocks = min_blocks
        self.max_blocks = max_blocks
        self.parallelism = parallelism
        self.walltime = walltime
        self.worker_init = worker_init
        self.launcher = launcher
        self.cmd_timeout = cmd_timeout
        self.script_dir = None

    @abstractmethod
    def submit(self, command: str, tasks_per_node: int, job_name: str = "htex.block") -> str:
        """Start one block; return its job id.  Raise ProviderError quoting the scheduler."""

    @abstractmethod
    def status(self, job_ids: list[str]) -> list[JobStatus]:
        """The state of each job, in order."""

    @abstractmethod
    def cancel(self, job_ids: list[str]) -> list[bool]:
        """Cancel the jobs; True for each one the scheduler accepted to cancel."""

    def close(self) -> None:
        """Release what the provider made for its blocks (a cloud's network...): called once at shutdown,
        after every block was cancelled.  Most providers make nothing: the default does nothing."""
        return None

    @property
    def status_polling_interval(self) -> float:
        """How often, in seconds, the executor should call ``status``."""
        return 60.0

    def __repr__(self) -> str:
        fields = ", ".join(
            f"{k}={getattr(self, k)!r}"
            for k in ("init_blocks", "min_blocks", "max_blocks", "nodes_per_block", "parallelism", "walltime")
        )
        return f"{type(self).__name__}({fields})"
