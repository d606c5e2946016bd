"""TorqueProvider: one block = one PBS/Torque ``qsub`` job of ``nodes_per_block`` nodes."""

from __future__ import annotations

from typing import Any

from ..launchers import Launcher
from .base import JobState, JobStatus
from .cluster import ClusterProvider, hhmmss, safe_job_name

_TORQUE_STATES = {
    "Q": JobState.PENDING,
    "W": JobState.PENDING,    # waiting for its start time
    "T": JobState.PENDING,    # being moved to another queue
    "R": JobState.RUNNING,
    "E": JobState.RUNNING,    # exiting: still cleaning up
    "C": JobState.COMPLETED,  # kept for keep_completed seconds
    "H": JobState.HELD,
    "S": JobState.HELD,       # suspended
}


def base_id(job_id: str) -> str:
    """``123.server.domain`` -> ``123``: qstat may print the id shortened, or without the server."""
    return job_id.split(".", 1)[0]


def parse_torque_qstat(stdout: str) -> dict[str, JobStatus]:
    """Torque's default ``qstat`` table (Job id, Name, User, Time Use, S, Queue) -> status by numeric id."""
    found: dict[str, JobStatus] = {}
    for line in stdout.splitlines():
        parts = line.split()
        if len(parts) < 6 or not parts[0][:1].isdigit():
            continue  # header and ruler
        code = parts[-2]  # the state column is the one before the queue (names hold no spaces)
        found[base_id(parts[0])] = JobStatus(_TORQUE_STATES.get(code, JobState.UNKNOWN), f"qstat: {code}")
    return found


class TorqueProvider(ClusterProvider):
    """Blocks from PBS/Torque: ``qsub``, ``qstat``, ``qdel``.

    Parameters follow Parsl's TorqueProvider: ``account``, ``queue``,
    ``scheduler_options`` (``#PBS`` lines, after ours), ``worker_init``,
    ``walltime``, ``nodes_per_block`` (``-l nodes=N:ppn=tasks_per_node``) and
    ``launcher`` -- SingleNodeLauncher by default (Parsl's default,
    AprunLauncher, fits only Cray machines; pass it explicitly there).
    ``overrides`` is the old name of ``scheduler_options``.

    The job's stdout/stderr paths are passed as ``qsub -o/-e`` (some
    Torque-compatible front ends ignore ``#PBS -o/-e`` in the script).
    Completed jobs stay in ``qstat`` as ``C`` for the server's
    ``keep_completed`` time; after that a job of ours is reported COMPLETED.
    """

    directive = "#PBS"

    def __init__(
        self,
        channel: Any = None,
        account: str | None = None,
        queue: str | None = None,
        scheduler_options: str = "",
        worker_init: str = "",
        nodes_per_block: int = 1,
        init_blocks: int = 1,
        min_blocks: int = 0,
        max_blocks: int = 1,
        parallelism: float = 1,
        launcher: Launcher | None = None,
        walltime: str = "00:20:00",
        cmd_timeout: int = 120,
        move_files: bool | None = None,
        label: str = "torque",
        overrides: str | None = None,
    ) -> None:
        super().__init__(
            label=label, nodes_per_block=nodes_per_block, init_blocks=init_blocks, min_blocks=min_blocks,
            max_blocks=max_blocks, parallelism=parallelism, walltime=walltime, scheduler_options=scheduler_options,
            worker_init=worker_init, launcher=launcher, cmd_timeout=cmd_timeout, channel=channel, move_files=move_files,
            overrides=overrides,
        )
        self.account = account
        self.queue = queue

    def resource_directives(self, tasks_per_node: int) -> list[str]:
        return [f"#PBS -l nodes={self.nodes_per_block}:ppn={tasks_per_node}"]

    def directives(self, name: str, tasks_per_node: int) -> list[str]:
        d = [
            f"#PBS -S {self.shell}",
            f"#PBS -N {name}",
            *self.resource_directives(tasks_per_node),
            f"#PBS -l walltime={hhmmss(self.walltime_seconds)}",
        ]
        if self.queue:
            d.append(f"#PBS -q {self.queue}")
        if self.account:
            d.append(f"#PBS -A {self.account}")
        return d

    def submit(self, command: str, tasks_per_node: int, job_name: str = "htex.block") -> str:
        _, job = self._new_job(job_name)
        # PBS job names: at most 15 characters in older Torque, starting with a letter
        directives = self.directives(safe_job_name(job_name, 15), tasks_per_node)
        self._write(job.script, self._job_script(directives, command, tasks_per_node))
        proc = self._run(["qsub", "-o", job.stdout, "-e", job.stderr, job.script], cwd=self.script_dir)
        if proc.returncode != 0:
            raise self._refused(f"{type(self).__name__[:-8]} refused the job", proc)
        # "123" (Slurm's wrappers), "123.server" (Torque, PBS Pro)
        return self._submitted(self._parse_job_id(proc, r"^(?P<id>\d+(?:\.\S+)?)$", "qsub"), job)

    def _query(self, job_ids: list[str]) -> dict[str, JobStatus]:
        proc = self._run(["qstat", *job_ids])
        listed = parse_torque_qstat(proc.stdout)
        if proc.returncode != 0 and not listed and "nknown" not in proc.stderr and proc.stderr.strip():
            # qstat exits non-zero when a job is unknown ("Unknown Job Id"); anything else is a failure
            raise self._refused("qstat failed", proc)
        return {j: listed[base_id(j)] for j in job_ids if base_id(j) in listed}

    def _cancel_argv(self, job_ids: list[str]) -> list[str]:
        return ["qdel", *job_ids]
