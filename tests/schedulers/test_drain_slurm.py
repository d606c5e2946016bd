"""Walltime draining on real Slurm: a stream of tasks across a block's walltime, and none fails.

Slurm counts walltime in minutes: the block gets one minute, and its pool
drains 25 s before that (35 s after it starts).  The draining pool finishes
its tasks and exits, so its job completes instead of being killed; the
interchange tells the executor, which starts a replacement block at once
(draining blocks do not count towards max_blocks), and the stream goes on.
"""

from __future__ import annotations

import logging
import os
import time
from typing import Any

import pytest

import placement_tasks
from htex import HighThroughputExecutor, JobState
from htex.providers.slurm import SlurmProvider

from sched_helpers import slurm_down_reason
from support import wait_for

# A one-minute walltime (Slurm's granularity), crossed once, plus the replacement's start.
pytestmark = pytest.mark.timeout(240)

TESTS_DIR = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture
def slurm_executor(tmp_path: Any, monkeypatch: pytest.MonkeyPatch) -> Any:
    reason = slurm_down_reason()
    if reason:
        pytest.skip(f"Slurm is not up ({reason}): start it with `bash ci/schedulers/slurm-up.sh`")
    # Poll the scheduler every second instead of every 30 s, so the ended block is seen quickly.
    monkeypatch.setattr(SlurmProvider, "status_polling_interval", property(lambda self: 1.0))
    # min_blocks=1: a block is wanted even at an instant with no task outstanding, so the replacement
    # starts when the first block begins to drain, whatever the stream is doing then.
    provider = SlurmProvider(walltime="00:01:00", init_blocks=1, min_blocks=1, max_blocks=1, exclusive=False,
                             worker_init=f"export PYTHONPATH={TESTS_DIR}")
    ex = HighThroughputExecutor(label="drain", provider=provider, address="127.0.0.1", max_workers=2,
                                run_dir=str(tmp_path / "runinfo"), heartbeat_period=1, heartbeat_threshold=10,
                                drain_period=25)
    ex.start()
    yield ex
    ex.shutdown(wait=False)


def test_tasks_stream_across_the_walltime_and_none_fails(slurm_executor: Any, caplog: Any) -> None:
    ex = slurm_executor
    caplog.set_level(logging.INFO, logger="htex.executor")
    assert "--drain_period=35 " in ex.launch_command("0")
    ran_in: list[str] = []
    started = time.monotonic()
    # Pairs of short tasks, one pair after another, for longer than the first block's walltime.
    while time.monotonic() - started < 75 or len(set(ran_in)) < 2:
        pair = [ex.submit(placement_tasks.block_after, {}, 0.5) for _ in range(2)]
        ran_in += [f.result(timeout=150) for f in pair]  # a task lost to the walltime would raise here
        assert time.monotonic() - started < 200, f"no second block took over; blocks so far {set(ran_in)}"
    assert ran_in[0] == "0" and "1" in ran_in
    # The first block drained and its job ended by itself: completed, not killed at the walltime.
    wait_for(lambda: ex.status()["0"].terminal, timeout=60, what="the first block's job to end")
    assert ex.status()["0"].state is JobState.COMPLETED, ex.status()["0"]
    # Ahead of time: block 1 was started before block 0's end was seen.
    said = [r.getMessage() for r in caplog.records]
    started = next(i for i, m in enumerate(said) if m.startswith("started block 1 "))
    ended = next(i for i, m in enumerate(said) if m.startswith("block 0 (job ") and " ended: " in m)
    assert started < ended, said
    with open(os.path.join(ex.logdir, "interchange.log")) as f:
        log = f.read()
    assert "is draining" in log and "drained (drain_period)" in log
