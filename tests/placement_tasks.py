"""Functions the placement tests run on workers (importable there: conftest puts tests/ on PYTHONPATH)."""

from __future__ import annotations

import os
import time

PLACEMENT_VARS = ("CUDA_VISIBLE_DEVICES", "ROCR_VISIBLE_DEVICES", "ZE_AFFINITY_MASK", "OMP_NUM_THREADS",
                  "GOMP_CPU_AFFINITY", "KMP_AFFINITY")


def seat(hold: float = 0.2) -> tuple[int, list[int], dict[str, str | None]]:
    """This worker's rank, the cores it may run on, and its placement variables (after ``hold`` s, so that
    tasks submitted together spread over the workers)."""
    time.sleep(hold)
    env = {k: os.environ.get(k) for k in PLACEMENT_VARS}
    return int(os.environ["PARSL_WORKER_RANK"]), sorted(os.sched_getaffinity(0)), env


def block_id() -> str:
    return os.environ["PARSL_WORKER_BLOCK_ID"]


def youngest_block_first() -> object:
    """A manager selector of a user's own (made here: the interchange must be able to import its class)."""
    from htex.selectors import ManagerSelector

    class YoungestBlockFirst(ManagerSelector):
        def order(self, pools: list) -> list:  # type: ignore[type-arg, override]
            return sorted(pools, key=lambda p: -int(p.reg.block_id))

    return YoungestBlockFirst()


def block_after(seconds: float) -> str:
    """The block this task ran in, after ``seconds`` of work."""
    time.sleep(seconds)
    return os.environ["PARSL_WORKER_BLOCK_ID"]
