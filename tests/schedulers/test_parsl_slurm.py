"""A Parsl configuration whose blocks come from Parsl's own SlurmProvider, run by htex."""

from __future__ import annotations

import os
from typing import Any

import pytest

from sched_helpers import SCHEDULERS
from support import wait_for

parsl = pytest.importorskip("parsl", reason="Parsl is not installed (pip install htex[parsl])")

pytestmark = pytest.mark.timeout(120)


def test_parsl_slurm_provider_blocks_run_parsl_apps(tmp_path: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    from parsl.app.app import python_app
    from parsl.config import Config
    from parsl.providers import SlurmProvider as ParslSlurmProvider

    from htex.parsl import HighThroughputExecutor

    slurm = SCHEDULERS["slurm"]
    reason = slurm.down_reason()
    if reason:
        pytest.skip(f"slurm is not up ({reason}): start it with `bash ci/schedulers/{slurm.up_script}`")
    provider = ParslSlurmProvider(
        partition="debug", nodes_per_block=1, init_blocks=1, min_blocks=0, max_blocks=1,
        walltime="00:10:00", exclusive=False,
    )
    executor = HighThroughputExecutor(label="htex_slurm", provider=provider, address="127.0.0.1", max_workers=1,
                                      heartbeat_period=1, heartbeat_threshold=6)
    client = tmp_path / "client"
    client.mkdir()
    monkeypatch.chdir(client)
    dfk = parsl.load(Config(executors=[executor], run_dir=str(tmp_path / "runinfo")))
    try:
        job_env = python_app(os.getenv, executors=["htex_slurm"])
        job_ids = {job_env("SLURM_JOB_ID").result(timeout=90) for _ in range(4)}
        assert len(job_ids) == 1 and None not in job_ids  # the tasks ran inside one Slurm job
        (job,) = job_ids
        assert job in executor.htex.blocks.values()  # the block htex asked Parsl's provider for
        # Issue 13: tasks run in the client's directory, as under Parsl's own executor.
        assert python_app(os.getcwd, executors=["htex_slurm"])().result(timeout=30) == str(client)
    finally:
        dfk.cleanup()
        parsl.clear()
    wait_for(lambda: not slurm.in_queue(job), timeout=30, what="the Parsl provider's job to leave the queue")
