"""The monitoring store: a database of the schema in ``schema.py``, written by the hub, read by anyone.

* ``open_store(target)``: for readers (the dashboard, your own queries): a run
  directory, a ``.db`` path or any SQLAlchemy URL, opened read-only (SQLite) and
  checked: a store of another schema version, or a database that is not one,
  raises ``StoreVersionMismatch`` / ``MonitoringError`` naming what it found.
* ``Store``: the hub's writer.  It creates the tables in an empty database,
  refuses a foreign one the same way, and resumes appending to its own.

Events from different processes arrive in any order (each sender flushes on
its own timer), so rows are upserted with rules that do not care: a column
keeps the latest value that is not NULL, and a task's ``outcome`` only moves
forward (queued < dispatched < running < an ending), unless the task was sent
again (more ``retries``).  SQLite stores are in WAL mode, so readers never
block the hub.
"""

from __future__ import annotations

import json
import operator
import os
from collections.abc import Iterable
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql, sqlite

from ..errors import MonitoringError, StoreVersionMismatch
from . import events as ev
from .schema import SCHEMA_VERSION, block_states, blocks, meta, metadata, pools, resources, runs, tasks

__all__ = ["DB_NAME", "SCHEMA_NAME", "Store", "check_store", "open_store", "store_url"]

DB_NAME = "monitoring.db"  # in the run directory, by default
SCHEMA_NAME = "htex-monitoring"  # htex_meta's "schema": tells our store from another program's

_TASK_RANK = {"queued": 0, "dispatched": 1, "running": 2, "done": 3, "failed": 3, "lost": 3, "cancelled": 3}
_POOL_RANK = {"active": 0, "draining": 1, "lost": 2, "gone": 2}
_ENDED = frozenset(("done", "failed", "lost", "cancelled"))
_BLOCK_RANK = {"requested": 0, "pending": 1, "running": 2, "ended": 3, "failed": 3, "cancelled": 3}
_COLUMNS = {t.name: list(t.columns.keys()) for t in metadata.sorted_tables}


def store_url(target: str) -> str:
    """A SQLAlchemy URL for a run directory (its monitoring.db), a database file, or a URL (as is)."""
    if "://" in target:
        return target
    path = os.path.join(target, DB_NAME) if os.path.isdir(target) else target
    return f"sqlite:///{os.path.abspath(path)}"


def open_store(target: str) -> sa.Engine:
    """An engine on an existing store, read-only for SQLite; raises if it is not an htex store of our version.

    ``target``: a run directory, a ``.db`` file, or a SQLAlchemy URL.
    """
    url = store_url(target)
    if url.startswith("sqlite:///"):
        path = url[len("sqlite:///"):]
        if not os.path.exists(path):
            raise MonitoringError(f"no monitoring store at {path}: was the run started with monitoring=True?")
        engine = sa.create_engine(f"sqlite:///file:{path}?mode=ro&uri=true")
    else:
        engine = sa.create_engine(url)
    try:
        with engine.connect() as conn:
            if not check_version(conn, url):
                raise MonitoringError(f"{_safe(url)} is empty: not an htex monitoring store (no htex_meta table)")
    except BaseException:
        engine.dispose()
        raise
    return engine


def check_store(url: str) -> None:
    """Raise if ``url`` holds a database that is not an htex store of our version (empty or ours: fine)."""
    engine = sa.create_engine(url)
    try:
        with engine.connect() as conn:
            check_version(conn, url)
    finally:
        engine.dispose()


def check_version(conn: sa.Connection, url: str) -> bool:
    """True if this is our store at our version; False if the database is empty; raises otherwise."""
    names = sa.inspect(conn).get_table_names()
    if meta.name not in names:
        if names:
            raise MonitoringError(
                f"{_safe(url)} is not an htex monitoring store: it has tables {sorted(names)[:5]} but no "
                f"{meta.name}; give another database or file"
            )
        return False
    found: dict[str, str] = {row[0]: row[1] for row in conn.execute(sa.select(meta.c.key, meta.c.value))}
    if found.get("schema") != SCHEMA_NAME:
        raise MonitoringError(f"{_safe(url)} is not an htex monitoring store ({meta.name}.schema = "
                              f"{found.get('schema')!r}); give another database or file")
    version = found.get("version")
    if version != str(SCHEMA_VERSION):
        raise StoreVersionMismatch(
            f"{_safe(url)} is an htex monitoring store of schema version {version}; this htex reads and writes "
            f"version {SCHEMA_VERSION}. Use the htex that wrote it, or give another database or file",
            found=version, expected=SCHEMA_VERSION,
        )
    return True


