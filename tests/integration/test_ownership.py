"""Who owns what: the thread that owns a resource tears it down, and shared state has one lock.

* the client's link to the interchange, wake-up pipe and the interchange's pidfd are closed by the I/O thread itself
  (not by the thread that calls shutdown());
* the block bookkeeping takes pool events from the I/O thread while the poller and the user's
  threads read and scale, without "dictionary changed size during iteration" or lost updates.
"""

from __future__ import annotations

import threading
from typing import Any

import pytest

from htex import LocalProvider, protocol
from htex.client import ClientThread
from htex.inflight import Lifecycle
from htex.scaling import Blocks

import tasks

pytestmark = pytest.mark.timeout(60)


def test_the_io_thread_closes_what_it_owns(make_executor: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    closed_by: list[str] = []
    original = ClientThread._close

    def recording_close(self: ClientThread, reason: BaseException) -> None:
        closed_by.append(threading.current_thread().name)
        original(self, reason)

    monkeypatch.setattr(ClientThread, "_close", recording_close)
    ex = make_executor()
    assert ex.submit(tasks.add, {}, 1, 2).result(timeout=30) == 3
    client = ex._client
    ex.shutdown()
    assert closed_by == [client.name] and client.name.startswith("htex-io-")
    assert threading.current_thread().name not in closed_by
    assert client._link.closed and client._link.sock.fileno() == -1 and not client.is_alive()


def _pool(manager: str, block: str) -> Any:
    return protocol.PoolInfo(
        manager=manager, block_id=block, hostname="h", pid=1, worker_count=2, prefetch_capacity=0, tasks=0,
        active=True, idle_duration=0.0, last_heartbeat=0.0, python_version="3.11", version="x",
    )


def test_block_events_and_polls_from_several_threads(tmp_path: Any) -> None:
    """A stand-in for the interchange (``ask`` answers locally) and a real LocalProvider with no
    block started: what is tested is the bookkeeping under concurrent events, reads and scale-ins."""
    lifecycle = Lifecycle()
    lifecycle.start()
    provider = LocalProvider(init_blocks=0, min_blocks=0, max_blocks=0)
    provider.script_dir = str(tmp_path)

    def ask(make: Any) -> Any:
        msg = make(1)
        if isinstance(msg, protocol.StatusRequest):
            with blocks.lock:
                pools = [_pool(m, b) for b, ms in blocks.pools.items() for m in ms]
            return protocol.StatusReply(req=1, stats=None, pools=pools)  # type: ignore[arg-type]
        return protocol.Done(req=1, count=0)

    blocks = Blocks(provider, "t", lambda b: "true", ask, lifecycle, lambda: 0, 120.0, lambda exc: None)
    errors: list[BaseException] = []
    stop = threading.Event()

    def events() -> None:
        for i in range(3000):
            block = str(i % 50)
            blocks.on_event(protocol.PoolRegistered(pool=_pool(f"m{i}", block)))
            if i % 2:
                blocks.on_event(protocol.PoolGone(manager=f"m{i}", block_id=block, message="gone", released=False))
        stop.set()

    def reads() -> None:
        while not stop.is_set():
            try:
                blocks.pool_infos()
                blocks.scale_in(block_ids=[str(i) for i in range(0, 50, 7)])
                blocks.poll_once()
            except BaseException as exc:
                errors.append(exc)
                return

    threads = [threading.Thread(target=events), *(threading.Thread(target=reads) for _ in range(2))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert not errors, errors
    with blocks.lock:
        left = sum(len(ms) for ms in blocks.pools.values())
    assert left == 1500  # every even-numbered pool registered and never left: no update lost
