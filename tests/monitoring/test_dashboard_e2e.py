"""End to end: a real executor with monitoring on, its store, the dashboard in Chromium showing it.

Needs the monitoring hub (``htex.monitoring.store``, ``HighThroughputExecutor(monitoring=...)``),
built on another branch: until both are merged this module skips, saying so.
"""

from __future__ import annotations

import glob
import os
from collections.abc import Iterator
from typing import Any

import pytest
import sqlalchemy as sa

from htex.monitoring import schema

store = pytest.importorskip("htex.monitoring.store", reason="needs the monitoring hub (branch mon): runs once merged")
config = pytest.importorskip("htex.monitoring.config", reason="needs the monitoring hub (branch mon): runs once merged")

from htex.monitoring.dashboard import serve_dashboard  # noqa: E402

from conftest_dash import CHROMIUM, DEADLINE_MS, Page, chromium  # noqa: E402
from support import wait_for  # noqa: E402
from tasks import add, fail  # noqa: E402

N_OK, N_FAIL = 20, 3


@pytest.fixture
def browser(tmp_path: Any) -> Iterator[Any]:
    if not os.path.exists(CHROMIUM):
        pytest.skip("no chromium: run ci/browser/setup.sh (scripts/test.sh does)")
    with chromium(str(tmp_path / "profile")) as context:
        yield context


def _counts(engine: sa.Engine) -> dict[str, int]:
    with engine.connect() as conn:
        rows = conn.execute(sa.select(schema.tasks.c.outcome, sa.func.count()).group_by(schema.tasks.c.outcome))
        return {outcome: n for outcome, n in rows}


@pytest.mark.timeout(240)
def test_a_monitored_run_on_the_dashboard(make_executor: Any, run_dir: str, browser: Any) -> None:
    ex = make_executor(monitoring=config.Monitoring(resource_period=0.5, flush_period=0.1))
    futures = [ex.submit(add, {}, i, 1) for i in range(N_OK)] + [ex.submit(fail, {}, "boom") for _ in range(N_FAIL)]
    for f in futures:
        f.exception(timeout=120)
    [db] = glob.glob(os.path.join(run_dir, "**", "monitoring.db"), recursive=True)
    engine = store.open_store(db)
    try:
        wait_for(lambda: _counts(engine) == {"done": N_OK, "failed": N_FAIL}, timeout=60, what="every task's row")
        url, stop = serve_dashboard(db, poll=0.2)
        try:
            page = Page(browser, url)
            page.wait_count("done", N_OK)
            assert page.count("failed") == N_FAIL
            assert page.bars()[0] == N_OK + N_FAIL
            failures = page.page.locator("#failures summary").all_text_contents()
            assert len(failures) == N_FAIL and all("ValueError" in f and "boom" in f for f in failures), failures
            page.page.wait_for_selector("#pools tbody tr[data-pool]", timeout=DEADLINE_MS)
            assert page.errors == []
        finally:
            stop()
    finally:
        engine.dispose()
