"""SlurmProvider: one block = one ``sbatch`` job of ``nodes_per_block`` nodes."""

from __future__ import annotations

import math
import subprocess
from dataclasses import replace
from typing import Any

from ..launchers import Launcher
from .base import JobState, JobStatus
from .cluster import ClusterProvider, hhmmss, safe_job_name

# Slurm's job states, by the long name (sacct, squeue %T) and the short code (squeue %t).
_STATES: dict[str, JobState] = {}
for _names, _state in (
    (("PENDING", "PD", "CONFIGURING", "CF", "REQUEUED", "RQ", "REQUEUE_FED", "RF"), JobState.PENDING),
    (("RUNNING", "R", "COMPLETING", "CG", "STAGE_OUT", "SO", "RESIZING", "RS", "SIGNALING", "SI"), JobState.RUNNING),
    (("COMPLETED", "CD"), JobState.COMPLETED),
    (("CANCELLED", "CA"), JobState.CANCELLED),
    (("FAILED", "F", "NODE_FAIL", "NF", "BOOT_FAIL", "BF", "OUT_OF_MEMORY", "OOM", "REVOKED", "RV",
      "SPECIAL_EXIT", "SE"), JobState.FAILED),
    (("TIMEOUT", "TO", "DEADLINE", "DL", "PREEMPTED", "PR"), JobState.TIMEOUT),
    (("SUSPENDED", "S", "STOPPED", "ST", "REQUEUE_HOLD", "RH", "RESV_DEL_HOLD", "RD"), JobState.HELD),
):
    for _name in _names:
        _STATES[_name] = _state


def slurm_state(state: str, reason: str = "") -> JobState:
    """Map a Slurm state (``CANCELLED by 0``, ``CANCELLED+``, ``PD`` ...) to a JobState."""
    word = state.split()[0].rstrip("+") if state.strip() else ""
    mapped = _STATES.get(word, JobState.UNKNOWN)
    if mapped is JobState.PENDING and reason.startswith("JobHeld"):
        return JobState.HELD  # scontrol hold: pending with reason JobHeldUser/JobHeldAdmin
    return mapped


def parse_squeue(stdout: str) -> dict[str, JobStatus]:
    """Lines of ``squeue --noheader --format='%i %t %r'`` -> status by job id."""
    found: dict[str, JobStatus] = {}
    for line in stdout.splitlines():
        parts = line.split(None, 2)
        if len(parts) < 2:
            continue
        job_id, code = parts[0], parts[1]
        reason = parts[2].strip() if len(parts) > 2 else ""
        message = f"squeue: {code}" + (f" ({reason})" if reason and reason != "None" else "")
        found[job_id] = JobStatus(slurm_state(code, reason), message)
    return found


def parse_sacct(stdout: str) -> dict[str, JobStatus]:
    """Lines of ``sacct -X -n -P --format=JobID,State,ExitCode,Reason`` -> status by job id."""
    found: dict[str, JobStatus] = {}
    for line in stdout.splitlines():
        parts = line.strip().split("|")
        if len(parts) < 2 or not parts[0]:
            continue
        job_id, state = parts[0], parts[1]
        exit_code: int | None = None
        if len(parts) > 2 and ":" in parts[2]:
            code, signal = parts[2].split(":", 1)
            if code.isdigit() and signal.isdigit():
                exit_code = int(code) if int(signal) == 0 else -int(signal)
        reason = parts[3] if len(parts) > 3 else ""
        message = f"sacct: {state}" + (f" ({reason})" if reason and reason != "None" else "")
        mapped = slurm_state(state, reason)
        found[job_id] = JobStatus(mapped, message, exit_code if mapped.terminal else None)
    return found


