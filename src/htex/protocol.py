"""Every message that crosses a socket between executor, interchange, pool and worker.

A message is one packed ZeroMQ frame, followed by the blobs too large to pack::

    frame 0   header: b"HX", protocol version (u8), message type (u8); then the body
    frame 1.. blobs of INLINE_MAX bytes or more, in the order the body lists them

Bodies (integers little-endian)::

    TASKS     u32 n, u32 f, u32 p; u64 ids[n], u64 fn_keys[n], u64 keys[f] of the functions
              this message carries; f64 priorities[p] (p is 0 or n; NaN: this task has
              none); u32 sizes[f + n] (EXTERNAL: the blob is the next frame); the packed
              blobs: the f functions, then the n tasks
    TASKS_AHEAD  the same body as TASKS (pool -> worker: tasks the worker claims first)
    RESULTS   u32 n; u64 ids[n]; u32 sizes[n]; the packed result blobs
    HEARTBEAT nothing
    others    one JSON object: a control message, small, safe to parse from a peer
              that is not yet trusted, and checked field by field against its
              declared type (nested objects, lists, enums as ints; ProtocolError
              names the first field that is wrong)

Why pack: pyzmq costs ~2 us per frame on each side, so a one-task message of
five frames cost five times what one frame does, at every hop; small blobs are
cheaper to copy into one frame than to send as frames of their own.  Big
blobs stay frames of their own, and the interchange and the pool forward them
without a copy.

Task, function and result blobs are opaque bytes made by ``serialize``: the
interchange and the pool move them without ever unpickling them.

Who sends what::

    executor  -> interchange   Tasks (after a TaskNeeds for tasks with cores/memory/gpus), Heartbeat, Shutdown;
                               requests, each with a req:
                                 StatusRequest -> StatusReply(stats, pools)
                                 HoldPools     -> Done(count)     (pools put on hold)
                                 DropBlocks    -> Done(count)     (pools forgotten)
                                 CancelTasks   -> Cancelled(withdrawn, started)
                                 any of them   -> Failed(reason)  (could not be carried out)
    interchange -> executor    Ready, Results, Heartbeat, the answers above; events:
                                 TasksFailed(ids, LostReason), PoolRegistered(PoolInfo),
                                 PoolGone (lost or released), PoolRejected, PoolDraining
    pool      -> interchange   Probe, Register, Results, Heartbeat, Withdrawn, Draining
    interchange -> pool        ProbeReply, Registered, Rejected, Tasks, Heartbeat, Shutdown;
                                 Withdraw(req, ids) -> Withdrawn(req, withdrawn, started)
    key holder -> interchange  StatusRequest (req 0, on the task port: `htex status`)
    worker    -> pool          WorkerReady, Results, Withdrawn (req 0: it skipped a task the pool took back)
    pool      -> worker        Tasks, TasksAhead, Shutdown

Withdraw takes tasks back from a pool if no worker may have started them:
``withdrawn`` are the ones it removed from its prefetch queue (they will never
run there, and no result will come for them); ``started`` are those it had
handed to a worker (a worker may have started them: they stay, and their
result comes as usual).  An id in neither list is not held by the pool: it is
done, and its result was sent before the Withdrawn, on the same connection.
With ``kill``, the pool also kills the worker running each started task (at
once, or when the worker reaches it in its batch) and replaces it; that task's
result is a TaskCancelled, or its own result if it finished first.

CancelTasks is the client's side of it: the interchange drops the tasks still
in its queue, sends a Withdraw to each pool holding some, and answers one
Cancelled when every pool has answered (or was lost).

The interchange's configuration (``InterchangeConfig``, on its stdin) is JSON
read with the same checks as a message.
"""

from __future__ import annotations

import dataclasses
import enum
import functools
import json
import math
import struct
import types
import typing
from array import array
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar, TypeVar

import zmq

from .errors import ProtocolError

