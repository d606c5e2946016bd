"""MPI tasks: each runs an MPI program over some of its block's nodes, as Parsl's MPIExecutor does.

::

    MPIExecutor.submit(fn, {"num_nodes": 2, "ranks_per_node": 2})      (mpi_executor.py: checked here, check_spec)
        -> a worker runs run_task(fn, spec, ...)                       (the function crosses as an argument)
             -> NodeLedger.acquire(2): waits until 2 of the block's nodes are free
             -> fn(...) sees PARSL_MPI_PREFIX="mpiexec -n 4 -ppn 2 -hosts n1,n2 ..." and friends
             -> the nodes are free again (also if the worker dies: they are flock()s)

One pool per block (the provider's launcher must be SimpleLauncher: the pool
runs on the block's first node) finds the block's nodes (``block_nodes``:
Slurm's node list, PBS's node file, else this host) and writes them for its
workers, with the lock files through which they share the nodes
(``pool_environment``).  The pool never looks inside a task: the resource
specification travels with the task, and the worker that runs it takes the
nodes.  So a task waiting for nodes holds its worker: ``max_workers_per_block``
is how many MPI tasks a block runs (or waits for) at once.

The variables a task sees, as Parsl sets them: ``PARSL_MPI_PREFIX`` (the
launcher chosen by ``mpi_launcher``), ``PARSL_MPIEXEC_PREFIX``,
``PARSL_SRUN_PREFIX``, ``PARSL_APRUN_PREFIX``, and ``PARSL_<KEY>`` for each key of
the specification (``PARSL_NUM_NODES``, ``PARSL_RANKS_PER_NODE``,
``PARSL_NUM_RANKS``, ``PARSL_LAUNCHER_OPTIONS``, ``PARSL_MPI_NODELIST``).
"""

from __future__ import annotations

import fcntl
import os
import socket
import subprocess
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from .errors import InvalidResourceSpecification, MPINodesUnavailable

LAUNCHERS = ("mpiexec", "srun", "aprun")
SPEC_KEYS = ("num_nodes", "ranks_per_node", "num_ranks", "launcher_options")
NODES_ENV = "HTEX_MPI_NODES"  # the block's nodes, comma-separated (set by the pool for its workers)
LEDGER_ENV = "HTEX_MPI_LEDGER"  # the directory of the node locks
LAUNCHER_ENV = "HTEX_MPI_LAUNCHER"
# How often a task waiting for nodes looks again: an MPI task runs for seconds at least,
# and a flock() cannot be waited on for "any n of these".
WAIT_SECONDS = (0.01, 0.5)  # first, longest


@dataclass(frozen=True)
class MpiSpec:
    num_nodes: int
    ranks_per_node: int
    num_ranks: int
    launcher_options: str = ""

    def environment(self, launcher: str, nodes: list[str]) -> dict[str, str]:
        """What a task on ``nodes`` sees: each launcher's prefix, the chosen one as PARSL_MPI_PREFIX, the counts."""
        hosts = ",".join(nodes)
        n, ppn, opts = self.num_ranks, self.ranks_per_node, self.launcher_options
        env = {
            "PARSL_MPIEXEC_PREFIX": f"mpiexec -n {n} -ppn {ppn} -hosts {hosts} {opts}".rstrip(),
            "PARSL_SRUN_PREFIX": (f"srun --ntasks {n} --ntasks-per-node {ppn} --nodelist {hosts} "
                                  f"--nodes {len(nodes)} {opts}").rstrip(),
            "PARSL_APRUN_PREFIX": f"aprun -n {n} -N {ppn} -node-list {hosts} {opts}".rstrip(),
            "PARSL_NUM_NODES": str(self.num_nodes),
            "PARSL_RANKS_PER_NODE": str(ppn),
            "PARSL_NUM_RANKS": str(n),
            "PARSL_LAUNCHER_OPTIONS": opts,
            "PARSL_MPI_NODELIST": hosts,
        }
        env["PARSL_MPI_PREFIX"] = env[f"PARSL_{launcher.upper()}_PREFIX"]
        return env


def check_spec(spec: Mapping[str, Any], nodes_per_block: int) -> MpiSpec:
    """The MPI task's specification, complete; InvalidResourceSpecification naming what is wrong.

    ``num_nodes`` and one of ``ranks_per_node``/``num_ranks`` are needed (the
    other follows); both given must agree: ``num_ranks == num_nodes * ranks_per_node``.
    More nodes than a block has is ``MPINodesUnavailable``: it would wait forever.
    """
    unknown = sorted(str(k) for k in spec if k not in (*SPEC_KEYS, "priority"))
    if unknown:
        raise InvalidResourceSpecification(
            f"unknown resource_specification keys {unknown}: an MPI task takes {list(SPEC_KEYS)} (and 'priority')",
            invalid_keys=set(unknown))
    if "num_nodes" not in spec or not ({"ranks_per_node", "num_ranks"} & set(spec)):
        raise InvalidResourceSpecification(
            f"an MPI task needs num_nodes and ranks_per_node or num_ranks in its resource_specification, got "
            f"{dict(spec)}; e.g. {{'num_nodes': 2, 'ranks_per_node': 4}}", invalid_keys=set())
    nodes = _count(spec, "num_nodes")
    per_node = _count(spec, "ranks_per_node") if "ranks_per_node" in spec else None
    ranks = _count(spec, "num_ranks") if "num_ranks" in spec else None
    if per_node is None:
        assert ranks is not None
        if ranks % nodes:
            raise InvalidResourceSpecification(
                f"num_ranks={ranks} does not divide evenly over num_nodes={nodes}: give ranks_per_node too",
                invalid_keys={"num_ranks"})
        per_node = ranks // nodes
    if ranks is None:
        ranks = nodes * per_node
    if ranks != nodes * per_node:
        raise InvalidResourceSpecification(
            f"inconsistent MPI counts: num_ranks={ranks} but num_nodes * ranks_per_node = {nodes} * {per_node} "
            f"= {nodes * per_node}", invalid_keys={"num_ranks"})
    if nodes > nodes_per_block:
        raise MPINodesUnavailable(
            f"an MPI task asked for num_nodes={nodes}, but this executor's blocks have {nodes_per_block} node(s) "
            f"(provider.nodes_per_block): ask for at most {nodes_per_block}, or make blocks bigger",
            requested=nodes, available=nodes_per_block)
    options = spec.get("launcher_options", "")
    if not isinstance(options, str):
        raise InvalidResourceSpecification(f"launcher_options must be a string, got {options!r:.60}",
                                           invalid_keys={"launcher_options"})
    return MpiSpec(nodes, per_node, ranks, options)


