"""Node placement with real pools and workers: one accelerator per worker, CPU affinity, and bad settings."""

from __future__ import annotations

import glob
import math
import os
import subprocess
import sys
from typing import Any

import pytest

import placement_tasks
from htex import HighThroughputExecutor, PlacementError

from support import wait_for

pytestmark = pytest.mark.timeout(90)

CORES = sorted(os.sched_getaffinity(0))


def _seats(ex: Any, workers: int) -> dict[int, tuple[list[int], dict[str, str | None]]]:
    """What each worker of the executor's pool reports, by rank: tasks go out in pairs until every rank answered."""
    seen: dict[int, tuple[list[int], dict[str, str | None]]] = {}

    def more() -> bool:
        for fut in [ex.submit(placement_tasks.seat, {}) for _ in range(workers)]:
            rank, cores, env = fut.result(timeout=30)
            seen[rank] = (cores, env)
        return len(seen) == workers

    wait_for(more, timeout=60, interval=0, what=f"all {workers} workers to run a task")
    return seen


def test_one_worker_per_accelerator_each_sees_only_its_own(make_executor: Any) -> None:
    # cores_per_worker 0.25 would allow 8 workers on 2 cores: the 3 accelerators cap it at 3.
    ex = make_executor(available_accelerators=["0", "1.1", "7"], max_workers=math.inf, cores_per_worker=0.25)
    wait_for(lambda: ex.connected_managers, what="the pool")
    assert ex.connected_workers == 3
    seats = _seats(ex, 3)
    for rank, device in enumerate(["0", "1.1", "7"]):
        env = seats[rank][1]
        assert env["CUDA_VISIBLE_DEVICES"] == env["ROCR_VISIBLE_DEVICES"] == env["ZE_AFFINITY_MASK"] == device
        assert env["OMP_NUM_THREADS"] is None  # not pinned to cores: no OpenMP variables
    # The registration says which accelerators the pool has (the interchange logs it).
    with open(os.path.join(ex.logdir, "interchange.log")) as f:
        log = f.read()
    assert "accelerators 0 1.1 7" in log


def test_max_workers_still_caps_accelerators(make_executor: Any) -> None:
    ex = make_executor(available_accelerators=4, max_workers=1)
    wait_for(lambda: ex.connected_managers, what="the pool")
    assert ex.connected_workers == 1
    rank, _, env = ex.submit(placement_tasks.seat, {}, 0).result(timeout=30)
    assert (rank, env["CUDA_VISIBLE_DEVICES"]) == (0, "0")


@pytest.mark.skipif(len(CORES) < 2, reason="needs 2 cores")
@pytest.mark.parametrize(("affinity", "expected"), [
    ("block", {0: [0], 1: [1]}),
    ("block-reverse", {0: [1], 1: [0]}),
    ("alternating", {0: [0], 1: [1]}),
    ("list:1:0-1", {0: [1], 1: [0, 1]}),
])
def test_cpu_affinity_pins_each_worker(make_executor: Any, affinity: str, expected: dict[int, list[int]]) -> None:
    # Written with core positions; this process's own cores (what the scheduler gave) are what they index.
    if affinity.startswith("list:"):
        affinity = "list:" + ":".join(",".join(str(CORES[i]) for i in cores) for cores in expected.values())
    ex = make_executor(cpu_affinity=affinity, max_workers=2)
    seats = _seats(ex, 2)
    for rank, positions in expected.items():
        cores, env = seats[rank]
        want = [CORES[i] for i in positions]
        assert cores == want, f"worker {rank}"
        listed = ",".join(map(str, want))
        assert env["OMP_NUM_THREADS"] == str(len(want))
        assert env["GOMP_CPU_AFFINITY"] == listed
        assert env["KMP_AFFINITY"] == f"explicit,proclist=[{listed}]"
        assert env["CUDA_VISIBLE_DEVICES"] is None


def test_no_placement_leaves_workers_as_the_pool_is(make_executor: Any) -> None:
    ex = make_executor(max_workers=2)
    _, cores, env = ex.submit(placement_tasks.seat, {}, 0).result(timeout=30)
    assert cores == CORES
    assert env == {k: os.environ.get(k) for k in placement_tasks.PLACEMENT_VARS}  # inherited, nothing added
    assert "--cpu-affinity" not in ex.launch_command("0")  # the default command is as it was


