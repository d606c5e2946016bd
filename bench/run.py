"""htex performance benchmark: htex next to concurrent.futures.ProcessPoolExecutor, in one run.

Usage (from the repository root, with the project's venv)::

    .venv/bin/python bench/run.py                 # everything, 5 rounds (about 5 minutes on 2 cores)
    .venv/bin/python bench/run.py --smoke         # tiny sizes, 1 round, checks results (< 30 s; for CI)
    .venv/bin/python bench/run.py --only W1,W2    # some workloads: W1 W2 W3 W4 W5 W6 MEM SCALE
    .venv/bin/python bench/run.py --rounds 3 --backends htex,ppe

Workloads (each on a fresh executor with 2 workers: htex with LocalProvider
and one block, ProcessPoolExecutor(2), and Parsl HTEX / Dask / Ray when
importable):

    W1     5,000 no-op tasks, submit all then wait all: tasks/s
    W2     200 sequential round trips (submit, wait, repeat): p50 latency, ms
    W3     500 tasks with a 1 MB bytes argument, returning len: MB/s
    W4     200 x time.sleep(0.05): efficiency = ideal time (200*0.05/2) / measured
    W5     start() to the first result, s; shutdown(), s
    W6     two pools of 2 workers, 16 x sleep(2) among 2,000 x sleep(0.001), shuffled: makespan / ideal
    MEM    PSS summed over the executor's child processes (client excluded), idle after start
    SCALE  one interchange with 1,000 vs 10 simulated managers: dispatch rate ratio (target >= 0.8),
           and the interchange's CPU for heartbeats of 1,000 idle managers (target < 5% of a core)

Rounds run the workloads in rotated order, and alternate which backend goes
first; the table shows the median over rounds, min-max in brackets, and
htex / baseline.  It is printed and written to bench/results/latest.md (raw
numbers in latest.json).  After every executor is shut down, the processes it
started are checked with psutil: a leak, a wrong result or an error makes
the exit status 1.  Timings are never asserted: --smoke is a correctness check.
"""

from __future__ import annotations

import argparse
import faulthandler
import json
import os
import platform
import resource
import shutil
import statistics
import subprocess
import sys
import threading
import time
import traceback
from dataclasses import asdict, dataclass, field, replace
from typing import Any

BENCH = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(BENCH)
# Workers of every backend import bench/benchtasks.py by reference: let them find it.
os.environ["PYTHONPATH"] = os.pathsep.join(p for p in (BENCH, os.environ.get("PYTHONPATH")) if p)
# Parsl starts its interchange and pools as console scripts (interchange.py, process_worker_pool.py):
# find this interpreter's, even when the venv is not activated.
os.environ["PATH"] = os.pathsep.join(p for p in (os.path.dirname(sys.executable), os.environ.get("PATH")) if p)

import psutil  # noqa: E402

import backends  # noqa: E402
import proctree  # noqa: E402
import scale  # noqa: E402
from workloads import FULL, SMOKE, WORKLOADS, Sizes, Workload, warm_up  # noqa: E402

BASELINE = "ppe"
MAIN = ("htex", "htex-pf", "htex-pf0", BASELINE)  # every round; the others only --extra-rounds
SPREAD_FLAG = 0.25  # flag a cell whose min-max spread exceeds this fraction of its median


def log(msg: str) -> None:
    print(msg, flush=True)


@dataclass
class Run:
    rounds: int
    smoke: bool
    backends: list[str]
    workloads: list[str]
    do_scale: bool
    skipped: dict[str, str]
    raw: dict[str, dict[str, list[dict[str, float]]]] = field(default_factory=dict)  # workload -> backend -> rounds
    info: dict[str, dict[str, str]] = field(default_factory=dict)  # workload -> backend -> last info line
    errors: list[str] = field(default_factory=list)
    leaks: list[str] = field(default_factory=list)
    scale_result: scale.ScaleResult | None = None
    scale_sizes: scale.ScaleSizes | None = None
    seen: set[proctree.Seen] = field(default_factory=set)
    neighbours: proctree.Neighbours | None = None


# ---------------------------------------------------------------------------
# running
# ---------------------------------------------------------------------------


