"""The monitoring store's tables: the one contract between the hub that writes
them and the dashboard (and users' own queries) that read them.

Times are seconds since the epoch (float).  Every row carries its ``run_id``, so
one database (say a shared PostgreSQL) holds many runs.  Rows are upserted: a
task's row is created at submission and filled in as its events arrive.

Bump ``SCHEMA_VERSION`` on any change; a store of another version is refused by
name and number, never silently mixed.
"""

from __future__ import annotations

try:
    import sqlalchemy as sa
except ImportError as exc:  # pragma: no cover - exercised by the extra's absence test
    raise ImportError("htex monitoring needs SQLAlchemy: pip install 'htex[monitoring]'") from exc

__all__ = [
    "BLOCK_STATES",
    "POOL_STATES",
    "SCHEMA_VERSION",
    "TASK_OUTCOMES",
    "block_states",
    "blocks",
    "meta",
    "metadata",
    "pools",
    "resources",
    "runs",
    "tasks",
]

SCHEMA_VERSION = 1

# A task's outcome column: where it is now, or how it ended.
TASK_OUTCOMES = ("queued", "dispatched", "running", "done", "failed", "lost", "cancelled")
POOL_STATES = ("active", "draining", "lost", "gone")
BLOCK_STATES = ("requested", "pending", "running", "ended", "failed", "cancelled")

metadata = sa.MetaData()

# key/value facts about the store itself: "schema" -> "htex-monitoring", "version" -> "1".
meta = sa.Table(
    "htex_meta", metadata,
    sa.Column("key", sa.String(64), primary_key=True),
    sa.Column("value", sa.Text, nullable=False),
)

runs = sa.Table(
    "runs", metadata,
    sa.Column("run_id", sa.String(64), primary_key=True),
    sa.Column("label", sa.String(128)),
    sa.Column("run_dir", sa.Text),
    sa.Column("host", sa.String(255)),
    sa.Column("started", sa.Float),
    sa.Column("ended", sa.Float),
)

tasks = sa.Table(
    "tasks", metadata,
    sa.Column("run_id", sa.String(64), primary_key=True),
    sa.Column("task_id", sa.BigInteger, primary_key=True),
    sa.Column("func", sa.String(255)),
    sa.Column("outcome", sa.String(16), nullable=False),  # one of TASK_OUTCOMES
    sa.Column("submitted", sa.Float),
    sa.Column("dispatched", sa.Float),
    sa.Column("started", sa.Float),
    sa.Column("ended", sa.Float),
    sa.Column("pool_id", sa.String(64)),
    sa.Column("worker", sa.Integer),
    sa.Column("args_bytes", sa.BigInteger),
    sa.Column("result_bytes", sa.BigInteger),
    sa.Column("exc_type", sa.String(255)),
    sa.Column("exc_message", sa.Text),
    sa.Column("traceback", sa.Text),
    sa.Column("retries", sa.Integer, nullable=False, default=0),
    sa.Column("priority", sa.Float),
    sa.Index("ix_tasks_run_outcome", "run_id", "outcome"),
)

pools = sa.Table(
    "pools", metadata,
    sa.Column("run_id", sa.String(64), primary_key=True),
    sa.Column("pool_id", sa.String(64), primary_key=True),
    sa.Column("block_id", sa.String(64)),
    sa.Column("host", sa.String(255)),
    sa.Column("workers", sa.Integer),
    sa.Column("cores", sa.Integer),
    sa.Column("memory_mb", sa.BigInteger),
    sa.Column("accelerators", sa.Text),  # JSON list of device ids
    sa.Column("state", sa.String(16), nullable=False),  # one of POOL_STATES
    sa.Column("reason", sa.Text),
    sa.Column("registered", sa.Float),
    sa.Column("ended", sa.Float),
)

blocks = sa.Table(
    "blocks", metadata,
    sa.Column("run_id", sa.String(64), primary_key=True),
    sa.Column("block_id", sa.String(64), primary_key=True),
    sa.Column("job_id", sa.String(255)),
    sa.Column("provider", sa.String(64)),
    sa.Column("state", sa.String(16), nullable=False),  # one of BLOCK_STATES
    sa.Column("reason", sa.Text),  # the scheduler's own state and reason
    sa.Column("requested", sa.Float),
    sa.Column("started", sa.Float),
    sa.Column("ended", sa.Float),
)

# Every state a block passed through, for the timeline.
block_states = sa.Table(
    "block_states", metadata,
    sa.Column("run_id", sa.String(64), nullable=False),
    sa.Column("block_id", sa.String(64), nullable=False),
    sa.Column("time", sa.Float, nullable=False),
    sa.Column("state", sa.String(16), nullable=False),
    sa.Column("reason", sa.Text),
    sa.Index("ix_block_states_run", "run_id", "block_id"),
)

# Periodic samples per worker (worker = -1: the pool process itself).
resources = sa.Table(
    "resources", metadata,
    sa.Column("run_id", sa.String(64), nullable=False),
    sa.Column("pool_id", sa.String(64), nullable=False),
    sa.Column("worker", sa.Integer, nullable=False),
    sa.Column("time", sa.Float, nullable=False),
    sa.Column("cpu_percent", sa.Float),
    sa.Column("rss_bytes", sa.BigInteger),
    sa.Index("ix_resources_run_time", "run_id", "time"),
)