def test_launch_command_carries_placement_and_the_pool_reads_it_back() -> None:
    from htex import poolcmd

    ex = HighThroughputExecutor(cpu_affinity="list:0:1", available_accelerators=["0", "GPU-5d1e"], managed=False)
    launch = ex._pool_launch()
    cmd = poolcmd.launch_command(None, launch, "3")
    args = poolcmd.build_parser().parse_args(__import__("shlex").split(cmd)[3:])
    assert (args.cpu_affinity, args.accelerators) == ("list:0:1", ["0", "GPU-5d1e"])
    # Today's Parsl template, with its placeholders for them, gives the same flags.
    from parsl.executors.high_throughput.executor import DEFAULT_LAUNCH_CMD as PARSL_CMD

    parsl_cmd = poolcmd.launch_command(PARSL_CMD.replace("process_worker_pool.py", "pwp"), launch, "3")
    assert "--cpu-affinity list:0:1" in parsl_cmd and "--available-accelerators 0 GPU-5d1e" in parsl_cmd


def test_parsl_executor_passes_placement_with_parsls_meaning() -> None:
    from htex.parsl import HighThroughputExecutor as ParslHtex

    ex = ParslHtex(cpu_affinity="alternating", available_accelerators=2)
    assert ex.available_accelerators == ["0", "1"] == ex.htex.available_accelerators
    assert ex.htex.cpu_affinity == "alternating"
    assert ParslHtex(available_accelerators=()).htex.available_accelerators == []  # Parsl's default: none
    with pytest.raises(PlacementError):
        ParslHtex(cpu_affinity="nope")
    # drain_period keeps Parsl's meaning there: seconds after the pool starts, whatever the walltime.
    assert "--drain_period=600 " in ParslHtex(drain_period=600).htex.launch_command("0")


def test_drain_period_must_fit_in_the_walltime() -> None:
    from htex import ConfigurationError, LocalProvider

    with pytest.raises(ConfigurationError, match=r"drain_period=900 must be > 0 and less than the provider's walltime"):
        HighThroughputExecutor(drain_period=900, provider=LocalProvider(walltime="00:10:00"))


@pytest.mark.parametrize(("kwargs", "match"), [
    ({"cpu_affinity": "blocky"}, r"cpu_affinity='blocky' is not one of 'none', 'block'"),
    ({"cpu_affinity": "list:0-1:x"}, r"group 'x' is not cores"),
    ({"cpu_affinity": "list:3-1"}, r"range '3-1' runs backwards"),
    ({"cpu_affinity": "list:" + ":".join(["0"] * (len(CORES) + 1))}, r"groups \(one per worker\) but this node gives"),
    ({"cpu_affinity": "list:0:99999"}, r"names cores \[99999\]"),
    ({"available_accelerators": []}, r"available_accelerators=\[\] names no accelerator"),
    ({"available_accelerators": 0}, r"give at least 1"),
    ({"available_accelerators": ["0", "0"]}, r"must be distinct"),
])
def test_bad_placement_is_refused_at_construction(kwargs: dict[str, Any], match: str) -> None:
    with pytest.raises(PlacementError, match=match):
        HighThroughputExecutor(**kwargs)


def test_a_node_without_the_cores_a_list_names_refuses_to_start(tmp_path: Any) -> None:
    """A pool on a node that lacks the listed cores (checked on the node: the executor may run elsewhere)
    exits at once, before it connects, with the reason on stderr."""
    groups = ":".join(str(c) for c in range(len(CORES) + 1))
    proc = subprocess.run(
        [sys.executable, "-m", "htex.process_worker_pool", "--task_url", "ipc:///nonexistent-t",
         "--result_url", "ipc:///nonexistent-r", "--logdir", str(tmp_path), "--cpu-affinity", f"list:{groups}"],
        capture_output=True, text=True, timeout=60,
    )
    assert proc.returncode == 6
    assert f"cpu_affinity='list:{groups}' has {len(CORES) + 1} groups" in proc.stderr
    assert glob.glob(str(tmp_path / "block--1" / "*" / "manager.log"))


# -- manager selection --------------------------------------------------------------------------


def _blocks_of_sequential_tasks(ex: Any, n: int) -> list[str]:
    """The block each of ``n`` tasks ran in, each submitted when the one before is done (every pool idle)."""
    wait_for(lambda: len(ex.connected_managers) == 2, timeout=30, what="both blocks' pools")
    return [ex.submit(placement_tasks.block_id, {}).result(timeout=30) for _ in range(n)]


