"""Another local user cannot attack a running executor (issue 11).

Every test runs an attack as a real second user (``htex-stranger``: a forked
child of this root process that dropped to it, see stranger.py) against a
fresh executor in each configuration of conftest.CONFIGS, and asserts that
the attack FAILED, saying what leaked if it did not.  On the sockets the
stranger cannot reach at all, ZeroMQ's connect does not fail: the attacks
judge by what came back within attacks.WINDOW seconds.
"""

from __future__ import annotations

import concurrent.futures
import json
import os
import secrets
import select
from collections.abc import Iterator
from concurrent.futures import Future
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

import attacks
import tasks
from stranger import Stranger, StrangerFailed, User, run_as
from support import wait_for
from targets import Target

pytestmark = pytest.mark.timeout(60)


def _leaks(what: str, leaks: list[str], context: str = "") -> None:
    if leaks:
        pytest.fail(f"{what}:\n  " + "\n  ".join(leaks) + (f"\n({context})" if context else ""), pytrace=False)


def _outcome(fut: Future[Any]) -> Any:
    exc = fut.exception()
    return f"raised {exc!r}" if exc is not None else fut.result()


def gate(started: str, release: str, limit: float) -> Any:
    """A task that holds its worker until ``release`` exists (a closure: it travels by value)."""

    def hold_the_worker() -> str:
        import os
        import time

        with open(started, "w"):
            pass
        end = time.monotonic() + limit
        while not os.path.exists(release):
            if time.monotonic() > end:
                return "never released"
            time.sleep(0.01)
        return "released"

    return hold_the_worker


@contextmanager
def worker_held(t: Target, tmp: Path) -> Iterator[Future[Any]]:
    """The only worker runs a task that waits to be released: tasks submitted meanwhile stay queued."""
    started, release = tmp / "started", tmp / "release"
    fut = t.ex.submit(gate(str(started), str(release), 40), {})
    wait_for(started.exists, timeout=15, what="the holding task to start on the only worker")
    try:
        yield fut
    finally:
        release.touch()


def _queued(t: Target, n: int) -> None:
    wait_for(lambda: t.ex.stats().get("queued", 0) >= n, timeout=15, what=f"{n} tasks queued in the interchange")


def test_the_stranger_is_really_another_user(stranger: User) -> None:
    def whoami(notify: attacks.Notify) -> dict[str, Any]:
        out: dict[str, Any] = {"uid": os.getuid(), "euid": os.geteuid(), "gid": os.getgid(), "groups": os.getgroups()}
        for path in ("/proc/1/environ", "/etc/shadow", "/root"):
            try:
                os.listdir(path) if path == "/root" else open(path, "rb").close()
                out[path] = "opened"
            except OSError as exc:
                out[path] = type(exc).__name__
        return out

    seen = run_as(stranger, whoami)
    assert (seen["uid"], seen["euid"], seen["gid"], seen["groups"]) == (stranger.uid, stranger.uid, stranger.gid, [])
    assert seen["/proc/1/environ"] == seen["/etc/shadow"] == seen["/root"] == "PermissionError", seen


def _hang(notify: attacks.Notify) -> None:
    notify("hanging", os.getpid())
    select.select([], [], [], 120)


def _raise(notify: attacks.Notify) -> None:
    raise ValueError("a bug in the attack")


def test_an_attack_that_overruns_is_killed_and_reaped(stranger: User) -> None:
    with Stranger(stranger, _hang) as attacker:
        pid = attacker.event("hanging", timeout=10)
        with pytest.raises(pytest.fail.Exception, match="overran its deadline"):
            attacker.report(timeout=0.5)
        status = attacker.exit_status
    assert status is not None and os.WIFSIGNALED(status), status
    with pytest.raises(ChildProcessError):
        os.waitpid(pid, os.WNOHANG)


def test_an_attack_that_raises_says_so(stranger: User) -> None:
    with pytest.raises(StrangerFailed, match="a bug in the attack"):
        run_as(stranger, _raise)


# ---------------------------------------------------------------------------
# 1. what /proc shows of the executor's processes
# ---------------------------------------------------------------------------