def _safe(url: str) -> str:
    """The URL without its password, for messages."""
    try:
        return sa.make_url(url).render_as_string(hide_password=True)
    except Exception:
        return "the store"


def _private_file(url: str) -> None:
    """A new SQLite store is the run's user's alone (0600; SQLite gives its -wal and -shm files the same
    mode): tracebacks and exception messages may say more than the user wants others to read."""
    if url.startswith("sqlite:///") and ":memory:" not in url:
        path = url[len("sqlite:///"):]
        if not os.path.exists(path):
            os.close(os.open(path, os.O_WRONLY | os.O_CREAT, 0o600))


def _engine(url: str) -> sa.Engine:
    engine = sa.create_engine(url)
    if engine.dialect.name == "sqlite":
        @sa.event.listens_for(engine, "connect")
        def _wal(dbapi_conn: Any, _record: Any) -> None:
            cur = dbapi_conn.cursor()
            cur.execute("PRAGMA journal_mode=WAL")  # readers (the dashboard) never block the hub
            cur.execute("PRAGMA synchronous=NORMAL")  # safe in WAL; a lost commit is a few events
            cur.execute("PRAGMA busy_timeout=10000")
            cur.close()
    return engine


class Store:
    """The hub's writer: ``write(batch)`` applies one batch of events in one transaction."""

    def __init__(self, url: str) -> None:
        self.url = url
        _private_file(url)
        self.engine = _engine(url)
        if self.engine.dialect.name not in ("sqlite", "postgresql"):
            raise MonitoringError(f"monitoring stores are SQLite or PostgreSQL; {_safe(url)} is "
                                  f"{self.engine.dialect.name}")
        self._insert = sqlite.insert if self.engine.dialect.name == "sqlite" else postgresql.insert
        with self.engine.begin() as conn:
            if not check_version(conn, url):
                metadata.create_all(conn)
                conn.execute(meta.insert(), [{"key": "schema", "value": SCHEMA_NAME},
                                             {"key": "version", "value": str(SCHEMA_VERSION)}])
        self._resource_insert = _Prepared(resources.insert(), self.engine.dialect)
        self._state_insert = _Prepared(block_states.insert(), self.engine.dialect)
        self._task_upsert = self._upsert(tasks, ("run_id", "task_id"), _TASK_RANK, "outcome", ("submitted",))
        self._pool_upsert = self._upsert(pools, ("run_id", "pool_id"), _POOL_RANK, "state", ("registered",))
        self._block_upsert = self._upsert(blocks, ("run_id", "block_id"), _BLOCK_RANK, "state",
                                          ("requested", "started"))
        self._run_upsert = self._upsert(runs, ("run_id",), None, None, ("started",))
        self._pending: dict[str, _Rows] = {}
        self.pending = 0  # events merged and not yet written
        self._held: set[tuple[str, int]] = set()  # (run, task) rows held back by the last flush

    def close(self) -> None:
        self.engine.dispose()

    def _upsert(self, table: sa.Table, keys: tuple[str, ...], rank: dict[str, int] | None, state: str | None,
                first_wins: tuple[str, ...]) -> _Prepared:
        ins = self._insert(table)
        new, old = ins.excluded, table.c
        least = sa.func.min if self.engine.dialect.name == "sqlite" else sa.func.least  # both: of two values
        set_: dict[str, Any] = {}
        for col in table.columns:
            if col.name in keys:
                continue
            latest = sa.func.coalesce(new[col.name], old[col.name])
            if col.name in first_wins:  # the earliest time, whichever event came first
                set_[col.name] = least(latest, sa.func.coalesce(old[col.name], new[col.name]))
            else:
                set_[col.name] = latest
        if rank is not None and state is not None:
            new_rank, old_rank = _rank_of(rank, new[state]), _rank_of(rank, old[state])
            forward = new_rank > old_rank
            if "reason" in table.c:  # the reason goes with its state
                set_["reason"] = sa.case((new_rank >= old_rank, set_["reason"]), else_=old.reason)
            if table is tasks:  # a task sent again starts over
                again = new.retries > old.retries
                set_[state] = sa.case((again, new[state]), (forward, new[state]), else_=old[state])
                set_["retries"] = sa.case((again, new.retries), else_=old.retries)
            else:
                set_[state] = sa.case((forward, new[state]), else_=old[state])
        return _Prepared(ins.on_conflict_do_update(index_elements=list(keys), set_=set_), self.engine.dialect)

    def add(self, run_id: str, batch: Iterable[Any]) -> None:
        """Merge events into the rows waiting to be written (``flush``): a task's submission, dispatch,
        start and end seen within one flush become one upsert."""
        rows = self._pending.get(run_id)
        if rows is None:
            rows = self._pending[run_id] = _Rows(run_id)
        for event in batch:
            rows.add(event)
            self.pending += 1

    @property
    def waiting(self) -> bool:
        """Something is to be written: events merged, or rows held back (``flush(hold=True)``)."""
        return bool(self.pending or self._held)

    def flush(self, hold: bool = False) -> None:
        """Write what ``add`` merged, in one transaction.

        ``hold``: keep back, for one more flush, the rows of tasks that have not ended and were not held
        already.  A task that ends before the next flush then costs one write, not two (the write is most
        of the hub's work); one that runs longer is written as it is then."""
        pending, self._pending, self.pending = self._pending, {}, 0
        held, self._held = self._held, set()
        if hold:
            self._hold_back(pending, held)
        if pending:
            with self.engine.begin() as conn:
                for rows in pending.values():
                    self._write(conn, rows)

    def _hold_back(self, pending: dict[str, _Rows], held: set[tuple[str, int]]) -> None:
        for run_id, rows in pending.items():
            keep = [tid for tid, row in rows.tasks.items() if row["outcome"] not in _ENDED and (run_id, tid) not in held]
            if keep:
                later = self._pending[run_id] = _Rows(run_id)
                for tid in keep:
                    later.tasks[tid] = rows.tasks.pop(tid)
                self._held.update((run_id, tid) for tid in keep)

    def write(self, run_id: str, batch: Iterable[Any]) -> None:
        self.add(run_id, batch)
        self.flush()

    def _write(self, conn: sa.Connection, rows: _Rows) -> None:
        for stmt, values in ((self._run_upsert, rows.runs.values()), (self._task_upsert, rows.tasks.values()),
                             (self._pool_upsert, rows.pools.values()), (self._block_upsert, rows.blocks.values()),
                             (self._state_insert, rows.block_states), (self._resource_insert, rows.resources)):
            if values:
                stmt.execute(conn, values)


