"""CondorProvider: one block = one HTCondor cluster of ``nodes_per_block`` jobs (one per slot)."""

from __future__ import annotations

import os
import subprocess
from typing import Any

from ..launchers import Launcher
from .base import JobState, JobStatus
from .cluster import ClusterProvider

# JobStatus attribute of a job ClassAd
_CONDOR_STATES = {
    1: JobState.PENDING,    # idle
    2: JobState.RUNNING,
    3: JobState.CANCELLED,  # removed
    4: JobState.COMPLETED,
    5: JobState.HELD,
    6: JobState.RUNNING,    # transferring output
    7: JobState.HELD,       # suspended
}
_ATTRS = ["ClusterId", "ProcId", "JobStatus", "ExitCode", "RemoveReason", "HoldReason"]


def _proc_status(fields: list[str]) -> JobStatus:
    """One job's ``-af`` fields (after ClusterId ProcId) -> its status."""
    code, exit_code, remove_reason, hold_reason = (fields + ["undefined"] * 4)[:4]
    state = _CONDOR_STATES.get(int(code), JobState.UNKNOWN) if code.isdigit() else JobState.UNKNOWN
    ec = int(exit_code) if exit_code.lstrip("-").isdigit() else None
    message = f"JobStatus {code}"
    if state is JobState.COMPLETED and ec:
        state = JobState.FAILED
        message += f", ExitCode {ec}"
    if state is JobState.CANCELLED and "PeriodicRemove" in remove_reason:
        state = JobState.TIMEOUT  # our periodic_remove enforces the walltime
    if state is JobState.CANCELLED and remove_reason != "undefined":
        message += f": {remove_reason}"
    if state is JobState.HELD and hold_reason != "undefined":
        message += f": {hold_reason}"
    return JobStatus(state, message, ec if state.terminal else None)


def parse_condor_af(stdout: str) -> dict[str, JobStatus]:
    """``condor_q``/``condor_history -af ClusterId ProcId JobStatus ExitCode RemoveReason HoldReason``
    -> one status per cluster (a block): the jobs of a cluster are its nodes.

    The reasons hold spaces, so each line is printed with ``-af:t`` (tab-separated).
    """
    procs: dict[str, list[JobStatus]] = {}
    for line in stdout.splitlines():
        parts = line.split("\t")
        if len(parts) < 3 or not parts[0].strip().isdigit():
            continue
        procs.setdefault(parts[0].strip(), []).append(_proc_status([p.strip() for p in parts[2:]]))
    return {cluster: _combine(sts) for cluster, sts in procs.items()}


def _combine(sts: list[JobStatus]) -> JobStatus:
    """A block is running while any of its jobs runs; it ended as its worst job did."""
    for state in (JobState.RUNNING, JobState.HELD, JobState.PENDING, JobState.UNKNOWN,
                  JobState.FAILED, JobState.TIMEOUT, JobState.CANCELLED):
        for st in sts:
            if st.state is state:
                return st
    return sts[0]


