"""Untrusted bytes on every listening port, version mismatch, and CurveZMQ."""

from __future__ import annotations

import os
import random
import socket
import stat
from array import array
from typing import Any

import pytest
import zmq

from htex import VersionMismatch, protocol

import tasks
from support import wait_for

pytestmark = pytest.mark.timeout(120)


def _register(**kw: Any) -> protocol.Register:
    fields: dict[str, Any] = dict(manager_id="fake", block_id="9", hostname="nowhere", pid=1, worker_count=4,
                                  prefetch_capacity=0, htex_version="0.1.0", python_version="3.11.0")
    fields.update(kw)
    return protocol.Register(**fields)


def _valid_messages() -> list[list[bytes]]:
    ids = array("Q", [1, 2, 3])
    msgs: list[protocol.Message] = [
        protocol.Results(ids, [b"\x00garbage", b"\x01x", b""]),
        protocol.Tasks(ids, array("Q", [1, 1, 1]), [b"a", b"b", b"c"], {1: b"not a function"}),
        protocol.Heartbeat(), protocol.StatusRequest(), protocol.Shutdown(reason="fuzz"),
        protocol.HoldPools(req=1, managers=["x"]), protocol.DropBlocks(req=2, blocks=["9"], reason="fuzz", released=True),
        protocol.StatusRequest(req=3), protocol.Probe(), _register(),
    ]
    return [[bytes(protocol.as_buffer(f)) for f in m.encode()] for m in msgs]


def _fuzz_frames(rng: random.Random, valid: list[list[bytes]]) -> list[bytes]:
    choice = rng.random()
    if choice < 0.3:
        return [rng.randbytes(rng.randrange(0, 64)) for _ in range(rng.randrange(1, 6))]
    frames = [bytearray(f) for f in rng.choice(valid)]
    if choice < 0.6 and frames:
        f = rng.choice(frames)
        for _ in range(rng.randrange(1, 4)):
            if f:
                f[rng.randrange(len(f))] = rng.randrange(256)
    elif choice < 0.8:
        frames = frames[: rng.randrange(0, len(frames) + 1)] or [bytearray(b"HX")]  # truncated
    return [bytes(f) for f in frames]


def test_garbage_on_every_port_is_dropped_and_tasks_still_run(make_executor: Any) -> None:
    # Unencrypted, with TCP ports (an address is given): garbage reaches the interchange's decoder.
    ex = make_executor(encrypted=False, address="127.0.0.1")
    assert ex.submit(tasks.add, {}, 1, 1).result(timeout=30) == 2
    assert ex.worker_result_port == ex.worker_task_port  # one port: each pool's one connection
    endpoints = {
        "task": f"tcp://127.0.0.1:{ex.worker_task_port}",
        "task-ipc": f"ipc://{ex._endpoints.ipc_name}-tasks",
    }  # (the executor's link to the interchange is a socketpair: nothing to connect to)
    rng = random.Random(20261124)
    valid = _valid_messages()
    ctx = zmq.Context()
    try:
        for name, endpoint in endpoints.items():
            socks = []
            for i in range(20):  # many peers, each with its own identity
                s = ctx.socket(zmq.DEALER)
                s.setsockopt(zmq.LINGER, 0)
                s.setsockopt(zmq.IDENTITY, f"fuzz-{name}-{i}".encode())
                s.connect(endpoint)
                socks.append(s)
            for n in range(3000):
                socks[n % len(socks)].send_multipart(_fuzz_frames(rng, valid))
            # Oversized and empty-identity-looking messages too.
            socks[0].send_multipart([bytes([*b"HX", protocol.PROTOCOL_VERSION, 0x0B]) + b"x" * (2 << 20)])
            for s in socks:
                s.close()
        # Unencrypted, a well-formed Register is a registration (encryption is what keeps strangers
        # out, see below). The fakes never heartbeat, so they are dropped after the threshold (a task
        # sent to one would fail with ManagerLost: it may have started there).
        wait_for(lambda: [m["manager"] for m in ex.connected_managers if m["manager"] != "fake"]
                 and all(m["manager"] != "fake" for m in ex.connected_managers),
                 timeout=ex.heartbeat_threshold + 5, what="the fake pools to be declared lost")
        # the interchange is alive and tasks still run
        futs = [ex.submit(tasks.add, {}, i, 1) for i in range(200)]
        assert [f.result(timeout=30) for f in futs] == [i + 1 for i in range(200)]
        assert ex.stats()["dropped"] > 1000
        assert not ex.bad_state_is_set
    finally:
        ctx.destroy(linger=0)


