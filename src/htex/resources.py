"""Per-task resources (issue 15, point 3): what a ``resource_specification`` may ask, and where it fits.

``submit(func, {"cores": c, "memory": MB, "gpus": g, "priority": p}, ...)``:
every key is optional; ``parse`` checks them (InvalidResourceSpecification names
the allowed keys, or the bad value).

How a task is placed: each pool advertises its workers, cores, memory (MB) and
accelerators at registration.  A worker slot stands for ``cores / workers``
cores and ``memory / workers`` MB of its pool, so a task takes as many slots
as its largest need (``slots``): on a pool of 2 workers and 2 cores a 2-core
task takes both, and no other task runs there until it ends.  The interchange
sends such a task only to a pool with that many workers free, and while it
holds one, sends that pool nothing more than its free workers (no prefetch):
then every task the pool holds has a worker at once, and the slots the task
took stay idle.

A task that fits no pool this executor has or can start (``Limits``, from its
launch configuration) fails at ``submit()``, naming what it asked and what the
pools offer.  Tasks without cores, memory or gpus never come here: they take
the interchange's plain path, as fast as before.
"""

from __future__ import annotations

import math
import numbers
from array import array
from dataclasses import dataclass
from typing import Any

from . import protocol
from .errors import InvalidResourceSpecification

KEYS = ("priority", "cores", "memory", "gpus")  # what a resource_specification may hold


@dataclass(frozen=True, slots=True)
class Needs:
    """What one task asks beyond a plain worker slot: cores, memory (MB), GPUs (0: not asked)."""

    cores: float = 0.0
    memory: float = 0.0
    gpus: int = 0

    def __bool__(self) -> bool:
        return bool(self.cores or self.memory or self.gpus)

    def describe(self) -> str:
        units = {"cores": "", "memory": " MB", "gpus": ""}
        return ", ".join(f"{k}={_fmt(getattr(self, k))}{u}" for k, u in units.items() if getattr(self, k))


@dataclass(frozen=True, slots=True)
class Spec:
    """A checked resource_specification: its priority (NaN: none) and its needs (None: a plain task)."""

    priority: float
    needs: Needs | None


PLAIN = Spec(protocol.NO_PRIORITY, None)


def parse(spec: dict[str, Any] | None) -> Spec:
    """The checked specification; InvalidResourceSpecification for an unknown key or a bad value."""
    if not spec:
        return PLAIN
    if len(spec) == 1:  # the common prioritized task: a plain int or float, not NaN (NaN != NaN)
        priority = spec.get("priority")
        if (type(priority) is int or type(priority) is float) and priority == priority:
            return Spec(float(priority), None)
    unknown = sorted(str(k) for k in spec if k not in KEYS)
    if unknown:
        raise InvalidResourceSpecification(
            f"unknown resource_specification keys {unknown}: this executor takes only {list(KEYS)} "
            "(cores, memory in MB and gpus per task; priority: lower runs first)"
        )
    priority = protocol.NO_PRIORITY
    if "priority" in spec:
        priority = _number(spec, "priority", "a number (int or float, not NaN)", lambda v: not math.isnan(v))
    cores = _number(spec, "cores", "a number >= 0", _non_negative) if "cores" in spec else 0.0
    memory = _number(spec, "memory", "a number of MB >= 0", _non_negative) if "memory" in spec else 0.0
    gpus = _number(spec, "gpus", "a whole number >= 0", lambda v: _non_negative(v) and v == int(v)) \
        if "gpus" in spec else 0.0
    needs = Needs(cores, memory, int(gpus))
    return Spec(priority, needs if needs else None)


def _non_negative(v: float) -> bool:
    return math.isfinite(v) and v >= 0


def _number(spec: dict[str, Any], key: str, what: str, ok: Any) -> float:
    value = spec[key]
    # bool is an int, but True as a number of cores is surely a mistake; numbers.Real takes numpy's numbers.
    if isinstance(value, numbers.Real) and not isinstance(value, bool):
        try:
            number = float(value)
        except (OverflowError, ValueError, TypeError):
            pass
        else:
            if ok(number):
                return number
    raise InvalidResourceSpecification(f"resource_specification[{key!r}] must be {what}, got {value!r:.60}")


