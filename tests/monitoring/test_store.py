"""The store: events applied in any order give the same rows; a store of another schema version, or
a database that is not ours, is refused by name; a hub restarted on the same store resumes appending.

Real SQLite files and real hub processes (``python -m htex.monitoring.hub``), real ZeroMQ sockets.
"""

from __future__ import annotations

import math
import os
import random
import signal
import subprocess
import sys
from typing import Any

import pytest
import sqlalchemy as sa

from htex import HighThroughputExecutor, LocalProvider, Monitoring, MonitoringError, StoreVersionMismatch
from htex.monitoring import events as ev
from htex.monitoring import schema
from htex.monitoring.hub import EXIT_BAD_STORE
from htex.monitoring.sender import EventSender
from htex.monitoring.store import Store, open_store, store_url

from support import wait_for

RUN = "run-1"


def _task_events() -> list[Any]:
    return [
        ev.TaskSubmitted(1, 10.0, "f", 100, None),
        ev.TasksDispatched([1, 2], 11.0, "pool-a"),
        ev.TasksStarted([1], 12.0, "pool-a", 3),
        ev.TaskEnded(1, 13.0, "failed", 50, "ValueError", "bad", "Traceback ..."),
        ev.TaskSubmitted(2, 10.5, "g", 10, 1.0),
        ev.PoolRegistered("pool-a", 9.0, "0", "host", 4),
        ev.PoolInfo("pool-a", 8.5, "0", "host", 4, 8, 1024, ["0", "1"]),
        ev.PoolState("pool-a", 20.0, "gone", "stopped"),
        ev.BlockState("0", 5.0, "requested", "", "123", "LocalProvider"),
        ev.BlockState("0", 7.0, "running", "running", "123", "LocalProvider"),
        # the executor's packed kinds (what it sends): rows of doubles, NaN for no priority
        ev.TasksSubmittedPacked(2, ["h", "k"], ev.pack_rows([(3, 10.25, 30, 1, math.nan), (4, 10.5, 40, 0, 2.5)], 5)),
        ev.TasksDispatched([3, 4], 11.5, "pool-a"),
        ev.TasksStarted([3], 12.5, "pool-a", 1),
        ev.TasksDonePacked(1, ev.pack_rows([(3, 13.5, 7)], 3)),
    ]


def _dump(url: str) -> dict[str, list[Any]]:
    engine = open_store(url)
    try:
        with engine.connect() as conn:
            return {t.name: sorted(tuple(r) for r in conn.execute(sa.select(t)).all())
                    for t in (schema.tasks, schema.pools, schema.blocks)}
    finally:
        engine.dispose()


@pytest.mark.parametrize("split", [1, 3, 10])
def test_events_in_any_order_give_the_same_rows(tmp_path: Any, split: int) -> None:
    """Each sender flushes on its own timer: the hub sees events in any order, in batches of any size."""
    events = _task_events()
    results = []
    rng = random.Random(split)
    for n in range(6):
        url = store_url(str(tmp_path / f"s{n}.db"))
        store = Store(url)
        shuffled = events if n == 0 else rng.sample(events, len(events))
        for start in range(0, len(shuffled), split):
            store.write(RUN, shuffled[start:start + split])
        store.close()
        results.append(_dump(url))
    assert all(r == results[0] for r in results)
    (t1, t2, t3, t4) = results[0]["tasks"]
    cols = [c.name for c in schema.tasks.columns]
    t1, t2, t3, t4 = (dict(zip(cols, t, strict=True)) for t in (t1, t2, t3, t4))
    assert (t3["func"], t3["outcome"], t3["submitted"], t3["started"], t3["ended"]) == ("k", "done", 10.25, 12.5, 13.5)
    assert (t3["args_bytes"], t3["result_bytes"], t3["priority"], t3["worker"]) == (30, 7, None, 1)
    assert (t4["func"], t4["outcome"], t4["priority"], t4["dispatched"]) == ("h", "dispatched", 2.5, 11.5)
    assert (t1["outcome"], t1["worker"], t1["exc_type"], t1["started"]) == ("failed", 3, "ValueError", 12.0)
    assert (t2["outcome"], t2["pool_id"], t2["priority"]) == ("dispatched", "pool-a", 1.0)
    (pool,) = results[0]["pools"]
    assert "gone" in pool and 1024 in pool and '["0", "1"]' in pool
    (block,) = results[0]["blocks"]
    assert "running" in block and 5.0 in block and 7.0 in block


def test_a_resent_task_starts_over(tmp_path: Any) -> None:
    url = store_url(str(tmp_path / "r.db"))
    store = Store(url)
    store.write(RUN, [ev.TaskSubmitted(1, 1.0, "f", 1, None), ev.TasksStarted([1], 2.0, "p", 0)])
    store.write(RUN, [ev.TaskResent(1, 3.0, 1)])
    store.close()
    (row,) = _dump(url)["tasks"]
    assert "queued" in row and row[-2] == 1  # retries


def _versioned_store(path: str, version: str, schema_name: str = "htex-monitoring") -> None:
    engine = sa.create_engine(store_url(path))
    with engine.begin() as conn:
        conn.execute(sa.text("create table htex_meta (key varchar(64) primary key, value text not null)"))
        conn.execute(sa.text("insert into htex_meta values ('schema', :s), ('version', :v)"),
                     {"s": schema_name, "v": version})
    engine.dispose()


