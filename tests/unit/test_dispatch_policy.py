"""dispatch.plan, the interchange's dispatch policy: a pure function, tested on plain values.

Besides the rules one by one, it is checked against the policy as the
interchange applied it before it became a function (``_reference`` below, the
loop of ``Interchange._dispatch`` transcribed onto plain values), over many
random states and several dispatches in a row: the same tasks to the same
pools, and the same turn order after.
"""

from __future__ import annotations

import copy
import math
import random
from collections import OrderedDict
from collections.abc import Iterator

from htex.dispatch import Room, TaskQueue, Turn, plan


class _Pool:
    """A pool as the interchange keeps it, reduced to numbers (see interchange._Pool)."""

    def __init__(self, name: str, workers: int, prefetch: int, tasks: int = 0, held: bool = False) -> None:
        self.name, self.workers, self.capacity, self.tasks, self.held = name, workers, workers + prefetch, tasks, held

    @property
    def free(self) -> int:
        return 0 if self.held else self.capacity - self.tasks

    @property
    def idle(self) -> int:
        return max(0, min(self.free, self.workers - self.tasks))


def _reference(queue: int, room: OrderedDict[str, _Pool]) -> list[Turn[str]]:
    """The dispatch loop the interchange ran before ``plan`` (its sends; it mutates room and the pools)."""
    sent: list[Turn[str]] = []

    def send(pool: _Pool, n: int) -> bool:
        nonlocal queue
        queue -= n
        pool.tasks += n
        sent.append((pool.name, n))
        return True

    for _ in range(len(room)):
        if not queue:
            return sent
        identity, pool = room.popitem(last=False)
        n = min(pool.idle, queue)
        if (n == 0 or send(pool, n)) and pool.free > 0:
            room[identity] = pool
    while queue and room:
        pools = list(room.values())
        for i, pool in enumerate(pools):
            n = min(pool.free, math.ceil(queue / (len(pools) - i)))
            if send(pool, n) and pool.free > 0:
                room.move_to_end(pool.name)
            else:
                room.pop(pool.name, None)
            if not queue:
                return sent
    return sent


def _apply(queue: int, room: OrderedDict[str, _Pool]) -> list[Turn[str]]:
    """What the interchange does now: plan, then take the turns (see Interchange._take_turns)."""
    turns = plan(queue, ((p, p.idle, p.free) for p in room.values()))
    for pool, n in turns:
        pool.tasks += n
        room.pop(pool.name, None)
        if pool.free > 0:
            room[pool.name] = pool
    return [(p.name, n) for p, n in turns if n]


def _rooms(*pools: tuple[str, int, int]) -> list[Room[str]]:
    return list(pools)


# -- the rules ---------------------------------------------------------------------


def test_nothing_queued_nothing_planned() -> None:
    assert plan(0, _rooms(("A", 2, 2))) == []
    assert plan(5, []) == []


def test_idle_workers_a_pool_at_a_time_in_turn_order() -> None:
    # A takes both tasks its idle workers can start; B the third.
    assert plan(3, _rooms(("A", 2, 2), ("B", 2, 2))) == [("A", 2), ("B", 1)]
    # A pool with no idle worker passes its turn (0) in rule 1 and gets a fair share in rule 2.
    assert plan(2, _rooms(("A", 0, 4), ("B", 1, 1))) == [("A", 0), ("B", 1), ("A", 1)]


def test_prefetch_slots_are_shared_evenly_after_the_idle_workers() -> None:
    turns = plan(6, _rooms(("A", 1, 5), ("B", 1, 5)))
    assert turns[:2] == [("A", 1), ("B", 1)]  # the idle workers first
    assert turns[2:] == [("A", 2), ("B", 2)]  # then the four left, split evenly
    # Uneven room: the one with less takes what it can, the others share the rest, round after round.
    assert plan(9, _rooms(("A", 0, 1), ("B", 0, 10), ("C", 0, 10))) == [
        ("A", 0), ("B", 0), ("C", 0), ("A", 1), ("B", 4), ("C", 4)
    ]


def test_never_more_than_room_and_never_more_than_queued() -> None:
    rng = random.Random(7)
    for _ in range(2000):
        rooms = [(f"p{i}", rng.randrange(0, 5), 0) for i in range(rng.randrange(0, 8))]
        rooms = [(name, idle, idle + rng.randrange(0 if idle else 1, 5)) for name, idle, _ in rooms]
        queued = rng.randrange(0, 60)
        given: dict[str, int] = {}
        for pool, n in plan(queued, rooms):
            assert n >= 0
            given[pool] = given.get(pool, 0) + n
        room = {name: r for name, _, r in rooms}
        assert all(given[p] <= room[p] for p in given)
        assert sum(given.values()) == min(queued, sum(room.values()))  # nothing left behind that could go