# ---------------------------------------------------------------------------
# Where a task fits
# ---------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Offer:
    """What one pool has: workers, cores, memory (MB; 0: not said), accelerators."""

    workers: int
    cores: int
    memory_mb: int
    accelerators: int

    @classmethod
    def of(cls, reg: protocol.Register) -> Offer:
        return cls(reg.worker_count, reg.cores or reg.worker_count, reg.memory_mb, len(reg.accelerators))

    def describe(self) -> str:
        memory = f"{self.memory_mb} MB" if self.memory_mb else "memory not said"
        return f"{self.workers} workers, {self.cores} cores, {memory}, {self.accelerators} GPUs"


def slots(needs: Needs, offer: Offer) -> int:
    """Worker slots the task takes on this pool; 0 if it can never fit there."""
    w = offer.workers
    if needs.cores > offer.cores or needs.gpus > offer.accelerators:
        return 0
    if needs.memory and offer.memory_mb and needs.memory > offer.memory_mb:
        return 0
    n = max(1, math.ceil(needs.cores * w / offer.cores - 1e-9))
    if needs.memory and offer.memory_mb:
        n = max(n, math.ceil(needs.memory * w / offer.memory_mb - 1e-9))
    if needs.gpus:
        n = max(n, math.ceil(needs.gpus * w / offer.accelerators - 1e-9))
    return n if n <= w else 0


@dataclass(frozen=True, slots=True)
class Limits:
    """The largest pool this executor can start: cores, memory (MB), GPUs; None where it cannot know."""

    cores: float | None
    memory_mb: float | None
    gpus: int
    why: str  # where the numbers come from, for the error message

    def check(self, needs: Needs) -> None:
        """InvalidResourceSpecification, at submit(), for a task no pool of this executor can take."""
        too_big = [
            key for key, asked, limit in (("cores", needs.cores, self.cores), ("memory", needs.memory, self.memory_mb),
                                          ("gpus", needs.gpus, self.gpus))
            if asked and limit is not None and asked > limit
        ]
        if too_big:
            offer = ", ".join(f"{k}={'?' if v is None else _fmt(v)}{unit}" for k, v, unit in
                              (("cores", self.cores, ""), ("memory", self.memory_mb, " MB"), ("gpus", self.gpus, "")))
            raise InvalidResourceSpecification(
                f"this task asks {needs.describe()}, more {' and '.join(too_big)} than any pool of this executor "
                f"can offer ({offer}: {self.why}); ask for less, or give the pools more (max_workers, "
                "cores_per_worker, mem_per_worker, or bigger nodes)"
            )


def limits(max_workers: float, cores_per_worker: float, mem_per_worker: float | None,
           node_cores: int | None, node_memory_gb: float | None, accelerators: int = 0) -> Limits:
    """The largest pool a launch configuration can start (see process_worker_pool.worker_count).

    ``node_cores`` and ``node_memory_gb``: a node's, when known (this host for a local provider,
    ``cores_per_node``/``mem_per_node`` of a scheduler's); else what the workers are sized for,
    or None (not known: such a request waits for a pool that can take it).  ``accelerators``: a
    pool's (available_accelerators), one worker each.
    """
    workers = max_workers if math.isfinite(max_workers) else None
    if accelerators:
        workers = min(workers or math.inf, accelerators)
    if node_cores is not None:
        workers = min(workers or math.inf, max(1, math.floor(node_cores / cores_per_worker)))
    cores = None if workers is None else workers * cores_per_worker
    if mem_per_worker and workers is not None:
        memory: float | None = workers * mem_per_worker * 1024
    else:
        memory = node_memory_gb * 1024 if node_memory_gb else None
    node_gb = f"{node_memory_gb:.1f}" if node_memory_gb else "?"
    why = (f"max_workers={max_workers}, cores_per_worker={cores_per_worker}, mem_per_worker={mem_per_worker}, "
           f"node: {node_cores or '?'} cores, {node_gb} GB; "
           + (f"{accelerators} accelerators" if accelerators else "no accelerators configured"))
    gpus = min(accelerators, int(workers)) if accelerators and workers is not None else accelerators
    return Limits(cores, memory, gpus, why)


