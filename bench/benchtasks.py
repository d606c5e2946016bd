"""The functions the benchmark runs on workers.

They live in their own module so that every backend ships them *by reference*
(module and name), as a real application's functions would be: ``run.py`` puts
``bench/`` on ``PYTHONPATH`` so that workers started by any backend can import it.
"""

from __future__ import annotations

import time
from typing import Any


def noop() -> None:
    return None


def echo(x: Any) -> Any:
    return x


def nbytes(data: bytes) -> int:
    return len(data)


def sleep(seconds: float) -> float:
    time.sleep(seconds)
    return seconds