def test_command_lines_and_environments_give_nothing_away(target: Target, stranger: User) -> None:
    scope = target.scope()
    sv: attacks.Survey = run_as(stranger, attacks.look, scope)
    interchanges = [pid for pid, r in scope.pids.items() if r == "interchange"]
    assert interchanges and all(pid in sv.cmdlines for pid in interchanges), (
        f"the stranger could not read the interchange's command line at all: the survey is broken ({sv.cmdlines})"
    )
    leaks = []
    for pid, argv in sv.cmdlines.items():
        who = f"/proc/{pid}/cmdline ({scope.pids[pid]})"
        for arg in argv:
            if arg.lstrip().startswith("{"):
                try:
                    config = json.loads(arg)
                except ValueError:
                    continue
                shown = sorted(config) if isinstance(config, dict) else arg
                leaks.append(f"{who} holds a JSON configuration: {shown!s:.300}")
    sources = [(f"/proc/{pid}/cmdline ({scope.pids[pid]})", "\0".join(a).encode()) for pid, a in sv.cmdlines.items()]
    sources += [(f"/proc/{pid}/environ ({scope.pids[pid]})", env) for pid, env in sv.environs.items()]
    for where, data in sources:
        for what, needle in target.needles.items():
            if needle in data:
                leaks.append(f"{where} contains {what}")
        for url in attacks._URL.findall(data):
            scheme, _, name = url.decode(errors="replace").partition("://")
            if scheme in ("ipc", "unix") and sv.unix_connect.get(name) == "connected":
                leaks.append(f"{where} names the UNIX socket {name!r}, and the stranger can connect to it")
    _leaks("a local stranger learns secrets from /proc/<pid>/cmdline and environ", leaks,
           f"environ unreadable for {sorted(sv.environ_errors)}")


# ---------------------------------------------------------------------------
# The sockets
# ---------------------------------------------------------------------------


def test_unix_sockets_refuse_the_stranger(target: Target, stranger: User) -> None:
    sv: attacks.Survey = run_as(stranger, attacks.look, target.scope())
    leaks = [f"{name!r} (listening, seen in /proc/net/unix)" for name, _ in sv.unix if sv.unix_connect.get(name) == "connected"]
    _leaks("the stranger can connect() to the executor's UNIX sockets", leaks,
           f"every UNIX socket it tried: {sv.unix_connect}")


def test_a_fake_pool_is_given_no_task(target: Target, stranger: User, tmp_path: Path) -> None:
    ex = target.ex
    marker = f"htex-secret-marker-{secrets.token_hex(16)}"
    with worker_held(target, tmp_path):
        futs = [ex.submit(tasks.echo, {}, marker) for _ in range(10)]
        _queued(target, 10)
        report: attacks.WireReport = run_as(stranger, attacks.register_fake_pool, target.scope())
    assert report.endpoints, "the stranger found no endpoint of the executor at all: the survey is broken"
    kinds = report.kinds()
    leaks = [f"{kind}: {came}" for kind, came in kinds.items() if kind in ("Registered", "Tasks")]
    if report.saw(marker.encode()):
        leaks.append(f"the secret argument of the queued tasks arrived from {report.saw(marker.encode())}")
    _leaks("a stranger registered a fake pool and was accepted or given tasks", leaks, report.describe())
    done, not_done = concurrent.futures.wait(futs, timeout=30)
    assert not not_done and all(_outcome(f) == marker for f in futs), [_outcome(f) for f in done]


def test_forged_results_complete_no_future(target: Target, stranger: User, tmp_path: Path) -> None:
    ex = target.ex
    forged = f"FORGED-{secrets.token_hex(8)}"
    with worker_held(target, tmp_path) as held:
        futs = [ex.submit(tasks.add, {}, i, 1000) for i in range(20)]
        _queued(target, 20)
        ids = sorted(set(range(1, 51)) | {getattr(f, "parsl_executor_task_id", 0) for f in [held, *futs]} - {0})
        report: attacks.WireReport = run_as(stranger, attacks.forge_results, target.scope(), ids, forged)
        early = [f for f in [held, *futs] if f.done() and _outcome(f) == forged]
    assert report.endpoints, "the stranger found no endpoint of the executor at all: the survey is broken"
    done, not_done = concurrent.futures.wait([held, *futs], timeout=30)
    forged_futs = early + [f for f in done if f not in early and _outcome(f) == forged]
    tids = [getattr(f, "parsl_executor_task_id", "?") for f in forged_futs]
    leaks = [f"{len(tids)} tasks completed with the forged value {forged!r}: task ids {tids}"] if tids else []
    _leaks("a stranger's forged results completed futures", leaks, report.describe())
    assert not not_done, f"{len(not_done)} tasks never completed after the attack ({report.describe()})"
    assert [_outcome(f) for f in futs] == [i + 1000 for i in range(20)], report.describe()


def test_status_is_not_told_to_the_stranger(target: Target, stranger: User) -> None:
    report: attacks.WireReport = run_as(stranger, attacks.ask_status, target.scope())
    assert report.endpoints, "the stranger found no endpoint of the executor at all: the survey is broken"
    replies = [r for r in report.received if r.kind == "StatusReply"]
    leaks = [f"StatusReply from {r.endpoint}: {r.frames[0][4:300]!r}" for r in replies]
    _leaks("the interchange told a stranger its status", leaks, report.describe())


