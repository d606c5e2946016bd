"""End to end: a real executor with monitoring on, its store, the dashboard in Chromium showing it.

Also ``Monitoring(dashboard=True)``: the executor serves the page itself.
"""

from __future__ import annotations

import glob
import os
from collections.abc import Iterator
from typing import Any

import pytest
import sqlalchemy as sa

from htex.monitoring import config, schema, store
from htex.monitoring.dashboard import serve_dashboard

from conftest_dash import CHROMIUM, DEADLINE_MS, Page, chromium
from support import wait_for
from tasks import add, fail

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


@pytest.mark.timeout(240)
def test_the_executor_serves_its_own_dashboard(make_executor: Any, browser: Any) -> None:
    """Monitoring(dashboard=True): ex.dashboard_url is a live page of this run, gone at shutdown."""
    ex = make_executor(monitoring=config.Monitoring(flush_period=0.1, dashboard=True))
    url = ex.dashboard_url
    assert url is not None and url.startswith("http://127.0.0.1:"), url
    futures = [ex.submit(add, {}, i, 1) for i in range(N_OK)]
    assert [f.result(timeout=120) for f in futures] == [i + 1 for i in range(N_OK)]
    page = Page(browser, url)
    page.wait_count("done", N_OK)
    ex.shutdown()
    assert ex.dashboard_url is not None  # still says where it was; the server itself is stopped
    import urllib.error
    import urllib.request

    with pytest.raises(urllib.error.URLError):
        urllib.request.urlopen(url, timeout=5)
