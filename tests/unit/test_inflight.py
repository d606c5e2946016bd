"""Inflight: what a resend of a lost task carries (lost_task_retries)."""

from __future__ import annotations

import math
from concurrent.futures import Future

import pytest

from htex.errors import ManagerLost
from htex.inflight import Inflight, Lifecycle

pytestmark = pytest.mark.timeout(10)


def test_a_resent_task_keeps_its_priority() -> None:
    life = Lifecycle()
    life.start()
    inflight = Inflight(life, max_outstanding=None, retries=1, arena=None)
    urgent = inflight.add(Future(), 7, b"payload", None, may_wait=False, priority=-2.5)
    plain = inflight.add(Future(), 7, b"other", None, may_wait=False, priority=math.nan)
    assert inflight.resend(urgent, ManagerLost("gone")) == (7, b"payload", -2.5)
    again = inflight.resend(plain, ManagerLost("gone"))
    assert again is not None and again[:2] == (7, b"other") and math.isnan(again[2])
    assert inflight.resend(urgent, ManagerLost("gone")) is None  # its one retry is spent