class CondorProvider(ClusterProvider):
    """Blocks from HTCondor: ``condor_submit``, ``condor_q``/``condor_history``, ``condor_rm``.

    A block is one cluster of ``nodes_per_block`` vanilla-universe jobs, each
    running the job script (``worker_init`` then the launcher's command) in a
    slot of ``cores_per_slot`` CPUs and ``mem_per_slot`` GB.  Parameters follow
    Parsl's CondorProvider: ``environment`` (dict), ``project``,
    ``scheduler_options`` (lines of the submit description, after ours),
    ``transfer_input_files``, ``requirements``, ``worker_init``, ``walltime``
    (enforced with ``periodic_remove``; such a removal is reported TIMEOUT),
    ``launcher``.  ``overrides`` is the old name of ``scheduler_options``.

    HTCondor runs jobs as the user who submitted them and opens the job's
    output, error and log files **as that user**: ``script_dir`` must be
    writable by the submitting user (and, on a pool without a shared file
    system, set ``transfer_input_files``: the script is then sent along).
    """

    def __init__(
        self,
        channel: Any = None,
        nodes_per_block: int = 1,
        cores_per_slot: int | None = None,
        mem_per_slot: float | None = None,
        init_blocks: int = 1,
        min_blocks: int = 0,
        max_blocks: int = 1,
        parallelism: float = 1,
        environment: dict[str, str] | None = None,
        project: str = "",
        scheduler_options: str = "",
        transfer_input_files: list[str] | None = None,
        walltime: str = "00:10:00",
        worker_init: str = "",
        launcher: Launcher | None = None,
        requirements: str = "",
        cmd_timeout: int = 60,
        move_files: bool | None = None,
        label: str = "condor",
        overrides: str | None = None,
    ) -> None:
        super().__init__(
            label=label, nodes_per_block=nodes_per_block, init_blocks=init_blocks, min_blocks=min_blocks,
            max_blocks=max_blocks, parallelism=parallelism, walltime=walltime, scheduler_options=scheduler_options,
            worker_init=worker_init, launcher=launcher, cmd_timeout=cmd_timeout, channel=channel, move_files=move_files,
            overrides=overrides,
        )
        self.cores_per_slot = cores_per_slot
        self.mem_per_slot = mem_per_slot
        self.environment = dict(environment or {})
        self.project = project
        self.transfer_input_files = list(transfer_input_files or [])
        self.requirements = requirements

    def submit_description(self, script: str, stdout: str, stderr: str, log: str) -> str:
        env = " ".join(f"{k}='{v}'" for k, v in self.environment.items())
        lines = [
            "universe = vanilla",
            f"executable = {script}",
            f"output = {stdout}",
            f"error = {stderr}",
            f"log = {log}",
            "getenv = False",
            f'environment = "{env}"' if env else "",
            f"request_cpus = {self.cores_per_slot}" if self.cores_per_slot else "",
            f"request_memory = {int(self.mem_per_slot * 1024)}" if self.mem_per_slot else "",
            f'+ProjectName = "{self.project}"' if self.project else "",
            f"requirements = {self.requirements}" if self.requirements else "",
            # HTCondor has no walltime of its own: remove a job that has run too long
            f"periodic_remove = JobStatus == 2 && (time() - EnteredCurrentStatus) > {self.walltime_seconds}",
            "leave_in_queue = False",
        ]
        if self.transfer_input_files:
            lines += ["should_transfer_files = YES", "when_to_transfer_output = ON_EXIT",
                      f"transfer_input_files = {', '.join(self.transfer_input_files)}"]
        else:
            lines.append("should_transfer_files = NO")
        if self.scheduler_options.strip():
            lines.append(self.scheduler_options.strip("\n"))
        lines.append(f"queue {self.nodes_per_block}")
        return "".join(line + "\n" for line in lines if line)

    def submit(self, command: str, tasks_per_node: int, job_name: str = "htex.block") -> str:
        name, job = self._new_job(job_name)
        env = {"HTEX_JOB_NAME": name}
        if self.cores_per_slot:
            env["HTEX_CORES"] = str(self.cores_per_slot)
        self._write(job.script, self._job_script([], command, tasks_per_node, env, options=""))
        submit_file = job.script[: -len(".sh")] + ".submit"
        log = job.script[: -len(".sh")] + ".log"
        self._write(submit_file, self.submit_description(job.script, job.stdout, job.stderr, log), 0o644)
        proc = self._run(["condor_submit", "-terse", os.path.basename(submit_file)], cwd=self.script_dir)
        if proc.returncode != 0:
            raise self._refused("HTCondor refused the job", proc)
        # -terse prints "FIRST - LAST", e.g. "12.0 - 12.1": the block is cluster 12
        return self._submitted(self._parse_job_id(proc, r"^(?P<id>\d+)\.\d+\s*-\s*\d+\.\d+", "condor_submit"), job)

    def _query(self, job_ids: list[str]) -> dict[str, JobStatus]:
        proc = self._run(["condor_q", *job_ids, "-af:t", *_ATTRS])
        if proc.returncode != 0:
            raise self._refused("condor_q failed", proc)
        found = parse_condor_af(proc.stdout)
        gone = [j for j in job_ids if j not in found]
        if gone:
            # Finished clusters leave the queue for the history file.
            proc = self._run(["condor_history", *gone, "-af:t", *_ATTRS])
            if proc.returncode == 0:
                found.update({j: st for j, st in parse_condor_af(proc.stdout).items() if j in gone})
        return found

    def _cancelled_ok(self, proc: subprocess.CompletedProcess[str]) -> bool:
        # condor_rm exits 0 for a cluster it does not have ("There are no jobs in the queue")
        said = proc.stdout + proc.stderr
        return proc.returncode == 0 and "no jobs" not in said and "Couldn't find" not in said

    def _cancel_argv(self, job_ids: list[str]) -> list[str]:
        return ["condor_rm", *job_ids]
