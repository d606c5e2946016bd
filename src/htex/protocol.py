"""Every message that crosses a socket between executor, interchange, pool and worker.

A message is a list of ZeroMQ frames::

    frame 0   header: b"HX", protocol version (u8), message type (u8)
    frame 1.. the body, by type:
      TASKS     ids (u64 array), function keys (u64 array), keys of the functions
                carried in this message (u64 array), the function blobs, the task blobs
      RESULTS   ids (u64 array), the result blobs
      others    one JSON object (control messages: small, and safe to parse from
                a peer that is not yet trusted)

Task, function and result blobs are opaque bytes made by ``serialize``: the
interchange and the pool move them without ever unpickling them, and forward
them as the same zmq frames they arrived in (no copy).

Who sends what::

    executor  -> interchange   Tasks, Command, Heartbeat, Shutdown
    interchange -> executor    Ready, Results, TasksFailed, Reply, Event, Heartbeat
    pool      -> interchange   Probe, Register, Progress, Results, Heartbeat
    interchange -> pool        ProbeReply, Registered, Rejected, Tasks, Heartbeat, Shutdown
    anyone    -> interchange   StatusRequest (answered with StatusReply; `htex status`)
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

PROTOCOL_VERSION = 1
MAGIC = b"HX"
_HEADER = struct.Struct("<2sBB")

# A frame as it travels: bytes we made, or a zmq.Frame we received and pass on untouched.
Blob = bytes | memoryview | zmq.Frame


def as_buffer(frame: Blob) -> memoryview | bytes:
    """The bytes of a frame without copying them."""
    if isinstance(frame, zmq.Frame):
        return frame.buffer
    return frame


def u64_array(values: Any = ()) -> array:  # type: ignore[type-arg]
    return array("Q", values)


def _u64(values: array) -> bytes:  # type: ignore[type-arg]
    return values.tobytes()


def _read_u64(frame: Blob) -> array:  # type: ignore[type-arg]
    data = as_buffer(frame)
    if len(data) % 8:
        raise ProtocolError(f"u64 array frame has {len(data)} bytes, not a multiple of 8")
    out = array("Q")
    out.frombytes(data)
    return out


# ---------------------------------------------------------------------------
# Hot-path messages: batches of opaque blobs
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
        keys = array("Q", self.functions.keys())
        return [
            _header(self.TYPE),
            _u64(self.ids),
            _u64(self.fn_keys),
            _u64(keys),
            *self.functions.values(),
            *self.payloads,
        ]

    @classmethod
    def decode(cls, body: Sequence[Blob]) -> Tasks:
        if len(body) < 3:
            raise ProtocolError("TASKS message is truncated")
        ids, fn_keys, keys = _read_u64(body[0]), _read_u64(body[1]), _read_u64(body[2])
        n_fn = len(keys)
        if len(ids) != len(fn_keys) or len(body) != 3 + n_fn + len(ids):
            raise ProtocolError("TASKS message frame count does not match its header")
        functions = dict(zip(keys, body[3 : 3 + n_fn], strict=False))
        return cls(ids, fn_keys, list(body[3 + n_fn :]), functions)


@dataclass(slots=True)
class Results:
    """A batch of results: one blob per task id (see ``serialize.pack_result``)."""

    TYPE: ClassVar[int] = 2
    ids: array  # type: ignore[type-arg]
    payloads: list[Blob]

    def encode(self) -> list[Blob]:
        return [_header(self.TYPE), _u64(self.ids), *self.payloads]

    @classmethod
    def decode(cls, body: Sequence[Blob]) -> Results:
        if not body:
            raise ProtocolError("RESULTS message is truncated")
        ids = _read_u64(body[0])
        if len(body) != 1 + len(ids):
            raise ProtocolError("RESULTS message frame count does not match its header")
        return cls(ids, list(body[1:]))


# ---------------------------------------------------------------------------
# Control messages: one JSON frame each
# ---------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Json:
    TYPE: ClassVar[int] = 0

    def encode(self) -> list[Blob]:
        return [_header(self.TYPE), json.dumps(dataclasses.asdict(self)).encode()]

    @classmethod
    def decode(cls, body: Sequence[Blob]) -> Any:
        if len(body) != 1:
            raise ProtocolError(f"{cls.__name__} expects one JSON frame, got {len(body)}")
        try:
            fields = json.loads(bytes(as_buffer(body[0])))
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
class Heartbeat(_Json):
    TYPE: ClassVar[int] = 11


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
class Progress(_Json):
    """Pool -> interchange, before it hands tasks to workers: how many it has handed out in all.

    Sent before the hand-off, so the interchange always knows an upper bound of
    the tasks that may have started (see interchange.py: losing a pool).
    """

    TYPE: ClassVar[int] = 25
    handed: int


@dataclass(frozen=True, slots=True)
class StatusRequest(_Json):
    """Anyone -> interchange, on the task port: what is going on?  (``htex status``)"""

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
    | Probe | ProbeReply | Register | Registered | Rejected | Progress | StatusRequest | StatusReply | WorkerReady
)

_TYPES: dict[int, Any] = {
    cls.TYPE: cls
    for cls in (
        Tasks, Results, Ready, Heartbeat, Shutdown, Command, Reply, TasksFailed, Event,
        Probe, ProbeReply, Register, Registered, Rejected, Progress, StatusRequest, StatusReply, WorkerReady,
    )
}
_HEADERS = {t: _HEADER.pack(MAGIC, PROTOCOL_VERSION, t) for t in _TYPES}


def _header(msg_type: int) -> bytes:
    return _HEADERS[msg_type]


def encode(msg: Message) -> list[Blob]:
    return msg.encode()


def decode(frames: Sequence[Blob]) -> Message:
    """Decode a message; raises ProtocolError for anything malformed, never anything else."""
    if not frames:
        raise ProtocolError("empty message")
    head = as_buffer(frames[0])
    if len(head) != _HEADER.size:
        raise ProtocolError(f"header has {len(head)} bytes, expected {_HEADER.size}")
    magic, version, msg_type = _HEADER.unpack(head)
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
    msg: Message = cls.decode(frames[1:])
    return msg
