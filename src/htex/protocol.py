"""Every message that crosses a socket between executor, interchange, pool and worker.

A message is one packed ZeroMQ frame, followed by the blobs too large to pack::

    frame 0   header: b"HX", protocol version (u8), message type (u8); then the body
    frame 1.. blobs of INLINE_MAX bytes or more, in the order the body lists them

Bodies (integers little-endian)::

    TASKS     u32 n, u32 f; u64 ids[n], u64 fn_keys[n], u64 keys[f] of the functions
              this message carries; u32 sizes[f + n] (EXTERNAL: the blob is the next
              frame); the packed blobs: the f functions, then the n tasks
    RESULTS   u32 n; u64 ids[n]; u32 sizes[n]; the packed result blobs
    HEARTBEAT nothing
    others    one JSON object (control messages: small, and safe to parse from a
              peer that is not yet trusted)

Why pack: pyzmq costs ~2 us per frame on each side, so a one-task message of
five frames cost five times what one frame does, at every hop; small blobs are
cheaper to copy into one frame than to send as frames of their own.  Big
blobs stay frames of their own, and the interchange and the pool forward them
without a copy.

Task, function and result blobs are opaque bytes made by ``serialize``: the
interchange and the pool move them without ever unpickling them.

Who sends what::

    executor  -> interchange   Tasks, Command, Heartbeat, Shutdown
    interchange -> executor    Ready, Results, TasksFailed, Reply, Event, Heartbeat
    pool      -> interchange   Probe, Register, Results, Heartbeat
    interchange -> pool        ProbeReply, Registered, Rejected, Tasks, Heartbeat, Shutdown
    key holder -> interchange  StatusRequest (answered with StatusReply; `htex status`)
    worker    -> pool          WorkerReady, Results
    pool      -> worker        Tasks, Shutdown
"""

from __future__ import annotations

import dataclasses
import json
import struct
from array import array
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar

import zmq

from .errors import ProtocolError

PROTOCOL_VERSION = 3
MAGIC = b"HX"
_HEADER = struct.Struct("<2sBB")
# Blobs smaller than this are copied into the packed frame; pyzmq copies anything
# smaller on send anyway (zmq.COPY_THRESHOLD), so packing them costs no extra copy.
INLINE_MAX = 64 * 1024
EXTERNAL = 0xFFFFFFFF  # a size that means "this blob is the next frame of its own"
_N = struct.Struct("<I")
_NF = struct.Struct("<II")
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
    small: list[bytes | memoryview] = []
    big: list[Blob] = []
    for blob in blobs:
        data = as_buffer(blob)
        n = data.nbytes if isinstance(data, memoryview) else len(data)
        if n < INLINE_MAX:
            sizes.append(n)
            small.append(data)
        else:
            sizes.append(EXTERNAL)
            big.append(blob)
    return [b"".join([head, *(a.tobytes() for a in arrays), sizes.tobytes(), *small]), *big]


class _Unpacker:
    """Reads a packed body; every way it can be wrong raises ProtocolError (the peer may be hostile)."""

    def __init__(self, what: str, frames: Sequence[Blob]) -> None:
        self.what = what
        self.view = memoryview(as_buffer(frames[0]))[_HEADER.size :]
        self.pos = 0
        self.big = frames[1:]
        self.used = 0

    def counts(self, st: struct.Struct, *item_bytes: int) -> tuple[int, ...]:
        """Read the counts; refuse them if the arrays they announce (item_bytes per item) cannot fit."""
        if len(self.view) < st.size:
            raise ProtocolError(f"{self.what} message is truncated")
        values: tuple[int, ...] = st.unpack_from(self.view)
        self.pos = st.size
        if sum(n * b for n, b in zip(values, item_bytes, strict=True)) > len(self.view) - self.pos:
            raise ProtocolError(f"{self.what} message is shorter than its header says")
        return values

    def ints(self, code: str, n: int) -> array:  # type: ignore[type-arg]
        out = array(code)
        end = self.pos + n * out.itemsize
        if end > len(self.view):
            raise ProtocolError(f"{self.what} message is truncated")
        out.frombytes(self.view[self.pos : end])
        self.pos = end
        return out

    def blobs(self, sizes: array) -> list[Blob]:  # type: ignore[type-arg]
        out: list[Blob] = []
        view, pos = self.view, self.pos
        for n in sizes:
            if n == EXTERNAL:
                if self.used >= len(self.big):
                    raise ProtocolError(f"{self.what} message lacks a frame its header announces")
                out.append(self.big[self.used])
                self.used += 1
            else:
                out.append(view[pos : pos + n])
                pos += n
        if pos != len(view) or self.used != len(self.big):
            raise ProtocolError(f"{self.what} message size does not match its header")
        self.pos = pos
        return out


# ---------------------------------------------------------------------------
# Binary messages: batches of opaque blobs, and the small ones every hand-off or period sends
# ---------------------------------------------------------------------------


