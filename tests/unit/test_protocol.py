"""The wire format: round trips, and garbage that must be refused with ProtocolError only."""

from __future__ import annotations

import dataclasses
import json
import math
import random
import struct
from array import array
from typing import Any

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
    assert back.priorities is None  # none sent: the common case carries no array at all


def test_tasks_ahead_come_back_as_tasks_ahead() -> None:
    """A worker claims every task of a TasksAhead before it starts it: decoded as plain Tasks, the first
    would start unclaimed, and a take-back of it would go unseen (the task would run twice)."""
    msg = protocol.TasksAhead(protocol.u64_array([5]), protocol.u64_array([7]), [b"a"], {})
    back = protocol.decode(msg.encode())
    assert type(back) is protocol.TasksAhead and list(back.ids) == [5] and bytes(back.payloads[0]) == b"a"
    plain = protocol.decode(protocol.Tasks(msg.ids, msg.fn_keys, msg.payloads).encode())
    assert type(plain) is protocol.Tasks


def test_tasks_round_trip_with_priorities() -> None:
    ranks = array("d", [3.0, protocol.NO_PRIORITY, -1.5, math.inf])
    msg = protocol.Tasks(protocol.u64_array([1, 2, 3, 4]), protocol.u64_array([7] * 4), [b"a", b"b", b"c", b"d"],
                         {7: b"fn"}, ranks)
    back = protocol.decode(msg.encode())
    assert isinstance(back, protocol.Tasks) and back.priorities is not None
    assert list(back.ids) == [1, 2, 3, 4] and back.payloads == [b"a", b"b", b"c", b"d"]
    got = list(back.priorities)
    assert got[0] == 3.0 and math.isnan(got[1]) and got[2:] == [-1.5, math.inf]
    # Without priorities the message is 4 bytes longer than version 4's, not 8 per task.
    plain = protocol.Tasks(msg.ids, msg.fn_keys, msg.payloads, msg.functions).encode()
    assert len(msg.encode()[0]) - len(plain[0]) == 8 * 4


def test_tasks_encode_refuses_priorities_that_do_not_match() -> None:
    with pytest.raises(ValueError, match="priorities"):
        protocol.Tasks(protocol.u64_array([1, 2]), protocol.u64_array([7, 7]), [b"a", b"b"], {},
                       array("d", [1.0])).encode()
    with pytest.raises(ValueError, match="priorities"):
        protocol.Tasks(protocol.u64_array([1]), protocol.u64_array([7]), [b"a"], {}, array("q", [1])).encode()


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
    cmd = protocol.HoldPools(req=3, managers=["m"])
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
    [_hdr(1) + struct.pack("<III", 1, 0, 0)],  # one task announced, nothing follows
    [_hdr(1) + struct.pack("<III", 2**31, 2**31, 0)],  # absurd counts
    [_hdr(1) + struct.pack("<III", 1, 0, 0) + struct.pack("<QQI", 1, 7, 5) + b"abc"],  # payload shorter than its size
    [_hdr(1) + struct.pack("<III", 1, 0, 0) + struct.pack("<QQI", 1, 7, 1) + b"abc"],  # bytes left over
    [_hdr(1) + struct.pack("<III", 1, 0, 0) + struct.pack("<QQI", 1, 7, protocol.EXTERNAL)],  # the big frame is missing
    [_hdr(1) + struct.pack("<III", 1, 0, 0) + struct.pack("<QQI", 1, 7, 1) + b"a", _BIG],  # a frame nobody announced
    [_hdr(1) + struct.pack("<II", 1, 0) + struct.pack("<QQI", 1, 7, 1) + b"a"],  # version 4's layout (no p)
    [_hdr(1) + struct.pack("<III", 2, 0, 1) + struct.pack("<QQQQdII", 1, 2, 7, 7, 1.0, 1, 1) + b"ab"],  # 1 priority, 2 tasks
    [_hdr(1) + struct.pack("<III", 1, 0, 2) + struct.pack("<QQddI", 1, 7, 1.0, 2.0, 1) + b"a"],  # 2 priorities, 1 task
    [_hdr(1) + struct.pack("<III", 1, 0, 2**31) + struct.pack("<QQdI", 1, 7, 1.0, 1) + b"a"],  # absurd priority count
    [_hdr(1) + struct.pack("<III", 1, 0, 1) + struct.pack("<QQd", 1, 7, 1.0)],  # priorities, then truncated
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


