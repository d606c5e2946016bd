"""Issue 13: a Parsl user's configuration runs unchanged on htex.parsl.

Parameters of today's Parsl and of Parsl 1.0 are accepted; Parsl 1.0's
launch_cmd starts a pool; errors come out as Parsl's classes; tasks run in the
client's directory.  Each with a real Parsl workflow.
"""

from __future__ import annotations

import inspect
import logging
import os
import pickle
import sys
import threading
from typing import Any

import pytest

pytest.importorskip("parsl.config", reason="Parsl is not installed (pip install htex[parsl])")

import parsl
import parsl.executors
import parsl.executors.high_throughput.errors
import parsl.serialize.errors
from parsl.executors.errors import BadStateException, InvalidResourceSpecification
from parsl.executors.high_throughput.manager_selector import RandomManagerSelector
from parsl.serialize.errors import SerializationError
from parsl_tasks import add, count_tries, cwd, write_relative

import htex
from htex import errors
from htex.parsl import HighThroughputExecutor, ResultRadio

pytestmark = pytest.mark.timeout(60)

_HERE = os.path.dirname(os.path.abspath(__file__))
os.environ["PYTHONPATH"] = os.pathsep.join(p for p in (_HERE, os.environ.get("PYTHONPATH")) if p)

# Parsl 1.0's default launch_cmd, as its executor.py shipped it.
PARSL_1_0_DEFAULT_LAUNCH_CMD = (
    "process_worker_pool.py {debug} {max_workers} "
    "-a {addresses} "
    "-p {prefetch_capacity} "
    "-c {cores_per_worker} "
    "-m {mem_per_worker} "
    "--poll {poll_period} "
    "--task_port={task_port} "
    "--result_port={result_port} "
    "--logdir={logdir} "
    "--block_id={{block_id}} "
    "--hb_period={heartbeat_period} "
    "{address_probe_timeout_string} "
    "--hb_threshold={heartbeat_threshold} "
)


# -- point 4: every parameter --------------------------------------------------------------


def test_every_parameter_of_parsls_htex_is_accepted() -> None:
    # The installed Parsl's own list: a parameter a future Parsl adds fails here until we take it.
    params = inspect.signature(parsl.executors.HighThroughputExecutor.__init__).parameters
    defaults = {n: p.default for n, p in params.items() if n != "self" and p.default is not inspect.Parameter.empty}
    assert {"available_accelerators", "cpu_affinity", "drain_period", "manager_selector", "block_error_handler",
            "interchange_launch_cmd", "loopback_address", "worker_port", "encrypted"} <= set(defaults)
    ex = HighThroughputExecutor(**defaults)
    for name, value in defaults.items():
        if name in ("provider", "max_workers_per_node"):  # htex's provider / its cap stand for these
            continue
        if name == "remote_monitoring_radio":  # None: a default radio, as Parsl's HTEX (its HTEXRadio)
            assert isinstance(ex.remote_monitoring_radio, ResultRadio)
            continue
        stored = getattr(ex, name, getattr(ex.htex, name, None))
        # Parsl too keeps the accelerators as a list.
        assert stored == (list(value) if name == "available_accelerators" else value), name


def test_parsl_1_0_spellings_are_accepted() -> None:
    ex = HighThroughputExecutor(max_workers=3, worker_ports=(54321, 54322), managed=False)
    assert (ex.htex.max_workers, ex.htex.worker_ports, ex.htex.managed) == (3, (54321, 54322), False)


def test_a_parameter_neither_knows_is_named() -> None:
    with pytest.raises(htex.ConfigurationError, match="no_such_thing"):
        HighThroughputExecutor(no_such_thing=True)


def test_todays_site_config_runs_and_says_what_it_ignores(load_dfk: Any, caplog: Any) -> None:
    # What Parsl's Polaris and OSG configs pass.
    with caplog.at_level(logging.INFO, logger="htex.parsl"):
        dfk = load_dfk(dict(available_accelerators=2, cpu_affinity="alternating", drain_period=3600,
                            worker_port=54999, loopback_address="127.0.0.1", manager_selector=RandomManagerSelector(),
                            block_error_handler=False, max_workers_per_node=2, encrypted=True))
    said = [r.getMessage() for r in caplog.records if "accepted, not used yet" in r.getMessage()]
    assert len(said) == 1
    assert "block_error_handler" in said[0]
    for name in ("worker_port", "loopback_address", "available_accelerators", "cpu_affinity", "manager_selector",
                 "drain_period"):
        assert name not in said[0]
    ex = dfk.executors["HighThroughputExecutor"]
    assert ex.worker_port == 54999 and ex.htex.worker_ports == (54999, 54999)  # the pools' one port
    assert ex.available_accelerators == ["0", "1"] and ex.cpu_affinity == "alternating"
    assert [f.result() for f in [add(i, 1) for i in range(10)]] == list(range(1, 11))


# -- point 5: Parsl 1.0's launch_cmd ----------------------------------------------------------


