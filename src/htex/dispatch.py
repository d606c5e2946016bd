"""How the interchange shares its queued tasks among pools: a pure function, ``plan``.

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
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import TypeVar

K = TypeVar("K")

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
