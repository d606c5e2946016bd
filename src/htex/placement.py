"""Where a pool's workers run on their node: one accelerator each, a set of CPU cores each.

Two settings, with the meaning Parsl gives them:

* ``available_accelerators``: an int N (devices ``"0"`` .. ``"N-1"``) or a list of
  device ids (``"0"``, ``"0.1"`` for a GPU tile).  A pool runs one worker per
  accelerator (``max_workers`` and the core count still cap it), and worker i
  sees only accelerator i: ``CUDA_VISIBLE_DEVICES``, ``ROCR_VISIBLE_DEVICES`` and
  ``ZE_AFFINITY_MASK`` name it (and ``ZE_ENABLE_PCI_ID_DEVICE_ORDER=1``, so Level
  Zero numbers devices as the others do).
* ``cpu_affinity``: ``"none"`` (workers run where the pool runs), ``"block"``
  (worker i gets the i-th run of ``cores // workers`` consecutive cores),
  ``"block-reverse"`` (the same runs, last worker first), ``"alternating"``
  (worker i gets every ``workers``-th core from core i), or
  ``"list:0-3,8-11:4-7,12-15"`` (one group of cores per worker, ``:``-separated;
  a group is ``,``-separated cores and ``a-b`` ranges).  Cores are counted in
  the pool's own affinity mask (what the scheduler gave the job), in order.
  A pinned worker gets ``OMP_NUM_THREADS`` (its core count), ``GOMP_CPU_AFFINITY``
  and ``KMP_AFFINITY`` naming its cores, for OpenMP code in its tasks.

The executor checks the settings when it is built (``check_affinity``,
``accelerator_list``); the pool computes each worker's ``Seat`` (``seats``) from
the cores it finds, and the worker pins itself before it says hello.  Nothing
here runs when neither setting is used.
"""

from __future__ import annotations

import os
import re
from collections.abc import Sequence
from dataclasses import dataclass

from .errors import PlacementError

STRATEGIES = ("none", "block", "alternating", "block-reverse")
ALLOWED = "'none', 'block', 'alternating', 'block-reverse', or 'list:' then core groups such as 'list:0-3,8-11:4-7,12-15'"
_GROUP = re.compile(r"\d+(-\d+)?(,\d+(-\d+)?)*")
_DEVICE = re.compile(r"[0-9A-Za-z_.\-]+")


@dataclass(frozen=True)
class Seat:
    """One worker's place: its cores (empty: not pinned) and its accelerator (None: none)."""

    cores: tuple[int, ...] = ()
    accelerator: str | None = None

    def environment(self) -> dict[str, str]:
        """The variables Parsl sets for a worker so placed (OpenMP's for its cores, the GPU runtimes' for its device)."""
        env: dict[str, str] = {}
        if self.cores:
            cores = ",".join(map(str, self.cores))
            env.update(OMP_NUM_THREADS=str(len(self.cores)), GOMP_CPU_AFFINITY=cores,
                       KMP_AFFINITY=f"explicit,proclist=[{cores}]")
        if self.accelerator is not None:
            env.update(CUDA_VISIBLE_DEVICES=self.accelerator, ROCR_VISIBLE_DEVICES=self.accelerator,
                       ZE_AFFINITY_MASK=self.accelerator, ZE_ENABLE_PCI_ID_DEVICE_ORDER="1")
        return env


def joined(seats: Sequence[Seat]) -> Seat:
    """One seat for a task that holds several workers' (gpus > 1): all their devices, all their cores."""
    accelerators = [s.accelerator for s in seats if s.accelerator is not None]
    return Seat(tuple(sorted({c for s in seats for c in s.cores})), ",".join(accelerators) if accelerators else None)


def accelerator_list(value: int | Sequence[str] | None) -> list[str]:
    """The device ids ``available_accelerators`` names ([] for None); PlacementError if it names none or a bad one."""
    if value is None:
        return []
    if isinstance(value, bool) or not isinstance(value, int | Sequence) or isinstance(value, bytes):
        raise PlacementError(f"available_accelerators must be an int or a list of device ids, got {value!r:.60}")
    if isinstance(value, int):
        if value < 1:
            raise PlacementError(f"available_accelerators={value}: give at least 1 (or leave it None for no accelerators)")
        return [str(i) for i in range(value)]
    ids = [value] if isinstance(value, str) else [str(v) for v in value]
    if not ids:
        raise PlacementError("available_accelerators=[] names no accelerator: give device ids such as "
                             "['0', '1'] or a count, or leave it None for no accelerators")
    bad = [d for d in ids if not _DEVICE.fullmatch(d)]
    if bad or len(set(ids)) != len(ids):
        raise PlacementError(f"available_accelerators={ids!r}: each id must be distinct and look like '0' or '0.1'")
    return ids


