"""What every cloud stand-in shares: an aiohttp server in a thread, machines booted through the hypervisor.

A machine here is a record of the cloud's (name, state, script) plus, once
booted, a host of the hypervisor running the script.  The cloud's API handlers
create and delete records; ``boot`` and ``power_off`` do what the cloud's
hypervisor would.  Handlers run on the server's event loop; the hypervisor's
calls (``ip netns``, process starts) block, so they run in the loop's thread
pool.  ``calls`` records every request (method, path) for tests to assert on.
"""

from __future__ import annotations

import asyncio
import json
import threading
from collections.abc import Callable
from typing import Any

from aiohttp import web

from hypervisor import Hypervisor

Handler = Callable[[web.Request], Any]


class Emulator:
    """Serve ``routes()`` on 127.0.0.1 (a free port) until ``close()``."""

    def __init__(self, hypervisor: Hypervisor | None) -> None:
        self.hypervisor = hypervisor
        self.calls: list[tuple[str, str]] = []
        self.lock = threading.Lock()  # the tests' threads read the state the handlers change
        self._loop = asyncio.new_event_loop()
        self._ready = threading.Event()
        self._runner: web.AppRunner | None = None
        self._tasks: set[asyncio.Task[Any]] = set()
        self.port = 0
        self._thread = threading.Thread(target=self._serve, name=f"{type(self).__name__}", daemon=True)
        self._thread.start()
        if not self._ready.wait(30):
            raise RuntimeError(f"{type(self).__name__} did not start")

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def routes(self) -> list[web.RouteDef]:
        raise NotImplementedError

    def _serve(self) -> None:
        asyncio.set_event_loop(self._loop)
        self._loop.run_until_complete(self._start())
        self._ready.set()
        self._loop.run_forever()

    async def _start(self) -> None:
        app = web.Application(middlewares=[self._record])
        app.add_routes(self.routes())
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        self.port = self._runner.addresses[0][1]

    @web.middleware
    async def _record(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        with self.lock:
            self.calls.append((request.method, request.path))
        return await handler(request)  # type: ignore[no-any-return]

    async def blocking(self, fn: Callable[..., Any], *args: Any) -> Any:
        """Run a blocking call (the hypervisor's) off the event loop."""
        return await self._loop.run_in_executor(None, fn, *args)

    def background(self, work: Any) -> None:
        """Go on with ``work`` (a coroutine) after the answer, as a cloud does; kept until it ends."""
        task = self._loop.create_task(work)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def boot(self, machine_id: str, script: str) -> None:
        if self.hypervisor is not None:
            self.hypervisor.boot(machine_id, script)

    def power_off(self, machine_id: str) -> None:
        if self.hypervisor is not None:
            self.hypervisor.kill(machine_id)

    def close(self) -> None:
        async def stop() -> None:
            if self._runner is not None:
                await self._runner.cleanup()
            await self._loop.shutdown_default_executor()  # the threads that ran the hypervisor's calls

        if self._loop.is_running():
            asyncio.run_coroutine_threadsafe(stop(), self._loop).result(30)
            self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(30)
        if not self._thread.is_alive():
            self._loop.close()


def json_response(body: Any, status: int = 200, headers: dict[str, str] | None = None) -> web.Response:
    return web.Response(text=json.dumps(body), status=status, content_type="application/json", headers=headers)