def test_block_id_selector_fills_the_oldest_block(make_executor: Any) -> None:
    from htex import BlockIdManagerSelector, LocalProvider

    ex = make_executor(max_workers=1, manager_selector=BlockIdManagerSelector(),
                       provider=LocalProvider(init_blocks=2, min_blocks=2, max_blocks=2))
    assert set(_blocks_of_sequential_tasks(ex, 12)) == {"0"}


def test_without_a_selector_pools_take_turns(make_executor: Any) -> None:
    from htex import LocalProvider

    ex = make_executor(max_workers=1, provider=LocalProvider(init_blocks=2, min_blocks=2, max_blocks=2))
    assert set(_blocks_of_sequential_tasks(ex, 12)) == {"0", "1"}


def test_random_and_own_selectors(make_executor: Any) -> None:
    from htex import LocalProvider, RandomManagerSelector

    ex = make_executor(max_workers=1, manager_selector=RandomManagerSelector(),
                       provider=LocalProvider(init_blocks=2, min_blocks=2, max_blocks=2))
    assert set(_blocks_of_sequential_tasks(ex, 40)) == {"0", "1"}  # all in one block: 2 in 2**40
    ex = make_executor(max_workers=1, manager_selector=placement_tasks.youngest_block_first(),
                       provider=LocalProvider(init_blocks=2, min_blocks=2, max_blocks=2))
    assert set(_blocks_of_sequential_tasks(ex, 12)) == {"1"}


def test_a_selector_must_be_one() -> None:
    from htex import ConfigurationError

    with pytest.raises(ConfigurationError, match=r"manager_selector must be an htex\.selectors\.ManagerSelector"):
        HighThroughputExecutor(manager_selector="random")  # type: ignore[arg-type]


def test_parsl_selectors_become_htexs() -> None:
    from parsl.executors.high_throughput.manager_selector import BlockIdManagerSelector, ManagerSelector

    from htex import selectors
    from htex.parsl import HighThroughputExecutor as ParslHtex
    from htex.parsl import ParslManagerSelector

    assert isinstance(ParslHtex(manager_selector=BlockIdManagerSelector()).htex.manager_selector,
                      selectors.BlockIdManagerSelector)

    class Reverse(ManagerSelector):
        def sort_managers(self, ready: Any, managers: Any) -> list[bytes]:
            return sorted(managers, key=lambda m: ready[m]["block_id"], reverse=True)

    own = ParslHtex(manager_selector=Reverse()).htex.manager_selector
    assert isinstance(own, ParslManagerSelector)

    class Pool:
        def __init__(self, block: str) -> None:
            self.reg = type("Reg", (), {"manager_id": f"m{block}", "block_id": block, "worker_count": 1,
                                        "hostname": "h"})()

    assert [p.reg.block_id for p in own.order([Pool("1"), Pool("3"), Pool("2")])] == ["3", "2", "1"]


# -- draining -----------------------------------------------------------------------------------


def test_a_draining_pool_finishes_its_tasks_and_a_new_block_takes_over(make_executor: Any) -> None:
    """LocalProvider does not enforce the walltime (tests/schedulers/test_drain_slurm.py has Slurm kill it):
    here the pool drains 3 s after it starts, finishes what it holds, leaves, and a new block runs the rest."""
    from htex import JobState, LocalProvider

    ex = make_executor(max_workers=2, drain_period=7, prefetch_capacity=2,
                       provider=LocalProvider(init_blocks=1, min_blocks=1, max_blocks=1, walltime="00:00:10"))
    assert "--drain_period=3 " in ex.launch_command("0")
    futs = []
    wait_for(lambda: futs.append(ex.submit(placement_tasks.block_after, {}, 0.2)) or "1" in ex.blocks,
             timeout=60, interval=0.1, what="a second block to start")
    futs += [ex.submit(placement_tasks.block_after, {}, 0.2) for _ in range(10)]
    ran_in = [f.result(timeout=60) for f in futs]  # none failed
    assert ran_in[0] == "0" and ran_in[-1] != "0"  # a later block (on a slow machine block 1 may drain too)
    wait_for(lambda: ex.status()["0"].state is JobState.COMPLETED, what="the drained block's job to end by itself")
    with open(os.path.join(ex.logdir, "interchange.log")) as f:
        log = f.read()
    assert "is draining" in log and "lost" not in log