def test_mutated_tasks_with_priorities_decode_whole_or_raise_protocol_error() -> None:
    rng = random.Random(15)
    valid = protocol.Tasks(protocol.u64_array([1, 2, 3]), protocol.u64_array([7, 7, 7]), [b"a", b"bb", b"c"],
                           {7: b"fn"}, array("d", [2.0, protocol.NO_PRIORITY, -3.0])).encode()[0]
    for _ in range(3000):
        frame = bytearray(valid)
        for _ in range(rng.randrange(1, 4)):
            frame[rng.randrange(4, len(frame))] = rng.randrange(256)  # the header intact: reach the body's checks
        if rng.random() < 0.2:
            frame = frame[: rng.randrange(4, len(frame))]
        try:
            msg = protocol.decode([bytes(frame)])
        except ProtocolError:
            continue
        assert isinstance(msg, protocol.Tasks)
        assert len(msg.fn_keys) == len(msg.payloads) == len(msg.ids)
        assert msg.priorities is None or len(msg.priorities) == len(msg.ids)


# -- the typed control plane: every JSON message, nested types, hostile values ---------------------

_POOL = protocol.PoolInfo(
    manager="m1", block_id="0", hostname="h", pid=7, worker_count=2, prefetch_capacity=1, tasks=1, active=True,
    idle_duration=0.0, last_heartbeat=1.5, python_version="3.11.7", version="0.1.0",
)
_STATS = protocol.Stats(received=10, dispatched=9, done=8, raised=1, lost=1, functions_sent=2, queued=1, pools=1,
                        workers=2, running=1, dropped=0, uptime=12.5)
_SAMPLES: list[Any] = [
    protocol.Ready(task_port=1, result_port=2, pid=3),
    protocol.Shutdown(reason="bye"),
    protocol.StatusRequest(req=4),
    protocol.StatusReply(req=4, stats=_STATS, pools=[_POOL, dataclasses.replace(_POOL, manager="m2", active=False)]),
    protocol.HoldPools(req=5, managers=["m1", "m2"]),
    protocol.DropBlocks(req=6, blocks=["0"], reason="its job ended", released=False),
    protocol.Done(req=6, count=2),
    protocol.Failed(req=7, reason="KeyError: 'x'"),
    protocol.TasksFailed(ids=[1, 2**63], error=protocol.LostReason.MANAGER_LOST, message="lost"),
    protocol.PoolRegistered(pool=_POOL),
    protocol.PoolGone(manager="m1", block_id="0", message="released", released=True),
    protocol.PoolRejected(manager="m3", reason="version mismatch"),
    protocol.Probe(),
    protocol.ProbeReply(),
    protocol.Register(manager_id="m", block_id="0", hostname="h", pid=1, worker_count=2, prefetch_capacity=0,
                      htex_version="0.1.0", python_version="3.11.7", accelerators=["0", "1.1"]),
    protocol.Registered(),
    protocol.Rejected(reason="no"),
    protocol.WorkerReady(rank=0, pid=9),
    protocol.Withdraw(req=4, ids=[1, 2, 3]),
    protocol.Withdrawn(req=4, withdrawn=[2, 3], started=[1]),
    protocol.CancelTasks(req=5, ids=[1, 2], kill=True),
    protocol.Cancelled(req=5, withdrawn=[2], started=[1]),
    protocol.TaskNeeds(ids=[1, 2], needs=[(2.0, 0.0, 0), (1.0, 512.0, 1)]),
    protocol.Draining(),
    protocol.PoolDraining(manager="m", block_id="0"),
]


