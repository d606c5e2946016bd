"""The relay on its own: frames cross it late by the set delay, some are dropped, and it stops by itself."""

from __future__ import annotations

import os
import select
import socket
import statistics
import subprocess
import sys
import time
from collections.abc import Iterator

import pytest

import netlab
import relay
from support import wait_for

pytestmark = pytest.mark.timeout(60)

ECHO = """
import socket, sys
s = socket.socket()
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind((sys.argv[1], 7000))
s.listen()
print("ready", flush=True)
c, _ = s.accept()
while True:
    d = c.recv(65536)
    if not d:
        break
    c.sendall(d)
"""


def _echo_server(host: netlab.Host) -> Iterator[tuple[str, int]]:
    proc = host.popen([sys.executable, "-c", ECHO, host.ns_ip], stdout=subprocess.PIPE)
    try:
        assert proc.stdout is not None
        ready, _, _ = select.select([proc.stdout], [], [], 15)
        assert ready and proc.stdout.readline() == b"ready\n", "the echo server did not start"
        yield host.ns_ip, 7000
    finally:
        proc.kill()
        proc.wait()


@pytest.fixture
def slow_echo(tap_lab: netlab.Lab) -> Iterator[tuple[netlab.Host, tuple[str, int]]]:
    host = tap_lab.relay_host(delay_ms=25)
    for address in _echo_server(host):
        yield host, address


def test_each_frame_is_held_for_the_delay(slow_echo: tuple[netlab.Host, tuple[str, int]]) -> None:
    host, address = slow_echo
    with socket.create_connection(address, timeout=10) as conn:
        conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        rtts = []
        for i in range(10):
            t0 = time.monotonic()
            conn.sendall(bytes([i]))
            assert conn.recv(1) == bytes([i])
            rtts.append(time.monotonic() - t0)
    assert min(rtts) >= 2 * 0.025, rtts  # one frame each way, each held 25 ms
    assert statistics.median(rtts) < 2 * 0.025 + 0.05, rtts
    assert host.relay is not None
    counts = host.relay.stop()
    assert counts["reason"] == "stopped" and counts["dropped"] == 0 and counts["forwarded"] >= 20, counts


def test_frames_are_dropped_and_tcp_recovers(tap_lab: netlab.Lab) -> None:
    host = tap_lab.relay_host(loss=0.1, seed=7)
    data = os.urandom(300_000)
    for address in _echo_server(host):
        with socket.create_connection(address, timeout=30) as conn:
            conn.sendall(data)
            conn.shutdown(socket.SHUT_WR)
            back = bytearray()
            while chunk := conn.recv(65536):
                back += chunk
        assert bytes(back) == data
    assert host.relay is not None
    counts = host.relay.stop()
    share = counts["dropped"] / (counts["dropped"] + counts["forwarded"])
    assert 0.05 < share < 0.15, counts


def test_the_relay_stops_by_itself(tap_lab: netlab.Lab) -> None:
    fds = [relay.open_tap(f"{netlab.PREFIX}{tap_lab.token}x{i}") for i in range(2)]
    try:
        r = relay.Relay(*fds, delay_ms=0, loss=0, seed=1, max_seconds=0.5)
        wait_for(lambda: r.proc.poll() is not None, timeout=10, what="the relay to reach its time limit")
        assert r.stop()["reason"] == "deadline"
    finally:
        for fd in fds:
            os.close(fd)
