"""The pool <-> worker stream framing (src/htex/framing.py): boundaries survive any way the bytes arrive."""

from __future__ import annotations

import os
import socket
import struct
import threading
from collections.abc import Iterator

import pytest
import zmq

from htex import framing, protocol
from htex.errors import ProtocolError

pytestmark = pytest.mark.timeout(20)  # a decoder that loses its place waits for bytes that never come

MB = 1024 * 1024


@pytest.fixture
def pair() -> Iterator[tuple[socket.socket, socket.socket]]:
    a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    yield a, b
    a.close()
    b.close()


def _wire(frames: list[bytes]) -> bytes:
    """The stream format, written out independently of framing.send: u32 count, u64 lengths, frames."""
    return struct.pack(f"<I{len(frames)}Q", len(frames), *map(len, frames)) + b"".join(frames)


def _read_one(dec: framing.Decoder, sock: socket.socket) -> list[bytes]:
    """Read until one message is complete (blocking reads)."""
    while not (msgs := dec.messages()):
        assert dec.read(sock) > 0, "end of stream before a whole message"
    assert len(msgs) == 1
    return msgs[0]


def test_a_protocol_message_round_trips(pair: tuple[socket.socket, socket.socket]) -> None:
    a, b = pair
    msg = protocol.Tasks(protocol.u64_array([1, 2]), protocol.u64_array([7, 7]), [b"a", zmq.Frame(b"bb")], {7: b"fn"})
    framing.send(a, msg.encode())
    back = protocol.decode(_read_one(framing.Decoder(), b))
    assert isinstance(back, protocol.Tasks)
    assert list(back.ids) == [1, 2] and back.payloads == [b"a", b"bb"] and back.functions == {7: b"fn"}


def test_send_writes_count_lengths_then_frames(pair: tuple[socket.socket, socket.socket]) -> None:
    a, b = pair
    framing.send(a, [b"ab", b"", memoryview(b"cde")])
    a.shutdown(socket.SHUT_WR)
    assert b"".join(iter(lambda: b.recv(1 << 16), b"")) == struct.pack("<I3Q", 3, 2, 0, 3) + b"abcde"


def test_one_byte_at_a_time(pair: tuple[socket.socket, socket.socket]) -> None:
    a, b = pair
    frames = [b"HX\x01\x02", b"\x05" * 8, b"result", b""]
    wire = _wire(frames)
    dec = framing.Decoder()
    for i, byte in enumerate(wire):
        a.sendall(bytes([byte]))
        assert dec.read(b) == 1
        got = dec.messages()
        if i < len(wire) - 1:
            assert got == [], f"a message came out after {i + 1} of {len(wire)} bytes"
    assert got == [frames]
    assert dec.pending() == 0


def test_several_messages_in_one_read(pair: tuple[socket.socket, socket.socket]) -> None:
    a, b = pair
    sent = [[b"one"], [b"two", b"2"], [b"", b"three", b"33", b"333"]]
    a.sendall(b"".join(_wire(f) for f in sent) + _wire([b"fourth, cut short"])[:-3])
    dec = framing.Decoder()
    assert dec.read(b) > 0  # everything sent is in the socket: one recv takes it all
    assert dec.messages() == sent
    assert dec.pending() > 0  # the fourth waits for its last bytes
    a.sendall(_wire([b"fourth, cut short"])[-3:])
    assert _read_one(dec, b) == [b"fourth, cut short"]


def test_2mb_frames_arrive_whole(pair: tuple[socket.socket, socket.socket]) -> None:
    """Bigger than the socket's buffer and the decoder's: read in many pieces into a buffer of their own."""
    a, b = pair
    big = os.urandom(2 * MB)
    stream = _wire([b"small"]) + _wire([b"head", big, b"tail"])
    # Sent before anyone reads (it fits in the socket's buffer), so the first read fills the decoder's
    # 64 KiB with a whole message and the start of the next: the partial one must move to the front.
    a.sendall(stream[:70_000])

    def rest() -> None:
        a.sendall(stream[70_000:])
        framing.send(a, [big[::-1]])  # a blocking sendmsg of more than the socket holds

    sender = threading.Thread(target=rest)
    sender.start()
    dec = framing.Decoder()
    got: list[list[bytes]] = []
    while len(got) < 3:
        assert dec.read(b) > 0
        got += dec.messages()
    sender.join()
    assert [[len(f) for f in m] for m in got] == [[5], [4, 2 * MB, 4], [2 * MB]]
    assert got == [[b"small"], [b"head", big, b"tail"], [big[::-1]]]
    assert dec.pending() == 0 and len(dec._buf) < MB  # the big ones took their buffers with them
    framing.send(a, [b"after"])  # and the decoder is still in step with the stream
    assert _read_one(dec, b) == [b"after"]


