"""One small adapter per system under test, so the workloads are written once.

Every adapter runs 2 workers on this machine:

- ``htex``      htex's HighThroughputExecutor, LocalProvider, one block, ``max_workers=2``
- ``ppe``       ``concurrent.futures.ProcessPoolExecutor(2)``: the baseline
- ``parsl``     Parsl's HighThroughputExecutor, driven directly (``submit(fn, {}, *args)``) after ``parsl.load``
- ``dask``      ``distributed.LocalCluster(n_workers=2, threads_per_worker=1)``
- ``ray``       ``ray.init(num_cpus=2)``, ``ray.remote(fn)``

The last three run only when importable (``available()``).  The Parsl
adapter has been run (Parsl 2026.10.26); the Dask and Ray adapters have not
(those packages were not installed): treat their first numbers with care.
"""

from __future__ import annotations

import concurrent.futures
import importlib.util
import os
import tempfile
import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from typing import Any

WORKERS = 2


class Backend(ABC):
    name: str = ""
    title: str = ""

    def __init__(self, run_root: str) -> None:
        self.run_root = run_root  # where to put run directories and logs

    @abstractmethod
    def start(self) -> None:
        """Start the executor (htex: interchange and block; others: whatever they start eagerly)."""

    @abstractmethod
    def submit(self, fn: Callable[..., Any], *args: Any) -> Any:
        """Submit one call; return a handle that ``gather`` understands."""

    @abstractmethod
    def gather(self, handles: Sequence[Any], timeout: float) -> list[Any]:
        """Wait for all the handles (at most ``timeout`` s) and return their results in order."""

    @abstractmethod
    def shutdown(self) -> None:
        """Stop everything the backend started."""

    def abort(self) -> None:
        """Best-effort stop after an error (do not wait for outstanding work)."""
        self.shutdown()

    def markers(self) -> list[str]:
        """Strings in the command lines of processes this backend starts outside our process tree."""
        return []

    def start_two_pools(self, timeout: float) -> None:
        """Start with two pools (blocks) of WORKERS workers each (W6); backends without pools do not."""
        raise NotImplementedError(f"{self.name}: no two-pool configuration")


def _mod(name: str) -> Any:
    """Import an optional package (untyped, and maybe absent: imported only when its backend runs)."""
    return importlib.import_module(name)


def _wait_futures(futs: Sequence[concurrent.futures.Future[Any]], timeout: float) -> list[Any]:
    _, not_done = concurrent.futures.wait(futs, timeout=timeout)
    if not_done:
        raise TimeoutError(f"{len(not_done)} of {len(futs)} tasks not done after {timeout:g} s")
    return [f.result() for f in futs]


class HtexBackend(Backend):
    name = "htex"
    title = "htex"

    def __init__(self, run_root: str, **executor_kwargs: Any) -> None:
        super().__init__(run_root)
        self.kwargs = executor_kwargs
        self.ex: Any = None

    def start(self) -> None:
        from htex import HighThroughputExecutor
        from htex.providers.local import LocalProvider

        os.makedirs(self.run_root, exist_ok=True)
        self.ex = HighThroughputExecutor(
            label="htex",
            max_workers=WORKERS,
            provider=LocalProvider(init_blocks=1, min_blocks=0, max_blocks=1),
            run_dir=tempfile.mkdtemp(prefix="htex-", dir=self.run_root),
            **self.kwargs,
        )
        self.ex.start()

    def start_two_pools(self, timeout: float) -> None:
        from htex import HighThroughputExecutor
        from htex.providers.local import LocalProvider

        os.makedirs(self.run_root, exist_ok=True)
        self.ex = HighThroughputExecutor(
            label="htex",
            max_workers=WORKERS,
            provider=LocalProvider(init_blocks=2, min_blocks=2, max_blocks=2),
            run_dir=tempfile.mkdtemp(prefix="htex-", dir=self.run_root),
            **self.kwargs,
        )
        self.ex.start()
        deadline = time.monotonic() + timeout
        while len(self.ex.connected_managers) < 2:  # both pools, before the clock starts
            if time.monotonic() > deadline:
                raise TimeoutError(f"two pools did not connect within {timeout:g} s")
            time.sleep(0.05)

    def submit(self, fn: Callable[..., Any], *args: Any) -> Any:
        return self.ex.submit(fn, {}, *args)

    def gather(self, handles: Sequence[Any], timeout: float) -> list[Any]:
        return _wait_futures(handles, timeout)

    def shutdown(self) -> None:
        if self.ex is not None:
            self.ex.shutdown()

    def abort(self) -> None:
        if self.ex is not None:
            self.ex.shutdown(wait=False, cancel_futures=True)