# -- MPI tasks, on one local node (tests/schedulers/test_mpi_slurm.py: two Slurm nodes) ----------------


MPI_HELLO = os.environ.get("HTEX_MPI_HELLO", "/opt/htex-mpi/hello")


@pytest.fixture
def mpi_executor(run_dir: str) -> Any:
    from htex import LocalProvider, MPIExecutor, SimpleLauncher

    made: list[Any] = []

    def make(**kw: Any) -> Any:
        kw.setdefault("provider", LocalProvider(init_blocks=1, max_blocks=1, launcher=SimpleLauncher()))
        ex = MPIExecutor(heartbeat_period=1, heartbeat_threshold=4, run_dir=os.path.join(run_dir, str(len(made))),
                         **kw)
        made.append(ex)
        ex.start()
        return ex

    yield make
    for ex in made:
        ex.shutdown(wait=False)


@pytest.mark.parametrize("launcher", ["mpiexec", "srun", "aprun"])
def test_mpi_task_sees_parsls_variables(mpi_executor: Any, launcher: str) -> None:
    import socket

    ex = mpi_executor(mpi_launcher=launcher)
    env = ex.submit(placement_tasks.mpi_env, {"num_nodes": 1, "num_ranks": 2, "launcher_options": "--x y"}).result(30)
    host = socket.gethostname()
    assert env["PARSL_MPIEXEC_PREFIX"] == f"mpiexec -n 2 -ppn 2 -hosts {host} --x y"
    assert env["PARSL_SRUN_PREFIX"] == f"srun --ntasks 2 --ntasks-per-node 2 --nodelist {host} --nodes 1 --x y"
    assert env["PARSL_APRUN_PREFIX"] == f"aprun -n 2 -N 2 -node-list {host} --x y"
    assert env["PARSL_MPI_PREFIX"] == env[f"PARSL_{launcher.upper()}_PREFIX"]
    assert (env["PARSL_NUM_NODES"], env["PARSL_RANKS_PER_NODE"], env["PARSL_NUM_RANKS"]) == ("1", "2", "2")
    assert env["PARSL_MPI_NODELIST"] == host


def test_an_mpi_task_waits_for_free_nodes(mpi_executor: Any, tmp_path: Any) -> None:
    ex = mpi_executor(max_workers_per_block=2)  # two workers, one node: one task at a time holds it
    started, release = str(tmp_path / "a-started"), str(tmp_path / "release")
    spec = {"num_nodes": 1, "ranks_per_node": 1}
    first = ex.submit(placement_tasks.hold_nodes_until, spec, started, release)
    wait_for(lambda: os.path.exists(started), timeout=30, what="the first task to take the node")
    second = ex.submit(placement_tasks.nodes_taken_at, spec)
    wait_for(lambda: sum(m["tasks"] for m in ex.connected_managers) == 2, what="the second task to reach a worker")
    assert not second.done()
    open(release, "w").close()
    assert second.result(timeout=30) >= first.result(timeout=30)  # it got the node only once the first let go


@pytest.mark.skipif(not os.path.exists(MPI_HELLO), reason=f"no MPI hello at {MPI_HELLO}: run `bash ci/mpi/setup.sh`")
def test_a_real_mpi_program_runs_under_the_prefix(mpi_executor: Any) -> None:
    ex = mpi_executor()
    out = ex.submit(placement_tasks.run_mpi, {"num_nodes": 1, "ranks_per_node": 2}, MPI_HELLO).result(timeout=90)
    assert sorted(line.split(" on ")[0] for line in out.splitlines()) == ["rank 0 of 2", "rank 1 of 2"]


@pytest.mark.parametrize(("spec", "match"), [
    ({}, r"needs num_nodes and ranks_per_node or num_ranks"),
    ({"num_nodes": 1}, r"needs num_nodes and ranks_per_node or num_ranks"),
    ({"num_nodes": 1, "ranks_per_node": 2, "num_ranks": 3}, r"inconsistent MPI counts: num_ranks=3 but .* = 2"),
    ({"num_nodes": 2, "num_ranks": 3}, r"num_ranks=3 does not divide evenly over num_nodes=2"),
    ({"num_nodes": 0, "ranks_per_node": 1}, r"num_nodes must be a whole number >= 1, got 0"),
    ({"num_nodes": 1, "ranks_per_node": 1, "gpus": 1}, r"unknown resource_specification keys \['gpus'\]"),
])
def test_bad_mpi_specifications_raise_at_submit(mpi_executor: Any, spec: dict[str, Any], match: str) -> None:
    from htex import InvalidResourceSpecification

    ex = mpi_executor()
    with pytest.raises(InvalidResourceSpecification, match=match):
        ex.submit(placement_tasks.mpi_env, spec)


