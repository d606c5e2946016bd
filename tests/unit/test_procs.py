"""Process helpers (src/htex/procs.py): how a process ended, the end of its stderr, TERM-wait-warn-KILL-reap."""

from __future__ import annotations

import logging
import subprocess
import sys
import time
from typing import Any

import psutil
import pytest

from htex import procs

pytestmark = pytest.mark.timeout(30)

# A process that ignores SIGTERM, and says so once it does (so that the test does not race its start).
STUBBORN = [sys.executable, "-c",
            "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); print('ready', flush=True); time.sleep(60)"]


def _started(proc: subprocess.Popen[bytes]) -> subprocess.Popen[bytes]:
    assert proc.stdout is not None and proc.stdout.readline() == b"ready\n"
    return proc


def _gone(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


def test_describe_exit() -> None:
    assert procs.describe_exit(0) == "exited with code 0"
    assert procs.describe_exit(3) == "exited with code 3"
    assert procs.describe_exit(-9) == "was killed by signal 9 (SIGKILL)"
    assert procs.describe_exit(-15) == "was killed by signal 15 (SIGTERM)"
    assert procs.describe_exit(-99) == "was killed by signal 99"  # no name for it
    assert procs.describe_exit(None) == "has not exited"


def test_describe_exit_of_real_processes() -> None:
    assert procs.describe_exit(subprocess.run(["sh", "-c", "exit 7"]).returncode) == "exited with code 7"
    assert procs.describe_exit(subprocess.run(["sh", "-c", "kill -KILL $$"]).returncode) == \
        "was killed by signal 9 (SIGKILL)"


def test_tail(tmp_path: Any) -> None:
    path = tmp_path / "stderr"
    path.write_bytes(b"x" * 5000 + b"Traceback: the end\n\n")
    assert procs.tail(str(path)) == ("x" * 5000 + "Traceback: the end")[-(procs.TAIL_BYTES - 2):]
    assert procs.tail(str(path), 12) == "k: the end"  # the last 12 bytes, stripped
    path.write_bytes("é".encode() * 10)  # 20 bytes: an odd limit cuts the first character in two
    assert procs.tail(str(path), 5) == "\ufffdéé"
    path.write_bytes(b"")
    assert procs.tail(str(path)) == ""
    assert procs.tail(str(tmp_path / "missing")) == ""
    assert procs.tail(str(tmp_path)) == ""  # a directory: unreadable
    assert procs.tail(None) == ""


def test_stop_terms_first(caplog: Any) -> None:
    proc = subprocess.Popen(["sleep", "60"])
    t0 = time.monotonic()
    with caplog.at_level(logging.WARNING, logger="htex.procs"):
        procs.stop([proc], 5.0, "sleepers")
    assert proc.returncode == -15 and time.monotonic() - t0 < 4
    assert caplog.records == []  # it went when asked: nothing to warn about


def test_stop_warns_then_kills_what_ignores_term(caplog: Any) -> None:
    stubborn = _started(subprocess.Popen(STUBBORN, stdout=subprocess.PIPE))
    meek = subprocess.Popen(["sleep", "60"])
    done = subprocess.Popen(["true"])
    done.wait()
    t0 = time.monotonic()
    with caplog.at_level(logging.WARNING, logger="htex.procs"):
        procs.stop([stubborn, meek, done], 0.5, "test workers")
    assert 0.5 <= time.monotonic() - t0 < 5
    assert (stubborn.returncode, meek.returncode, done.returncode) == (-9, -15, 0)  # each reaped by its Popen
    [record] = caplog.records
    assert record.levelno == logging.WARNING
    assert "test workers" in record.message and f"pid {stubborn.pid}" in record.message
    assert f"pid {meek.pid}" not in record.message and "SIGKILL" in record.message


def test_stop_psutil_processes() -> None:
    child = _started(subprocess.Popen(STUBBORN, stdout=subprocess.PIPE))
    procs.stop([psutil.Process(child.pid)], 0.3, "children")
    assert _gone(child.pid)
    child.wait()  # psutil reaped it: Popen no longer can tell how it ended, but it is not left running


def test_stop_nothing() -> None:
    procs.stop([], 1.0, "nobody")


def test_stop_a_group_waits_for_what_its_leader_started(caplog: Any) -> None:
    """group=True: the TERM goes to the whole group, and the grace period is for what the leader (a job's shell,
    which dies at once) started too: what ends in time is not KILLed, what ignores the TERM is."""
    leader = subprocess.Popen(
        ["sh", "-c", "sleep 60 & (trap '' TERM; exec sleep 60) & echo $!; wait"], stdout=subprocess.PIPE,
        start_new_session=True,
    )
    assert leader.stdout is not None
    straggler = int(leader.stdout.readline())
    time.sleep(0.2)  # let the subshell set its trap and exec
    t0 = time.monotonic()
    with caplog.at_level(logging.WARNING, logger="htex.procs"):
        procs.stop([leader], 1.0, "blocks", group=True)
    assert leader.returncode == -15 and time.monotonic() - t0 >= 1.0
    [record] = caplog.records
    assert record.message.startswith(f"blocks: pid {straggler} still running 1 s after SIGTERM")
    deadline = time.monotonic() + 5
    while not _gone(straggler):
        assert time.monotonic() < deadline, "the straggler of the group is still running"
        time.sleep(0.05)


def test_stop_a_group_that_goes_when_asked(caplog: Any) -> None:
    """A block's pool stops its workers when it gets the TERM: stop() returns as soon as the whole group is gone."""
    leader = subprocess.Popen(["sh", "-c", "sleep 60 & sleep 60 & wait"], start_new_session=True)
    time.sleep(0.2)
    members = psutil.Process(leader.pid).children()
    assert len(members) == 2
    t0 = time.monotonic()
    with caplog.at_level(logging.WARNING, logger="htex.procs"):
        procs.stop([leader], 5.0, "blocks", group=True)
    assert time.monotonic() - t0 < 3 and caplog.records == []
    assert all(_gone(p.pid) for p in members)  # zombies at most: init reaps them (in its own time)


def test_stop_a_group_whose_leader_has_ended() -> None:
    leader = subprocess.Popen(["sh", "-c", "(trap '' TERM; exec sleep 60) & echo $!"], stdout=subprocess.PIPE,
                              start_new_session=True)
    assert leader.stdout is not None
    straggler = int(leader.stdout.readline())
    leader.wait()
    procs.stop([leader], 1.0, "blocks", group=True)
    deadline = time.monotonic() + 5
    while not _gone(straggler):
        assert time.monotonic() < deadline, "the straggler of the group is still running"
        time.sleep(0.05)
