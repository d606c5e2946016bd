"""Issue 13, point 2: Parsl's monitoring on htex.parsl, configured as every Parsl user does.

``MonitoringHub`` and no radio: the default radio brings the tasks' messages
back with their results; pools and blocks reach the hub.  A small workflow
fills Parsl's ``monitoring.db``; then ``parsl-visualize`` serves it and a real
headless Chromium (Debian's, driven by Playwright; set up by ci/parsl/setup.sh)
loads its pages.
"""

from __future__ import annotations

import os
import socket
import sqlite3
import subprocess
import sys
from multiprocessing import resource_tracker
from typing import Any

import pytest

pytest.importorskip("parsl.monitoring.db_manager", reason="Parsl is not installed (pip install htex[parsl])")
pytest.importorskip("sqlalchemy", reason="Parsl's monitoring needs htex[parsl-monitoring]")

from parsl.monitoring import MonitoringHub
from parsl_tasks import add, fail, sleep_for

from support import wait_for

pytestmark = pytest.mark.timeout(120)

_HERE = os.path.dirname(os.path.abspath(__file__))
os.environ["PYTHONPATH"] = os.pathsep.join(p for p in (_HERE, os.environ.get("PYTHONPATH")) if p)
CHROMIUM = "/usr/bin/chromium"
# MonitoringHub's multiprocessing queues start this process's resource tracker, which lives as long as
# the process: start it now, so the no_leaks fixture sees it as there before the tests.
resource_tracker.ensure_running()
TABLES = ("workflow", "task", "try", "status", "resource", "node", "block")


def _rows(db: str, sql: str) -> list[tuple[Any, ...]]:
    with sqlite3.connect(db) as conn:
        return conn.execute(sql).fetchall()


@pytest.fixture
def monitored_run(load_dfk: Any, tmp_path: Any) -> tuple[str, str]:
    """Run a small workflow under MonitoringHub (no radio given); return (monitoring.db, run_id)."""
    run_dir = tmp_path / "runinfo"
    dfk = load_dfk(monitoring=MonitoringHub(resource_monitoring_interval=0.2, workflow_name="htex-monitored"),
                   run_dir=str(run_dir))
    assert [add(i, 1).result(timeout=60) for i in range(4)] == [1, 2, 3, 4]
    assert sleep_for(0.6).result(timeout=60) == 0.6  # long enough for intermediate resource messages
    with pytest.raises(ValueError, match="on purpose"):
        fail("on purpose").result(timeout=60)
    run_id = dfk.run_id
    dfk.cleanup()
    return str(run_dir / "monitoring.db"), run_id


def test_monitoring_hub_without_radio_fills_every_table(monitored_run: tuple[str, str]) -> None:
    db, run_id = monitored_run
    for table in TABLES:
        assert _rows(db, f"SELECT COUNT(*) FROM \"{table}\" WHERE run_id = '{run_id}'")[0][0] > 0, table
    # Every try ran (the worker's first message) and returned; the failed one is recorded as failed.
    tries = _rows(db, f"SELECT task_id, task_try_time_running, block_id, hostname FROM try WHERE run_id = '{run_id}'")
    assert len(tries) == 6 and all(t[1] is not None and t[2] == "0" for t in tries)
    states = {s for (s,) in _rows(db, f"SELECT task_status_name FROM status WHERE run_id = '{run_id}'")}
    assert {"launched", "running", "exec_done", "failed"} <= states
    # Resource rows of the sleeping task: an intermediate one and the final one.
    sleep_task = _rows(db, f"SELECT task_id FROM task WHERE run_id = '{run_id}' AND task_func_name = 'sleep_for'")[0][0]
    assert _rows(db, f"SELECT COUNT(*) FROM resource WHERE run_id = '{run_id}' AND task_id = {sleep_task}")[0][0] >= 2
    # The pool: its host's facts, its workers, registered then gone.
    nodes = _rows(db, f"SELECT hostname, block_id, cpu_count, total_memory, worker_count, active FROM node "
                      f"WHERE run_id = '{run_id}'")
    assert nodes[0][:5] == (socket.gethostname(), "0", os.cpu_count(), nodes[0][3], 2) and nodes[0][3] > 0
    assert nodes[0][5] == 1
    blocks = [s for (s,) in _rows(db, f"SELECT status FROM block WHERE run_id = '{run_id}' ORDER BY timestamp")]
    assert blocks[0] in ("PENDING", "RUNNING") and blocks[-1] in ("CANCELLED", "COMPLETED")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.mark.timeout(180)