def test_parsl_1_0_default_launch_cmd_starts_a_pool(load_dfk: Any) -> None:
    ours = os.path.join(os.path.dirname(sys.executable), "process_worker_pool")
    launch_cmd = PARSL_1_0_DEFAULT_LAUNCH_CMD.replace("process_worker_pool.py", ours)
    dfk = load_dfk(dict(launch_cmd=launch_cmd, address_probe_timeout=10))
    cmd = dfk.executors["HighThroughputExecutor"].htex.launch_command("0")
    assert "--max_workers=2 " in cmd and "--address_probe_timeout=10 " in cmd
    assert [f.result() for f in [add(i, i) for i in range(10)]] == [2 * i for i in range(10)]


# -- point 3: Parsl's exception classes ---------------------------------------------------------


def test_unpicklable_argument_is_parsls_serialization_error(load_dfk: Any) -> None:
    load_dfk()
    fut = add(threading.Lock(), 1)
    with pytest.raises(SerializationError) as info:
        fut.result()
    assert isinstance(info.value, errors.SerializationError)  # and still htex's, for htex code
    assert info.value.fname == "add"
    assert isinstance(pickle.loads(pickle.dumps(info.value)), SerializationError)
    assert add(1, 1).result() == 2  # one bad argument fails one task


def test_resource_specification_is_parsls_invalid_resource_specification(load_dfk: Any) -> None:
    load_dfk()
    with pytest.raises(InvalidResourceSpecification) as info:
        add(1, 2, parsl_resource_specification={"cores": 2, "disk": 1}).result()
    assert info.value.invalid_keys == {"disk"}


def test_bad_state_is_parsls_bad_state_exception(load_dfk: Any) -> None:
    dfk = load_dfk()
    ex = dfk.executors["HighThroughputExecutor"]
    ex.set_bad_state_and_fail_all(RuntimeError("the site went away"))
    assert ex.bad_state_is_set and isinstance(ex.executor_exception, BadStateException)
    with pytest.raises(BadStateException, match="the site went away"):
        add(1, 2).result()


# -- point 1: the client's directory -------------------------------------------------------------


def test_tasks_run_in_the_clients_directory(load_dfk: Any, tmp_path: Any, monkeypatch: Any) -> None:
    here = tmp_path / "work dir"
    here.mkdir()
    monkeypatch.chdir(here)
    dfk = load_dfk()
    assert cwd().result() == str(here)
    assert write_relative("out.txt", "hello", stdout="std.out").result() == 0
    assert (here / "out.txt").read_text().strip() == "hello"
    assert (here / "std.out").read_text().strip() == "hello"
    # Scripts and the blocks' output stay under the run directory.
    ex = dfk.executors["HighThroughputExecutor"]
    assert ex.provider.script_dir.startswith(dfk.run_dir)
    assert sorted(os.listdir(here)) == ["out.txt", "std.out"]


def test_retried_bash_app_counts_its_tries_in_the_clients_directory(load_dfk: Any, tmp_path: Any,
                                                                     monkeypatch: Any) -> None:
    here = tmp_path / "client"
    here.mkdir()
    monkeypatch.chdir(here)
    load_dfk(retries=2)
    assert count_tries("tries.txt", 2).result(timeout=60) == 0
    assert (here / "tries.txt").read_text() == "x\nx\nx\n"  # three tries, all in this directory, none before


def test_parsl_local_provider_runs_tasks_in_the_clients_directory(load_dfk: Any, tmp_path: Any,
                                                                   monkeypatch: Any) -> None:
    from parsl.providers import LocalProvider as ParslLocalProvider

    monkeypatch.chdir(tmp_path)
    load_dfk(dict(provider=ParslLocalProvider(init_blocks=1, max_blocks=1)))
    assert cwd().result() == str(tmp_path)


def test_working_dir_keeps_parsls_meaning(load_dfk: Any, tmp_path: Any, monkeypatch: Any) -> None:
    # Site configs ship it as a placeholder path: no pool may cd there (or fail for its absence).
    monkeypatch.chdir(tmp_path)
    dfk = load_dfk(dict(working_dir="/no/such/dir/on/this/site"))
    ex = dfk.executors["HighThroughputExecutor"]
    assert ex.working_dir == "/no/such/dir/on/this/site" and ex.htex.working_dir is None
    assert cwd().result() == str(tmp_path)


@pytest.mark.parametrize(("htex_error", "parsl_class"), [
    (errors.SerializationError("x"), SerializationError),
    (errors.DeserializationError("x"), parsl.serialize.errors.DeserializationError),
    (errors.InvalidResourceSpecification("x"), InvalidResourceSpecification),
    (errors.ExecutorBroken("x"), BadStateException),
    (errors.InterchangeLost("x"), BadStateException),
    (errors.ScaleOutFailed("x"), BadStateException),
    (errors.ManagerLost("x", host="n1"), parsl.executors.high_throughput.errors.ManagerLost),
    (errors.WorkerLost("x", rank=0), parsl.executors.high_throughput.errors.WorkerLost),
])
def test_each_htex_error_is_also_parsls(htex_error: errors.HtexError, parsl_class: type[Exception]) -> None:
    from htex.parsl import _to_parsl

    translated = _to_parsl(htex_error, object(), "f")
    assert isinstance(translated, parsl_class) and isinstance(translated, type(htex_error))
    assert str(translated) == "x" and translated.__cause__ is htex_error
    again = pickle.loads(pickle.dumps(translated))  # without the executor it names
    assert type(again) is type(translated) and str(again) == "x"
