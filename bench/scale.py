"""Interchange scale test: one real interchange, many simulated managers.

The interchange is started by a real ``HighThroughputExecutor(managed=False)``
(so no block is started) and tasks go through the real executor; the pools
are ``simmanagers.py`` processes, each hosting many simulated managers (see
there).  Two measurements:

dispatch
    Submit ``tasks`` no-op tasks, wait for all, with ``managers`` = few (10)
    and many (1,000) simulated managers of ``worker_count`` workers each
    (default heartbeat period).  Reported: tasks/s for each and the ratio
    many/few (target >= 0.8), plus the CPU used by the interchange, the
    client and the simulated managers while it ran (on 2 cores they compete,
    so this says who the bottleneck was).

heartbeats
    With ``heartbeat_period=1`` (to make the cost visible): the interchange's
    CPU over ``base_window`` s with no manager, then over ``hb_window`` s with
    ``hb_managers`` idle managers heartbeating.  Heartbeat cost = the
    difference, in % of one core (target < 5%); it scales as 1/period, so it
    is also reported scaled to the default period (30 s).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import psutil

import benchtasks
import proctree

SIM_SCRIPT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "simmanagers.py")
DEFAULT_PERIOD = 30


@dataclass
class ScaleSizes:
    managers: tuple[int, int] = (10, 1000)
    tasks: int = 50_000
    rounds: int = 3
    worker_count: int = 8
    prefetch_capacity: int = 0
    sim_procs: int = 4
    hb_managers: int = 1000
    hb_period: int = 1
    hb_window: float = 10.0
    base_window: float = 5.0
    timeout: float = 300.0


@dataclass
class ScaleResult:
    dispatch: dict[int, list[dict[str, float]]] = field(default_factory=dict)  # managers -> one dict per round
    heartbeat: dict[str, float] = field(default_factory=dict)
    leaks: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)


def _cpu(p: psutil.Process) -> float:
    t = p.cpu_times()
    return float(t.user + t.system)


def _interchange() -> psutil.Process:
    found = [p for p in proctree.descendants() if "htex.interchange" in proctree.cmdline(p)]
    if len(found) != 1:
        raise RuntimeError(f"expected one interchange among this process's children, found {len(found)}")
    return found[0]


class Sims:
    """``procs`` simulated-manager processes sharing ``n`` managers."""

    def __init__(self, ex: Any, n: int, procs: int, worker_count: int, period: float, tag: str, logdir: str,
                 prefetch_capacity: int = 0) -> None:
        procs = max(1, min(procs, n))
        self.procs: list[subprocess.Popen[bytes]] = []
        for k in range(procs):
            ids = [f"sim-{tag}-{k}-{i}" for i in range(k, n, procs)]
            cfg = {
                "task_url": f"tcp://127.0.0.1:{ex.worker_task_port}",
                "result_url": f"tcp://127.0.0.1:{ex.worker_result_port}",  # the same, since one connection a pool
                "manager_ids": ids, "worker_count": worker_count, "prefetch_capacity": prefetch_capacity,
                "heartbeat_period": period, "seed": k,
            }
            with open(os.path.join(logdir, f"sim-{tag}-{k}.stderr"), "wb") as err:
                self.procs.append(subprocess.Popen(
                    [sys.executable, SIM_SCRIPT, json.dumps(cfg)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=err,
                ))
        self.started = time.monotonic()
        self.ps = [psutil.Process(p.pid) for p in self.procs]

    def cpu(self) -> float:
        return sum(_cpu(p) for p in self.ps)

    def stop(self) -> dict[str, float]:
        """Stop them all; return their counters summed, plus ``lifetime`` (s)."""
        for p in self.procs:
            try:
                assert p.stdin is not None
                p.stdin.write(b"stop\n")
                p.stdin.flush()
            except (BrokenPipeError, OSError):
                pass
        total: dict[str, float] = {"lifetime": time.monotonic() - self.started}
        for p in self.procs:
            try:
                out, _ = p.communicate(timeout=30)
            except subprocess.TimeoutExpired:
                p.kill()
                out, _ = p.communicate()
            lines = out.decode(errors="replace").strip().splitlines()
            if p.returncode != 0 or not lines:
                raise RuntimeError(f"a simulated-manager process exited with {p.returncode}; see its .stderr")
            for k, v in json.loads(lines[-1]).items():
                total[k] = total.get(k, 0) + v
        return total


def _wait_registered(ex: Any, n: int, timeout: float = 120.0) -> float:
    t0 = time.monotonic()
    while True:
        pools = ex.stats()["pools"]
        if pools >= n:
            return time.monotonic() - t0
        if time.monotonic() - t0 > timeout:
            raise TimeoutError(f"only {pools} of {n} simulated managers registered in {timeout:g} s")
        time.sleep(0.1)


def _executor(run_root: str, label: str, period: int) -> Any:
    from htex import HighThroughputExecutor

    ex = HighThroughputExecutor(
        label=label, managed=False, run_dir=tempfile.mkdtemp(prefix="scale-", dir=run_root),
        heartbeat_period=period, heartbeat_threshold=max(4 * period, 30),
        # Plain TCP, as the figures before encryption became the default: this measures dispatch,
        # and the simulated managers hold no keys (CURVE's crypto runs on libzmq's I/O thread).
        encrypted=False,
    )
    ex.start()
    return ex


def _run_tasks(ex: Any, n: int, timeout: float) -> None:
    import concurrent.futures

    futs = [ex.submit(benchtasks.noop, {}) for _ in range(n)]
    _, not_done = concurrent.futures.wait(futs, timeout=timeout)
    if not_done:
        raise TimeoutError(f"{len(not_done)} of {n} tasks not done after {timeout:g} s")
    bad = [f.result() for f in futs if f.result() is not None]
    if bad:
        raise AssertionError(f"{len(bad)} tasks returned something other than None")


def dispatch_once(n: int, s: ScaleSizes, run_root: str, result: ScaleResult, tag: str) -> dict[str, float]:
    ex = _executor(run_root, f"dispatch-{n}", DEFAULT_PERIOD)
    sims = None
    seen = proctree.snapshot()
    try:
        sims = Sims(ex, n, s.sim_procs, s.worker_count, DEFAULT_PERIOD, tag, ex.logdir, s.prefetch_capacity)
        seen |= proctree.snapshot()
        reg_s = _wait_registered(ex, n)
        ic, me = _interchange(), psutil.Process()
        _run_tasks(ex, max(500, 2 * n), s.timeout)  # warm-up: every manager gets the function
        before = ex.stats()
        c0 = (_cpu(ic), _cpu(me), sims.cpu())
        t0 = time.perf_counter()
        _run_tasks(ex, s.tasks, s.timeout)
        dt = time.perf_counter() - t0
        c1 = (_cpu(ic), _cpu(me), sims.cpu())
        after = ex.stats()
        if after["done"] - before["done"] != s.tasks or after["lost"]:
            raise AssertionError(f"interchange counters off: before {before}, after {after}")
        if after["pools"] != n:
            raise AssertionError(f"{n - after['pools']} simulated managers were lost during the run")
        out = {
            "rate": s.tasks / dt,
            "seconds": dt,
            "register_s": reg_s,
            "ic_cpu_pct": 100 * (c1[0] - c0[0]) / dt,
            "ic_us_per_task": 1e6 * (c1[0] - c0[0]) / s.tasks,
            "client_cpu_pct": 100 * (c1[1] - c0[1]) / dt,
            "sims_cpu_pct": 100 * (c1[2] - c0[2]) / dt,
        }
    finally:
        seen |= proctree.snapshot()
        ex.shutdown(wait=False, cancel_futures=True)
        counters = sims.stop() if sims is not None else {}
        result.leaks += [f"scale dispatch n={n}: {x.pid} {x.cmd}" for x in proctree.wait_gone(seen, 10.0)]
    out["managers_used"] = counters.get("managers_used", 0)
    if counters.get("rejected"):
        raise AssertionError(f"{counters['rejected']} simulated managers were rejected")
    return out


def heartbeat_cost(s: ScaleSizes, run_root: str, result: ScaleResult) -> dict[str, float]:
    n, period = s.hb_managers, s.hb_period
    ex = _executor(run_root, "heartbeats", period)
    sims = None
    seen = proctree.snapshot()
    try:
        ic = _interchange()
        time.sleep(1.0)
        c0 = _cpu(ic)
        time.sleep(s.base_window)
        base = 100 * (_cpu(ic) - c0) / s.base_window
        sims = Sims(ex, n, s.sim_procs, 1, period, "hb", ex.logdir)
        seen |= proctree.snapshot()
        _wait_registered(ex, n)
        time.sleep(2.0 * period)  # past the registration burst
        c0, sc0, t0 = _cpu(ic), sims.cpu(), time.monotonic()
        time.sleep(s.hb_window)
        window = time.monotonic() - t0
        total = 100 * (_cpu(ic) - c0) / window
        sims_pct = 100 * (sims.cpu() - sc0) / window
        stats = ex.stats()
        if stats["pools"] != n:
            raise AssertionError(f"{n - stats['pools']} idle simulated managers were declared lost")
    finally:
        seen |= proctree.snapshot()
        ex.shutdown(wait=False, cancel_futures=True)
        counters = sims.stop() if sims is not None else {}
        result.leaks += [f"scale heartbeats: {x.pid} {x.cmd}" for x in proctree.wait_gone(seen, 10.0)]
    hb_only = max(0.0, total - base)
    life = counters.get("lifetime", 1.0)
    return {
        "managers": n,
        "period": period,
        "window": window,
        "ic_total_pct": total,
        "ic_idle_base_pct": base,
        "ic_hb_pct": hb_only,
        "ic_hb_pct_default": hb_only * period / DEFAULT_PERIOD,
        "sims_cpu_pct": sims_pct,
        # heartbeats per manager per period, each way, over the sims' lifetime (should be about 1)
        "hb_in_per_period": counters.get("hb_received", 0) / n / (life / period),
        "hb_out_per_period": counters.get("hb_sent", 0) / n / (life / period),
    }


def run(s: ScaleSizes, run_root: str, log: Callable[[str], None]) -> ScaleResult:
    result = ScaleResult()
    few, many = s.managers
    for r in range(s.rounds):
        order = [few, many] if r % 2 == 0 else [many, few]
        for n in order:
            try:
                d = dispatch_once(n, s, run_root, result, f"r{r}n{n}")
                result.dispatch.setdefault(n, []).append(d)
                log(f"  scale round {r + 1}: {n:>5} managers: {d['rate']:,.0f} tasks/s "
                    f"(interchange {d['ic_cpu_pct']:.0f}% CPU, client {d['client_cpu_pct']:.0f}%, "
                    f"sims {d['sims_cpu_pct']:.0f}%; {d['managers_used']:.0f} managers got tasks)")
            except Exception as exc:
                result.errors.append(f"scale dispatch n={n} round {r + 1}: {type(exc).__name__}: {exc}")
                log(f"  scale round {r + 1}: {n} managers: FAILED {type(exc).__name__}: {exc}")
    try:
        result.heartbeat = heartbeat_cost(s, run_root, result)
        h = result.heartbeat
        log(f"  heartbeats: {h['managers']:.0f} idle managers, period {h['period']:.0f} s: interchange "
            f"{h['ic_total_pct']:.2f}% of a core (idle base {h['ic_idle_base_pct']:.2f}%), heartbeats alone "
            f"{h['ic_hb_pct']:.2f}%, scaled to period {DEFAULT_PERIOD}: {h['ic_hb_pct_default']:.3f}%")
    except Exception as exc:
        result.errors.append(f"scale heartbeats: {type(exc).__name__}: {exc}")
        log(f"  heartbeats: FAILED {type(exc).__name__}: {exc}")
    return result