def test_a_live_pool_identity_cannot_be_taken_over(target: Target, stranger: User) -> None:
    ex = target.ex
    managers = [m["manager"] for m in ex.connected_managers]  # the attacker's best case: it knows the id
    forged = f"FORGED-{secrets.token_hex(8)}"
    ids = list(range(1, 201))
    with Stranger(stranger, attacks.take_over, target.scope(), managers, ids, forged) as attacker:
        attacker.event("in place", timeout=15)
        futs = [ex.submit(tasks.add, {}, i, 1000) for i in range(20)]
        done, not_done = concurrent.futures.wait(futs, timeout=15)
        report: attacks.WireReport = attacker.report(timeout=20)
    assert report.endpoints, "the stranger found no endpoint of the executor at all: the survey is broken"
    leaks = [f"{kind}: {came}" for kind, came in report.kinds().items() if kind in ("Tasks", "Registered", "StatusReply")]
    outcomes = {getattr(f, "parsl_executor_task_id", i): _outcome(f) for i, f in enumerate(futs) if f in done}
    tids = [tid for tid, v in outcomes.items() if v == forged]
    if tids:
        leaks.append(f"{len(tids)} tasks completed with the forged value {forged!r}: task ids {tids}")
    if not_done:
        leaks.append(f"{len(not_done)} of 20 tasks did not complete within 15 s: the real pool was cut off")
    wrong = {tid: v for tid, v in outcomes.items() if v != forged and not (isinstance(v, int) and v >= 1000)}
    if wrong:
        leaks.append(f"tasks ended wrongly: {wrong}")
    _leaks(f"a stranger connecting as the live pool {managers} took its place", leaks, report.describe())
    assert sorted(_outcome(f) for f in futs) == [i + 1000 for i in range(20)]


# ---------------------------------------------------------------------------
# 6. the file system
# ---------------------------------------------------------------------------


def test_keys_connection_file_and_ipc_dir_are_private(target: Target, stranger: User) -> None:
    certs = target.cert_dir
    listings = [d for d in [certs, *target.ipc_dirs()] if os.path.isdir(d)]
    reads = [os.path.join(target.logdir, "connection.json")]
    if os.path.isdir(certs):
        reads += [os.path.join(certs, n) for n in sorted(os.listdir(certs))]
    tried: dict[str, str] = run_as(stranger, attacks.try_paths, listings, reads)
    leaks = [f"{path}: {result}" for path, result in tried.items() if result.startswith(("listed", "read"))]
    sv: attacks.Survey = run_as(stranger, attacks.look, target.scope())
    for path, data in sv.files.items():
        leaks += [f"{path} (readable) contains {what}" for what, needle in target.needles.items() if needle in data]
    _leaks("the stranger can read the run's secrets", leaks, f"tried: {tried}")


def test_executor_directory_is_private(target: Target, stranger: User) -> None:
    logdir = target.logdir
    files = [os.path.join(top, n) for top, _, names in os.walk(logdir) for n in names]
    tried: dict[str, str] = run_as(stranger, attacks.try_paths, [logdir], files)
    leaks = [f"{path}: {result}" for path, result in tried.items() if result.startswith(("listed", "read"))]
    _leaks(f"the stranger can list or read run_dir/<label> ({logdir})", leaks)


def _register_over_unix(notify: Any, path: str) -> str:
    """As the stranger: connect to the pools' stream socket and register a pool; what happened."""
    import platform
    import socket

    from htex import __version__, framing, protocol

    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.settimeout(10)
    try:
        s.connect(path)
    except OSError as exc:
        return f"connect refused: {exc}"
    reg = protocol.Register(manager_id="stranger", block_id="0", hostname="x", pid=os.getpid(), worker_count=1,
                            prefetch_capacity=0, htex_version=__version__, python_version=platform.python_version(),
                            cores=1, memory_mb=1000, accelerators=[])
    try:
        framing.send(s, reg.encode())
        data = s.recv(65536)
    except OSError:
        return "closed"
    finally:
        s.close()
    return "closed" if not data else f"answered with {len(data)} bytes"


# The configurations whose pools use the UNIX stream (with an address, pools come over TCP).
@pytest.mark.parametrize("target", ["plain", "encrypted"], indirect=True)
def test_the_pools_unix_socket_checks_the_peer_even_when_its_directory_is_opened(
        target: Target, stranger: User) -> None:
    """Defence in depth: the private directory keeps the stranger out; were it opened by mistake, the
    interchange still closes a connection from another uid (SO_PEERCRED, poollink.py) unread."""
    url = target.ex._endpoints.pool_local_url
    assert url is not None, "this configuration's pools do not use the UNIX stream"
    path = url[len("unix://"):]
    directory = os.path.dirname(path)
    os.chmod(directory, 0o711)
    os.chmod(path, 0o777)
    try:
        outcome = run_as(stranger, _register_over_unix, path)
    finally:
        os.chmod(directory, 0o700)
    assert outcome == "closed", outcome
    assert all(m["manager"] != "stranger" for m in target.ex.connected_managers)
    with open(os.path.join(target.ex.logdir, "interchange.log")) as f:
        assert "refused a UNIX connection from pid" in f.read()
