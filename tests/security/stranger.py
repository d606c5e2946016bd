"""Run code as another local user: a forked child of the test process that dropped root's privileges.

The python of .venv lives under /root (mode 0700): another user could not even
exec it.  So the attacker is a fork of this (root) test process that becomes
the other user for real before it does anything::

    os.fork()   ->  child: stdio to /dev/null, every inherited fd closed but the report pipe,
                           setgroups([]), setgid(gid), setuid(uid)   (no capability is left)
                           report = fn(notify, *args)  -> pickled through the pipe
                           os._exit()                  (never atexit, never pytest code)

From then on /proc and file permissions apply to it exactly as to any other
local user.  The child may only use modules already imported: the
interpreter's own files are under /root, which it cannot read.

The parent reads the child's messages with a deadline, kills it if it
overruns, and always reaps it (the autouse ``no_leaks`` fixture checks).
"""

from __future__ import annotations

import gc
import os
import pwd
import signal
import subprocess
import time
import traceback
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from multiprocessing.connection import Connection
from typing import Any, NoReturn

import pytest

NAME = "htex-stranger"

# What the attack function receives first: notify(event, data) tells the parent how far it got.
Notify = Callable[[str, Any], None]


@dataclass(frozen=True)
class User:
    name: str
    uid: int
    gid: int


def ensure_user(name: str = NAME) -> User:
    """The other local user, created if missing (needs root: skips the test otherwise)."""
    if os.geteuid() != 0:
        pytest.skip(
            f"the security tests attack the executor as another local user ({name}): they must run as root, "
            "to create that user and to drop to it"
        )
    try:
        pw = pwd.getpwnam(name)
    except KeyError:
        cmd = ["useradd", "--system", "--no-create-home", "--shell", "/usr/sbin/nologin", name]
        try:
            done = subprocess.run(cmd, capture_output=True, text=True, timeout=30, check=False)
        except FileNotFoundError:
            pytest.skip(f"cannot create the user {name}: no useradd on this machine")
        if done.returncode != 0:
            pytest.fail(f"`{' '.join(cmd)}` failed ({done.returncode}): {done.stderr.strip()}")
        pw = pwd.getpwnam(name)
    if pw.pw_uid == 0 or pw.pw_gid == 0:
        pytest.fail(f"the user {name} has uid {pw.pw_uid}, gid {pw.pw_gid}: it must not be root")
    return User(name, pw.pw_uid, pw.pw_gid)


class StrangerFailed(Exception):
    """The attack code itself raised (a bug in the test, not a verdict on htex)."""