def check_affinity(value: str) -> str:
    """``value`` if it is a cpu_affinity Parsl knows (case as given for lists, lower case otherwise); else PlacementError."""
    if not isinstance(value, str):
        raise PlacementError(f"cpu_affinity must be a string, {ALLOWED}; got {value!r:.60}")
    if value.lower() in STRATEGIES:
        return value.lower()
    parse_groups(value)
    return value


def parse_groups(value: str) -> list[tuple[int, ...]]:
    """The core groups of a ``list:`` affinity, one per worker; PlacementError naming the value if it does not parse."""
    if not value.lower().startswith("list:"):
        raise PlacementError(f"cpu_affinity={value!r} is not one of {ALLOWED}")
    groups = []
    for text in value[5:].split(":"):
        if not _GROUP.fullmatch(text):
            raise PlacementError(f"cpu_affinity={value!r}: group {text!r} is not cores such as '0-3,8' ({ALLOWED})")
        cores: list[int] = []
        for part in text.split(","):
            low, _, high = part.partition("-")
            first, last = int(low), int(high or low)
            if last < first:
                raise PlacementError(f"cpu_affinity={value!r}: range {part!r} runs backwards")
            cores.extend(range(first, last + 1))
        groups.append(tuple(dict.fromkeys(cores)))
    return groups


def check_groups_fit(value: str, cores: Sequence[int]) -> None:
    """PlacementError if a ``list:`` affinity has more groups than ``cores``, or names a core not among them."""
    if not value.lower().startswith("list:"):
        return
    groups = parse_groups(value)
    if len(groups) > len(cores):
        raise PlacementError(f"cpu_affinity={value!r} has {len(groups)} groups (one per worker) but this node "
                             f"gives {len(cores)} cores ({_ranges(cores)}): give at most {len(cores)} groups")
    missing = sorted({c for g in groups for c in g} - set(cores))
    if missing:
        raise PlacementError(f"cpu_affinity={value!r} names cores {missing} that this node does not give "
                             f"(it gives {_ranges(cores)})")


def place(cpu_affinity: str, accelerators: Sequence[str], count: int) -> tuple[int, list[Seat] | None]:
    """A pool's worker count (``count`` as its other limits allow, capped by these settings) and each
    worker's seat; ``(count, None)`` when neither setting is used."""
    if cpu_affinity == "none" and not accelerators:
        return count, None
    cores = node_cores()
    count = int(min(count, worker_limit(cpu_affinity, accelerators, cores)))
    return count, seats(cpu_affinity, accelerators, count, cores)


def node_cores() -> list[int]:
    """The cores this process may run on, in order (what the scheduler gave the job)."""
    return sorted(os.sched_getaffinity(0))


def worker_limit(cpu_affinity: str, accelerators: Sequence[str], cores: Sequence[int]) -> float:
    """The most workers these settings allow on a node with ``cores``: one per accelerator, one per group or core."""
    limit = float(len(accelerators)) if accelerators else float("inf")
    if cpu_affinity.lower().startswith("list:"):
        limit = min(limit, len(parse_groups(cpu_affinity)))
    elif cpu_affinity != "none":
        limit = min(limit, len(cores))
    return limit


def seats(cpu_affinity: str, accelerators: Sequence[str], count: int, cores: Sequence[int]) -> list[Seat]:
    """Each of ``count`` workers' place, by rank (``count`` is within ``worker_limit``); PlacementError if a
    ``list:`` names cores this node does not give."""
    check_groups_fit(cpu_affinity, cores)
    return [Seat(_cores_of(cpu_affinity, rank, count, cores),
                 accelerators[rank] if accelerators else None) for rank in range(count)]


def _cores_of(cpu_affinity: str, rank: int, count: int, cores: Sequence[int]) -> tuple[int, ...]:
    if cpu_affinity == "none":
        return ()
    if cpu_affinity.lower().startswith("list:"):
        return parse_groups(cpu_affinity)[rank]
    share = len(cores) // count
    if cpu_affinity == "block":
        return tuple(cores[share * rank: share * (rank + 1)])
    if cpu_affinity == "block-reverse":
        mirror = count - 1 - rank
        return tuple(cores[share * mirror: share * (mirror + 1)])
    return tuple(cores[rank::count])  # alternating


def _ranges(cores: Sequence[int]) -> str:
    return ",".join(map(str, cores))
