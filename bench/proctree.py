"""This process's descendants: who they are, how much memory they use, and whether any outlived its backend.

A process is remembered by (pid, create time), so a recycled pid is never
mistaken for a leak.  Leak checks look only at processes this benchmark saw
in its own tree: other work on the machine (another test run, say) is never
counted or touched.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterable
from dataclasses import dataclass

import psutil

MiB = 2**20


@dataclass(frozen=True)
class Seen:
    pid: int
    created: float
    cmd: str

    def alive(self) -> psutil.Process | None:
        try:
            p = psutil.Process(self.pid)
            if p.create_time() != self.created or p.status() == psutil.STATUS_ZOMBIE:
                return None
            return p
        except psutil.Error:
            return None


# Strings (run directories) in the command lines of processes that backends started but that left
# this process's tree (Parsl's LocalProvider backgrounds its blocks, so they are reparented to init).
MARKERS: set[str] = set()


def descendants(markers: Iterable[str] = ()) -> list[psutil.Process]:
    """This process's descendants, plus processes whose command line has one of ``markers``, and theirs."""
    me = os.getpid()
    procs = {p.pid: p for p in psutil.Process().children(recursive=True)}
    markers = [m for m in markers if m]
    if markers:
        for p in psutil.process_iter(["pid", "cmdline"]):
            if p.pid == me or p.pid in procs:
                continue
            cmd = " ".join(p.info["cmdline"] or [])
            if any(m in cmd for m in markers):
                procs[p.pid] = p
                try:
                    for c in p.children(recursive=True):
                        procs.setdefault(c.pid, c)
                except psutil.Error:
                    pass
    return list(procs.values())


def cmdline(p: psutil.Process) -> str:
    """The command line, or "" for a process that is gone or a zombie."""
    try:
        return " ".join(p.cmdline())
    except psutil.Error:
        return ""


# The stdlib's multiprocessing resource tracker (Dask starts one) serves the whole client
# process and exits with it: not a leak of the backend that happened to start it.
SHARED_HELPERS = ("multiprocessing.resource_tracker",)


def snapshot(markers: Iterable[str] = ()) -> set[Seen]:
    out = set()
    for p in descendants(markers):
        try:
            cmd = " ".join(p.cmdline())
            if not any(h in cmd for h in SHARED_HELPERS):
                out.add(Seen(p.pid, p.create_time(), cmd[:200]))
        except psutil.Error:
            pass
    return out


def role(cmd: str) -> str:
    if "interchange" in cmd:
        return "interchange"
    if "process_worker_pool" in cmd:
        return "pool"
    if "htex.worker" in cmd or "spawn_main" in cmd or "run.py" in cmd:  # run.py: forked by ProcessPool
        return "worker"
    if "resource_tracker" in cmd:
        return "multiprocessing resource tracker"
    if cmd.startswith(("/bin/bash", "bash")):
        return "block script (bash)"
    return cmd.split(" ")[0].rsplit("/", 1)[-1] or "?"


def pss_by_role(markers: Iterable[str] = ()) -> tuple[float, dict[str, tuple[int, float]]]:
    """Total PSS (MiB) of all descendants (see ``descendants``), and (count, MiB) per role."""
    total = 0.0
    roles: dict[str, tuple[int, float]] = {}
    for p in descendants(markers):
        try:
            pss = p.memory_full_info().pss / MiB
            r = role(" ".join(p.cmdline()))
        except psutil.Error:
            continue
        total += pss
        n, m = roles.get(r, (0, 0.0))
        roles[r] = (n + 1, m + pss)
    return total, roles


def wait_gone(seen: set[Seen], grace: float) -> list[Seen]:
    """Wait up to ``grace`` s for every process in ``seen`` to end; kill and return those that did not."""
    deadline = time.monotonic() + grace
    left = [s for s in seen if s.alive()]
    while left and time.monotonic() < deadline:
        time.sleep(0.05)
        left = [s for s in left if s.alive()]
    for s in left:
        p = s.alive()
        if p is not None:
            try:
                p.kill()  # one of ours (it was in our tree), by pid
            except psutil.Error:
                pass
    return left


HTEX_MARKERS = ("htex.interchange", "htex.process_worker_pool", "htex.worker", "process_worker_pool")


class Neighbours:
    """Samples, in a background thread, what else runs on the machine: other htex processes and pytest.

    On a 2-core machine they skew the timings; and the test suite's leak check
    (tests/conftest.py) kills every htex process that appears on the machine
    during a test, this benchmark's included.  The report says if either was seen.
    """

    def __init__(self, every: float = 3.0) -> None:
        import threading

        self.every = every
        self.max_foreign_htex = 0
        self.pytest_seen: set[str] = set()
        self.samples = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="bench-neighbours", daemon=True)

    def start(self) -> Neighbours:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(10)

    def _loop(self) -> None:
        while True:
            self.sample()
            if self._stop.wait(self.every):
                return

    def sample(self) -> None:
        ours = {p.pid for p in descendants(list(MARKERS))} | {os.getpid()}
        foreign = 0
        for p in psutil.process_iter(["pid", "cmdline"]):
            if p.info["pid"] in ours:
                continue
            cmd = " ".join(p.info["cmdline"] or [])
            if any(m in cmd for m in HTEX_MARKERS) and not _started_by_us(p):
                foreign += 1
            elif "pytest" in cmd and "python" in cmd:
                self.pytest_seen.add(cmd[:120])
        self.max_foreign_htex = max(self.max_foreign_htex, foreign)
        self.samples += 1


def _started_by_us(p: psutil.Process) -> bool:
    """A child of ours started after the snapshot of our tree was taken (the two are not one atomic look)."""
    try:
        return os.getpid() in {q.pid for q in p.parents()}
    except psutil.Error:
        return True  # gone already: nothing that competes for the CPUs
