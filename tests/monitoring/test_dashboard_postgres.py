"""The dashboard over a PostgreSQL store (a real server: ci/postgres/setup.sh, from the monitoring work).

The test works in a PostgreSQL schema of its own (``search_path`` in the URL),
created and dropped here, so it never touches another test's tables.
"""

from __future__ import annotations

import json
import os
import urllib.request
import uuid
from collections.abc import Iterator

import pytest
import sqlalchemy as sa

from htex.monitoring import schema
from htex.monitoring.dashboard import serve_dashboard

from conftest_dash import RUN_ID, RunWriter, db_counts

URL = os.environ.get("HTEX_TEST_POSTGRES_URL", "postgresql+psycopg://htex_test:htex_test@127.0.0.1:5432/htex_test")


@pytest.fixture
def pg_url() -> Iterator[str]:
    pytest.importorskip("psycopg", reason="no PostgreSQL driver: pip install 'htex[test]' (psycopg)")
    admin = sa.create_engine(URL)
    name = f"htex_dash_{uuid.uuid4().hex[:10]}"
    try:
        with admin.begin() as conn:
            conn.execute(sa.text(f"CREATE SCHEMA {name}"))
    except sa.exc.OperationalError as exc:
        admin.dispose()
        pytest.skip(f"PostgreSQL at {URL.rsplit('@', 1)[-1]} unreachable (ci/postgres/setup.sh starts it): {exc.orig}")
    try:
        yield f"{URL}?options=-csearch_path%3D{name}"
    finally:
        with admin.begin() as conn:
            conn.execute(sa.text(f"DROP SCHEMA {name} CASCADE"))
        admin.dispose()


def test_dashboard_reads_a_postgresql_store(pg_url: str) -> None:
    engine = sa.create_engine(pg_url)
    try:
        schema.metadata.create_all(engine)
        with engine.begin() as conn:
            conn.execute(sa.insert(schema.meta), [{"key": "schema", "value": "htex-monitoring"},
                                                  {"key": "version", "value": str(schema.SCHEMA_VERSION)}])
        writer = RunWriter(engine)
        writer.start()
        writer.add_tasks(30)
        writer.add_tasks(2, lambda i: "running")
        writer.add_unstarted("cancelled", 2)
        url, stop = serve_dashboard(pg_url, poll=0.1)
        try:
            with urllib.request.urlopen(url + "api/state", timeout=30) as r:
                state = json.loads(r.read())
            assert {k: v for k, v in state["counts"].items() if v and k != "total"} == db_counts(engine)
            assert state["run"]["run_id"] == RUN_ID
            assert state["stream"]["total"] == 4 + 32  # pool-c's lost tasks, and every task that started
            assert {b["block_id"]: b["job_id"] for b in state["blocks"]} == {"0": "4101", "1": "4102"}
            assert state["failures"]["total"] == db_counts(engine)["failed"] + db_counts(engine)["lost"]
            with urllib.request.urlopen(url + "api/events", timeout=30) as events:
                first = events.readline()
                events.readline()
                writer.add_tasks(1)
                assert events.readline() not in (first, b"")
        finally:
            stop()
    finally:
        engine.dispose()