def run_one(run: Run, w: Workload, name: str, sizes: Sizes, run_root: str) -> None:
    b = backends.make(name, run_root)
    if w.two_pools and type(b).start_two_pools is backends.Backend.start_two_pools:
        return  # no pools to balance (Parsl, Dask, Ray adapters)
    seen: set[proctree.Seen] = set()

    def track() -> None:
        markers = b.markers()
        proctree.MARKERS.update(markers)
        seen.update(proctree.snapshot(markers))

    t0 = time.monotonic()
    try:
        if w.lifecycle:
            metrics, info = w.run(b, sizes, track)
        else:
            b.start()
            warm_up(b, sizes, w.warm_fn(sizes) if w.warm_fn else None)
            track()
            metrics, info = w.run(b, sizes, track)
            track()
            b.shutdown()
    except Exception as exc:
        track()
        run.errors.append(f"{w.key} on {name}: {type(exc).__name__}: {exc}")
        log(f"    {w.key} {name}: FAILED\n{traceback.format_exc()}")
        try:
            b.abort()
        except Exception as exc2:
            run.errors.append(f"{w.key} on {name}: shutdown after the error failed too: {exc2!r}")
        metrics, info = {}, ""
    leaked = proctree.wait_gone(seen, 10.0)
    run.seen |= seen
    for s in leaked:
        run.leaks.append(f"{w.key} on {name}: pid {s.pid} still running after shutdown (killed): {s.cmd}")
    if metrics:
        run.raw.setdefault(w.key, {}).setdefault(name, []).append(metrics)
        if info:
            run.info.setdefault(w.key, {})[name] = info
        shown = ", ".join(f"{k}={_fmt(v)}" for k, v in metrics.items())
        log(f"    {w.key:<3} {name:<5} {shown}  ({time.monotonic() - t0:.1f} s){'  LEAKED' if leaked else ''}")


