"""What the cloud providers share: blocks of rented machines (or pods) that boot a script.

A cloud block is ``nodes_per_block`` machines created through the cloud's API,
each given a *boot script* (Google Cloud's ``startup-script``, OpenStack's
user-data, a Kubernetes pod's command).  The node shares no file system with
the client, so everything the pool needs travels inside that script (made by
userdata.py, as for EC2): the pool's CurveZMQ keys (never the interchange's
secret), ``worker_init``, then the launcher's command, whose pool connects back
to the executor's public address over TCP.

A virtual machine powers itself off when its pool ends, and after
``walltime`` (unless ``linger``): the cloud then lists it as stopped, which
ends its block.

Subclasses talk to one cloud through three small methods (``_create``,
``_states``, ``_delete``); this class turns them into the provider's verbs:
a block whose machine is gone, stopped or failed is over, so all its machines
are deleted; a terminal state, once seen, is kept; a cloud that does not
answer makes the block UNKNOWN, never MISSING.
"""

from __future__ import annotations

import importlib
import logging
import re
import uuid
from dataclasses import dataclass
from types import ModuleType

from ..errors import ConfigurationError, ProviderError
from ..launchers import Launcher, SingleNodeLauncher
from . import userdata
from .base import ExecutionProvider, JobState, JobStatus
from .cluster import walltime_seconds

log = logging.getLogger("htex.providers")

def require(module: str, extra: str, package: str, provider: str) -> ModuleType:
    """Import a cloud's client library, or say which extra brings it."""
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        raise ImportError(
            f"{provider} needs the {package} library: pip install 'htex[{extra}]' ({exc})"
        ) from exc


def dns_name(text: str, max_len: int = 40) -> str:
    """``text`` as a name every cloud here takes: lower case letters, digits and '-', a letter first."""
    name = re.sub(r"[^a-z0-9-]+", "-", text.lower()).strip("-")
    if not name[:1].isalpha():
        name = "h" + name
    return name[:max_len].rstrip("-")


@dataclass
class _Block:
    nodes: list[str]  # the cloud's ids of its machines
    final: JobStatus | None = None  # how it ended (or that it was cancelled), once known


