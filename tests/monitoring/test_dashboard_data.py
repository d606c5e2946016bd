"""The dashboard's reads of the store (dashboard_data) and its opener: counts, bars, per-function figures."""

from __future__ import annotations

import os

import pytest
import sqlalchemy as sa

from htex.errors import HtexError
from htex.monitoring import dashboard, dashboard_data, schema

from conftest_dash import FUNCS, RUN_ID, T0, db_counts, new_store, realistic_run, started_tasks


def _snapshot(engine: sa.Engine) -> dict:
    with engine.connect() as conn:
        return dashboard_data.snapshot(conn, RUN_ID)


def test_counts_match_the_database(tmp_path: os.PathLike[str]) -> None:
    engine, _ = realistic_run(str(tmp_path / "m.db"))
    counts = _snapshot(engine)["counts"]
    expected = db_counts(engine)
    assert {k: v for k, v in counts.items() if k != "total" and v} == expected
    assert counts["total"] == sum(expected.values())
    assert expected.keys() >= {"done", "failed", "lost", "cancelled", "running", "queued"}


def test_stream_has_one_bar_per_started_task_on_its_worker(tmp_path: os.PathLike[str]) -> None:
    engine, _ = realistic_run(str(tmp_path / "m.db"))
    stream = _snapshot(engine)["stream"]
    bars = [(y, b, x) for g in stream["groups"] for y, b, x in zip(g["y"], g["base"], g["x"], strict=True)]
    ids = [i for g in stream["groups"] for i in g["id"]]
    assert len(bars) == len(set(ids)) == stream["total"] == started_tasks(engine)
    assert all(x >= 0 and b >= 0 for _, b, x in bars)
    assert set(stream["rows"]) == {y for y, _, _ in bars}
    assert {(g["func"], g["outcome"]) for g in stream["groups"]} >= {("simulate", "done"), ("analyse", "lost")}