def rotate(items: list[str], r: int) -> list[str]:
    if not items:
        return items
    r %= len(items)
    return items[r:] + items[:r]


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    started = time.monotonic()
    load_before = os.getloadavg()
    _raise_fd_limit()
    available, skipped = backends.available()
    # Ray and Dask start slowly (seconds per executor): give them their own allowance.
    slow = sum(1 for name in ("ray", "dask") if name in available and (not args.backends or name in args.backends))
    _watchdog((90.0 + 120.0 * slow) if args.smoke
              else 300.0 + (150.0 + 120.0 * slow) * args.rounds + (240.0 if "SCALE" in args.only else 0.0))

    # The priority runs measure one feature's cost against htex's own: only when named in --backends.
    default = [b for b in available if not b.endswith("-prio")]
    skipped.update({b: "run only when named in --backends" for b in available if b.endswith("-prio")})
    if args.smoke and not args.backends:  # CI's check of htex: keep it fast; name others with --backends to include them
        default = [b for b in available if b in MAIN]
        skipped.update({b: "not run with --smoke unless named in --backends" for b in available if b not in default
                        and b not in skipped})
    chosen = [b for b in (args.backends or default) if b in available]
    for b in args.backends or []:
        if b not in backends.ALL:
            raise SystemExit(f"unknown backend {b!r}; known: {', '.join(backends.ALL)}")
        if b not in available:
            log(f"note: {b}: {skipped[b]}")
    sizes = SMOKE if args.smoke else FULL
    run = Run(rounds=args.rounds, smoke=args.smoke, backends=chosen, workloads=[k for k in WORKLOADS if k in args.only],
              do_scale="SCALE" in args.only, skipped={k: v for k, v in skipped.items() if k in (args.backends or backends.ALL)})
    for name, note in run.skipped.items():
        log(f"note: {name}: {note}")

    stamp = time.strftime("%Y%m%d-%H%M%S")
    run_root = os.path.join(BENCH, "results", "runinfo", f"{stamp}-{os.getpid()}")
    os.makedirs(run_root, exist_ok=True)
    pre_existing = proctree.snapshot()
    neighbours = proctree.Neighbours().start()

    for r in range(run.rounds if run.workloads else 0):
        log(f"round {r + 1}/{run.rounds}")
        for key in rotate(run.workloads, r):
            for name in rotate(run.backends, r):
                if name in MAIN or r < args.extra_rounds:
                    run_one(run, WORKLOADS[key], name, sizes, run_root)

    if run.do_scale:
        log("scale test")
        s = scale.ScaleSizes()
        if args.smoke:
            s = replace(s, managers=(4, 20), tasks=500, rounds=1, sim_procs=2, hb_managers=20, hb_window=1.5,
                        base_window=0.5, timeout=20.0)
        if args.scale_managers:
            few, many = (int(x) for x in args.scale_managers.split(","))
            s = replace(s, managers=(few, many), hb_managers=many)
        if args.scale_rounds is not None:
            s = replace(s, rounds=args.scale_rounds)
        if args.scale_tasks is not None:
            s = replace(s, tasks=args.scale_tasks)
        if args.scale_workers is not None:
            s = replace(s, worker_count=args.scale_workers)
        if args.scale_prefetch is not None:
            s = replace(s, prefetch_capacity=args.scale_prefetch)
        run.scale_result = scale.run(s, run_root, log)
        run.errors += run.scale_result.errors
        run.leaks += run.scale_result.leaks
        run.scale_sizes = s

    # Whatever this run ever saw in its tree must be gone, and nothing new may be left in it.
    for s_ in proctree.wait_gone(run.seen, 5.0):
        run.leaks.append(f"end of run: pid {s_.pid} still running (killed): {s_.cmd}")
    for p in proctree.descendants(list(proctree.MARKERS)):
        seen_before = any(p.pid == x.pid for x in pre_existing)
        if not seen_before and not any(h in proctree.cmdline(p) for h in proctree.SHARED_HELPERS):
            try:
                run.leaks.append(f"end of run: unexpected child pid {p.pid} (killed): {' '.join(p.cmdline())[:200]}")
                p.kill()
            except psutil.Error:
                pass

    neighbours.stop()
    run.neighbours = neighbours
    elapsed = time.monotonic() - started
    text = render(run, args, elapsed, load_before, os.getloadavg())
    print()
    print(text)
    out = args.out or os.path.join(BENCH, "results", "smoke.md" if args.smoke else "latest.md")
    os.makedirs(os.path.dirname(out), exist_ok=True)
    with open(out, "w") as f:
        f.write(text)
    with open(os.path.splitext(out)[0] + ".json", "w") as f:
        json.dump(_raw_json(run, elapsed), f, indent=1)
    log(f"\nwritten to {os.path.relpath(out)} (and .json); took {elapsed:.0f} s")
    ok = not run.errors and not run.leaks
    if ok and not args.keep_logs:
        shutil.rmtree(run_root, ignore_errors=True)
    elif not ok:
        log(f"logs kept in {os.path.relpath(run_root)}")
    if run.leaks:
        log("\nFAILED: processes were left behind:\n  " + "\n  ".join(run.leaks))
    if run.errors:
        log("\nFAILED: errors:\n  " + "\n  ".join(run.errors))
    if ok and args.smoke:
        log("SMOKE OK: every selected workload ran on every backend with correct results, and nothing leaked")
    return 0 if ok else 1


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description="htex benchmark (see the top of bench/run.py)")
    p.add_argument("--smoke", action="store_true", help="tiny sizes, one round: a correctness check (< 30 s)")
    p.add_argument("--rounds", type=int, default=None, help="rounds (default 5; 1 with --smoke)")
    p.add_argument("--extra-rounds", type=int, default=3,
                   help="rounds for Parsl/Dask/Ray, at most --rounds (default 3: Parsl alone takes ~1 min a round)")
    p.add_argument("--only", default="", help="comma-separated: W1,W2,W3,W4,W5,W6,MEM,SCALE (default all)")
    p.add_argument("--backends", default="", help=f"comma-separated among {','.join(backends.ALL)} (default: all importable)")
    p.add_argument("--out", default=None, help="Markdown output (default bench/results/latest.md, smoke.md with --smoke)")
    p.add_argument("--scale-managers", default=None, help="FEW,MANY simulated managers (default 10,1000)")
    p.add_argument("--scale-rounds", type=int, default=None, help="rounds of the dispatch comparison (default 3)")
    p.add_argument("--scale-tasks", type=int, default=None, help="tasks per dispatch measurement (default 20000)")
    p.add_argument("--scale-workers", type=int, default=None, help="worker_count of each simulated manager (default 8)")
    p.add_argument("--scale-prefetch", type=int, default=None, help="prefetch_capacity of each simulated manager (default 0)")
    p.add_argument("--keep-logs", action="store_true", help="keep the executors' run directories (bench/results/runinfo)")
    args = p.parse_args(argv)
    known = [*WORKLOADS, "SCALE"]
    only = [x.strip().upper() for x in args.only.split(",") if x.strip()] or known
    bad = [x for x in only if x not in known]
    if bad:
        p.error(f"unknown workload(s) {bad}; known: {','.join(known)}")
    args.only = only
    args.backends = [x.strip().lower() for x in args.backends.split(",") if x.strip()]
    if args.rounds is None:
        args.rounds = 1 if args.smoke else 5
    if args.rounds < 1:
        p.error("--rounds must be >= 1")
    return args