@dataclass(slots=True)
class Tasks:
    """A batch of tasks; ``functions`` holds the blobs of functions the receiver has not seen."""

    TYPE: ClassVar[int] = 1
    ids: array  # type: ignore[type-arg]
    fn_keys: array  # type: ignore[type-arg]
    payloads: list[Blob]
    functions: dict[int, Blob] = field(default_factory=dict)

    def encode(self) -> list[Blob]:
        n, f = len(self.ids), len(self.functions)
        if len(self.fn_keys) != n or len(self.payloads) != n:
            raise ValueError(f"Tasks: {n} ids, {len(self.fn_keys)} function keys, {len(self.payloads)} payloads")
        head = _HEADERS[self.TYPE] + _NF.pack(n, f)
        keys = array("Q", self.functions.keys())
        return _pack(head, (self.ids, self.fn_keys, keys), [*self.functions.values(), *self.payloads])

    @classmethod
    def decode(cls, frames: Sequence[Blob]) -> Tasks:
        u = _Unpacker("TASKS", frames)
        n, f = u.counts(_NF, 8 + 8 + 4, 8 + 4)
        ids, fn_keys, keys = u.ints("Q", n), u.ints("Q", n), u.ints("Q", f)
        blobs = u.blobs(u.ints("I", f + n))
        # Functions are kept for as long as the peer lives: a copy of their own,
        # so they do not pin the (maybe large) frame they came in.
        functions: dict[int, Blob] = {
            k: bytes(b) if isinstance(b, memoryview) else b for k, b in zip(keys, blobs[:f], strict=True)
        }
        return cls(ids, fn_keys, blobs[f:], functions)


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
        u = _Unpacker("RESULTS", frames)
        (n,) = u.counts(_N, 8 + 4)
        ids = u.ints("Q", n)
        return cls(ids, u.blobs(u.ints("I", n)))


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
# Control messages: one JSON frame each
# ---------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Json:
    TYPE: ClassVar[int] = 0

    def encode(self) -> list[Blob]:
        return [_HEADERS[self.TYPE] + json.dumps(dataclasses.asdict(self)).encode()]

    @classmethod
    def decode(cls, frames: Sequence[Blob]) -> Any:
        if len(frames) != 1:
            raise ProtocolError(f"{cls.__name__} is one frame, got {len(frames)}")
        try:
            fields = json.loads(memoryview(as_buffer(frames[0]))[_HEADER.size :].tobytes())
            msg = cls(**fields)
        except (ValueError, TypeError) as exc:
            raise ProtocolError(f"bad {cls.__name__} body: {exc}") from exc
        # A peer may be hostile: check the scalar fields really have their declared types.
        for f in dataclasses.fields(cls):
            want = _SCALARS.get(str(f.type))
            value = getattr(msg, f.name)
            if want is not None and (not isinstance(value, want) or isinstance(value, bool)):
                raise ProtocolError(f"{cls.__name__}.{f.name} should be {f.type}, got {value!r:.40}")
        return msg


_SCALARS: dict[str, type] = {"int": int, "str": str}


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


@dataclass(frozen=True, slots=True)
class Command(_Json):
    """Executor -> interchange: a request answered by a Reply with the same ``req``."""

    TYPE: ClassVar[int] = 13
    req: int
    op: str
    args: list[Any] = field(default_factory=list)


@dataclass(frozen=True, slots=True)
class Reply(_Json):
    TYPE: ClassVar[int] = 14
    req: int
    result: Any = None
    error: str = ""


@dataclass(frozen=True, slots=True)
class TasksFailed(_Json):
    """Interchange -> executor: tasks that ended without a result (e.g. their pool was lost)."""

    TYPE: ClassVar[int] = 15
    ids: list[int]
    error: str  # a class name from htex.errors
    message: str


@dataclass(frozen=True, slots=True)
class Event(_Json):
    """Interchange -> executor: something the executor should log or act on."""

    TYPE: ClassVar[int] = 16
    kind: str
    message: str
    data: dict[str, Any] = field(default_factory=dict)


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


@dataclass(frozen=True, slots=True)
class Registered(_Json):
    TYPE: ClassVar[int] = 23


@dataclass(frozen=True, slots=True)
class Rejected(_Json):
    TYPE: ClassVar[int] = 24
    reason: str


@dataclass(frozen=True, slots=True)
class StatusRequest(_Json):
    """A holder of the run's keys (or of its private directory) -> interchange: what is going on?"""

    TYPE: ClassVar[int] = 26


@dataclass(frozen=True, slots=True)
class StatusReply(_Json):
    TYPE: ClassVar[int] = 27
    stats: dict[str, Any]
    managers: list[dict[str, Any]]


@dataclass(frozen=True, slots=True)
class WorkerReady(_Json):
    """Worker -> pool, once at start-up."""

    TYPE: ClassVar[int] = 30
    rank: int
    pid: int


Message = (
    Tasks | Results | Ready | Heartbeat | Shutdown | Command | Reply | TasksFailed | Event
    | Probe | ProbeReply | Register | Registered | Rejected | StatusRequest | StatusReply | WorkerReady
)

_TYPES: dict[int, Any] = {
    cls.TYPE: cls
    for cls in (
        Tasks, Results, Ready, Heartbeat, Shutdown, Command, Reply, TasksFailed, Event,
        Probe, ProbeReply, Register, Registered, Rejected, StatusRequest, StatusReply, WorkerReady,
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
