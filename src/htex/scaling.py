"""The scaling strategy: a pure function from the executor's state to a decision.

Kept free of I/O so it is tested as a function; ``executor.py`` polls the
provider and applies what this returns.
"""

from __future__ import annotations

import math
from dataclasses import dataclass


@dataclass(frozen=True)
class ScalingState:
    outstanding: int  # tasks submitted and not done
    live_blocks: int  # blocks whose job is pending or running
    slots_per_block: int  # worker slots one block brings (known once a pool registered, else 1)
    min_blocks: int
    max_blocks: int
    parallelism: float
    failed_in_a_row: int  # blocks that ended in failure before any pool of theirs registered


@dataclass(frozen=True)
class Decision:
    scale_out: int = 0
    give_up: bool = False  # blocks keep failing: the executor should go to the bad state


MAX_FAILED_BLOCKS = 3


def decide(s: ScalingState) -> Decision:
    """How many blocks to add now.

    Wanted blocks: enough to give ``parallelism`` of a slot to each outstanding
    task, rounded up, kept within [min_blocks, max_blocks].  Scaling in idle
    blocks is not decided here yet (see the issue tracker).
    """
    if s.failed_in_a_row >= MAX_FAILED_BLOCKS:
        return Decision(give_up=True)
    wanted = math.ceil(s.outstanding * s.parallelism / max(1, s.slots_per_block))
    if s.outstanding > 0:
        wanted = max(wanted, 1)
    wanted = min(max(wanted, s.min_blocks), s.max_blocks)
    return Decision(scale_out=max(0, wanted - s.live_blocks))
