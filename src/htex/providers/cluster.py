"""What the batch-scheduler providers share.

A batch provider turns a block into a job script, hands it to the scheduler's
submit command and later asks the scheduler about it.  The pieces every
scheduler needs are here:

* the job script: the scheduler's directives, then the user's
  ``scheduler_options`` (after ours, so that the user's win where the scheduler
  lets a later directive override an earlier one), then ``worker_init``, then
  the launcher's command;
* the job's stdout/stderr, kept next to the script in ``script_dir`` so that
  the executor (and the user) can read why a block died;
* running scheduler commands with ``cmd_timeout``, and turning a refusal into
  a :class:`ProviderError` that quotes the scheduler's own words;
* remembering the jobs this provider submitted: a job that left the queue is
  then known to have been ours (and whether we cancelled it), and a terminal
  state, once seen, is kept (schedulers forget finished jobs after a while).

Subclasses implement ``submit`` and two queries: ``_query`` (the states of the
jobs the scheduler still knows) and ``_cancel_argv``.
"""

from __future__ import annotations

import itertools
import os
import re
import subprocess
import tempfile
import time
import warnings
from dataclasses import dataclass
from typing import Any

from .. import procs
from ..errors import ConfigurationError, ProviderError
from ..launchers import Launcher, SingleNodeLauncher
from .base import ExecutionProvider, JobState, JobStatus

_counter = itertools.count(1)


@dataclass
class JobFiles:
    """Where one job's script and output live, and what we know of its end."""

    script: str
    stdout: str
    stderr: str
    cancelled: bool = False
    final: JobStatus | None = None


def walltime_seconds(walltime: str) -> int:
    """``[D-]HH:MM:SS`` (or ``MM:SS``, or plain minutes) -> seconds; ConfigurationError otherwise."""
    m = re.fullmatch(r"\s*(?:(\d+)-)?(?:(\d+):)?(\d+):(\d+)\s*", walltime)
    if m:
        days, hours, minutes, seconds = (int(g) if g else 0 for g in m.groups())
        return ((days * 24 + hours) * 60 + minutes) * 60 + seconds
    if walltime.strip().isdigit():
        return int(walltime) * 60
    raise ConfigurationError(f"walltime {walltime!r} is not of the form HH:MM:SS")


def hhmmss(seconds: int) -> str:
    """Seconds -> ``HH:MM:SS`` (hours may exceed 24, as every scheduler here accepts)."""
    return f"{seconds // 3600:02d}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"


def safe_job_name(name: str, max_len: int = 64) -> str:
    """A job name every scheduler here accepts: starts with a letter, no '/', ':', '@' or spaces."""
    name = re.sub(r"[^A-Za-z0-9_.-]", "_", name)
    if not name[:1].isalpha():
        name = "j" + name
    return name[:max_len]


