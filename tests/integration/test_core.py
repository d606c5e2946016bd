"""The core data path with real processes: executor -> interchange -> pool -> workers."""

from __future__ import annotations

import concurrent.futures
import math
import os
import sys
import textwrap
from typing import Any

import psutil
import pytest

from htex import (
    DeserializationError,
    HighThroughputExecutor,
    InvalidResourceSpecification,
    LocalProvider,
    RemoteError,
    RemoteTraceback,
    SerializationError,
)
from htex.process_worker_pool import worker_count

import tasks

pytestmark = pytest.mark.timeout(60)


def test_issue_example(run_dir: str) -> None:
    """The exact snippet from the core issue, default heartbeats and all."""
    ex = HighThroughputExecutor(max_workers=4, provider=LocalProvider(init_blocks=1), run_dir=run_dir)
    ex.start()
    try:
        fut = ex.submit(pow, {}, 2, 10)
        assert fut.result(timeout=30) == 1024
        assert list(ex.map(abs, range(-5, 5))) == [abs(i) for i in range(-5, 5)]
    finally:
        ex.shutdown()
    assert ex.outstanding == 0


def test_context_manager_and_many_tasks(run_dir: str) -> None:
    with HighThroughputExecutor(max_workers=2, provider=LocalProvider(init_blocks=1), run_dir=run_dir,
                                heartbeat_period=1, heartbeat_threshold=4) as ex:
        futs = [ex.submit(tasks.add, {}, i, b=1) for i in range(2000)]
        assert [f.result(timeout=30) for f in futs] == [i + 1 for i in range(2000)]
        assert ex.tasks == {}  # done tasks are released
    with pytest.raises(RuntimeError, match="after shutdown"):
        ex.submit(tasks.noop, {})


def test_lambdas_closures_and_main_functions_go_by_value(make_executor: Any) -> None:
    ex = make_executor()
    k = 7
    assert ex.submit(lambda x: x * k, {}, 6).result(timeout=30) == 42

    def nested(x: int) -> int:
        return x + k

    assert ex.submit(nested, {}, 1).result(timeout=30) == 8


def test_a_function_crosses_once_per_pool(make_executor: Any) -> None:
    ex = make_executor()
    futs = [ex.submit(tasks.add, {}, i) for i in range(300)]
    futs += [ex.submit(tasks.echo, {}, i) for i in range(300)]
    concurrent.futures.wait(futs, timeout=30)
    assert all(f.done() and not f.exception() for f in futs)
    assert ex.stats()["functions_sent"] == 2  # two functions, one pool


def test_exception_carries_the_remote_traceback(make_executor: Any) -> None:
    ex = make_executor()
    fut = ex.submit(tasks.fail, {}, "boom")
    with pytest.raises(ValueError, match="boom") as info:
        fut.result(timeout=30)
    cause = info.value.__cause__
    assert isinstance(cause, RemoteTraceback)
    assert "tasks.py" in cause.tb and "in fail" in cause.tb
    assert "worker.py" not in cause.tb  # htex's own frame is cut off


def test_exception_that_cannot_be_rebuilt_becomes_remote_error(make_executor: Any) -> None:
    ex = make_executor()
    with pytest.raises(RemoteError, match=r"Unrebuildable: 1/2") as info:
        ex.submit(tasks.raise_unrebuildable, {}).result(timeout=30)
    assert isinstance(info.value.__cause__, RemoteTraceback)


def test_unpicklable_argument_is_refused_at_submit_and_named(make_executor: Any) -> None:
    ex = make_executor()
    import socket

    with socket.socket() as s, pytest.raises(SerializationError, match=r"keyword argument 'handle' \(socket\)"):
        ex.submit(tasks.echo, {}, 1, handle=s)
    with pytest.raises(SerializationError, match=r"positional argument 1 \(generator\)"):
        ex.submit(tasks.add, {}, 1, (i for i in range(3)))
    assert ex.outstanding == 0
    assert ex.submit(tasks.add, {}, 1, 2).result(timeout=30) == 3  # nothing else broke


def test_unpicklable_function_is_refused_at_submit(make_executor: Any) -> None:
    ex = make_executor()
    lock = __import__("threading").Lock()
    with pytest.raises(SerializationError, match="cannot be pickled"):
        ex.submit(lambda: lock, {})


def test_unpicklable_result_fails_only_that_future(make_executor: Any) -> None:
    ex = make_executor()
    with pytest.raises(SerializationError, match=r"result \(lock\) cannot be pickled"):
        ex.submit(tasks.return_lock, {}).result(timeout=30)
    assert ex.submit(tasks.add, {}, 2, 2).result(timeout=30) == 4