def _raise_fd_limit() -> None:
    """Descriptors for the interchange (which inherits this limit): 1 per simulated manager (its one connection).

    10,000 managers need 10,000 and more; a hard limit below that is raised when we may (root), else the
    soft limit goes up to the hard one (20,000 on the machine the scale figures come from).
    """
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = 65536
    if hard != resource.RLIM_INFINITY and hard < want:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (want, want))
            return
        except (ValueError, OSError):
            want = hard
    if soft != resource.RLIM_INFINITY and soft < want:
        resource.setrlimit(resource.RLIMIT_NOFILE, (want, hard))


def _watchdog(limit: float) -> None:
    """If the run hangs, print every thread's stack, kill what we started, and exit 3."""

    def fire() -> None:
        log(f"\nWATCHDOG: the benchmark did not finish within {limit:.0f} s; stacks follow")
        faulthandler.dump_traceback(all_threads=True)
        for p in proctree.descendants():
            try:
                p.kill()
            except psutil.Error:
                pass
        os._exit(3)

    t = threading.Timer(limit, fire)
    t.daemon = True
    t.start()


# ---------------------------------------------------------------------------
# reporting
# ---------------------------------------------------------------------------


def _fmt(x: float) -> str:
    a = abs(x)
    if x == int(x) and a < 1e12:
        return f"{int(x):,}"
    if a >= 1000:
        return f"{x:,.0f}"
    if a >= 100:
        return f"{x:.0f}"
    if a >= 10:
        return f"{x:.1f}"
    if a >= 1:
        return f"{x:.2f}"
    return f"{x:.3f}"


def _cell(values: list[float]) -> tuple[str, float | None]:
    if not values:
        return "-", None
    med = statistics.median(values)
    if len(values) == 1:
        return _fmt(med), med
    spread = (max(values) - min(values)) / med if med else 0.0
    flag = " †" if spread > SPREAD_FLAG else ""
    return f"{_fmt(med)} ({_fmt(min(values))}-{_fmt(max(values))}){flag}", med


def _git() -> str:
    try:
        rev = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True, text=True,
                             timeout=10).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--", "src"], cwd=REPO, capture_output=True, text=True,
                               timeout=10).stdout.strip()
        return f"{rev}{' + uncommitted changes in src/' if dirty else ''}"
    except Exception:
        return "unknown"


