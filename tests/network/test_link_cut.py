"""A host's link is cut while its pool holds tasks (running and prefetched).

Pools run in network namespaces and reach the interchange over TCP through a
veth link (netlab.py); the cut sets the link's root side down for a while.
Each task appends its index to a file when it starts, so the file says how
many times each task ran, whatever the futures say.

- shorter than heartbeat_threshold: nobody notices beyond a pause; every task
  runs exactly once and succeeds.
- longer than heartbeat_threshold: the pool is declared lost.  At most once:
  its tasks, prefetched ones included, fail with ManagerLost (the cut-off pool
  may have run them: nothing tells the interchange), none runs twice; the
  cut-off pool goes away by itself.  With lost_task_retries, lost tasks are
  sent again, so a task may run twice: only the futures are checked.
"""

from __future__ import annotations

import collections
import concurrent.futures
import time
from typing import Any

import pytest

from htex import LocalProvider, ManagerLost

import netlab
import nettasks
from support import alive, wait_for

pytestmark = pytest.mark.timeout(90)


def _pools(make_executor: Any, hosts: list[netlab.Host], address: str, **kw: Any) -> tuple[Any, dict[str, dict[str, Any]]]:
    provider = LocalProvider(init_blocks=len(hosts), max_blocks=len(hosts),
                             launcher=netlab.NetnsLauncher([h.ns for h in hosts]))
    ex = make_executor(address=address, provider=provider, max_workers=2, heartbeat_period=1, **kw)
    return ex, netlab.pools_on(ex, hosts)


def _outcomes(futs: list[concurrent.futures.Future[Any]], deadline: float) -> dict[int, str]:
    """Wait for every future (failing the test past ``deadline`` s); each one's outcome: "ok" or "lost"."""
    _, not_done = concurrent.futures.wait(futs, timeout=deadline)
    assert not not_done, f"{len(not_done)} futures still pending {deadline} s after the link came back"
    out = {}
    for i, f in enumerate(futs):
        exc = f.exception()
        if exc is None:
            assert f.result() == i
            out[i] = "ok"
        else:
            assert isinstance(exc, ManagerLost), f"task {i} failed with {exc!r}, not ManagerLost"
            out[i] = "lost"
    return out


def test_a_cut_shorter_than_the_threshold_loses_nothing(lab: netlab.Lab, make_executor: Any, tmp_path: Any) -> None:
    host = lab.host()
    ex, pools = _pools(make_executor, [host], lab.address, prefetch_capacity=4, heartbeat_threshold=6)
    path = str(tmp_path / "runs")
    futs = [ex.submit(nettasks.record, {}, path, i, 0.2) for i in range(50)]
    wait_for(lambda: sum(nettasks.runs(path).values()) >= 10, timeout=30, what="10 tasks to start")
    with host.cut():  # the fault: 2 s without a link (no result crosses it meanwhile)
        time.sleep(0.5)
        done = sum(f.done() for f in futs)
        time.sleep(1.5)
        assert sum(f.done() for f in futs) == done, "results came through a cut link: is the pool's link the veth?"
    outcomes = _outcomes(futs, deadline=40)
    assert set(outcomes.values()) == {"ok"}, collections.Counter(outcomes.values())
    assert nettasks.runs(path) == collections.Counter(range(50))  # each ran exactly once
    assert [m["manager"] for m in ex.connected_managers] == [pools[host.ns]["manager"]]  # the same pool, still there


def _long_cut(
    lab: netlab.Lab, make_executor: Any, tmp_path: Any, retries: int
) -> tuple[dict[int, str], collections.Counter[int]]:
    """Two hosts; host A's link is cut for 10 s (threshold 4 s) while its pool holds 2 running and 8
    prefetched tasks.  Returns each task's outcome and how many times each ran."""
    a, b = lab.host(), lab.host()
    ex, pools = _pools(make_executor, [a, b], lab.address, prefetch_capacity=8, heartbeat_threshold=4,
                       lost_task_retries=retries)
    victim = pools[a.ns]
    path = str(tmp_path / "runs")
    n = 40
    futs = [ex.submit(nettasks.record, {}, path, i, 0.3) for i in range(n)]

    def a_is_busy() -> bool:
        held = {m["manager"]: m["tasks"] for m in ex.connected_managers}
        started = sum(1 for _, pool in nettasks.starts(path) if pool == victim["manager"])
        return held.get(victim["manager"], 0) == 10 and started >= 2

    wait_for(a_is_busy, timeout=20, what="host A's pool to hold 10 tasks and run 2 of them")
    a.cut_for(10.0)  # > heartbeat_threshold: both sides give up on each other
    outcomes = _outcomes(futs, deadline=40)
    runs = nettasks.runs(path)
    # The cut-off pool goes away by itself: it gave up on the interchange, or is refused once the link is back.
    wait_for(lambda: not alive(victim["pid"]), timeout=15, what="the cut-off pool to exit")
    assert victim["manager"] not in {m["manager"] for m in ex.connected_managers}
    ok = sum(1 for v in outcomes.values() if v == "ok")
    lost = n - ok
    twice = sorted(i for i, c in runs.items() if c > 1)
    print(f"\nlost_task_retries={retries}: {ok} succeeded, {lost} ManagerLost, ran twice: {twice}, "
          f"never ran: {sorted(set(range(n)) - set(runs))}")
    assert all(runs[i] >= 1 for i, v in outcomes.items() if v == "ok"), "a task succeeded without running"
    return outcomes, runs


def test_a_cut_longer_than_the_threshold_runs_no_task_twice(lab: netlab.Lab, make_executor: Any, tmp_path: Any) -> None:
    outcomes, runs = _long_cut(lab, make_executor, tmp_path, retries=0)
    twice = {i: c for i, c in runs.items() if c > 1}
    assert not twice, f"tasks ran more than once (index: runs): {twice}; outcomes {collections.Counter(outcomes.values())}"
    assert "lost" in outcomes.values(), "the cut cost no task: the pool cannot have been cut off while it held tasks"


def test_a_long_cut_with_retries_ends_every_future(lab: netlab.Lab, make_executor: Any, tmp_path: Any) -> None:
    _, runs = _long_cut(lab, make_executor, tmp_path, retries=2)
    # Retried tasks may have run on the cut-off pool too: running twice is allowed here.
    assert max(runs.values()) <= 3, runs  # at most the first run and two retries
