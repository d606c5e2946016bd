"""Process helpers, written once: describe how a process ended, read the end of its output, stop processes.

Every process htex starts is stopped the same way (trio's escalation): TERM,
wait up to a grace period, log a warning naming what is still alive, KILL,
reap.  Used for the pool's workers and the daemons its tasks left behind,
for local blocks (a whole process group), and by the executor for its
interchange.  And every "why did it end" message says it the same way:
``exited with code 3``, ``was killed by signal 9 (SIGKILL)``, followed by the
end of its stderr (1,500 bytes: the last traceback, without flooding an
error message).

The Linux process attributes the pool and its workers set on themselves
(``prctl``) are here too, so that the worker imports no more than it needs:
this module imports neither subprocess (8 ms) nor psutil (16 ms) at import
time; a worker starts in about 50 ms, and the pool starts one per core.
"""

from __future__ import annotations

import logging
import os
import signal
import sys
import time
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, TypeAlias, TypeGuard

if TYPE_CHECKING:
    import subprocess

    import psutil

    Proc: TypeAlias = subprocess.Popen[Any] | psutil.Process

log = logging.getLogger("htex.procs")

TAIL_BYTES = 1500

# prctl(2) options
_PR_SET_PDEATHSIG = 1
_PR_SET_CHILD_SUBREAPER = 36


def describe_exit(code: int | None) -> str:
    """How a process ended, from its return code: ``exited with code 3``, ``was killed by signal 9 (SIGKILL)``.

    Negative codes are signals, as subprocess reports them; None is a process
    that has not ended (or was not reaped).
    """
    if code is None:
        return "has not exited"
    if code >= 0:
        return f"exited with code {code}"
    try:
        name = f" ({signal.Signals(-code).name})"
    except ValueError:
        name = ""
    return f"was killed by signal {-code}{name}"


def tail(path: str | None, limit: int = TAIL_BYTES) -> str:
    """The last ``limit`` bytes of a text file, decoded and stripped; "" if there is no such file or it is unreadable.

    Only the end is read: a process's stderr may be large, and only its end
    (the last traceback) says why it ended.  A character cut in two at the
    start comes out as U+FFFD.
    """
    if not path:
        return ""
    try:
        with open(path, "rb") as f:
            f.seek(0, os.SEEK_END)
            f.seek(max(0, f.tell() - limit))
            return f.read().decode(errors="replace").strip()
    except OSError:
        return ""


def stop(procs: Sequence[Proc], grace: float, what: str, *, group: bool = False) -> None:
    """Stop processes: TERM, wait up to ``grace`` s, warn naming what is still alive, KILL, reap.

    ``procs`` may be ``subprocess.Popen`` objects (reaped through them, so
    that they know their return code) or ``psutil.Process`` objects (reaped
    if they are our children); those that have ended already are left alone,
    and a zombie counts as ended.  ``what`` names them in the warning
    ("workers of pool X").

    With ``group``, each one leads a process group (it was started with
    ``start_new_session=True``): the signals go to its whole group; the grace
    period is for what it started too, not only for itself (a job's shell
    dies at once, the pool it started needs its time to stop its workers and
    what their tasks left behind); and every group is KILLed at the end, even
    one whose leader ended in time.

    A process that outlives its KILL (stuck in the kernel) is logged and
    left: this never takes much longer than twice ``grace``.
    """
    alive = [p for p in procs if _running(p)]
    watched: list[Proc] = [*alive, *_members(alive)] if group else list(alive)
    for p in alive:
        _signal(p, signal.SIGTERM, group)
    deadline = time.monotonic() + grace
    left = [p for p in watched if not _wait(p, deadline - time.monotonic())]
    if left:
        log.warning("%s: %s still running %g s after SIGTERM; sending SIGKILL", what, _pids(left), grace)
    for p in procs if group else left:
        _signal(p, signal.SIGKILL, group)
    deadline = time.monotonic() + grace
    stuck = [p for p in left if not _wait(p, deadline - time.monotonic())]
    if stuck:
        log.error("%s: %s still running %g s after SIGKILL", what, _pids(stuck), grace)


def _pids(procs: Sequence[Proc]) -> str:
    return ", ".join(f"pid {p.pid}" for p in procs)


def _members(leaders: Sequence[Proc]) -> list[Proc]:
    """What the group leaders started and is still in their groups, as it is now (before the TERM:
    once a leader is gone, what it started is another process's child)."""
    import psutil

    found: list[Proc] = []
    for leader in leaders:
        try:
            children = psutil.Process(leader.pid).children(recursive=True)
        except psutil.Error:
            continue
        for child in children:
            try:
                if os.getpgid(child.pid) == leader.pid:
                    found.append(child)
            except OSError:
                pass  # gone already
    return found


def _running(p: Proc) -> bool:
    if _is_popen(p):
        return p.poll() is None
    import psutil

    assert isinstance(p, psutil.Process)
    try:
        return p.is_running() and p.status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


def _signal(p: Proc, sig: int, group: bool) -> None:
    if group or _is_popen(p):
        try:
            if group:
                os.killpg(p.pid, sig)
            else:
                p.send_signal(sig)
        except (ProcessLookupError, PermissionError):
            pass  # it ended meanwhile (for a group: all of it did)
        return
    import psutil

    try:
        p.send_signal(sig)
    except psutil.Error:
        pass  # it ended meanwhile


def _wait(p: Proc, timeout: float) -> bool:
    """Wait up to ``timeout`` s for ``p`` to end, and reap it if it is our child; True if it ended."""
    if _is_popen(p):
        import subprocess

        try:
            p.wait(max(0.0, timeout))
        except subprocess.TimeoutExpired:
            return False
        return True
    # Not psutil's wait(): for a process that is not our child it waits until the pid is gone, and a
    # zombie keeps its pid until its parent reaps it, which for an orphan (init's child) can take seconds.
    import psutil

    assert isinstance(p, psutil.Process)
    deadline = time.monotonic() + timeout
    pause = 0.001
    while True:
        try:
            if not p.is_running():
                return True
            if p.status() == psutil.STATUS_ZOMBIE:
                break
        except psutil.Error:
            return True  # gone
        if time.monotonic() >= deadline:
            return False
        time.sleep(min(pause, max(0.0, deadline - time.monotonic())))
        pause = min(2 * pause, 0.05)
    try:
        os.waitpid(p.pid, os.WNOHANG)  # if it is our zombie, reap it
    except ChildProcessError:
        pass  # another process's
    return True


def _is_popen(p: Proc) -> TypeGuard[subprocess.Popen[Any]]:
    # Whoever made a Popen imported subprocess: look it up rather than import it here (see above).
    sub = sys.modules.get("subprocess")
    return sub is not None and isinstance(p, sub.Popen)


def die_with_parent(sig: int = signal.SIGKILL) -> None:
    """Ask Linux to send ``sig`` to this process when its parent exits (no orphans)."""
    _prctl(_PR_SET_PDEATHSIG, sig)


def become_subreaper() -> None:
    """Processes orphaned below us (a task's daemon, even in a new session) become our children."""
    _prctl(_PR_SET_CHILD_SUBREAPER, 1)


def reap_exited() -> None:
    """Collect every child of ours that has exited (as a subreaper, orphans of our children become ours)."""
    while True:
        try:
            pid, _ = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            return


def _prctl(option: int, arg: int) -> None:
    if not sys.platform.startswith("linux"):
        return
    import ctypes

    ctypes.CDLL(None, use_errno=True).prctl(option, arg, 0, 0, 0)
