"""Large task arguments through shared memory, for pools on the client's host.

Why: a 1 MB argument sent in-band is copied through three ZeroMQ hops (client,
interchange, pool, worker): about 3 ms of CPU per MB here.  Written once into
memory the worker can map, it costs one copy in the client and one unpickle in
the worker, and only a 64-byte reference crosses the wire.

How:

- The client keeps an :class:`Arena` of segments.  A segment is a Linux
  ``memfd`` (anonymous shared memory: nothing to clean up in /dev/shm, and the
  kernel frees it when the client exits, however it exits).  Allocation is a
  bump pointer; a segment whose payloads are all done starts again at 0.
- The arena is small (64 MB) and reused: faulting in fresh pages is what makes
  new memory slow (~0.4 ms per MB on this VM, more than the copy itself).  When
  it is full, submit() waits up to a second for a task to finish (back-pressure,
  as a pipe gives ProcessPoolExecutor), then sends in-band.  Segments idle for
  a while are closed, so an idle executor gives the memory back.
- The reference names the client's pid and the memfd's fd number; a worker
  opens ``/proc/<pid>/fd/<fd>`` (same user, same host), maps it read-only, and
  keeps the mapping for the next payload.  The segment's first 16 bytes are a
  random token, also in the reference, so a worker never reads a stranger's
  file (another host, another pid namespace, a reused fd number).
- A region is reused only after its task's result came back, i.e. after the
  worker read it.  When a task is lost (its pool vanished or hangs), the worker
  might still read later, so that segment is *retired*: never written again,
  closed when its last payload is done.

The reference blob cannot be mistaken for a pickle: pickles of protocol >= 2
start with 0x80, references with b"HXM".
"""

from __future__ import annotations

import mmap
import os
import struct
import sys
import threading
import time
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from .errors import DeserializationError

Buffer = Any  # bytes, memoryview, pickle.PickleBuffer: anything with the buffer protocol

MAGIC = b"HXM\x01"
_REF = struct.Struct("<4sIIQQ16s")  # magic, pid, fd, offset, size, token
_TOKEN = 16
_ALIGN = 64
THRESHOLD = 64 * 1024  # smaller arguments go in-band: a reference would save nothing
SEGMENT_BYTES = 4 * 1024 * 1024  # small, so one long task pins little; bigger payloads get a segment of their own
LIMIT_BYTES = 64 * 1024 * 1024
WAIT_SECONDS = 1.0  # a full arena makes submit() wait this long for room, then it sends in-band
IDLE_SECONDS = 10.0  # a segment unused this long is closed


def supported() -> bool:
    return sys.platform.startswith("linux") and hasattr(os, "memfd_create")


def is_reference(blob: bytes | memoryview) -> bool:
    return len(blob) == _REF.size and bytes(blob[:4]) == MAGIC


@dataclass(eq=False)
class _Segment:
    fd: int
    size: int
    token: bytes
    view: mmap.mmap
    used: int = _TOKEN
    live: int = 0
    retired: bool = False  # a lost task may still read it: never write here again
    last_used: float = 0.0


@dataclass(eq=False)
class Lease:
    segment: _Segment