class _Prepared:
    """A statement compiled once to the driver's SQL, run with plain parameter tuples (or dicts).

    SQLAlchemy builds each row's parameters in Python (~60 us a row for the task upsert, whose CASEs
    carry 30 constants); the driver's executemany does it in C: about 15 times faster, which is what
    lets one hub keep up with a thousand pools.
    """

    def __init__(self, stmt: Any, dialect: sa.Dialect) -> None:
        compiled = stmt.compile(dialect=dialect)
        self.sql = compiled.string
        columns = list(stmt.table.columns.keys())
        self.constants = {k: v for k, v in compiled.params.items() if k not in columns}
        self.order: list[str] | None = list(compiled.positiontup) if compiled.positional else None
        # The usual layout (SQLite): the row's columns in table order, then only constants: a row's
        # parameters are its columns (one C call) plus a fixed tail.
        self.tail: tuple[Any, ...] | None = None
        self.columns = operator.itemgetter(*columns)
        if self.order is not None and self.order[:len(columns)] == columns:
            self.tail = tuple(self.constants[k] for k in self.order[len(columns):])

    def execute(self, conn: sa.Connection, rows: Iterable[dict[str, Any]]) -> None:
        consts, order, tail = self.constants, self.order, self.tail
        if tail is not None:
            params = list(map(self.columns, rows)) if not tail else [(*self.columns(r), *tail) for r in rows]
            conn.exec_driver_sql(self.sql, params)
        elif order is None:
            conn.exec_driver_sql(self.sql, [{**consts, **r} for r in rows])
        else:
            conn.exec_driver_sql(self.sql, [tuple(r[k] if k in r else consts[k] for k in order) for r in rows])