PROTOCOL_VERSION = 5  # 5: TASKS carries per-task priorities
MAGIC = b"HX"
_HEADER = struct.Struct("<2sBB")
# Blobs smaller than this are copied into the packed frame; pyzmq copies anything
# smaller on send anyway (zmq.COPY_THRESHOLD), so packing them costs no extra copy.
INLINE_MAX = 64 * 1024
EXTERNAL = 0xFFFFFFFF  # a size that means "this blob is the next frame of its own"
_N = struct.Struct("<I")
_NFP = struct.Struct("<III")
# A task's priority on the wire when it has none (f64): NaN, which a user may not pass as one.
NO_PRIORITY = math.nan
_NO_PRIORITIES = array("d")  # shared, never written: what a batch without priorities packs
# The first byte of a result blob (``serialize`` writes it): lets the interchange count
# tasks that raised without unpickling anything.
RESULT_OK = 0
RESULT_RAISED = 1
# The word of memory a worker shares with its pool: the id of the task it started last
# (written before the task runs; see worker.py).
STARTED = struct.Struct("<Q")

# A frame as it travels: bytes we made, or a zmq.Frame we received and pass on untouched.
Blob = bytes | memoryview | zmq.Frame


def as_buffer(frame: Blob) -> memoryview | bytes:
    """The bytes of a frame without copying them."""
    if isinstance(frame, zmq.Frame):
        return frame.buffer
    return frame


def u64_array(values: Any = ()) -> array:  # type: ignore[type-arg]
    return array("Q", values)


def _pack(head: bytes, arrays: Sequence[array], blobs: Sequence[Blob]) -> list[Blob]:  # type: ignore[type-arg]
    """One frame with the head, the arrays, the blobs' sizes and the small blobs; then the big blobs."""
    sizes = array("I")
    small: list[Any] = [head, *arrays, sizes]  # join() reads arrays as they are: no tobytes() copies
    big: list[Blob] = []
    for blob in blobs:
        data = as_buffer(blob)
        n = data.nbytes if type(data) is memoryview else len(data)
        if n < INLINE_MAX:
            sizes.append(n)
            small.append(data)
        else:
            sizes.append(EXTERNAL)
            big.append(blob)
    return [b"".join(small), *big]


# Decoding: every way a packed body can be wrong raises ProtocolError (the peer may be hostile).  Plain
# functions, no reader object: a one-task TASKS took 16 us to decode with one, 5 without, and each round trip
# decodes six messages.


def _body(what: str, frames: Sequence[Blob], counts: struct.Struct) -> tuple[memoryview, tuple[int, ...]]:
    """The first frame past the header, and the counts its body starts with."""
    view = memoryview(as_buffer(frames[0]))[_HEADER.size :]
    if len(view) < counts.size:
        raise ProtocolError(f"{what} message is truncated")
    return view, counts.unpack_from(view)


def _array(code: str, view: memoryview, start: int, end: int) -> array:  # type: ignore[type-arg]
    out = array(code)
    out.frombytes(view[start:end])
    return out


def _blobs(what: str, view: memoryview, pos: int, sizes: array, frames: Sequence[Blob]) -> list[Blob]:  # type: ignore[type-arg]
    """The blobs ``sizes`` announce, from ``pos`` to the end of ``view``, the EXTERNAL ones from the next frames."""
    out: list[Blob] = []
    used = 1
    for n in sizes:
        if n == EXTERNAL:
            if used >= len(frames):
                raise ProtocolError(f"{what} message lacks a frame its header announces")
            out.append(frames[used])
            used += 1
        else:
            out.append(view[pos : pos + n])
            pos += n
    if pos != len(view) or used != len(frames):
        raise ProtocolError(f"{what} message size does not match its header")
    return out


# ---------------------------------------------------------------------------
# Binary messages: batches of opaque blobs, and the small ones every hand-off or period sends
# ---------------------------------------------------------------------------


