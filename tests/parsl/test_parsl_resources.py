"""Issue 15, point 4: under htex.parsl, Parsl's ``priority`` orders tasks as in Parsl's HTEX, and cores,
memory and gpus pass through (Parsl hands an app's ``parsl_resource_specification`` to the executor).
Real Parsl workflows on real htex processes."""

from __future__ import annotations

import os
from typing import Any

import pytest

pytest.importorskip("parsl.config", reason="Parsl is not installed (pip install htex[parsl])")

from parsl import python_app
from parsl.executors.errors import InvalidResourceSpecification

pytestmark = pytest.mark.timeout(90)

_HERE = os.path.dirname(os.path.abspath(__file__))
os.environ["PYTHONPATH"] = os.pathsep.join(p for p in (_HERE, os.environ.get("PYTHONPATH")) if p)


@python_app
def record(log: str, label: str, gate: str = "", parsl_resource_specification: dict[str, Any] | None = None) -> str:
    # Parsl passes the specification to the app too: an app that takes one declares it.
    import os
    import time

    fd = os.open(log, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    os.write(fd, f"{label}\n".encode())
    os.close(fd)
    deadline = time.monotonic() + 60
    while gate and not os.path.exists(gate) and time.monotonic() < deadline:
        time.sleep(0.005)
    return label



def test_parsl_priority_orders_the_queue(load_dfk: Any, tmp_path: Any) -> None:
    from support import read_lines, wait_for

    dfk = load_dfk(executor_kwargs={"max_workers": 1})
    ex = dfk.executors["HighThroughputExecutor"]
    log, gate = str(tmp_path / "started"), str(tmp_path / "gate")
    busy = record(log, "busy", gate)
    wait_for(lambda: read_lines(log) == ["busy"], timeout=30, what="the busy task to start")
    later = [record(log, f"p10-{i}", parsl_resource_specification={"priority": 10}) for i in range(5)]
    urgent = [record(log, f"p1-{i}", parsl_resource_specification={"priority": 1}) for i in range(2)]
    wait_for(lambda: ex.stats()["queued"] == 7, timeout=30, what="7 tasks queued in the interchange")
    with open(gate, "w"):
        pass
    for fut in [busy, *later, *urgent]:
        fut.result(timeout=60)
    assert read_lines(log) == ["busy", "p1-0", "p1-1"] + [f"p10-{i}" for i in range(5)]


def test_parsl_cores_memory_gpus_are_accepted(load_dfk: Any, tmp_path: Any) -> None:
    load_dfk(executor_kwargs={"max_workers": 2})
    from support import read_lines

    log = str(tmp_path / "started")
    spec = {"cores": 2, "memory": 100, "priority": 3}
    assert record(log, "big", parsl_resource_specification=spec).result(timeout=60) == "big"
    with pytest.raises(InvalidResourceSpecification) as info:
        record(log, "gpu", parsl_resource_specification={"gpus": 1}).result(timeout=60)
    assert "gpus=1" in str(info.value)  # no pool of this executor has a GPU: fails at once, saying so
    assert read_lines(log) == ["big"]
