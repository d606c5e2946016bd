"""What the dashboard shows, read from the monitoring store: plain dicts ready for JSON.

Two reads, both for one run of a store:

- ``fingerprint(conn, run_id)``: a few aggregates that change whenever a row is
  added or updated (counts per task outcome and their latest times, the latest
  resource sample, block states, pool states).  Cheap: the live page polls it
  every second and fetches the whole state only when it changed.
- ``snapshot(conn, run_id)``: everything the page draws.

Times sent to the page are seconds since the run's start (``t0``), so the
charts read "12.5 s into the run" whatever the host's clock.  The right edge
of a chart is the run's end, or the latest time any row carries while it
runs: never the dashboard host's clock, so a finished run's database draws
the same tomorrow as today.
"""

from __future__ import annotations

import bisect
import hashlib
import itertools
import math
from collections import defaultdict
from collections.abc import Sequence
from typing import Any

import sqlalchemy as sa

from .schema import block_states, blocks, pools, resources, runs, tasks

__all__ = ["STREAM_LIMIT", "fingerprint", "list_runs", "snapshot"]

STREAM_LIMIT = 5000  # bars in the task stream: the latest ones (a browser draws ~5k bars smoothly)
FAILURE_LIMIT = 200  # failed tasks listed with their tracebacks, latest first
_BINS = 120  # points over time in the throughput and utilisation charts
_FINAL = ("done", "failed", "lost", "cancelled")

Row = dict[str, Any]


def list_runs(conn: sa.Connection) -> list[Row]:
    """Every run of the store, latest first; a run with tasks but no ``runs`` row still counts."""
    found = {r.run_id: dict(r._mapping) for r in conn.execute(sa.select(runs))}
    for (run_id,) in conn.execute(sa.select(tasks.c.run_id).distinct()):
        found.setdefault(run_id, {"run_id": run_id, "label": None, "run_dir": None, "host": None,
                                  "started": None, "ended": None})
    return sorted(found.values(), key=lambda r: (r["started"] or 0.0, r["run_id"]), reverse=True)


def fingerprint(conn: sa.Connection, run_id: str) -> str:
    """A string that changes when anything of ``run_id`` does (rows are updated in place, so not a row count)."""
    parts: list[Sequence[Any]] = []
    t = tasks.c
    parts += conn.execute(
        sa.select(t.outcome, sa.func.count(), sa.func.max(t.submitted), sa.func.max(t.dispatched),
                  sa.func.max(t.started), sa.func.max(t.ended))
        .where(t.run_id == run_id).group_by(t.outcome).order_by(t.outcome)
    ).all()
    parts += conn.execute(sa.select(sa.func.max(resources.c.time)).where(resources.c.run_id == run_id)).all()
    parts += conn.execute(sa.select(sa.func.count(), sa.func.max(block_states.c.time))
                          .where(block_states.c.run_id == run_id)).all()
    parts += conn.execute(sa.select(blocks.c.state, sa.func.count()).where(blocks.c.run_id == run_id)
                          .group_by(blocks.c.state).order_by(blocks.c.state)).all()
    parts += conn.execute(sa.select(pools.c.state, sa.func.count(), sa.func.max(pools.c.ended))
                          .where(pools.c.run_id == run_id).group_by(pools.c.state).order_by(pools.c.state)).all()
    parts += conn.execute(sa.select(runs.c.ended).where(runs.c.run_id == run_id)).all()
    return hashlib.sha1(repr([tuple(p) for p in parts]).encode()).hexdigest()[:16]