class ClusterProvider(ExecutionProvider):
    """Base of the batch providers (Slurm, Grid Engine, HTCondor, Torque, PBS Pro, LSF, Cobalt)."""

    remote = True
    #: The shell every job script runs under.
    shell = "/bin/bash"

    def __init__(
        self,
        *,
        label: str,
        nodes_per_block: int,
        init_blocks: int,
        min_blocks: int,
        max_blocks: int,
        parallelism: float,
        walltime: str,
        scheduler_options: str,
        worker_init: str,
        launcher: Launcher | None,
        cmd_timeout: int,
        channel: Any = None,
        move_files: bool | None = None,
        overrides: str | None = None,
    ) -> None:
        if overrides is not None:  # Parsl's old name for scheduler_options
            warnings.warn("'overrides' is deprecated: use 'scheduler_options'", DeprecationWarning, stacklevel=3)
            scheduler_options = scheduler_options or overrides
        if nodes_per_block < 1:
            raise ConfigurationError(f"nodes_per_block must be at least 1, not {nodes_per_block}")
        if not 0 <= parallelism <= 1:
            raise ConfigurationError(f"parallelism must be between 0 and 1, not {parallelism}")
        walltime_seconds(walltime)  # fail at configuration time, not at the first submit
        self._configure(
            label=label, nodes_per_block=nodes_per_block, init_blocks=init_blocks, min_blocks=min_blocks,
            max_blocks=max_blocks, parallelism=parallelism, walltime=walltime, worker_init=worker_init,
            launcher=launcher if launcher is not None else SingleNodeLauncher(), cmd_timeout=cmd_timeout,
        )
        self.scheduler_options = scheduler_options
        # Accepted for Parsl compatibility: htex runs scheduler commands locally
        # and job files live in script_dir, which must be on a shared file system.
        self.channel = channel
        self.move_files = move_files
        self._jobs: dict[str, JobFiles] = {}

    @property
    def status_polling_interval(self) -> float:
        # Scheduler queries are not free on a shared cluster; 30 s is still
        # quick enough to replace a block that died.
        return 30.0

    @property
    def walltime_seconds(self) -> int:
        return walltime_seconds(self.walltime)

    # ------------------------------------------------------------------ job files

    def _new_job(self, job_name: str) -> tuple[str, JobFiles]:
        """A unique base name for this block and the paths of its script and output."""
        if self.script_dir is None:
            self.script_dir = tempfile.mkdtemp(prefix=f"htex-{self.label}-")
        os.makedirs(self.script_dir, exist_ok=True)
        name = f"{job_name}.{time.strftime('%Y%m%d-%H%M%S')}.{os.getpid()}.{next(_counter)}"
        base = os.path.join(os.path.abspath(self.script_dir), name)
        return name, JobFiles(script=base + ".sh", stdout=base + ".stdout", stderr=base + ".stderr")

    def _job_script(
        self, directives: list[str], command: str, tasks_per_node: int,
        env: dict[str, str] | None = None, options: str | None = None,
    ) -> str:
        """The text of a job script: directives, user options, worker_init, then the launched command."""
        options = self.scheduler_options if options is None else options
        exports = "".join(f"export {k}={v}\n" for k, v in (env or {}).items())
        return (
            f"#!{self.shell}\n"
            + "".join(d + "\n" for d in directives)
            + (options.strip("\n") + "\n" if options.strip() else "")
            + "\n"
            + exports
            + (self.worker_init.strip("\n") + "\n" if self.worker_init.strip() else "")
            + "\n"
            + self.launcher(command, tasks_per_node, self.nodes_per_block).rstrip("\n")
            + "\n"
        )

    @staticmethod
    def _write(path: str, text: str, mode: int = 0o755) -> None:
        with open(path, "w") as f:
            f.write(text)
        os.chmod(path, mode)

    # ------------------------------------------------------------------ scheduler commands

    def _run(self, argv: list[str], *, cwd: str | None = None, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
        """Run a scheduler command with ``cmd_timeout``; a missing or hanging command is a ProviderError."""
        try:
            return subprocess.run(
                argv, cwd=cwd, input=stdin, stdin=None if stdin is not None else subprocess.DEVNULL,
                capture_output=True, text=True, timeout=self.cmd_timeout,
            )
        except FileNotFoundError as exc:
            raise ProviderError(
                f"{argv[0]} not found: is the scheduler's client installed and on PATH? ({exc})", command=argv
            ) from exc
        except subprocess.TimeoutExpired as exc:
            raise ProviderError(
                f"{' '.join(argv)} did not answer within cmd_timeout={self.cmd_timeout} s", command=argv
            ) from exc

    @staticmethod
    def _refused(what: str, proc: subprocess.CompletedProcess[str]) -> ProviderError:
        """A ProviderError quoting what the scheduler said (stderr, else stdout)."""
        said = (proc.stderr.strip() or proc.stdout.strip() or "(it printed nothing)")
        argv = proc.args if isinstance(proc.args, list) else [str(proc.args)]
        return ProviderError(
            f"{what}: {' '.join(map(str, argv))} {procs.describe_exit(proc.returncode)}: {said}",
            command=argv, returncode=proc.returncode, stdout=proc.stdout, stderr=proc.stderr,
        )

    @staticmethod
    def _parse_job_id(proc: subprocess.CompletedProcess[str], pattern: str, what: str = "submit") -> str:
        """The job id in the submit command's output (group ``id``, else group 1)."""
        for line in proc.stdout.splitlines():
            m = re.search(pattern, line.strip())
            if m:
                return m.group("id") if "id" in m.groupdict() else m.group(1)
        raise ProviderError(
            f"{what}: cannot find a job id (pattern {pattern!r}) in the output of {' '.join(map(str, proc.args))}: "
            f"stdout={proc.stdout.strip()!r} stderr={proc.stderr.strip()!r}",
            stdout=proc.stdout, stderr=proc.stderr,
        )

    def _submitted(self, job_id: str, job: JobFiles) -> str:
        self._jobs[job_id] = job
        return job_id

    # ------------------------------------------------------------------ status and cancel

    def status(self, job_ids: list[str]) -> list[JobStatus]:
        active = [j for j in dict.fromkeys(job_ids) if not (j in self._jobs and self._jobs[j].final)]
        found: dict[str, JobStatus] = {}
        error = ""
        if active:
            try:
                found = self._query(active)
            except ProviderError as exc:
                # A scheduler that does not answer now says nothing about the jobs: UNKNOWN, not MISSING.
                error = str(exc)
        return [self._status_of(j, found, error) for j in job_ids]

    def _status_of(self, job_id: str, found: dict[str, JobStatus], error: str) -> JobStatus:
        job = self._jobs.get(job_id)
        if job is not None and job.final is not None:
            return job.final
        if error:
            st = JobStatus(JobState.UNKNOWN, error)
        elif job_id in found:
            st = found[job_id]
            if job is not None and job.cancelled and st.state in (JobState.COMPLETED, JobState.FAILED):
                # killed by our cancel: the scheduler reports a plain end or a signal exit
                st = JobStatus(JobState.CANCELLED, st.message, st.exit_code)
        elif job is None:
            st = JobStatus(JobState.MISSING, f"job {job_id} is not one of this provider's and the scheduler does not know it")
        elif job.cancelled:
            st = JobStatus(JobState.CANCELLED, "cancelled; the job has left the queue")
        else:
            st = self._vanished(job_id)
        if job is not None:
            st.stdout_path, st.stderr_path = job.stdout, job.stderr
            if st.terminal:
                job.final = st
        return st

    def _vanished(self, job_id: str) -> JobStatus:
        """A job of ours the scheduler no longer lists and has no record of: it ran and ended."""
        return JobStatus(JobState.COMPLETED, "the job has left the queue (its exit status is not known)")

    def _query(self, job_ids: list[str]) -> dict[str, JobStatus]:
        """The state of each job the scheduler still knows (others are left out)."""
        raise NotImplementedError

    def _cancel_argv(self, job_ids: list[str]) -> list[str]:
        raise NotImplementedError

    def _cancelled_ok(self, proc: subprocess.CompletedProcess[str]) -> bool:
        """Did the scheduler accept every cancellation of this command?"""
        return proc.returncode == 0

    def cancel(self, job_ids: list[str]) -> list[bool]:
        """Cancel all at once; if the scheduler refuses some, ask job by job to find which."""
        if not job_ids:
            return []
        if self._cancelled_ok(self._run(self._cancel_argv(job_ids))):
            ok = [True] * len(job_ids)
        elif len(job_ids) == 1:
            ok = [False]
        else:
            ok = [self._cancelled_ok(self._run(self._cancel_argv([j]))) for j in job_ids]
        for job_id, accepted in zip(job_ids, ok, strict=True):
            job = self._jobs.get(job_id)
            if accepted and job is not None:
                job.cancelled = True
        return ok
