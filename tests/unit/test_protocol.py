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


@pytest.mark.parametrize("frames", [
    [],
    [b""],
    [b"XX\x01\x01"],
    [b"HX\x09\x01"],  # another protocol version
    [b"HX\x01\xff"],  # unknown type
    [b"HX\x01\x01"],  # TASKS with no body
    [b"HX\x01\x01", b"\x00" * 7, b"", b""],  # ids not a multiple of 8
    [b"HX\x01\x01", b"\x00" * 8, b"", b""],  # one id, no function key, no payload
    [b"HX\x01\x02", b"\x00" * 16, b"x"],  # two ids, one payload
    [b"HX\x01\x16", b"not json"],
    [b"HX\x01\x16", b"[1, 2]"],
    [b"HX\x01\x16", b'{"manager_id": 5}'],
    [b"HX\x01\x16", b'{"manager_id": "m", "block_id": "0", "hostname": "h", "pid": "1", "worker_count": 2,'
                    b' "prefetch_capacity": 0, "htex_version": "x", "python_version": "y"}'],
])
def test_garbage_raises_protocol_error(frames: list[bytes]) -> None:
    with pytest.raises(ProtocolError):
        protocol.decode(frames)


def test_version_mismatch_message_names_both_versions() -> None:
    with pytest.raises(ProtocolError, match=r"protocol version 9 from peer, this side speaks 1"):
        protocol.decode([struct.pack("<2sBB", b"HX", 9, 11), b"{}"])


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