@dataclass(slots=True)
class Tasks:
    """A batch of tasks; ``functions`` holds the blobs of functions the receiver has not seen.

    ``priorities`` (f64, one per task, NaN for a task without one) only when some task of the
    batch has one: the client sends them to the interchange, which orders its queue by them;
    batches without any (and every batch to a pool) carry none and cost nothing more.
    """

    TYPE: ClassVar[int] = 1
    ids: array  # type: ignore[type-arg]
    fn_keys: array  # type: ignore[type-arg]
    payloads: list[Blob]
    functions: dict[int, Blob] = field(default_factory=dict)
    priorities: array | None = None  # type: ignore[type-arg]

    def encode(self) -> list[Blob]:
        n, f = len(self.ids), len(self.functions)
        if len(self.fn_keys) != n or len(self.payloads) != n:
            raise ValueError(f"Tasks: {n} ids, {len(self.fn_keys)} function keys, {len(self.payloads)} payloads")
        ranks = self.priorities
        if ranks is None:  # the common case: no check, no array of our own
            ranks = _NO_PRIORITIES
        elif ranks.typecode != "d" or len(ranks) not in (0, n):
            raise ValueError(f"Tasks: {n} ids, {len(ranks)} priorities (array {ranks.typecode!r}, want 'd')")
        head = _HEADERS[self.TYPE] + _NFP.pack(n, f, len(ranks))
        if not f:  # the common case: every hop after a function's first
            return _pack(head, (self.ids, self.fn_keys, ranks), self.payloads)
        keys = array("Q", self.functions.keys())
        return _pack(head, (self.ids, self.fn_keys, keys, ranks), [*self.functions.values(), *self.payloads])

    @classmethod
    def decode(cls, frames: Sequence[Blob]) -> Tasks:
        view, (n, f, p) = _body("TASKS", frames, _NFP)
        if p and p != n:
            raise ProtocolError(f"TASKS message has {p} priorities for {n} tasks")
        ids = _NFP.size + 8 * n  # where each array ends: ids, fn_keys, keys, priorities, sizes
        fns = ids + 8 * n
        keys = fns + 8 * f
        ranks = keys + 8 * p
        sizes = ranks + 4 * (f + n)
        if sizes > len(view):
            raise ProtocolError("TASKS message is shorter than its header says")
        blobs = _blobs("TASKS", view, sizes, _array("I", view, ranks, sizes), frames)
        # Functions are kept for as long as the peer lives: a copy of their own,
        # so they do not pin the (maybe large) frame they came in.
        functions: dict[int, Blob] = {
            k: bytes(b) if isinstance(b, memoryview) else b
            for k, b in zip(_array("Q", view, fns, keys), blobs[:f], strict=True)
        } if f else {}
        return cls(_array("Q", view, _NFP.size, ids), _array("Q", view, ids, fns), blobs[f:] if f else blobs,
                   functions, _array("d", view, keys, ranks) if p else None)


@dataclass(slots=True)
class TasksAhead(Tasks):
    """Pool -> worker: tasks handed behind the one the worker runs (process_worker_pool.Lookahead).

    The worker claims each one (reads its byte from the claim pipe) before it starts it, so the
    pool can take the last one back.  In a plain ``Tasks`` batch to a worker, every task but the
    first is claimed the same way: the first starts at once, and taking it back would gain nothing.
    """

    TYPE: ClassVar[int] = 3


@dataclass(slots=True)
class Results:
    """A batch of results: one blob per task id (see ``serialize.pack_result``)."""

    TYPE: ClassVar[int] = 2
    ids: array  # type: ignore[type-arg]
    payloads: list[Blob]

    def encode(self) -> list[Blob]:
        if len(self.payloads) != len(self.ids):
            raise ValueError(f"Results: {len(self.ids)} ids, {len(self.payloads)} payloads")
        return _pack(_HEADERS[self.TYPE] + _N.pack(len(self.ids)), (self.ids,), self.payloads)

    @classmethod
    def decode(cls, frames: Sequence[Blob]) -> Results:
        view, (n,) = _body("RESULTS", frames, _N)
        ids, sizes = _N.size + 8 * n, _N.size + 12 * n
        if sizes > len(view):
            raise ProtocolError("RESULTS message is shorter than its header says")
        return cls(_array("Q", view, _N.size, ids), _blobs("RESULTS", view, sizes, _array("I", view, ids, sizes), frames))


@dataclass(frozen=True, slots=True)
class Heartbeat:
    """Header only: every peer sends one each heartbeat_period, so it is not JSON."""

    TYPE: ClassVar[int] = 11

    def encode(self) -> list[Blob]:
        return [_HEADERS[self.TYPE]]

    @classmethod
    def decode(cls, frames: Sequence[Blob]) -> Heartbeat:
        if len(frames) != 1 or len(as_buffer(frames[0])) != _HEADER.size:
            raise ProtocolError("HEARTBEAT message has a body")
        return _HEARTBEAT


# ---------------------------------------------------------------------------
# JSON bodies, checked against their declared types
# ---------------------------------------------------------------------------

_Check = Callable[[Any], Any]
_T = TypeVar("_T")


def _exactly(want: type) -> _Check:
    def check(value: Any) -> Any:
        if type(value) is not want:  # not isinstance: True is an int, and a peer must not pass it as one
            raise ProtocolError(f"should be {want.__name__}, got {value!r:.40}")
        return value

    return check


