"""The monitoring events: what the executor, the interchange and the pools tell the hub.

Each event is a small typed tuple (``NamedTuple``: cheap to make on a hot path,
and ``json`` writes it as a list).  Events travel in batches, one ZeroMQ frame
per batch::

    b"HM" u8 version, then JSON: {"run": run_id, "source": "client" | "interchange" | "pool <id>",
                                  "events": [[TYPE, field, field, ...], ...]}

Who sends what::

    executor     RunStarted, RunEnded, TasksSubmittedPacked, TasksDonePacked, TaskResent, TaskEnded, BlockState
                 (TaskSubmitted, TasksSubmitted, TasksDone: older forms, still read)
    interchange  TasksDispatched, PoolRegistered, PoolState (draining, lost, gone)
    pool         PoolInfo, TasksStarted, ResourceSample

``decode_batch`` checks every field against its declared type and raises
``BadBatch`` for anything else: the hub counts such batches and drops them.
Times are seconds since the epoch, by the sender's clock.
"""

from __future__ import annotations

import array
import base64
import binascii
import itertools
import json
import math
import struct
import sys
import typing
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

MAGIC = b"HM"
VERSION = 1
_HEADER = MAGIC + bytes([VERSION])


class BadBatch(ValueError):
    """A batch the hub cannot read: not ours, another version, or a field of the wrong type."""


# -- the run -------------------------------------------------------------------------------


class RunStarted(NamedTuple):
    time: float
    label: str
    run_dir: str
    host: str


class RunEnded(NamedTuple):
    time: float


# -- tasks -------------------------------------------------------------------------------------


class TaskSubmitted(NamedTuple):
    task_id: int
    time: float
    func: str
    args_bytes: int
    priority: float | None


class TasksSubmitted(NamedTuple):
    """Many submissions in one event (the executor's common case): columns, one entry per task.

    Times are ``base`` plus whole microseconds: JSON writes an int 18 times faster than a float.
    """

    ids: list[int]
    base: float
    offsets_us: list[int]
    funcs: list[str]
    args_bytes: list[int]
    priorities: list[float | None]


class TasksDone(NamedTuple):
    """Many tasks that returned a value, in one event: columns, one entry per task (times as above)."""

    ids: list[int]
    base: float
    offsets_us: list[int]
    result_bytes: list[int]


class TasksSubmittedPacked(NamedTuple):
    """Many submissions in one event, as the executor keeps them: ``n_tasks`` rows of five little-endian
    doubles (task id, time, argument bytes, index into ``funcs``, priority or NaN), base64.

    The executor appends a row with one C call per task and sends the buffer as it is: no per-task
    Python work on its side of the wire (``unpack_rows`` reads it back, checked).
    """

    n_tasks: int
    funcs: list[str]
    rows: str


class TasksDonePacked(NamedTuple):
    """Many tasks that returned a value: ``n_tasks`` rows of (task id, time, result bytes), as above."""

    n_tasks: int
    rows: str


class TaskResent(NamedTuple):
    """A lost task sent again (lost_task_retries): ``retries`` is how many times so far."""

    task_id: int
    time: float
    retries: int


class TasksDispatched(NamedTuple):
    """The interchange sent these tasks to a pool (one event per batch, not per task)."""

    ids: list[int]
    time: float
    pool_id: str


class TasksStarted(NamedTuple):
    """The pool handed these tasks to one worker (they run in order; batches are ~2 ms of work)."""

    ids: list[int]
    time: float
    pool_id: str
    worker: int


class TaskEnded(NamedTuple):
    """``outcome``: done, failed (raised), lost (its worker or pool died), cancelled."""

    task_id: int
    time: float
    outcome: str
    result_bytes: int | None
    exc_type: str | None
    exc_message: str | None
    traceback: str | None


# -- pools and blocks -------------------------------------------------------------------------


class PoolRegistered(NamedTuple):
    """The interchange accepted a pool's registration."""

    pool_id: str
    time: float
    block_id: str
    host: str
    workers: int


class PoolInfo(NamedTuple):
    """A pool describes its node, once at start."""

    pool_id: str
    time: float
    block_id: str
    host: str
    workers: int
    cores: int
    memory_mb: int
    accelerators: list[str]


class PoolState(NamedTuple):
    """draining (held: no new task), lost (silent, or its job ended), gone (released by scale-in)."""

    pool_id: str
    time: float
    state: str
    reason: str


class BlockState(NamedTuple):
    """A block's new state (schema.BLOCK_STATES); ``reason``: the scheduler's own state and words."""

    block_id: str
    time: float
    state: str
    reason: str
    job_id: str | None
    provider: str | None


class ResourceSample(NamedTuple):
    """One process of a pool (worker -1: the pool itself): CPU % since the last sample, resident memory."""

    pool_id: str
    worker: int
    time: float
    cpu_percent: float
    rss_bytes: int


Event = (
    RunStarted | RunEnded | TaskSubmitted | TasksSubmitted | TasksDone | TasksSubmittedPacked | TasksDonePacked
    | TaskResent | TasksDispatched | TasksStarted | TaskEnded | PoolRegistered | PoolInfo | PoolState | BlockState
    | ResourceSample
)
# Each event's number on the wire (never reuse one: a hub may read batches of an older sender).
CODES: dict[type, int] = {
    RunStarted: 1,
    RunEnded: 2,
    TaskSubmitted: 10,
    TaskResent: 11,
    TasksDispatched: 12,
    TasksStarted: 13,
    TaskEnded: 14,
    TasksSubmitted: 15,
    TasksDone: 16,
    TasksSubmittedPacked: 17,
    TasksDonePacked: 18,
    PoolRegistered: 20,
    PoolInfo: 21,
    PoolState: 22,
    BlockState: 30,
    ResourceSample: 40,
}
TYPES: dict[int, Any] = {code: cls for cls, code in CODES.items()}


