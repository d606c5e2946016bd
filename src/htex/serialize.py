"""Functions, arguments and results to bytes and back.

Functions go through cloudpickle: one importable on the worker is pickled by
reference (module and name), a lambda, closure or function of ``__main__`` by
value.  Each distinct function is pickled once in the executor, given a key,
and crosses the wire once per pool (the interchange remembers which pool has
which key) and once per worker.

Arguments and results try the C pickler first (fast) and fall back to
cloudpickle for what it cannot do (lambdas as arguments, ...) and for what it
would pickle by a reference the worker cannot follow: a function or class of
the client's ``__main__`` (``map(fn, chunksize=10)`` passes ``fn`` as an
argument), which cloudpickle sends by value.

A result blob starts with one status byte::

    b"\\x00" + pickle(value)                      the task returned value
    b"\\x01" + pickle((exception, traceback text)) the task raised
"""

from __future__ import annotations

import hashlib
import pickle
import traceback
import weakref
from collections.abc import Callable
from typing import Any

import cloudpickle

from . import shm
from .errors import (
    DeserializationError,
    RemoteError,
    RemoteTraceback,
    SerializationError,
)
from .protocol import RESULT_OK, RESULT_RAISED

PROTOCOL = pickle.HIGHEST_PROTOCOL
_OK = bytes([RESULT_OK])
_RAISED = bytes([RESULT_RAISED])


def dumps(obj: Any) -> bytes:
    """Pickle with the C pickler, falling back to cloudpickle for what it refuses or would send by
    a reference into ``__main__`` (the bytes say so; a false alarm only costs the slower pickler)."""
    try:
        blob = pickle.dumps(obj, PROTOCOL)
    except Exception:
        blob = None
    if blob is None or _MAIN in blob:
        blob = cloudpickle.dumps(obj, PROTOCOL)
    return blob


_MAIN = b"__main__"


def format_traceback(exc: BaseException, skip: int = 0) -> str:
    """The traceback text of ``exc`` without its first ``skip`` frames; never raises (a hostile
    ``__str__`` gets a stand-in)."""
    tb = exc.__traceback__
    for _ in range(skip):
        tb = tb.tb_next if tb is not None else None
    try:
        return "".join(traceback.format_exception(type(exc), exc, tb))
    except BaseException:
        return f"{_type_name(exc)} (its traceback could not be formatted)"


def _type_name(obj: Any) -> str:
    return f"{type(obj).__module__}.{type(obj).__qualname__}"


def _safe_str(obj: Any) -> str:
    try:
        return str(obj)
    except BaseException:
        return f"<{_type_name(obj)} whose str() raised>"


# ---------------------------------------------------------------------------
# Functions
# ---------------------------------------------------------------------------


def pack_function(fn: Callable[..., Any]) -> bytes:
    try:
        blob: bytes = cloudpickle.dumps(fn, PROTOCOL)
    except Exception as exc:
        raise SerializationError(
            f"the function {_describe(fn)} cannot be pickled ({type(exc).__name__}: {exc}); "
            "define it at module level, or make what it closes over picklable"
        ) from exc
    return blob


def unpack_function(blob: bytes | memoryview) -> Callable[..., Any]:
    try:
        fn: Callable[..., Any] = pickle.loads(blob)
    except ModuleNotFoundError as exc:
        raise DeserializationError(
            f"cannot load the task's function on the worker: no module named {exc.name!r}. "
            f"Install {exc.name!r} where the workers run (or add it to worker_init), "
            "or define the function in your __main__ script so that it is sent by value",
            module=exc.name,
        ) from exc
    except Exception as exc:
        raise DeserializationError(
            f"cannot load the task's function on the worker ({type(exc).__name__}: {exc})"
        ) from exc
    return fn


