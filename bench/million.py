"""A million tasks through htex: time, and the client's peak memory (issue 18, point 4).

Usage (from the repository root)::

    .venv/bin/python bench/million.py                    # 1,000,000 tasks, both ways
    .venv/bin/python bench/million.py --tasks 100000 --mode submit

Two ways, each in a fresh client process (so that its peak RSS is its own),
on a fresh executor with 2 workers and the defaults (``prefetch_capacity="auto"``):

map     ``ex.map(echo, range(N), chunksize=1000)``: N / 1000 tasks of 1,000 calls;
        the results are consumed as they come (checked: their sum).
submit  a plain loop of ``ex.submit(noop, {})``, N tasks of one call each, with the
        executor's ``max_outstanding`` window (default 100,000): submit blocks when
        that many are in flight, and each future is dropped once it is counted
        (a done-callback), as a program that keeps no list of them would.

Reported per way: wall time from the first submit to the last result, tasks (calls)
per second, the client's peak RSS (``ru_maxrss``) and its RSS after start-up, so
the difference is what the run cost.  Timings are the machine's: compare runs
made side by side.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import threading
import time
from typing import Any

BENCH = os.path.dirname(os.path.abspath(__file__))
os.environ["PYTHONPATH"] = os.pathsep.join(p for p in (BENCH, os.environ.get("PYTHONPATH")) if p)


def _rss_mib() -> float:
    import psutil

    return float(psutil.Process().memory_info().rss) / 2**20


def child(mode: str, n: int, chunksize: int, max_outstanding: int) -> dict[str, Any]:
    import benchtasks
    from htex import HighThroughputExecutor, LocalProvider

    run_dir = tempfile.mkdtemp(prefix="htex-million-", dir=os.path.join(BENCH, "results"))
    ex = HighThroughputExecutor(max_workers=2, provider=LocalProvider(init_blocks=1, max_blocks=1), run_dir=run_dir,
                                max_outstanding=max_outstanding)
    with ex:
        for f in [ex.submit(benchtasks.noop, {}) for _ in range(20)]:  # warm: the pool is up
            f.result(timeout=120)
        rss_start = _rss_mib()
        t0 = time.perf_counter()
        if mode == "map":
            total = sum(ex.map(benchtasks.echo, range(n), chunksize=chunksize))
            if total != n * (n - 1) // 2:
                raise AssertionError(f"map: wrong sum {total}")
        else:
            done = threading.Semaphore(0)
            failed: list[BaseException] = []

            def count(fut: Any) -> None:
                if fut.exception() is not None:
                    failed.append(fut.exception())
                done.release()

            for _ in range(n):
                ex.submit(benchtasks.noop, {}).add_done_callback(count)
            for _ in range(n):
                if not done.acquire(timeout=300):
                    raise TimeoutError("submit: results stopped coming")
            if failed:
                raise AssertionError(f"submit: {len(failed)} tasks failed, first: {failed[0]!r}")
        dt = time.perf_counter() - t0
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux
    return {"mode": mode, "tasks": n, "seconds": dt, "per_s": n / dt, "rss_start_mib": rss_start, "peak_rss_mib": peak}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--tasks", type=int, default=1_000_000)
    p.add_argument("--mode", choices=("map", "submit", "both"), default="both")
    p.add_argument("--chunksize", type=int, default=1000)
    p.add_argument("--max-outstanding", type=int, default=100_000)
    p.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    os.makedirs(os.path.join(BENCH, "results"), exist_ok=True)
    if args.child:
        print(json.dumps(child(args.mode, args.tasks, args.chunksize, args.max_outstanding)))
        return 0
    rows = []
    for mode in (("map", "submit") if args.mode == "both" else (args.mode,)):
        cmd = [sys.executable, __file__, "--child", "--mode", mode, "--tasks", str(args.tasks),
               "--chunksize", str(args.chunksize), "--max-outstanding", str(args.max_outstanding)]
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=3600)
        if out.returncode != 0:
            print(out.stdout, out.stderr, file=sys.stderr)
            return 1
        rows.append(json.loads(out.stdout.strip().splitlines()[-1]))
    print("| way | tasks | time (s) | calls/s | client RSS after start (MiB) | client peak RSS (MiB) |")
    print("|---|---|---|---|---|---|")
    for r in rows:
        way = (f"map(chunksize={args.chunksize})" if r["mode"] == "map"
               else f"submit loop (max_outstanding={args.max_outstanding:,})")
        print(f"| {way} | {r['tasks']:,} | {r['seconds']:.1f} | {r['per_s']:,.0f} | {r['rss_start_mib']:.0f} | "
              f"{r['peak_rss_mib']:.0f} |")
    print(f"\nload average at the end: {os.getloadavg()[0]:.2f} on {os.cpu_count()} CPUs")
    return 0


if __name__ == "__main__":
    sys.exit(main())