def render(run: Run, args: argparse.Namespace, elapsed: float, load0: tuple[float, float, float],
           load1: tuple[float, float, float]) -> str:
    import zmq

    import htex

    titles = {n: backends.ALL[n][0].title for n in run.backends}
    others = [n for n in run.backends if n not in ("htex", BASELINE)]
    lines = [
        f"# htex benchmark{' (smoke: tiny sizes, not a measurement)' if run.smoke else ''}",
        "",
        f"- {time.strftime('%Y-%m-%d %H:%M:%S %Z')}, `{' '.join(['bench/run.py', *(argv_shown(args))])}`, took {elapsed:.0f} s",
        f"- htex {htex.__version__} at {_git()}; Python {platform.python_version()}, pyzmq {zmq.__version__}, "
        f"libzmq {zmq.zmq_version()}",
        f"- {os.cpu_count()} CPUs; load average {load0[0]:.2f} at start, {load1[0]:.2f} at end",
        f"- {run.rounds} round(s) ({min(args.extra_rounds, run.rounds)} for Parsl/Dask/Ray), workloads in rotated order, "
        "backends alternating who goes first; "
        "cell = median (min-max over rounds); † = min-max spread above "
        f"{SPREAD_FLAG:.0%} of the median",
        "",
    ]
    if run.workloads and run.backends:
        head = ["Workload", "Metric", "Better", *(titles[n] for n in run.backends if n in ("htex", BASELINE))]
        if "htex" in run.backends and BASELINE in run.backends:
            head.append(f"htex / {titles[BASELINE]}")
        head += [titles[n] for n in others]
        lines += ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
        for key in run.workloads:
            w = WORKLOADS[key]
            for m in w.metrics:
                per = {n: [x[m.key] for x in run.raw.get(key, {}).get(n, []) if m.key in x] for n in run.backends}
                cells = {n: _cell(v) for n, v in per.items()}
                label = f"{m.label}{f' ({m.unit})' if m.unit else ''}"
                row = [f"{key}: {w.title}", label, m.better]
                row += [cells[n][0] for n in run.backends if n in ("htex", BASELINE)]
                if "htex" in run.backends and BASELINE in run.backends:
                    a, b = cells["htex"][1], cells[BASELINE][1]
                    row.append(f"{a / b:.2f}" if a is not None and b else "-")
                row += [cells[n][0] for n in others]
                lines.append("| " + " | ".join(row) + " |")
        lines.append("")
        detail = [(k, n, run.info[k][n]) for k in run.workloads for n in run.backends if n in run.info.get(k, {})]
        if detail:
            lines += ["Details (last round):", ""]
            lines += [f"- {k} {titles[n]}: {text}" for k, n, text in detail]
            lines.append("")
    if run.scale_result is not None and run.scale_sizes is not None:
        lines += render_scale(run.scale_result, run.scale_sizes)
    notes = [f"- {titles.get(n, n)}: {note}" for n, note in run.skipped.items()]
    nb = run.neighbours
    if nb is not None and (nb.max_foreign_htex or nb.pytest_seen):
        notes.append(
            f"- **Not a quiet machine**: up to {nb.max_foreign_htex} htex processes that are not this run's, and "
            f"{len(nb.pytest_seen)} pytest process(es), were seen during the run (sampled every {nb.every:g} s). They "
            "compete for the CPUs: figures of such a run are noisier and lower."
        )
    elif nb is not None:
        notes.append(f"- No other htex or pytest process was seen during the run ({nb.samples} samples).")
    notes += [f"- ERROR: {e}" for e in run.errors]
    notes += [f"- LEAK: {x}" for x in run.leaks]
    if not run.leaks:
        notes.append("- Leak check: every process started by every executor was gone after its shutdown.")
    lines += ["## Notes", "", *notes, ""]
    return "\n".join(lines)


def argv_shown(args: argparse.Namespace) -> list[str]:
    out = []
    if args.smoke:
        out.append("--smoke")
    if any(k in args.only for k in WORKLOADS):
        out += ["--rounds", str(args.rounds)]
    if args.only != [*WORKLOADS, "SCALE"]:
        out += ["--only", ",".join(args.only)]
    if args.backends:
        out += ["--backends", ",".join(args.backends)]
    return out


