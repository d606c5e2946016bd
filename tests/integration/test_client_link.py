"""The executor <-> interchange link (a socketpair, src/htex/client.py and the interchange's client link), with real processes.

A task submitted while nothing else is in flight goes onto the link from the
caller's thread; under load the I/O thread sends batches.  Both at once, from
many threads, with functions first sent on either path: every task runs once
and every result comes back.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
from typing import Any

import pytest

from htex.interchange import Interchange, InterchangeConfig

import tasks

pytestmark = pytest.mark.timeout(90)

MB = 1024 * 1024


def test_sequential_tasks_larger_than_the_socket_buffer(make_executor: Any) -> None:
    """shared_memory=False: each task is sent from the caller's thread, most of it by the I/O thread later."""
    ex = make_executor(shared_memory=False)
    for i in range(5):
        data = os.urandom(3 * MB + i)
        assert ex.submit(tasks.nbytes, {}, data).result(timeout=60) == len(data)


def test_threads_submitting_new_functions_while_one_waits_for_each(make_executor: Any) -> None:
    ex = make_executor()
    errors: list[BaseException] = []
    funcs = [(tasks.add, (1, 2), 3), (tasks.echo, ("x",), "x"), (tasks.nbytes, (b"abc",), 3),
             (tasks.digest, (b"d",), tasks.digest(b"d"))]

    def burst(func: Any, args: tuple[Any, ...], want: Any) -> None:
        try:
            futs = [ex.submit(func, {}, *args) for _ in range(300)]
            assert all(f.result(timeout=60) == want for f in futs)
        except BaseException as exc:  # reported by the test's thread
            errors.append(exc)

    threads = [threading.Thread(target=burst, args=f) for f in funcs]
    for t in threads:
        t.start()
    for i in range(200):  # one round trip at a time, between and among the bursts
        assert ex.submit(tasks.add, {}, i, 1).result(timeout=60) == i + 1
    for t in threads:
        t.join(60)
    assert not errors, errors
    stats = ex.stats()
    assert stats["received"] == stats["done"] == 200 + 300 * len(funcs)  # each task once


def test_the_interchange_stops_when_the_executor_closes_its_end(caplog: pytest.LogCaptureFixture) -> None:
    ours, theirs = socket.socketpair()
    ic = Interchange(InterchangeConfig(client_fd=theirs.detach()))
    ours.close()
    done = threading.Event()
    with caplog.at_level(logging.ERROR, logger="htex.interchange"):
        t = threading.Thread(target=lambda: (ic.run(), done.set()), daemon=True)
        t0 = time.monotonic()
        t.start()
        assert done.wait(10), "the interchange did not stop"
    assert time.monotonic() - t0 < 5  # at once, not after heartbeat_threshold (120 s here)
    assert "cannot reach the client" in caplog.text or "closed its end" in caplog.text