def test_reads_only_the_pools_it_serves() -> None:
    read = 0

    def rooms() -> Iterator[Room[int]]:
        nonlocal read
        for i in range(1000):
            read += 1
            yield (i, 1, 1)

    assert plan(3, rooms()) == [(0, 1), (1, 1), (2, 1)]
    assert read == 3  # with a short queue, the interchange's 1,000 pools cost three


# -- the same policy as before it was a function --------------------------------------


def _random_pools(rng: random.Random) -> list[_Pool]:
    pools = []
    for i in range(rng.randrange(1, 9)):
        workers, prefetch = rng.randrange(1, 5), rng.choice([0, 0, 1, 2, 4])
        pools.append(_Pool(f"p{i}", workers, prefetch, rng.randrange(0, workers + prefetch + 1), rng.random() < 0.1))
    return pools


def test_plan_does_what_the_interchange_did_before_it() -> None:
    rng = random.Random(20261201)
    for _ in range(500):
        old_pools = _random_pools(rng)
        order = [p for p in old_pools if p.free > 0]
        rng.shuffle(order)
        old_room = OrderedDict((p.name, p) for p in order)
        new_room = copy.deepcopy(old_room)
        new_pools = {p.name: p for p in new_room.values()}
        for p in old_pools:
            new_pools.setdefault(p.name, copy.deepcopy(p))
        for _ in range(5):  # several dispatches in a row: the turn order carries over
            queued = rng.randrange(0, 30)
            assert _apply(queued, new_room) == _reference(queued, old_room)
            assert list(new_room) == list(old_room)
            for p in old_pools:  # some tasks end; a pool with room again rejoins at the back
                p.tasks -= rng.randrange(0, p.tasks + 1)
                new_pools[p.name].tasks = p.tasks
                if p.free > 0:
                    old_room.setdefault(p.name, p)
                    new_room.setdefault(p.name, new_pools[p.name])


# -- TaskQueue: the order tasks leave the interchange in -----------------------------------------


def _drain(q: TaskQueue[str], step: int = 1) -> list[str]:
    out: list[str] = []
    while len(q):
        batch, _ = q.take(min(step, len(q)))
        out += batch
    return out


def test_queue_without_priorities_is_first_in_first_out_and_never_uses_the_heap() -> None:
    q: TaskQueue[str] = TaskQueue()
    q.extend(["a", "b", "c"])
    q.extend_ranked(["d", "e"], [math.nan, math.nan])  # a batch that carried priorities, none set
    batch, ranks = q.take(2)
    assert (batch, list(ranks)) == (["a", "b"], [])
    assert not q._ranked
    assert _drain(q) == ["c", "d", "e"]


def test_queue_orders_lower_first_then_arrival_then_unprioritized() -> None:
    q: TaskQueue[str] = TaskQueue()
    q.extend(["none-0"])
    q.extend_ranked(["p10-0", "none-1", "p1-0", "p10-1", "inf-0"], [10, math.nan, 1, 10, math.inf])
    q.extend_ranked(["m2-0", "p1-1", "p1.5-0"], [-2, 1, 1.5])
    q.extend(["none-2"])
    assert len(q) == 10
    assert _drain(q, step=3) == [
        "m2-0", "p1-0", "p1-1", "p1.5-0", "p10-0", "p10-1",  # lower first; equals in arrival order
        "none-0", "none-1", "inf-0", "none-2",  # then the rest in arrival order (+inf: Parsl's default)
    ]


def test_queue_hundred_then_ten_urgent() -> None:
    q: TaskQueue[int] = TaskQueue()
    q.extend_ranked(range(100), [10.0] * 100)
    q.extend_ranked(range(100, 110), [1.0] * 10)
    assert _drain(q, step=7) == [*range(100, 110), *range(100)]


def test_put_back_restores_the_exact_order() -> None:
    rng = random.Random(15)
    for _ in range(200):
        q: TaskQueue[int] = TaskQueue()
        ref: TaskQueue[int] = TaskQueue()  # the same arrivals, never taken from
        for start in range(0, 40, 8):
            ids = list(range(start, start + 8))
            ranks = [rng.choice([math.nan, math.inf, 0.0, 1.0, 2.5, -1.0]) for _ in ids]
            for queue in (q, ref):
                queue.extend_ranked(ids, ranks)
        n = rng.randrange(1, 41)
        batch, taken = q.take(n)
        assert len(batch) == n and len(taken) <= n
        q.put_back(batch, taken)  # as the interchange does when a pool was unreachable
        assert _drain(q, step=5) == _drain(ref, step=3)
