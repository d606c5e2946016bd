"""The hub dying does not stop the run: tasks go on, a warning says so, and the events lost are counted.
A full disk is the same as a dead hub.

Real processes: executor, interchange, a LocalProvider block, the hub.  The full disk is a real
tmpfs of 512 KiB mounted for the test (needs root; skipped, saying so, where mount is not allowed).
"""

from __future__ import annotations

import logging
import subprocess
from typing import Any

import pytest

from htex import Monitoring
from htex.monitoring.hub import EXIT_STORE_FAILED

import tasks
from support import wait_for

pytestmark = pytest.mark.timeout(180)


def test_the_run_goes_on_when_the_hub_is_killed(make_executor: Any, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, logger="htex.monitoring")
    ex = make_executor(monitoring=True)
    assert ex.submit(tasks.add, {}, 1, 1).result(60) == 2
    session = ex._monitoring
    session.hub.kill()
    session.hub.wait(30)
    sender = session.reporter.sender
    wait_for(lambda: not sender.connected, 30, what="the executor's sender to see the hub gone")
    futures = [ex.submit(tasks.add, {}, i, 1) for i in range(200)]
    assert [f.result(60) for f in futures] == [i + 1 for i in range(200)]
    assert "unreachable" in caplog.text
    ex.shutdown()
    assert sender.dropped >= 200 * 2  # at least each task's submitted and ended events
    assert f"{sender.dropped} events of this process were lost" in caplog.text
    assert "the monitoring hub was killed by signal 9" in caplog.text


@pytest.fixture
def tiny_disk(tmp_path: Any) -> Any:
    where = tmp_path / "tiny"
    where.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=512k", "tmpfs", str(where)], capture_output=True,
                          text=True)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a small tmpfs to fill (needs root): {done.stderr.strip()}")
    yield where
    subprocess.run(["umount", "-l", str(where)], check=False)


def test_a_full_disk_is_a_dead_hub(make_executor: Any, tiny_disk: Any, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, logger="htex.monitoring")
    ex = make_executor(monitoring=Monitoring(url=str(tiny_disk / "monitoring.db")))
    hub = ex._monitoring.hub
    big = "x" * 2000  # an exception message per task: rows fill 512 KiB within a few hundred tasks
    for _ in range(10):
        futures = [ex.submit(tasks.fail, {}, big) for _ in range(100)]
        for f in futures:
            assert isinstance(f.exception(60), ValueError)  # every task still ends
        if hub.poll() is not None:
            break
    wait_for(lambda: hub.poll() is not None, 30, what="the hub to stop on a full disk")
    assert hub.returncode == EXIT_STORE_FAILED
    assert ex.submit(tasks.add, {}, 2, 3).result(60) == 5
    ex.shutdown()
    with open(ex._monitoring.stderr_path) as f:
        assert "cannot write to the store" in f.read()
    assert "were lost" in caplog.text


def test_events_for_an_absent_hub_are_bounded_and_counted() -> None:
    """No hub ever answers: the sender keeps max_queued facts (a column event of 5,000 tasks counts
    5,000), drops and counts the rest, and at stop counts what it kept as lost too."""
    from htex.monitoring import events as ev
    from htex.monitoring.sender import EventSender

    sender = EventSender("tcp://127.0.0.1:1", "run", "test", flush_period=0.05, max_queued=10_000)
    sender.start()
    for _ in range(3):
        sender.emit(ev.TasksDone(list(range(5000)), 1.0, [0] * 5000, [1] * 5000))
    sender.emit(ev.RunEnded(2.0))
    assert sender.dropped == 5001 and sender.held == 10_000
    sender.stop()
    assert sender.dropped == 15_001 and sender.sent == 0
