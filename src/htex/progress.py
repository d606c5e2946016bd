"""A progress line for many futures: done, failed, running, the rate, on one terminal line.

Opt-in in scripts::

    from htex import progress

    futures = [ex.submit(f, {}, x) for x in xs]
    progress.wait(futures)                           # like concurrent.futures.wait, with a bar
    for fut in progress.as_completed(futures): ...   # like concurrent.futures.as_completed
    results = list(progress.map(ex, f, xs))          # like ex.map, in order, with a bar

The line goes to stderr and is redrawn in place with ``\\r``, about five
times a second, by a thread of its own: the futures only bump counters from
their done-callbacks (which run on the executor's I/O thread, so they must be
cheap).  By default it is drawn only when stderr is a terminal, so a script
whose output goes to a file or a pipe stays clean; ``enabled=True`` forces it,
``HTEX_PROGRESS=0`` turns it off everywhere.  No dependency beyond the stdlib.

In a Jupyter notebook (an IPython kernel, with ``htex[jupyter]``: tqdm and
ipywidgets) the same counts are drawn as a notebook progress widget instead,
unless a ``stream`` is given: see ``progress_jupyter``.
"""

from __future__ import annotations

import concurrent.futures
import os
import sys
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future
from typing import IO, Any

from . import progress_jupyter
from .mapping import map_in_order, run_chunk

__all__ = ["Progress", "as_completed", "format_line", "map", "wait"]

_BAR_WIDTH = 24
_RATE_WINDOW = 5.0  # seconds of history the rate is measured over: recent enough to follow changes


def format_line(done: int, failed: int, running: int, total: int | None, rate: float | None,
                elapsed: float | None = None) -> str:
    """One progress line: a bar (when the total is known), the counts, the rate and what is left.

    ``done`` counts every finished item, failed ones included; the bar fills with it.
    """
    parts = []
    if total:
        filled = min(_BAR_WIDTH, int(_BAR_WIDTH * done / total))
        parts.append(f"[{'#' * filled}{'.' * (_BAR_WIDTH - filled)}] {done}/{total}")
    else:
        parts.append(f"{done} done")
    parts.append(f"{failed} failed")
    parts.append(f"{running} running")
    if rate is not None:
        parts.append(f"{rate:.1f}/s")
    if total and rate and done < total:
        parts.append(f"ETA {_clock((total - done) / rate)}")
    elif elapsed is not None:
        parts.append(f"in {_clock(elapsed)}")
    return "  ".join(parts)


def _clock(seconds: float) -> str:
    s = round(seconds)
    return f"{s // 3600}:{s % 3600 // 60:02d}:{s % 60:02d}" if s >= 3600 else f"{s // 60}:{s % 60:02d}"


def _auto_enabled(stream: IO[str]) -> bool:
    env = os.environ.get("HTEX_PROGRESS")
    if env is not None:
        return env not in ("", "0", "no", "false")
    isatty = getattr(stream, "isatty", None)
    return bool(isatty and isatty())


def display_kind(stream: IO[str] | None, enabled: bool | None) -> str | None:
    """How a progress bar is drawn: "notebook" (a widget), "line" (``\r`` on ``stream``) or None (not at all).

    ``enabled=False``, or ``HTEX_PROGRESS=0`` unless ``enabled=True``, turn it off;
    a notebook kernel gets the widget when it can be drawn and no stream was
    named; otherwise the line, on a terminal or when forced.
    """
    if enabled is False or (enabled is None and os.environ.get("HTEX_PROGRESS") in ("", "0", "no", "false")):
        return None
    if stream is None and progress_jupyter.in_notebook() and progress_jupyter.available():
        return "notebook"
    if enabled or _auto_enabled(stream if stream is not None else sys.stderr):
        return "line"
    return None


