"""The dashboard: a web page that shows a run's monitoring store, live while it runs.

::

    htex dashboard runinfo/000                 # prints http://127.0.0.1:PORT/ and serves until Ctrl-C
    url, stop = serve_dashboard("runinfo/000")  # the same from Python, in a background thread

Built on Starlette (the web application: routes, static files, streaming
responses) served by uvicorn, and Plotly.js for the charts, served from the
``plotly`` Python package's own bundled ``plotly.min.js``: the page needs no
internet and no build step.  Routes::

    /                    the page (static/index.html, static/dashboard.js, static/dashboard.css)
    /static/plotly.min.js
    /api/runs            the store's runs, latest first
    /api/state?run=ID    everything the page draws (dashboard_data.snapshot)
    /api/events?run=ID   server-sent events: the run's fingerprint, sent each time it changes

The server polls the store's fingerprint (a few aggregates, see
``dashboard_data.fingerprint``) once a ``poll`` period, shared by every open
page, and the page refetches ``/api/state`` only when it changed; a finished
run's database simply never changes.

Bound to anything but 127.0.0.1 (or ``::1``, ``localhost``), every request
needs a token: generated at start, printed in the URL (``?token=...``), kept
by the browser in a cookie after the first page; without it, 401.
"""

from __future__ import annotations

import asyncio
import hmac
import importlib.util
import ipaddress
import json
import os
import secrets
import socket
import threading
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

try:
    import uvicorn
    from starlette.applications import Starlette
    from starlette.concurrency import run_in_threadpool
    from starlette.middleware.trustedhost import TrustedHostMiddleware
    from starlette.requests import Request
    from starlette.responses import FileResponse, JSONResponse, PlainTextResponse, Response, StreamingResponse
    from starlette.routing import Mount, Route
    from starlette.staticfiles import StaticFiles
    from starlette.types import ASGIApp, Receive, Scope, Send
except ImportError as exc:  # pragma: no cover - exercised only without the extra
    raise ImportError(
        f"the htex dashboard needs {exc.name or 'starlette, uvicorn and plotly'}: pip install 'htex[dashboard]'"
    ) from exc

import sqlalchemy as sa

from ..errors import ConfigurationError
from . import dashboard_data

__all__ = ["Dashboard", "build_app", "serve_dashboard"]

STATIC = os.path.join(os.path.dirname(os.path.abspath(__file__)), "static")

def _plotly_js() -> str:
    """The plotly.min.js bundled in the ``plotly`` Python package (found, not imported: importing it is slow)."""
    spec = importlib.util.find_spec("plotly")
    if spec is None or not spec.submodule_search_locations:
        raise ImportError("the htex dashboard needs plotly (for its bundled plotly.min.js): pip install 'htex[dashboard]'")
    return os.path.join(next(iter(spec.submodule_search_locations)), "package_data", "plotly.min.js")


PLOTLY_JS = _plotly_js()
TOKEN_COOKIE = "htex_dashboard_token"
_OPEN_HOSTS = ("127.0.0.1", "::1", "localhost")
_KEEPALIVE = 15.0  # seconds between SSE comments, so proxies and browsers keep an idle stream open


def open_store(target: str) -> sa.Engine:
    """An engine on the store named by a run directory (its monitoring.db, or its one executor
    directory's), a database file or an SQLAlchemy URL: ``store.open_store``, which checks the version."""
    from .store import open_store as open_checked

    return open_checked(target if "://" in target else _store_file(target))


def _store_file(target: str) -> str:
    """The database file of a run directory (``monitoring.db`` in it, or in its one executor's directory)."""
    if not os.path.isdir(target):
        return target
    found = [p for p in (os.path.join(target, "monitoring.db"), *(os.path.join(target, d, "monitoring.db")
                                                               for d in sorted(os.listdir(target))))
             if os.path.isfile(p)]
    return found[0] if len(found) == 1 else os.path.join(target, "monitoring.db")


def needs_token(host: str) -> bool:
    """Whether a server bound to ``host`` must ask for a token: anything but the loopback address itself."""
    return host not in _OPEN_HOSTS


