"""What an executor tells about itself: the spec's read-only attributes and status queries.

A base of ``HighThroughputExecutor`` (executor.py), kept apart so that the executor's own
module reads as its life: parameters, start, submit, cancel, scaling, shutdown.  Everything
here only reads: the futures in flight, the blocks, the lifecycle, or the interchange's
answer to a control request (``_ask``).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from concurrent.futures import Future
from typing import Any

from . import protocol
from .client import ClientThread
from .inflight import Inflight, Lifecycle
from .providers.base import ExecutionProvider
from .scaling import Blocks

COMMAND_SECONDS = 10.0  # for the interchange to answer a control request


class ExecutorState:
    # Set by HighThroughputExecutor.__init__ (and start(), for _monitoring).
    provider: ExecutionProvider
    managed: bool
    _inflight: Inflight
    _lifecycle: Lifecycle
    _blocks: Blocks
    _monitoring: Any
    _client: ClientThread | None

    @property
    def tasks(self) -> dict[int, Future[Any]]:
        """Outstanding futures by task id."""
        return self._inflight.futures

    @property
    def dashboard_url(self) -> str | None:
        """Where ``Monitoring(dashboard=True)`` serves this run's dashboard (None: not served)."""
        return self._monitoring.dashboard_url if self._monitoring is not None else None  # type: ignore[no-any-return]

    @property
    def outstanding(self) -> int:
        """Tasks submitted and not yet done."""
        return len(self._inflight)

    @property
    def connected_managers(self) -> list[dict[str, Any]]:
        """One dict per registered pool: manager, block_id, hostname, worker_count, tasks, active, ..."""
        reply: protocol.StatusReply = self._ask(lambda req: protocol.StatusRequest(req=req))
        return [dataclasses.asdict(p) for p in reply.pools]

    @property
    def connected_workers(self) -> int:
        return sum(m["worker_count"] for m in self.connected_managers)

    def hold_worker(self, worker_id: str) -> bool:
        """Send no new task to the pool (manager) ``worker_id``; its running tasks finish."""
        done: protocol.Done = self._ask(lambda req: protocol.HoldPools(req=req, managers=[worker_id]))
        return done.count > 0

    def stats(self) -> dict[str, Any]:
        """Counters of the interchange: received, dispatched, done, lost, queued, pools, workers."""
        reply: protocol.StatusReply = self._ask(lambda req: protocol.StatusRequest(req=req, pools=False))
        return dataclasses.asdict(reply.stats)

    @property
    def blocks(self) -> dict[str, str]:
        """Block id -> job id, of every block this executor started."""
        with self._blocks.lock:
            return dict(self._blocks.jobs)

    @property
    def block_mapping(self) -> dict[str, str]:
        """Job id -> block id."""
        return {job: block for block, job in self.blocks.items()}

    @property
    def bad_state_is_set(self) -> bool:
        return self._lifecycle.bad is not None

    @property
    def executor_exception(self) -> BaseException | None:
        return self._lifecycle.bad

    @property
    def scaling_enabled(self) -> bool:
        return self.managed

    @property
    def status_polling_interval(self) -> float:
        return self.provider.status_polling_interval

    def _ask(self, make: Callable[[int], protocol.Message], timeout: float = COMMAND_SECONDS) -> Any:
        """Send a control request to the interchange and wait for its answer."""
        if self._client is None or self._lifecycle.shut_down.is_set():
            raise RuntimeError("the executor is not running")
        if self._lifecycle.bad is not None:
            raise self._lifecycle.bad
        return self._client.request(make).result(timeout)

    def weakref_cb(self, q: Any = None) -> None:
        """In the spec ("we do not use this yet"); kept so code that calls it runs."""
