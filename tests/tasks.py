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


def append_then_sleep(path: str, index: int, seconds: float) -> int:
    """Record that task ``index`` started (one O_APPEND write: atomic), then work ``seconds``; return ``index``."""
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, f"{index}\n".encode())
    finally:
        os.close(fd)
    if seconds > 0:
        time.sleep(seconds)
    return index