class HtexPrefetchBackend(HtexBackend):
    """htex tuned for many short tasks: pools hold 256 tasks beyond their workers.

    The spec's default (prefetch_capacity=0) sends a pool a new task only when
    a result comes back, so each task pays a full round trip; this shows what
    the same machine does when tasks may queue at the pool.
    """

    name = "htex-pf"
    title = "htex (prefetch 256)"

    def __init__(self, run_root: str) -> None:
        super().__init__(run_root, prefetch_capacity=256)


class HtexNoPrefetchBackend(HtexBackend):
    """htex at the spec's default, ``prefetch_capacity=0``: a pool gets a task only for an idle worker."""

    name = "htex-pf0"
    title = "htex (prefetch 0)"

    def __init__(self, run_root: str) -> None:
        super().__init__(run_root, prefetch_capacity=0)


class HtexPriorityBackend(HtexBackend):
    """htex with a priority on every task (eight values in turn): what the interchange's heap costs."""

    name = "htex-prio"
    title = "htex, every task prioritized"

    def __init__(self, run_root: str, **executor_kwargs: Any) -> None:
        super().__init__(run_root, **executor_kwargs)
        self.n = 0

    def submit(self, fn: Callable[..., Any], *args: Any) -> Any:
        self.n += 1
        return self.ex.submit(fn, {"priority": self.n % 8}, *args)


class HtexPrefetchPriorityBackend(HtexPriorityBackend):
    name = "htex-pf-prio"
    title = "htex (prefetch 256), every task prioritized"

    def __init__(self, run_root: str) -> None:
        super().__init__(run_root, prefetch_capacity=256)


class HtexTcpBackend(HtexBackend):
    """Pools over loopback TCP (an ``address`` is given), plain: what a remote pool's path costs."""

    name = "htex-tcp"
    title = "htex TCP, plain (prefetch 256)"
    encrypted = False

    def __init__(self, run_root: str) -> None:
        super().__init__(run_root, prefetch_capacity=256, address="127.0.0.1", encrypted=self.encrypted)


class HtexCurveBackend(HtexTcpBackend):
    """The same with CurveZMQ, the default for TCP: the price of encryption, beside the plain run."""

    name = "htex-curve"
    title = "htex TCP, CURVE (prefetch 256)"
    encrypted = True


class ProcessPoolBackend(Backend):
    name = "ppe"
    title = "ProcessPool(2)"

    def __init__(self, run_root: str) -> None:
        super().__init__(run_root)
        self.ex: concurrent.futures.ProcessPoolExecutor | None = None

    def start(self) -> None:
        self.ex = concurrent.futures.ProcessPoolExecutor(WORKERS)

    def start_two_pools(self, timeout: float) -> None:
        self.ex = concurrent.futures.ProcessPoolExecutor(2 * WORKERS)  # one pool of as many workers: the reference

    def submit(self, fn: Callable[..., Any], *args: Any) -> Any:
        assert self.ex is not None
        return self.ex.submit(fn, *args)

    def gather(self, handles: Sequence[Any], timeout: float) -> list[Any]:
        return _wait_futures(handles, timeout)

    def shutdown(self) -> None:
        if self.ex is not None:
            self.ex.shutdown(wait=True)

    def abort(self) -> None:
        if self.ex is not None:
            self.ex.shutdown(wait=True, cancel_futures=True)


