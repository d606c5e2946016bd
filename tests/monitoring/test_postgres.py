"""The store on a real PostgreSQL server (Debian's, started by ci/postgres/setup.sh): a run writes its
rows there, and the upsert rules hold on that dialect too.  Skipped, with the reason, only if the
server cannot be reached."""

from __future__ import annotations

import os
from collections.abc import Iterator
from typing import Any

import pytest
import sqlalchemy as sa

from htex import Monitoring
from htex.monitoring import events as ev
from htex.monitoring import schema
from htex.monitoring.store import Store, open_store

import tasks

URL = os.environ.get("HTEX_TEST_POSTGRES_URL", "postgresql+psycopg://htex_test:htex_test@127.0.0.1:5432/htex_test")
pytestmark = pytest.mark.timeout(180)


@pytest.fixture(scope="module")
def pg() -> Iterator[str]:
    engine = sa.create_engine(URL)
    try:
        with engine.connect() as conn:
            conn.execute(sa.text("select 1"))
    except Exception as exc:
        pytest.skip(f"PostgreSQL is not reachable at {sa.make_url(URL).render_as_string()} "
                    f"(run ci/postgres/setup.sh): {exc!s:.200}")
    finally:
        engine.dispose()
    yield URL


def _rows(url: str, table: sa.Table, run_id: str) -> list[Any]:
    engine = open_store(url)
    try:
        with engine.connect() as conn:
            return list(conn.execute(sa.select(table).where(table.c.run_id == run_id)).mappings())
    finally:
        engine.dispose()


def _forget(url: str, run_id: str) -> None:
    engine = sa.create_engine(url)
    with engine.begin() as conn:
        for table in (schema.tasks, schema.pools, schema.blocks, schema.block_states, schema.resources, schema.runs):
            conn.execute(table.delete().where(table.c.run_id == run_id))
    engine.dispose()


def test_a_run_writes_its_rows_to_postgresql(make_executor: Any, pg: str) -> None:
    ex = make_executor(monitoring=Monitoring(url=pg))
    run_id = ex._monitoring.run_id
    try:
        ok = [ex.submit(tasks.add, {}, i, 1) for i in range(20)]
        bad = [ex.submit(tasks.fail, {}, "pg") for _ in range(2)]
        assert [f.result(60) for f in ok] == [i + 1 for i in range(20)]
        assert all(isinstance(f.exception(60), ValueError) for f in bad)
        ex.shutdown()
        outcomes = sorted(r["outcome"] for r in _rows(pg, schema.tasks, run_id))
        assert outcomes == ["done"] * 20 + ["failed"] * 2
        assert [p["state"] for p in _rows(pg, schema.pools, run_id)] == ["gone"]
        assert [b["state"] for b in _rows(pg, schema.blocks, run_id)] == ["cancelled"]
        (run,) = _rows(pg, schema.runs, run_id)
        assert run["ended"] >= run["started"]
    finally:
        _forget(pg, run_id)


def test_upserts_on_postgresql(pg: str) -> None:
    run_id = f"pg-upsert-{os.getpid()}"
    store = Store(pg)
    try:
        store.write(run_id, [ev.TaskEnded(1, 13.0, "done", 5, None, None, None), ev.TasksDispatched([1, 2], 11.0, "p")])
        store.write(run_id, [ev.TaskSubmitted(1, 10.0, "f", 1, None), ev.TasksStarted([1], 12.0, "p", 0),
                             ev.BlockState("0", 7.0, "running", "running", "9", "X"),
                             ev.BlockState("0", 5.0, "requested", "", "9", "X")])
        store.write(run_id, [ev.BlockState("0", 4.0, "requested", "", "9", "X")])
        by_id = {r["task_id"]: r for r in _rows(pg, schema.tasks, run_id)}
        assert (by_id[1]["outcome"], by_id[1]["started"], by_id[1]["submitted"]) == ("done", 12.0, 10.0)
        assert by_id[2]["outcome"] == "dispatched"
        (block,) = _rows(pg, schema.blocks, run_id)
        assert (block["state"], block["requested"], block["started"], block["reason"]) == ("running", 4.0, 7.0, "running")
    finally:
        store.close()
        _forget(pg, run_id)