def test_functions_table_mean_and_p95(tmp_path: os.PathLike[str]) -> None:
    engine, _ = realistic_run(str(tmp_path / "m.db"))
    table = {f["func"]: f for f in _snapshot(engine)["functions"]}
    assert set(table) == set(FUNCS)
    with engine.connect() as conn:
        t = schema.tasks.c
        rows = conn.execute(sa.select(t.started, t.ended).where(
            t.func == "simulate", t.outcome.in_(("done", "failed")))).all()
    durations = sorted(e - s for s, e in rows)
    assert table["simulate"]["mean"] == pytest.approx(sum(durations) / len(durations))
    assert table["simulate"]["p95"] == pytest.approx(durations[-(len(durations) // 20) - 1])  # nearest rank
    assert sum(f["count"] for f in table.values()) == sum(db_counts(engine).values())
    assert sum(f["failed"] for f in table.values()) == db_counts(engine)["failed"]


def test_failures_pools_blocks(tmp_path: os.PathLike[str]) -> None:
    engine, _ = realistic_run(str(tmp_path / "m.db"))
    s = _snapshot(engine)
    counts = db_counts(engine)
    assert s["failures"]["total"] == counts["failed"] + counts["lost"]
    failed = [f for f in s["failures"]["rows"] if f["outcome"] == "failed"]
    assert failed and all("ZeroDivisionError" in f["traceback"] for f in failed)
    assert {p["pool_id"]: p["state"] for p in s["pools"]} == {"pool-a": "active", "pool-b": "active", "pool-c": "lost"}
    blocks = {b["block_id"]: b for b in s["blocks"]}
    assert blocks["1"]["job_id"] == "4102" and blocks["1"]["state"] == "cancelled"
    assert [h["state"] for h in blocks["1"]["history"]] == ["requested", "pending", "running", "cancelled"]
    assert set(s["resources"]) == {"pool-a", "pool-b"}
    assert max(s["resources"]["pool-a"]["cpu"]) <= 100
    assert s["finished"] and s["span"] == pytest.approx(32.0)


def test_fingerprint_moves_on_insert_and_on_update(tmp_path: os.PathLike[str]) -> None:
    engine, writer = realistic_run(str(tmp_path / "m.db"), finished=False)
    with engine.connect() as conn:
        before = dashboard_data.fingerprint(conn, RUN_ID)
    writer.add_tasks(1)
    with engine.connect() as conn:
        inserted = dashboard_data.fingerprint(conn, RUN_ID)
    with engine.begin() as conn:  # a running task ends: an update in place, no new row
        conn.execute(sa.update(schema.tasks).where(schema.tasks.c.outcome == "running", schema.tasks.c.task_id ==
                     sa.select(sa.func.min(schema.tasks.c.task_id)).where(schema.tasks.c.outcome == "running")
                     .scalar_subquery()).values(outcome="done", ended=T0 + 59.0))
    with engine.connect() as conn:
        updated = dashboard_data.fingerprint(conn, RUN_ID)
        again = dashboard_data.fingerprint(conn, RUN_ID)
    assert len({before, inserted, updated}) == 3
    assert again == updated


def test_opener_accepts_run_dir_file_and_url(tmp_path: os.PathLike[str]) -> None:
    path = str(tmp_path / "monitoring.db")
    realistic_run(path)
    for target in (str(tmp_path), path, f"sqlite:///{path}"):
        engine = dashboard.open_store(target)
        with engine.connect() as conn:
            assert dashboard_data.list_runs(conn)[0]["run_id"] == RUN_ID
        engine.dispose()


def test_opener_refuses_what_is_not_a_store_of_this_version(tmp_path: os.PathLike[str]) -> None:
    with pytest.raises(HtexError, match=r"no monitoring store at .*monitoring\.db"):
        dashboard.open_store(str(tmp_path))
    other = str(tmp_path / "other.db")
    new_store(other)
    with sa.create_engine(f"sqlite:///{other}").begin() as conn:
        conn.execute(sa.update(schema.meta).where(schema.meta.c.key == "version").values(value="99"))
    with pytest.raises(HtexError, match=r"schema version 99.*version 1"):
        dashboard.open_store(other)
    junk = tmp_path / "junk.db"
    sa.create_engine(f"sqlite:///{junk}").connect().close()
    with pytest.raises(HtexError, match="not an htex monitoring store"):
        dashboard.open_store(str(junk))


def test_token_rule() -> None:
    assert not dashboard.needs_token("127.0.0.1")
    assert not dashboard.needs_token("::1")
    assert dashboard.needs_token("127.0.0.2")
    assert dashboard.needs_token("0.0.0.0")
    assert dashboard.needs_token("198.18.0.1")


def test_busy_share_is_the_time_workers_ran_tasks(tmp_path: os.PathLike[str]) -> None:
    engine, _ = realistic_run(str(tmp_path / "m.db"))
    s = _snapshot(engine)
    busy = s["busy"]
    # pool-c's 4 workers ran lost tasks from T0+3..6 (one more each second) to T0+20: full from 6 s to 20 s.
    t, share = busy["pool-c"]["t"], busy["pool-c"]["busy"]
    assert all(v == pytest.approx(100.0) for x, v in zip(t, share, strict=True) if 6.5 < x < 19.5)
    assert all(v == pytest.approx(0.0, abs=1e-9) for x, v in zip(t, share, strict=True) if x > 20.5)
    assert all(0.0 <= v <= 100.0 + 1e-9 for p in busy.values() for v in p["busy"])
    # The area under a pool's curve is the worker-seconds its tasks ran (a running task: up to the run's end).
    with engine.connect() as conn:
        t_ = schema.tasks.c
        rows = conn.execute(sa.select(t_.started, sa.func.coalesce(t_.ended, T0 + s["span"]))
                            .where(t_.pool_id == "pool-a", t_.started.is_not(None))).all()
    width = s["span"] / len(busy["pool-a"]["t"])
    area = sum(busy["pool-a"]["busy"]) / 100.0 * 4 * width
    assert area == pytest.approx(sum(e - st for st, e in rows), rel=1e-6)
