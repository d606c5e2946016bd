"""What monitoring costs, and how much the hub takes: two measurements in one run.

Usage (from the repository root, with the project's venv)::

    .venv/bin/python bench/monitoring.py              # W1 x 9 rounds each way, hub with 1,000 pools
    .venv/bin/python bench/monitoring.py --smoke      # tiny sizes: checks that it all works (< 1 min)

1. **W1 with monitoring on vs off** (target: on >= 0.8x off): 5,000 no-op tasks, submit all then
   wait all, on ``htex (prefetch 256)`` (``prefetch_capacity=256``, 2 workers, one local block),
   with ``monitoring=False`` and with ``monitoring=True`` (hub, SQLite in the run directory),
   fresh executors, in alternating order, ``--rounds`` rounds each.  With monitoring on, the
   rows are checked after shutdown: every task has its row, ``done``.  Reported: the median rate
   of each, and on/off; and the CPU time all the run's processes (this one and its children: the
   interchange, the pool, its workers, the hub) used while W1 ran, per task, off and on, which
   other work on the machine hardly changes (the rates swing by 2x on a shared 2-core machine).
2. **Hub throughput**: one hub process (SQLite) and ``--pools`` simulated pools (``simmonitor.py``,
   PUSH sockets spread over ``--sim-procs`` processes).  Each pool sends ``--batches`` batches
   as fast as it can, each batch what a busy pool of 8 workers sends in a flush: 8 tasks
   started, 8 ended, 9 resource samples (25 events).  Reported: events per second from the
   first batch sent until every row is in the store (polled), i.e. what the hub sustains.

Results go to stdout and ``bench/results/monitoring.md``.  Nothing is asserted about time.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from typing import Any

BENCH = os.path.dirname(os.path.abspath(__file__))
os.environ["PYTHONPATH"] = os.pathsep.join(p for p in (BENCH, os.environ.get("PYTHONPATH")) if p)

import psutil  # noqa: E402
import sqlalchemy as sa  # noqa: E402

import benchtasks  # noqa: E402
from backends import HtexBackend  # noqa: E402
from htex.monitoring import schema  # noqa: E402
from htex.monitoring.store import open_store  # noqa: E402
from workloads import FULL, SMOKE, Sizes, w1, warm_up  # noqa: E402


def log(msg: str) -> None:
    print(msg, flush=True)


def cpu_seconds() -> float:
    """CPU time (user + system) used so far by this process and all its children: the executor, its
    interchange, pools, workers and hub.  Other work on the machine hardly changes it, unlike rates."""
    total = sum(psutil.Process().cpu_times()[:2])
    for child in psutil.Process().children(recursive=True):
        try:
            total += sum(child.cpu_times()[:2])
        except psutil.Error:
            pass
    return total


def w1_round(monitoring: bool, sizes: Sizes, root: str) -> tuple[float, float]:
    """W1's rate, and the CPU seconds its processes used while it ran."""
    b = HtexBackend(root, prefetch_capacity=256, monitoring=monitoring)
    b.start()
    try:
        warm_up(b, sizes, None)
        gc.collect()  # the last round's garbage is not this round's cost (either way): a full pass now, not mid-W1
        cpu0 = cpu_seconds()
        metrics, _ = w1(b, sizes, lambda: None)
        cpu = cpu_seconds() - cpu0
        run_dir = b.ex.run_dir
    finally:
        b.shutdown()
    if monitoring:
        engine = open_store(run_dir)
        with engine.connect() as conn:
            done = conn.execute(sa.select(sa.func.count()).select_from(schema.tasks)
                                .where(schema.tasks.c.outcome == "done")).scalar_one()
        engine.dispose()
        want = sizes.w1_tasks + sizes.warmup
        if done != want:
            raise AssertionError(f"monitoring on: {done} tasks done in the store, want {want}")
    return float(metrics["rate"]), cpu


def bench_w1(rounds: int, sizes: Sizes, root: str) -> dict[str, Any]:
    rates: dict[str, list[float]] = {"off": [], "on": []}
    cpus: dict[str, list[float]] = {"off": [], "on": []}
    for r in range(rounds):
        for mode in (("off", "on") if r % 2 == 0 else ("on", "off")):
            rate, cpu = w1_round(mode == "on", sizes, root)
            rates[mode].append(rate)
            cpus[mode].append(cpu)
            log(f"  W1 round {r + 1} monitoring {mode:<3}: {rate:,.0f} tasks/s, {cpu:.2f} CPU s")
    off, on = statistics.median(rates["off"]), statistics.median(rates["on"])
    # Each round's pair ran back to back: the median of their ratios is less sensitive to load that
    # comes and goes than the ratio of the medians.
    pairs = statistics.median(a / b for a, b in zip(rates["on"], rates["off"], strict=True))
    cpu_off, cpu_on = statistics.median(cpus["off"]), statistics.median(cpus["on"])
    return {"off": off, "on": on, "ratio": on / off, "pair_ratio": pairs, "rates": rates,
            "cpu_off_us": cpu_off / sizes.w1_tasks * 1e6, "cpu_on_us": cpu_on / sizes.w1_tasks * 1e6,
            "cpu_ratio": cpu_off / cpu_on}