def test_another_schema_version_is_refused_by_number(tmp_path: Any) -> None:
    path = str(tmp_path / "old.db")
    _versioned_store(path, "99")
    with pytest.raises(StoreVersionMismatch, match=r"schema version 99.*version 1") as info:
        open_store(path)
    assert info.value.found == "99" and info.value.expected == 1
    with pytest.raises(StoreVersionMismatch, match="99"):
        Store(store_url(path))
    ex = HighThroughputExecutor(provider=LocalProvider(init_blocks=0), run_dir=str(tmp_path / "run"),
                                monitoring=Monitoring(url=path))
    with pytest.raises(StoreVersionMismatch, match="99"):
        ex.start()  # refused before anything started: no_leaks checks that nothing is left


def test_a_database_that_is_not_ours_is_refused(tmp_path: Any) -> None:
    path = str(tmp_path / "theirs.db")
    engine = sa.create_engine(store_url(path))
    with engine.begin() as conn:
        conn.execute(sa.text("create table invoices (id integer)"))
    engine.dispose()
    with pytest.raises(MonitoringError, match=r"not an htex monitoring store.*invoices"):
        open_store(path)
    other = str(tmp_path / "other.db")
    _versioned_store(other, "1", schema_name="someone-else")
    with pytest.raises(MonitoringError, match="someone-else"):
        open_store(other)
    with pytest.raises(MonitoringError, match="no monitoring store"):
        open_store(str(tmp_path / "missing.db"))
    result = subprocess.run([sys.executable, "-m", "htex.monitoring.hub", "--url", path], capture_output=True,
                            text=True, timeout=60)
    assert result.returncode == EXIT_BAD_STORE and "not an htex monitoring store" in result.stderr


def _start_hub(db: str, port: int = 0) -> tuple[subprocess.Popen[str], int]:
    hub = subprocess.Popen([sys.executable, "-m", "htex.monitoring.hub", "--url", db, "--port", str(port)],
                           stdout=subprocess.PIPE, text=True)
    assert hub.stdout is not None
    line = hub.stdout.readline()
    import json

    return hub, int(json.loads(line)["port"])


def _task_count(db: str) -> int:
    engine = open_store(db)
    try:
        with engine.connect() as conn:
            return int(conn.execute(sa.select(sa.func.count()).select_from(schema.tasks)).scalar_one())
    finally:
        engine.dispose()


def test_a_restarted_hub_resumes_appending(tmp_path: Any) -> None:
    """Stop the hub, start it again on the same store and port: rows from before stay, new ones are added,
    and events sent while it was down reach it when it is back."""
    db = str(tmp_path / "m.db")
    hub, port = _start_hub(db)
    sender = EventSender(f"tcp://127.0.0.1:{port}", RUN, "test", flush_period=0.05)
    sender.start()
    try:
        for i in range(100):
            sender.emit(ev.TaskSubmitted(i, 1.0, "f", 1, None))
        wait_for(lambda: os.path.exists(db) and _task_count(db) == 100, 30, what="the first 100 rows")
        hub.send_signal(signal.SIGTERM)
        assert hub.wait(30) == 0
        wait_for(lambda: not sender.connected, 30, what="the sender to see the hub gone")
        for i in range(100, 150):
            sender.emit(ev.TaskSubmitted(i, 2.0, "f", 1, None))  # kept while the hub is down
        hub, _ = _start_hub(db, port)
        for i in range(150, 200):
            sender.emit(ev.TaskSubmitted(i, 3.0, "f", 1, None))
        wait_for(lambda: _task_count(db) == 200, 30, what="all 200 rows")
    finally:
        sender.stop()
        hub.send_signal(signal.SIGTERM)
        hub.wait(30)
        if hub.stdout:
            hub.stdout.close()
    assert sender.dropped == 0


def test_a_new_sqlite_store_is_private(tmp_path: Any) -> None:
    path = tmp_path / "p.db"
    store = Store(store_url(str(path)))
    store.write(RUN, [ev.RunEnded(1.0)])
    store.close()
    assert path.stat().st_mode & 0o777 == 0o600
    assert all(p.stat().st_mode & 0o077 == 0 for p in tmp_path.iterdir())


def test_a_flush_that_holds_writes_unended_tasks_one_round_later(tmp_path: Any) -> None:
    """The hub's flushes hold back tasks that have not ended, once: a short task is written once, and a
    long one still shows up (as running) a round later."""
    url = store_url(str(tmp_path / "h.db"))
    store = Store(url)
    store.add(RUN, [ev.TaskSubmitted(1, 1.0, "f", 1, None), ev.TaskSubmitted(2, 1.0, "f", 1, None),
                    ev.TasksStarted([1, 2], 2.0, "p", 0), ev.TaskEnded(2, 3.0, "done", 5, None, None, None)])
    store.flush(hold=True)
    assert [r[1] for r in _dump(url)["tasks"]] == [2] and store.waiting
    store.add(RUN, [ev.TasksDispatched([1], 1.5, "p")])
    store.flush(hold=True)  # task 1 was held once: written now, though it has not ended
    rows = {r[1]: r for r in _dump(url)["tasks"]}
    assert set(rows) == {1, 2} and "running" in rows[1] and 1.5 in rows[1] and not store.waiting
    store.close()
