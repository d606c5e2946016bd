"""The htex command against live executors: status, pool --run-dir, help.

Commands run as ``python -m htex.cli`` (what the ``htex`` console script calls)
in subprocesses where a real terminal-side behaviour matters (Ctrl-C, a pool
that must be stopped), and in-process (``cli.main``) elsewhere, for speed.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from typing import Any

import pytest

from htex import cli, security

from tasks import add, fail, noop

pytestmark = pytest.mark.timeout(60)

HTEX = [sys.executable, "-m", "htex.cli"]


def until(predicate: Callable[[], Any], timeout: float = 15.0, what: str = "condition") -> Any:
    """Poll ``predicate`` until it returns something true; fail after ``timeout`` s."""
    deadline = time.monotonic() + timeout
    while not (value := predicate()):
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout} s waiting for {what}")
        time.sleep(0.02)
    return value


def status_json(capsys: Any, *args: str) -> dict[str, Any]:
    assert cli.main(["status", *args, "--json", "--sample", "0"]) == 0
    result: dict[str, Any] = json.loads(capsys.readouterr().out)
    return result


# -- help ----------------------------------------------------------------------


def test_help_for_every_command(capsys: Any) -> None:
    for argv in ([], ["pool"], ["status"]):
        with pytest.raises(SystemExit) as info:
            cli.main([*argv, "--help"])
        assert info.value.code == 0
        out = capsys.readouterr().out
        assert out.startswith(f"usage: htex{' ' + argv[0] if argv else ''}")
    assert cli.main([]) == 2  # no command: the help, on stderr, and a usage error code
    assert "COMMAND" in capsys.readouterr().err
    r = subprocess.run([*HTEX, "--help"], capture_output=True, text=True, timeout=20)
    assert r.returncode == 0 and "pool" in r.stdout and "status" in r.stdout


# -- status ----------------------------------------------------------------------


def test_status_of_a_live_executor(make_executor: Any, capsys: Any) -> None:
    ex = make_executor(max_workers=2)
    assert [f.result(20) for f in [ex.submit(add, {}, i, 1) for i in range(30)]] == list(range(1, 31))
    with pytest.raises(ValueError):
        ex.submit(fail, {}, "x").result(20)

    # The run directory (one executor under it) and run_dir/<label> both work.
    for target in (ex.run_dir, ex.logdir):
        data = status_json(capsys, target)
        assert data["stats"]["done"] == 31 and data["stats"]["raised"] == 1 and data["stats"]["queued"] == 0
        [m] = data["managers"]
        assert (m["block_id"], m["worker_count"], m["tasks"]) == ("0", 2, 0)
        assert data["blocks"] == {"0": {"managers": [m["manager"]], "workers": 2, "tasks": 0}}

    assert cli.main(["status", ex.logdir, "--sample", "0"]) == 0
    text = capsys.readouterr().out
    manager = ex.connected_managers[0]["manager"]
    assert "31 done (1 raised)" in text and "0 queued" in text and "failed/lost" in text
    assert f"  {manager}  " in text  # the managers table
    assert "BLOCK  MANAGERS  WORKERS  RUNNING" in text


def test_status_rate_from_two_samples(make_executor: Any) -> None:
    ex = make_executor(max_workers=2)
    with cli.StatusClient(f"tcp://127.0.0.1:{ex.worker_task_port}", ex.cert_dir) as client:
        first = client.sample()
        for f in [ex.submit(noop, {}) for _ in range(200)]:
            f.result(20)
        second = client.sample()
    rate = cli.rate_between(first, second)
    assert second.stats.done - first.stats.done == 200
    assert rate is not None and rate > 0


def test_status_shows_running_tasks_and_both_blocks(make_executor: Any, capsys: Any) -> None:
    from htex import LocalProvider

    from tasks import sleep_then

    ex = make_executor(max_workers=1, provider=LocalProvider(init_blocks=2, min_blocks=2, max_blocks=2))
    until(lambda: len(ex.connected_managers) == 2, what="two pools")
    futures = [ex.submit(sleep_then, {}, 30) for _ in range(3)]
    data = until(lambda: (d := status_json(capsys, ex.logdir))["stats"]["running"] == 2 and d, what="2 running")
    assert data["stats"]["queued"] == 1
    assert sorted(data["blocks"]) == ["0", "1"]
    assert all(b["tasks"] == 1 for b in data["blocks"].values())
    ex.shutdown(wait=False)  # the sleeping tasks fail with ExecutorShutdown
    assert all(f.exception(10) is not None for f in futures)


def test_status_watch_until_ctrl_c(make_executor: Any) -> None:
    ex = make_executor()
    proc = subprocess.Popen([*HTEX, "status", ex.logdir, "--watch", "0.1"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None
        refreshes = 0
        while refreshes < 3:  # three screens: the watch really refreshes
            line = proc.stdout.readline()
            assert line, proc.stderr.read() if proc.stderr else ""
            refreshes += line.startswith("htex ")
            if refreshes >= 2:
                assert line.startswith(("htex", "tasks", "rate", "progress", "managers", "blocks", " ", "\n"))
        proc.send_signal(signal.SIGINT)
        assert proc.wait(10) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_status_watch_count_as_json(make_executor: Any, capsys: Any) -> None:
    ex = make_executor()
    assert cli.main(["status", ex.logdir, "--watch", "0.05", "--count", "3", "--json"]) == 0
    samples = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert len(samples) == 3
    assert samples[0]["rate"] is None and samples[2]["rate"] is not None


@pytest.mark.skipif(not security.available(), reason="this libzmq has no CURVE support")
def test_status_of_an_encrypted_executor_needs_its_keys(make_executor: Any, capsys: Any) -> None:
    ex = make_executor(encrypted=True)
    assert ex.cert_dir and os.path.isdir(ex.cert_dir)
    until(lambda: ex.connected_managers, what="the pool to register")
    data = status_json(capsys, ex.logdir)  # finds <label dir>/certs by itself
    assert len(data["managers"]) == 1
    # Without the keys, the interchange never answers (the ZAP handler refuses the peer).
    code = cli.main(["status", "--address", f"127.0.0.1:{ex.worker_task_port}", "--timeout", "1", "--sample", "0"])
    assert code == 1
    assert "no answer from an interchange" in capsys.readouterr().err


def test_status_errors(tmp_path: Any, capsys: Any) -> None:
    assert cli.main(["status", str(tmp_path / "nowhere")]) == 1
    assert "no such directory" in capsys.readouterr().err
    for label in ("a", "b"):
        (tmp_path / label).mkdir()
        (tmp_path / label / "connection.json").write_text('{"addresses": ["127.0.0.1"], "task_port": 1}')
    assert cli.main(["status", str(tmp_path)]) == 1
    err = capsys.readouterr().err
    assert "several executors" in err and str(tmp_path / "a") in err and str(tmp_path / "b") in err
    assert cli.main(["status", "--address", "nonsense"]) == 1
    assert "HOST:PORT" in capsys.readouterr().err


# -- pool ------------------------------------------------------------------------


def _stop(proc: subprocess.Popen[bytes], sig: int = signal.SIGINT) -> int:
    if proc.poll() is None:
        proc.send_signal(sig)
    try:
        return proc.wait(15)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
        raise


@pytest.mark.parametrize("encrypted", [False, pytest.param(True, marks=pytest.mark.skipif(
    not security.available(), reason="this libzmq has no CURVE support"))])
def test_pool_from_the_run_dir(make_executor: Any, encrypted: bool) -> None:
    ex = make_executor(managed=False, encrypted=encrypted)
    assert ex.blocks == {}  # managed=False: nobody starts pools but us
    pool = subprocess.Popen([*HTEX, "pool", "--run-dir", ex.logdir, "--max_workers", "2", "--block_id", "by-hand"],
                            stderr=subprocess.PIPE)
    try:
        [m] = until(lambda: ex.connected_managers, what="the pool to register")
        assert (m["block_id"], m["worker_count"]) == ("by-hand", 2)
        assert ex.submit(add, {}, 20, 22).result(20) == 42
        # Its logs go under the executor's own log directory.
        assert os.path.exists(os.path.join(ex.logdir, "block-by-hand", m["manager"], "manager.log"))
        assert _stop(pool) == 0  # Ctrl-C: the pool stops its workers and exits cleanly
    finally:
        if pool.poll() is None:
            _stop(pool, signal.SIGKILL)
    assert pool.stderr is not None
    assert b"htex pool: joining HighThroughputExecutor" in pool.stderr.read()


def test_pool_with_its_own_flags_ends_with_the_executor(make_executor: Any) -> None:
    ex = make_executor(managed=False)
    pool = subprocess.Popen([
        *HTEX, "pool", "-a", "127.0.0.1", "-t", str(ex.worker_task_port), "-r", str(ex.worker_result_port),
        "--hb_period", "1", "--hb_threshold", "4", "--max_workers", "1", "--logdir", ex.logdir,
        "--cert_dir", ex.cert_dir,  # encrypted by default: without the keys it could not get in
    ])
    try:
        until(lambda: ex.connected_managers, what="the pool to register")
        assert ex.submit(add, {}, 1, 1).result(20) == 2
        ex.shutdown()  # the interchange tells its pools to stop
        assert pool.wait(15) == 0
    finally:
        if pool.poll() is None:
            _stop(pool, signal.SIGKILL)


def test_pool_run_dir_errors(tmp_path: Any, capsys: Any) -> None:
    assert cli.main(["pool", "--run-dir", str(tmp_path)]) == 1
    assert "no connection.json" in capsys.readouterr().err