def bench_hub(pools: int, batches: int, sim_procs: int, root: str) -> dict[str, Any]:
    db = os.path.join(root, "hub.db")
    hub = subprocess.Popen([sys.executable, "-m", "htex.monitoring.hub", "--url", db, "--logdir", root],
                           stdout=subprocess.PIPE, text=True)
    assert hub.stdout is not None
    port = int(json.loads(hub.stdout.readline())["port"])
    per = -(-pools // sim_procs)
    sims = []
    t0 = time.perf_counter()
    for i in range(sim_procs):
        ids = list(range(i * per, min(pools, (i + 1) * per)))
        cfg = {"url": f"tcp://127.0.0.1:{port}", "pools": ids, "batches": batches, "run": "bench"}
        sims.append(subprocess.Popen([sys.executable, os.path.join(BENCH, "simmonitor.py"), json.dumps(cfg)]))
    tasks_want = pools * batches * 8
    samples_want = pools * batches * 9
    engine = open_store(db)
    deadline = time.monotonic() + 600
    try:
        while True:
            with engine.connect() as conn:
                ended = conn.execute(sa.select(sa.func.count()).select_from(schema.tasks)
                                     .where(schema.tasks.c.outcome == "done")).scalar_one()
                samples = conn.execute(sa.select(sa.func.count()).select_from(schema.resources)).scalar_one()
            if ended >= tasks_want and samples >= samples_want:
                break
            if time.monotonic() > deadline:
                raise TimeoutError(f"hub bench: {ended}/{tasks_want} tasks, {samples}/{samples_want} samples")
            time.sleep(0.2)
        dt = time.perf_counter() - t0
    finally:
        engine.dispose()
        for s in sims:
            s.wait(60)
        hub.send_signal(signal.SIGTERM)
        hub.wait(60)
        hub.stdout.close()
    events = pools * batches * 25
    return {"pools": pools, "events": events, "seconds": dt, "events_per_s": events / dt}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--smoke", action="store_true")
    parser.add_argument("--rounds", type=int, default=None)
    parser.add_argument("--pools", type=int, default=None)
    parser.add_argument("--batches", type=int, default=None)
    parser.add_argument("--sim-procs", type=int, default=4)
    parser.add_argument("--only", default="W1,HUB")
    args = parser.parse_args()
    sizes = SMOKE if args.smoke else FULL
    rounds = args.rounds or (1 if args.smoke else 9)
    pools = args.pools or (50 if args.smoke else 1000)
    batches = args.batches or (2 if args.smoke else 20)
    root = tempfile.mkdtemp(prefix="htex-monbench-", dir=os.path.join(BENCH, "results") if os.path.isdir(
        os.path.join(BENCH, "results")) else None)
    load = os.getloadavg()
    lines = [f"# monitoring bench ({time.strftime('%Y-%m-%d %H:%M')}, load average before: {load[0]:.1f})", ""]
    try:
        if "W1" in args.only:
            log(f"W1 ({sizes.w1_tasks} tasks, prefetch 256), monitoring off vs on, {rounds} rounds each")
            r = bench_w1(rounds, sizes, root)
            lines += [
                "| W1, htex (prefetch 256) | tasks/s (median) | rounds |", "|---|---|---|",
                f"| monitoring off | {r['off']:,.0f} | {', '.join(f'{x:,.0f}' for x in r['rates']['off'])} |",
                f"| monitoring on | {r['on']:,.0f} | {', '.join(f'{x:,.0f}' for x in r['rates']['on'])} |",
                f"| **on / off** | **{r['ratio']:.2f}** (target >= 0.8); median of the rounds' ratios: "
                f"{r['pair_ratio']:.2f} | |", "",
                f"CPU time of all the run's processes (executor, interchange, pool, workers, hub) while W1 ran, "
                f"median: {r['cpu_off_us']:.0f} us a task off, {r['cpu_on_us']:.0f} us on: off/on "
                f"**{r['cpu_ratio']:.2f}** (what the rate ratio tends to on a machine whose cores W1 fills).", "",
            ]
        if "HUB" in args.only:
            log(f"hub: {pools} simulated pools x {batches} batches of 25 events")
            h = bench_hub(pools, batches, args.sim_procs, root)
            lines += [
                f"Hub (SQLite, WAL): {h['pools']} simulated pools sent {h['events']:,} events; all were in the "
                f"store after {h['seconds']:.1f} s: **{h['events_per_s']:,.0f} events/s** sustained.", "",
            ]
        lines.append(f"load average after: {os.getloadavg()[0]:.1f} (2 cores; other work on the machine skews "
                     "rates: compare the ratio, measured side by side)")
    finally:
        shutil.rmtree(root, ignore_errors=True)
    report = "\n".join(lines)
    log("\n" + report)
    os.makedirs(os.path.join(BENCH, "results"), exist_ok=True)
    with open(os.path.join(BENCH, "results", "monitoring-smoke.md" if args.smoke else "monitoring.md"), "w") as f:
        f.write(report + "\n")
    return 0


if __name__ == "__main__":
    benchtasks.noop()  # the workers import it by reference, from bench/ (PYTHONPATH above)
    sys.exit(main())
