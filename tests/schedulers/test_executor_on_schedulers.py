"""The whole executor on blocks from real schedulers: run, scale out, scale in, replace, shut down.

Pools run as scheduler jobs, connect to the interchange over 127.0.0.1 and are
checked for leaks through their --logdir (tests/conftest.py).  HTCondor runs
jobs as ``condorci``: its run directory is one that user can write.
"""

from __future__ import annotations

import os
import pwd
import shutil
import tempfile
from collections.abc import Iterator
from typing import Any

import pytest

from htex import HighThroughputExecutor, ManagerLost, ScaleOutFailed
from htex.launchers import SrunLauncher

import tasks
from sched_helpers import CONDOR_USER, SCHEDULERS, TORQUE_BIN, run
from support import SESSION_MARKS, wait_for

pytestmark = pytest.mark.timeout(150)

CANCEL = {"slurm": ["scancel"], "sge": ["qdel"], "condor": ["condor_rm"], "torque": [f"{TORQUE_BIN}/qdel"]}


@pytest.fixture(params=["slurm", "sge", "condor"])
def sched(request: pytest.FixtureRequest, tmp_path: Any, monkeypatch: pytest.MonkeyPatch) -> Iterator[Any]:
    s = SCHEDULERS[request.param]
    reason = s.down_reason()
    if reason:
        pytest.skip(f"{s.name} is not up ({reason}): start it with `bash ci/schedulers/{s.up_script}`")
    if s.name == "condor":
        run_dir = tempfile.mkdtemp(prefix="htex-condor-exec-", dir="/tmp")
        pw = pwd.getpwnam(CONDOR_USER)
        os.chown(run_dir, pw.pw_uid, pw.pw_gid)
        SESSION_MARKS.append(run_dir)
        # The pools run as condorci and write next to the executor (root): let every directory
        # the executor makes be writable by both (on a real pool, jobs run as the submitting user).
        monkeypatch.setattr(os, "makedirs", _shared_makedirs)
    else:
        run_dir = str(tmp_path / "runinfo")
    # Poll the scheduler every second instead of every 30 s, so the tests see changes quickly.
    monkeypatch.setattr(s.provider_class, "status_polling_interval", property(lambda self: 1.0))
    yield s, run_dir
    if s.name == "condor":
        shutil.rmtree(run_dir, ignore_errors=True)


_real_makedirs = os.makedirs


def _shared_makedirs(name: Any, mode: int = 0o777, exist_ok: bool = False) -> None:
    old = os.umask(0)
    try:
        _real_makedirs(name, 0o777, exist_ok=exist_ok)
    finally:
        os.umask(old)


def _executor(sched: Any, **provider_options: Any) -> HighThroughputExecutor:
    s, run_dir = sched
    # Jobs do not all inherit our environment (Grid Engine, HTCondor): worker_init sets what workers need.
    worker_init = f"export PYTHONPATH={os.path.dirname(os.path.dirname(os.path.abspath(__file__)))}"
    options = {"walltime": "00:10:00", "worker_init": worker_init, **s.defaults, **provider_options}
    provider = s.provider_class(**options)
    ex = HighThroughputExecutor(
        label=f"on-{s.name}", provider=provider, address="127.0.0.1", max_workers=1, run_dir=run_dir,
        heartbeat_period=1, heartbeat_threshold=6, max_idletime=2.0,
        # HTCondor runs root's jobs as condorci here, who cannot read root's keys (0600); on a real
        # pool jobs run as the submitting user. The other schedulers run them as root: encrypted.
        encrypted=s.name != "condor",
    )
    ex.start()
    return ex


def _jobs_in_queue(sched: Any, ex: HighThroughputExecutor) -> list[str]:
    s, _ = sched
    return [job for job in ex.blocks.values() if s.in_queue(job)]


def test_burst_scales_out_to_max_blocks_then_in_to_min(sched: Any) -> None:
    ex = _executor(sched, init_blocks=0, min_blocks=0, max_blocks=2)
    try:
        futs = [ex.submit(tasks.pool_id_after, {}, 2.0) for _ in range(4)]
        pools = {f.result(timeout=90) for f in futs}
        assert len(pools) == 2  # both blocks ran tasks
        assert len(ex.blocks) == 2  # and no more than max_blocks were asked for
        wait_for(lambda: not _jobs_in_queue(sched, ex), timeout=60, what="idle blocks to leave the queue")
        assert ex.connected_managers == []
    finally:
        ex.shutdown()
    wait_for(lambda: not _jobs_in_queue(sched, ex), timeout=30, what="the jobs to leave the queue")