class _TokenGate:
    """ASGI middleware: 401 unless the request carries the token (query ``token=``, or the cookie it set)."""

    def __init__(self, app: ASGIApp, token: str) -> None:
        self.app = app
        self.token = token

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        request = Request(scope)
        from_query = request.query_params.get("token", "")
        given = from_query or request.cookies.get(TOKEN_COOKIE, "")
        if not hmac.compare_digest(given.encode(), self.token.encode()):
            response = PlainTextResponse("401: this dashboard needs its token: open the URL it printed "
                                         "(…/?token=…)", status_code=401)
            await response(scope, receive, send)
            return
        if not from_query:
            await self.app(scope, receive, send)
            return
        cookie = f"{TOKEN_COOKIE}={self.token}; Path=/; HttpOnly; SameSite=Strict"

        async def send_with_cookie(message: Any) -> None:
            if message["type"] == "http.response.start":
                message["headers"] = [*message.get("headers", []), (b"set-cookie", cookie.encode())]
            await send(message)

        await self.app(scope, receive, send_with_cookie)


class Dashboard:
    """The application's state: the store, the shared fingerprint poll, the cached snapshots."""

    def __init__(self, engine: sa.Engine, poll: float = 1.0) -> None:
        self.engine = engine
        self.poll = poll
        self.stopping = False  # set by stop(): open event streams end so the server can shut down
        self._prints: dict[str, tuple[float, str]] = {}  # run -> (when read, fingerprint)
        self._states: dict[str, tuple[str, bytes, float]] = {}  # run -> (fingerprint, JSON snapshot, when made)
        self._cost = 0.0  # seconds the last snapshot took to make
        self._lock = threading.Lock()
        self._state_lock = threading.Lock()

    def runs(self) -> list[dict[str, Any]]:
        with self.engine.connect() as conn:
            return dashboard_data.list_runs(conn)

    def pick_run(self, run: str | None) -> str | None:
        if run:
            return run
        found = self.runs()
        return found[0]["run_id"] if found else None

    def fingerprint(self, run_id: str) -> str:
        """The run's fingerprint, read from the store at most once a poll period whatever the number of pages."""
        with self._lock:
            cached = self._prints.get(run_id)
            if cached and time.monotonic() - cached[0] < self.poll / 2:
                return cached[1]
            with self.engine.connect() as conn:
                value = dashboard_data.fingerprint(conn, run_id)
            self._prints[run_id] = (time.monotonic(), value)
            return value

    def state(self, run_id: str) -> bytes:
        """The run's snapshot as JSON, recomputed only when its fingerprint moved, and not too often.

        A snapshot of a big run costs seconds (about 2 s for 100,000 tasks on
        a busy 2-core machine): while the store changes every poll, it is
        recomputed at most once per twice its own cost, so the server spends
        at most a third of a core on it.  The page sees the snapshot's
        ``version`` behind the latest event's and asks again a little later.
        """
        with self._state_lock:  # concurrent pages share one computation
            version = self.fingerprint(run_id)
            cached = self._states.get(run_id)
            if cached and (cached[0] == version or time.monotonic() - cached[2] < 2 * self._cost):
                return cached[1]
            began = time.monotonic()
            with self.engine.connect() as conn:
                body = dashboard_data.snapshot(conn, run_id)
            body["runs"] = self.runs()
            body["version"] = version
            data = json.dumps(body, allow_nan=False, default=str).encode()
            self._cost = time.monotonic() - began
            self._states[run_id] = (version, data, time.monotonic())
            return data

    def _version(self, run_id: str | None) -> str:
        found = self.pick_run(run_id)
        return self.fingerprint(found) if found is not None else "empty"

    async def events(self, run_id: str | None) -> AsyncIterator[str]:
        """Server-sent events: the fingerprint now, then each time it changes, until the server stops.

        Without a run (an empty store: the hub has just started), it follows the
        latest run, so the page hears when the first one appears.
        """
        last = None
        quiet = 0.0
        while not self.stopping:
            version = await run_in_threadpool(self._version, run_id)
            if version != last:
                last = version
                quiet = 0.0
                yield f"data: {json.dumps(version)}\n\n"
            elif quiet >= _KEEPALIVE:
                quiet = 0.0
                yield ": keepalive\n\n"
            await asyncio.sleep(self.poll)
            quiet += self.poll