def snapshot(conn: sa.Connection, run_id: str) -> Row:
    """Everything the page draws for one run (see the module docstring for the time axis)."""
    run = conn.execute(sa.select(runs).where(runs.c.run_id == run_id)).first()
    task_rows = [dict(r._mapping) for r in conn.execute(
        sa.select(tasks.c.task_id, tasks.c.func, tasks.c.outcome, tasks.c.submitted, tasks.c.dispatched,
                  tasks.c.started, tasks.c.ended, tasks.c.pool_id, tasks.c.worker)
        .where(tasks.c.run_id == run_id))]
    pool_rows = [dict(r._mapping) for r in conn.execute(
        sa.select(pools).where(pools.c.run_id == run_id).order_by(pools.c.registered, pools.c.pool_id))]
    samples = conn.execute(
        sa.select(resources.c.pool_id, resources.c.worker, resources.c.time, resources.c.cpu_percent,
                  resources.c.rss_bytes)
        .where(resources.c.run_id == run_id).order_by(resources.c.time)).all()
    t0, t_end = _span(run, task_rows, samples, pool_rows)
    return {
        "run": dict(run._mapping) if run is not None else {"run_id": run_id},
        "t0": t0,
        "span": t_end - t0,
        "finished": bool(run is not None and run.ended is not None),
        "counts": _counts(task_rows),
        "throughput": _throughput(task_rows, t0, t_end),
        "stream": _stream(task_rows, t0, t_end),
        "busy": _busy(task_rows, pool_rows, t0, t_end),
        "resources": _resources(samples, t0, t_end),
        "functions": _functions(task_rows),
        "pools": [_rel(p, t0, ("registered", "ended")) for p in pool_rows],
        "blocks": _blocks(conn, run_id, t0),
        "failures": _failures(conn, run_id, t0),
    }


def _span(run: Any, task_rows: list[Row], samples: Sequence[Any], pool_rows: list[Row]) -> tuple[float, float]:
    times = [r[k] for r in task_rows for k in ("submitted", "started", "ended") if r[k] is not None]
    times += [s.time for s in samples[:1]] + [s.time for s in samples[-1:]]
    times += [p["registered"] for p in pool_rows if p["registered"] is not None]
    t0 = run.started if run is not None and run.started is not None else min(times, default=0.0)
    t_end = run.ended if run is not None and run.ended is not None else max(times, default=t0)
    return t0, max(t_end, t0)


def _counts(task_rows: list[Row]) -> dict[str, int]:
    counts = dict.fromkeys(("queued", "dispatched", "running", *_FINAL), 0)
    for r in task_rows:
        counts[r["outcome"]] = counts.get(r["outcome"], 0) + 1
    counts["total"] = len(task_rows)
    return counts


def _edges(t0: float, t_end: float) -> list[float]:
    span = max(t_end - t0, 1e-3)
    return [t0 + span * k / _BINS for k in range(_BINS + 1)]


def _throughput(task_rows: list[Row], t0: float, t_end: float) -> Row:
    """Queued and running over time, and tasks finished per second (done, and failed or lost)."""
    submitted = sorted(r["submitted"] for r in task_rows if r["submitted"] is not None)
    # A task leaves the queue when dispatched (or started, or ended: cancelled while queued).
    left = sorted(x for r in task_rows if (x := r["dispatched"] or r["started"] or r["ended"]) is not None)
    started = sorted(r["started"] for r in task_rows if r["started"] is not None)
    stopped = sorted(r["ended"] for r in task_rows if r["started"] is not None and r["ended"] is not None)
    ok = sorted(r["ended"] for r in task_rows if r["outcome"] == "done" and r["ended"] is not None)
    bad = sorted(r["ended"] for r in task_rows if r["outcome"] in ("failed", "lost") and r["ended"] is not None)
    edges = _edges(t0, t_end)
    # The rate is counted over a window wider than a bin (a 24th of the run), so it reads as a trend, not as noise.
    window = max(edges[1] - edges[0], (t_end - t0) / 24, 1e-3)
    out: Row = {"t": [], "queued": [], "running": [], "done_rate": [], "failed_rate": []}
    for hi in edges[1:]:
        out["t"].append(hi - t0)
        out["queued"].append(bisect.bisect_right(submitted, hi) - bisect.bisect_right(left, hi))
        out["running"].append(bisect.bisect_right(started, hi) - bisect.bisect_right(stopped, hi))
        lo = max(hi - window, t0)
        for key, series in (("done_rate", ok), ("failed_rate", bad)):
            # Anything that ended at t0 exactly counts in the first window.
            below = bisect.bisect_left(series, lo) if lo == t0 else bisect.bisect_right(series, lo)
            n = bisect.bisect_right(series, hi) - below
            out[key].append(n / (hi - lo) if hi > lo else 0.0)
    return out