def _fmt(v: float) -> str:
    return str(int(v)) if v == int(v) or v >= 1000 else f"{v:g}"


# ---------------------------------------------------------------------------
# The interchange's side: tasks with needs, waiting for a pool with enough free workers
# ---------------------------------------------------------------------------

Task = tuple[int, int, protocol.Blob]  # as the interchange queues it: id, function key, payload


class SizedTasks:
    """The interchange's tasks with needs: what each asks (until its result), and those waiting, in order.

    The order is the plain queue's (dispatch.TaskQueue): lower priority first, none last, arrival
    among equals.  The interchange places them before plain tasks, each on the pool with the fewest
    free workers that has enough (so big holes stay for big tasks); ``place`` says which.
    """

    def __init__(self) -> None:
        self.needs: dict[int, Needs] = {}  # from TaskNeeds, kept until the task's result (a resend asks again)
        self.waiting: list[tuple[float, int, Task]] = []  # sorted by (priority, arrival)
        self._arrivals = 0

    def expect(self, msg: protocol.TaskNeeds) -> None:
        for tid, (cores, memory, gpus) in zip(msg.ids, msg.needs, strict=False):
            self.needs[tid] = Needs(cores, memory, gpus)

    def split(self, tasks: list[Task], priorities: Any) -> tuple[list[Task], Any]:
        """Keep the tasks that have needs (to place them); return the others, and their priorities."""
        plain, ranks = [], []
        for i, task in enumerate(tasks):
            rank = priorities[i] if priorities is not None else math.nan
            if task[0] in self.needs:
                self.waiting.append((rank if rank < math.inf else math.inf, self._arrivals, task))
                self._arrivals += 1
            else:
                plain.append(task)
                ranks.append(rank)
        self.waiting.sort(key=lambda e: (e[0], e[1]))
        return plain, (None if priorities is None else array("d", ranks))

    def remove(self, ids: set[int]) -> list[int]:
        """Take out waiting tasks (cancelled); return their ids."""
        out = [e[2][0] for e in self.waiting if e[2][0] in ids]
        if out:
            self.waiting = [e for e in self.waiting if e[2][0] not in ids]
            for tid in out:
                self.needs.pop(tid, None)
        return out

    def done(self, ids: Any) -> None:
        for tid in ids:
            self.needs.pop(tid, None)

    def place(self, pools: list[tuple[bytes, Offer, int]]) -> tuple[list[tuple[bytes, Task, int]], set[bytes]]:
        """Which waiting tasks go where now: (pool, task, slots) each, and the pools to keep free for the
        first task that fits a pool but not yet (no plain task goes there meanwhile: else it could wait for
        ever behind small ones).  ``pools``: (pool identity, its offer, its free workers), pools taking tasks."""
        free = {key: n for key, _, n in pools}
        placed: list[tuple[bytes, Task, int]] = []
        reserved: set[bytes] = set()
        keep = []
        for entry in self.waiting:
            task = entry[2]
            needs = self.needs[task[0]]
            fits = [(free[key], s, key) for key, offer, _ in pools if (s := slots(needs, offer))]
            now = [f for f in fits if f[0] >= f[1] and f[2] not in reserved]
            if now:
                _, s, key = min(now, key=lambda f: f[0] - f[1])
                free[key] -= s
                placed.append((key, task, s))
                continue
            keep.append(entry)
            if fits and not reserved:
                reserved.add(max(fits, key=lambda f: f[0] - f[1])[2])
        self.waiting = keep
        return placed, reserved
