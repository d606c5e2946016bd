"""After a real run with monitoring on, the store holds a row per task, pool and block, each with
the right outcome: successes, exceptions, a worker killed under its task, a block cancelled under
its task, and a task cancelled by shutdown(cancel_futures=True).

Real processes throughout: the executor, its interchange, two LocalProvider blocks, the hub, SQLite.
"""

from __future__ import annotations

import os
import signal
from typing import Any

import pytest
import sqlalchemy as sa

from htex import ManagerLost, Monitoring, WorkerLost
from htex.monitoring import schema
from htex.monitoring.store import open_store

import tasks
from support import wait_for

pytestmark = pytest.mark.timeout(180)


def rows(target: str, table: sa.Table) -> list[Any]:
    engine = open_store(target)
    try:
        with engine.connect() as conn:
            return list(conn.execute(sa.select(table)).mappings())
    finally:
        engine.dispose()


def test_every_task_pool_and_block_has_its_row(make_executor: Any) -> None:
    from htex import LocalProvider

    ex = make_executor(provider=LocalProvider(init_blocks=2, min_blocks=0, max_blocks=2), max_workers=1,
                       monitoring=Monitoring(resource_period=0.2))
    assert ex.hub_port is None or ex.hub_port > 0
    wait_for(lambda: len(ex.connected_managers) == 2, 60, what="two pools")
    ok = [ex.submit(tasks.add, {}, i, 1) for i in range(6)]
    bad = [ex.submit(tasks.fail, {}, f"no {i}") for i in range(3)]
    assert [f.result(60) for f in ok] == [i + 1 for i in range(6)]
    for f in bad:
        with pytest.raises(ValueError):
            f.result(60)
    killer = ex.submit(tasks.hard_exit, {}, 9)  # the worker dies under its task
    with pytest.raises(WorkerLost):
        killer.result(60)

    # The store is read while the run goes (WAL): the workers' resource samples arrive.
    wait_for(lambda: any(r["worker"] == 0 for r in rows(ex.run_dir, schema.resources)), 30, what="worker samples")

    # One long task on each block; then cancel the block of the first: its task is lost.
    sleepers = [ex.submit(tasks.pool_id_after, {}, 60) for _ in range(2)]
    wait_for(lambda: sum(m["tasks"] for m in ex.connected_managers) == 2, 60, what="both sleepers dispatched")
    block_of = {m["manager"]: m["block_id"] for m in ex.connected_managers}
    busy_block = next(iter(block_of.values()))
    ex.scale_in(block_ids=[busy_block])
    lost = wait_for(lambda: [f for f in sleepers if f.done()], 60, what="the cancelled block's task to fail")
    assert len(lost) == 1 and isinstance(lost[0].exception(), ManagerLost)
    other = next(f for f in sleepers if not f.done())
    run_dir = ex.run_dir
    ex.shutdown(wait=False, cancel_futures=True)
    assert other.done()

    by_id = {r["task_id"]: r for r in rows(run_dir, schema.tasks)}
    ids = [f.parsl_executor_task_id for f in [*ok, *bad, killer, *sleepers]]
    assert sorted(by_id) == sorted(ids), "one row per task, and no other"

    def outcome(f: Any) -> str:
        return str(by_id[f.parsl_executor_task_id]["outcome"])

    assert [outcome(f) for f in ok] == ["done"] * 6
    assert [outcome(f) for f in bad] == ["failed"] * 3
    assert outcome(killer) == "lost" and by_id[killer.parsl_executor_task_id]["exc_type"] == "WorkerLost"
    assert outcome(lost[0]) == "lost" and by_id[lost[0].parsl_executor_task_id]["exc_type"] == "ManagerLost"
    assert outcome(other) == "cancelled"
    for f in bad:
        r = by_id[f.parsl_executor_task_id]
        assert r["exc_type"] == "ValueError" and r["exc_message"].startswith("no ")
        assert "in fail" in r["traceback"], r["traceback"]
    for f in ok:
        r = by_id[f.parsl_executor_task_id]
        assert r["func"] == "add" and r["pool_id"] in block_of and r["worker"] == 0
        assert r["submitted"] <= r["dispatched"] <= r["started"] <= r["ended"]
        assert r["args_bytes"] > 0 and r["result_bytes"] > 0

    pools = {r["pool_id"]: r for r in rows(run_dir, schema.pools)}
    assert set(pools) == set(block_of)
    assert pools[next(p for p, b in block_of.items() if b == busy_block)]["state"] == "gone"  # released by scale-in
    for p in pools.values():
        assert p["workers"] == 1 and p["cores"] >= 1 and p["memory_mb"] > 0 and p["host"]
    blocks = {r["block_id"]: r for r in rows(run_dir, schema.blocks)}
    assert set(blocks) == set(block_of.values())
    assert all(b["state"] == "cancelled" and b["job_id"] and b["provider"] == "LocalProvider" for b in blocks.values())
    assert blocks[busy_block]["reason"].endswith("scaled in")
    history = [r["state"] for r in rows(run_dir, schema.block_states) if r["block_id"] == busy_block]
    assert history[0] == "requested" and history[-1] == "cancelled"
    samples = rows(run_dir, schema.resources)
    assert {s["worker"] for s in samples} >= {-1, 0}
    assert all(s["rss_bytes"] > 0 for s in samples)
    (run,) = rows(run_dir, schema.runs)
    assert run["run_dir"] == run_dir and run["ended"] >= run["started"]


