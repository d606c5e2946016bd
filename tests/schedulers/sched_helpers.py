"""Helpers and fixtures for tests against real batch schedulers on this machine (see conftest.py).

Each scheduler is started by a script of ci/schedulers/; a test whose
scheduler is not up is skipped with a message naming that script.  Every job
a test submits is cancelled at teardown, and the teardown waits (with a
deadline) until the scheduler no longer lists it as queued or running.
"""

from __future__ import annotations

import os
import pwd
import shutil
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest

from htex.providers.base import JobState, JobStatus
from htex.providers.cluster import ClusterProvider
from htex.providers.condor import CondorProvider
from htex.providers.gridengine import GridEngineProvider
from htex.providers.slurm import SlurmProvider
from htex.providers.torque import TorqueProvider

TORQUE_BIN = "/opt/slurm-torque/usr/bin"
CONDOR_USER = "condorci"


def run(*argv: str, timeout: float = 20) -> subprocess.CompletedProcess[str]:
    try:
        return subprocess.run(argv, capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return subprocess.CompletedProcess(list(argv), 127, "", str(exc))


# ---------------------------------------------------------------- is it up?

def slurm_down_reason() -> str | None:
    if shutil.which("sbatch") is None:
        return "Slurm is not installed"
    if run("scontrol", "ping").returncode != 0:
        return "slurmctld does not answer"
    states = run("sinfo", "-h", "-N", "-o", "%t").stdout.split()
    if not any(s in ("idle", "mix", "alloc") for s in states):
        return f"no usable Slurm node (states: {states})"
    return None


def sge_down_reason() -> str | None:
    if not os.path.exists("/usr/lib/gridengine/qsub"):
        return "Grid Engine is not installed"
    out = run("qstat", "-f", "-q", "all.q").stdout
    line = next((ln for ln in out.splitlines() if ln.startswith("all.q@localhost")), None)
    if line is None:
        return "qmaster does not answer or all.q@localhost does not exist"
    if len(line.split()) > 5:
        return f"all.q@localhost is not usable: {line.split()[5:]}"
    return None


def condor_down_reason() -> str | None:
    if shutil.which("condor_q") is None:
        return "the condor_* wrappers are not installed"
    proc = run("condor_q", "-totals")
    return None if proc.returncode == 0 else f"condor_q fails: {proc.stderr.strip()}"


def torque_down_reason() -> str | None:
    reason = slurm_down_reason()
    if reason:
        return reason + " (the Torque wrappers run over Slurm: bash ci/schedulers/slurm-up.sh first)"
    if not os.path.exists(f"{TORQUE_BIN}/qsub"):
        return "the Torque wrappers are not unpacked"
    return None


# ---------------------------------------------------------------- queue listings

def slurm_in_queue(job_id: str) -> bool:
    # plain squeue lists pending/running/completing jobs only
    return bool(run("squeue", "-h", "-j", job_id, "-o", "%t").stdout.strip())


def sge_in_queue(job_id: str) -> bool:
    return any(ln.split()[:1] == [job_id] for ln in run("qstat").stdout.splitlines())


def condor_in_queue(job_id: str) -> bool:
    return bool(run("condor_q", job_id, "-af", "ClusterId").stdout.strip())


def torque_in_queue(job_id: str) -> bool:
    # the wrappers keep finished jobs listed as C for a while
    lines = run(f"{TORQUE_BIN}/qstat", job_id).stdout.splitlines()
    return any(ln.split()[:1] == [job_id] and ln.split()[-2] != "C" for ln in lines)


@dataclass
class Scheduler:
    name: str
    up_script: str
    down_reason: Callable[[], str | None]
    provider_class: type[ClusterProvider]
    in_queue: Callable[[str], bool]
    refusal: dict[str, Any]              # provider options the scheduler refuses ...
    refusal_says: str                    # ... and what it says then
    defaults: dict[str, Any] = field(default_factory=dict)
    reports_exit_status: bool = True


SCHEDULERS = {
    "slurm": Scheduler(
        "slurm", "slurm-up.sh", slurm_down_reason, SlurmProvider, slurm_in_queue,
        {"partition": "nosuch"}, "invalid partition", {"exclusive": False},
    ),
    "sge": Scheduler(
        "sge", "sge-up.sh", sge_down_reason, GridEngineProvider, sge_in_queue,
        {"queue": "nosuch.q"}, 'unknown queue "nosuch.q"',
    ),
    "condor": Scheduler(
        "condor", "condor-up.sh", condor_down_reason, CondorProvider, condor_in_queue,
        {"requirements": "(Arch =?= "}, "Parse error",
    ),
    "torque": Scheduler(
        "torque", "slurm-up.sh && bash ci/schedulers/torque-wrappers.sh", torque_down_reason, TorqueProvider,
        torque_in_queue, {"queue": "nosuch"}, "invalid partition",
        # the wrappers show every finished job as C, whatever its exit code
        reports_exit_status=False,
    ),
}


class Jobs:
    """A provider made for one test, and the jobs it submitted (cancelled at teardown)."""

    def __init__(self, sched: Scheduler, script_dir: str) -> None:
        self.sched = sched
        self.script_dir = script_dir
        self.submitted: list[tuple[ClusterProvider, str]] = []

    def provider(self, **options: Any) -> ClusterProvider:
        p = self.sched.provider_class(**{"walltime": "00:05:00", **self.sched.defaults, **options})
        p.script_dir = self.script_dir
        return p

    def submit(self, provider: ClusterProvider, command: str, name: str = "htex.test") -> str:
        job_id = provider.submit(command, 1, name)
        self.submitted.append((provider, job_id))
        return job_id

    def wait_state(self, provider: ClusterProvider, job_id: str, states: set[JobState],
                   timeout: float = 45.0) -> tuple[JobStatus, list[JobState]]:
        """Poll ``status`` until the job is in one of ``states``; return it and every state seen."""
        seen: list[JobState] = []
        deadline = time.monotonic() + timeout
        while True:
            st = provider.status([job_id])[0]
            if not seen or seen[-1] is not st.state:
                seen.append(st.state)
            if st.state in states:
                return st, seen
            if st.terminal or time.monotonic() > deadline:
                pytest.fail(f"job {job_id} ({self.sched.name}) never reached {states}: states seen {seen}, last {st}")
            time.sleep(0.2)

    def wait_gone(self, job_id: str, timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        while self.sched.in_queue(job_id):
            if time.monotonic() > deadline:
                pytest.fail(f"job {job_id} is still in the {self.sched.name} queue after {timeout} s")
            time.sleep(0.2)

    def cleanup(self) -> None:
        for provider, job_id in self.submitted:
            if self.sched.in_queue(job_id):
                provider.cancel([job_id])
        for _, job_id in self.submitted:
            self.wait_gone(job_id)


def _condor_script_dir() -> str:
    # HTCondor runs jobs as condorci and opens their output files as that user:
    # the directory must be writable by it and inside the pool's bind mounts
    # (/tmp is), which pytest's tmp_path (mode 0700 under /tmp/pytest-of-root) is not.
    d = tempfile.mkdtemp(prefix="htex-condor-test-", dir="/tmp")
    pw = pwd.getpwnam(CONDOR_USER)
    os.chown(d, pw.pw_uid, pw.pw_gid)
    return d


@pytest.fixture(params=list(SCHEDULERS))
def jobs(request: pytest.FixtureRequest, tmp_path: Any, monkeypatch: pytest.MonkeyPatch) -> Iterator[Jobs]:
    """A Jobs helper for each real scheduler; skipped when the scheduler is not up."""
    yield from _jobs(request.param, tmp_path, monkeypatch)


def _jobs(name: str, tmp_path: Any, monkeypatch: pytest.MonkeyPatch) -> Iterator[Jobs]:
    sched = SCHEDULERS[name]
    if name == "torque":
        # Grid Engine's /usr/bin/qsub may also be installed: the wrappers must come first
        monkeypatch.setenv("PATH", f"{TORQUE_BIN}:{os.environ['PATH']}")
    reason = sched.down_reason()
    if reason:
        pytest.skip(f"{name} is not up ({reason}): start it with `bash ci/schedulers/{sched.up_script}`")
    script_dir = _condor_script_dir() if name == "condor" else str(tmp_path)
    helper = Jobs(sched, script_dir)
    try:
        yield helper
    finally:
        helper.cleanup()
        if name == "condor":
            shutil.rmtree(script_dir, ignore_errors=True)


@pytest.fixture
def slurm_jobs(tmp_path: Any, monkeypatch: pytest.MonkeyPatch) -> Iterator[Jobs]:
    yield from _jobs("slurm", tmp_path, monkeypatch)


@pytest.fixture
def torque_jobs(tmp_path: Any, monkeypatch: pytest.MonkeyPatch) -> Iterator[Jobs]:
    yield from _jobs("torque", tmp_path, monkeypatch)
