"""The dashboard in a real headless Chromium (Debian's, driven by Playwright): what a user sees.

Needs ``ci/browser/setup.sh`` (apt's chromium); Playwright's own browser
download is never used.  Screenshots land in docs/img/ for the README.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Iterator
from typing import Any

import pytest
import sqlalchemy as sa

from htex.monitoring import schema
from htex.monitoring.dashboard import serve_dashboard

from conftest_dash import (
    CHROMIUM,
    DEADLINE_MS,
    RUN_ID,
    T0,
    Page,
    RunWriter,
    chromium,
    db_counts,
    new_store,
    realistic_run,
    started_tasks,
)
from support import wait_for

# The README's screenshots: written to docs/img/ when HTEX_SCREENSHOTS=1, else to the test's own directory.
DOCS_IMG = os.path.join(os.path.dirname(__file__), "..", "..", "docs", "img")


def shot(tmp_path: Any, name: str) -> str:
    folder = DOCS_IMG if os.environ.get("HTEX_SCREENSHOTS") == "1" else str(tmp_path)
    os.makedirs(folder, exist_ok=True)
    return os.path.join(folder, f"dashboard-{name}.png")

pytestmark = pytest.mark.skipif(not os.path.exists(CHROMIUM),
                                reason="no chromium: run ci/browser/setup.sh (scripts/test.sh does)")


@pytest.fixture
def browser(tmp_path: Any) -> Iterator[Any]:
    with chromium(str(tmp_path / "profile")) as context:
        yield context


@pytest.fixture
def live_store(tmp_path: Any) -> tuple[str, sa.Engine, RunWriter]:
    engine, writer = realistic_run(str(tmp_path / "monitoring.db"), finished=False)
    return str(tmp_path), engine, writer


def test_page_shows_what_the_database_holds(browser: Any, live_store: tuple[str, sa.Engine, RunWriter], tmp_path: Any) -> None:
    target, engine, _ = live_store
    url, stop = serve_dashboard(target, poll=0.2)
    try:
        p = Page(browser, url)
        counts = db_counts(engine)
        for key in ("queued", "done", "failed", "lost", "cancelled"):
            assert p.count(key) == counts.get(key, 0), key
        assert p.count("running") == counts.get("running", 0) + counts.get("dispatched", 0)
        assert p.count("total") == sum(counts.values())
        assert p.bars() == (started_tasks(engine), started_tasks(engine))  # one bar per task that ran
        assert p.page.locator("#functions tbody tr").count() == 3
        assert p.page.locator("#pools tbody tr").count() == 3
        assert p.page.locator("#blocks tbody tr").count() == 2
        assert "4102" in (p.page.text_content("#blocks") or "")
        assert p.page.locator("#failures details").count() == counts["failed"] + counts["lost"]
        p.page.screenshot(path=shot(tmp_path, "overview"), full_page=True)
        p.page.locator("section.row").first.screenshot(path=shot(tmp_path, "pools"))
        first_failed = p.page.locator("#failures details", has_text="ZeroDivisionError").first
        first_failed.locator("summary").click()
        assert "Traceback (most recent call last)" in (first_failed.locator("pre").text_content() or "")
        p.page.locator("#failures").screenshot(path=shot(tmp_path, "failures"))
        assert p.errors == []
    finally:
        stop()


def test_live_updates_while_rows_are_added(browser: Any, live_store: tuple[str, sa.Engine, RunWriter], tmp_path: Any) -> None:
    """A writer thread adds tasks and ends running ones, round by round; the open page follows each round."""
    target, engine, writer = live_store
    url, stop = serve_dashboard(target, poll=0.2)
    seen = threading.Event()
    rounds: list[dict[str, int]] = []
    failures: list[BaseException] = []

    def write() -> None:
        try:
            for _ in range(3):
                writer.add_tasks(6)
                rounds.append(db_counts(engine))
                if not seen.wait(60):
                    return
                seen.clear()
            with engine.begin() as conn:  # the running tasks end: rows updated in place
                conn.execute(sa.update(schema.tasks).where(schema.tasks.c.run_id == RUN_ID,
                                                           schema.tasks.c.outcome == "running")
                             .values(outcome="done", ended=T0 + 31.0))
            rounds.append(db_counts(engine))
        except BaseException as exc:  # surfaced by the test below
            failures.append(exc)

    try:
        p = Page(browser, url)
        p.page.wait_for_selector("#live.live", timeout=DEADLINE_MS)
        before = p.count("done")
        thread = threading.Thread(target=write, name="store-writer")
        thread.start()
        for i in range(4):
            _wait_rounds(rounds, i + 1)  # the writer's round i is in the database...
            p.wait_count("done", rounds[i]["done"])  # ...and the page shows it, pushed by the event stream
            p.wait_count("failed", rounds[i].get("failed", 0))
            seen.set()
        thread.join(60)
        assert not failures, failures
        assert p.count("done") > before and p.count("running") == 0
        assert p.bars()[0] == started_tasks(engine)
        p.page.screenshot(path=shot(tmp_path, "live"), full_page=False)
        assert p.errors == []
    finally:
        seen.set()
        stop()


def _wait_rounds(rounds: list[Any], n: int) -> None:
    wait_for(lambda: len(rounds) >= n, timeout=60, what=f"the writer's round {n}")


def test_stream_zooms(browser: Any, live_store: tuple[str, sa.Engine, RunWriter], tmp_path: Any) -> None:
    target, _, _ = live_store
    url, stop = serve_dashboard(target, poll=0.2)
    try:
        p = Page(browser, url)
        full = p.page.evaluate("document.getElementById('stream')._fullLayout.xaxis.range.slice()")
        box = p.page.locator("#stream .nsewdrag").first.bounding_box()
        assert box is not None
        y = box["y"] + box["height"] / 2
        p.page.mouse.move(box["x"] + box["width"] * 0.3, y)
        p.page.mouse.down()
        p.page.mouse.move(box["x"] + box["width"] * 0.5, y, steps=5)
        p.page.mouse.up()
        p.page.wait_for_function("([a, b]) => { const r = document.getElementById('stream')._fullLayout.xaxis.range;"
                                 " return r[1] - r[0] < (b - a) / 2; }", arg=full, timeout=DEADLINE_MS)
        p.page.locator("#stream").screenshot(path=shot(tmp_path, "stream-zoomed"))
        assert p.errors == []
    finally:
        stop()


def test_off_loopback_page_works_with_the_printed_url_only(browser: Any,
                                                           live_store: tuple[str, sa.Engine, RunWriter]) -> None:
    target, engine, _ = live_store
    url, stop = serve_dashboard(target, host="127.0.0.2", poll=0.2)
    try:
        base = url.split("?")[0]
        refused = browser.new_page()
        response = refused.goto(base)
        assert response is not None and response.status == 401
        refused.close()
        p = Page(browser, url)  # the token URL: the page and its own requests (by the cookie) get in
        assert p.count("done") == db_counts(engine)["done"]
        p.page.wait_for_selector("#live.live", timeout=DEADLINE_MS)
        assert p.errors == []
    finally:
        stop()


def test_a_store_of_several_runs_offers_each(browser: Any, live_store: tuple[str, sa.Engine, RunWriter]) -> None:
    target, engine, _ = live_store
    later = RunWriter(engine, run_id="run-0002", seed=3)
    with engine.begin() as conn:
        conn.execute(sa.insert(schema.runs).values(run_id="run-0002", label="second", started=T0 + 100.0))
    later.add_tasks(5, lambda i: "done")
    url, stop = serve_dashboard(target, poll=0.2)
    try:
        p = Page(browser, url)
        assert p.page.locator("#run-select option").count() == 2
        assert p.count("total") == 5  # the latest run first
        p.page.select_option("#run-select", "run-0001")
        p.wait_count("total", sum(db_counts(engine).values()))
        assert "run=run-0001" in p.page.url
        assert p.errors == []
    finally:
        stop()


def test_an_empty_store_waits_for_its_first_run(browser: Any, tmp_path: Any) -> None:
    """The executor may serve the page before the hub wrote anything: the page waits, then shows the run."""
    engine = new_store(str(tmp_path / "monitoring.db"))
    url, stop = serve_dashboard(str(tmp_path), poll=0.2)
    try:
        page = browser.new_page()
        errors: list[str] = []
        page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
        page.on("pageerror", lambda e: errors.append(str(e)))
        page.goto(url)
        page.wait_for_function("() => document.getElementById('run-label').textContent.includes('no run')",
                               timeout=DEADLINE_MS)
        writer = RunWriter(engine)
        writer.start()
        writer.add_tasks(4, lambda i: "done")
        page.wait_for_function("() => document.getElementById('count-done').textContent === '4'", timeout=DEADLINE_MS)
        assert errors == []
    finally:
        stop()
        engine.dispose()
