"""MPI tasks on a real two-node Slurm block, through Parsl: a bash app runs a real MPI program
(ci/mpi/hello.c, built against Debian's MPICH by ci/mpi/setup.sh) under ``$PARSL_MPI_PREFIX``, with
``srun`` and with ``mpiexec``, and every rank reports which of the block's nodes it ran on."""

from __future__ import annotations

import os
from typing import Any

import pytest

import placement_tasks

from sched_helpers import SCHEDULERS
from support import wait_for

parsl = pytest.importorskip("parsl", reason="Parsl is not installed (pip install htex[parsl])")

pytestmark = pytest.mark.timeout(180)

MPI_HELLO = os.environ.get("HTEX_MPI_HELLO", "/opt/htex-mpi/hello")
TESTS_DIR = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture
def mpi_dfk(tmp_path: Any, request: pytest.FixtureRequest) -> Any:
    from parsl.config import Config
    from parsl.launchers import SimpleLauncher
    from parsl.providers import SlurmProvider

    from htex.parsl import MPIExecutor

    slurm = SCHEDULERS["slurm"]
    reason = slurm.down_reason()
    if reason:
        pytest.skip(f"slurm is not up ({reason}): start it with `bash ci/schedulers/{slurm.up_script}`")
    if not os.path.exists(MPI_HELLO):
        pytest.skip(f"no MPI program at {MPI_HELLO}: ci/mpi/setup.sh failed or did not run")
    # Whole nodes (exclusive): a step of 2 ranks per node needs both of each node's 2 CPUs.
    provider = SlurmProvider(partition="debug", nodes_per_block=2, init_blocks=1, min_blocks=0, max_blocks=1,
                             walltime="00:10:00", exclusive=True, launcher=SimpleLauncher(),
                             worker_init=f"export PYTHONPATH={TESTS_DIR}")
    executor = MPIExecutor(label="mpi", provider=provider, address="127.0.0.1", max_workers_per_block=1,
                           mpi_launcher=request.param, heartbeat_period=1, heartbeat_threshold=6)
    dfk = parsl.load(Config(executors=[executor], run_dir=str(tmp_path / "runinfo")))
    yield dfk, executor
    jobs = list(executor.htex.blocks.values())
    dfk.cleanup()
    parsl.clear()
    for job in jobs:
        wait_for(lambda j=job: not slurm.in_queue(j), timeout=30, what=f"job {job} to leave the queue")


@pytest.mark.parametrize("mpi_dfk", ["srun", "mpiexec"], indirect=True)
def test_bash_app_runs_an_mpi_program_over_both_nodes(mpi_dfk: Any, tmp_path: Any) -> None:
    from parsl.app.app import bash_app
    from parsl.executors.errors import InvalidResourceSpecification

    _, executor = mpi_dfk
    hello = bash_app(placement_tasks.mpi_hello_command, executors=["mpi"])
    # MPICH's processes find each other through Slurm's PMI2 when srun starts them.
    options = "--mpi=pmi2" if executor.mpi_launcher == "srun" else ""
    spec = {"num_nodes": 2, "ranks_per_node": 2, "num_ranks": 4, "launcher_options": options}
    out = tmp_path / "hello.out"
    assert hello(MPI_HELLO, parsl_resource_specification=spec, stdout=str(out)).result(timeout=150) == 0
    lines = sorted(out.read_text().splitlines())
    assert [ln.split(" on ")[0] for ln in lines] == [f"rank {r} of 4" for r in range(4)], lines
    by_node = sorted(ln.rsplit(" ", 1)[1] for ln in lines)
    assert by_node == ["0", "0", "1", "1"], lines  # two ranks on each of the block's two nodes

    with pytest.raises(InvalidResourceSpecification, match=r"num_nodes=3, but this executor's blocks have 2"):
        hello(MPI_HELLO, parsl_resource_specification={"num_nodes": 3, "ranks_per_node": 1}).result(timeout=30)
