"""Multi-frame messages over a stream socket: the link between the pool and each of its workers.

Why not ZeroMQ there: the pool and a worker are parent and child on one host,
and a ZeroMQ socket sends and receives through its I/O thread, which adds
context switches to every message.  One Python round trip over a Unix
socketpair costs ~36 us (p50) on a 2-core VM, ~150 us over ZeroMQ ipc, and
every task crosses this link there and back.  (Every other hop stays ZeroMQ.)

A stream has no message boundaries, so each message carries its own::

    u32 frame count n   u64 length of frame 0 .. n-1   frame 0 .. n-1     (little-endian)

The frames are the ones ``protocol`` makes (``Message.encode()``), so both
ends still speak the versioned protocol; this module only delimits them.
"""

from __future__ import annotations

import socket
import struct
from collections.abc import Sequence

from .errors import ProtocolError
from .protocol import Blob, as_buffer

_COUNT = struct.Struct("<I")
_LENGTH = 8
# Sanity bounds for a header read from the stream: a corrupt or desynchronised
# stream shows up as an absurd count or length, refused with ProtocolError.
# Real messages are far below both (a batch is at most a few dozen frames).
MAX_FRAMES = 1 << 16
MAX_MESSAGE_BYTES = 1 << 40
# Linux's UIO_MAXIOV: sendmsg() refuses more buffers than this in one call.
_IOV_MAX = 1024
# The receive buffer: small messages are parsed out of it and copied (it is reused at once);
# a bigger one is read into a buffer of its own, whose frames are then handed out without a copy.
_INITIAL = 64 * 1024
# How far a buffer may grow ahead of the bytes received, on the word of a header alone.
_AHEAD = 64 * 1024 * 1024


def pack(frames: Sequence[Blob]) -> list[bytes | memoryview]:
    """The buffers of one message: its header, then views of its frames (nothing is copied)."""
    views = [memoryview(as_buffer(f)).cast("B") for f in frames]
    return [struct.pack(f"<I{len(views)}Q", len(views), *(len(v) for v in views)), *views]


def send_some(sock: socket.socket, bufs: list[bytes | memoryview], flags: int = 0) -> list[bytes | memoryview]:
    """Send the buffers, in sendmsg calls of up to _IOV_MAX; return what is left (empty: all sent).

    With ``socket.MSG_DONTWAIT`` it stops when the socket is full, and what is
    left is to be sent when the socket is writable again; without, it blocks
    until everything went.
    """
    bufs = list(bufs)
    while bufs:
        try:
            sent = sock.sendmsg(bufs[:_IOV_MAX], [], flags)
        except BlockingIOError:
            return bufs
        # A large message may go in several calls: drop what went, resume mid-buffer.
        done = 0
        while done < len(bufs) and sent >= len(bufs[done]):
            sent -= len(bufs[done])
            done += 1
        del bufs[:done]
        if sent:
            bufs[0] = memoryview(bufs[0])[sent:]
    return bufs


def send(sock: socket.socket, frames: Sequence[Blob]) -> None:
    """Send one message on a blocking socket: the header and the frames in one sendmsg (no join copy)."""
    send_some(sock, pack(frames))


class Decoder:
    """Cuts the bytes read from a stream socket into messages, keeping a partial one until the rest arrives.

    ``read()`` receives straight into the buffer (one recv_into); ``messages()``
    returns each complete message as a list of frames.  A message of up to
    64 KiB comes out as ``bytes`` copies, as the buffer is reused at once; a
    bigger one got a buffer of its own, and comes out as memoryviews of it,
    never written again.  Either way the frames stay valid as long as they
    are referenced (worker.run_one and shm.Reader.resolve hold them).
    """

    def __init__(self) -> None:
        self._buf = bytearray(_INITIAL)
        self._start = 0  # first byte not yet parsed
        self._end = 0  # end of the bytes received
        self._need = 0  # size of the partial message at _start, once its header is in (0: not known yet)

    def read(self, sock: socket.socket, flags: int = 0) -> int:
        """One recv_into; the number of bytes read, 0 at end of stream.

        With ``socket.MSG_DONTWAIT`` it raises BlockingIOError when nothing is
        there, so a blocking socket can be read without blocking.
        """
        self._make_room()
        n = sock.recv_into(memoryview(self._buf)[self._end :], 0, flags)
        self._end += n
        return n

    def messages(self) -> list[list[bytes | memoryview]]:
        """Every complete message received so far, in order; raises ProtocolError for a corrupt header."""
        out = []
        while (msg := self._next()) is not None:
            out.append(msg)
        if self._start == self._end:
            self._start = self._end = 0
        return out

    def pending(self) -> int:
        """Bytes received that are not part of a complete message yet."""
        return self._end - self._start

    def _next(self) -> list[bytes | memoryview] | None:
        buf, start = self._buf, self._start
        avail = self._end - start
        if avail < _COUNT.size:
            return None
        (count,) = _COUNT.unpack_from(buf, start)
        if not 0 < count <= MAX_FRAMES:
            raise ProtocolError(f"stream message header announces {count} frames: the stream is corrupt")
        head = _COUNT.size + _LENGTH * count
        if avail < head:
            return None
        lengths = struct.unpack_from(f"<{count}Q", buf, start + _COUNT.size)
        total = head + sum(lengths)
        if total > MAX_MESSAGE_BYTES:
            raise ProtocolError(f"stream message header announces {total} bytes: the stream is corrupt")
        if avail < total:
            self._need = total
            return None
        self._need = 0
        self._start = start + total
        view = memoryview(buf)
        at = start + head
        frames: list[bytes | memoryview] = []
        if total <= _INITIAL:
            for n in lengths:
                frames.append(bytes(view[at : at + n]))
                at += n
            view.release()  # the buffer is reused: nothing may keep a view of it
            return frames
        for n in lengths:
            frames.append(view[at : at + n])
            at += n
        # The frames keep this buffer: what was read after the message moves to a new one.
        rest = self._end - self._start
        self._buf = bytearray(max(_INITIAL, rest))
        self._buf[:rest] = view[self._start : self._end]
        self._start, self._end = 0, rest
        return frames

    def _make_room(self) -> None:
        """Make sure there is free space after the bytes received: move the partial message to the front, or grow."""
        if self._end < len(self._buf):
            return
        pending = self._end - self._start
        # The whole message if its header gave its size, else twice what is there; never
        # much more than has arrived, so even a lying header cannot make us allocate much.
        size = max(_INITIAL, min(self._need if self._need > pending else 2 * pending, pending + _AHEAD))
        with memoryview(self._buf) as old:
            if size > len(self._buf):
                self._buf = bytearray(size)
                self._buf[:pending] = old[self._start : self._end]
            else:
                old[:pending] = old[self._start : self._end]  # overlapping: memoryview copies with memmove
        self._start, self._end = 0, pending