def _float(value: Any) -> float:
    if type(value) is float or type(value) is int:  # JSON writes 2.0 as 2 when a peer's float was whole
        try:
            number = float(value)
        except OverflowError:
            pass
        else:
            if math.isfinite(number):  # json reads NaN, Infinity and 1e999 unless told not to
                return number
    raise ProtocolError(f"should be a finite float, got {value!r:.40}")


def _enum(cls: type[enum.IntEnum]) -> _Check:
    def check(value: Any) -> Any:
        if type(value) is not int:
            raise ProtocolError(f"should be a {cls.__name__} (an int), got {value!r:.40}")
        try:
            return cls(value)
        except ValueError:
            raise ProtocolError(f"should be a {cls.__name__}, got {value!r:.40}") from None

    return check


def _list(item: _Check) -> _Check:
    def check(value: Any) -> Any:
        if type(value) is not list:
            raise ProtocolError(f"should be a list, got {value!r:.40}")
        return [item(v) for v in value]

    return check


def _tuple(items: list[_Check]) -> _Check:
    def check(value: Any) -> Any:
        if type(value) is not list or len(value) != len(items):  # JSON has no tuples: a list of that length
            raise ProtocolError(f"should be a list of {len(items)}, got {value!r:.40}")
        return tuple(c(v) for c, v in zip(items, value, strict=True))

    return check


def _optional(inner: _Check) -> _Check:
    return lambda value: None if value is None else inner(value)


def _converter(hint: Any) -> _Check:
    """A function that checks one JSON value against ``hint`` and returns it as that type.

    Built once per field, at its class's first use, so decoding does no type introspection.
    The function raises ProtocolError for a value of another type; this one raises
    TypeError for a type with no JSON form (a message declared with one is our bug,
    not a peer's: a unit test builds every check).
    """
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (typing.Union, types.UnionType) and len(args) == 2 and type(None) in args:
        return _optional(_converter(args[0] if args[1] is type(None) else args[1]))
    if origin is list and len(args) == 1:
        return _list(_converter(args[0]))
    if origin is tuple and args and Ellipsis not in args:
        return _tuple([_converter(a) for a in args])
    if isinstance(hint, type):
        if dataclasses.is_dataclass(hint):
            _fields(hint)  # its own fields are checked now, not at the first decode
            return functools.partial(_from_plain, hint)
        if issubclass(hint, enum.IntEnum):
            return _enum(hint)
        if hint is float:
            return _float
        if hint in (int, str, bool):
            return _exactly(hint)
    raise TypeError(f"htex.protocol: no JSON form for the type {hint!r}")


_FIELDS: dict[type, dict[str, _Check]] = {}


def _fields(cls: type) -> dict[str, _Check]:
    """Each field of a dataclass and its check (the annotations are strings here: resolve them)."""
    checks = _FIELDS.get(cls)
    if checks is None:
        hints = typing.get_type_hints(cls)
        checks = _FIELDS[cls] = {f.name: _converter(hints[f.name]) for f in dataclasses.fields(cls)}
    return checks


def _from_plain(cls: type[_T], obj: Any) -> _T:
    """``cls`` from a parsed JSON object, every field checked; ProtocolError names the first bad one."""
    if type(obj) is not dict:
        raise ProtocolError(f"{cls.__name__} should be a JSON object, got {obj!r:.40}")
    checks = _fields(cls)
    values = {}
    for name, value in obj.items():
        check = checks.get(name)
        if check is None:
            raise ProtocolError(f"{cls.__name__} has no field {name!r:.40}")
        try:
            values[name] = check(value)
        except ProtocolError as exc:
            raise ProtocolError(f"{cls.__name__}.{name}: {exc}") from None
    try:
        return cls(**values)
    except TypeError as exc:  # a field without a default is missing
        raise ProtocolError(f"bad {cls.__name__}: {exc}") from None


def _load(cls: type[_T], data: bytes) -> _T:
    try:
        obj = json.loads(data)
    except (ValueError, RecursionError) as exc:  # RecursionError: a body of "[[[[..." nested too deep to parse
        raise ProtocolError(f"bad {cls.__name__} body: {exc!s:.80}") from None
    return _from_plain(cls, obj)


def _as_dict(obj: Any) -> dict[str, Any]:
    """json's hook for what it cannot write itself: a dataclass, as the object of its fields (shallow)."""
    if not dataclasses.is_dataclass(obj) or isinstance(obj, type):
        raise TypeError(f"{type(obj).__name__} is not a JSON message or a part of one")
    checks = _fields(type(obj))
    return {name: getattr(obj, name) for name in checks}