def _worker_label(pool_id: Any, worker: Any) -> str:
    return f"{pool_id} / w{worker}"


def _stream(task_rows: list[Row], t0: float, t_end: float) -> Row:
    """One bar per task that started, on its worker's row; grouped by (function, outcome) for the legend."""
    ran = sorted((r for r in task_rows if r["started"] is not None), key=lambda r: r["started"])
    shown = ran[-STREAM_LIMIT:]
    groups: dict[tuple[str, str], Row] = {}
    for r in shown:
        g = groups.setdefault((r["func"] or "?", r["outcome"]),
                              {"func": r["func"] or "?", "outcome": r["outcome"], "y": [], "base": [], "x": [], "id": []})
        end = r["ended"] if r["ended"] is not None else t_end  # still running: up to the latest time seen
        g["y"].append(_worker_label(r["pool_id"], r["worker"]))
        g["base"].append(r["started"] - t0)
        g["x"].append(max(end - r["started"], 0.0))
        g["id"].append(r["task_id"])
    rows = sorted({_worker_label(r["pool_id"], r["worker"]) for r in shown}, reverse=True)
    return {"groups": list(groups.values()), "rows": rows, "shown": len(shown), "total": len(ran)}


class _BusyTime:
    """Worker-seconds spent running tasks up to any time t, from sorted start and end times, in O(log n)."""

    def __init__(self, starts: list[float], ends: list[float]) -> None:
        self.starts, self.ends = sorted(starts), sorted(ends)
        self.start_sums = list(itertools.accumulate(self.starts, initial=0.0))
        self.end_sums = list(itertools.accumulate(self.ends, initial=0.0))

    def until(self, t: float) -> float:
        # Each task contributes min(t, end) - start once started: sum(t - s) over starts, less sum(t - e) over ends.
        i, j = bisect.bisect_right(self.starts, t), bisect.bisect_right(self.ends, t)
        return (t * i - self.start_sums[i]) - (t * j - self.end_sums[j])


def _busy(task_rows: list[Row], pool_rows: list[Row], t0: float, t_end: float) -> Row:
    """Per pool and time bin, the share of its workers' time spent running tasks (0..100 %)."""
    workers = {p["pool_id"]: p["workers"] for p in pool_rows if p["workers"]}
    starts: dict[str, list[float]] = defaultdict(list)
    ends: dict[str, list[float]] = defaultdict(list)
    # Times relative to t0: sums of epoch times (~1e9 s) would lose the sub-millisecond digits.
    for r in task_rows:
        if r["started"] is not None and r["pool_id"] in workers:
            starts[r["pool_id"]].append(r["started"] - t0)
            ends[r["pool_id"]].append((r["ended"] if r["ended"] is not None else t_end) - t0)  # running: busy until now
    edges = [x - t0 for x in _edges(t0, t_end)]
    out: Row = {}
    for pool_id, n in workers.items():
        busy = _BusyTime(starts[pool_id], ends[pool_id])
        at = [busy.until(x) for x in edges]
        out[pool_id] = {"t": edges[1:],
                        "busy": [100.0 * (b - a) / (n * (hi - lo)) if hi > lo else 0.0
                                 for a, b, lo, hi in zip(at, at[1:], edges, edges[1:], strict=False)]}
    return out