def test_a_message_cut_by_the_end_of_the_buffer(pair: tuple[socket.socket, socket.socket]) -> None:
    """1,000 messages of 112 bytes: 64 KiB (the decoder's buffer) ends inside one, which must move to the front."""
    a, b = pair
    sent = [[b"%03d" % i + bytes(97)] for i in range(1000)]
    a.sendall(b"".join(_wire(m) for m in sent))  # 112 KB: fits in the socket's buffer before anyone reads
    dec = framing.Decoder()
    got: list[list[bytes | memoryview]] = []
    while len(got) < len(sent):
        assert dec.read(b) > 0
        got += dec.messages()
    assert got == sent


def test_a_header_bigger_than_the_buffer_and_what_follows(pair: tuple[socket.socket, socket.socket]) -> None:
    """10,000 frames: an 80 KB header; the read that completes the message also brings the next one."""
    a, b = pair
    many = [b"%d" % (i % 10) for i in range(10_000)]
    a.sendall(_wire(many) + _wire([b"next"]))
    dec = framing.Decoder()
    got: list[list[bytes | memoryview]] = []
    while len(got) < 2:
        assert dec.read(b) > 0
        got += dec.messages()
    assert got == [many, [b"next"]]


def test_partial_sends_resume_where_they_stopped() -> None:
    """sendmsg may take only part of what it is given; more than IOV_MAX frames need several calls."""

    class Trickle:
        def __init__(self) -> None:
            self.data = bytearray()
            self.calls = 0

        def sendmsg(self, bufs: list[bytes | memoryview], ancdata: object = (), flags: int = 0) -> int:
            assert len(bufs) <= 1024
            self.calls += 1
            took = bytes(b"".join(bytes(x) for x in bufs)[:1000])  # at most 1000 bytes a call
            self.data += took
            return len(took)

    frames = [b"%d" % i for i in range(3000)] + [os.urandom(5000)]
    sock = Trickle()
    framing.send(sock, frames)  # type: ignore[arg-type]
    assert sock.calls > 1
    assert bytes(sock.data) == _wire(frames)


def test_a_full_socket_leaves_the_rest_for_later(pair: tuple[socket.socket, socket.socket]) -> None:
    """send_some with MSG_DONTWAIT returns what the socket would not take; sent later, the message is whole."""
    a, b = pair
    frames = [b"head", os.urandom(3 << 20), b"tail"]  # far more than a socketpair buffers
    left = framing.send_some(a, framing.pack(frames), socket.MSG_DONTWAIT)
    assert left  # nobody reads b yet: it did not all go, and it did not block
    dec = framing.Decoder()
    got: list[list[bytes | memoryview]] = []
    while not got:
        if left:
            left = framing.send_some(a, left, socket.MSG_DONTWAIT)
        try:
            dec.read(b, socket.MSG_DONTWAIT)
        except BlockingIOError:
            pass
        got = dec.messages()
    assert [bytes(f) for f in got[0]] == frames and not left


def test_end_of_stream_reads_zero(pair: tuple[socket.socket, socket.socket]) -> None:
    a, b = pair
    a.close()
    dec = framing.Decoder()
    assert dec.read(b) == 0 and dec.messages() == []


def test_nothing_to_read_without_waiting(pair: tuple[socket.socket, socket.socket]) -> None:
    _, b = pair
    with pytest.raises(BlockingIOError):
        framing.Decoder().read(b, socket.MSG_DONTWAIT)


@pytest.mark.parametrize("header", [
    struct.pack("<I", 0),  # no frames
    struct.pack("<I", framing.MAX_FRAMES + 1),
    struct.pack("<I", 0xFFFFFFFF),
    struct.pack("<IQ", 1, framing.MAX_MESSAGE_BYTES),  # header + this frame exceed the bound
    struct.pack("<I2Q", 2, 2**63, 2**63),
    b"HX\x01\x02",  # a protocol frame without the stream header: read as 0x01015848 frames
])
def test_a_corrupt_header_raises_protocol_error(pair: tuple[socket.socket, socket.socket], header: bytes) -> None:
    a, b = pair
    a.sendall(header)
    dec = framing.Decoder()
    assert dec.read(b) == len(header)
    with pytest.raises(ProtocolError, match="corrupt"):
        dec.messages()


# -- WorkerLink: the pool's end of a worker's socketpair -----------------------------------------------


