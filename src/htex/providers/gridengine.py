"""GridEngineProvider: one block = one ``qsub`` job of (Son of / Univa / Altair) Grid Engine."""

from __future__ import annotations

import re
import time
from typing import Any

from ..errors import ConfigurationError
from ..launchers import Launcher
from .base import JobState, JobStatus
from .cluster import ClusterProvider, hhmmss, safe_job_name


def sge_state(code: str) -> JobState:
    """Map a ``qstat`` state code (``qw``, ``hqw``, ``r``, ``t``, ``dr``, ``Eqw``, ``s`` ...) to a JobState."""
    if "E" in code:
        return JobState.FAILED  # error state: the job will not run until an admin clears it
    if "d" in code:
        return JobState.CANCELLED  # being deleted
    if "h" in code or any(c in code for c in "sST"):
        return JobState.HELD  # on hold, or suspended
    if "r" in code or "t" in code:
        return JobState.RUNNING  # running, or being transferred to its host
    if "q" in code or "w" in code:
        return JobState.PENDING
    return JobState.UNKNOWN


def parse_qstat(stdout: str) -> dict[str, JobStatus]:
    """Grid Engine's plain ``qstat`` table (job-ID prior name user state ...) -> status by job id."""
    found: dict[str, JobStatus] = {}
    for line in stdout.splitlines():
        parts = line.split()
        if len(parts) < 5 or not parts[0].isdigit():
            continue  # header, ruler, or a continuation line
        found[parts[0]] = JobStatus(sge_state(parts[4]), f"qstat: {parts[4]}")
    return found


def parse_qacct(stdout: str) -> JobStatus | None:
    """``qacct -j ID`` (accounting of a finished job) -> its final status, or None if it has none."""
    fields: dict[str, str] = {}
    for line in stdout.splitlines():
        key, _, value = line.partition(" ")
        if key in ("failed", "exit_status") and key not in fields:
            fields[key] = value.strip()
    if "exit_status" not in fields:
        return None
    m = re.match(r"\d+", fields["exit_status"])
    code = int(m.group()) if m else None
    failed = fields.get("failed", "0")
    if failed.split()[0] != "0":
        return JobStatus(JobState.FAILED, f"qacct: failed {failed}", code)
    if code:
        return JobStatus(JobState.FAILED, f"qacct: exit_status {code}", code)
    return JobStatus(JobState.COMPLETED, "qacct: exit_status 0", 0)


class GridEngineProvider(ClusterProvider):
    """Blocks from Grid Engine: ``qsub`` to submit, ``qstat``/``qacct`` for status, ``qdel``.

    Parameters follow Parsl's GridEngineProvider: ``queue``,
    ``scheduler_options`` (``#$`` lines), ``worker_init``, ``walltime``
    (sent as ``-l h_rt``), ``launcher``; and ``pe`` (a parallel
    environment): with it the job asks ``-pe PE N`` for N =
    ``nodes_per_block`` x ``cores_per_node`` (or tasks per node) slots.  Grid
    Engine gives one job several hosts only through a parallel environment,
    so ``nodes_per_block > 1`` needs ``pe``.  ``overrides`` is the old name
    of ``scheduler_options``.

    A job that has left ``qstat`` is looked up with ``qacct`` (exit status).
    Accounting is written some seconds after the end: for up to
    ``qacct_wait`` seconds such a job is UNKNOWN (not terminal), then, still
    without a record (accounting off), COMPLETED with its exit status unknown.
    """

    qacct_wait = 30.0

    def __init__(
        self,
        channel: Any = None,
        nodes_per_block: int = 1,
        init_blocks: int = 1,
        min_blocks: int = 0,
        max_blocks: int = 1,
        parallelism: float = 1,
        walltime: str = "00:10:00",
        scheduler_options: str = "",
        worker_init: str = "",
        launcher: Launcher | None = None,
        cmd_timeout: int = 60,
        queue: str | None = None,
        pe: str | None = None,
        cores_per_node: int | None = None,
        move_files: bool | None = True,
        label: str = "grid_engine",
        overrides: str | None = None,
    ) -> None:
        if nodes_per_block > 1 and not pe:
            raise ConfigurationError("Grid Engine spreads a job over several hosts only through a parallel "
                                     "environment: set pe= (one whose allocation_rule spans hosts)")
        super().__init__(
            label=label, nodes_per_block=nodes_per_block, init_blocks=init_blocks, min_blocks=min_blocks,
            max_blocks=max_blocks, parallelism=parallelism, walltime=walltime, scheduler_options=scheduler_options,
            worker_init=worker_init, launcher=launcher, cmd_timeout=cmd_timeout, channel=channel, move_files=move_files,
            overrides=overrides,
        )
        self.queue = queue
        self.pe = pe
        self.cores_per_node = cores_per_node
        self._gone_since: dict[str, float] = {}

    def directives(self, name: str, stdout: str, stderr: str, tasks_per_node: int) -> list[str]:
        d = [
            f"#$ -S {self.shell}",
            f"#$ -N {name}",
            f"#$ -o {stdout}",
            f"#$ -e {stderr}",
            "#$ -cwd",
            f"#$ -l h_rt={hhmmss(self.walltime_seconds)}",
        ]
        if self.queue:
            d.append(f"#$ -q {self.queue}")
        if self.pe:
            d.append(f"#$ -pe {self.pe} {self.nodes_per_block * (self.cores_per_node or tasks_per_node)}")
        return d

    def submit(self, command: str, tasks_per_node: int, job_name: str = "htex.block") -> str:
        name, job = self._new_job(job_name)
        directives = self.directives(safe_job_name(name), job.stdout, job.stderr, tasks_per_node)
        self._write(job.script, self._job_script(directives, command, tasks_per_node))
        proc = self._run(["qsub", "-terse", job.script], cwd=self.script_dir)
        if proc.returncode != 0:
            raise self._refused("Grid Engine refused the job", proc)
        # -terse prints the id ("123"), or "123.1-4:1" for an array job
        return self._submitted(self._parse_job_id(proc, r"^(?P<id>\d+)", "qsub"), job)

    def _query(self, job_ids: list[str]) -> dict[str, JobStatus]:
        proc = self._run(["qstat"])
        if proc.returncode != 0:
            raise self._refused("qstat failed", proc)
        listed = parse_qstat(proc.stdout)
        return {j: listed[j] for j in job_ids if j in listed}

    def _vanished(self, job_id: str) -> JobStatus:
        proc = self._run(["qacct", "-j", job_id])
        final = parse_qacct(proc.stdout) if proc.returncode == 0 else None
        if final is not None:
            return final
        since = self._gone_since.setdefault(job_id, time.monotonic())
        if time.monotonic() - since < self.qacct_wait:
            return JobStatus(JobState.UNKNOWN, "the job has left qstat; waiting for its qacct record")
        return JobStatus(JobState.COMPLETED, f"the job has left qstat and qacct has no record of it after {self.qacct_wait:g} s")

    def _cancel_argv(self, job_ids: list[str]) -> list[str]:
        return ["qdel", *job_ids]
