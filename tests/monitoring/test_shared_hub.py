"""A hub that runs already (``python -m htex.monitoring.hub``), shared by runs, encrypted with its own
keys: an executor with ``Monitoring(start_hub=False, ...)`` reports to it; a sender without the key is
refused.  Real hub process, real CURVE handshakes over TCP."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
from collections.abc import Iterator
from typing import Any

import pytest
import sqlalchemy as sa

from htex import Monitoring, security
from htex.monitoring import events as ev
from htex.monitoring import schema
from htex.monitoring.sender import EventSender
from htex.monitoring.store import open_store

import tasks
from support import wait_for

pytestmark = pytest.mark.timeout(120)


@pytest.fixture
def shared_hub(tmp_path: Any) -> Iterator[tuple[str, int, str]]:
    keys = str(tmp_path / "hub-keys")
    security.make_keys(keys)
    db = str(tmp_path / "shared.db")
    hub = subprocess.Popen([sys.executable, "-m", "htex.monitoring.hub", "--url", db, "--cert-dir", keys],
                           stdout=subprocess.PIPE, text=True)
    assert hub.stdout is not None
    port = int(json.loads(hub.stdout.readline())["port"])
    yield db, port, keys
    hub.send_signal(signal.SIGTERM)
    assert hub.wait(30) == 0
    hub.stdout.close()


def _column(db: str, run_id: str, column: sa.Column[Any]) -> list[Any]:
    engine = open_store(db)
    try:
        with engine.connect() as conn:
            return list(conn.execute(sa.select(column).where(column.table.c.run_id == run_id)).scalars())
    finally:
        engine.dispose()


def test_an_executor_reports_to_a_running_encrypted_hub(make_executor: Any, shared_hub: tuple[str, int, str],
                                                        tmp_path: Any) -> None:
    db, port, keys = shared_hub
    stranger_keys = str(tmp_path / "stranger-keys")
    security.make_keys(stranger_keys)
    stranger = EventSender(f"tcp://127.0.0.1:{port}", "stranger", "stranger", stranger_keys, flush_period=0.05)
    stranger.start()
    stranger.emit(ev.TaskSubmitted(1, 1.0, "evil", 1, None))

    ex = make_executor(monitoring=Monitoring(start_hub=False, hub_address="127.0.0.1", hub_port=port,
                                             hub_cert_dir=keys))
    assert (ex.hub_address, ex.hub_port) == ("127.0.0.1", port)
    futures = [ex.submit(tasks.add, {}, i, 1) for i in range(10)]
    assert [f.result(60) for f in futures] == [i + 1 for i in range(10)]
    run_id = ex._monitoring.run_id
    ex.shutdown()
    outcomes = schema.tasks.c.outcome
    wait_for(lambda: sorted(_column(db, run_id, outcomes)) == ["done"] * 10, 30, what="the run's rows in the shared store")
    # The pool reported too (it holds the hub's keys through HTEX_MONITOR_CERT_DIR): its own description.
    wait_for(lambda: _column(db, run_id, schema.pools.c.workers) == [ex.max_workers], 30, what="the pool's row")
    stranger.stop()
    assert not stranger.connected and stranger.dropped == 1
    assert _column(db, "stranger", schema.tasks.c.outcome) == []