def test_every_json_message_round_trips() -> None:
    json_types = {cls for cls in protocol._TYPES.values() if issubclass(cls, protocol._Json)}
    assert {type(m) for m in _SAMPLES} == json_types  # a new message type needs a sample here
    for msg in _SAMPLES:
        back = protocol.decode([zmq.Frame(f) for f in msg.encode()])
        assert back == msg and type(back) is type(msg)
    reply = protocol.decode(_SAMPLES[3].encode())
    assert isinstance(reply, protocol.StatusReply)
    assert all(type(p) is protocol.PoolInfo for p in reply.pools) and type(reply.stats) is protocol.Stats
    failed = protocol.decode(_SAMPLES[8].encode())
    assert isinstance(failed, protocol.TasksFailed) and type(failed.error) is protocol.LostReason


def test_status_request_defaults_to_req_0() -> None:
    assert protocol.StatusRequest() == protocol.StatusRequest(req=0)  # what `htex status` sends


def test_pool_info_is_parsls_manager_dict() -> None:
    assert set(dataclasses.asdict(_POOL)) == {
        "manager", "block_id", "hostname", "pid", "worker_count", "prefetch_capacity", "tasks", "active",
        "idle_duration", "last_heartbeat", "python_version", "version",
    }


def _body(msg: Any) -> dict[str, Any]:
    body: dict[str, Any] = json.loads(bytes(protocol.as_buffer(msg.encode()[0]))[4:])
    return body


def _frames(cls: Any, body: Any) -> list[bytes]:
    return [_hdr(cls.TYPE) + json.dumps(body).encode()]


def _reply_with(**pool_fields: Any) -> dict[str, Any]:
    body = _body(_SAMPLES[3])
    body["pools"][1].update(pool_fields)
    return body


@pytest.mark.parametrize("cls, body", [
    (protocol.StatusReply, _reply_with(pid="7")),  # a str for an int, in a PoolInfo in a list
    (protocol.StatusReply, _reply_with(active=1)),  # an int for a bool
    (protocol.StatusReply, _reply_with(worker_count=True)),  # a bool for an int
    (protocol.StatusReply, _reply_with(idle_duration="0.5")),  # a str for a float
    (protocol.StatusReply, _reply_with(idle_duration=None)),  # null where None is not allowed
    (protocol.StatusReply, _reply_with(tasks=1.0)),  # a float for an int
    (protocol.StatusReply, _reply_with(secret=1)),  # a field PoolInfo does not have
    (protocol.StatusReply, {**_body(_SAMPLES[3]), "pools": [_body(_SAMPLES[9])["pool"], "m"]}),  # not an object
    (protocol.StatusReply, {**_body(_SAMPLES[3]), "pools": {"m": _body(_SAMPLES[9])["pool"]}}),  # not a list
    (protocol.StatusReply, {**_body(_SAMPLES[3]), "stats": [1, 2, 3]}),
    (protocol.StatusReply, {**_body(_SAMPLES[3]), "stats": {**_body(_SAMPLES[3])["stats"], "done": "8"}}),
    (protocol.StatusReply, {k: v for k, v in _body(_SAMPLES[3]).items() if k != "stats"}),  # a field missing
    (protocol.PoolRegistered, {"pool": {k: v for k, v in _body(_SAMPLES[9])["pool"].items() if k != "pid"}}),
    (protocol.PoolRegistered, {"pool": None}),
    (protocol.TasksFailed, {**_body(_SAMPLES[8]), "error": 99}),  # no such LostReason
    (protocol.TasksFailed, {**_body(_SAMPLES[8]), "error": "ManagerLost"}),  # no more class names on the wire
    (protocol.TasksFailed, {**_body(_SAMPLES[8]), "ids": [1, "2"]}),
    (protocol.TasksFailed, {**_body(_SAMPLES[8]), "ids": 1}),
    (protocol.HoldPools, {"req": 1, "managers": [1]}),
    (protocol.HoldPools, {"req": 1, "managers": "m1"}),  # a str is not a list of them
    (protocol.DropBlocks, {"req": 1, "blocks": ["0"], "reason": "x", "released": "yes"}),
    (protocol.Done, {"req": 1, "count": None}),
    (protocol.StatusRequest, {"req": "0"}),
])
def test_wrong_types_anywhere_raise_protocol_error(cls: Any, body: Any) -> None:
    with pytest.raises(ProtocolError):
        protocol.decode(_frames(cls, body))


