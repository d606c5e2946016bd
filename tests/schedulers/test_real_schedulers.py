"""The batch providers against real schedulers running on this machine.

Slurm (two nodes), Grid Engine, HTCondor (personal pool, jobs run as
``condorci``) and Torque-style commands (SchedMD's wrappers over the Slurm
cluster; not a real PBS server).  Start them with the scripts of
ci/schedulers/ (see its README); a scheduler that is not up is skipped.
"""

from __future__ import annotations

import glob
import os

import pytest

from htex.errors import ProviderError
from htex.launchers import SrunLauncher
from htex.providers.base import JobState
from htex.providers.slurm import SlurmProvider

from sched_helpers import Jobs

LIVE = {JobState.PENDING, JobState.RUNNING}


@pytest.mark.timeout(60)
def test_job_runs_worker_init_then_command_and_completes(jobs: Jobs) -> None:
    marker = os.path.join(jobs.script_dir, "marker")
    p = jobs.provider(worker_init="export HTEX_TEST_VAR=from-worker-init")
    job_id = jobs.submit(p, f'echo "ran $HTEX_TEST_VAR" > {marker}; echo to-stdout; sleep 2')

    first = p.status([job_id])[0]
    assert first.state in LIVE, first
    st, seen = jobs.wait_state(p, job_id, {JobState.COMPLETED})

    assert seen[0] in LIVE and seen[-1] is JobState.COMPLETED, seen
    with open(marker) as f:
        assert f.read().strip() == "ran from-worker-init"
    assert st.stdout_path and os.path.dirname(st.stdout_path) == os.path.abspath(jobs.script_dir)
    with open(st.stdout_path) as f:
        assert "to-stdout" in f.read()
    # a terminal state stays put
    assert p.status([job_id])[0].state is JobState.COMPLETED


@pytest.mark.timeout(60)
def test_failing_job_is_reported_failed_with_its_exit_code(jobs: Jobs) -> None:
    if not jobs.sched.reports_exit_status:
        pytest.skip(f"{jobs.sched.name}: the Torque wrappers over Slurm show every finished job as C, whatever its exit code")
    p = jobs.provider()
    job_id = jobs.submit(p, "echo failing >&2; exit 3")
    st, _ = jobs.wait_state(p, job_id, {JobState.FAILED})
    assert st.exit_code == 3, st
    assert st.stderr_path
    with open(st.stderr_path) as f:
        assert "failing" in f.read()


@pytest.mark.timeout(60)
def test_cancel_running_job(jobs: Jobs) -> None:
    p = jobs.provider()
    job_id = jobs.submit(p, "sleep 300")
    jobs.wait_state(p, job_id, {JobState.RUNNING})
    assert jobs.sched.in_queue(job_id)

    assert p.cancel([job_id]) == [True]

    jobs.wait_state(p, job_id, {JobState.CANCELLED}, timeout=30)
    jobs.wait_gone(job_id)
    assert p.status([job_id])[0].state is JobState.CANCELLED


@pytest.mark.timeout(30)
def test_refusal_is_a_provider_error_quoting_the_scheduler(jobs: Jobs) -> None:
    p = jobs.provider(**jobs.sched.refusal)
    with pytest.raises(ProviderError) as info:
        jobs.submit(p, "true")
    assert jobs.sched.refusal_says in str(info.value)
    assert info.value.returncode != 0  # type: ignore[attr-defined]


@pytest.mark.timeout(30)
def test_job_unknown_to_provider_and_scheduler_is_missing(jobs: Jobs) -> None:
    p = jobs.provider()
    assert p.status(["987654"])[0].state is JobState.MISSING
    # scancel exits 0 for an unknown id and says nothing: Slurm "accepts" it; the others refuse
    assert p.cancel(["987654"]) == [jobs.sched.name == "slurm"]


# ------------------------------------------------------------------ Slurm only


@pytest.mark.timeout(60)
def test_slurm_block_of_two_nodes_runs_a_pool_on_each(slurm_jobs: Jobs) -> None:
    p = slurm_jobs.provider(nodes_per_block=2, launcher=SrunLauncher())
    job_id = slurm_jobs.submit(p, 'echo "node=$SLURMD_NODENAME"')
    st, _ = slurm_jobs.wait_state(p, job_id, {JobState.COMPLETED})
    assert st.stdout_path
    with open(st.stdout_path) as f:
        out = f.read()
    # srun -l prefixes each line with its task number
    assert "0: node=node1" in out and "1: node=node2" in out, out


@pytest.mark.timeout(60)
def test_slurm_without_accounting_falls_back_to_squeue(slurm_jobs: Jobs) -> None:
    """As on a cluster where sacct says "Slurm accounting storage is disabled"."""
    p = slurm_jobs.provider()
    assert isinstance(p, SlurmProvider)
    p._sacct_works = False
    job_id = slurm_jobs.submit(p, "sleep 300")
    st, _ = slurm_jobs.wait_state(p, job_id, {JobState.RUNNING})
    assert st.message.startswith("squeue:"), st
    assert p.cancel([job_id]) == [True]
    st, _ = slurm_jobs.wait_state(p, job_id, {JobState.CANCELLED}, timeout=30)
    assert st.message.startswith("squeue:"), st


@pytest.mark.timeout(60)
def test_slurm_held_job_is_held(slurm_jobs: Jobs) -> None:
    p = slurm_jobs.provider(scheduler_options="#SBATCH --hold")
    job_id = slurm_jobs.submit(p, "true")
    slurm_jobs.wait_state(p, job_id, {JobState.HELD}, timeout=20)
    assert p.cancel([job_id]) == [True]
    slurm_jobs.wait_state(p, job_id, {JobState.CANCELLED}, timeout=30)


@pytest.mark.timeout(60)
def test_launcher_files_go_beside_the_job_script_not_in_home(torque_jobs: Jobs) -> None:
    """SrunLauncher writes the command to a file: in script_dir, although PBS and Torque start jobs in $HOME.

    The Torque wrappers here run jobs as Slurm does, in the directory qsub ran
    in; ``cd ~`` in worker_init stands for a real Torque's start in $HOME.
    PBS_O_WORKDIR (where qsub ran, which the provider makes script_dir) is set
    as on a real Torque.
    """
    jobs = torque_jobs
    home_before = set(glob.glob(os.path.expanduser("~/cmd_*")))
    marker = os.path.join(jobs.script_dir, "marker")
    p = jobs.provider(launcher=SrunLauncher(), worker_init="cd ~")
    job_id = jobs.submit(p, f"echo ran in $PWD > {marker}")
    jobs.wait_state(p, job_id, {JobState.COMPLETED})
    with open(marker) as f:
        assert f.read().strip() == f"ran in {os.path.expanduser('~')}"  # the job did run in $HOME
    assert glob.glob(os.path.join(jobs.script_dir, "cmd_*.sh")), os.listdir(jobs.script_dir)
    assert set(glob.glob(os.path.expanduser("~/cmd_*"))) == home_before