def _dump(obj: Any) -> bytes:
    # Not dataclasses.asdict: it deep-copies every value (~60 us a PoolInfo, 13 ms a StatusReply of
    # 1,000 pools); json's C encoder walks lists, ints (IntEnums too) and strings itself.
    # allow_nan=False: a NaN is refused here, by the sender, rather than by the peer that reads it.
    return json.dumps(obj, default=_as_dict, allow_nan=False).encode()


# ---------------------------------------------------------------------------
# Control messages: one JSON frame each
# ---------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Json:
    TYPE: ClassVar[int] = 0

    def encode(self) -> list[Blob]:
        return [_HEADERS[self.TYPE] + _dump(self)]

    @classmethod
    def decode(cls, frames: Sequence[Blob]) -> Any:
        if len(frames) != 1:
            raise ProtocolError(f"{cls.__name__} is one frame, got {len(frames)}")
        return _load(cls, memoryview(as_buffer(frames[0]))[_HEADER.size :].tobytes())


@dataclass(frozen=True, slots=True)
class Ready(_Json):
    """Interchange -> executor, once: the ports the pools should connect to."""

    TYPE: ClassVar[int] = 10
    task_port: int
    result_port: int
    pid: int


@dataclass(frozen=True, slots=True)
class Shutdown(_Json):
    TYPE: ClassVar[int] = 12
    reason: str = ""


# -- executor <-> interchange: requests, each answered by one message with its req ---------------


@dataclass(frozen=True, slots=True)
class PoolInfo:
    """What the interchange knows of one pool (manager); ``dataclasses.asdict`` gives Parsl's manager dict."""

    manager: str
    block_id: str
    hostname: str
    pid: int
    worker_count: int
    prefetch_capacity: int
    tasks: int  # sent to it and not done
    active: bool  # False: held (no new task goes to it)
    idle_duration: float  # s since it last held no task (0 while it holds some)
    last_heartbeat: float  # s since we last heard from it
    python_version: str
    version: str  # its htex version


@dataclass(frozen=True, slots=True)
class Stats:
    """The interchange's counters.  ``done`` counts every result, ``raised`` those that are exceptions."""

    received: int
    dispatched: int
    done: int
    raised: int
    lost: int
    functions_sent: int
    queued: int
    pools: int
    workers: int
    running: int
    dropped: int  # messages refused from peers
    uptime: float  # s, by the interchange's clock: two samples give a rate


@dataclass(frozen=True, slots=True)
class StatusRequest(_Json):
    """Executor -> interchange (client socket), or a holder of the run's keys -> its task port (`htex status`)."""

    TYPE: ClassVar[int] = 26
    req: int = 0
    pools: bool = True  # False: the counters alone (cheap with 1,000 pools: `stats()`)


@dataclass(frozen=True, slots=True)
class StatusReply(_Json):
    TYPE: ClassVar[int] = 27
    req: int
    stats: Stats
    pools: list[PoolInfo]


@dataclass(frozen=True, slots=True)
class HoldPools(_Json):
    """Send no new task to these pools (by manager id); their tasks run on.  Answered by Done(count held)."""

    TYPE: ClassVar[int] = 13
    req: int
    managers: list[str]


@dataclass(frozen=True, slots=True)
class DropBlocks(_Json):
    """Forget the pools of these blocks now, and tell them to stop.  Answered by Done(count forgotten).

    ``released``: the executor let them go (scaled in), else their job ended; each pool
    forgotten is announced by a PoolGone, and the tasks it held fail (TasksFailed).
    """

    TYPE: ClassVar[int] = 14
    req: int
    blocks: list[str]
    reason: str
    released: bool


@dataclass(frozen=True, slots=True)
class CancelTasks(_Json):
    """Withdraw these tasks wherever they wait (``kill``: stop those running too).  Answered by Cancelled."""

    TYPE: ClassVar[int] = 52
    req: int
    ids: list[int]
    kill: bool = False


@dataclass(frozen=True, slots=True)
class Cancelled(_Json):
    """``withdrawn`` will never run (no result will come); ``started`` may have (with kill: their workers are
    being killed, and their result says whether it was in time).  The other ids asked for were done."""

    TYPE: ClassVar[int] = 53
    req: int
    withdrawn: list[int]
    started: list[int]