class Stranger:
    """One attacker process.  Use as a context manager: it is always reaped on exit.

    ``event(name)`` waits for a ``notify(name, data)`` of the child; ``report()``
    for the value its function returned.  Both fail the test if the child
    overruns the deadline (it is killed) or dies without saying anything.
    """

    def __init__(self, user: User, fn: Callable[..., Any], *args: Any) -> None:
        self.user = user
        self.fn = fn
        self.args = args
        self.pid = 0
        self.conn: Connection | None = None
        self.exit_status: int | None = None

    def __enter__(self) -> Stranger:
        r, w = os.pipe()
        devnull = os.open(os.devnull, os.O_RDWR)
        with warnings.catch_warnings():
            # Python 3.12+ warns that forking a threaded process may deadlock the child: the child
            # runs only code that takes no lock another thread could hold, and has a deadline anyway.
            warnings.simplefilter("ignore", DeprecationWarning)
            pid = os.fork()
        if pid == 0:
            _child(w, devnull, self.user, self.fn, self.args)
        os.close(w)
        os.close(devnull)
        self.pid = pid
        self.conn = Connection(r, writable=False)
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- reading the child ------------------------------------------------------

    def _next(self, deadline: float, waiting_for: str) -> tuple[Any, ...]:
        assert self.conn is not None
        remaining = deadline - time.monotonic()
        if remaining <= 0 or not self.conn.poll(remaining):
            self.close()
            pytest.fail(f"the stranger's attack overran its deadline waiting for {waiting_for}; it was killed")
        try:
            msg: tuple[Any, ...] = self.conn.recv()
        except EOFError:
            status = self.close()
            pytest.fail(f"the stranger's process ended ({_describe(status)}) before {waiting_for}")
        if msg[0] == "error":
            self.close()
            raise StrangerFailed(f"the attack code raised in the stranger's process:\n{msg[1]}")
        return msg

    def event(self, name: str, timeout: float = 10.0) -> Any:
        deadline = time.monotonic() + timeout
        while True:
            msg = self._next(deadline, f"its event {name!r}")
            if msg[0] == "event" and msg[1] == name:
                return msg[2]
            if msg[0] == "report":
                self.close()
                pytest.fail(f"the stranger reported before its event {name!r}")

    def report(self, timeout: float = 20.0) -> Any:
        deadline = time.monotonic() + timeout
        while True:
            msg = self._next(deadline, "its report")
            if msg[0] == "report":
                self.close()
                return msg[1]

    def close(self) -> int | None:
        """Reap the child (killing it if it does not end within 5 s); returns its wait status."""
        if self.pid and self.exit_status is None:
            deadline = time.monotonic() + 5.0
            while True:
                pid, status = os.waitpid(self.pid, os.WNOHANG)
                if pid:
                    self.exit_status = status
                    break
                if time.monotonic() > deadline:
                    os.kill(self.pid, signal.SIGKILL)
                    self.exit_status = os.waitpid(self.pid, 0)[1]
                    break
                if self.conn is not None and not self.conn.closed:
                    self.conn.poll(0.02)  # wakes early when the child closes its end (it exited)
                else:
                    time.sleep(0.02)
        if self.conn is not None and not self.conn.closed:
            self.conn.close()
        return self.exit_status


def run_as(user: User, fn: Callable[..., Any], *args: Any, timeout: float = 20.0) -> Any:
    """Run ``fn(notify, *args)`` as ``user`` in a forked child; return what it returned."""
    with Stranger(user, fn, *args) as s:
        return s.report(timeout)


def _describe(status: int | None) -> str:
    if status is None:
        return "status unknown"
    if os.WIFSIGNALED(status):
        return f"killed by signal {os.WTERMSIG(status)}"
    return f"exit code {os.WEXITSTATUS(status)}"


def _child(w: int, devnull: int, user: User, fn: Callable[..., Any], args: tuple[Any, ...]) -> NoReturn:
    """The forked child: become ``user``, run the attack, report, and _exit. Never returns."""
    status = 70
    conn: Connection | None = None
    try:
        gc.disable()  # no finalizer of the parent's objects (sockets of its zmq contexts) may run here
        for fd in (0, 1, 2):
            os.dup2(devnull, fd)
        os.dup2(w, 3)
        # Nothing of root's may stay open: the executor's sockets, the shared-memory arena, the
        # interchange's pipes, log files.  A real stranger has none of them.
        os.closerange(4, 1 << 20)
        conn = Connection(3, readable=False)
        os.setgroups([])
        os.setgid(user.gid)
        os.setuid(user.uid)
        if (os.getuid(), os.geteuid(), os.getgid(), os.getegid(), os.getgroups()) != (
            user.uid, user.uid, user.gid, user.gid, [],
        ):
            raise RuntimeError("the child did not become the stranger")
        try:
            os.setuid(0)
        except PermissionError:
            pass
        else:
            raise RuntimeError("the stranger could become root again")

        def notify(event: str, data: Any = None) -> None:
            assert conn is not None
            conn.send(("event", event, data))

        report = fn(notify, *args)
        conn.send(("report", report))
        status = 0
    except BaseException:
        try:
            if conn is not None:
                conn.send(("error", traceback.format_exc()))
        except BaseException:
            pass
    finally:
        os._exit(status)
