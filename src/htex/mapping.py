"""``Executor.map`` over any ``submit``: the executor's own map and ``progress.map`` share it.

``run_chunk`` lives here, in a small module, because workers import it by name
to run a chunk of calls: it should cost them little to import.
"""

from __future__ import annotations

import itertools
import time
from collections.abc import Callable, Generator, Iterable
from concurrent.futures import Future
from typing import Any


def map_in_order(submit: Callable[..., Future[Any]], fn: Callable[..., Any], iterables: tuple[Iterable[Any], ...],
                 timeout: float | None, chunksize: int, on_result: Callable[[Future[Any]], None] | None = None,
                 cancel: Callable[[list[Future[Any]]], Any] | None = None) -> Generator[Any, None, None]:
    """``Executor.map`` over a ``submit(fn, *args)``: every task submitted now, results in order, lazily.

    With ``chunksize > 1`` each task runs that many calls (``run_chunk``).  Closing the iterator early
    cancels what has not started (``cancel``: all of them at once; else each future's cancel()).
    ``on_result`` sees each future as its results are taken.
    """
    if chunksize < 1:
        raise ValueError("chunksize must be >= 1")
    end = None if timeout is None else time.monotonic() + timeout
    calls = zip(*iterables, strict=False)
    if chunksize == 1:
        futures = [submit(fn, *args) for args in calls]
    else:
        futures = [submit(run_chunk, fn, chunk) for chunk in _chunks(calls, chunksize)]

    def results() -> Generator[Any, None, None]:
        try:
            futures.reverse()  # pop from the end: done futures are released as we go
            while futures:
                fut = futures.pop()
                value = fut.result(None if end is None else end - time.monotonic())
                if on_result is not None:
                    on_result(fut)
                if chunksize == 1:
                    yield value
                else:
                    yield from value
        finally:
            if cancel is not None and futures:
                cancel(futures)
            else:
                for fut in futures:
                    fut.cancel()

    return results()


def run_chunk(fn: Callable[..., Any], chunk: list[tuple[Any, ...]]) -> list[Any]:
    return [fn(*args) for args in chunk]


def _chunks(iterable: Iterable[tuple[Any, ...]], size: int) -> Generator[list[tuple[Any, ...]], None, None]:
    while chunk := list(itertools.islice(iterable, size)):
        yield chunk
