"""The pool <-> worker link (a socketpair per worker, src/htex/framing.py), end to end with real processes."""

from __future__ import annotations

import os
from typing import Any

import pytest

import tasks

pytestmark = pytest.mark.timeout(90)

MB = 1024 * 1024


def test_2mb_argument_and_result_cross_the_link_in_band(make_executor: Any) -> None:
    """shared_memory=False: the payloads themselves cross the link, both ways, more than a socket buffer at a time."""
    ex = make_executor(shared_memory=False)
    data = os.urandom(2 * MB)
    assert ex.submit(tasks.echo, {}, data).result(timeout=60) == data
    # Several at once: batches of large tasks, and large results from both workers.
    datas = [os.urandom(2 * MB + i) for i in range(6)]
    futs = [ex.submit(tasks.echo, {}, d) for d in datas]
    assert [f.result(timeout=60) for f in futs] == datas