class Arena:
    """Client side: copies payloads into shared memory and hands out references.  Thread-safe."""

    def __init__(self, segment_bytes: int = SEGMENT_BYTES, limit_bytes: int = LIMIT_BYTES) -> None:
        self.segment_bytes = segment_bytes
        self.limit_bytes = limit_bytes
        self._lock = threading.Lock()
        self._room = threading.Condition(self._lock)
        self._current: _Segment | None = None
        self._segments: list[_Segment] = []
        self._closed = False
        self.waiting = 0  # submit() calls waiting for room now (for tests and stats)

    def put(self, parts: Sequence[Buffer], wait: float = 0.0) -> tuple[bytes, Lease] | None:
        """Copy ``parts`` (a pickle stream, then its out-of-band buffers) into shared memory.

        Returns (reference, lease), or None to send in-band.  ``wait``: seconds
        to wait for room when the arena is full.  The region holds a header
        (number of parts, their sizes), then each part, 64-byte aligned.
        """
        views = [memoryview(p).cast("B") for p in parts]
        header = struct.pack(f"<I{len(views)}Q", len(views), *(v.nbytes for v in views))
        sizes = [len(header)] + [v.nbytes for v in views]
        need = sum(_aligned(n) for n in sizes)
        deadline = time.monotonic() + wait
        with self._lock:
            while True:
                if self._closed:
                    return None
                seg = self._segment_for(need)
                if seg is not None:
                    break
                left = deadline - time.monotonic()
                if left <= 0 or not any(s.live for s in self._segments):
                    return None
                self.waiting += 1
                try:
                    self._room.wait(left)
                finally:
                    self.waiting -= 1
            offset = seg.used
            seg.used += need
            seg.live += 1
            seg.last_used = time.monotonic()
        # Outside the lock: the region is ours alone.
        at = offset
        try:
            for part, size in zip([memoryview(header), *views], sizes, strict=True):
                seg.view[at : at + size] = part
                at += _aligned(size)
        except ValueError:  # close() ran meanwhile (a shutdown racing a submit): in-band, then
            return None
        return _REF.pack(MAGIC, os.getpid(), seg.fd, offset, need, seg.token), Lease(seg)

    def release(self, lease: Lease, lost: bool = False) -> None:
        """The task is done with its payload.  ``lost``: a worker may still read it (see the module doc)."""
        seg = lease.segment
        with self._lock:
            seg.live -= 1
            if lost:
                seg.retired = True
            if seg.live > 0:
                return
            if seg.retired or seg.size != self.segment_bytes:
                self._drop(seg)  # oversized segments are one-offs
            else:
                seg.used = _TOKEN  # start again at the front; its pages are warm
            self._room.notify_all()

    def trim(self, idle: float | None = None) -> None:
        """Close segments unused for ``idle`` seconds (default IDLE_SECONDS); the executor's I/O thread calls this."""
        cutoff = time.monotonic() - (IDLE_SECONDS if idle is None else idle)
        with self._lock:
            for seg in [s for s in self._segments if s.live == 0 and s.last_used < cutoff]:
                self._drop(seg)

    def close(self) -> None:
        with self._lock:
            self._closed = True
            for seg in list(self._segments):
                self._drop(seg)
            self._current = None
            self._room.notify_all()

    @property
    def in_use(self) -> int:
        """Segments open (for tests and stats)."""
        return len(self._segments)

    def _segment_for(self, need: int) -> _Segment | None:
        cur = self._current
        if cur is not None and not cur.retired and cur.used + need <= cur.size:
            return cur
        if need > self.segment_bytes - _TOKEN:
            # A one-off segment for one big payload, outside the limit: in-band, the interchange
            # would hold a copy of it just the same.  Its pages are fresh, but it is big anyway.
            return self._new(need + _TOKEN)
        for seg in self._segments:
            if seg.live == 0 and not seg.retired and seg.size == self.segment_bytes:
                seg.used = _TOKEN
                self._current = seg
                return seg
        if sum(s.size for s in self._segments if s.size == self.segment_bytes) + self.segment_bytes > self.limit_bytes:
            return None
        new = self._new(self.segment_bytes)
        if new is not None:
            self._current = new
        return new

    def _new(self, size: int) -> _Segment | None:
        fd = os.memfd_create("htex-args", os.MFD_CLOEXEC)
        try:
            os.ftruncate(fd, size)
            view = mmap.mmap(fd, size)
        except OSError:
            os.close(fd)
            return None  # out of memory or fds: in-band still works
        token = os.urandom(_TOKEN)
        view[:_TOKEN] = token
        seg = _Segment(fd, size, token, view)
        self._segments.append(seg)
        return seg

    def _drop(self, seg: _Segment) -> None:
        self._segments.remove(seg)
        if self._current is seg:
            self._current = None
        seg.view.close()
        os.close(seg.fd)


class Reader:
    """Worker side: turns references into memoryviews of the client's segments, keeping recent mappings."""

    def __init__(self, keep: int = 32) -> None:
        self.keep = keep
        self._maps: OrderedDict[tuple[int, int, bytes], mmap.mmap] = OrderedDict()

    def resolve(self, blob: bytes | memoryview) -> tuple[bytes | memoryview, list[memoryview] | None]:
        """(pickle stream, out-of-band buffers): ``blob`` itself if it is in-band, else views of shared memory."""
        if not is_reference(blob):
            return blob, None
        _, pid, fd, offset, size, token = _REF.unpack(blob)
        seg = memoryview(self._map(pid, fd, token))
        if offset + size > len(seg):
            raise DeserializationError(f"a shared-memory reference points past its segment ({offset}+{size} > {len(seg)})")
        region = seg[offset : offset + size]
        (count,) = struct.unpack_from("<I", region)
        sizes = struct.unpack_from(f"<{count}Q", region, 4)
        at = _aligned(4 + 8 * count)
        parts = []
        for n in sizes:
            parts.append(region[at : at + n])
            at += _aligned(n)
        return parts[0], parts[1:]

    def _map(self, pid: int, fd: int, token: bytes) -> mmap.mmap:
        key = (pid, fd, token)
        view = self._maps.get(key)
        if view is not None:
            self._maps.move_to_end(key)
            return view
        path = f"/proc/{pid}/fd/{fd}"
        try:
            f = os.open(path, os.O_RDONLY)
        except OSError as exc:
            raise DeserializationError(_cannot_read(path, exc)) from exc
        try:
            view = mmap.mmap(f, 0, prot=mmap.PROT_READ)
        except (OSError, ValueError) as exc:
            raise DeserializationError(_cannot_read(path, exc)) from exc
        finally:
            os.close(f)
        if view[:_TOKEN] != token:
            view.close()
            raise DeserializationError(_cannot_read(path, "it is not the client's segment (wrong token)"))
        self._maps[key] = view
        while len(self._maps) > self.keep:
            _, old = self._maps.popitem(last=False)
            try:
                old.close()
            except BufferError:
                pass  # still viewed by a running task; the mapping goes when that view does
        return view


def _aligned(n: int) -> int:
    return -(-n // _ALIGN) * _ALIGN


def _cannot_read(path: str, why: object) -> str:
    return (
        f"the task's arguments are in the client's shared memory ({path}), which this worker cannot read: {why}. "
        "This happens when workers run on another host or as another user than the client: "
        "pass shared_memory=False to the HighThroughputExecutor"
    )
