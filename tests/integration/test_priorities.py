"""Priorities end to end (issue 15, point 1): real interchange, pool and worker processes.

One worker is held busy by a task that waits for a gate file; the tasks
submitted meanwhile all queue in the interchange (no prefetch: the pool has
no room).  The test waits until the interchange counts them all queued, opens
the gate, and reads the order the tasks started in from a side-effect file
(one O_APPEND write a line).  Nothing sleeps to synchronise: the test waits
for states it can observe.
"""

from __future__ import annotations

import math
import os
from concurrent.futures import Future, wait
from typing import Any

import pytest

from htex import InvalidResourceSpecification

import tasks
from support import read_lines, wait_for

pytestmark = pytest.mark.timeout(90)



class Held:
    """An executor with one worker, held busy until ``release()``."""

    def __init__(self, ex: Any, tmp: str) -> None:
        self.ex = ex
        self.log = os.path.join(tmp, "started")
        self.gate = os.path.join(tmp, "gate")
        self.busy = ex.submit(tasks.record_then_wait_for, {}, self.log, "busy", self.gate)
        wait_for(lambda: read_lines(self.log) == ["busy"], timeout=30, what="the long task to start")

    def release(self, queued: int, futures: list[Future[Any]]) -> list[str]:
        """Once ``queued`` tasks wait in the interchange, let the worker go; the order tasks started in."""
        wait_for(lambda: self.ex.stats()["queued"] == queued, timeout=30, what=f"{queued} tasks queued")
        with open(self.gate, "w"):
            pass
        done, not_done = wait([self.busy, *futures], timeout=60)
        assert not not_done
        for fut in done:
            fut.result()
        return read_lines(self.log)[1:]


def test_urgent_tasks_overtake_a_queue_of_less_urgent_ones(make_executor: Any, tmp_path: Any) -> None:
    held = Held(make_executor(max_workers=1, prefetch_capacity=0), str(tmp_path))
    futures = [held.ex.submit(tasks.record, {"priority": 10}, held.log, f"p10-{i}") for i in range(100)]
    futures += [held.ex.submit(tasks.record, {"priority": 1}, held.log, f"p1-{i}") for i in range(10)]
    order = held.release(110, futures)
    assert order == [f"p1-{i}" for i in range(10)] + [f"p10-{i}" for i in range(100)]


def test_lower_first_none_last_submission_order_among_equals(make_executor: Any, tmp_path: Any) -> None:
    held = Held(make_executor(max_workers=1, prefetch_capacity=0), str(tmp_path))
    ex, log = held.ex, held.log
    urgent = ex.stdlib.with_priority(-1)  # the stdlib's view carries a priority of its own
    submitted = [  # (label, resource_specification), in submission order
        ("none-0", {}), ("p2-0", {"priority": 2}), ("p1.5-0", {"priority": 1.5}), ("none-1", None),
        ("p2-1", {"priority": 2}), ("p1.5-1", {"priority": 1.5}), ("inf-0", {"priority": math.inf}),
        ("none-2", {}),
    ]
    futures = [ex.submit(tasks.record, spec, log, label) for label, spec in submitted]
    futures.append(urgent.submit(tasks.record, log, "m1-0"))
    futures.append(ex.stdlib.submit(tasks.record, log, "none-3"))
    order = held.release(len(futures), futures)
    # +inf waits with the tasks that have no priority (Parsl's default priority is inf), in submission order.
    assert order == ["m1-0", "p1.5-0", "p1.5-1", "p2-0", "p2-1", "none-0", "none-1", "inf-0", "none-2", "none-3"]


def test_bad_priorities_are_refused_at_submit(make_executor: Any) -> None:
    ex = make_executor()
    with pytest.raises(InvalidResourceSpecification, match=r"\['priority', 'cores', 'memory', 'gpus'\]") as info:
        ex.submit(tasks.noop, {"priority": 1, "disk": 2})
    assert "disk" in str(info.value)
    for bad in ("high", None, math.nan, True, [1]):
        with pytest.raises(InvalidResourceSpecification, match="priority"):
            ex.submit(tasks.noop, {"priority": bad})
    with pytest.raises(InvalidResourceSpecification, match="'high'"):
        ex.stdlib.with_priority("high")  # type: ignore[arg-type]
    # Nothing bad reached the interchange: the executor still works, with and without priorities.
    assert ex.submit(tasks.add, {"priority": 3}, 2).result(timeout=30) == 2
    assert ex.stdlib.with_priority(0).submit(tasks.add, 4).result(timeout=30) == 4
    assert list(ex.stdlib.with_priority(5).map(tasks.add, [1, 2], [10, 20], timeout=30)) == [11, 22]
