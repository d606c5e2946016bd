"""Per-task cores, memory and GPUs (issue 15, point 3) end to end: real interchange, pool and workers.

The pool has 2 workers and 2 cores (max_workers=2, cores_per_worker=1): a 2-core
task takes both worker slots.  Tasks record that they started in a
side-effect file and wait for a gate file, so the test sees what runs at the
same time; what waits is read from the interchange's counters.  Nothing
sleeps to synchronise.
"""

from __future__ import annotations

from typing import Any

import pytest

import placement_tasks
from htex import InvalidResourceSpecification

import tasks
from support import read_lines, wait_for

pytestmark = pytest.mark.timeout(120)



def _open(gate: str) -> None:
    with open(gate, "w"):
        pass


def _held(ex: Any) -> int:
    return sum(m["tasks"] for m in ex.connected_managers)


def test_a_two_core_task_takes_both_workers_then_one_core_tasks_share_them(make_executor: Any,
                                                                           tmp_path: Any) -> None:
    ex = make_executor(max_workers=2, cores_per_worker=1, prefetch_capacity=2)
    (pool,) = wait_for(lambda: ex.connected_managers, timeout=30, what="the pool")
    assert pool["worker_count"] == 2
    log, gate_big, gate_small = str(tmp_path / "started"), str(tmp_path / "big"), str(tmp_path / "small")
    big = ex.submit(tasks.record_then_wait_for, {"cores": 2}, log, "big", gate_big)
    wait_for(lambda: read_lines(log) == ["big"], timeout=30, what="the 2-core task to start")
    small = [ex.submit(tasks.record_then_wait_for, {"cores": 1}, log, f"s{i}", gate_small) for i in range(2)]
    plain = ex.submit(tasks.record_then_wait_for, {}, log, "plain", gate_small)
    # The 2-core task holds both slots: nothing else goes to the pool (not even as prefetch).
    wait_for(lambda: ex.stats()["queued"] == 3, timeout=30, what="3 tasks waiting in the interchange")
    assert _held(ex) == 1 and read_lines(log) == ["big"]
    _open(gate_big)
    assert big.result(timeout=60) is None
    # Then the two 1-core tasks run side by side, one on each worker.
    wait_for(lambda: sorted(read_lines(log)) == ["big", "s0", "s1"], timeout=30, what="both 1-core tasks to start")
    assert not plain.done() and "plain" not in read_lines(log)
    _open(gate_small)
    assert [f.result(timeout=60) for f in [*small, plain]] == [None, None, None]


def test_a_waiting_two_core_task_is_not_overtaken_by_small_ones(make_executor: Any, tmp_path: Any) -> None:
    """One worker busy, the other free: the 2-core task waits for both, and the free worker is kept for it."""
    ex = make_executor(max_workers=2, cores_per_worker=1)
    log, gate = str(tmp_path / "started"), str(tmp_path / "gate")
    first = ex.submit(tasks.record_then_wait_for, {}, log, "first", gate)
    wait_for(lambda: read_lines(log) == ["first"], timeout=30, what="the first task to start")
    big = ex.submit(tasks.record, {"cores": 2}, log, "big")
    later = ex.submit(tasks.record, {}, log, "later")
    wait_for(lambda: ex.stats()["queued"] == 2, timeout=30, what="the 2-core task and the plain one waiting")
    assert read_lines(log) == ["first"]  # the free worker is held for the 2-core task, not given to `later`
    _open(gate)
    for fut in (first, big, later):
        assert fut.result(timeout=60) is None
    assert read_lines(log) == ["first", "big", "later"]


def test_a_request_no_pool_can_take_fails_at_once(make_executor: Any) -> None:
    ex = make_executor(max_workers=2, cores_per_worker=1)
    with pytest.raises(InvalidResourceSpecification, match=r"asks cores=64.*cores=2") as info:
        ex.submit(tasks.noop, {"cores": 64})
    assert "max_workers=2" in str(info.value)
    with pytest.raises(InvalidResourceSpecification, match=r"asks gpus=1.*gpus=0"):
        ex.submit(tasks.noop, {"gpus": 1})
    with pytest.raises(InvalidResourceSpecification, match=r"more memory"):
        ex.submit(tasks.noop, {"memory": 10**12})
    for bad in ({"cores": -1}, {"cores": "two"}, {"memory": True}, {"gpus": 1.5}, {"cores": float("nan")}):
        with pytest.raises(InvalidResourceSpecification, match=str(next(iter(bad)))):
            ex.submit(tasks.noop, bad)
    with pytest.raises(InvalidResourceSpecification, match=r"\['priority', 'cores', 'memory', 'gpus'\]"):
        ex.submit(tasks.noop, {"disk": 10})
    # Nothing bad reached the interchange; what fits runs, with a priority too.
    assert ex.submit(tasks.add, {"cores": 2, "memory": 1, "priority": 1}, 2, 3).result(timeout=60) == 5
    assert ex.submit(tasks.add, {"cores": 0.5}, 1).result(timeout=60) == 1
    assert ex.stats()["queued"] == 0


def test_cancel_a_waiting_task_with_needs(make_executor: Any, tmp_path: Any) -> None:
    ex = make_executor(max_workers=2, cores_per_worker=1)
    log, gate = str(tmp_path / "started"), str(tmp_path / "gate")
    first = ex.submit(tasks.record_then_wait_for, {}, log, "first", gate)
    wait_for(lambda: read_lines(log) == ["first"], timeout=30, what="the first task to start")
    big = ex.submit(tasks.record, {"cores": 2}, log, "big")
    wait_for(lambda: ex.stats()["queued"] == 1, timeout=30, what="the 2-core task waiting")
    assert big.cancel() is True
    after = ex.submit(tasks.record, {}, log, "after")  # the worker kept for `big` is free again
    assert after.result(timeout=60) is None
    _open(gate)
    assert first.result(timeout=60) is None
    assert read_lines(log) == ["first", "after"]


def test_a_gpu_task_runs_on_a_worker_that_sees_its_own_device(make_executor: Any) -> None:
    """available_accelerators: a gpus=1 task is placed (it takes one worker, which sees only its device);
    more GPUs than the pool has fails at submit(), naming both."""
    ex = make_executor(available_accelerators=["0", "1"], max_workers=2)
    seats = [ex.submit(placement_tasks.seat, {"gpus": 1}, 0.0).result(timeout=60) for _ in range(4)]
    assert all(env["CUDA_VISIBLE_DEVICES"] == str(rank) for rank, _, env in seats), seats
    with pytest.raises(InvalidResourceSpecification, match=r"gpus=3.*gpus=2"):
        ex.submit(placement_tasks.seat, {"gpus": 3})
