"""The wire format: round trips, and garbage that must be refused with ProtocolError only."""

from __future__ import annotations

import random
import struct

import pytest
import zmq

from htex import protocol
from htex.errors import ProtocolError


def test_tasks_round_trip() -> None:
    msg = protocol.Tasks(protocol.u64_array([1, 2]), protocol.u64_array([7, 7]), [b"a", b"bb"], {7: b"fn"})
    back = protocol.decode(msg.encode())
    assert isinstance(back, protocol.Tasks)
    assert list(back.ids) == [1, 2] and list(back.fn_keys) == [7, 7]
    assert back.payloads == [b"a", b"bb"] and back.functions == {7: b"fn"}


def test_results_round_trip_with_zmq_frames() -> None:
    msg = protocol.Results(protocol.u64_array([5]), [b"r"])
    frames = [zmq.Frame(f) for f in msg.encode()]
    back = protocol.decode(frames)
    assert isinstance(back, protocol.Results)
    assert list(back.ids) == [5] and bytes(protocol.as_buffer(back.payloads[0])) == b"r"


def test_json_messages_round_trip() -> None:
    reg = protocol.Register(manager_id="m", block_id="0", hostname="h", pid=1, worker_count=2,
                            prefetch_capacity=0, htex_version="0.1.0", python_version="3.11.7")
    assert protocol.decode(reg.encode()) == reg
    cmd = protocol.Command(req=3, op="hold_worker", args=["m"])
    assert protocol.decode(cmd.encode()) == cmd


def test_big_blobs_travel_as_frames_of_their_own_and_small_ones_packed() -> None:
    big = b"B" * protocol.INLINE_MAX
    msg = protocol.Tasks(protocol.u64_array([1, 2, 3]), protocol.u64_array([7, 7, 7]), [b"a", big, b"c"], {7: big + b"F"})
    frames = msg.encode()
    assert len(frames) == 3  # the packed frame, then the function and the big payload, in that order
    assert frames[1] == big + b"F" and frames[2] is big
    back = protocol.decode([zmq.Frame(f) for f in frames])
    assert isinstance(back, protocol.Tasks)
    assert [bytes(protocol.as_buffer(p)) for p in back.payloads] == [b"a", big, b"c"]
    assert isinstance(back.payloads[1], zmq.Frame)  # forwarded as it came, never copied
    assert bytes(protocol.as_buffer(back.functions[7])) == big + b"F"


def test_functions_do_not_pin_the_frame_they_came_in() -> None:
    back = protocol.decode(protocol.Tasks(protocol.u64_array([1]), protocol.u64_array([7]), [b"p"], {7: b"fn"}).encode())
    assert isinstance(back, protocol.Tasks) and type(back.functions[7]) is bytes


def test_heartbeat_is_a_header_alone() -> None:
    frames = protocol.Heartbeat().encode()
    assert frames == [_hdr(11)]
    assert protocol.decode(frames) == protocol.Heartbeat()


def _hdr(msg_type: int, version: int = protocol.PROTOCOL_VERSION) -> bytes:
    return struct.pack("<2sBB", b"HX", version, msg_type)


_BIG = b"x" * protocol.INLINE_MAX


@pytest.mark.parametrize("frames", [
    [],
    [b""],
    [b"HX"],
    [b"XX\x02\x01"],
    [_hdr(1, version=9)],  # another protocol version
    [_hdr(0xFF)],  # unknown type
    [_hdr(1)],  # TASKS with no body
    [_hdr(1) + struct.pack("<II", 1, 0)],  # one task announced, nothing follows
    [_hdr(1) + struct.pack("<II", 2**31, 2**31)],  # absurd counts
    [_hdr(1) + struct.pack("<II", 1, 0) + struct.pack("<QQI", 1, 7, 5) + b"abc"],  # payload shorter than its size
    [_hdr(1) + struct.pack("<II", 1, 0) + struct.pack("<QQI", 1, 7, 1) + b"abc"],  # bytes left over
    [_hdr(1) + struct.pack("<II", 1, 0) + struct.pack("<QQI", 1, 7, protocol.EXTERNAL)],  # the big frame is missing
    [_hdr(1) + struct.pack("<II", 1, 0) + struct.pack("<QQI", 1, 7, 1) + b"a", _BIG],  # a frame nobody announced
    [_hdr(2) + struct.pack("<I", 2) + struct.pack("<QQII", 1, 2, 1, 1) + b"x"],  # two results, one payload
    [_hdr(11) + b"{}"],  # HEARTBEAT is a header alone
    [_hdr(25) + b"\x00" * 7],  # PROGRESS too short
    [_hdr(25) + b"\x00" * 8, b""],  # PROGRESS with a stray frame
    [_hdr(0x16) + b"not json"],
    [_hdr(0x16) + b"[1, 2]"],
    [_hdr(0x16) + b'{"manager_id": 5}'],
    [_hdr(0x16) + b"{}", b"{}"],  # control messages are one frame
    [_hdr(0x16) + b'{"manager_id": "m", "block_id": "0", "hostname": "h", "pid": "1", "worker_count": 2,'
                  b' "prefetch_capacity": 0, "htex_version": "x", "python_version": "y"}'],
])
def test_garbage_raises_protocol_error(frames: list[bytes]) -> None:
    with pytest.raises(ProtocolError):
        protocol.decode(frames)


def test_version_mismatch_message_names_both_versions() -> None:
    with pytest.raises(ProtocolError, match=rf"protocol version 9 from peer, this side speaks {protocol.PROTOCOL_VERSION}"):
        protocol.decode([_hdr(11, version=9) + b"{}"])


def test_random_bytes_never_raise_anything_but_protocol_error() -> None:
    rng = random.Random(1234)
    valid = protocol.Register(manager_id="m", block_id="0", hostname="h", pid=1, worker_count=2,
                              prefetch_capacity=0, htex_version="0.1.0", python_version="3.11.7").encode()
    for _ in range(5000):
        if rng.random() < 0.5:
            frames = [rng.randbytes(rng.randrange(0, 40)) for _ in range(rng.randrange(0, 5))]
        else:  # mutate a valid message
            frames = [bytearray(bytes(protocol.as_buffer(f))) for f in valid]
            f = rng.choice(frames)
            if f:
                f[rng.randrange(len(f))] = rng.randrange(256)
            frames = [bytes(x) for x in frames]
        try:
            protocol.decode(frames)
        except ProtocolError:
            pass
