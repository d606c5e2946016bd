"""LSFProvider: one block = one IBM Spectrum LSF ``bsub`` job."""

from __future__ import annotations

import math
from typing import Any

from ..errors import ConfigurationError
from ..launchers import Launcher
from .base import JobState, JobStatus
from .cluster import ClusterProvider, safe_job_name

_LSF_STATES = {
    "PEND": JobState.PENDING,
    "WAIT": JobState.PENDING,   # a chunk job waiting to run
    "RUN": JobState.RUNNING,
    "PROV": JobState.RUNNING,   # its hosts are being provisioned
    "DONE": JobState.COMPLETED,
    "EXIT": JobState.FAILED,
    "PSUSP": JobState.HELD,     # suspended (bstop) while pending
    "USUSP": JobState.HELD,
    "SSUSP": JobState.HELD,
    "UNKWN": JobState.UNKNOWN,  # mbatchd lost contact with the host
    "ZOMBI": JobState.FAILED,
}


def parse_bjobs(stdout: str) -> dict[str, JobStatus]:
    """``bjobs -noheader -o "jobid stat exit_code delimiter='|'"`` -> status by job id.

    Unknown ids are reported by LSF as lines like ``Job <123> is not found``
    (skipped here: the caller treats absent ids as gone).
    """
    found: dict[str, JobStatus] = {}
    for line in stdout.splitlines():
        parts = [p.strip() for p in line.split("|")]
        if len(parts) < 2 or not parts[0].isdigit():
            continue
        stat = parts[1]
        state = _LSF_STATES.get(stat, JobState.UNKNOWN)
        code = parts[2] if len(parts) > 2 else ""
        exit_code = int(code) if code.isdigit() else (0 if stat == "DONE" else None)
        found[parts[0]] = JobStatus(state, f"bjobs: {stat}" + (f", exit code {code}" if code not in ("", "-") else ""),
                                    exit_code if state.terminal else None)
    return found


class LSFProvider(ClusterProvider):
    """Blocks from IBM Spectrum LSF: ``bsub``, ``bjobs``, ``bkill``.

    Parameters follow Parsl's LSFProvider: ``project`` (``-P``), ``queue``,
    ``scheduler_options`` (``#BSUB`` lines), ``worker_init``, ``walltime``
    (``-W`` in minutes), ``nodes_per_block``, ``cores_per_block``,
    ``cores_per_node``, ``request_by_nodes`` (``-nnodes``, as on machines with
    CSM such as Summit; otherwise ``-n cores_per_block`` with
    ``span[ptile=cores_per_node]``) and ``bsub_redirection`` (submit as
    ``bsub < script``, which makes every LSF version read the ``#BSUB`` lines).
    """

    def __init__(
        self,
        channel: Any = None,
        nodes_per_block: int = 1,
        cores_per_block: int | None = None,
        cores_per_node: int | None = None,
        init_blocks: int = 1,
        min_blocks: int = 0,
        max_blocks: int = 1,
        parallelism: float = 1,
        walltime: str = "00:10:00",
        scheduler_options: str = "",
        worker_init: str = "",
        project: str | None = None,
        queue: str | None = None,
        cmd_timeout: int = 120,
        move_files: bool | None = True,
        bsub_redirection: bool = False,
        request_by_nodes: bool = True,
        launcher: Launcher | None = None,
        label: str = "lsf",
        overrides: str | None = None,
    ) -> None:
        if not request_by_nodes and not (cores_per_block and cores_per_node):
            raise ConfigurationError("with request_by_nodes=False, LSF needs cores_per_block and cores_per_node")
        super().__init__(
            label=label, nodes_per_block=nodes_per_block, init_blocks=init_blocks, min_blocks=min_blocks,
            max_blocks=max_blocks, parallelism=parallelism, walltime=walltime, scheduler_options=scheduler_options,
            worker_init=worker_init, launcher=launcher, cmd_timeout=cmd_timeout, channel=channel, move_files=move_files,
            overrides=overrides,
        )
        self.cores_per_block = cores_per_block
        self.cores_per_node = cores_per_node
        self.project = project
        self.queue = queue
        self.bsub_redirection = bsub_redirection
        self.request_by_nodes = request_by_nodes

    def directives(self, name: str, stdout: str, stderr: str) -> list[str]:
        d = [
            f"#BSUB -J {name}",
            f"#BSUB -o {stdout}",
            f"#BSUB -e {stderr}",
            f"#BSUB -W {max(1, math.ceil(self.walltime_seconds / 60))}",
        ]
        if self.request_by_nodes:
            d.append(f"#BSUB -nnodes {self.nodes_per_block}")
        else:
            d += [f"#BSUB -n {self.cores_per_block}", f'#BSUB -R "span[ptile={self.cores_per_node}]"']
        if self.project:
            d.append(f"#BSUB -P {self.project}")
        if self.queue:
            d.append(f"#BSUB -q {self.queue}")
        return d

    def submit(self, command: str, tasks_per_node: int, job_name: str = "htex.block") -> str:
        name, job = self._new_job(job_name)
        text = self._job_script(self.directives(safe_job_name(name), job.stdout, job.stderr), command, tasks_per_node)
        self._write(job.script, text)
        if self.bsub_redirection:
            proc = self._run(["bsub"], cwd=self.script_dir, stdin=text)
        else:
            proc = self._run(["bsub", job.script], cwd=self.script_dir)
        if proc.returncode != 0:
            raise self._refused("LSF refused the job", proc)
        # "Job <1234> is submitted to default queue <normal>."
        return self._submitted(self._parse_job_id(proc, r"Job <(?P<id>\d+)> is submitted", "bsub"), job)

    def _query(self, job_ids: list[str]) -> dict[str, JobStatus]:
        proc = self._run(["bjobs", "-a", "-noheader", "-o", "jobid stat exit_code delimiter='|'", *job_ids])
        listed = parse_bjobs(proc.stdout)
        if proc.returncode != 0 and not listed and "not found" not in proc.stderr + proc.stdout:
            raise self._refused("bjobs failed", proc)
        return {j: listed[j] for j in job_ids if j in listed}

    def _cancel_argv(self, job_ids: list[str]) -> list[str]:
        return ["bkill", *job_ids]
