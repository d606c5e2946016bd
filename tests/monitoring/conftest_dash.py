"""A realistic monitoring store for the dashboard's tests, written straight into the schema's tables.

Stand-in: these rows are what the hub writes for a run (the hub is another
module, tested on its own); here they are made up so that every case the page
draws is present at once: three pools (one lost), two blocks (one cancelled),
tasks of three functions that ended done, failed with a traceback, lost,
cancelled, and some still running or queued, plus per-worker resource samples.
"""

from __future__ import annotations

import contextlib
import itertools
import math
import random
from collections.abc import Iterator
from typing import Any

import sqlalchemy as sa

from htex.monitoring import schema

RUN_ID = "run-0001"
T0 = 1_800_000_000.0  # the run's start (a fixed epoch time: the rows are the same on every machine)
FUNCS = ("simulate", "analyse", "reduce")
WORKERS = 4

_TRACEBACK = """Traceback (most recent call last):
  File "/home/user/job.py", line 12, in analyse
    return 1 / (x - x)
ZeroDivisionError: division by zero
"""


def new_store(path: str) -> sa.Engine:
    """An empty store of this schema version at ``path`` (SQLite)."""
    engine = sa.create_engine(f"sqlite:///{path}")
    schema.metadata.create_all(engine)
    with engine.begin() as conn:
        conn.execute(sa.insert(schema.meta), [{"key": "schema", "value": "htex-monitoring"},
                                              {"key": "version", "value": str(schema.SCHEMA_VERSION)}])
    return engine


class RunWriter:
    """Writes one run's rows; ``add_tasks`` can be called again later, as a live run's hub would."""

    def __init__(self, engine: sa.Engine, run_id: str = RUN_ID, seed: int = 7) -> None:
        self.engine = engine
        self.run_id = run_id
        self.rng = random.Random(seed)
        self.ids = itertools.count(1)
        self.clock = {("pool-a", w): T0 + 2.0 for w in range(WORKERS)}  # when each worker is next free
        self.clock.update({("pool-b", w): T0 + 3.0 for w in range(WORKERS)})

    def start(self, ended: float | None = None) -> None:
        with self.engine.begin() as conn:
            conn.execute(sa.insert(schema.runs).values(run_id=self.run_id, label="htex-test", run_dir="/tmp/run",
                                                       host="login1", started=T0, ended=ended))
            self._blocks(conn)
            self._pools(conn)

    def _blocks(self, conn: sa.Connection) -> None:
        rows = [("0", "4101", "running", None, T0 + 0.1, T0 + 1.5, None),
                ("1", "4102", "cancelled", "scancel by scale-in", T0 + 0.1, T0 + 2.5, T0 + 30.0)]
        for block_id, job, state, reason, requested, started, ended in rows:
            conn.execute(sa.insert(schema.blocks).values(run_id=self.run_id, block_id=block_id, job_id=job,
                                                         provider="SlurmProvider", state=state, reason=reason,
                                                         requested=requested, started=started, ended=ended))
            history = [("requested", requested), ("pending", requested + 0.3), ("running", started)]
            if ended is not None:
                history.append((state, ended))
            conn.execute(sa.insert(schema.block_states), [
                {"run_id": self.run_id, "block_id": block_id, "time": t, "state": s, "reason": None} for s, t in history])

    def _pools(self, conn: sa.Connection) -> None:
        rows = [("pool-a", "0", "node1", "active", None, T0 + 1.8, None),
                ("pool-b", "0", "node2", "active", None, T0 + 2.8, None),
                ("pool-c", "1", "node3", "lost", "missed 4 heartbeats", T0 + 2.9, T0 + 20.0)]
        for pool_id, block_id, host, state, reason, registered, ended in rows:
            conn.execute(sa.insert(schema.pools).values(
                run_id=self.run_id, pool_id=pool_id, block_id=block_id, host=host, workers=WORKERS, cores=8,
                memory_mb=16384, accelerators="[]", state=state, reason=reason, registered=registered, ended=ended))
        # pool-c's workers each ran a task that was lost with the pool.
        for w in range(WORKERS):
            self._insert(conn, FUNCS[w % 2], "lost", "pool-c", w, T0 + 3.0 + w, T0 + 20.0)

    def _insert(self, conn: sa.Connection, func: str, outcome: str, pool: str | None, worker: int | None,
                started: float | None, ended: float | None, submitted: float | None = None) -> int:
        task_id = next(self.ids)
        submitted = submitted if submitted is not None else (started - 1.0 if started else T0 + 1.0)
        failed = outcome == "failed"
        conn.execute(sa.insert(schema.tasks).values(
            run_id=self.run_id, task_id=task_id, func=func, outcome=outcome, submitted=submitted,
            dispatched=started - 0.01 if started else None, started=started, ended=ended, pool_id=pool, worker=worker,
            args_bytes=120, result_bytes=64 if outcome == "done" else None,
            exc_type="ZeroDivisionError" if failed else ("WorkerLost" if outcome == "lost" else None),
            exc_message="division by zero" if failed else ("the pool went away" if outcome == "lost" else None),
            traceback=_TRACEBACK if failed else None, retries=0))
        return task_id

    def add_tasks(self, n: int, outcome_of: Any = None) -> list[int]:
        """``n`` tasks run back to back on pools a and b; ``outcome_of(i)`` picks each outcome (default: mostly done)."""
        ids = []
        with self.engine.begin() as conn:
            for i in range(n):
                outcome = outcome_of(i) if outcome_of else ("failed" if i % 9 == 4 else "done")
                func = FUNCS[i % 3]
                slot = min(self.clock, key=lambda k: self.clock[k])
                start = self.clock[slot] + 0.05
                end = start + self.rng.uniform(0.2, 2.0) * (1 + FUNCS.index(func))
                running = outcome == "running"
                self.clock[slot] = math.inf if running else end  # a running task keeps its worker busy
                ids.append(self._insert(conn, func, outcome, slot[0], slot[1], start, None if running else end))
                self._samples(conn, slot[0], slot[1], start, end)
        return ids

    def add_unstarted(self, outcome: str, n: int) -> list[int]:
        with self.engine.begin() as conn:
            return [self._insert(conn, "reduce", outcome, None, None, None, T0 + 25.0 if outcome == "cancelled" else None,
                                 submitted=T0 + 5.0) for _ in range(n)]

    def _samples(self, conn: sa.Connection, pool: str, worker: int, start: float, end: float) -> None:
        rows = []
        t = start
        while t < end:
            rows.append({"run_id": self.run_id, "pool_id": pool, "worker": worker, "time": t,
                         "cpu_percent": self.rng.uniform(70, 100),
                         # a worker's memory grows slowly through the run, as a leaky cache would
                         "rss_bytes": int((120 + 15 * worker + 4 * (t - T0) + self.rng.uniform(0, 10)) * 2**20)})
            rows.append({"run_id": self.run_id, "pool_id": pool, "worker": -1, "time": t,
                         "cpu_percent": 1.0, "rss_bytes": 50 * 2**20})
            t += 0.5
        if rows:
            conn.execute(sa.insert(schema.resources), rows)