def test_module_missing_on_the_worker_is_named(make_executor: Any, tmp_path: Any, monkeypatch: Any) -> None:
    # A module the client can import and the workers cannot (not on their path).
    (tmp_path / "only_on_client.py").write_text(textwrap.dedent("""
        def double(x):
            return 2 * x
    """))
    monkeypatch.syspath_prepend(str(tmp_path))
    import only_on_client  # type: ignore[import-not-found]

    ex = make_executor()
    with pytest.raises(DeserializationError, match="only_on_client") as info:
        ex.submit(only_on_client.double, {}, 2).result(timeout=30)
    assert info.value.module == "only_on_client"
    assert ex.submit(tasks.add, {}, 1).result(timeout=30) == 1
    sys.modules.pop("only_on_client", None)


def test_resource_specification_takes_only_its_keys(make_executor: Any) -> None:
    ex = make_executor()
    with pytest.raises(InvalidResourceSpecification, match=r"disk.*takes only \['priority', 'cores', 'memory', 'gpus'\]"):
        ex.submit(tasks.noop, {"disk": 2})
    assert ex.submit(tasks.add, None, 5).result(timeout=30) == 5
    with pytest.raises(TypeError, match=r"ex\.stdlib\.submit"):
        ex.submit(tasks.add, 1, 2)  # the stdlib's signature by mistake


def test_workers_see_rank_count_and_pool_id(make_executor: Any) -> None:
    ex = make_executor(max_workers=2)
    envs = [f.result(timeout=30) for f in [ex.submit(tasks.sleep_then, {}, 0.3) for _ in range(2)]]
    envs = [ex.submit(tasks.worker_env, {}).result(timeout=30) for _ in range(20)]
    pools = {e["PARSL_WORKER_POOL_ID"] for e in envs}
    assert len(pools) == 1
    (pool_id,) = pools
    assert pool_id == ex.connected_managers[0]["manager"]
    assert {e["PARSL_WORKER_COUNT"] for e in envs} == {"2"}
    assert {e["PARSL_WORKER_RANK"] for e in envs} <= {"0", "1"}
    assert {e["PARSL_WORKER_BLOCK_ID"] for e in envs} == {"0"}


def test_every_rank_is_used(make_executor: Any) -> None:
    ex = make_executor(max_workers=2)
    # Two tasks that overlap in time must run on two different workers.
    futs = [ex.submit(tasks.pid_after, {}, 0.5) for _ in range(2)]
    assert len({f.result(timeout=30) for f in futs}) == 2


def test_custom_launch_cmd_with_parsl_placeholders(make_executor: Any) -> None:
    cmd = (
        "process_worker_pool {debug} --max_workers=1 -c {cores_per_worker} --task_url={task_url} "
        "--result_url={result_url} --logdir={logdir} --block_id={{block_id}} --hb_period={heartbeat_period} "
        "--hb_threshold={heartbeat_threshold} --nodes_per_block={nodes_per_block}"
    )
    bindir = os.path.dirname(sys.executable)
    ex = make_executor(launch_cmd=cmd, worker_debug=True,
                       provider=LocalProvider(init_blocks=1, worker_init=f"export PATH={bindir}:$PATH"))
    assert ex.submit(tasks.add, {}, 40, 2).result(timeout=30) == 42
    managers = ex.connected_managers
    assert managers[0]["worker_count"] == 1 and managers[0]["block_id"] == "0"
    # worker_debug gives each worker its own log
    logs = [os.path.join(d, f) for d, _, fs in os.walk(ex.logdir) for f in fs]
    assert any(p.endswith("worker_0.log") for p in logs), logs


def test_unknown_launch_cmd_placeholder_is_a_clear_error(make_executor: Any) -> None:
    from htex import ConfigurationError

    with pytest.raises(ConfigurationError, match="unknown placeholder 'bogus'"):
        make_executor(launch_cmd="process_worker_pool {bogus}")


def test_worker_limits_cores_and_memory() -> None:
    cores = len(os.sched_getaffinity(0))
    assert worker_count(math.inf, 1.0, None) == cores
    assert worker_count(math.inf, 0.25, None) == cores * 4  # oversubscription
    assert worker_count(3, 0.25, None) == 3
    avail_gb = psutil.virtual_memory().available / 2**30
    assert worker_count(math.inf, 0.01, avail_gb / 2.5) == 2  # memory allows two
    assert worker_count(math.inf, 0.01, avail_gb * 10) == 1  # never zero