@pytest.fixture
def link() -> Iterator[tuple[framing.WorkerLink, socket.socket, zmq.Poller]]:
    """A WorkerLink on one end of a real socketpair (the pool's), the other end plain (the worker's)."""
    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    poller = zmq.Poller()
    wl = framing.WorkerLink(ours, poller)
    yield wl, theirs, poller
    wl.close()
    theirs.close()


def _polled(poller: zmq.Poller, fd: int) -> int:
    """The events the poller watches ``fd`` for (0: not registered)."""
    return dict(poller.sockets).get(fd, 0)


def test_link_reads_messages_and_nothing_without_waiting(link: tuple[framing.WorkerLink, socket.socket, zmq.Poller]) -> None:
    wl, theirs, poller = link
    assert _polled(poller, wl.fd) == zmq.POLLIN
    assert wl.read() == []  # nothing there: no wait, no message
    theirs.sendall(_wire([b"one"]) + _wire([b"two", b"2"]) + _wire([b"three"])[:-2])
    assert wl.read() == [[b"one"], [b"two", b"2"]]  # the third is not whole yet
    theirs.sendall(_wire([b"three"])[-2:])
    assert wl.read() == [[b"three"]]


def test_link_end_of_stream_and_what_came_before_it(link: tuple[framing.WorkerLink, socket.socket, zmq.Poller]) -> None:
    """A worker that dies: drain() gives every message it sent first, then the stream ends (read: None)."""
    wl, theirs, _ = link
    sent = [[b"%d" % i, bytes(100)] for i in range(1000)]  # 118 KB: more than one read (64 KiB) takes
    theirs.sendall(b"".join(_wire(m) for m in sent))  # in one go: fits in the socket's buffer before anyone reads
    theirs.close()
    assert list(wl.drain()) == sent
    assert wl.read() is None


def test_link_drain_stops_when_nothing_more_is_there(link: tuple[framing.WorkerLink, socket.socket, zmq.Poller]) -> None:
    """The other end may still be open (a process a task forked holds it): drain() must not wait for its end."""
    wl, theirs, _ = link
    framing.send(theirs, [b"last words"])
    assert list(wl.drain()) == [[b"last words"]]
    assert list(wl.drain()) == []


def test_link_garbage_raises_protocol_error(link: tuple[framing.WorkerLink, socket.socket, zmq.Poller]) -> None:
    wl, theirs, _ = link
    theirs.sendall(struct.pack("<I", 0))
    with pytest.raises(ProtocolError, match="corrupt"):
        wl.read()


def test_link_send_waits_for_a_full_socket_and_keeps_the_order(
    link: tuple[framing.WorkerLink, socket.socket, zmq.Poller],
) -> None:
    """A worker that does not read: send() never blocks, the rest goes on flush() when the socket is writable;
    the poller watches for POLLOUT only while something waits."""
    wl, theirs, poller = link
    first, second = [b"head", os.urandom(3 << 20)], [b"second"]
    wl.send(first)  # far more than a socketpair buffers, and nobody reads yet
    assert wl.outgoing and _polled(poller, wl.fd) == zmq.POLLIN | zmq.POLLOUT
    wl.send(second)  # behind what waits: the stream stays in order
    dec = framing.Decoder()
    theirs.setblocking(False)
    got: list[list[bytes | memoryview]] = []
    while len(got) < 2:
        events = dict(poller.poll(1000))
        if events.get(wl.fd, 0) & zmq.POLLOUT:
            wl.flush()
        try:
            dec.read(theirs)
        except BlockingIOError:
            pass
        got += dec.messages()
    assert [[bytes(f) for f in m] for m in got] == [first, second]
    assert wl.outgoing == [] and _polled(poller, wl.fd) == zmq.POLLIN


def test_link_send_to_a_dead_worker_raises(link: tuple[framing.WorkerLink, socket.socket, zmq.Poller]) -> None:
    wl, theirs, _ = link
    theirs.close()
    with pytest.raises(OSError):
        wl.send([b"too late"])


def test_link_close_leaves_the_poller_and_is_idempotent(link: tuple[framing.WorkerLink, socket.socket, zmq.Poller]) -> None:
    wl, _, poller = link
    wl.send([b"x" * (4 << 20)])  # something waits: close() forgets it
    fd = wl.fd
    wl.close()
    wl.close()
    assert wl.closed and wl.outgoing == [] and wl.fd == fd  # the fd stays the link's key
    assert _polled(poller, fd) == 0
    assert wl.read() is None and list(wl.drain()) == []
    wl.flush()  # nothing to do, and no error