class CloudProvider(ExecutionProvider):
    """Base of the cloud providers: a block is ``nodes_per_block`` machines, each booting one script."""

    remote = True
    #: Which cloud this is, in messages ("Google Cloud", "OpenStack", ...).
    cloud_name = "the cloud"
    #: A virtual machine can power itself off (``shutdown -h``); a pod cannot, it ends with its command.
    halts_itself = True
    #: Keep a machine running after its pool ended or its walltime passed (until its block is cancelled).
    linger = False

    def __init__(
        self, *, label: str, nodes_per_block: int, init_blocks: int, min_blocks: int, max_blocks: int,
        parallelism: float, walltime: str, worker_init: str, launcher: Launcher | None, cmd_timeout: int,
        status_polling_interval: float,
    ) -> None:
        if nodes_per_block < 1:
            raise ConfigurationError(f"nodes_per_block must be at least 1, not {nodes_per_block}")
        walltime_seconds(walltime)  # refuse a malformed one now, not at the first block
        self._configure(
            label=label, nodes_per_block=nodes_per_block, init_blocks=init_blocks, min_blocks=min_blocks,
            max_blocks=max_blocks, parallelism=parallelism, walltime=walltime, worker_init=worker_init,
            launcher=launcher if launcher is not None else SingleNodeLauncher(), cmd_timeout=cmd_timeout,
        )
        self._poll_every = status_polling_interval
        self._blocks: dict[str, _Block] = {}
        # Tells this provider's machines from others in the same project (a label or tag on each).
        self.run_tag = uuid.uuid4().hex[:12]

    @property
    def status_polling_interval(self) -> float:
        return self._poll_every

    # ------------------------------------------------------------------ what a cloud implements

    def _create(self, name: str, script: str) -> str:
        """Create one machine booting ``script``; return its id.  ProviderError quoting the cloud."""
        raise NotImplementedError

    def _states(self, ids: list[str]) -> dict[str, JobStatus]:
        """The state of each machine of ``ids`` the cloud still knows (others are left out)."""
        raise NotImplementedError

    def _delete(self, node: str) -> None:
        """Delete one machine; one already gone is no error.  ProviderError quoting the cloud."""
        raise NotImplementedError

    # ------------------------------------------------------------------ the provider's verbs

    def boot_script(self, command: str, tasks_per_node: int, job_name: str) -> str:
        # A machine (not a pod) powers itself off when its pool ends, and after walltime, unless it
        # lingers: the cloud then reports it stopped, and the block ends and is deleted.
        halt = self.halts_itself and not self.linger
        return userdata.boot_script(command, worker_init=self.worker_init, launcher=self.launcher,
                                    tasks_per_node=tasks_per_node, job_name=job_name, halt_after=halt,
                                    walltime_seconds=walltime_seconds(self.walltime) if halt else None)

    def submit(self, command: str, tasks_per_node: int, job_name: str = "htex.block") -> str:
        """Create the block's machines; if one is refused, delete those already made and raise."""
        job_id = f"{dns_name(self._name_prefix(job_name))}-{uuid.uuid4().hex[:8]}"
        script = self.boot_script(command, tasks_per_node, job_id)
        nodes: list[str] = []
        try:
            for i in range(self.nodes_per_block):
                nodes.append(self._create(job_id if self.nodes_per_block == 1 else f"{job_id}-{i}", script))
        except BaseException:
            self._delete_quietly(nodes)
            raise
        self._blocks[job_id] = _Block(nodes)
        log.info("%s block %s: %s", self.cloud_name, job_id, nodes)
        return job_id

    def status(self, job_ids: list[str]) -> list[JobStatus]:
        wanted = [n for j in job_ids if j in self._blocks and not self._blocks[j].final for n in self._blocks[j].nodes]
        states: dict[str, JobStatus] = {}
        error = ""
        if wanted:
            try:
                states = self._states(wanted)
            except ProviderError as exc:  # says nothing about the machines: UNKNOWN, not MISSING
                error = str(exc)
        return [self._block_status(j, states, error) for j in job_ids]

    def _block_status(self, job_id: str, states: dict[str, JobStatus], error: str) -> JobStatus:
        block = self._blocks.get(job_id)
        if block is None:
            return JobStatus(JobState.MISSING, f"{job_id} is not a block of this provider")
        if block.final is not None:  # ended, or cancelled
            return block.final
        if error:
            return JobStatus(JobState.UNKNOWN, error)
        nodes = [states.get(n) or self._gone(n) for n in block.nodes]
        ended = [s for s in nodes if s.terminal]
        if not ended:
            held = next((s for s in nodes if s.state is JobState.HELD), None)
            pending = any(s.state is JobState.PENDING for s in nodes)
            return held or JobStatus(JobState.PENDING if pending else JobState.RUNNING)
        st = ended[0]
        # One machine gone ends the block: its pools are dropped, so its other machines would idle; and
        # one that ended but is still there (stopped, in error, a finished pod) still costs: delete them all.
        self._delete_quietly([n for n in block.nodes if n in states])
        block.final = st
        return st

    def _gone(self, node: str) -> JobStatus:
        return JobStatus(JobState.MISSING, f"{self.cloud_name} no longer knows machine {node}: deleted from outside htex?")

    def cancel(self, job_ids: list[str]) -> list[bool]:
        """Delete every machine of the blocks; True for a block whose machines are all gone or going."""
        ok = []
        for job_id in job_ids:
            block = self._blocks.get(job_id)
            if block is None:
                ok.append(False)
                continue
            ok.append(self._delete_quietly(block.nodes))
            if block.final is None:
                block.final = JobStatus(JobState.CANCELLED, "cancelled")
        return ok

    def _name_prefix(self, job_name: str) -> str:
        """What a block's machines are named after (the cloud's name rules are applied to it)."""
        return job_name

    def _delete_quietly(self, nodes: list[str]) -> bool:
        """Delete each machine, going on after a refusal (logged); True if all were accepted."""
        ok = True
        for node in nodes:
            try:
                self._delete(node)
            except ProviderError as exc:
                log.error("%s: could not delete machine %s: %s", self.cloud_name, node, exc)
                ok = False
        return ok
