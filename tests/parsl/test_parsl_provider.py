"""ParslProvider: a real Parsl LocalProvider driven through htex's provider interface."""

from __future__ import annotations

import time
from typing import Any

import pytest

pytest.importorskip("parsl.providers", reason="Parsl is not installed (pip install htex[parsl])")

from parsl.jobs.states import JobState as ParslJobState
from parsl.providers import LocalProvider as ParslLocalProvider

from htex import JobState
from htex.parsl import ParslProvider, to_htex_state

pytestmark = pytest.mark.timeout(30)


def _ended(p: ParslProvider, job: str, timeout: float = 10.0) -> Any:
    """Poll the provider until the job is in a terminal state (what htex's block watcher does)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        st = p.status([job])[0]
        if st.terminal:
            return st
        time.sleep(0.05)
    pytest.fail(f"job {job} did not end within {timeout} s")


def test_every_parsl_state_maps() -> None:
    for state in ParslJobState:
        assert to_htex_state(state) is not JobState.UNKNOWN or state is ParslJobState.UNKNOWN
    assert to_htex_state(ParslJobState.FAILED) is JobState.FAILED


def test_attributes_are_the_parsl_providers(tmp_path: Any) -> None:
    inner = ParslLocalProvider(init_blocks=2, min_blocks=1, max_blocks=3, parallelism=0.5)
    p = ParslProvider(inner)
    assert (p.init_blocks, p.min_blocks, p.max_blocks, p.parallelism, p.nodes_per_block) == (2, 1, 3, 0.5, 1)
    assert p.remote is False and p.status_polling_interval == inner.status_polling_interval
    p.script_dir = str(tmp_path)  # what htex's executor does when the DFK has not
    assert inner.script_dir == str(tmp_path)


def test_failed_block_reports_its_stderr(tmp_path: Any) -> None:
    p = ParslProvider(ParslLocalProvider())
    p.script_dir = str(tmp_path)
    job = p.submit("echo 'no such pool here' >&2; exit 3", 1, "bad-block")
    assert isinstance(job, str)
    st = _ended(p, job)
    assert st.state is JobState.FAILED and st.exit_code == 3
    assert "no such pool here" in st.message


def test_cancel_running_block(tmp_path: Any) -> None:
    p = ParslProvider(ParslLocalProvider())
    p.script_dir = str(tmp_path)
    job = p.submit("sleep 30", 1, "long-block")
    assert p.status([job])[0].state is JobState.RUNNING
    assert p.cancel([job]) == [True]
    st = _ended(p, job)
    assert st.state is JobState.CANCELLED