def _count(spec: Mapping[str, Any], key: str) -> int:
    value = spec[key]
    try:
        count = int(value)
    except (TypeError, ValueError):
        count = 0
    if isinstance(value, bool) or count < 1 or (isinstance(value, float) and value != count):
        raise InvalidResourceSpecification(f"{key} must be a whole number >= 1, got {value!r:.60}", invalid_keys={key})
    return count


# ---------------------------------------------------------------------------
# The pool's side: the block's nodes
# ---------------------------------------------------------------------------


def block_nodes() -> list[str]:
    """This block's nodes, first node first: Slurm's node list, PBS's node file, else this host alone."""
    slurm = os.environ.get("SLURM_JOB_NODELIST") or os.environ.get("SLURM_NODELIST")
    if slurm:
        out = subprocess.run(["scontrol", "show", "hostnames", slurm], capture_output=True, text=True,
                             check=True, timeout=30)
        return out.stdout.split()
    nodefile = os.environ.get("PBS_NODEFILE")
    if nodefile:
        with open(nodefile) as f:  # one line per rank slot: a node appears once per core
            return list(dict.fromkeys(line.strip() for line in f if line.strip()))
    return [socket.gethostname()]


def pool_environment(launcher: str, ledger_dir: str) -> dict[str, str]:
    """The variables the pool gives its workers: the block's nodes, the ledger's directory (made here), the launcher."""
    nodes = block_nodes()
    os.makedirs(ledger_dir, exist_ok=True)
    return {NODES_ENV: ",".join(nodes), LEDGER_ENV: ledger_dir, LAUNCHER_ENV: launcher}


# ---------------------------------------------------------------------------
# The worker's side: take nodes, run the task, give them back
# ---------------------------------------------------------------------------


class NodeLedger:
    """The block's nodes, shared by the pool's workers through one lock file per node.

    A node is taken by holding an exclusive flock() on its file; the kernel
    drops it when the holder exits, so a worker that dies gives its nodes back.
    Taking several nodes happens under a ledger-wide lock, so two tasks never
    each hold half of what both need.
    """

    def __init__(self, directory: str, nodes: list[str]) -> None:
        self.directory = directory
        self.nodes = nodes

    def try_acquire(self, n: int) -> tuple[list[str], list[int]] | None:
        """``n`` free nodes and the fds that hold them, or None (nothing held) if fewer are free."""
        with open(os.path.join(self.directory, "ledger.lock"), "w") as ledger:
            fcntl.flock(ledger, fcntl.LOCK_EX)
            taken: list[tuple[str, int]] = []
            for i, node in enumerate(self.nodes):
                fd = os.open(os.path.join(self.directory, f"node-{i}.lock"), os.O_RDWR | os.O_CREAT | os.O_CLOEXEC)
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                except BlockingIOError:
                    os.close(fd)
                    continue
                taken.append((node, fd))
                if len(taken) == n:
                    return [t[0] for t in taken], [t[1] for t in taken]
            for _, fd in taken:
                os.close(fd)  # closing the only fd drops its lock
        return None

    def acquire(self, n: int) -> tuple[list[str], list[int]]:
        """Wait until ``n`` nodes are free; take them.  MPINodesUnavailable at once if the block has fewer."""
        if n > len(self.nodes):
            raise MPINodesUnavailable(
                f"an MPI task asked for num_nodes={n}, but this block has {len(self.nodes)} node(s) "
                f"({','.join(self.nodes)})", requested=n, available=len(self.nodes))
        wait = WAIT_SECONDS[0]
        while (got := self.try_acquire(n)) is None:
            time.sleep(wait)
            wait = min(wait * 2, WAIT_SECONDS[1])
        return got


def run_task(fn: Callable[..., Any], spec: dict[str, Any], *args: Any, **kwargs: Any) -> Any:
    """What a worker of an MPI pool runs: take the nodes, run ``fn`` with the MPI variables set, give them back."""
    mpi_spec = MpiSpec(**spec)
    try:
        all_nodes = os.environ[NODES_ENV].split(",")
        ledger = NodeLedger(os.environ[LEDGER_ENV], all_nodes)
        launcher = os.environ[LAUNCHER_ENV]
    except KeyError as exc:
        raise InvalidResourceSpecification(
            f"this worker's pool is not in MPI mode ({exc} is not set): run MPI tasks with htex.MPIExecutor"
        ) from None
    nodes, fds = ledger.acquire(mpi_spec.num_nodes)
    saved = dict(os.environ)
    try:
        os.environ.update(mpi_spec.environment(launcher, nodes))
        return fn(*args, **kwargs)
    finally:
        os.environ.clear()  # the next task on this worker must not see this one's nodes
        os.environ.update(saved)
        for fd in fds:
            os.close(fd)
