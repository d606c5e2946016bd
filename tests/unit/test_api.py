"""The public API: complete, importable, errors that pickle, Parsl's names present."""

from __future__ import annotations

import concurrent.futures
import inspect
import math
import pickle

import pytest

import htex
from htex import errors


def test_all_names_import() -> None:
    for name in htex.__all__:
        assert hasattr(htex, name), name


def test_every_error_is_exported_and_pickles_with_its_attributes() -> None:
    for name in errors.__all__:
        cls = getattr(errors, name)
        assert getattr(htex, name) is cls
        if issubclass(cls, errors.HtexError):
            e = cls("message", rank=3)
            back = pickle.loads(pickle.dumps(e))
            assert type(back) is cls and str(back) == "message" and back.rank == 3


def test_errors_subclass_the_stdlib_where_meaning_matches() -> None:
    assert issubclass(htex.ExecutorBroken, concurrent.futures.BrokenExecutor)
    assert issubclass(htex.InterchangeLost, concurrent.futures.BrokenExecutor)
    assert issubclass(htex.SerializationError, pickle.PicklingError)
    assert issubclass(htex.ConfigurationError, ValueError)


SPEC_PARAMETERS = {
    "label": "HighThroughputExecutor", "launch_cmd": None, "address": None, "worker_ports": None,
    "worker_port_range": (54000, 55000), "interchange_port_range": (55000, 56000), "storage_access": None,
    "working_dir": None, "worker_debug": False, "cores_per_worker": 1.0, "mem_per_worker": None,
    "max_workers": float("inf"), "prefetch_capacity": "auto", "heartbeat_threshold": 120, "heartbeat_period": 30,
    "poll_period": 10, "address_probe_timeout": None, "managed": True, "worker_logdir_root": None,
}
SPEC_MEMBERS = [
    "hold_worker", "initialize_scaling", "scale_in", "scale_out", "set_bad_state_and_fail_all", "shutdown",
    "start", "status", "submit", "weakref_cb", "bad_state_is_set", "connected_managers", "connected_workers",
    "executor_exception", "hub_address", "hub_port", "outstanding", "provider", "run_dir", "scaling_enabled",
    "status_polling_interval", "tasks",
]


def test_spec_parameters_and_defaults() -> None:
    params = inspect.signature(htex.HighThroughputExecutor).parameters
    assert "provider" in params
    for name, default in SPEC_PARAMETERS.items():
        assert params[name].default == default, name
    ex = htex.HighThroughputExecutor()
    p = ex.provider
    assert isinstance(p, htex.LocalProvider)
    assert (p.init_blocks, p.min_blocks, p.max_blocks, p.nodes_per_block, p.parallelism, p.walltime) == (
        4, 0, 10, 1, 1, "00:15:00")
    assert isinstance(p.launcher, htex.SingleNodeLauncher)


def test_spec_methods_and_attributes_exist() -> None:
    ex = htex.HighThroughputExecutor(run_dir="/nonexistent-not-created")
    for name in SPEC_MEMBERS:
        assert hasattr(type(ex), name) or hasattr(ex, name), name


def test_max_workers_per_node_is_accepted() -> None:
    assert htex.HighThroughputExecutor(max_workers_per_node=3).max_workers == 3


@pytest.mark.parametrize("kw", [
    {"cores_per_worker": 0}, {"max_workers": 0}, {"mem_per_worker": -1}, {"prefetch_capacity": -1},
    {"prefetch_capacity": "fast"}, {"prefetch_capacity": 1.5},
    {"heartbeat_period": 10, "heartbeat_threshold": 5}, {"worker_port_range": (5, 1)},
])
def test_bad_configuration_is_refused(kw: dict[str, object]) -> None:
    with pytest.raises(htex.ConfigurationError):
        htex.HighThroughputExecutor(**kw)  # type: ignore[arg-type]


def test_outbox_is_cut_into_messages_by_count_and_by_bytes() -> None:
    from htex import client

    small = [(i, 1, b"x" * 10, math.nan) for i in range(2500)]
    cut = list(client._batches(small))
    assert [len(c) for c in cut] == [client._BATCH, client._BATCH, 2500 - 2 * client._BATCH]
    big = [(i, 1, b"x" * (client._BATCH_BYTES // 3), math.nan) for i in range(7)]
    cut = list(client._batches(big))
    assert [len(c) for c in cut] == [3, 3, 1]
    huge = [(0, 1, b"x" * (2 * client._BATCH_BYTES), math.nan), (1, 1, b"y", math.nan)]  # one task larger than the cap goes alone
    assert [[t[0] for t in c] for c in client._batches(huge)] == [[0], [1]]
    assert [t for c in client._batches(small + big) for t in c] == small + big  # all of them, in order
    assert list(client._batches([])) == []


def test_the_exports_are_complete_and_written_once() -> None:
    """Every public name of the modules htex re-exports is in htex.__all__, and nothing else is."""
    import importlib

    expected = {"__version__"}
    for module in ("htex.errors", "htex.executor", "htex.launchers", "htex.monitoring.config", "htex.mpi_executor",
                   "htex.providers", "htex.selectors"):
        names = importlib.import_module(module).__all__
        assert len(names) == len(set(names)), module
        assert not expected & set(names), f"{module} exports a name another module exports too"
        expected |= set(names)
    assert set(htex.__all__) == expected
    assert {"HighThroughputExecutor", "LocalProvider", "SrunLauncher", "ManagerLost"} <= expected
    ns: dict[str, object] = {}
    exec("from htex import *", ns)
    assert expected - {"__version__"} <= set(ns)
