"""Descriptors at the interchange: one connection per pool, and an error in its log when they run out.

A pool holds one connection to the interchange (tasks and results share it):
counted on real pools and a real interchange, over TCP and over the run's
UNIX socket.  Then a real interchange process (``python -m htex.interchange``)
started with a low descriptor limit (its hard limit set before it starts: the
one way to run out without opening 10,000 connections), and plain TCP
connections as pools: each connection it accepts costs it one descriptor.
"""

from __future__ import annotations

import os
import resource
import socket
import subprocess
import sys
from typing import Any

import psutil
import pytest
import zmq

from htex import LocalProvider, framing, protocol
from htex.protocol import InterchangeConfig

import tasks
from support import wait_for

pytestmark = pytest.mark.timeout(60)

LIMIT = 96  # enough to start (Python, libzmq's threads and mailboxes, the log), too few for 100 pools


def _limit() -> None:
    resource.setrlimit(resource.RLIMIT_NOFILE, (LIMIT, LIMIT))


def _log(logdir: str) -> str:
    path = os.path.join(logdir, "interchange.log")
    if not os.path.exists(path):
        return ""
    with open(path) as f:
        return f.read()


def _interchange(ex: Any) -> psutil.Process:
    pid = ex._interchange.pid  # the executor's handle on it
    return psutil.Process(pid)


@pytest.mark.parametrize("over", ["tcp", "unix"])
def test_each_pool_holds_one_connection(make_executor: Any, over: str) -> None:
    """Two pools, each with one connection to the interchange: its task port is its result port too."""
    kw: dict[str, Any] = {"address": "127.0.0.1"} if over == "tcp" else {}  # an address: pools come over TCP
    ex = make_executor(provider=LocalProvider(init_blocks=2, max_blocks=2), max_workers=1, **kw)
    assert [f.result(timeout=60) for f in [ex.submit(tasks.add, {}, i, 1) for i in range(20)]] == list(range(1, 21))
    pools = wait_for(lambda: ex.connected_managers if len(ex.connected_managers) == 2 else None, timeout=30,
                     what="both pools to register")
    interchange = _interchange(ex)
    if over == "tcp":
        port = ex.worker_task_port
        assert port and ex.worker_result_port == port
        for pool in pools:  # a pool's only TCP connections are to the interchange (workers: socketpairs)
            mine = [c for c in psutil.Process(pool["pid"]).net_connections("tcp") if c.status == psutil.CONN_ESTABLISHED]
            assert [c.raddr.port for c in mine] == [port], f"pool {pool['manager']}: {mine}"
        # and the interchange's only TCP connections are its pools' (the executor's link is a UNIX socket)
        served = [c for c in interchange.net_connections("tcp") if c.status == psutil.CONN_ESTABLISHED]
        assert len(served) == len(pools), served
    else:
        # An accepted UNIX connection carries the listening socket's path: the pools' stream socket
        # (poollink.py) is the listener and one connection a pool; the ZeroMQ one (ipc_name-tasks, for
        # `htex status` and pools started by hand) has its listener only.
        unix_path = ex._endpoints.pool_local_url[len("unix://"):]
        conns = interchange.net_connections("unix")
        assert len([c for c in conns if c.laddr == unix_path]) == 1 + len(pools), conns
        assert len([c for c in conns if c.laddr == f"{ex._endpoints.ipc_name}-tasks"]) == 1, conns
        for pool in pools:  # a pool's UNIX sockets: its worker's socketpair, and that one connection
            assert len(psutil.Process(pool["pid"]).net_connections("unix")) == 1 + 1, pool


def test_out_of_descriptors_is_an_error_in_the_log(tmp_path: Any) -> None:
    ctx = zmq.Context()
    client, theirs = socket.socketpair()  # the test stands where the executor is
    logdir = str(tmp_path / "logs")
    cfg = InterchangeConfig(client_fd=theirs.fileno(), logdir=logdir, heartbeat_period=1,
                            heartbeat_threshold=30, worker_port_range=(57000, 58000))
    proc = subprocess.Popen([sys.executable, "-m", "htex.interchange"], stdin=subprocess.PIPE, preexec_fn=_limit,
                            pass_fds=[theirs.fileno()])
    theirs.close()
    conns: list[zmq.Socket[Any]] = []
    try:
        assert proc.stdin is not None
        proc.stdin.write(cfg.to_json())
        proc.stdin.close()
        client.settimeout(30)
        decoder = framing.Decoder()
        while not (messages := decoder.messages()):
            assert decoder.read(client), "the interchange did not start"
        ready = protocol.decode(messages[0])
        assert isinstance(ready, protocol.Ready)
        assert f"soft limit {LIMIT}, hard {LIMIT}" in _log(logdir)
        for _ in range(2 * LIMIT):  # more pools than it has descriptors
            sock = ctx.socket(zmq.DEALER)
            sock.setsockopt(zmq.LINGER, 0)
            sock.connect(f"tcp://127.0.0.1:{ready.task_port}")
            conns.append(sock)
        text = wait_for(lambda: "out of file descriptors" in _log(logdir) and _log(logdir), timeout=30,
                        what="the error in the interchange's log")
        assert f"soft {LIMIT}, hard {LIMIT}" in text and "ulimit" in text
        # libzmq retries the refused connection at once, for ever: the error is said once per
        # fdlimit.REPEAT_SECONDS while it lasts, not once per retry.
        assert text.count("out of file descriptors") <= 2
        framing.send(client, protocol.Shutdown(reason="test").encode())
        for sock in conns:  # give it its descriptors back, so that it can stop cleanly
            sock.close()
        conns = []
        assert proc.wait(timeout=30) == 0
    finally:
        for sock in conns:
            sock.close()
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        client.close()
        ctx.destroy(linger=0)


def test_a_pool_never_answered_says_so(tmp_path: Any) -> None:
    """The pool's side: a real pool whose registration nobody answers (our ROUTER reads it and stays
    silent, as an interchange out of descriptors is) says why it waits, then goes on waiting."""
    ctx = zmq.Context()
    sock = ctx.socket(zmq.ROUTER)
    url = f"ipc://{tmp_path}/pools"
    sock.bind(url)
    pool = subprocess.Popen(
        [sys.executable, "-m", "htex.process_worker_pool", "--task_url", url,
         "--max_workers", "1", "-l", str(tmp_path / "logs")],
        stderr=subprocess.PIPE, text=True,
    )
    try:
        assert sock.poll(30_000), "the pool did not register"
        assert pool.stderr is not None
        line = pool.stderr.readline()  # blocks until it speaks; the test's timeout bounds it
        assert "no answer to our registration" in line and "out of file descriptors" in line
        assert pool.poll() is None  # still waiting
    finally:
        pool.terminate()
        pool.wait(timeout=30)
        ctx.destroy(linger=0)