class _Rows:
    """One batch of events as rows, merged by key in Python first (the same rules as the SQL upsert), so
    no statement touches a row twice (PostgreSQL refuses that in one INSERT ... ON CONFLICT)."""

    def __init__(self, run_id: str) -> None:
        self.run_id = run_id
        self.runs: dict[str, dict[str, Any]] = {}
        self.tasks: dict[int, dict[str, Any]] = {}
        self.pools: dict[str, dict[str, Any]] = {}
        self.blocks: dict[str, dict[str, Any]] = {}
        self.block_states: list[dict[str, Any]] = []
        self.resources: list[dict[str, Any]] = []
        self._task_row: dict[str, Any] = {**dict.fromkeys(_COLUMNS["tasks"]), "run_id": run_id, "retries": 0}

    def add(self, e: Any) -> None:
        kind = type(e)
        if kind is ev.TasksSubmittedPacked:
            flat, funcs, tasks = ev.unpack_rows(e), e.funcs, self.tasks
            for f_id, f_time, f_size, f_func, f_prio in zip(flat[0::5], flat[1::5], flat[2::5], flat[3::5], flat[4::5],
                                                            strict=True):
                # a NaN priority (f_prio != f_prio): none
                tid, values = int(f_id), (f_time, funcs[int(f_func)], int(f_size), None if f_prio != f_prio else f_prio)
                if tid in tasks:
                    self._task_fast(tid, "queued", dict(zip(("submitted", "func", "args_bytes", "priority"), values,
                                                            strict=True)))
                else:  # the usual case: the submission comes first
                    row = tasks[tid] = self._task_row.copy()
                    row["task_id"], row["outcome"] = tid, "queued"
                    row["submitted"], row["func"], row["args_bytes"], row["priority"] = values
        elif kind is ev.TasksDonePacked:
            flat = ev.unpack_rows(e)
            for f_id, f_time, f_size in zip(flat[0::3], flat[1::3], flat[2::3], strict=True):
                row = self._moved(int(f_id), "done")
                row["ended"], row["result_bytes"] = f_time, int(f_size)
        elif kind is ev.TasksDispatched:
            for tid in e.ids:
                row = self._moved(tid, "dispatched")
                row["dispatched"], row["pool_id"] = e.time, e.pool_id
        elif kind is ev.TasksStarted:
            for tid in e.ids:
                row = self._moved(tid, "running")
                row["started"], row["pool_id"], row["worker"] = e.time, e.pool_id, e.worker
        elif isinstance(e, ev.TaskSubmitted):
            self._task(e.task_id, outcome="queued", submitted=e.time, func=e.func, args_bytes=e.args_bytes,
                       priority=e.priority)
        elif isinstance(e, ev.TasksSubmitted):
            for tid, us, func, size, prio in zip(e.ids, e.offsets_us, e.funcs, e.args_bytes, e.priorities, strict=True):
                self._task(tid, outcome="queued", submitted=e.base + us / 1e6, func=func, args_bytes=size, priority=prio)
        elif isinstance(e, ev.TasksDone):
            for tid, us, size in zip(e.ids, e.offsets_us, e.result_bytes, strict=True):
                self._task(tid, outcome="done", ended=e.base + us / 1e6, result_bytes=size)
        elif kind is ev.TaskEnded:
            self._task_fast(e.task_id, e.outcome, {"ended": e.time, "result_bytes": e.result_bytes, "exc_type": e.exc_type,
                                                   "exc_message": e.exc_message, "traceback": e.traceback})
        elif isinstance(e, ev.TaskResent):
            self._task(e.task_id, outcome="queued", retries=e.retries)
        elif isinstance(e, ev.ResourceSample):
            self.resources.append({"run_id": self.run_id, "pool_id": e.pool_id, "worker": e.worker, "time": e.time,
                                   "cpu_percent": e.cpu_percent, "rss_bytes": e.rss_bytes})
        else:
            self._other(e)

    def _other(self, e: Any) -> None:
        if isinstance(e, ev.PoolRegistered):
            self._pool(e.pool_id, state="active", registered=e.time, block_id=e.block_id, host=e.host,
                       workers=e.workers)
        elif isinstance(e, ev.PoolInfo):
            self._pool(e.pool_id, state="active", registered=e.time, block_id=e.block_id, host=e.host,
                       workers=e.workers, cores=e.cores, memory_mb=e.memory_mb,
                       accelerators=json.dumps(e.accelerators))
        elif isinstance(e, ev.PoolState):
            ended = e.time if e.state in ("lost", "gone") else None
            self._pool(e.pool_id, state=e.state, reason=e.reason, ended=ended)
        elif isinstance(e, ev.BlockState):
            self._merge(self.blocks, e.block_id, blocks, _BLOCK_RANK, "state", ("requested", "started"),
                        dict(block_id=e.block_id, state=e.state, reason=e.reason, job_id=e.job_id,
                             provider=e.provider, **_block_time(e.state, e.time)))
            self.block_states.append({"run_id": self.run_id, "block_id": e.block_id, "time": e.time,
                                      "state": e.state, "reason": e.reason})
        elif isinstance(e, ev.RunStarted):
            self._merge(self.runs, self.run_id, runs, None, None, ("started",),
                        dict(label=e.label, run_dir=e.run_dir, host=e.host, started=e.time))
        elif isinstance(e, ev.RunEnded):
            self._merge(self.runs, self.run_id, runs, None, None, ("started",), dict(ended=e.time))

    def _task(self, task_id: int, **values: Any) -> None:
        values.setdefault("retries", 0)
        self._merge(self.tasks, task_id, tasks, _TASK_RANK, "outcome", ("submitted",), dict(task_id=task_id, **values))

    def _task_fast(self, task_id: int, outcome: str, values: dict[str, Any]) -> None:
        """``_task`` for an event without retries (a submission, an end): the same rules, a fifth of the time."""
        row = self.tasks.get(task_id)
        if row is None:
            row = self.tasks[task_id] = self._task_row.copy()
            row["task_id"], row["outcome"] = task_id, outcome
            row.update(values)
            return
        for name, value in values.items():
            if value is not None:
                old = row[name]
                row[name] = value if name != "submitted" or old is None else min(value, old)
        if _TASK_RANK[outcome] > _TASK_RANK.get(row["outcome"] or "", 0):
            row["outcome"] = outcome

    def _moved(self, task_id: int, outcome: str) -> dict[str, Any]:
        """A task's row, its ``outcome`` moved forward to this one.  For the kinds whose values are never
        None nor first-wins (dispatched, started, done): the caller then sets them, as ``_merge`` would."""
        row = self.tasks.get(task_id)
        if row is None:
            row = self.tasks[task_id] = self._task_row.copy()
            row["task_id"], row["outcome"] = task_id, outcome
        elif _TASK_RANK.get(row["outcome"] or "", 0) < _TASK_RANK[outcome]:
            row["outcome"] = outcome
        return row

    def _pool(self, pool_id: str, **values: Any) -> None:
        self._merge(self.pools, pool_id, pools, _POOL_RANK, "state", ("registered",), dict(pool_id=pool_id, **values))

    def _merge(self, into: dict[Any, dict[str, Any]], key: Any, table: sa.Table, rank: dict[str, int] | None,
               state: str | None, first_wins: tuple[str, ...], values: dict[str, Any]) -> None:
        row = into.get(key)
        if row is None:
            row = into[key] = dict.fromkeys(_COLUMNS[table.name])
            row["run_id"] = self.run_id
            row.update(values)
            return
        new_rank = rank.get(values.get(state) or "", 0) if rank and state else 0
        old_rank = rank.get(row[state] or "", 0) if rank and state else 0
        for name, value in values.items():
            if value is None or name in (state, "retries") or (name == "reason" and new_rank < old_rank):
                continue
            row[name] = min(value, row[name]) if name in first_wins and row[name] is not None else value
        if state is None or rank is None:
            return
        again = table is tasks and values["retries"] > row["retries"]
        if again:
            row["retries"] = values["retries"]
        if again or new_rank > old_rank:
            row[state] = values[state]


def _rank_of(rank: dict[str, int], column: Any) -> Any:
    """CASE column WHEN 'queued' THEN 0 ...: the ranks written into the SQL (our own words and numbers, no
    quotes in them), so a row's parameters are its columns alone."""
    return sa.case(*[(column == sa.literal_column(f"'{name}'"), sa.literal_column(str(n))) for name, n in rank.items()],
                   else_=sa.literal_column("0"))


def _block_time(state: str, time: float) -> dict[str, float]:
    """The time column a block's state sets: requested, started (running), or ended (any ending)."""
    if state == "requested":
        return {"requested": time}
    if state == "running":
        return {"started": time}
    return {"ended": time} if _BLOCK_RANK.get(state) == 3 else {}
