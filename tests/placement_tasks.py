"""Functions the placement tests run on workers (importable there: conftest puts tests/ on PYTHONPATH)."""

from __future__ import annotations

import os
import time

PLACEMENT_VARS = ("CUDA_VISIBLE_DEVICES", "ROCR_VISIBLE_DEVICES", "ZE_AFFINITY_MASK", "OMP_NUM_THREADS",
                  "GOMP_CPU_AFFINITY", "KMP_AFFINITY")


def seat(hold: float = 0.2) -> tuple[int, list[int], dict[str, str | None]]:
    """This worker's rank, the cores it may run on, and its placement variables (after ``hold`` s, so that
    tasks submitted together spread over the workers)."""
    time.sleep(hold)
    env = {k: os.environ.get(k) for k in PLACEMENT_VARS}
    return int(os.environ["PARSL_WORKER_RANK"]), sorted(os.sched_getaffinity(0)), env


def block_id() -> str:
    return os.environ["PARSL_WORKER_BLOCK_ID"]


def youngest_block_first() -> object:
    """A manager selector of a user's own (made here: the interchange must be able to import its class)."""
    from htex.selectors import ManagerSelector

    class YoungestBlockFirst(ManagerSelector):
        def order(self, pools: list) -> list:  # type: ignore[type-arg, override]
            return sorted(pools, key=lambda p: -int(p.reg.block_id))

    return YoungestBlockFirst()


def block_after(seconds: float) -> str:
    """The block this task ran in, after ``seconds`` of work."""
    time.sleep(seconds)
    return os.environ["PARSL_WORKER_BLOCK_ID"]


MPI_VARS = ("PARSL_MPI_PREFIX", "PARSL_MPIEXEC_PREFIX", "PARSL_SRUN_PREFIX", "PARSL_APRUN_PREFIX", "PARSL_NUM_NODES",
            "PARSL_RANKS_PER_NODE", "PARSL_NUM_RANKS", "PARSL_MPI_NODELIST", "PARSL_LAUNCHER_OPTIONS")


def mpi_env() -> dict[str, str | None]:
    return {k: os.environ.get(k) for k in MPI_VARS}


def hold_nodes_until(started: str, release: str) -> float:
    """Note that the nodes are ours (a file), keep them until ``release`` exists; return when we let go."""
    open(started, "w").close()
    deadline = time.monotonic() + 60
    while not os.path.exists(release) and time.monotonic() < deadline:
        time.sleep(0.02)
    return time.time()


def nodes_taken_at() -> float:
    return time.time()


def run_mpi(program: str) -> str:
    """Run ``program`` under this task's MPI prefix, as a bash app would; its output."""
    import subprocess

    cmd = f"{os.environ['PARSL_MPI_PREFIX']} {program}"
    return subprocess.run(cmd, shell=True, capture_output=True, text=True, check=True, timeout=120).stdout


def mpi_hello_command(program: str, parsl_resource_specification: dict[str, object] | None = None,
                      stdout: str | None = None, stderr: str | None = None) -> str:
    """A Parsl bash app's body: the MPI program under the task's launcher prefix."""
    return f"$PARSL_MPI_PREFIX {program}"


def die() -> None:
    os._exit(9)


def devices_then_wait(log: str, label: str, gate: str, seconds: float = 60.0) -> list[str | None]:
    """Append this task's label and the devices it sees to ``log`` as it starts, then wait for ``gate``."""
    seen = [os.environ.get(k) for k in PLACEMENT_VARS[:3]]
    with open(log, "a") as f:
        f.write(f"{label} {' '.join(map(str, seen))}\n")
    deadline = time.monotonic() + seconds
    while not os.path.exists(gate) and time.monotonic() < deadline:
        time.sleep(0.01)
    return seen