@dataclass(frozen=True, slots=True)
class Done(_Json):
    TYPE: ClassVar[int] = 16
    req: int
    count: int


@dataclass(frozen=True, slots=True)
class Failed(_Json):
    """The answer to a request the interchange could not carry out."""

    TYPE: ClassVar[int] = 17
    req: int
    reason: str


# -- interchange -> executor: events ------------------------------------------------------------


class LostReason(enum.IntEnum):
    """Why tasks ended without a result; the executor raises the matching exception of htex.errors."""

    MANAGER_LOST = 1  # their pool was lost or released while holding them (errors.ManagerLost)


@dataclass(frozen=True, slots=True)
class TasksFailed(_Json):
    TYPE: ClassVar[int] = 15
    ids: list[int]
    error: LostReason
    message: str


@dataclass(frozen=True, slots=True)
class PoolRegistered(_Json):
    TYPE: ClassVar[int] = 40
    pool: PoolInfo


@dataclass(frozen=True, slots=True)
class PoolGone(_Json):
    """A pool the interchange forgot: lost (silent for heartbeat_threshold, or its job ended) or released."""

    TYPE: ClassVar[int] = 41
    manager: str
    block_id: str
    message: str
    released: bool


@dataclass(frozen=True, slots=True)
class PoolRejected(_Json):
    """A pool refused at registration (a version mismatch): the executor may never get a worker."""

    TYPE: ClassVar[int] = 42
    manager: str
    reason: str


# -- pool <-> interchange, worker -> pool ---------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Probe(_Json):
    """Pool -> interchange, before registering: 'is this address the interchange?'"""

    TYPE: ClassVar[int] = 20


@dataclass(frozen=True, slots=True)
class ProbeReply(_Json):
    TYPE: ClassVar[int] = 21


@dataclass(frozen=True, slots=True)
class Register(_Json):
    TYPE: ClassVar[int] = 22
    manager_id: str
    block_id: str
    hostname: str
    pid: int
    worker_count: int
    prefetch_capacity: int
    htex_version: str
    python_version: str
    cores: int = 0  # the cores its workers are sized for (0: not said: one a worker)
    memory_mb: int = 0  # the memory its workers may use (0: not said)
    accelerators: list[str] = field(default_factory=list)  # device ids (CUDA_VISIBLE_DEVICES values)


@dataclass(frozen=True, slots=True)
class TaskNeeds(_Json):
    """Executor -> interchange, just before the TASKS that carry these tasks: what each asks beyond a plain
    worker slot (resources.Needs: cores, memory MB, GPUs).  Plain tasks never have one: TASKS is unchanged."""

    TYPE: ClassVar[int] = 54
    ids: list[int]
    needs: list[tuple[float, float, int]]


@dataclass(frozen=True, slots=True)
class Registered(_Json):
    TYPE: ClassVar[int] = 23


@dataclass(frozen=True, slots=True)
class Rejected(_Json):
    TYPE: ClassVar[int] = 24
    reason: str


@dataclass(frozen=True, slots=True)
class Withdraw(_Json):
    """Interchange -> pool: take back these tasks unless a worker may have started them.  Answered by Withdrawn
    (on the task socket) with the same ``req``; the pool answers each Withdraw, in the order they came."""

    TYPE: ClassVar[int] = 50
    req: int
    ids: list[int]
    kill: bool = False  # also kill the workers running the started ones (ex.cancel): they end TaskCancelled


@dataclass(frozen=True, slots=True)
class Withdrawn(_Json):
    """Pool -> interchange: ``withdrawn`` left its queue and will never run there; ``started`` were handed to
    a worker (may have started: they stay).  An id asked for and in neither list is done (see the docstring)."""

    TYPE: ClassVar[int] = 51
    req: int
    withdrawn: list[int]
    started: list[int]


@dataclass(frozen=True, slots=True)
class Draining(_Json):
    """Pool -> interchange: its drain time came (drain_period): send it no new task, stop it once it holds none."""

    TYPE: ClassVar[int] = 60


@dataclass(frozen=True, slots=True)
class PoolDraining(_Json):
    """Interchange -> executor: this pool takes no new task and will leave once its tasks are done."""

    TYPE: ClassVar[int] = 61
    manager: str
    block_id: str