@pytest.mark.parametrize(("field", "value", "needle"), [
    ("htex_version", "0.0.1", "htex 0.1.0 on Python 3.11, this pool runs htex 0.0.1"),
    ("python_version", "3.10.4", "this pool runs htex 0.1.0 on Python 3.10"),
])
def test_version_mismatch_is_refused_at_registration(make_executor: Any, field: str, value: str, needle: str) -> None:
    ex = make_executor(managed=False, encrypted=False)
    fut = ex.submit(tasks.noop, {})
    ctx = zmq.Context()
    try:
        s = ctx.socket(zmq.DEALER)
        s.setsockopt(zmq.LINGER, 0)
        s.connect(f"tcp://127.0.0.1:{ex.worker_task_port}")
        s.send_multipart(_register(**{field: value}).encode())
        assert s.poll(10_000)
        reply = protocol.decode(s.recv_multipart())
        assert isinstance(reply, protocol.Rejected) and needle in reply.reason
        # With no pool able to serve it, the executor fails its tasks with the reason.
        with pytest.raises(VersionMismatch, match="version mismatch"):
            fut.result(timeout=10)
    finally:
        ctx.destroy(linger=0)


def test_encrypted_executor_runs_tasks_and_refuses_strangers(make_executor: Any) -> None:
    ex = make_executor(encrypted=True)
    assert ex.submit(tasks.add, {}, 20, 22).result(timeout=30) == 42
    cert_dir = ex.cert_dir
    assert stat.S_IMODE(os.stat(cert_dir).st_mode) == 0o700
    for name in os.listdir(cert_dir):
        assert stat.S_IMODE(os.stat(os.path.join(cert_dir, name)).st_mode) == 0o600
    ctx = zmq.Context()
    try:
        plain = ctx.socket(zmq.DEALER)
        wrong = ctx.socket(zmq.DEALER)
        for s in (plain, wrong):
            s.setsockopt(zmq.LINGER, 0)
        wrong.curve_publickey, wrong.curve_secretkey = zmq.curve_keypair()
        with open(os.path.join(cert_dir, "server.public"), "rb") as f:
            wrong.curve_serverkey = f.read()
        for s in (plain, wrong):
            s.connect(f"tcp://127.0.0.1:{ex.worker_task_port}")
            s.send_multipart(protocol.Probe().encode())
            s.send_multipart(_register(manager_id="intruder").encode())
        assert not plain.poll(1000) and not wrong.poll(1000)  # no answer: not even the handshake passed
        assert [m["manager"] for m in ex.connected_managers] != ["intruder"]
        assert len(ex.connected_managers) == 1
        # Nor can a stranger submit: the executor's link to the interchange is a socketpair, with no
        # name in the private directory (which holds only the pools' sockets) or anywhere else.
        assert not [n for n in os.listdir(ex._endpoints.ipc_dir) if "client" in n]
        peer = socket.socket(fileno=os.dup(ex._client._link.fd))
        try:
            assert peer.getpeername() == "" and peer.getsockname() == ""  # unnamed: unreachable
        finally:
            peer.close()
        assert ex.submit(tasks.add, {}, 1, 1).result(timeout=30) == 2
    finally:
        ctx.destroy(linger=0)


def test_an_encrypted_launch_cmd_without_cert_dir_still_connects(make_executor: Any) -> None:
    """A launch_cmd written before encryption (Parsl 1.0's) gets the keys through $HTEX_CERT_DIR."""
    ex = make_executor(encrypted=True,
                       launch_cmd="{python} -m htex.process_worker_pool --task_url={task_url} --result_url={result_url} "
                       "--logdir={logdir}")
    assert "HTEX_CERT_DIR" in ex.launch_command("0")
    assert ex.submit(tasks.add, {}, 1, 2).result(timeout=30) == 3
