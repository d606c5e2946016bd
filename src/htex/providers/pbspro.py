"""PBSProProvider: PBS Professional / OpenPBS, with ``select`` resource requests and JSON status."""

from __future__ import annotations

import json
from typing import Any

from ..errors import ProviderError
from ..launchers import Launcher
from .base import JobState, JobStatus
from .torque import TorqueProvider, base_id

_PBSPRO_STATES = {
    "Q": JobState.PENDING,
    "W": JobState.PENDING,   # waiting for its start time
    "T": JobState.PENDING,   # in transit
    "M": JobState.PENDING,   # moved to another server
    "B": JobState.RUNNING,   # an array job that has begun
    "R": JobState.RUNNING,
    "E": JobState.RUNNING,   # exiting
    "X": JobState.COMPLETED,  # a finished subjob
    "H": JobState.HELD,
    "S": JobState.HELD,      # suspended
    "U": JobState.HELD,      # suspended: the workstation is busy
}
# PBS Pro's Exit_status values below 0 mean PBS itself ended the job; -29 is
# JOB_EXEC_KILL_WALLTIME, the walltime limit.
_EXIT_WALLTIME = -29


def parse_qstat_json(stdout: str) -> dict[str, JobStatus]:
    """``qstat -f -F json -x`` -> status by numeric job id (``123`` of ``123.server``)."""
    try:
        data = json.loads(stdout) if stdout.strip() else {}
    except json.JSONDecodeError as exc:
        raise ProviderError(f"qstat -F json printed something that is not JSON: {exc}: {stdout[:200]!r}") from exc
    found: dict[str, JobStatus] = {}
    for job_id, attrs in (data.get("Jobs") or {}).items():
        code = str(attrs.get("job_state", ""))
        state = _PBSPRO_STATES.get(code, JobState.UNKNOWN)
        exit_code = attrs.get("Exit_status")
        message = f"qstat: {code}"
        if attrs.get("comment"):
            message += f" ({attrs['comment']})"
        if code == "F":  # finished; kept while the server's job history lasts
            if exit_code == _EXIT_WALLTIME:
                state = JobState.TIMEOUT
            elif exit_code == 0:
                state = JobState.COMPLETED
            else:
                state = JobState.FAILED
            message += f", Exit_status {exit_code}"
        found[base_id(job_id)] = JobStatus(state, message, exit_code if state.terminal and isinstance(exit_code, int) else None)
    return found


class PBSProProvider(TorqueProvider):
    """Blocks from PBS Professional/OpenPBS: ``qsub -l select=...``, ``qstat -f -F json -x``, ``qdel``.

    Parameters follow Parsl's PBSProProvider: ``account``, ``queue``,
    ``scheduler_options``, ``select_options`` (appended to each chunk, e.g.
    ``"ngpus=1"``), ``worker_init``, ``nodes_per_block``, ``cpus_per_node``,
    ``walltime``, ``launcher`` (SingleNodeLauncher by default).  A block asks
    for ``select=NODES:ncpus=CPUS[:select_options]`` and
    ``place=scatter`` (one chunk per host).

    ``qstat -x`` also lists finished jobs while the server keeps job history,
    with their ``Exit_status`` (walltime kills, -29, are reported TIMEOUT).
    """

    def __init__(
        self,
        channel: Any = None,
        account: str | None = None,
        queue: str | None = None,
        scheduler_options: str = "",
        select_options: str = "",
        worker_init: str = "",
        nodes_per_block: int = 1,
        cpus_per_node: int = 1,
        init_blocks: int = 1,
        min_blocks: int = 0,
        max_blocks: int = 1,
        parallelism: float = 1,
        launcher: Launcher | None = None,
        walltime: str = "00:20:00",
        cmd_timeout: int = 120,
        move_files: bool | None = None,
        label: str = "pbspro",
        overrides: str | None = None,
    ) -> None:
        super().__init__(
            channel=channel, account=account, queue=queue, scheduler_options=scheduler_options,
            worker_init=worker_init, nodes_per_block=nodes_per_block, init_blocks=init_blocks,
            min_blocks=min_blocks, max_blocks=max_blocks, parallelism=parallelism, launcher=launcher,
            walltime=walltime, cmd_timeout=cmd_timeout, move_files=move_files, label=label, overrides=overrides,
        )
        self.select_options = select_options
        self.cpus_per_node = cpus_per_node

    def resource_directives(self, tasks_per_node: int) -> list[str]:
        chunk = f"select={self.nodes_per_block}:ncpus={self.cpus_per_node}"
        if self.select_options:
            chunk += ":" + self.select_options.lstrip(":")
        return [f"#PBS -l {chunk}", "#PBS -l place=scatter"]

    def _query(self, job_ids: list[str]) -> dict[str, JobStatus]:
        proc = self._run(["qstat", "-f", "-F", "json", "-x", *job_ids])
        if proc.returncode != 0 and not proc.stdout.strip() and "nknown Job" not in proc.stderr:
            raise self._refused("qstat failed", proc)
        listed = parse_qstat_json(proc.stdout)
        return {j: listed[base_id(j)] for j in job_ids if base_id(j) in listed}