class FunctionRegistry:
    """Executor side: gives each distinct function a key and pickles it only once.

    Functions are remembered weakly where they allow it, so a script that makes
    many lambdas does not keep them all alive.  Two objects that pickle to the
    same bytes share a key.
    """

    def __init__(self) -> None:
        self._by_object: weakref.WeakKeyDictionary[Any, int] = weakref.WeakKeyDictionary()
        self._by_object_strong: dict[Any, int] = {}  # builtins: no weakrefs, and immortal anyway
        self._by_digest: dict[bytes, int] = {}
        self._next = 1

    def key_for(self, fn: Callable[..., Any]) -> tuple[int, bytes | None]:
        """Return (key, blob): blob is None when this function was registered before."""
        try:
            return self._by_object[fn], None
        except TypeError:
            key = self._by_object_strong.get(fn)
            if key is not None:
                return key, None
        except KeyError:
            pass
        blob = pack_function(fn)
        digest = hashlib.blake2b(blob, digest_size=16).digest()
        key = self._by_digest.get(digest)
        new = key is None
        if key is None:
            key = self._next
            self._next += 1
            self._by_digest[digest] = key
        try:
            self._by_object[fn] = key
        except TypeError:
            self._by_object_strong[fn] = key
        return key, (blob if new else None)


# ---------------------------------------------------------------------------
# Arguments
# ---------------------------------------------------------------------------


def pack_args(args: tuple[Any, ...], kwargs: dict[str, Any]) -> bytes:
    try:
        blob = pickle.dumps((args, kwargs), PROTOCOL)
        if _MAIN not in blob:
            return blob
    except Exception:
        pass
    try:
        by_value: bytes = cloudpickle.dumps((args, kwargs), PROTOCOL)
    except Exception as exc:
        raise SerializationError(_name_unpicklable(args, kwargs, exc)) from exc
    return by_value


# Arguments bound for shared memory (see shm.py): large ``bytes`` leave the pickle
# stream as out-of-band buffers, so the arena copies them once, straight from the
# caller's object, instead of pickle copying them into a fresh buffer first (fresh
# memory costs ~0.8 ms per MB in page faults on this VM).  Only bytes, and only
# those passed directly as arguments (the pickler gives no hook for bytes found
# deeper).  They are rebuilt by copying, so nothing on the worker ever aliases
# the shared memory.
OUT_OF_BAND_MIN = 64 * 1024


class _OutOfBand:
    """Stands in for a large bytes argument while pickling: its buffer goes out-of-band."""

    __slots__ = ("buf",)

    def __init__(self, data: bytes) -> None:
        self.buf = pickle.PickleBuffer(data)

    def __reduce_ex__(self, protocol: Any) -> tuple[Any, ...]:
        return bytes, (self.buf,)


def pack_args_split(args: tuple[Any, ...], kwargs: dict[str, Any]) -> tuple[bytes, list[pickle.PickleBuffer]]:
    """Pickle with large bytes arguments out-of-band: (stream, buffers); buffers is empty for most calls."""
    if not any(_is_large_bytes(v) for v in (*args, *kwargs.values())):
        return pack_args(args, kwargs), []  # the common case costs what pack_args costs
    ours = [_OutOfBand(v) if _is_large_bytes(v) else v for v in args]
    kw = {k: _OutOfBand(v) if _is_large_bytes(v) else v for k, v in kwargs.items()}
    stand_ins = [v.buf for v in (*ours, *kw.values()) if isinstance(v, _OutOfBand)]
    buffers: list[pickle.PickleBuffer] = []

    def out_of_band(buf: pickle.PickleBuffer) -> bool:
        if any(buf is b for b in stand_ins):
            buffers.append(buf)
            return False
        return True  # numpy arrays and the like stay in-band: on the worker they would alias shared memory

    try:
        stream = pickle.dumps((tuple(ours), kw), PROTOCOL, buffer_callback=out_of_band)
        if _MAIN in stream:
            return pack_args(args, kwargs), []  # by value, with cloudpickle: in-band
        return stream, buffers
    except Exception:
        return pack_args(args, kwargs), []  # needs cloudpickle (or cannot be pickled): in-band


def pack_task_args(args: tuple[Any, ...], kwargs: dict[str, Any], arena: shm.Arena | None,
                   may_wait: bool) -> tuple[bytes, shm.Lease | None]:
    """A task's payload: in-band, or (large, for pools on the client's host) a reference into ``arena``.

    ``may_wait``: a full arena may make the caller wait for room (not on the client's I/O thread,
    the only one that frees room: a done-callback that submits must not wait for itself).
    """
    if arena is None:
        return pack_args(args, kwargs), None
    stream, buffers = pack_args_split(args, kwargs)
    if not buffers and len(stream) < shm.THRESHOLD:
        return stream, None  # small: in-band
    placed = arena.put([stream, *buffers], wait=shm.WAIT_SECONDS if may_wait else 0.0)
    if placed is not None:
        return placed
    # The arena stayed full: in-band, with the bytes inside the stream this time (a second pickling,
    # only after a wait for room, which is when time matters least).
    return (pack_args(args, kwargs) if buffers else stream), None


