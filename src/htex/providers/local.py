"""LocalProvider: each block is a process group on this machine."""

from __future__ import annotations

import os
import subprocess
import tempfile
from typing import Any

from .. import procs
from ..errors import ProviderError
from ..launchers import Launcher, SingleNodeLauncher
from .base import ExecutionProvider, JobState, JobStatus

# How long a cancelled block gets between SIGTERM and SIGKILL: the pool stops its workers in 2 s.
_CANCEL_GRACE = 3.0
# The end of a failed block's stderr that its status quotes.
_TAIL_BYTES = 2000


class LocalProvider(ExecutionProvider):
    """Run blocks as local processes.

    Each block is a bash script (``worker_init``, then the launcher's command)
    in a session of its own, so that ``cancel`` can end the whole process tree
    and a Ctrl-C in the user's terminal does not reach it (the executor stops
    it in order).  Its stdout and stderr are kept next to the script, in
    ``script_dir`` (the executor sets it to the run directory).

    ``walltime`` is recorded but, as in Parsl, not enforced on local blocks.
    ``channel`` and ``move_files`` are accepted for Parsl compatibility.
    """

    remote = False

    def __init__(
        self,
        channel: Any = None,
        nodes_per_block: int = 1,
        launcher: Launcher | None = None,
        init_blocks: int = 1,
        min_blocks: int = 0,
        max_blocks: int = 1,
        parallelism: float = 1,
        walltime: str = "00:15:00",
        worker_init: str = "",
        cmd_timeout: int = 30,
        move_files: bool | None = None,
        label: str = "local",
    ) -> None:
        self._configure(
            label=label, nodes_per_block=nodes_per_block, init_blocks=init_blocks, min_blocks=min_blocks,
            max_blocks=max_blocks, parallelism=parallelism, walltime=walltime, worker_init=worker_init,
            launcher=launcher if launcher is not None else SingleNodeLauncher(), cmd_timeout=cmd_timeout,
        )
        self.channel = channel
        self.move_files = move_files
        self._jobs: dict[str, _LocalJob] = {}

    @property
    def status_polling_interval(self) -> float:
        return 1.0  # status() is a waitpid: cheap, so failed blocks are noticed fast

    def submit(self, command: str, tasks_per_node: int, job_name: str = "htex.block") -> str:
        script_dir = self.script_dir or tempfile.mkdtemp(prefix="htex-local-")
        os.makedirs(script_dir, exist_ok=True)
        base = os.path.join(script_dir, job_name)
        script = f"#!/bin/bash\n{self.worker_init}\n{self.launcher(command, tasks_per_node, self.nodes_per_block)}\n"
        with open(base + ".sh", "w") as f:
            f.write(script)
        try:
            with open(base + ".stdout", "wb") as out, open(base + ".stderr", "wb") as err:
                proc = subprocess.Popen(
                    ["/bin/bash", base + ".sh"],
                    stdin=subprocess.DEVNULL, stdout=out, stderr=err,
                    start_new_session=True, cwd=script_dir,
                )
        except OSError as exc:
            raise ProviderError(f"cannot start a local block: {exc}") from exc
        job_id = str(proc.pid)
        self._jobs[job_id] = _LocalJob(proc, base + ".stdout", base + ".stderr")
        return job_id

    def status(self, job_ids: list[str]) -> list[JobStatus]:
        return [self._status(j) for j in job_ids]

    def _status(self, job_id: str) -> JobStatus:
        job = self._jobs.get(job_id)
        if job is None:
            return JobStatus(JobState.MISSING, f"no local job {job_id}")
        code = job.proc.poll()
        if code is None:
            state, message = JobState.RUNNING, ""
        elif job.cancelled:
            state, message = JobState.CANCELLED, "cancelled"
        elif code == 0:
            state, message = JobState.COMPLETED, ""
        else:
            said = procs.tail(job.stderr, _TAIL_BYTES) or "(nothing on stderr)"
            state, message = JobState.FAILED, f"block process {procs.describe_exit(code)}: {said}"
        return JobStatus(state, message, exit_code=code, stdout_path=job.stdout, stderr_path=job.stderr)

    def cancel(self, job_ids: list[str]) -> list[bool]:
        """TERM each block's process group, then KILL whatever is left of it after a grace period."""
        jobs = [self._jobs.get(j) for j in job_ids]
        running = [job for job in jobs if job is not None and job.proc.poll() is None]
        for job in running:
            job.cancelled = True
        # Every group is KILLed at the end, even one whose script ended in time: the pool's workers
        # and what tasks started may still be in it.
        procs.stop([job.proc for job in jobs if job is not None], _CANCEL_GRACE, f"blocks of {self.label}", group=True)
        return [job is not None for job in jobs]


class _LocalJob:
    def __init__(self, proc: subprocess.Popen[bytes], stdout: str, stderr: str) -> None:
        self.proc = proc
        self.stdout = stdout
        self.stderr = stderr
        self.cancelled = False
