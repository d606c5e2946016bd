"""Multi-frame messages over a stream socket: the links between the pool and each of its workers,
and between the executor and its interchange.

Why not ZeroMQ there: both ends are parent and child on one host, and a
ZeroMQ socket sends and receives through its I/O thread, which adds context
switches to every message.  One Python round trip over a Unix socketpair
costs ~36 us (p50) on a 2-core VM, ~150 us over ZeroMQ ipc, and every task
crosses both links there and back.  (The links to pools stay ZeroMQ.)

A stream has no message boundaries, so each message carries its own::

    u32 frame count n   u64 length of frame 0 .. n-1   frame 0 .. n-1     (little-endian)

The frames are the ones ``protocol`` makes (``Message.encode()``), so both
ends still speak the versioned protocol; this module only delimits them.

The worker's end is a plain blocking socket (it has nothing else to do while
it waits); the pool's end of each link, and both ends of the executor's, are a
``StreamLink``, read and written without ever blocking: the pool serves every
worker and the interchange from one thread, and a worker that stops reading
(SIGSTOP, swapped out) must hold up only its own batch.
"""

from __future__ import annotations

import socket
import struct
from collections.abc import Iterator, Sequence

import zmq

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
# The poll events as plain ints: each &, | or ~ on pyzmq's IntFlag members runs Python code that
# costs 5-15 us on a busy 2-core VM, and the pool, the interchange and the executor test them on
# every message.
POLLIN, POLLOUT = int(zmq.POLLIN), int(zmq.POLLOUT)


Frames = list[bytes | memoryview]  # one message, as it comes out of a Decoder


def _header(count: int) -> struct.Struct:
    """The header of a message of ``count`` frames (made once for each usual count)."""
    st = _HEADERS.get(count)
    if st is None:
        st = struct.Struct(f"<I{count}Q")
        if count <= 64:  # not one for each count a corrupt stream may announce
            _HEADERS[count] = st
    return st


_HEADERS: dict[int, struct.Struct] = {}


def pack(frames: Sequence[Blob]) -> list[bytes | memoryview]:
    """The buffers of one message: its header, then its frames as bytes or byte views (nothing is copied)."""
    bufs: list[bytes | memoryview] = [b""]
    sizes = []
    for f in frames:
        data = as_buffer(f)
        if type(data) is not bytes:  # a view, maybe of items wider than a byte: sizes and offsets count bytes
            data = memoryview(data).cast("B")
        bufs.append(data)
        sizes.append(len(data))
    bufs[0] = _header(len(sizes)).pack(len(sizes), *sizes)
    return bufs


def send_some(sock: socket.socket, bufs: list[bytes | memoryview], flags: int = 0) -> list[bytes | memoryview]:
    """Send the buffers, in sendmsg calls of up to _IOV_MAX; return what is left (empty: all sent).

    With ``socket.MSG_DONTWAIT`` it stops when the socket is full, and what is
    left is to be sent when the socket is writable again; without, it blocks
    until everything went.
    """
    bufs = list(bufs)
    while bufs:
        try:
            sent = sock.sendmsg(bufs[:_IOV_MAX] if len(bufs) > _IOV_MAX else bufs, [], flags)
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
        self._view = memoryview(self._buf)  # ours alone, made once a buffer (each read and message used two)
        self._start = 0  # first byte not yet parsed
        self._end = 0  # end of the bytes received
        self._need = 0  # size of the partial message at _start, once its header is in (0: not known yet)

    def read(self, sock: socket.socket, flags: int = 0) -> int:
        """One recv_into; the number of bytes read, 0 at end of stream.

        With ``socket.MSG_DONTWAIT`` it raises BlockingIOError when nothing is
        there, so a blocking socket can be read without blocking.
        """
        self._make_room()
        n = sock.recv_into(self._view[self._end :], 0, flags)
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
        lengths = _header(count).unpack_from(buf, start)[1:]
        total = head + sum(lengths)
        if total > MAX_MESSAGE_BYTES:
            raise ProtocolError(f"stream message header announces {total} bytes: the stream is corrupt")
        if avail < total:
            self._need = total
            return None
        self._need = 0
        self._start = start + total
        view = self._view
        at = start + head
        frames: list[bytes | memoryview] = []
        if total <= _INITIAL:  # copies: the buffer is reused
            for n in lengths:
                frames.append(bytes(view[at : at + n]))
                at += n
            return frames
        for n in lengths:
            frames.append(view[at : at + n])
            at += n
        # The frames keep this buffer: what was read after the message moves to a new one.
        rest = self._end - self._start
        self._buf = bytearray(max(_INITIAL, rest))
        self._buf[:rest] = view[self._start : self._end]
        self._view = memoryview(self._buf)
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
        old = self._view
        if size > len(self._buf):
            self._buf = bytearray(size)
            self._buf[:pending] = old[self._start : self._end]
            self._view = memoryview(self._buf)
        else:
            old[:pending] = old[self._start : self._end]  # overlapping: memoryview copies with memmove
        self._start, self._end = 0, pending