def build_app(engine: sa.Engine, *, token: str | None = None, poll: float = 1.0,
              hosts: list[str] | None = None) -> tuple[Starlette, Dashboard]:
    """The ASGI application for one store; with ``token``, every request must carry it.

    ``hosts``: the only Host headers answered (others get 400), against DNS
    rebinding: a web page of another site whose name is made to resolve to
    127.0.0.1 would otherwise read a loopback dashboard from the user's browser.
    """
    dash = Dashboard(engine, poll)

    async def index(request: Request) -> Response:
        return FileResponse(os.path.join(STATIC, "index.html"), headers={"cache-control": "no-store"})

    async def api_runs(request: Request) -> Response:
        return JSONResponse(await run_in_threadpool(dash.runs))

    async def api_state(request: Request) -> Response:
        run_id = await run_in_threadpool(dash.pick_run, request.query_params.get("run"))
        if run_id is None:  # not an error: a run being started has an empty store for a moment
            return JSONResponse({"empty": True, "version": "empty"})
        return Response(await run_in_threadpool(dash.state, run_id), media_type="application/json")

    async def api_events(request: Request) -> Response:
        return StreamingResponse(dash.events(request.query_params.get("run")), media_type="text/event-stream",
                                 headers={"cache-control": "no-store"})

    async def plotly_js(request: Request) -> Response:
        return FileResponse(PLOTLY_JS, media_type="text/javascript")

    app = Starlette(routes=[
        Route("/", index),
        Route("/api/runs", api_runs),
        Route("/api/state", api_state),
        Route("/api/events", api_events),
        Route("/static/plotly.min.js", plotly_js),
        Mount("/static", StaticFiles(directory=STATIC)),
    ])
    if token:
        app.add_middleware(_TokenGate, token=token)
    if hosts:
        app.add_middleware(TrustedHostMiddleware, allowed_hosts=hosts)
    return app, dash


def _url(host: str, port: int, token: str | None) -> str:
    shown = socket.getfqdn() if host in ("0.0.0.0", "::", "") else host
    if ":" in shown:
        shown = f"[{shown}]"
    return f"http://{shown}:{port}/" + (f"?token={token}" if token else "")


def serve_dashboard(target: str | sa.Engine, host: str = "127.0.0.1", port: int = 0, *,
                    token: str | None = None, poll: float = 1.0,
                    start_timeout: float = 30.0) -> tuple[str, Callable[[], None]]:
    """Serve the dashboard of a store in a background thread; return its URL and a ``stop()``.

    ``target`` is a run directory, a database file, an SQLAlchemy URL or an
    engine.  ``port=0`` picks a free port.  Off 127.0.0.1 a token is required:
    ``token`` if given, else a generated one (it is in the URL returned).
    """
    try:
        ipaddress.ip_address(host)
    except ValueError:
        if host != "localhost":
            raise ConfigurationError(f"dashboard host {host!r}: give an IP address to bind to, "
                                     "e.g. 127.0.0.1 (this host only) or 0.0.0.0 (every interface)") from None
    engine = target if isinstance(target, sa.Engine) else open_store(target)
    if token is None and needs_token(host):
        token = secrets.token_urlsafe(24)
    # Without a token (loopback), answer only to loopback names; with one, the token is the guard.
    hosts = ["127.0.0.1", "localhost"] if token is None and host != "::1" else None
    app, dash = build_app(engine, token=token, poll=poll, hosts=hosts)
    config = uvicorn.Config(app, host=host, port=port, log_level="warning", lifespan="off",
                            timeout_graceful_shutdown=5)
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, name="htex-dashboard", daemon=True)
    thread.start()
    deadline = time.monotonic() + start_timeout
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            server.should_exit = True
            thread.join(start_timeout)
            raise ConfigurationError(f"the dashboard could not listen on {host}:{port} (in use, or not an address "
                                     "of this host?)")
        time.sleep(0.02)
    bound = server.servers[0].sockets[0].getsockname()[1]

    def stop() -> None:
        dash.stopping = True
        server.should_exit = True
        thread.join(30)
        if not isinstance(target, sa.Engine):
            engine.dispose()

    return _url(host, bound, token), stop