class Progress:
    """Counts futures as they end and redraws one line until closed.

    ``add(fut, weight)`` counts a future as ``weight`` items (a chunk of a
    map).  ``running`` is the items added and not yet finished: an executor
    does not tell its futures apart from queued ones.
    """

    def __init__(self, total: int | None = None, *, stream: IO[str] | None = None, enabled: bool | None = None,
                 interval: float = 0.2, label: str = "") -> None:
        self.total = total
        self.stream: IO[str] = stream if stream is not None else sys.stderr
        kind = display_kind(stream, enabled)
        self.enabled = kind is not None
        self._widget = progress_jupyter.NotebookBar(total, label) if kind == "notebook" else None
        self.interval = interval
        self.label = label
        self.added = 0
        self.done = 0
        self.failed = 0
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._started = time.monotonic()
        self._samples: deque[tuple[float, int]] = deque([(self._started, 0)])
        self._width = 0
        self._thread: threading.Thread | None = None
        if self.enabled:
            self._thread = threading.Thread(target=self._draw_loop, name="htex-progress", daemon=True)
            self._thread.start()

    def add(self, fut: Future[Any], weight: int = 1) -> Future[Any]:
        with self._lock:
            self.added += weight
        fut.add_done_callback(lambda f: self._finished(f, weight))
        return fut

    def _finished(self, fut: Future[Any], weight: int) -> None:
        failed = fut.cancelled() or fut.exception() is not None
        with self._lock:
            self.done += weight
            if failed:
                self.failed += weight

    def rate(self) -> float | None:
        """Items per second over the last few seconds; None until there are two samples."""
        now = time.monotonic()
        with self._lock:
            done = self.done
        self._samples.append((now, done))
        while len(self._samples) > 2 and now - self._samples[0][0] > _RATE_WINDOW:
            self._samples.popleft()
        t0, d0 = self._samples[0]
        return (done - d0) / (now - t0) if now > t0 else None

    def line(self, final: bool = False) -> str:
        with self._lock:
            done, failed, running = self.done, self.failed, self.added - self.done
        elapsed = time.monotonic() - self._started
        rate = (done / elapsed if elapsed > 0 else None) if final else self.rate()
        text = format_line(done, failed, running, self.total, rate, elapsed if final else None)
        return f"{self.label}: {text}" if self.label else text

    def _draw(self, text: str, end: str = "") -> None:
        # Pad over what the last, longer line left on the terminal.
        pad = max(0, self._width - len(text))
        self._width = len(text)
        try:
            self.stream.write(f"\r{text}{' ' * pad}{end}")
            self.stream.flush()
        except (OSError, ValueError):  # stream closed under us (e.g. at interpreter exit)
            self._stop.set()

    def _counts(self) -> tuple[int, int, int, int | None]:
        with self._lock:
            return self.done, self.failed, self.added - self.done, self.total

    def _draw_loop(self) -> None:
        while not self._stop.wait(self.interval):
            if self._widget is not None:
                self._widget.update(*self._counts())
            else:
                self._draw(self.line())

    def close(self) -> None:
        """Stop redrawing; leave the final counts on their own line."""
        if self._stop.is_set() and self._thread is None:
            return
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
            self._thread = None
            if self._widget is not None:
                self._widget.close(*self._counts())
            else:
                self._draw(self.line(final=True), end="\n")

    def __enter__(self) -> Progress:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def wait(futures: Iterable[Future[Any]], timeout: float | None = None,
         return_when: str = concurrent.futures.ALL_COMPLETED, **options: Any) -> tuple[set[Future[Any]], set[Future[Any]]]:
    """``concurrent.futures.wait`` with a progress line; ``options`` go to ``Progress``.

    Returns the stdlib's (done, not_done) named tuple.
    """
    futures = list(futures)
    with Progress(len(futures), **options) as bar:
        for fut in futures:
            bar.add(fut)
        return concurrent.futures.wait(futures, timeout, return_when)


def as_completed(futures: Iterable[Future[Any]], timeout: float | None = None, **options: Any) -> Iterator[Future[Any]]:
    """``concurrent.futures.as_completed`` with a progress line."""
    futures = list(futures)
    with Progress(len(futures), **options) as bar:
        for fut in futures:
            bar.add(fut)
        yield from concurrent.futures.as_completed(futures, timeout)


def map(executor: Any, fn: Callable[..., Any], *iterables: Iterable[Any], timeout: float | None = None,
        chunksize: int = 1, **options: Any) -> Iterator[Any]:
    """Like ``executor.map(fn, *iterables)``, results in order, with a progress line counted in items.

    ``executor`` is an htex ``HighThroughputExecutor`` (``submit(fn, {}, *args)``)
    or any ``concurrent.futures.Executor``.  All tasks are submitted at once, as
    ``Executor.map`` does.
    """
    submit = _submitter(executor)
    bar = Progress(None, **options)

    def counted(f: Callable[..., Any], *args: Any) -> Future[Any]:
        return bar.add(submit(f, *args), len(args[1]) if f is run_chunk else 1)  # a chunk counts its calls

    try:
        results = map_in_order(counted, fn, iterables, timeout, chunksize)
    except BaseException:
        bar.close()
        raise
    bar.total = bar.added  # every task is submitted now

    def closing() -> Iterator[Any]:
        try:
            yield from results
        finally:
            bar.close()
            results.close()

    return closing()


def _submitter(executor: Any) -> Callable[..., Future[Any]]:
    if isinstance(executor, concurrent.futures.Executor):
        return executor.submit
    # htex's own signature: submit(func, resource_specification, *args)
    return lambda fn, *args: executor.submit(fn, {}, *args)
