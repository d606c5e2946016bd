"""Parsl workflows end to end on htex: the DataFlowKernel drives htex.parsl.HighThroughputExecutor.

The apps are in parsl_tasks.py.  A @python_app travels by value (the module
attribute is the app object, not the function, so cloudpickle cannot pickle it
by name); anything it names from this directory must still be importable on
the workers, so this directory joins the PYTHONPATH that tests/conftest.py
sets for the pools.  (No conftest.py here: a second module named conftest
would replace tests/conftest.py in sys.modules for the tests collected after.)
"""

from __future__ import annotations

import os
from typing import Any

import pytest

# "parsl.config", not "parsl": with tests/ on sys.path, this directory would pass for a
# namespace package called parsl when the real one is missing.
pytest.importorskip("parsl.config", reason="Parsl is not installed (pip install htex[parsl])")

import parsl
from parsl.app.errors import BashExitFailure
from parsl.dataflow.memoization import BasicMemoizer
from parsl.utils import get_all_checkpoints
from parsl_tasks import (
    add,
    add_with_spec,
    counted_square,
    echo_to,
    exit_with,
    fail,
    fail_until,
    fan_out,
    worker_env,
)

import htex
from htex.parsl import HighThroughputExecutor

pytestmark = pytest.mark.timeout(60)

_HERE = os.path.dirname(os.path.abspath(__file__))
os.environ["PYTHONPATH"] = os.pathsep.join(p for p in (_HERE, os.environ.get("PYTHONPATH")) if p)


def _marks(path: Any) -> int:
    return len(open(path).read()) if os.path.exists(path) else 0


def test_python_apps_and_logs_under_the_dfk_run_dir(load_dfk: Any) -> None:
    dfk = load_dfk()
    futures = [add(i, i) for i in range(50)]
    assert [f.result() for f in futures] == [2 * i for i in range(50)]
    ex = dfk.executors["HighThroughputExecutor"]
    assert isinstance(ex, HighThroughputExecutor)
    # Logs where Parsl's own executor writes them: <DFK run_dir>/<label>/.
    assert ex.htex.logdir == os.path.join(dfk.run_dir, "HighThroughputExecutor")
    assert os.path.exists(os.path.join(ex.htex.logdir, "interchange.log"))
    env = worker_env().result()
    assert env["PARSL_WORKER_RANK"] in {"0", "1"} and env["PARSL_WORKER_BLOCK_ID"] == "0"


def test_htex_scales_and_parsl_strategy_leaves_it_alone(load_dfk: Any) -> None:
    dfk = load_dfk()
    ex = dfk.executors["HighThroughputExecutor"]
    # Not a BlockProviderExecutor: the job status poller (and so the strategy) does not know it.
    assert ex not in dfk.job_status_poller._executors
    assert add(1, 2).result() == 3
    assert list(ex.status()) == ["0"]  # htex started the one block itself


def test_exception_in_app_reaches_the_app_future(load_dfk: Any) -> None:
    load_dfk()
    fut = fail("boom")
    with pytest.raises(ValueError, match="boom"):
        fut.result()


def test_bash_apps(load_dfk: Any, tmp_path: Any) -> None:
    load_dfk()
    out = tmp_path / "echo.out"
    assert echo_to("hello from bash", stdout=str(out)).result() == 0
    assert out.read_text().strip() == "hello from bash"
    with pytest.raises(BashExitFailure) as info:
        exit_with(3).result()
    assert info.value.exitcode == 3


def test_retries(load_dfk: Any, tmp_path: Any) -> None:
    load_dfk(retries=2)
    path = tmp_path / "tries"
    assert fail_until(str(path), 2).result() == 3  # two failures, then the third try succeeds
    with pytest.raises(RuntimeError, match="fails on purpose"):
        fail_until(str(tmp_path / "other"), 5).result()  # 3 tries are not enough
    assert _marks(tmp_path / "other") == 3


def test_dependencies_between_apps(load_dfk: Any) -> None:
    load_dfk()
    a = add(1, 2)
    b = add(a, 10)  # waits for a
    c = add(b, a)
    assert c.result() == 16
    # A failed dependency fails what depends on it, without running it.
    bad = add(fail("upstream"), 1)
    with pytest.raises(parsl.dataflow.errors.DependencyError):
        bad.result()


def test_join_app(load_dfk: Any) -> None:
    load_dfk()
    assert fan_out(10).result() == sum(2 * i for i in range(10))


def test_memoization(load_dfk: Any, tmp_path: Any) -> None:
    load_dfk()
    path = str(tmp_path / "runs")
    assert counted_square(7, path).result() == 49
    assert counted_square(7, path).result() == 49  # from the memo table: the app does not run again
    assert counted_square(8, path).result() == 64
    assert _marks(path) == 2


def test_checkpoints_carry_over_to_the_next_dfk(load_dfk: Any, tmp_path: Any) -> None:
    runinfo = str(tmp_path / "runinfo")
    path = str(tmp_path / "runs")
    dfk = load_dfk(memoizer=BasicMemoizer(checkpoint_mode="task_exit"))
    assert [counted_square(i, path).result() for i in range(3)] == [0, 1, 4]
    dfk.cleanup()
    assert _marks(path) == 3
    checkpoints = get_all_checkpoints(runinfo)
    assert checkpoints
    # A second DFK in the same process, loading the first one's checkpoint.
    load_dfk(memoizer=BasicMemoizer(checkpoint_files=checkpoints))
    assert [counted_square(i, path).result() for i in range(4)] == [0, 1, 4, 9]
    assert _marks(path) == 4  # only x=3 ran


def test_cleanup_and_several_dfks_in_a_row(load_dfk: Any) -> None:
    for i in range(3):
        dfk = load_dfk()
        ex = dfk.executors["HighThroughputExecutor"]
        assert add(i, 1).result() == i + 1
        parsl.dfk().cleanup()
        # cleanup() shut htex down: no interchange or pool left (no_leaks checks processes too).
        assert ex.htex._interchange.proc.poll() is not None
        with pytest.raises(RuntimeError, match="after shutdown"):
            ex.submit(print, {})
        with pytest.raises(parsl.errors.NoDataFlowKernelError):
            parsl.dfk()


def test_parsl_local_provider(load_dfk: Any, tmp_path: Any) -> None:
    from parsl.providers import LocalProvider as ParslLocalProvider

    provider = ParslLocalProvider(init_blocks=1, min_blocks=0, max_blocks=1)
    dfk = load_dfk(executor_kwargs={"provider": provider})
    ex = dfk.executors["HighThroughputExecutor"]
    assert ex.provider is provider  # as the user passed it; the DFK set its script_dir
    assert provider.script_dir == os.path.join(dfk.run_dir, "submit_scripts")
    assert [f.result() for f in [add(i, 1) for i in range(20)]] == list(range(1, 21))
    assert worker_env().result()["PARSL_WORKER_BLOCK_ID"] == "0"
    statuses = ex.status()
    assert [s.state for s in statuses.values()] == [htex.JobState.RUNNING]


def test_unknown_parameter_is_named() -> None:
    with pytest.raises(htex.ConfigurationError, match="enable_mpi_mode"):
        HighThroughputExecutor(enable_mpi_mode=True)


def test_parsl_priority_is_accepted_and_other_keys_refused(load_dfk: Any) -> None:
    load_dfk()
    assert add_with_spec(1, 2, parsl_resource_specification={"priority": 1}).result() == 3
    with pytest.raises(htex.InvalidResourceSpecification, match=r"\['priority', 'cores', 'memory', 'gpus'\]"):
        add_with_spec(1, 2, parsl_resource_specification={"disk": 2}).result()
