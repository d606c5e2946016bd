"""CobaltProvider: one block = one Cobalt ``qsub --mode script`` job (ALCF's former scheduler)."""

from __future__ import annotations

import math
from typing import Any

from ..launchers import AprunLauncher, Launcher
from .base import JobState, JobStatus
from .cluster import ClusterProvider

_COBALT_STATES = {
    "queued": JobState.PENDING,
    "starting": JobState.PENDING,
    "running": JobState.RUNNING,
    "exiting": JobState.COMPLETED,
    "killing": JobState.CANCELLED,
    "user_hold": JobState.HELD,
    "admin_hold": JobState.HELD,
    "dep_hold": JobState.HELD,
    "maxrun_hold": JobState.HELD,
    "dep_fail": JobState.FAILED,
}


def parse_cobalt_qstat(stdout: str) -> dict[str, JobStatus]:
    """Cobalt's ``qstat`` table (JobID User WallTime Nodes State Location) -> status by job id."""
    found: dict[str, JobStatus] = {}
    for line in stdout.splitlines():
        parts = line.split()
        if len(parts) < 5 or not parts[0].isdigit():
            continue  # header and the ==== ruler
        code = parts[4].lower()
        found[parts[0]] = JobStatus(_COBALT_STATES.get(code, JobState.UNKNOWN), f"qstat: {parts[4]}")
    return found


class CobaltProvider(ClusterProvider):
    """Blocks from Cobalt: ``qsub -n NODES -t MINUTES --mode script``, ``qstat``, ``qdel``.

    Parameters follow Parsl's CobaltProvider: ``account`` (``-A``),
    ``queue`` (``-q``), ``scheduler_options`` (``#COBALT`` lines),
    ``worker_init``, ``walltime``, ``nodes_per_block``, ``launcher``
    (AprunLauncher by default, as in Parsl: Cobalt ran Cray and Blue Gene
    machines).  Cobalt has no job history in ``qstat``: a job of ours that
    left the queue is reported COMPLETED (CANCELLED if we cancelled it).
    """

    def __init__(
        self,
        channel: Any = None,
        nodes_per_block: int = 1,
        init_blocks: int = 0,
        min_blocks: int = 0,
        max_blocks: int = 1,
        parallelism: float = 1,
        walltime: str = "00:10:00",
        account: str | None = None,
        queue: str | None = None,
        scheduler_options: str = "",
        worker_init: str = "",
        launcher: Launcher | None = None,
        cmd_timeout: int = 10,
        move_files: bool | None = None,
        label: str = "cobalt",
        overrides: str | None = None,
    ) -> None:
        super().__init__(
            label=label, nodes_per_block=nodes_per_block, init_blocks=init_blocks, min_blocks=min_blocks,
            max_blocks=max_blocks, parallelism=parallelism, walltime=walltime, scheduler_options=scheduler_options,
            worker_init=worker_init, launcher=launcher if launcher is not None else AprunLauncher(),
            cmd_timeout=cmd_timeout, channel=channel, move_files=move_files, overrides=overrides,
        )
        self.account = account
        self.queue = queue

    def submit_argv(self, script: str, stdout: str, stderr: str) -> list[str]:
        argv = ["qsub", "-n", str(self.nodes_per_block), "-t", str(max(1, math.ceil(self.walltime_seconds / 60))),
                "-o", stdout, "-e", stderr]
        if self.queue:
            argv += ["-q", self.queue]
        if self.account:
            argv += ["-A", self.account]
        return [*argv, "--mode", "script", script]

    def submit(self, command: str, tasks_per_node: int, job_name: str = "htex.block") -> str:
        name, job = self._new_job(job_name)
        self._write(job.script, self._job_script([], command, tasks_per_node, {"HTEX_JOB_NAME": name}))
        proc = self._run(self.submit_argv(job.script, job.stdout, job.stderr), cwd=self.script_dir)
        if proc.returncode != 0:
            raise self._refused("Cobalt refused the job", proc)
        # the id is the last line; queue routing notes may come first
        return self._submitted(self._parse_job_id(proc, r"^(?P<id>\d+)$", "qsub"), job)

    def _query(self, job_ids: list[str]) -> dict[str, JobStatus]:
        proc = self._run(["qstat", *job_ids])
        listed = parse_cobalt_qstat(proc.stdout)
        if proc.returncode != 0 and not listed and proc.stderr.strip():
            raise self._refused("qstat failed", proc)
        return {j: listed[j] for j in job_ids if j in listed}

    def _cancel_argv(self, job_ids: list[str]) -> list[str]:
        return ["qdel", *job_ids]