@pytest.mark.parametrize(("kw", "expected"), [
    ({"max_workers": 3, "cores_per_worker": 0.5}, 3),
    ({"cores_per_worker": 2.0}, max(1, len(os.sched_getaffinity(0)) // 2)),
    ({"max_workers_per_node": 1}, 1),
])
def test_pool_worker_count_follows_the_limits(make_executor: Any, kw: dict[str, Any], expected: int) -> None:
    kw.setdefault("max_workers", math.inf)
    ex = make_executor(**kw)
    ex.submit(tasks.noop, {}).result(timeout=30)
    assert ex.connected_workers == expected


def test_mem_per_worker_reaches_the_pool(make_executor: Any) -> None:
    avail_gb = psutil.virtual_memory().available / 2**30
    ex = make_executor(max_workers=math.inf, cores_per_worker=0.1, mem_per_worker=avail_gb / 3.5)
    ex.submit(tasks.noop, {}).result(timeout=30)
    assert ex.connected_workers == 3


def test_map_timeout_chunksize_and_stdlib_view(make_executor: Any) -> None:
    ex = make_executor()
    assert list(ex.map(tasks.add, range(10), range(10), chunksize=3)) == [2 * i for i in range(10)]
    with pytest.raises(concurrent.futures.TimeoutError):
        list(ex.map(tasks.sleep_then, [5.0], timeout=0.2))
    view = ex.stdlib
    assert isinstance(view, concurrent.futures.Executor)
    futs = [view.submit(tasks.add, i, b=i) for i in range(20)]
    _done, not_done = concurrent.futures.wait(futs, timeout=30)
    assert not not_done
    assert sorted(f.result() for f in concurrent.futures.as_completed(futs)) == [2 * i for i in range(20)]
    assert list(view.map(abs, [-1, -2])) == [1, 2]


def test_several_addresses_are_probed(make_executor: Any) -> None:
    # 127.0.0.2 is a loopback address where nothing listens: the pool must skip it.
    ex = make_executor(address="127.0.0.2,127.0.0.1", address_probe_timeout=10)
    assert ex.submit(tasks.add, {}, 1, 1).result(timeout=30) == 2


def test_logs_are_under_run_dir(make_executor: Any) -> None:
    ex = make_executor()
    ex.submit(tasks.noop, {}).result(timeout=30)
    assert os.path.exists(os.path.join(ex.run_dir, ex.label, "interchange.log"))
    manager_logs = [f for d, _, fs in os.walk(ex.logdir) for f in fs if f == "manager.log"]
    assert manager_logs
    conn = os.path.join(ex.logdir, "connection.json")
    assert os.stat(conn).st_mode & 0o777 == 0o600


def test_shutdown_leaves_nothing_and_is_idempotent(make_executor: Any) -> None:
    before = {p.pid for p in psutil.Process().children(recursive=True)}  # e.g. multiprocessing's helpers
    ex = make_executor()
    ex.submit(tasks.noop, {}).result(timeout=30)
    children = [p for p in psutil.Process().children(recursive=True) if p.pid not in before]
    assert len(children) >= 4  # interchange, bash, pool, 2 workers
    ex.shutdown()
    ex.shutdown()
    _gone, alive = psutil.wait_procs(children, timeout=5)
    assert not alive


def test_shutdown_without_wait_fails_running_tasks(make_executor: Any) -> None:
    from htex import ExecutorShutdown

    ex = make_executor()
    fut = ex.submit(tasks.sleep_then, {}, 30)
    ex.shutdown(wait=False)
    with pytest.raises(ExecutorShutdown, match="shut down before this task finished"):
        fut.result(timeout=10)


def test_shutdown_with_wait_lets_running_tasks_finish(make_executor: Any) -> None:
    ex = make_executor()
    fut = ex.submit(tasks.sleep_then, {}, 0.5, "done")
    ex.shutdown(wait=True)
    assert fut.result(timeout=0) == "done"


def test_regression_long_tasks_after_short_ones_with_prefetch(make_executor: Any) -> None:
    """Short tasks grow the pool's batches; long ones then flush partial results mid-batch.

    A worker used to send an empty RESULTS after a flush that fell on a batch's
    last task, and the pool died dividing by zero (found by bench/ W4).
    """
    ex = make_executor(max_workers=2, prefetch_capacity=256)
    assert sum(f.result(timeout=30) for f in [ex.submit(tasks.add, {}, 1) for _ in range(2000)]) == 2000
    futs = [ex.submit(tasks.sleep_then, {}, 0.006, i) for i in range(200)]  # each > FLUSH_SECONDS
    assert [f.result(timeout=60) for f in futs] == list(range(200))
    assert ex.stats()["lost"] == 0