def test_tasks_run_in_the_clients_directory(sched: Any, tmp_path: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    # Issue 13: as with Parsl (sbatch/qsub called from the client's directory start the job there).
    s, _ = sched
    if s.name == "condor":
        pytest.skip("HTCondor runs root's jobs as condorci here, who cannot enter the client's private tmp_path")
    here = tmp_path / "client"
    here.mkdir()
    monkeypatch.chdir(here)
    ex = _executor(sched, init_blocks=1, min_blocks=0, max_blocks=1)
    try:
        assert ex.submit(os.getcwd, {}).result(timeout=90) == str(here)
        assert os.listdir(here) == []  # the job's script and output stay under the run directory
    finally:
        ex.shutdown()


def test_a_job_cancelled_from_outside_is_noticed_and_replaced(sched: Any) -> None:
    s, _ = sched
    ex = _executor(sched, init_blocks=1, min_blocks=1, max_blocks=1)
    try:
        fut = ex.submit(tasks.sleep_then, {}, 120)
        wait_for(lambda: sum(m["tasks"] for m in ex.connected_managers) == 1, timeout=60, what="the task to start")
        (job,) = ex.blocks.values()
        run(*CANCEL[s.name], job)
        with pytest.raises(ManagerLost):
            fut.result(timeout=60)
        assert ex.submit(tasks.add, {}, 2, 3).result(timeout=90) == 5  # on a new block
        assert len(ex.blocks) == 2
    finally:
        ex.shutdown()
    wait_for(lambda: not _jobs_in_queue(sched, ex), timeout=30, what="the jobs to leave the queue")


def test_shutdown_leaves_no_job_in_the_queue(sched: Any) -> None:
    ex = _executor(sched, init_blocks=2, min_blocks=0, max_blocks=2)
    try:
        wait_for(lambda: len(ex.connected_managers) == 2, timeout=60, what="two pools")
        assert ex.submit(tasks.add, {}, 1, 1).result(timeout=30) == 2
    finally:
        ex.shutdown()
    wait_for(lambda: not _jobs_in_queue(sched, ex), timeout=30, what="the jobs to leave the queue")


def test_slurm_block_of_two_nodes_has_a_pool_on_each(tmp_path: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    s = SCHEDULERS["slurm"]
    reason = s.down_reason()
    if reason:
        pytest.skip(f"slurm is not up ({reason}): start it with `bash ci/schedulers/{s.up_script}`")
    ex = HighThroughputExecutor(
        label="two-nodes", address="127.0.0.1", max_workers=1, run_dir=str(tmp_path / "runinfo"),
        heartbeat_period=1, heartbeat_threshold=6,
        provider=s.provider_class(nodes_per_block=2, init_blocks=1, max_blocks=1, walltime="00:10:00",
                                  launcher=SrunLauncher(), **s.defaults),
    )
    ex.start()
    try:
        wait_for(lambda: len(ex.connected_managers) == 2, timeout=60, what="a pool on each node")
        assert {m["block_id"] for m in ex.connected_managers} == {"0"}
        nodes = {f.result(timeout=30) for f in [ex.submit(os.getenv, {}, "SLURMD_NODENAME") for _ in range(8)]}
        assert nodes == {"node1", "node2"}
    finally:
        ex.shutdown()


def test_blocks_held_by_the_scheduler_fail_with_its_reason(tmp_path: Any) -> None:
    """HTCondor holds a job whose output file it cannot open (here: a directory condorci cannot write)."""
    s = SCHEDULERS["condor"]
    reason = s.down_reason()
    if reason:
        pytest.skip(f"condor is not up ({reason}): start it with `bash ci/schedulers/{s.up_script}`")
    run_dir = tempfile.mkdtemp(prefix="htex-condor-held-", dir="/tmp")
    os.chmod(run_dir, 0o755)  # condorci can see it (the submit is accepted) but not write the job's output
    SESSION_MARKS.append(run_dir)
    original = s.provider_class.status_polling_interval
    s.provider_class.status_polling_interval = property(lambda self: 1.0)  # type: ignore[method-assign,assignment]
    provider = s.provider_class(init_blocks=1, max_blocks=1, walltime="00:10:00")
    # Scripts beside the label's directory (that one is 0700: condor_submit could not even see them).
    provider.script_dir = os.path.join(run_dir, "submit_scripts")
    os.makedirs(provider.script_dir, mode=0o755)
    ex = HighThroughputExecutor(label="held", provider=provider,
                                address="127.0.0.1", run_dir=run_dir, heartbeat_period=1, heartbeat_threshold=6)
    try:
        ex.start()
        fut = ex.submit(tasks.noop, {})
        with pytest.raises(ScaleOutFailed, match=r"held by the scheduler.*Permission denied"):
            fut.result(timeout=90)
    finally:
        ex.shutdown()
        s.provider_class.status_polling_interval = original  # type: ignore[method-assign]
        shutil.rmtree(run_dir, ignore_errors=True)
    wait_for(lambda: not [j for j in ex.blocks.values() if s.in_queue(j)], timeout=30,
             what="the held jobs to leave the queue")