def test_parsl_visualize_shows_tasks_and_nodes_in_chromium(monitored_run: tuple[str, str], tmp_path: Any) -> None:
    """parsl-visualize's pages, loaded by a real Chromium (Debian's), show the workflow's tasks and nodes.

    parsl-visualize has no page for blocks (the block table is only in the database, checked above).
    """
    playwright = pytest.importorskip("playwright.sync_api", reason="Playwright is not installed (htex[test])")
    if not os.path.exists(CHROMIUM):
        pytest.skip(f"{CHROMIUM} is missing: ci/parsl/setup.sh installs Debian's chromium and failed here")
    db, run_id = monitored_run
    port = _free_port()
    server = subprocess.Popen(
        [os.path.join(os.path.dirname(sys.executable), "parsl-visualize"), f"sqlite:///{db}", "-p", str(port),
         "-l", "127.0.0.1"], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
    )
    try:
        wait_for(lambda: _listening(port), timeout=30, what="parsl-visualize to listen")
        with playwright.sync_playwright() as pw:
            # A fresh profile directory (Playwright's persistent context is how it takes one).
            context = pw.chromium.launch_persistent_context(
                str(tmp_path / "chromium-profile"), executable_path=CHROMIUM, headless=True, args=[
                    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                    "--disable-background-networking", "--disable-component-update", "--disable-sync"])
            context.route("**/*", _offline)
            try:
                _check_pages(context.new_page(), f"http://127.0.0.1:{port}", run_id, tmp_path)
            finally:
                context.close()
    finally:
        server.terminate()
        server.wait(timeout=30)


def _offline(route: Any) -> None:
    """No internet here: parsl-visualize's pages load plotly.js and Bootstrap from CDNs.

    plotly.js is served from the copy the plotly package ships (the same library, a local
    stand-in for the CDN); the other CDN files (styles, jQuery) are refused at once.
    """
    url = route.request.url
    if url.startswith("http://127.0.0.1:"):
        route.continue_()
    elif url.endswith("/plotly-latest.min.js"):
        import plotly

        route.fulfill(path=os.path.join(os.path.dirname(plotly.__file__), "package_data", "plotly.min.js"),
                      content_type="application/javascript")
    else:
        route.abort()


def _listening(port: int) -> bool:
    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) == 0


def _check_pages(page: Any, base: str, run_id: str, tmp_path: Any) -> None:
    page.goto(f"{base}/", timeout=60_000)
    assert "htex-monitored" in page.inner_text("body")
    page.goto(f"{base}/workflow/{run_id}/", timeout=60_000)
    body = page.inner_text("body")
    assert "htex-monitored" in body
    for app in ("add", "sleep_for", "fail"):
        assert app in body
    page.goto(f"{base}/workflow/{run_id}/task/", timeout=60_000)
    assert page.locator("a[href*='/task/']").count() >= 6  # one link per task
    # A task's page: the states the worker reported (running) and the end.
    page.goto(f"{base}/workflow/{run_id}/task/0", timeout=60_000)
    body = page.inner_text("body")
    assert "running" in body and "exec_done" in body
    # Resource usage: the plots drawn from the node table (total CPU cores, total workers).
    page.goto(f"{base}/workflow/{run_id}/resource_usage", timeout=60_000)
    page.wait_for_selector(".legendtext", timeout=60_000)  # plotly.js drew the plots
    legends = set(page.locator(".legendtext").all_text_contents())
    assert {"Total CPU cores", "Total of workers in whole run"} <= legends
    page.screenshot(path=str(tmp_path / "resource_usage.png"), full_page=True)