def render_scale(res: scale.ScaleResult, s: scale.ScaleSizes) -> list[str]:
    few, many = s.managers
    lines = [
        "## Interchange scale test",
        "",
        f"One interchange (real executor, managed=False), tasks submitted through the real executor; simulated "
        f"managers in {s.sim_procs} processes, each registering worker_count={s.worker_count}, "
        f"prefetch_capacity={s.prefetch_capacity} and answering tasks at once (after a Progress); {s.tasks:,} no-op "
        f"tasks per measurement after a warm-up, {s.rounds} round(s), order alternating. Client, interchange and "
        f"simulated managers share the {os.cpu_count()} CPUs, so the rate is the whole system's; the interchange's "
        "CPU per task is the number that isolates the interchange.",
        "",
        "| Measure | Value | Target | Met |",
        "|---|---|---|---|",
    ]

    def col(n: int, k: str) -> tuple[str, float | None]:
        return _cell([d[k] for d in res.dispatch.get(n, [])])

    rf, rm = col(few, "rate"), col(many, "rate")
    lines.append(f"| dispatch rate, {few} managers (tasks/s) | {rf[0]} | | |")
    lines.append(f"| dispatch rate, {many:,} managers (tasks/s) | {rm[0]} | | |")
    if rf[1] and rm[1] is not None:
        ratio = rm[1] / rf[1]
        met = "yes" if ratio >= 0.8 else "**no**"
        lines.append(f"| ratio {many:,} / {few} (of the medians) | {ratio:.2f} | >= 0.8 | {met} |")
        # Each round measures both sizes back to back, so a round's own ratio cancels the machine's
        # drift between rounds, which the ratio of medians (taken from different rounds) does not.
        paired = [m["rate"] / f["rate"] for f, m in zip(res.dispatch.get(few, []), res.dispatch.get(many, []), strict=False)
                  if f.get("rate")]
        if paired:
            med = statistics.median(paired)
            lines.append(f"| ratio {many:,} / {few}, median of each round's own ratio | {med:.2f} "
                         f"({min(paired):.2f}-{max(paired):.2f}) | >= 0.8 | {'yes' if med >= 0.8 else '**no**'} |")
    ic = [_cell([d["ic_us_per_task"] for d in res.dispatch.get(n, [])])[1] for n in (few, many)]
    if ic[0] and ic[1]:
        lines.append(f"| interchange efficiency, CPU per task {few} / {many:,} managers | {ic[0] / ic[1]:.2f} | | |")
    for k, label in (("ic_us_per_task", "interchange CPU per task (µs)"), ("ic_cpu_pct", "interchange CPU (% of a core)"),
                     ("client_cpu_pct", "client process CPU (% of a core)"),
                     ("sims_cpu_pct", "simulated managers' CPU (% of a core)"),
                     ("register_s", "time for all managers to register (s)"),
                     ("managers_used", "managers that received tasks")):
        lines.append(f"| {label}, {few} / {many:,} managers | {col(few, k)[0]} / {col(many, k)[0]} | | |")
    h = res.heartbeat
    if h:
        # Measured at a short period, where the cost is large enough to measure; the target is
        # about htex as configured, so it is judged on the figure scaled to the default period.
        lines += [
            f"| interchange CPU for heartbeats alone, {h['managers']:,.0f} idle managers, period {h['period']:.0f} s "
            f"(% of a core, over {h['window']:.0f} s; {scale.DEFAULT_PERIOD / h['period']:.0f}x the default rate) | "
            f"{h['ic_hb_pct']:.2f} | | |",
            f"| same, scaled to the default period ({scale.DEFAULT_PERIOD} s) | {h['ic_hb_pct_default']:.3f} | < 5 | "
            f"{'yes' if h['ic_hb_pct_default'] < 5 else '**no**'} |",
            f"| interchange CPU: idle with 0 managers / total with {h['managers']:,.0f} (% of a core) | "
            f"{h['ic_idle_base_pct']:.2f} / {h['ic_total_pct']:.2f} | | |",
            f"| heartbeats per manager per period, received / sent by the managers | "
            f"{h['hb_in_per_period']:.2f} / {h['hb_out_per_period']:.2f} | ~1 | |",
        ]
    lines.append("")
    return lines


def _raw_json(run: Run, elapsed: float) -> dict[str, Any]:
    return {
        "elapsed_s": elapsed,
        "rounds": run.rounds,
        "smoke": run.smoke,
        "backends": run.backends,
        "raw": run.raw,
        "info": run.info,
        "scale": asdict(run.scale_result) if run.scale_result is not None else None,
        "errors": run.errors,
        "leaks": run.leaks,
        "skipped": run.skipped,
    }


if __name__ == "__main__":
    sys.exit(main())
