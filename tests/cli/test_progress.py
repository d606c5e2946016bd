"""The progress line: counts from real futures (htex and stdlib executors), drawn to a stream."""

from __future__ import annotations

import concurrent.futures
import io
from typing import Any

import pytest

from htex import progress

from tasks import add, fail

pytestmark = pytest.mark.timeout(60)


class Terminal(io.StringIO):
    """A stream that says it is a terminal, so the line is drawn without forcing it."""

    def isatty(self) -> bool:
        return True


def test_format_line() -> None:
    assert progress.format_line(5, 1, 3, 10, 2.5) == "[############............] 5/10  1 failed  3 running  2.5/s  ETA 0:02"
    assert progress.format_line(7, 0, 0, None, None) == "7 done  0 failed  0 running"
    full = progress.format_line(10, 0, 0, 10, 4.0, elapsed=3725)
    assert full == "[########################] 10/10  0 failed  0 running  4.0/s  in 1:02:05"


def test_wait_draws_done_failed_running_and_rate(make_executor: Any, monkeypatch: Any) -> None:
    monkeypatch.delenv("HTEX_PROGRESS", raising=False)
    ex = make_executor(max_workers=2)
    futures = [ex.submit(add, {}, i, 1) for i in range(40)] + [ex.submit(fail, {}, "no") for _ in range(2)]
    out = Terminal()
    done, not_done = progress.wait(futures, stream=out, interval=0.01)
    assert len(done) == 42 and not not_done
    text = out.getvalue()
    assert text.startswith("\r") and text.endswith("\n") and text.count("\n") == 1  # one line, redrawn in place
    final = text.rsplit("\r", 1)[1]
    assert final.startswith("[########################] 42/42  2 failed  0 running  ")
    assert "/s  in 0:0" in final


def test_off_when_not_a_terminal(make_executor: Any, monkeypatch: Any) -> None:
    monkeypatch.delenv("HTEX_PROGRESS", raising=False)
    ex = make_executor()
    out = io.StringIO()  # a file or a pipe: nothing is drawn unless asked
    progress.wait([ex.submit(add, {}, 1, 2)], stream=out)
    assert out.getvalue() == ""
    monkeypatch.setenv("HTEX_PROGRESS", "0")
    progress.wait([ex.submit(add, {}, 1, 2)], stream=Terminal())  # the switch wins over the terminal
    forced = io.StringIO()
    progress.wait([ex.submit(add, {}, 1, 2)], stream=forced, enabled=True)
    final = forced.getvalue().rsplit("\r", 1)[1]
    assert final.startswith("[########################] 1/1  0 failed  0 running  ")


def test_map_in_order_with_chunks(make_executor: Any) -> None:
    ex = make_executor(max_workers=2)
    out = io.StringIO()
    results = list(progress.map(ex, add, range(25), range(25), chunksize=4, stream=out, enabled=True, interval=0.01))
    assert results == [2 * i for i in range(25)]
    assert "25/25  0 failed  0 running" in out.getvalue()  # counted in items, not in chunks


def test_as_completed_and_a_stdlib_executor() -> None:
    out = io.StringIO()
    with concurrent.futures.ThreadPoolExecutor(4) as pool:
        futures = [pool.submit(pow, 2, i) for i in range(10)]
        got = sorted(f.result() for f in progress.as_completed(futures, stream=out, enabled=True, label="pow"))
        assert got == [2**i for i in range(10)]
        assert list(progress.map(pool, abs, [-1, -2, 3], stream=out, enabled=True)) == [1, 2, 3]
    assert "pow: [########################] 10/10  0 failed  0 running" in out.getvalue()
