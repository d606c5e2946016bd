"""prefetch_capacity="auto" (the default): prefetch for short tasks, none for long ones, 0 as the spec says.

Real executor, interchange and pool.  What the interchange gives a pool is
read from its own account (``connected_managers``: the tasks a pool holds and
the prefetch it allows it now).
"""

from __future__ import annotations

import time
from typing import Any

import pytest

import tasks
from support import wait_for

pytestmark = pytest.mark.timeout(90)


def test_auto_is_the_default_and_sends_no_prefetch_to_a_pool_running_long_tasks(make_executor: Any) -> None:
    ex = make_executor(max_workers=2)
    assert ex.prefetch_capacity == "auto"
    wait_for(lambda: ex.connected_managers, timeout=30, what="the pool")
    futs = [ex.submit(tasks.sleep_then, {}, 1.0, i) for i in range(6)]
    seen: list[tuple[int, int]] = []
    # A prefetched task of 1 s would wait a whole second in the pool: polling every few ms cannot miss it.
    while not all(f.done() for f in futs):
        (m,) = ex.connected_managers
        seen.append((m["tasks"], m["prefetch_capacity"]))
        time.sleep(0.01)  # the pace of the observation, not a synchronisation
    assert [f.result() for f in futs] == list(range(6))
    assert seen and max(held for held, _ in seen) <= 2, "the pool was sent more tasks than it has workers"
    assert {cap for _, cap in seen} == {0}


def test_auto_prefetches_for_short_tasks(make_executor: Any) -> None:
    ex = make_executor(max_workers=2)
    for f in [ex.submit(tasks.noop, {}) for _ in range(2000)]:
        f.result(timeout=60)
    (m,) = ex.connected_managers
    assert m["prefetch_capacity"] > 0  # measured: tasks this short are worth queuing at the pool


def test_zero_is_the_spec_behaviour(make_executor: Any) -> None:
    ex = make_executor(max_workers=2, prefetch_capacity=0)
    wait_for(lambda: ex.connected_managers, timeout=30, what="the pool")
    futs = [ex.submit(tasks.sleep_then, {}, 0.2, i) for i in range(8)]
    wait_for(lambda: ex.connected_managers[0]["tasks"] == 2, timeout=30, what="both workers busy")
    held = []
    while not all(f.done() for f in futs):
        held.append(ex.connected_managers[0]["tasks"])
        time.sleep(0.01)
    assert max(held) <= 2 and [f.result() for f in futs] == list(range(8))
    assert ex.connected_managers[0]["prefetch_capacity"] == 0


@pytest.mark.parametrize("value", ["auto", 0, 7])
def test_the_pool_command_carries_the_setting(value: Any) -> None:
    from htex import poolcmd, prefetch

    args = poolcmd.build_parser().parse_args(["-p", str(value)])
    assert args.prefetch_capacity == prefetch.parse(value)
    with pytest.raises(SystemExit):
        poolcmd.build_parser().parse_args(["-p", "-3"])


def test_htex_parsl_defaults_to_auto_too() -> None:
    """The one default where htex differs from the spec (and from Parsl) holds under htex.parsl as well."""
    pytest.importorskip("parsl")
    from htex.parsl import HighThroughputExecutor

    assert HighThroughputExecutor().htex.prefetch_capacity == "auto"
    assert HighThroughputExecutor(prefetch_capacity=0).htex.prefetch_capacity == 0  # Parsl's behaviour, asked for