def parse_scontrol_exit_codes(stdout: str) -> dict[str, int]:
    """Lines of ``scontrol show job -o`` (``Key=Value ...``, one job a line) -> exit code by job id."""
    found: dict[str, int] = {}
    for line in stdout.splitlines():
        fields = dict(tok.split("=", 1) for tok in line.split() if "=" in tok)
        code, _, signal = fields.get("ExitCode", "").partition(":")
        if fields.get("JobId") and code.isdigit() and signal.isdigit():
            found[fields["JobId"]] = int(code) if int(signal) == 0 else -int(signal)
    return found


class SlurmProvider(ClusterProvider):
    """Blocks from Slurm: ``sbatch`` to submit, ``sacct`` (or ``squeue``) for status, ``scancel``.

    Parameters follow Parsl's SlurmProvider: ``partition``, ``account``,
    ``qos``, ``constraint``, ``clusters``, ``exclusive`` (default True, as in
    Parsl), ``mem_per_node`` (GB), ``cores_per_node``, ``scheduler_options``
    (``#SBATCH`` lines, added after ours so they win), ``worker_init``,
    ``walltime`` (HH:MM:SS), ``regex_job_id`` and ``launcher``
    (SingleNodeLauncher by default; SrunLauncher for a pool on every node).
    ``overrides`` is the old name of ``scheduler_options``.

    Status comes from ``sacct`` when Slurm keeps accounting (it also knows
    jobs long gone from the queue), else from ``squeue``.  A job that neither
    lists any more is reported COMPLETED if this provider submitted it (its
    exit status is then unknown), CANCELLED if this provider cancelled it,
    MISSING otherwise.
    """

    def __init__(
        self,
        partition: str | None = None,
        account: str | None = None,
        qos: str | None = None,
        constraint: str | None = None,
        clusters: str | None = None,
        channel: Any = None,
        nodes_per_block: int = 1,
        cores_per_node: int | None = None,
        mem_per_node: int | None = None,
        init_blocks: int = 1,
        min_blocks: int = 0,
        max_blocks: int = 1,
        parallelism: float = 1,
        walltime: str = "00:10:00",
        scheduler_options: str = "",
        regex_job_id: str = r"Submitted batch job (?P<id>\S+)",
        worker_init: str = "",
        cmd_timeout: int = 10,
        exclusive: bool = True,
        move_files: bool | None = True,
        launcher: Launcher | None = None,
        label: str = "slurm",
        overrides: str | None = None,
    ) -> None:
        super().__init__(
            label=label, nodes_per_block=nodes_per_block, init_blocks=init_blocks, min_blocks=min_blocks,
            max_blocks=max_blocks, parallelism=parallelism, walltime=walltime, scheduler_options=scheduler_options,
            worker_init=worker_init, launcher=launcher, cmd_timeout=cmd_timeout, channel=channel, move_files=move_files,
            overrides=overrides,
        )
        self.partition = partition
        self.account = account
        self.qos = qos
        self.constraint = constraint
        self.clusters = clusters
        self.cores_per_node = cores_per_node
        self.mem_per_node = mem_per_node
        self.exclusive = exclusive
        self.regex_job_id = regex_job_id
        # None: not probed yet.  Without accounting, sacct exits 1 ("accounting storage is disabled").
        self._sacct_works: bool | None = None

    def directives(self, name: str, stdout: str, stderr: str, tasks_per_node: int) -> list[str]:
        d = [
            f"#SBATCH --job-name={name}",
            f"#SBATCH --output={stdout}",
            f"#SBATCH --error={stderr}",
            f"#SBATCH --nodes={self.nodes_per_block}",
            f"#SBATCH --time={hhmmss(self.walltime_seconds)}",
            f"#SBATCH --ntasks-per-node={tasks_per_node}",
        ]
        for flag, value in (("partition", self.partition), ("account", self.account), ("qos", self.qos),
                            ("constraint", self.constraint), ("clusters", self.clusters)):
            if value:
                d.append(f"#SBATCH --{flag}={value}")
        if self.exclusive:
            d.append("#SBATCH --exclusive")
        if self.mem_per_node is not None:
            d.append(f"#SBATCH --mem={self.mem_per_node}g")
        if self.cores_per_node is not None:
            d.append(f"#SBATCH --cpus-per-task={max(1, math.floor(self.cores_per_node / tasks_per_node))}")
        return d

    def job_env(self, tasks_per_node: int) -> dict[str, str]:
        env: dict[str, str] = {}
        if self.mem_per_node is not None:
            env["HTEX_MEMORY_GB"] = str(self.mem_per_node)
        if self.cores_per_node is not None:
            env["HTEX_CORES"] = str(max(1, math.floor(self.cores_per_node / tasks_per_node)))
        return env

    def submit(self, command: str, tasks_per_node: int, job_name: str = "htex.block") -> str:
        name, job = self._new_job(job_name)
        directives = self.directives(safe_job_name(name), job.stdout, job.stderr, tasks_per_node)
        self._write(job.script, self._job_script(directives, command, tasks_per_node, self.job_env(tasks_per_node)))
        proc = self._run(["sbatch", job.script], cwd=self.script_dir)
        if proc.returncode != 0:
            raise self._refused("Slurm refused the job", proc)
        return self._submitted(self._parse_job_id(proc, self.regex_job_id, "sbatch"), job)

    def _query(self, job_ids: list[str]) -> dict[str, JobStatus]:
        found: dict[str, JobStatus] = {}
        if self._sacct_works is not False:
            found = self._sacct(job_ids)
        # Jobs sacct does not list yet (accounting lags the controller) or at all: ask squeue.
        rest = [j for j in job_ids if j not in found]
        if rest:
            found.update(self._squeue(rest))
        return found

    def _sacct(self, job_ids: list[str]) -> dict[str, JobStatus]:
        argv = ["sacct", "-X", "-n", "-P", "--format=JobID,State,ExitCode,Reason", "--jobs", ",".join(job_ids)]
        if self.clusters:
            argv.append(f"--clusters={self.clusters}")
        proc = self._run(argv)
        if proc.returncode != 0:
            if self._sacct_works is None:
                self._sacct_works = False  # no accounting on this cluster: squeue from now on
                return {}
            raise self._refused("sacct failed", proc)
        self._sacct_works = True
        return parse_sacct(proc.stdout)

    def _squeue(self, job_ids: list[str]) -> dict[str, JobStatus]:
        argv = ["squeue", "--noheader", "--states=all", "--format=%i %t %r", "--jobs", ",".join(job_ids)]
        if self.clusters:
            argv.append(f"--clusters={self.clusters}")
        proc = self._run(argv)
        if proc.returncode != 0:
            # Every id unknown (purged after MinJobAge): squeue refuses the whole list.
            if "Invalid job id" in proc.stderr:
                return {}
            raise self._refused("squeue failed", proc)
        found = parse_squeue(proc.stdout)
        # squeue shows no exit code: for jobs it lists as ended, the controller still knows it.
        ended = [j for j, st in found.items() if st.state.terminal]
        if ended:
            codes = self._exit_codes(ended)
            for j in ended:
                if j in codes:
                    found[j] = replace(found[j], exit_code=codes[j])
        return found

    def _exit_codes(self, job_ids: list[str]) -> dict[str, int]:
        codes: dict[str, int] = {}
        for job_id in job_ids:  # scontrol takes one job id at a time
            proc = self._run(["scontrol", "show", "job", "-o", job_id])
            if proc.returncode == 0:  # else purged already: no code to add
                codes.update(parse_scontrol_exit_codes(proc.stdout))
        return codes

    def _cancelled_ok(self, proc: subprocess.CompletedProcess[str]) -> bool:
        # scancel exits 0 even when it refuses a job ("error: Kill job error on job id 9: Invalid job id")
        return proc.returncode == 0 and "error" not in proc.stderr

    def _cancel_argv(self, job_ids: list[str]) -> list[str]:
        return ["scancel", *([f"--clusters={self.clusters}"] if self.clusters else []), *job_ids]