_PER_TASK = (TasksSubmitted, TasksDone, TasksDispatched, TasksStarted)


_PACKED = (TasksSubmittedPacked, TasksDonePacked)
ROW_WIDTH = {TasksSubmittedPacked: 5, TasksDonePacked: 3}  # doubles per row of a packed kind


def weight(event: Any) -> int:
    """How many facts an event carries: one per task for the batched kinds, else one (counts of lost events)."""
    kind = type(event)
    if kind in _PER_TASK:
        return len(event[0])
    return int(event[0]) if kind in _PACKED else 1


def pack_rows(rows: Sequence[tuple[float, ...]], width: int) -> str:
    """Rows of ``width`` numbers as a packed event carries them: little-endian doubles, base64."""
    return base64.b64encode(struct.pack(f"<{len(rows) * width}d", *itertools.chain.from_iterable(rows))).decode()


def unpack_rows(event: Any) -> array.array[float]:
    """A packed event's rows as one flat run of doubles; BadBatch if the size or a field is wrong."""
    width = ROW_WIDTH[type(event)]
    try:
        raw = binascii.a2b_base64(event.rows, strict_mode=True)
    except (binascii.Error, ValueError):
        raise BadBatch(f"{type(event).__name__}.rows: not base64") from None
    if event.n_tasks < 0 or len(raw) != event.n_tasks * width * 8:
        raise BadBatch(f"{type(event).__name__}: {len(raw)} bytes for {event.n_tasks} rows of {width} doubles")
    flat = array.array("d", raw)
    if sys.byteorder == "big":
        flat.byteswap()
    # Ids, sizes and function indexes are whole and >= 0; times finite (the priority may be NaN: none).
    whole = [flat[0::width], flat[2::width]] + ([flat[3::width]] if width == 5 else [])
    if event.n_tasks and (min(min(col) for col in whole) < 0 or not all(all(map(float.is_integer, col)) for col in whole)
                          or not all(map(math.isfinite, flat[1::width]))):
        raise BadBatch(f"{type(event).__name__}: a task id, size or time out of range")
    if width == 5 and event.n_tasks and max(flat[3::width]) >= len(event.funcs):
        raise BadBatch(f"{type(event).__name__}: a function index beyond its {len(event.funcs)} names")
    return flat


# -- the wire ------------------------------------------------------------------------------------


def encode_batch(run_id: str, source: str, events: Sequence[Any]) -> bytes:
    body = {"run": run_id, "source": source, "events": [[CODES[type(e)], *e] for e in events]}
    return _HEADER + json.dumps(body, separators=(",", ":"), allow_nan=False).encode()


class Batch(NamedTuple):
    run_id: str
    source: str
    events: list[Any]


def decode_batch(frame: bytes | memoryview) -> Batch:
    """A batch, every event checked; BadBatch says what is wrong."""
    data = bytes(frame)
    if data[:3] != _HEADER:
        raise BadBatch(f"not an htex monitoring batch of version {VERSION} (starts {data[:3]!r})")
    try:
        body = json.loads(data[3:])
    except (ValueError, RecursionError) as exc:
        raise BadBatch(f"bad JSON: {exc!s:.80}") from None
    if type(body) is not dict or type(body.get("run")) is not str or type(body.get("events")) is not list:
        raise BadBatch("a batch is {run: str, source: str, events: list}")
    events = [_event(raw) for raw in body["events"]]
    for e in events:
        if type(e) in _PACKED:
            unpack_rows(e)
    return Batch(body["run"], str(body.get("source", "")), events)


def _event(raw: Any) -> Any:
    if type(raw) is not list or not raw or type(raw[0]) is not int or raw[0] not in TYPES:
        raise BadBatch(f"not an event: {raw!r:.60}")
    cls = TYPES[raw[0]]
    checks = _checks(cls)
    values = raw[1:]
    if len(values) != len(checks):
        raise BadBatch(f"{cls.__name__} has {len(checks)} fields, got {len(values)}")
    for name, check, value in zip(cls._fields, checks, values, strict=True):
        if not check(value):
            raise BadBatch(f"{cls.__name__}.{name}: bad value {value!r:.40}")
    return cls(*values)


_CHECKS: dict[type, tuple[Callable[[Any], bool], ...]] = {}


def _checks(cls: type) -> tuple[Callable[[Any], bool], ...]:
    checks = _CHECKS.get(cls)
    if checks is None:
        hints = typing.get_type_hints(cls)
        checks = _CHECKS[cls] = tuple(_check_for(hints[name]) for name in cls._fields)  # type: ignore[attr-defined]
    return checks


def _check_for(hint: Any) -> Callable[[Any], bool]:
    args = typing.get_args(hint)
    if type(None) in args:
        inner = _check_for(next(a for a in args if a is not type(None)))
        return lambda v: v is None or inner(v)
    if typing.get_origin(hint) is list:
        item = _check_for(args[0])
        return lambda v: type(v) is list and all(item(x) for x in v)
    if hint is float:
        return lambda v: type(v) is float or type(v) is int
    if hint in (int, str):
        return lambda v: type(v) is hint
    raise TypeError(f"no check for {hint!r}")  # a field type this module cannot carry: our bug
