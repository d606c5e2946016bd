"""The pool's Withdraw primitive (protocol.Withdraw -> Withdrawn), against a real pool and real workers.

The test stands where the interchange is: two ROUTER sockets on UNIX sockets in
the test's directory, so it decides exactly what the pool holds (which task a
worker runs, which wait in its prefetch queue) before it asks for them back.
The pool and its workers are the real processes.  Whether a task ran is read
from a side-effect file each task appends its label to.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Iterator
from typing import Any

import pytest
import zmq

from htex import protocol, serialize

import tasks
from support import wait_for

pytestmark = pytest.mark.timeout(60)


def _lines(path: str) -> list[str]:
    if not os.path.exists(path):
        return []
    with open(path) as f:
        return f.read().splitlines()


class FakeInterchange:
    """Our side of the pool's two sockets, and the pool process itself."""

    def __init__(self, tmp: str, workers: int, prefetch: int) -> None:
        self.ctx = zmq.Context()
        self.tasks = self.ctx.socket(zmq.ROUTER)
        self.results = self.ctx.socket(zmq.ROUTER)
        task_url, result_url = f"ipc://{tmp}/tasks", f"ipc://{tmp}/results"
        self.tasks.bind(task_url)
        self.results.bind(result_url)
        self.pool = subprocess.Popen([
            sys.executable, "-m", "htex.process_worker_pool", "--task_url", task_url, "--result_url", result_url,
            "--max_workers", str(workers), "-p", str(prefetch), "--hb_period", "1", "--hb_threshold", "20",
            "-l", os.path.join(tmp, "logs"), "-u", "pool0",
        ])
        reg = self.receive(protocol.Register)
        assert reg.worker_count == workers
        self.identity = reg.manager_id.encode()
        self.send(protocol.Registered())
        self.functions = serialize.FunctionRegistry()

    def send(self, msg: protocol.Message) -> None:
        self.tasks.send_multipart([self.identity, *msg.encode()])

    def receive(self, cls: type[Any], sock: zmq.Socket[Any] | None = None, timeout: float = 20.0) -> Any:
        """The next message of type ``cls`` (heartbeats and the like skipped)."""
        sock = sock or self.tasks
        deadline = time.monotonic() + timeout
        while sock.poll(max(1, int((deadline - time.monotonic()) * 1000))):
            _, *frames = sock.recv_multipart()
            msg = protocol.decode(frames)
            if isinstance(msg, cls):
                return msg
        pytest.fail(f"no {cls.__name__} from the pool within {timeout} s")

    def submit(self, calls: list[tuple[int, Any, tuple[Any, ...]]]) -> None:
        """Send tasks (id, function, args) in one TASKS message."""
        ids, keys, payloads, functions = [], [], [], {}
        for tid, fn, args in calls:
            key, blob = self.functions.key_for(fn)
            if blob is not None:  # the first time this function is seen: it goes with its first task
                functions[key] = blob
            payload, _ = serialize.pack_task_args(args, {}, None, may_wait=True)
            ids.append(tid)
            keys.append(key)
            payloads.append(payload)
        self.send(protocol.Tasks(protocol.u64_array(ids), protocol.u64_array(keys), payloads, functions))

    def results_for(self, n: int) -> dict[int, Any]:
        got: dict[int, Any] = {}
        while len(got) < n:
            msg = self.receive(protocol.Results, self.results)
            for tid, blob in zip(msg.ids, msg.payloads, strict=True):
                got[tid] = serialize.unpack_result(protocol.as_buffer(blob))
        return got

    def close(self) -> None:
        if self.pool.poll() is None:
            self.send(protocol.Shutdown(reason="test over"))
            try:
                self.pool.wait(20)
            except subprocess.TimeoutExpired:
                self.pool.kill()
                self.pool.wait()
        self.ctx.destroy(linger=0)


@pytest.fixture
def fake(tmp_path: Any) -> Iterator[Any]:
    made: list[FakeInterchange] = []

    def make(workers: int = 1, prefetch: int = 8) -> FakeInterchange:
        made.append(FakeInterchange(str(tmp_path), workers, prefetch))
        return made[-1]

    yield make
    for f in made:
        f.close()


def test_withdraw_takes_back_prefetched_tasks_and_leaves_the_started_one(fake: Any, tmp_path: Any) -> None:
    ic = fake(workers=1, prefetch=8)
    log, gate = str(tmp_path / "started"), str(tmp_path / "gate")
    # Task 1 holds the only worker; 2..5 wait in the pool's prefetch queue.
    ic.submit([(1, tasks.record_then_wait_for, (log, "t1", gate))] +
              [(i, tasks.record, (log, f"t{i}")) for i in range(2, 6)])
    wait_for(lambda: _lines(log) == ["t1"], timeout=30, what="task 1 to start")
    ic.send(protocol.Withdraw(req=7, ids=[1, 3, 5, 99]))
    answer = ic.receive(protocol.Withdrawn)
    assert answer.req == 7
    assert sorted(answer.withdrawn) == [3, 5]
    assert answer.started == [1]  # 99: not held by the pool (neither list)
    with open(gate, "w"):
        pass
    results = ic.results_for(3)  # 1, 2 and 4: the withdrawn never come back
    assert sorted(results) == [1, 2, 4]
    assert all(ok for ok, _ in results.values())
    assert sorted(_lines(log)) == ["t1", "t2", "t4"]
    # Asked again, nothing is held: a finished task is in neither list.
    ic.send(protocol.Withdraw(req=8, ids=[1, 2, 3]))
    again = ic.receive(protocol.Withdrawn)
    assert (again.req, again.withdrawn, again.started) == (8, [], [])

