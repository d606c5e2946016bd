"""The scaling strategy: a pure function from the executor's state to a decision.

Kept free of I/O so it is tested as a function; ``executor.py`` polls the
provider every ``status_polling_interval`` and applies what this returns.

The rules:

* wanted blocks = enough to give ``parallelism`` of a worker slot to each
  outstanding task, rounded up, at least one while there is work, and kept
  within [min_blocks, max_blocks];
* scale out by the difference when fewer blocks are alive (pending or running);
* scale in only blocks that have been idle (no task) for ``max_idletime``,
  never below what is wanted nor below min_blocks: an idle block runs nothing,
  so no task is ever killed;
* after MAX_FAILED_BLOCKS blocks in a row fail before their pool connects,
  give up: the executor goes to the bad state with the scheduler's reason.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field


@dataclass(frozen=True)
class ScalingState:
    outstanding: int  # tasks submitted and not done
    live_blocks: int  # blocks whose job is pending or running
    slots_per_block: int  # worker slots one block brings (known once a pool registered, else 1)
    min_blocks: int
    max_blocks: int
    parallelism: float
    failed_in_a_row: int  # blocks that ended in failure before any pool of theirs registered
    idle_blocks: tuple[str, ...] = ()  # live blocks idle for longer than max_idletime, longest idle first


@dataclass(frozen=True)
class Decision:
    scale_out: int = 0
    scale_in: tuple[str, ...] = field(default_factory=tuple)
    give_up: bool = False  # blocks keep failing: the executor should go to the bad state


MAX_FAILED_BLOCKS = 3


def wanted_blocks(s: ScalingState) -> int:
    wanted = math.ceil(s.outstanding * s.parallelism / max(1, s.slots_per_block))
    if s.outstanding > 0:
        wanted = max(wanted, 1)
    return min(max(wanted, s.min_blocks), s.max_blocks)


def decide(s: ScalingState) -> Decision:
    if s.failed_in_a_row >= MAX_FAILED_BLOCKS:
        return Decision(give_up=True)
    wanted = wanted_blocks(s)
    if s.live_blocks < wanted:
        return Decision(scale_out=wanted - s.live_blocks)
    surplus = s.live_blocks - wanted
    return Decision(scale_in=s.idle_blocks[:surplus])
