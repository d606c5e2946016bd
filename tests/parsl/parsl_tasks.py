"""Parsl apps the tests run on htex.

Each app keeps its imports inside its body: an app travels by value, and what
it needs must come with it or be importable on the worker.
"""

from __future__ import annotations

from typing import Any

from parsl import bash_app, join_app, python_app


@python_app
def add(a: int, b: int = 0) -> int:
    return a + b


@python_app
def worker_env() -> dict[str, str | None]:
    import os

    return {k: os.environ.get(k) for k in ("PARSL_WORKER_RANK", "PARSL_WORKER_POOL_ID", "PARSL_WORKER_BLOCK_ID")}


@python_app
def fail(message: str) -> None:
    raise ValueError(message)


@python_app
def fail_until(path: str, failures: int) -> int:
    """Append to ``path`` on every try; raise until the file holds more than ``failures`` marks."""
    with open(path, "a") as f:
        f.write("x")
    with open(path) as f:
        tries = len(f.read())
    if tries <= failures:
        raise RuntimeError(f"try {tries} fails on purpose")
    return tries


@python_app(cache=True)
def counted_square(x: int, path: str) -> int:
    """Square ``x``, appending a mark to ``path`` each time it really runs (not when memoized)."""
    with open(path, "a") as f:
        f.write("x")
    return x * x


@bash_app
def echo_to(message: str, stdout: str | None = None, stderr: str | None = None) -> str:
    return f"echo {message}"


@bash_app
def exit_with(code: int) -> str:
    return f"exit {code}"


@python_app
def total(*values: int) -> int:
    return sum(values)


@join_app
def fan_out(n: int) -> Any:
    # Runs in the DFK (its internal executor); the apps it launches run on htex.
    return total(*[add(i, i) for i in range(n)])


@python_app
def cwd() -> str:
    import os

    return os.getcwd()


@bash_app
def write_relative(name: str, text: str, stdout: str | None = None) -> str:
    # A relative path, as a user writes it: it must land in the client's directory.
    return f"echo {text} > {name}; echo {text}"


@python_app
def add_with_spec(a: int, b: int = 0, parsl_resource_specification: dict[str, Any] | None = None) -> int:
    """Parsl passes the app's parsl_resource_specification to the executor and to the function too."""
    return a + b


@python_app
def sleep_for(seconds: float) -> float:
    import time

    time.sleep(seconds)
    return seconds


@bash_app
def count_tries(name: str, failures: int) -> str:
    # Counts its tries in a relative file, as a user's retried script does: fails until the count passes `failures`.
    return f'echo x >> {name}; [ "$(wc -l < {name})" -gt {failures} ]'
