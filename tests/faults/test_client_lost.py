"""The client process dies: the interchange and every pool exit by themselves."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from typing import Any

import psutil
import pytest

from support import wait_for

pytestmark = pytest.mark.timeout(60)

CLIENT = textwrap.dedent("""
    import sys, time, tasks
    from htex import HighThroughputExecutor, LocalProvider
    ex = HighThroughputExecutor(provider=LocalProvider(init_blocks=1), max_workers=1,
                                heartbeat_period=1, heartbeat_threshold=3, run_dir=sys.argv[1])
    ex.start()
    ex.submit(tasks.sleep_then, {}, 60)
    while not ex.connected_managers:
        time.sleep(0.05)
    print(ex._interchange.pid, ex.connected_managers[0]["pid"], flush=True)
    time.sleep(120)
""")


def test_sigkill_of_the_client(tmp_path: Any) -> None:
    client = subprocess.Popen([sys.executable, "-c", CLIENT, str(tmp_path)], stdout=subprocess.PIPE, text=True)
    assert client.stdout is not None
    ic_pid, pool_pid = map(int, client.stdout.readline().split())
    workers = psutil.Process(pool_pid).children()
    t0 = time.monotonic()
    os.kill(client.pid, signal.SIGKILL)
    client.wait()
    wait_for(lambda: not psutil.pid_exists(ic_pid), timeout=5, what="the interchange to exit")
    assert time.monotonic() - t0 < 3  # it watches its parent, not only heartbeats
    wait_for(lambda: not psutil.pid_exists(pool_pid), timeout=3 + 5, what="the pool to exit (heartbeat_threshold=3)")
    wait_for(lambda: not any(w.is_running() for w in workers), timeout=5, what="the workers to exit")