@dataclass(frozen=True, slots=True)
class WorkerReady(_Json):
    """Worker -> pool, once at start-up."""

    TYPE: ClassVar[int] = 30
    rank: int
    pid: int


Request = StatusRequest | HoldPools | DropBlocks
Answer = StatusReply | Done | Failed | Cancelled
PoolEvent = PoolRegistered | PoolGone | PoolRejected | PoolDraining
Message = (
    Tasks | Results | Ready | Heartbeat | Shutdown | Request | Answer | TasksFailed | PoolEvent
    | Probe | ProbeReply | Register | Registered | Rejected | WorkerReady | Withdraw | Withdrawn | CancelTasks
    | TaskNeeds | Draining
)

_TYPES: dict[int, Any] = {
    cls.TYPE: cls
    for cls in (
        Tasks, TasksAhead, Results, Ready, Heartbeat, Shutdown, StatusRequest, StatusReply, HoldPools, DropBlocks, Done, Failed,
        CancelTasks, Cancelled, TaskNeeds,
        TasksFailed, PoolRegistered, PoolGone, PoolRejected,
        Probe, ProbeReply, Register, Registered, Rejected, WorkerReady, Withdraw, Withdrawn, Draining, PoolDraining,
    )
}
_HEADERS = {t: _HEADER.pack(MAGIC, PROTOCOL_VERSION, t) for t in _TYPES}
_HEARTBEAT = Heartbeat()


def encode(msg: Message) -> list[Blob]:
    return msg.encode()


def decode(frames: Sequence[Blob]) -> Message:
    """Decode a message; raises ProtocolError for anything malformed, never anything else."""
    if not frames:
        raise ProtocolError("empty message")
    head = as_buffer(frames[0])
    if len(head) < _HEADER.size:
        raise ProtocolError(f"first frame has {len(head)} bytes, too short for a header")
    magic, version, msg_type = _HEADER.unpack_from(head)
    if magic != MAGIC:
        raise ProtocolError(f"bad magic {magic!r}: not an htex peer")
    if version != PROTOCOL_VERSION:
        raise ProtocolError(
            f"protocol version {version} from peer, this side speaks {PROTOCOL_VERSION}: "
            "run the same htex version on the executor and the workers"
        )
    cls = _TYPES.get(msg_type)
    if cls is None:
        raise ProtocolError(f"unknown message type {msg_type}")
    msg: Message = cls.decode(frames)
    return msg


# ---------------------------------------------------------------------------
# The interchange's configuration: not a message, but read with the same checks
# ---------------------------------------------------------------------------


@dataclass(frozen=True, kw_only=True)
class InterchangeConfig:
    """Written by the executor as JSON on the interchange's stdin (a command line is readable by every local user)."""

    client_fd: int  # our end of the executor's socketpair (inherited): the client link
    tcp: bool = True  # listen on TCP worker ports (else UNIX sockets only)
    bind_address: str = "127.0.0.1"
    worker_ports: tuple[int, int] | None = None  # (task, result); None: a free pair in worker_port_range
    worker_port_range: tuple[int, int] = (54000, 55000)
    heartbeat_period: float = 30.0
    heartbeat_threshold: float = 120.0
    logdir: str = "."
    debug: bool = False
    cert_dir: str | None = None  # CurveZMQ keys of the run; None = plain TCP
    listen_fds: list[int] | None = None  # listening sockets the executor bound for us (task, result)
    ipc_name: str | None = None  # also listen on ipc://NAME-tasks (in a private directory)
    unix_fd: int | None = None  # the UNIX stream listener the executor bound for pools on this host (poollink.py)
    manager_selector: str | None = None  # selectors.pack'ed; None: pools take turns
    monitor_url: str | None = None  # the monitoring hub, if monitoring is on
    monitor_run: str | None = None  # the run's id in the monitoring store
    monitor_cert_dir: str | None = None  # the hub's CURVE keys, when it is reached over TCP

    def to_json(self) -> bytes:
        return _dump(self)

    @classmethod
    def from_json(cls, data: bytes) -> InterchangeConfig:
        """The configuration; ProtocolError names the first field of a wrong type."""
        return _load(cls, data)




def json_classes() -> list[type]:
    """Every class decoded from JSON.  Their checks are built at first use (not at import: ~10 ms in
    every process); tests/unit/test_protocol.py builds them all, so a field with no JSON form fails there."""
    return [*(c for c in _TYPES.values() if issubclass(c, _Json)), InterchangeConfig]