def test_a_radio_given_still_gets_nodes_and_blocks(load_dfk: Any, tmp_path: Any) -> None:
    """With a radio of Parsl's (here the filesystem one), pools and blocks reach the hub too."""
    from parsl.monitoring.radios.filesystem import FilesystemRadio

    run_dir = tmp_path / "runinfo"
    dfk = load_dfk(dict(remote_monitoring_radio=FilesystemRadio()), run_dir=str(run_dir),
                   monitoring=MonitoringHub(resource_monitoring_interval=0))
    assert add(1, 2).result(timeout=60) == 3
    run_id = dfk.run_id
    dfk.cleanup()
    db = str(run_dir / "monitoring.db")
    for table in ("task", "try", "node", "block"):
        assert _rows(db, f"SELECT COUNT(*) FROM \"{table}\" WHERE run_id = '{run_id}'")[0][0] > 0, table
    tries = _rows(db, f"SELECT task_try_time_running FROM try WHERE run_id = '{run_id}'")
    assert tries[0][0] is not None  # the worker's message came through Parsl's radio


class _OneRemotePool:
    """Stands in for a running executor whose one pool is on another host (no second host runs here)."""

    blocks = {"0": "job-0"}

    def __init__(self) -> None:
        from htex.providers.base import JobState, JobStatus

        self.managers = [{"manager": "m1", "hostname": "node-b", "block_id": "0", "worker_count": 8,
                          "python_version": "3.11.7", "last_heartbeat": 1.0}]
        self.statuses = {"0": JobStatus(JobState.RUNNING)}

    @property
    def connected_managers(self) -> list[dict[str, Any]]:
        return self.managers

    def status(self) -> dict[str, Any]:
        return self.statuses


def test_reporter_remote_pool_facts_and_pools_seen_only_through_results() -> None:
    import queue

    from parsl.monitoring.message_type import MessageType

    from htex.parsl_monitoring import Monitored, NodeFacts, Reporter

    q: queue.Queue[Any] = queue.Queue()
    htex = _OneRemotePool()
    reporter = Reporter(q, htex, "run", "label", interval=3600)
    reporter.poll()
    node, block = q.get_nowait(), q.get_nowait()
    assert node[0] is MessageType.NODE_INFO and node[1]["hostname"] == "node-b" and node[1]["cpu_count"] == 0
    assert block == (MessageType.BLOCK_INFO, [block[1][0]]) and block[1][0]["status"] == "RUNNING"
    assert block[1][0]["job_id"] == "job-0"
    # Its facts arrive with a result: the node is reported again, right.
    reporter.deliver(Monitored(5, ["a message"], NodeFacts("m1", "0", "node-b", 8, "3.11.7", 64, 2**38)))
    assert q.get_nowait() == "a message"
    again = q.get_nowait()[1]
    assert (again["uid"], again["cpu_count"], again["total_memory"]) == ("m1", 64, 2**38)
    # A pool no poll saw (it came and went between two) is reported from its facts.
    reporter.deliver(Monitored(5, [], NodeFacts("m2", "1", "node-c", 4, "3.11.7", 16, 2**36)))
    row = q.get_nowait()[1]
    assert (row["uid"], row["block_id"], row["worker_count"], row["cpu_count"]) == ("m2", "1", 4, 16)
    # Nothing changed: a poll reports nothing.  Pools gone: each reported once, inactive.
    htex.managers.append({**htex.managers[0], "manager": "m2", "hostname": "node-c", "block_id": "1"})
    reporter.poll()
    assert q.empty()
    htex.managers = []
    reporter.poll()
    gone = [q.get_nowait()[1] for _ in range(2)]
    assert sorted((g["uid"], g["active"]) for g in gone) == [("m1", False), ("m2", False)] and q.empty()
