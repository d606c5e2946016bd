"""The dashboard's server over real HTTP: its API, the event stream, the token off loopback, the CLI."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import urllib.error
import urllib.request
from collections.abc import Iterator

import pytest
import sqlalchemy as sa

from htex.errors import ConfigurationError, HtexError
from htex.monitoring.dashboard import TOKEN_COOKIE, serve_dashboard

from conftest_dash import RunWriter, db_counts, realistic_run

HTEX = os.path.join(os.path.dirname(sys.executable), "htex")


def get(url: str, headers: dict[str, str] | None = None) -> tuple[int, bytes, dict[str, str]]:
    req = urllib.request.Request(url, headers=headers or {})
    try:
        with urllib.request.urlopen(req, timeout=30) as r:
            return r.status, r.read(), dict(r.headers)
    except urllib.error.HTTPError as e:
        return e.code, e.read(), dict(e.headers)


@pytest.fixture
def store(tmp_path: os.PathLike[str]) -> str:
    realistic_run(os.path.join(tmp_path, "monitoring.db"), finished=False)
    return str(tmp_path)


@pytest.fixture
def served(store: str) -> Iterator[str]:
    url, stop = serve_dashboard(store, poll=0.1)
    yield url
    stop()


def test_loopback_serves_page_api_and_plotly_locally(served: str, store: str) -> None:
    assert served.startswith("http://127.0.0.1:") and "token" not in served
    status, body, _ = get(served)
    assert status == 200 and b"static/plotly.min.js" in body
    status, body, _ = get(served + "static/plotly.min.js")
    assert status == 200 and len(body) > 1_000_000 and b"plotly" in body[:2000].lower()
    status, body, _ = get(served + "api/state")
    state = json.loads(body)
    engine = sa.create_engine(f"sqlite:///{store}/monitoring.db")
    assert {k: v for k, v in state["counts"].items() if v and k != "total"} == db_counts(engine)
    engine.dispose()


def test_loopback_answers_only_to_loopback_names(served: str) -> None:
    """Against DNS rebinding: another site's name resolved to 127.0.0.1 gets nothing."""
    assert get(served + "api/state", {"Host": "evil.example:80"})[0] == 400
    port = served.rsplit(":", 1)[1].strip("/")
    assert get(served + "api/state", {"Host": f"localhost:{port}"})[0] == 200


def test_event_stream_sends_the_fingerprint_then_each_change(store: str) -> None:
    url, stop = serve_dashboard(store, poll=0.1)
    try:
        with urllib.request.urlopen(url + "api/events", timeout=30) as stream:
            first = stream.readline()
            assert first.startswith(b"data: ") and stream.readline() == b"\n"
            engine = sa.create_engine(f"sqlite:///{store}/monitoring.db")
            writer = RunWriter(engine)
            writer.ids = iter(range(1000, 2000))
            writer.add_tasks(2)
            second = stream.readline()  # blocks until the server saw the new rows (the urlopen timeout bounds it)
            assert second.startswith(b"data: ") and second != first
            engine.dispose()
    finally:
        stop()


def test_off_loopback_every_request_needs_the_token(store: str) -> None:
    url, stop = serve_dashboard(store, host="127.0.0.2", poll=0.1)
    try:
        assert url.startswith("http://127.0.0.2:") and "?token=" in url
        base, token = url.split("?token=")
        for path in ("", "api/state", "api/events", "static/plotly.min.js", "static/dashboard.js"):
            assert get(base + path)[0] == 401, path
            assert get(base + path + "?token=wrong")[0] == 401, path
        status, body, headers = get(url)
        assert status == 200 and TOKEN_COOKIE in headers.get("set-cookie", "")
        # The page's own requests carry no token: the cookie set by the first one lets them in.
        status, body, _ = get(base + "api/state", {"Cookie": f"{TOKEN_COOKIE}={token}"})
        assert status == 200 and json.loads(body)["counts"]["total"] > 0
    finally:
        stop()


def test_bad_host_and_bad_store_are_named_errors(tmp_path: os.PathLike[str], store: str) -> None:
    with pytest.raises(ConfigurationError, match="give an IP address"):
        serve_dashboard(store, host="not a host")
    with pytest.raises(HtexError, match="no monitoring store"):
        serve_dashboard(str(tmp_path / "nowhere"))


def test_cli_prints_the_url_serves_and_stops_on_ctrl_c(store: str) -> None:
    proc = subprocess.Popen([HTEX, "dashboard", store, "--port", "0"], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)
    try:
        line = proc.stdout.readline() if proc.stdout else ""
        assert line.startswith("htex dashboard: http://127.0.0.1:"), (line, proc.stderr.read() if proc.poll() else "")
        url = line.split(": ", 1)[1].strip()
        assert get(url + "api/state")[0] == 200
        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=30) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_cli_names_a_missing_store(tmp_path: os.PathLike[str]) -> None:
    proc = subprocess.run([HTEX, "dashboard", str(tmp_path)], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 1
    assert "htex dashboard: no monitoring store at" in proc.stderr



def test_without_the_extra_the_import_error_names_it() -> None:
    code = ("import sys; sys.modules['starlette'] = None\n"
            "try:\n    import htex.monitoring.dashboard\nexcept ImportError as e:\n    print(e)\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert "pip install 'htex[dashboard]'" in out.stdout and "starlette" in out.stdout, out
