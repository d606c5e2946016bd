"""How the interchange orders its queued tasks (``TaskQueue``) and shares them among pools (``plan``, a pure function).

The interchange calls ``plan`` with the length of its queue and its pools with
room, in turn order, and applies the turns it returns: to each pool named, the
next ``n`` tasks of the queue (oldest first), then that pool goes to the back
of the turn order, or leaves it if it has no room left.  A turn of 0 tasks
still sends the pool to the back: its turn has passed.

The rules, in order:

1. Idle workers first, filled a pool at a time.  A task given to an idle
   worker starts at once wherever it goes, so this costs no balance, and it
   sends one message of many tasks instead of many messages of one (with
   1,000 pools, spreading a batch thinly cost the interchange half its rate).
2. Then prefetch slots (room beyond the idle workers), shared evenly: each
   pool in turn takes its share of what is left, ``ceil(queued / pools left)``
   at most, round after round until the queue or the room runs out.  A task
   queued behind a busy worker should not wait in one pool while another
   could queue it as well.
3. Pools take turns: whoever was served goes to the back, so the next plan
   starts with a pool that was not.

It reads only as many pools as it serves: with a short queue and 1,000 pools
it stops at the first few (the interchange calls it on every turn of its loop).

"The next tasks of the queue" are in the order of ``TaskQueue``, Parsl's
convention for priorities: a lower priority value first; tasks without a
priority after every task that has one; arrival order among equals.  Every
turn (idle workers and prefetch alike) takes from the front, so what a pool
prefetches follows the same order.
"""

from __future__ import annotations

import heapq
import math
from collections import deque
from collections.abc import Callable, Iterable, Sequence
from typing import Generic, TypeVar

K = TypeVar("K")
T = TypeVar("T")
# Where a task taken from the heap came from: (its priority, its arrival number), to put it back exactly.
Rank = tuple[float, int]
_NO_RANKS: tuple[Rank, ...] = ()  # shared: a take without priorities allocates nothing for them


class TaskQueue(Generic[T]):
    """Queued tasks in dispatch order: prioritized ones in a heap, the others in a deque.

    Tasks without a priority (the common case) never touch the heap: while it is
    empty, ``take`` is the plain deque's popleft, as fast as before priorities
    existed.  The heap orders by (priority, arrival number): the number breaks
    ties in arrival order and keeps tuple comparison from ever reaching a task.
    """

    __slots__ = ("_arrivals", "_plain", "_ranked")

    def __init__(self) -> None:
        self._plain: deque[T] = deque()
        self._ranked: list[tuple[float, int, T]] = []
        self._arrivals = 0

    def __len__(self) -> int:
        return len(self._plain) + len(self._ranked)

    def extend(self, tasks: Iterable[T]) -> None:
        """Queue tasks without a priority, behind every queued one."""
        self._plain.extend(tasks)

    def extend_ranked(self, tasks: Iterable[T], priorities: Iterable[float]) -> None:
        """Queue tasks with their priorities (NaN: none).

        A task of priority +inf joins those without one, as in Parsl (whose default
        priority is inf): both wait behind every finite priority, in arrival order.
        """
        plain, ranked, push, n = self._plain, self._ranked, heapq.heappush, self._arrivals
        for task, priority in zip(tasks, priorities, strict=True):
            if priority < math.inf:  # False for NaN (no priority) and +inf
                push(ranked, (priority, n, task))
                n += 1
            else:
                plain.append(task)
        self._arrivals = n

    def take(self, n: int) -> tuple[list[T], Sequence[Rank]]:
        """The next ``n`` tasks (n <= len), and the ranks of those that came from the heap (they come first)."""
        if not self._ranked:
            plain = self._plain
            if n == 1:  # without prefetch, most turns send one task: no comprehension for it
                return [plain.popleft()], _NO_RANKS
            return [plain.popleft() for _ in range(n)], _NO_RANKS
        ranked, pop = self._ranked, heapq.heappop
        k = min(n, len(ranked))
        entries = [pop(ranked) for _ in range(k)]
        popleft = self._plain.popleft
        return [e[2] for e in entries] + [popleft() for _ in range(n - k)], [(e[0], e[1]) for e in entries]

    def put_back(self, tasks: list[T], ranks: Sequence[Rank]) -> None:
        """Undo a ``take``: every task back where it was (a pool was unreachable)."""
        k = len(ranks)
        for (priority, arrival), task in zip(ranks, tasks[:k], strict=True):
            heapq.heappush(self._ranked, (priority, arrival, task))
        self._plain.extendleft(reversed(tasks[k:]))

    def remove_if(self, drop: Callable[[T], bool]) -> list[T]:
        """Take out the queued tasks ``drop`` picks (they were cancelled); the others keep their order.

        A pass over the whole queue: for cancels, which are rare, never on the dispatch path.
        """
        out: list[T] = []
        kept: deque[T] = deque()
        for task in self._plain:
            (out if drop(task) else kept).append(task)
        if out:
            self._plain = kept
        ranked = [e for e in self._ranked if not drop(e[2])]
        if len(ranked) < len(self._ranked):
            out += [e[2] for e in self._ranked if drop(e[2])]
            heapq.heapify(ranked)
            self._ranked = ranked
        return out

# A pool as ``plan`` sees it: (the pool, its idle workers, its room).  Room is the
# tasks it may still take (workers + prefetch capacity - tasks it holds); idle <= room.
Room = tuple[K, int, int]
Turn = tuple[K, int]  # (the pool, how many of the oldest queued tasks it gets)


def plan(queued: int, rooms: Iterable[Room[K]]) -> list[Turn[K]]:
    """The turns that hand out ``queued`` tasks to ``rooms`` (pools with room, in turn order)."""
    turns: list[Turn[K]] = []
    if queued <= 0:
        return turns
    left: list[tuple[K, int]] = []  # pools with room after their idle workers, in their new turn order
    for pool, idle, room in rooms:  # rule 1: every pool in turn, until the queue is empty
        n = min(idle, room, queued)
        turns.append((pool, n))
        queued -= n
        if queued == 0:
            return turns
        if room > n:
            left.append((pool, room - n))
    while queued and left:  # rule 2: rounds of fair shares
        pools, left = left, []
        for i, (pool, room) in enumerate(pools):
            n = min(room, -(-queued // (len(pools) - i)))  # ceil: the last pool takes what remains
            turns.append((pool, n))
            queued -= n
            if room > n:
                left.append((pool, room - n))
            if queued == 0:
                return turns
    return turns
