"""The scenarios every cloud passes, written once: each test file gives its cloud as a ``Cloud``.

Each scenario runs a real executor whose provider talks, through the cloud's
real client library, to the cloud's stand-in (emulators/), which boots every
machine's script through the test hypervisor: the pool runs as root on a host
of its own (a network namespace, the client's run directory hidden) and
connects back to the executor's address over TCP with CurveZMQ.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import pytest

from htex.errors import ManagerLost
from htex.providers.base import ExecutionProvider

import cloudtasks
from . import gated
from cloudlab import free_port
from hypervisor import Hypervisor, unavailable
from support import wait_for

# Workers import cloudtasks and emulators.gated: the boot script puts tests/clouds on their path.
CLOUD_TESTS = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
WORKER_INIT = f"export PYTHONPATH={CLOUD_TESTS}"
# Booting a host, starting Python and a pool: seconds on a busy 2-core machine, so generous bounds.
BOOT_SECONDS = 120.0


@dataclass
class Cloud:
    """One cloud under test: how to make its provider and look at its machines from outside htex."""

    hv: Hypervisor
    provider: Callable[..., ExecutionProvider]  # block parameters -> a provider on the stand-in
    machines: Callable[[], set[str]]  # ids of the cloud's machines now (the hypervisor's ids too)
    delete: Callable[[str], None]  # delete one through the cloud's API, as a user in its console would
    boot_script: Callable[[str], str]  # the script the cloud keeps for a machine


@pytest.fixture
def hypervisor(tmp_path: Any, run_dir: str) -> Iterator[Hypervisor]:
    """Hosts for the clouds' machines; the client's run directory (its keys) is hidden from them."""
    reason = unavailable()
    if reason:
        pytest.skip(reason)
    os.makedirs(run_dir, exist_ok=True)  # tmp_path/runinfo: make_executor's, and the README examples'
    hv = Hypervisor(str(tmp_path / "boot"), hide=[run_dir])
    yield hv
    hv.close()


def _executor(make_executor: Callable[..., Any], cloud: Cloud, max_idletime: float = 1.0, **block: Any) -> Any:
    block.setdefault("worker_init", WORKER_INIT)
    block.setdefault("status_polling_interval", 0.5)
    # One worker a block, so that a burst of three tasks needs three blocks.
    return make_executor(provider=cloud.provider(**block), address=cloud.hv.address, max_workers=1,
                         max_idletime=max_idletime)


def _hostname(hv: Hypervisor, machine: str) -> str:
    return "ip-" + hv.address_of(machine).replace(".", "-")


def _nothing_left(cloud: Cloud) -> None:
    wait_for(lambda: not cloud.machines(), timeout=BOOT_SECONDS, what="the cloud's machines to be deleted")
    wait_for(lambda: not cloud.hv.running(), timeout=30, what="the machines' processes to end")


def tasks_run_on_booted_pools(cloud: Cloud, make_executor: Callable[..., Any]) -> None:
    """Tasks run on the pool the machine's boot script started, which carried the pool's keys inline."""
    ex = _executor(make_executor, cloud, init_blocks=1, min_blocks=0, max_blocks=1)
    assert ex.encrypted
    hosts = {f.result(timeout=BOOT_SECONDS) for f in [ex.submit(cloudtasks.hostname, {}) for _ in range(4)]}
    [machine] = cloud.machines()
    assert hosts == {_hostname(cloud.hv, machine)}
    script = cloud.boot_script(machine)
    for name in ("pool.public", "pool.secret", "server.public"):
        with open(os.path.join(ex.cert_dir, name)) as f:
            assert f.read().strip() in script, f"the boot script lacks {name}"
    with open(os.path.join(ex.cert_dir, "server.secret")) as f:
        assert f.read().strip() not in script, "the interchange's secret key left the client"
    ex.shutdown()
    _nothing_left(cloud)


def burst_scales_out_then_idle_scales_in(cloud: Cloud, make_executor: Callable[..., Any], tmp_path: Any) -> None:
    """Three waiting tasks on one-worker blocks: three machines; once done and idle, all are deleted."""
    ex = _executor(make_executor, cloud, init_blocks=0, min_blocks=0, max_blocks=3)
    gate = str(tmp_path / "gate")
    markers = [str(tmp_path / f"started-{i}") for i in range(3)]
    futures = [ex.submit(gated.host_when_open, {}, gate, m) for m in markers]
    wait_for(lambda: len(cloud.machines()) == 3, timeout=BOOT_SECONDS, what="three machines")
    wait_for(lambda: all(os.path.exists(m) for m in markers), timeout=BOOT_SECONDS, what="the three tasks to start")
    open(gate, "w").close()
    hosts = {f.result(timeout=60) for f in futures}
    assert len(hosts) == 3
    _nothing_left(cloud)  # idle for max_idletime: scaled in, and the machines deleted
    ex.shutdown()


def deleted_machine_is_noticed_and_replaced(cloud: Cloud, make_executor: Callable[..., Any], tmp_path: Any) -> None:
    """A machine deleted outside htex: its task ends with ManagerLost and a new machine replaces it."""
    ex = _executor(make_executor, cloud, init_blocks=1, min_blocks=1, max_blocks=1)
    marker = str(tmp_path / "started")
    future = ex.submit(gated.host_when_open, {}, str(tmp_path / "never"), marker)
    wait_for(lambda: os.path.exists(marker), timeout=BOOT_SECONDS, what="the task to start")
    [machine] = cloud.machines()
    old_host = _hostname(cloud.hv, machine)
    cloud.delete(machine)
    with pytest.raises(ManagerLost):
        future.result(timeout=60)
    assert ex.submit(cloudtasks.hostname, {}).result(timeout=BOOT_SECONDS) != old_host
    assert machine not in cloud.machines() and len(cloud.machines()) == 1
    ex.shutdown()
    _nothing_left(cloud)


def block_of_two_ends_with_either_machine(cloud: Cloud, make_executor: Callable[..., Any], tmp_path: Any) -> None:
    """A block of two machines, one pool each: one deleted outside htex ends the block, so both pools' tasks
    end with ManagerLost, the other machine is deleted too, and a new block of two replaces it."""
    ex = _executor(make_executor, cloud, nodes_per_block=2, init_blocks=1, min_blocks=1, max_blocks=1)
    markers = [str(tmp_path / f"started-{i}") for i in range(2)]
    futures = [ex.submit(gated.host_when_open, {}, str(tmp_path / "never"), m) for m in markers]
    wait_for(lambda: all(os.path.exists(m) for m in markers), timeout=BOOT_SECONDS, what="a task on each machine")
    first = cloud.machines()
    assert len(first) == 2
    cloud.delete(sorted(first)[0])
    for future in futures:
        with pytest.raises(ManagerLost):
            future.result(timeout=60)
    wait_for(lambda: len(cloud.machines() - first) == 2, timeout=BOOT_SECONDS, what="a new block of two machines")
    assert not cloud.machines() & first
    assert ex.submit(cloudtasks.hostname, {}).result(timeout=BOOT_SECONDS)
    ex.shutdown()
    _nothing_left(cloud)


def walltime_powers_the_machine_off(cloud: Cloud, make_executor: Callable[..., Any]) -> None:
    """After walltime the machine's own OS shuts it down; the cloud lists it stopped, and its block ends
    and is deleted (an idle block is not scaled in first: max_idletime is long)."""
    ex = _executor(make_executor, cloud, max_idletime=600.0, init_blocks=1, min_blocks=0, max_blocks=1,
                   walltime="00:00:02")
    [machine] = cloud.machines()
    wait_for(lambda: machine in cloud.hv.halted(), timeout=BOOT_SECONDS, what="the machine to power itself off")
    wait_for(lambda: machine not in cloud.machines(), timeout=60, what="the stopped machine to be deleted")
    ex.shutdown()
    _nothing_left(cloud)


def readme_example_runs(heading: str, cloud: Cloud, site: dict[str, str], tmp_path: Any,
                        monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    """The README's example under ``### heading``, run as written but for its site values.

    ``site`` replaces the cloud's own values (credentials, project, the stand-in's endpoint); the address,
    the ports and worker_init (this machine's Python stands for the image's, htex already installed) are
    replaced here for every cloud.
    """
    with open(os.path.join(os.path.dirname(CLOUD_TESTS), "..", "README.md")) as f:
        readme = f.read()
    section = readme[readme.index(f"\n### {heading}\n"):]
    code = section[section.index("```python\n") + 10:section.index("\n```\n")]
    site = {
        '"203.0.113.7"': repr(cloud.hv.address),
        "(54000, 54001)": repr((free_port(), free_port())),
        '"pip install htex"': repr(f"export PATH={os.path.dirname(sys.executable)}:$PATH"),
        **site,
    }
    for old, new in site.items():
        assert old in code, f"the README's example no longer has {old}"
        code = code.replace(old, new)
    monkeypatch.chdir(tmp_path)  # its run directory (runinfo/) is there, hidden from the machines
    exec(compile(code, f"README.md ({heading})", "exec"), {})
    assert capsys.readouterr().out.strip().endswith("6")
    assert len(cloud.hv.booted()) == 1
    _nothing_left(cloud)
