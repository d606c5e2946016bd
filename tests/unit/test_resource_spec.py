"""resources.py: checking a resource_specification, slots on a pool, the largest pool, placing waiting tasks."""

from __future__ import annotations

import math
from array import array

import pytest

from htex import InvalidResourceSpecification, protocol, resources
from htex.resources import Needs, Offer


def test_parse_takes_the_four_keys_and_numbers() -> None:
    assert resources.parse(None) is resources.PLAIN and resources.parse({}) is resources.PLAIN
    spec = resources.parse({"priority": 2, "cores": 2, "memory": 512.5, "gpus": 1})
    assert spec.priority == 2.0 and spec.needs == Needs(2.0, 512.5, 1)
    assert math.isnan(resources.parse({"cores": 0}).priority)
    assert not resources.parse({"cores": 0, "memory": 0}).needs  # asks nothing: a plain task


@pytest.mark.parametrize("spec, words", [
    ({"disk": 1}, "['priority', 'cores', 'memory', 'gpus']"),
    ({"cores": -1}, "'cores'"),
    ({"cores": "2"}, "'cores'"),
    ({"cores": True}, "'cores'"),
    ({"cores": math.inf}, "'cores'"),
    ({"memory": math.nan}, "'memory'"),
    ({"gpus": 0.5}, "whole number"),
    ({"priority": None}, "'priority'"),
])
def test_parse_refuses_with_a_message_naming_the_key(spec: dict[str, object], words: str) -> None:
    with pytest.raises(InvalidResourceSpecification) as info:
        resources.parse(spec)
    assert words in str(info.value)


def test_slots_are_the_largest_share_of_a_pool() -> None:
    two = Offer(workers=2, cores=2, memory_mb=2000, accelerators=0)
    assert resources.slots(Needs(cores=2), two) == 2
    assert resources.slots(Needs(cores=1), two) == 1
    assert resources.slots(Needs(cores=0.5), two) == 1
    assert resources.slots(Needs(memory=1500), two) == 2
    assert resources.slots(Needs(cores=1, memory=10), two) == 1
    assert resources.slots(Needs(cores=3), two) == 0  # never fits
    assert resources.slots(Needs(memory=2001), two) == 0
    assert resources.slots(Needs(gpus=1), two) == 0
    gpus = Offer(workers=4, cores=8, memory_mb=0, accelerators=4)  # memory not said: not limited
    assert resources.slots(Needs(gpus=2, memory=10**6), gpus) == 2
    assert resources.slots(Needs(cores=8), gpus) == 4


def test_offer_of_a_registration_that_does_not_say() -> None:
    reg = protocol.Register(manager_id="m", block_id="0", hostname="h", pid=1, worker_count=3, prefetch_capacity=0,
                            htex_version="x", python_version="3.11.0")
    assert Offer.of(reg) == Offer(workers=3, cores=3, memory_mb=0, accelerators=0)


def test_limits_from_the_launch_configuration() -> None:
    lim = resources.limits(max_workers=2, cores_per_worker=1, mem_per_worker=None, node_cores=8, node_memory_gb=4)
    assert (lim.cores, lim.memory_mb, lim.gpus) == (2, 4096, 0)
    lim.check(Needs(cores=2, memory=4096))
    with pytest.raises(InvalidResourceSpecification, match="asks cores=3"):
        lim.check(Needs(cores=3))
    lim = resources.limits(math.inf, 2, 1.5, node_cores=8, node_memory_gb=None)  # 4 workers of 2 cores, 1.5 GB
    assert (lim.cores, lim.memory_mb) == (8, 4 * 1.5 * 1024)
    unknown = resources.limits(math.inf, 1, None, node_cores=None, node_memory_gb=None)  # a remote node
    assert unknown.cores is None and unknown.memory_mb is None
    unknown.check(Needs(cores=1000, memory=10**9))  # cannot know: the task waits for a pool that can take it


def _task(tid: int) -> resources.Task:
    return (tid, 7, b"payload")


def test_place_best_fit_in_order_and_keeps_a_pool_for_a_blocked_task() -> None:
    sized = resources.SizedTasks()
    sized.expect(protocol.TaskNeeds(ids=[1, 2, 3], needs=[(2.0, 0.0, 0), (1.0, 0.0, 0), (1.0, 0.0, 0)]))
    plain, ranks = sized.split([_task(1), _task(2), _task(9), _task(3)], array("d", [5, 1, 0, math.nan]))
    assert plain == [_task(9)] and list(ranks) == [0.0]
    assert [e[2][0] for e in sized.waiting] == [2, 1, 3]  # priority order, none last
    two = Offer(2, 2, 0, 0)
    # Pool A has 1 free worker, B has 2: task 2 (1 core) goes to A (best fit), task 1 (2 cores) to B.
    placed, reserved = sized.place([(b"A", two, 1), (b"B", two, 2)])
    assert [(p, t[0], s) for p, t, s in placed] == [(b"A", 2, 1), (b"B", 1, 2)]
    assert [e[2][0] for e in sized.waiting] == [3] and len(reserved) == 1  # task 3 fits once a worker frees
    # No room now: task 3 waits, and keeps the pool nearest to fitting for itself.
    placed, reserved = sized.place([(b"A", two, 0), (b"B", two, 0)])
    assert placed == [] and len(reserved) == 1
    assert sized.remove({3}) == [3] and not sized.waiting and 3 not in sized.needs