class ParslBackend(Backend):
    name = "parsl"
    title = "Parsl HTEX"

    def __init__(self, run_root: str) -> None:
        super().__init__(run_root)
        self.dfk: Any = None
        self.ex: Any = None
        self.run_dir = ""

    def markers(self) -> list[str]:
        # Parsl's LocalProvider backgrounds each block (bash -c '... &'): the pool and its workers are
        # reparented to init, out of our tree; their command lines (or their parent's) name the run dir.
        return [self.run_dir] if self.run_dir else []

    def start(self) -> None:
        provider = _mod("parsl.providers").LocalProvider(init_blocks=1, min_blocks=0, max_blocks=1)
        # address: as htex does for a local provider (else the pool probes every interface of the host)
        common: dict[str, Any] = {"label": "parsl_htex", "provider": provider, "address": "127.0.0.1"}
        executor_cls = _mod("parsl.executors").HighThroughputExecutor
        try:
            htex = executor_cls(max_workers_per_node=WORKERS, **common)
        except TypeError:  # Parsl before max_workers_per_node
            htex = executor_cls(max_workers=WORKERS, **common)
        self.run_dir = tempfile.mkdtemp(prefix="parsl-", dir=self.run_root)
        self.dfk = _mod("parsl").load(_mod("parsl.config").Config(executors=[htex], run_dir=self.run_dir))
        self.ex = self.dfk.executors["parsl_htex"]

    def submit(self, fn: Callable[..., Any], *args: Any) -> Any:
        return self.ex.submit(fn, {}, *args)

    def gather(self, handles: Sequence[Any], timeout: float) -> list[Any]:
        return _wait_futures(handles, timeout)

    def shutdown(self) -> None:
        if self.dfk is not None:
            self.dfk.cleanup()
            _mod("parsl").clear()
            self.dfk = None


class DaskBackend(Backend):
    name = "dask"
    title = "Dask LocalCluster"

    def __init__(self, run_root: str) -> None:
        super().__init__(run_root)
        self.cluster: Any = None
        self.client: Any = None

    def start(self) -> None:
        distributed = _mod("distributed")
        self.cluster = distributed.LocalCluster(n_workers=WORKERS, threads_per_worker=1, processes=True,
                                                dashboard_address=None)
        self.client = distributed.Client(self.cluster)

    def submit(self, fn: Callable[..., Any], *args: Any) -> Any:
        return self.client.submit(fn, *args, pure=False)

    def gather(self, handles: Sequence[Any], timeout: float) -> list[Any]:
        _mod("distributed").wait(list(handles), timeout=timeout)
        return list(self.client.gather(list(handles)))

    def shutdown(self) -> None:
        if self.client is not None:
            self.client.close()
            self.cluster.close()
            self.client = self.cluster = None


class RayBackend(Backend):
    name = "ray"
    title = "Ray"

    def __init__(self, run_root: str) -> None:
        super().__init__(run_root)
        self.remotes: dict[Callable[..., Any], Any] = {}

    def start(self) -> None:
        _mod("ray").init(num_cpus=WORKERS, include_dashboard=False, log_to_driver=False)

    def submit(self, fn: Callable[..., Any], *args: Any) -> Any:
        remote = self.remotes.get(fn)
        if remote is None:
            remote = self.remotes[fn] = _mod("ray").remote(fn)
        return remote.remote(*args)

    def gather(self, handles: Sequence[Any], timeout: float) -> list[Any]:
        return list(_mod("ray").get(list(handles), timeout=timeout))

    def shutdown(self) -> None:
        self.remotes.clear()
        _mod("ray").shutdown()


# name -> (adapter class, the module that must be importable)
ALL: dict[str, tuple[type[Backend], str | None]] = {
    "htex": (HtexBackend, None),
    "htex-pf": (HtexPrefetchBackend, None),
    "htex-pf0": (HtexNoPrefetchBackend, None),
    "htex-prio": (HtexPriorityBackend, None),
    "htex-pf-prio": (HtexPrefetchPriorityBackend, None),
    "htex-tcp": (HtexTcpBackend, None),
    "htex-curve": (HtexCurveBackend, None),
    "ppe": (ProcessPoolBackend, None),
    "parsl": (ParslBackend, "parsl"),
    "dask": (DaskBackend, "distributed"),
    "ray": (RayBackend, "ray"),
}


def available() -> tuple[list[str], dict[str, str]]:
    """The backends that can run here, and a note for each one skipped."""
    names, skipped = [], {}
    for name, (_, module) in ALL.items():
        if module is None or importlib.util.find_spec(module) is not None:
            names.append(name)
        else:
            skipped[name] = f"`{module}` is not importable: skipped"
    return names, skipped


def make(name: str, run_root: str) -> Backend:
    cls, _ = ALL[name]
    return cls(run_root)