def _is_large_bytes(value: Any) -> bool:
    return type(value) is bytes and len(value) >= OUT_OF_BAND_MIN


def _name_unpicklable(args: tuple[Any, ...], kwargs: dict[str, Any], exc: Exception) -> str:
    """Find which argument will not pickle, so the message can name it."""
    named = [(f"positional argument {i}", a) for i, a in enumerate(args)]
    named += [(f"keyword argument {k!r}", v) for k, v in kwargs.items()]
    for where, value in named:
        try:
            cloudpickle.dumps(value, PROTOCOL)
        except Exception as inner:
            return (
                f"{where} ({type(value).__name__}) cannot be pickled: {type(inner).__name__}: "
                f"{inner}. Pass something picklable (e.g. a path instead of an open file)"
            )
    return f"the arguments cannot be pickled: {type(exc).__name__}: {exc}"


def unpack_args(
    blob: bytes | memoryview, buffers: list[memoryview] | None = None
) -> tuple[tuple[Any, ...], dict[str, Any]]:
    """``buffers``: the out-of-band buffers of a pack_args_split() stream."""
    try:
        args, kwargs = pickle.loads(blob, buffers=buffers)
    except ModuleNotFoundError as exc:
        raise DeserializationError(
            f"cannot load the task's arguments on the worker: no module named {exc.name!r}. "
            f"Install {exc.name!r} where the workers run",
            module=exc.name,
        ) from exc
    except Exception as exc:
        raise DeserializationError(
            f"cannot load the task's arguments on the worker ({type(exc).__name__}: {exc})"
        ) from exc
    return args, kwargs


# ---------------------------------------------------------------------------
# Results
# ---------------------------------------------------------------------------


def pack_result(value: Any) -> bytes:
    """Never raises: whatever pickling the value raises (even KeyboardInterrupt from a
    ``__reduce__``) becomes a SerializationError for this task alone."""
    try:
        return _OK + dumps(value)
    except BaseException as exc:
        err = SerializationError(
            f"the task's result ({type(value).__name__}) cannot be pickled: "
            f"{type(exc).__name__}: {_safe_str(exc)}. Return something picklable"
        )
        return pack_exception(err, "")


def pack_exception(exc: BaseException, tb: str | None = None) -> bytes:
    """Pickle an exception with its traceback text; never fails."""
    if tb is None:
        tb = format_traceback(exc)
    try:
        blob = dumps((exc, tb))
        pickle.loads(blob)  # some exceptions pickle but cannot be rebuilt: find out here
        return _RAISED + blob
    except BaseException:
        stand_in = RemoteError(
            f"{_type_name(exc)}: {_safe_str(exc)} (the exception could not be pickled, so this stands in for it)",
            exception_type=_type_name(exc),
        )
        return _RAISED + pickle.dumps((stand_in, tb), PROTOCOL)


def unpack_result(blob: bytes | memoryview) -> tuple[bool, Any]:
    """Return (True, value) or (False, exception with the remote traceback as __cause__)."""
    status = blob[0]
    try:
        value = pickle.loads(memoryview(blob)[1:])
    except BaseException as exc:  # SystemExit from a hostile __reduce__ too: it fails this future only
        return False, DeserializationError(
            f"the task's result could not be unpickled here ({type(exc).__name__}: {_safe_str(exc)}); "
            "is the module that defines it importable in the client?"
        )
    if status == RESULT_OK:
        return True, value
    error, tb = value
    if tb and isinstance(error, BaseException):
        # As concurrent.futures does: the worker's traceback shows as "the above was the cause".
        error.__cause__ = RemoteTraceback(tb)
    return False, error


def _describe(fn: Any) -> str:
    name = getattr(fn, "__qualname__", None) or repr(fn)
    module = getattr(fn, "__module__", None)
    return f"{module}.{name}" if module else str(name)