def _resources(samples: Sequence[Any], t0: float, t_end: float) -> Row:
    """Per pool, at each bin's end: mean CPU % of its workers, and the RSS of workers plus the pool process (MB).

    A worker's figures are those of its latest sample, from its first sample to
    its last: samples come every ``resource_period`` (seconds apart, often more
    than a bin), so a bin without a new one keeps the last, rather than dropping
    the worker from the sum.
    """
    edges = _edges(t0, t_end)[1:]
    width = (t_end - t0) / _BINS
    per_worker: dict[str, dict[int, list[Any]]] = defaultdict(lambda: defaultdict(list))
    for s in samples:  # ordered by time
        per_worker[s.pool_id][s.worker].append(s)
    out: Row = {}
    for pool_id, workers in per_worker.items():
        series: Row = {"t": [], "cpu": [], "rss_mb": []}
        times = {w: [s.time for s in rows] for w, rows in workers.items()}
        for edge in edges:
            current = []
            for w, rows in workers.items():
                i = bisect.bisect_right(times[w], edge)
                if i and edge < rows[-1].time + width:  # sampled already, and not past its last sample's bin
                    current.append(rows[i - 1])
            if not current:
                continue
            cpus = [s.cpu_percent or 0.0 for s in current if s.worker >= 0]
            series["t"].append(edge - t0)
            series["cpu"].append(sum(cpus) / len(cpus) if cpus else None)
            series["rss_mb"].append(sum(s.rss_bytes or 0 for s in current) / 2**20)
        out[pool_id] = series
    return out


def _p95(values: list[float]) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    return ordered[max(math.ceil(0.95 * len(ordered)) - 1, 0)]  # nearest rank


def _functions(task_rows: list[Row]) -> list[Row]:
    """Per function: counts by outcome, mean and p95 of the run time of the tasks that ended after starting."""
    by_func: dict[str, list[Row]] = defaultdict(list)
    for r in task_rows:
        by_func[r["func"] or "?"].append(r)
    table = []
    for func, rows in sorted(by_func.items()):
        durations = [r["ended"] - r["started"] for r in rows
                     if r["started"] is not None and r["ended"] is not None and r["outcome"] in ("done", "failed")]
        outcome: defaultdict[str, int] = defaultdict(int)
        for r in rows:
            outcome[r["outcome"]] += 1
        table.append({
            "func": func, "count": len(rows), "done": outcome["done"], "failed": outcome["failed"],
            "lost": outcome["lost"], "cancelled": outcome["cancelled"],
            "mean": sum(durations) / len(durations) if durations else None, "p95": _p95(durations),
        })
    return table


def _rel(row: Row, t0: float, keys: Sequence[str]) -> Row:
    """The row with its time columns made relative to the run's start."""
    return {k: (v - t0 if k in keys and v is not None else v) for k, v in row.items()}


def _blocks(conn: sa.Connection, run_id: str, t0: float) -> list[Row]:
    history: dict[str, list[Row]] = defaultdict(list)
    for s in conn.execute(sa.select(block_states).where(block_states.c.run_id == run_id).order_by(block_states.c.time)):
        history[s.block_id].append({"time": s.time - t0, "state": s.state, "reason": s.reason})
    out = []
    for b in conn.execute(sa.select(blocks).where(blocks.c.run_id == run_id).order_by(blocks.c.requested, blocks.c.block_id)):
        row = _rel(dict(b._mapping), t0, ("requested", "started", "ended"))
        row["history"] = history.get(b.block_id, [])
        out.append(row)
    return out


def _failures(conn: sa.Connection, run_id: str, t0: float) -> Row:
    t = tasks.c
    where = sa.and_(t.run_id == run_id, t.outcome.in_(("failed", "lost")))
    total = conn.execute(sa.select(sa.func.count()).select_from(tasks).where(where)).scalar_one()
    rows = conn.execute(
        sa.select(t.task_id, t.func, t.outcome, t.pool_id, t.worker, t.ended, t.exc_type, t.exc_message, t.traceback,
                  t.retries)
        .where(where).order_by(t.ended.desc(), t.task_id.desc()).limit(FAILURE_LIMIT))
    return {"total": total, "rows": [_rel(dict(r._mapping), t0, ("ended",)) for r in rows]}