def test_monitoring_off_starts_no_hub(make_executor: Any) -> None:
    ex = make_executor()
    assert ex.submit(tasks.add, {}, 1, 2).result(60) == 3
    assert ex._monitor is None and ex.hub_port is None
    assert not os.path.exists(os.path.join(ex.run_dir, "monitoring.db"))


def test_pools_on_tcp_report_over_curve(make_executor: Any) -> None:
    """With an address given, pools join over TCP (CURVE, the run's keys) and reach the hub the same way, at the
    address they reached the interchange at: their own description (cores, memory) is in the store."""
    ex = make_executor(address="127.0.0.1", monitoring=True)
    assert ex.encrypted and ex.hub_port
    assert ex.submit(tasks.add, {}, 1, 2).result(60) == 3
    assert ex._monitoring.pool_env["HTEX_MONITOR_URL"] == f"tcp://{{interchange}}:{ex.hub_port}"
    wait_for(lambda: any(p["cores"] for p in rows(ex.run_dir, schema.pools)), 30, what="the pool's own report")


def test_a_killed_pool_is_lost_with_its_task(make_executor: Any) -> None:
    """SIGKILL a pool holding a task: its row says lost (with why), the task's says lost (ManagerLost)."""
    ex = make_executor(max_workers=1, monitoring=True)
    fut = ex.submit(tasks.sleep_then, {}, 60)
    wait_for(lambda: sum(m["tasks"] for m in ex.connected_managers) == 1, 30, what="the task at the pool")
    (manager,) = ex.connected_managers
    os.kill(manager["pid"], signal.SIGKILL)
    with pytest.raises(ManagerLost):
        fut.result(timeout=ex.heartbeat_threshold + 30)
    run_dir = ex.run_dir
    ex.shutdown()
    (pool,) = rows(run_dir, schema.pools)
    assert pool["pool_id"] == manager["manager"] and pool["state"] == "lost" and pool["reason"] and pool["ended"]
    (task,) = rows(run_dir, schema.tasks)
    assert (task["outcome"], task["exc_type"]) == ("lost", "ManagerLost")


def test_a_task_cancelled_before_it_ran_is_cancelled_in_the_store(make_executor: Any) -> None:
    """future.cancel() of a task still queued (one worker, busy, prefetch 0): its row says cancelled."""
    ex = make_executor(max_workers=1, prefetch_capacity=0, monitoring=True)
    busy = ex.submit(tasks.sleep_then, {}, 60)
    wait_for(lambda: sum(m["tasks"] for m in ex.connected_managers) == 1, 30, what="the worker busy")
    queued = ex.submit(tasks.add, {}, 1, 2)
    assert queued.cancel() and queued.cancelled()
    run_dir = ex.run_dir
    ex.shutdown(wait=False, cancel_futures=True)
    assert busy.done()
    by_id = {r["task_id"]: r for r in rows(run_dir, schema.tasks)}
    assert by_id[queued.parsl_executor_task_id]["outcome"] == "cancelled"
    assert by_id[queued.parsl_executor_task_id]["started"] is None  # it never ran
