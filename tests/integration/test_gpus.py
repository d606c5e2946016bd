"""A task with gpus=g > 1 sees its g devices (process_worker_pool.Wide), and no device is shared at a time.

Fake accelerator ids (no GPU is needed: the test reads the variables a GPU
runtime would).  A pool of 4 workers, one accelerator each.  Tasks write the
devices they see to a side-effect file as they start, and wait for a gate, so
the test sees what runs at the same time.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from test_withdraw import FakeInterchange

import placement_tasks
from htex import TaskCancelled, protocol

import tasks
from support import read_lines, wait_for

pytestmark = pytest.mark.timeout(120)

DEVICES = ["0", "1", "2", "3"]


def _open(gate: str) -> None:
    with open(gate, "w"):
        pass


def _seen(log: str) -> dict[str, set[str]]:
    """label -> the devices it saw; every GPU runtime's variable names the same ones."""
    seen = {}
    for line in read_lines(log):
        label, cuda, rocr, ze = line.split()
        assert cuda == rocr == ze, line
        seen[label] = set(cuda.split(","))
    return seen


def _executor(make_executor: Any) -> Any:
    # cores_per_worker 0.25: 4 workers on this 2-core machine, as the 4 accelerators allow.
    ex = make_executor(available_accelerators=DEVICES, max_workers=4, cores_per_worker=0.25, prefetch_capacity=0)
    wait_for(lambda: ex.connected_managers, timeout=30, what="the pool")
    assert ex.connected_managers[0]["worker_count"] == 4
    return ex


def _one_gpu_each(ex: Any, tmp_path: Any, tag: str) -> dict[str, set[str]]:
    """Four gpus=1 tasks at once: each worker is back on its own device, one each."""
    log, gate = str(tmp_path / f"{tag}.log"), str(tmp_path / f"{tag}.gate")
    futs = [ex.submit(placement_tasks.devices_then_wait, {"gpus": 1}, log, f"{tag}{i}", gate) for i in range(4)]
    wait_for(lambda: len(read_lines(log)) == 4, timeout=60, what="four 1-GPU tasks to run at once")
    _open(gate)
    for f in futs:
        f.result(timeout=60)
    seen = _seen(log)
    assert sorted(d for s in seen.values() for d in s) == DEVICES, seen
    return seen


def test_a_two_gpu_task_sees_its_two_devices_and_its_neighbours_theirs(make_executor: Any, tmp_path: Any) -> None:
    ex = _executor(make_executor)
    log, gate = str(tmp_path / "started"), str(tmp_path / "gate")
    wide = ex.submit(placement_tasks.devices_then_wait, {"gpus": 2}, log, "wide", gate)
    ones = [ex.submit(placement_tasks.devices_then_wait, {"gpus": 1}, log, f"one{i}", gate) for i in range(2)]
    wait_for(lambda: len(read_lines(log)) == 3, timeout=60, what="the three tasks to run at once")
    seen = _seen(log)
    assert len(seen["wide"]) == 2 and len(seen["one0"]) == 1 and len(seen["one1"]) == 1, seen
    assert sorted(d for s in seen.values() for d in s) == DEVICES  # all four, none twice
    _open(gate)
    assert len(wide.result(timeout=60)[0].split(",")) == 2
    for f in ones:
        f.result(timeout=60)
    # Afterwards every worker is on its own device again, and a second wide task gets two again.
    _one_gpu_each(ex, tmp_path, "after")
    again_log, again_gate = str(tmp_path / "again"), str(tmp_path / "again.gate")
    _open(again_gate)
    devices = ex.submit(placement_tasks.devices_then_wait, {"gpus": 3}, again_log, "w3", again_gate).result(timeout=60)
    assert len(set(devices[0].split(","))) == 3 and set(devices[0].split(",")) <= set(DEVICES)


def test_cancelling_a_running_two_gpu_task_frees_its_devices(make_executor: Any, tmp_path: Any) -> None:
    ex = _executor(make_executor)
    log, gate = str(tmp_path / "started"), str(tmp_path / "gate")
    wide = ex.submit(placement_tasks.devices_then_wait, {"gpus": 2}, log, "wide", gate)
    wait_for(lambda: read_lines(log), timeout=60, what="the wide task to start")
    assert ex.cancel(wide) is True
    assert isinstance(wide.exception(timeout=30), TaskCancelled)
    _one_gpu_each(ex, tmp_path, "after")  # its host and the worker lent to it take tasks again, on their own devices
    _open(gate)


# The pool alone, where the interchange stands (test_withdraw.FakeInterchange): a wide task that waits in the pool
# for its workers.


@pytest.fixture
def ic(tmp_path: Any) -> Iterator[FakeInterchange]:
    """A pool of 2 workers, on accelerators 0 and 1, and no prefetch."""
    made = FakeInterchange(str(tmp_path), 2, 0, ("--available-accelerators", "0", "1"))
    yield made
    made.close()


def _send_wide(ic: Any, tid: int, gpus: int, *args: Any) -> None:
    ic.send(protocol.TaskNeeds(ids=[tid], needs=[(0.0, 0.0, gpus)]))
    ic.submit([(tid, placement_tasks.devices_then_wait, args)])


def test_a_two_gpu_task_waits_in_the_pool_for_both_its_workers(ic: FakeInterchange, tmp_path: Any) -> None:
    log, gate, open_gate = str(tmp_path / "started"), str(tmp_path / "gate"), str(tmp_path / "open")
    _open(open_gate)
    ic.submit([(1, tasks.record_then_wait_for, (log, "blocker", gate))])  # one of the two workers is busy
    wait_for(lambda: read_lines(log) == ["blocker"], timeout=30, what="the blocker to start")
    _send_wide(ic, 2, 2, log, "wide", open_gate)
    # It waits for the blocker's worker: taken back while it waits, it never runs.
    ic.send(protocol.Withdraw(req=1, ids=[2]))
    answer = ic.receive(protocol.Withdrawn)
    assert (answer.withdrawn, answer.started) == ([2], [])
    _send_wide(ic, 3, 2, log, "wide", open_gate)
    _open(gate)
    results = ic.results_for(2)
    assert results[1] == (True, None)
    assert results[3] == (True, ["0,1", "0,1", "0,1"])
    assert read_lines(log) == ["blocker", "wide 0,1 0,1 0,1"]
    # Both workers are on their own device again.
    after, gate2 = str(tmp_path / "after"), str(tmp_path / "gate2")
    ic.submit([(4, placement_tasks.devices_then_wait, (after, "a", gate2))])  # one each: both run at once
    ic.submit([(5, placement_tasks.devices_then_wait, (after, "b", gate2))])
    wait_for(lambda: len(read_lines(after)) == 2, timeout=30, what="both to run at once")
    _open(gate2)
    results = ic.results_for(2)
    assert sorted(r[1][0] for r in results.values()) == ["0", "1"]