def test_more_nodes_than_a_block_has_fails_at_once(mpi_executor: Any) -> None:
    from htex import MPINodesUnavailable

    ex = mpi_executor()
    with pytest.raises(MPINodesUnavailable, match=r"asked for num_nodes=3, but this executor's blocks have 1 node"):
        ex.submit(placement_tasks.mpi_env, {"num_nodes": 3, "ranks_per_node": 1})


def test_mpi_executor_needs_one_pool_per_block() -> None:
    from htex import ConfigurationError, LocalProvider, MPIExecutor

    with pytest.raises(ConfigurationError, match="launcher is SimpleLauncher"):
        MPIExecutor(provider=LocalProvider())
    with pytest.raises(ConfigurationError, match="mpi_launcher='mpirun' is not one of"):
        MPIExecutor(mpi_launcher="mpirun")


def test_a_worker_that_dies_holding_nodes_gives_them_back(mpi_executor: Any) -> None:
    from htex import WorkerLost

    ex = mpi_executor(max_workers_per_block=1)
    spec = {"num_nodes": 1, "ranks_per_node": 1}
    with pytest.raises(WorkerLost):
        ex.submit(placement_tasks.die, spec).result(timeout=30)
    assert ex.submit(placement_tasks.mpi_env, spec).result(timeout=30)["PARSL_NUM_NODES"] == "1"


def test_parsl_mpi_executor_takes_parsls_parameters() -> None:
    import inspect

    from parsl.executors import MPIExecutor as ParslMPIExecutor

    from htex.parsl import MPIExecutor

    given = {name: p.default for name, p in inspect.signature(ParslMPIExecutor.__init__).parameters.items()
             if name not in ("self", "provider") and p.default is not inspect.Parameter.empty}
    ex = MPIExecutor(**given)  # Parsl's defaults, every one (a provider of ours: Parsl's default has no SimpleLauncher)
    assert (ex.max_workers_per_block, ex.mpi_launcher, ex.htex.max_workers) == (1, "mpiexec", 1)
    assert "--enable_mpi_mode --mpi-launcher=mpiexec " in ex.htex.launch_command("0")


# -- the pure parts ----------------------------------------------------------------------------------


def test_seats_follow_parsls_strategies() -> None:
    from htex import placement

    cores = [4, 5, 6, 7, 8, 9]  # what the scheduler gave: positions, not numbers, matter
    by = {s: [seat.cores for seat in placement.seats(s, [], 3, cores)] for s in placement.STRATEGIES}
    assert by["none"] == [(), (), ()]
    assert by["block"] == [(4, 5), (6, 7), (8, 9)]
    assert by["block-reverse"] == [(8, 9), (6, 7), (4, 5)]
    assert by["alternating"] == [(4, 7), (5, 8), (6, 9)]
    listed = placement.seats("list:4-5,9:6", ["a", "b"], 2, cores)
    assert listed == [placement.Seat((4, 5, 9), "a"), placement.Seat((6,), "b")]
    assert placement.worker_limit("list:4:5:6", [], cores) == 3
    assert placement.worker_limit("block", ["0", "1"], cores) == 2
    assert placement.worker_limit("none", [], cores) == math.inf


def test_mpi_specification_fills_the_missing_count() -> None:
    from htex import mpi

    assert mpi.check_spec({"num_nodes": 2, "num_ranks": 8}, 4) == mpi.MpiSpec(2, 4, 8, "")
    assert mpi.check_spec({"num_nodes": "2", "ranks_per_node": "3"}, 2) == mpi.MpiSpec(2, 3, 6, "")  # as Parsl allows
    env = mpi.MpiSpec(2, 3, 6, "-x").environment("srun", ["n1", "n2"])
    assert env["PARSL_MPI_PREFIX"] == "srun --ntasks 6 --ntasks-per-node 3 --nodelist n1,n2 --nodes 2 -x"