class StreamLink:
    """One end of a framed socketpair (the pool's to a worker, the executor's and the interchange's):
    reads cut into messages, and sends that never block.

    What the socket cannot take at once waits here (``outgoing``) and goes
    with ``flush()`` when the socket is writable again; the link keeps its
    registration with the pool's poller in step: POLLIN always, POLLOUT too
    while bytes wait, since a socket with room to write is writable nearly
    always and would wake the pool for nothing.  ``fd`` stays the key of the
    link after ``close()``: the pool looks links up by the fds its poller
    reports.  Not thread-safe: the executor's threads send under one lock.
    """

    def __init__(self, sock: socket.socket, poller: zmq.Poller) -> None:
        self.sock = sock
        self.fd = sock.fileno()
        self.decoder = Decoder()
        self.outgoing: list[bytes | memoryview] = []
        self.closed = False
        self._poller = poller
        self._events = POLLIN  # what the poller watches the socket for
        poller.register(self.fd, POLLIN)

    def read(self) -> list[Frames] | None:
        """One read that does not wait: the messages it completed ([] if none, or if nothing was there).

        None at the end of the stream (or a reset): the worker is gone or
        going.  A corrupt stream raises ProtocolError; it cannot be resynchronised.
        """
        n = self._recv()
        if n == 0:
            return None
        return self.decoder.messages() if n > 0 else []

    def drain(self) -> Iterator[Frames]:
        """Every message still in the socket, read to the end of the stream or until nothing more is there.

        For a worker that has died: what it sent before it died (results)
        still counts.  A generator, so that what came before a corrupt part
        is acted on before the ProtocolError.
        """
        while self._recv() > 0:
            yield from self.decoder.messages()

    def _recv(self) -> int:
        """Bytes read; 0 at the end of the stream (or a reset); -1 if nothing is there now."""
        if self.closed:
            return 0
        try:
            return self.decoder.read(self.sock, socket.MSG_DONTWAIT)
        except BlockingIOError:
            return -1
        except ConnectionResetError:
            return 0

    def send(self, frames: Sequence[Blob]) -> None:
        """Send one message without blocking; what the socket cannot take now goes with ``flush()``.

        Raises OSError (EPIPE, ECONNRESET) if the worker is gone.
        """
        waiting = bool(self.outgoing)
        self.outgoing += pack(frames)
        if not waiting:  # else it goes behind what waits, when the socket is writable
            self.flush()

    def send_now(self, frames: Sequence[Blob]) -> bool:
        """Send one message from a thread that does not own the poller: False if some of it
        waits in ``outgoing`` (the owner must then ``flush()``, which watches for room).

        Raises OSError (EPIPE, ECONNRESET) if the peer is gone.
        """
        if self.closed:
            return True
        if self.outgoing:
            self.outgoing += pack(frames)
            return False
        self.outgoing = send_some(self.sock, pack(frames), socket.MSG_DONTWAIT)
        return not self.outgoing

    def flush(self) -> None:
        """Send what waits, as much as the socket takes now; raises OSError if the worker is gone."""
        if self.closed:
            return
        self.outgoing = send_some(self.sock, self.outgoing, socket.MSG_DONTWAIT)
        want = POLLIN | POLLOUT if self.outgoing else POLLIN
        if want != self._events:
            self._poller.modify(self.fd, want)
            self._events = want

    def close(self) -> None:
        """Give the worker nothing more: forget what waits, leave the poller, close our end (idempotent)."""
        if self.closed:
            return
        self.closed = True
        self.outgoing = []
        self._poller.unregister(self.fd)  # before close: the fd number may be reused at once
        self.sock.close()


WorkerLink = StreamLink  # the pool's name for it
