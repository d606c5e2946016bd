"""LocalProvider: each block is a process group on this machine."""

from __future__ import annotations

import os
import signal
import subprocess
import tempfile
import time
from typing import Any

from ..errors import ProviderError
from ..launchers import Launcher, SingleNodeLauncher
from .base import ExecutionProvider, JobState, JobStatus


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
        if not 0 <= min_blocks <= max_blocks:
            from ..errors import ConfigurationError

            raise ConfigurationError(f"need 0 <= min_blocks ({min_blocks}) <= max_blocks ({max_blocks})")
        self.channel = channel
        self.nodes_per_block = nodes_per_block
        self.launcher = launcher if launcher is not None else SingleNodeLauncher()
        self.init_blocks = init_blocks
        self.min_blocks = min_blocks
        self.max_blocks = max_blocks
        self.parallelism = parallelism
        self.walltime = walltime
        self.worker_init = worker_init
        self.cmd_timeout = cmd_timeout
        self.move_files = move_files
        self.label = label
        self.script_dir: str | None = None
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
            how = f"killed by signal {-code}" if code < 0 else f"exited with code {code}"
            state, message = JobState.FAILED, f"block process {how}: {_tail(job.stderr)}"
        return JobStatus(state, message, exit_code=code, stdout_path=job.stdout, stderr_path=job.stderr)

    def cancel(self, job_ids: list[str]) -> list[bool]:
        """TERM the block's process group, then KILL whatever is left after a grace period."""
        jobs = [self._jobs.get(j) for j in job_ids]
        for job in jobs:
            if job is not None and job.proc.poll() is None:
                job.cancelled = True
                _killpg(job.proc.pid, signal.SIGTERM)
        deadline = time.monotonic() + 3.0
        for job in jobs:
            if job is None:
                continue
            try:
                job.proc.wait(max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                pass
            _killpg(job.proc.pid, signal.SIGKILL)  # stragglers in the group (the pool's workers)
            job.proc.wait()
        return [job is not None for job in jobs]


class _LocalJob:
    def __init__(self, proc: subprocess.Popen[bytes], stdout: str, stderr: str) -> None:
        self.proc = proc
        self.stdout = stdout
        self.stderr = stderr
        self.cancelled = False


def _killpg(pgid: int, sig: int) -> None:
    try:
        os.killpg(pgid, sig)
    except (ProcessLookupError, PermissionError):
        pass


def _tail(path: str, limit: int = 2000) -> str:
    try:
        with open(path, "rb") as f:
            f.seek(0, os.SEEK_END)
            f.seek(max(0, f.tell() - limit))
            text = f.read().decode(errors="replace").strip()
    except OSError:
        return "(no stderr)"
    return text or "(stderr is empty)"
