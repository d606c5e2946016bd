"""Fixtures of the security tests: the other local user, and a running executor to attack.

Each test gets a fresh executor (LocalProvider, one block, one worker) in one
of three configurations: ``plain`` (encrypted=False), ``encrypted``
(encrypted=True) and ``tcp-encrypted`` (encrypted=True, address="127.0.0.1":
pools over TCP).  Its run directory is made the way a user's would be, in a
directory other users can traverse, with umask 022: the stranger gets every
chance that a default setup gives it.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator
from typing import Any

import pytest

from stranger import User, ensure_user
from support import wait_for
from targets import Target, needles, socket_inodes

CONFIGS: dict[str, dict[str, Any]] = {
    "plain": {"encrypted": False},
    "encrypted": {"encrypted": True},
    "tcp-encrypted": {"encrypted": True, "address": "127.0.0.1"},
}


@pytest.fixture(scope="session")
def stranger() -> User:
    return ensure_user()


@pytest.fixture(params=list(CONFIGS))
def target(request: pytest.FixtureRequest, stranger: User) -> Iterator[Target]:
    from htex import HighThroughputExecutor, LocalProvider

    name: str = request.param
    base = tempfile.mkdtemp(prefix="htex-security-")
    os.chmod(base, 0o755)  # like a project directory: other users may traverse it
    old_umask = os.umask(0o022)
    ex = HighThroughputExecutor(
        provider=LocalProvider(init_blocks=1, max_blocks=1),
        max_workers=1,
        heartbeat_period=1,
        heartbeat_threshold=6,
        run_dir=os.path.join(base, "runinfo"),
        **CONFIGS[name],
    )
    try:
        mine_before = socket_inodes(os.getpid())
        ex.start()
        t = Target(name, ex, base, os.path.join(base, "runinfo"), mine_before)
        wait_for(lambda: ex.connected_managers, timeout=30, what="the pool to register")
        wait_for(lambda: "worker" in t.processes().values(), timeout=30, what="the pool's worker to start")
        t.needles = needles(ex, t.logdir)
        yield t
    finally:
        ex.shutdown(wait=False)
        os.umask(old_umask)
        shutil.rmtree(base, ignore_errors=True)