def realistic_run(path: str, finished: bool = True) -> tuple[sa.Engine, RunWriter]:
    """A store holding one run with every kind of row (see the module docstring)."""
    engine = new_store(path)
    writer = RunWriter(engine)
    writer.start(ended=T0 + 32.0 if finished else None)
    writer.add_tasks(60)
    writer.add_tasks(3, lambda i: "running")
    writer.add_unstarted("cancelled", 2)
    writer.add_unstarted("queued", 3)
    return engine, writer


def db_counts(engine: sa.Engine, run_id: str = RUN_ID) -> dict[str, int]:
    """Tasks per outcome, straight from the database: what the page must show."""
    with engine.connect() as conn:
        rows = conn.execute(sa.select(schema.tasks.c.outcome, sa.func.count()).where(schema.tasks.c.run_id == run_id)
                            .group_by(schema.tasks.c.outcome)).all()
    return {outcome: n for outcome, n in rows}


def started_tasks(engine: sa.Engine, run_id: str = RUN_ID) -> int:
    with engine.connect() as conn:
        return int(conn.execute(sa.select(sa.func.count()).select_from(schema.tasks).where(
            schema.tasks.c.run_id == run_id, schema.tasks.c.started.is_not(None))).scalar_one())


# ---------------------------------------------------------------------------
# The browser: Debian's Chromium (ci/browser/setup.sh), never Playwright's own download
# ---------------------------------------------------------------------------

CHROMIUM = "/usr/bin/chromium"
ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
        "--disable-background-networking", "--disable-component-update", "--disable-sync"]
DEADLINE_MS = 30_000


@contextlib.contextmanager
def chromium(profile: str) -> Iterator[Any]:
    """A headless Chromium context with a fresh profile directory, closed (its processes gone) on exit."""
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:
        context = pw.chromium.launch_persistent_context(profile, executable_path=CHROMIUM, headless=True, args=ARGS,
                                                        viewport={"width": 1400, "height": 900})
        try:
            yield context
        finally:
            context.close()


class Page:
    """A page of the dashboard, with every console error and page error it raised."""

    def __init__(self, context: Any, url: str) -> None:
        self.errors: list[str] = []
        self.page = context.new_page()
        self.page.on("console", lambda m: self.errors.append(f"console.{m.type}: {m.text}") if m.type == "error" else None)
        self.page.on("pageerror", lambda e: self.errors.append(f"pageerror: {e}"))
        self.page.goto(url)
        self.page.wait_for_selector("body[data-version]", timeout=DEADLINE_MS)

    def count(self, key: str) -> int:
        return int(self.page.text_content(f"#count-{key}") or "-1")

    def wait_count(self, key: str, n: int) -> None:
        self.page.wait_for_function("([k, n]) => document.getElementById('count-' + k).textContent === String(n)",
                                    arg=[key, n], timeout=DEADLINE_MS)

    def bars(self) -> tuple[int, int]:
        """Bars in the task stream: in Plotly's data, and drawn in the SVG."""
        data = self.page.evaluate("document.getElementById('stream').data.reduce((n, t) => n + t.x.length, 0)")
        drawn = self.page.locator("#stream g.trace.bars g.point").count()
        return data, drawn