@pytest.mark.parametrize("value", ["NaN", "Infinity", "-Infinity", "1e999", "1" + "0" * 400])
def test_floats_must_be_finite(value: str) -> None:
    body = json.dumps(_reply_with()).replace('"idle_duration": 0.0', f'"idle_duration": {value}', 1)
    assert value in body
    with pytest.raises(ProtocolError):
        protocol.decode([_hdr(protocol.StatusReply.TYPE) + body.encode()])


def test_an_int_is_a_float() -> None:
    back = protocol.decode(_frames(protocol.StatusReply, _reply_with(idle_duration=3)))
    assert isinstance(back, protocol.StatusReply)
    assert back.pools[1].idle_duration == 3.0 and type(back.pools[1].idle_duration) is float


def test_deep_nesting_is_a_protocol_error_not_a_recursion_error() -> None:
    with pytest.raises(ProtocolError):
        protocol.decode([_hdr(protocol.Register.TYPE) + b"[" * 200_000])


def test_a_nan_is_refused_by_its_sender() -> None:
    with pytest.raises(ValueError):
        protocol.StatusReply(req=0, stats=dataclasses.replace(_STATS, uptime=float("nan")), pools=[]).encode()


def test_random_mutations_of_every_json_message_raise_only_protocol_error() -> None:
    rng = random.Random(4321)
    valid = [bytes(protocol.as_buffer(m.encode()[0])) for m in _SAMPLES]
    for _ in range(20000):
        frame = bytearray(rng.choice(valid))
        for _ in range(rng.randrange(1, 4)):
            frame[rng.randrange(len(frame))] = rng.randrange(256)
        try:
            protocol.decode([bytes(frame)])
        except ProtocolError:
            pass


def test_a_type_without_a_json_form_fails_at_import_not_at_a_peer() -> None:
    with pytest.raises(TypeError, match="no JSON form"):
        protocol._converter(dict[str, int])


# -- the interchange's configuration ------------------------------------------------------------


def _config(**kw: Any) -> protocol.InterchangeConfig:
    fields: dict[str, Any] = dict(
        client_fd=5, tcp=True, bind_address="*", worker_ports=(54001, 54002),
        worker_port_range=(54000, 55000), heartbeat_period=2, heartbeat_threshold=10.0, logdir="/tmp/x",
        debug=True, cert_dir=None, listen_fds=[5, 6], ipc_name="/tmp/x/pools",
    )
    fields.update(kw)
    return protocol.InterchangeConfig(**fields)


def test_interchange_config_round_trips() -> None:
    cfg = _config()
    back = protocol.InterchangeConfig.from_json(cfg.to_json())
    assert back == cfg and type(back.worker_ports) is tuple and type(back.heartbeat_period) is float
    minimal = protocol.InterchangeConfig.from_json(b'{"client_fd": 5}')
    assert minimal == protocol.InterchangeConfig(client_fd=5)  # the defaults
    assert minimal.worker_port_range == (54000, 55000) and minimal.worker_ports is None


@pytest.mark.parametrize("change", [
    {"worker_ports": [54001]},  # a pair is two
    {"worker_ports": ["54001", "54002"]},
    {"worker_port_range": None},
    {"listen_fds": "5"},
    {"heartbeat_period": "30"},
    {"tcp": 1},
    {"debug": "false"},
    {"client_fd": None},
    {"unknown": 1},
])
def test_interchange_config_refuses_wrong_types(change: dict[str, Any]) -> None:
    raw = {**json.loads(_config().to_json()), **change}
    with pytest.raises(ProtocolError):
        protocol.InterchangeConfig.from_json(json.dumps(raw).encode())


@pytest.mark.parametrize("data", [b"", b"not json", b"[]", b'{"tcp": true}', b"\xff\xfe"])
def test_interchange_config_refuses_garbage(data: bytes) -> None:
    with pytest.raises(ProtocolError):
        protocol.InterchangeConfig.from_json(data)


def test_every_json_field_has_a_check() -> None:
    """Checks are built lazily (not at import); build them all here, so a field of a type with no
    JSON form fails this test instead of a peer's first message."""
    for cls in protocol.json_classes():
        checks = protocol._fields(cls)  # raises TypeError for a field with no JSON form
        assert set(checks) == {f.name for f in dataclasses.fields(cls)}, cls
