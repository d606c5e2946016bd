"""Functions the tests run on workers.  Importable there: conftest puts tests/ on PYTHONPATH."""

from __future__ import annotations

import os
import sys
import threading
import time
from typing import Any


def noop() -> None:
    return None


def add(a: int, b: int = 0) -> int:
    return a + b


def echo(x: Any) -> Any:
    return x


def nbytes(data: bytes) -> int:
    return len(data)


def fail(message: str) -> None:
    raise ValueError(message)


def worker_env() -> dict[str, str | None]:
    keys = ("PARSL_WORKER_RANK", "PARSL_WORKER_COUNT", "PARSL_WORKER_POOL_ID", "PARSL_WORKER_BLOCK_ID")
    return {k: os.environ.get(k) for k in keys}


def sleep_then(seconds: float, value: Any = None) -> Any:
    time.sleep(seconds)
    return value


def mark_then_sleep(marker: str, seconds: float, value: Any = None) -> Any:
    """Create ``marker`` (the test sees the task has started), then sleep."""
    with open(marker, "a"):
        pass
    time.sleep(seconds)
    return value


def _record(log: str, index: int | str) -> None:
    """Append ``index`` (a number or a label) to ``log``: one write, atomic with O_APPEND (never interleaved)."""
    fd = os.open(log, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, f"{index}\n".encode())
    finally:
        os.close(fd)


def record_then(log: str, index: int, seconds: float) -> str:
    """Record that task ``index`` started, sleep, return the pool's id."""
    _record(log, index)
    time.sleep(seconds)
    return os.environ["PARSL_WORKER_POOL_ID"]


def pid_after(seconds: float) -> int:
    time.sleep(seconds)
    return os.getpid()


def return_lock() -> Any:
    return threading.Lock()


def hard_exit(code: int) -> None:
    os._exit(code)


class Unrebuildable(Exception):
    """Pickles, but cannot be unpickled: its __init__ needs two arguments."""

    def __init__(self, a: int, b: int) -> None:
        super().__init__(f"{a}/{b}")


def raise_unrebuildable() -> None:
    raise Unrebuildable(1, 2)


def exit_once(marker: str, code: int = 7) -> str:
    """Kill the worker on the first try (the marker file does not exist yet), succeed after."""
    if not os.path.exists(marker):
        open(marker, "w").close()
        os._exit(code)
    return "second try"


def count_and_fail(path: str) -> None:
    with open(path, "a") as f:
        f.write("x")
    raise ValueError("the task's own error")


def pool_id_after(seconds: float) -> str:
    time.sleep(seconds)
    return os.environ["PARSL_WORKER_POOL_ID"]


def digest(data: bytes, extra: bytes = b"", *, tag: str = "") -> str:
    """A fingerprint of large arguments, so a test can tell they arrived whole and in order."""
    import hashlib

    return tag + hashlib.sha256(data + extra).hexdigest()


def exit_once_then_digest(marker: str, data: bytes) -> str:
    """Kill this worker the first time (the task is lost), return the digest when run again."""
    if not os.path.exists(marker):
        with open(marker, "w"):
            pass
        os._exit(9)
    return digest(data)


def scribble_on_pool_link() -> None:
    """Write garbage on this worker's socket to its pool (the fd named by --fd), then wait to be killed."""
    fd = int(sys.argv[sys.argv.index("--fd") + 1])
    os.write(fd, b"\xff" * 16)
    time.sleep(60)


# -- hostile tasks (tests/faults/test_hostile.py) -----------------------------


class ExitOnUnpickle:
    """Pickles fine in the worker; unpickling it in the client raises ``exc`` (SystemExit, ...)."""

    def __init__(self, exc: BaseException) -> None:
        self.exc = exc

    def __reduce__(self) -> Any:
        return (_raise, (self.exc,))


def _raise(exc: BaseException) -> None:
    raise exc


def return_exit_on_unpickle(kind: str) -> Any:
    return ExitOnUnpickle(SystemExit(3) if kind == "SystemExit" else KeyboardInterrupt())


class InterruptOnPickle:
    def __reduce__(self) -> Any:
        raise KeyboardInterrupt("from __reduce__")


def return_interrupt_on_pickle() -> Any:
    return InterruptOnPickle()


class StrRaises(Exception):
    def __str__(self) -> str:
        raise RuntimeError("__str__ raised")


def raise_str_raises() -> None:
    raise StrRaises()


def worker_pid() -> int:
    return os.getpid()


def record_pid(log: str, index: int) -> int:
    record_then(log, index, 0)
    return os.getpid()


def record_then_exit(log: str, index: int, code: int) -> None:
    record_then(log, index, 0)
    os._exit(code)


def start_daemon() -> int:
    """Start a daemon in a session of its own (double fork), as a careless task might; return its pid."""
    r, w = os.pipe()
    child = os.fork()
    if child == 0:  # a new session, then the daemon, then leave
        os.setsid()
        pid = os.fork()
        if pid == 0:
            os.close(r)
            os.close(w)
            time.sleep(600)
            os._exit(0)
        os.write(w, str(pid).encode())
        os._exit(0)
    os.close(w)
    with os.fdopen(r) as f:
        daemon = int(f.read())
    os.waitpid(child, 0)
    return daemon


def append_then_sleep(path: str, index: int, seconds: float) -> int:
    """Record that task ``index`` started, then work ``seconds``; return ``index``."""
    _record(path, index)
    if seconds > 0:
        time.sleep(seconds)
    return index


def record(log: str, label: str) -> None:
    """Append ``label`` to ``log`` (one O_APPEND write): the order tasks started in."""
    _record(log, label)


def record_then_wait_for(log: str, label: str, gate: str, seconds: float = 60.0) -> None:
    """Record that this task started, then hold its worker until the test creates ``gate``."""
    _record(log, label)
    deadline = time.monotonic() + seconds  # never hold a worker for ever if the test died
    while not os.path.exists(gate) and time.monotonic() < deadline:
        time.sleep(0.005)

