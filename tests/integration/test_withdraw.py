"""The pool's Withdraw primitive (protocol.Withdraw -> Withdrawn), against a real pool and real workers.

The test stands where the interchange is: a ROUTER socket (the pool's one
connection) on a UNIX socket in the test's directory, so it decides exactly what the pool holds (which task a
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
from support import read_lines, wait_for

pytestmark = pytest.mark.timeout(60)



class FakeInterchange:
    """Our side of the pool's one connection, and the pool process itself."""

    def __init__(self, tmp: str, workers: int, prefetch: int, extra: tuple[str, ...] = ()) -> None:
        self.ctx = zmq.Context()
        self.sock = self.ctx.socket(zmq.ROUTER)
        url = f"ipc://{tmp}/pools"
        self.sock.bind(url)
        self.unread: list[Any] = []  # messages received while waiting for another type, oldest first
        self.pool = subprocess.Popen([
            sys.executable, "-m", "htex.process_worker_pool", "--task_url", url,
            "--max_workers", str(workers), "-p", str(prefetch), "--hb_period", "1", "--hb_threshold", "20",
            "-l", os.path.join(tmp, "logs"), "-u", "pool0", *extra,
        ])
        reg = self.receive(protocol.Register)
        assert reg.worker_count == workers
        self.identity = reg.manager_id.encode()
        self.send(protocol.Registered())
        self.functions = serialize.FunctionRegistry()

    def send(self, msg: protocol.Message) -> None:
        self.sock.send_multipart([self.identity, *msg.encode()])

    def receive(self, cls: type[Any], timeout: float = 20.0) -> Any:
        """The next message of type ``cls``; heartbeats skipped, other messages kept for their own receive."""
        for i, msg in enumerate(self.unread):
            if isinstance(msg, cls):
                return self.unread.pop(i)
        deadline = time.monotonic() + timeout
        while self.sock.poll(max(1, int((deadline - time.monotonic()) * 1000))):
            _, *frames = self.sock.recv_multipart()
            msg = protocol.decode(frames)
            if isinstance(msg, cls):
                return msg
            if not isinstance(msg, protocol.Heartbeat):
                self.unread.append(msg)
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
            msg = self.receive(protocol.Results)
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

    def make(workers: int = 1, prefetch: int = 8, extra: tuple[str, ...] = ()) -> FakeInterchange:
        made.append(FakeInterchange(str(tmp_path), workers, prefetch, extra))
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
    wait_for(lambda: read_lines(log) == ["t1"], timeout=30, what="task 1 to start")
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
    assert sorted(read_lines(log)) == ["t1", "t2", "t4"]
    # Asked again, nothing is held: a finished task is in neither list.
    ic.send(protocol.Withdraw(req=8, ids=[1, 2, 3]))
    again = ic.receive(protocol.Withdrawn)
    assert (again.req, again.withdrawn, again.started) == (8, [], [])



def _warm_up(ic: FakeInterchange, n: int = 400) -> None:
    """Run short tasks first: the pool then sizes a worker's batch by their time, so the next batch has several
    (the more, the closer its measure comes to their real time, and the larger the next batch)."""
    ic.submit([(1000 + i, tasks.noop, ()) for i in range(n)])
    ic.results_for(n)


def test_withdraw_with_kill_stops_the_running_task_and_spares_its_batch(fake: Any, tmp_path: Any) -> None:
    from htex import TaskCancelled, WorkerLost

    ic = fake(workers=1, prefetch=8)
    _warm_up(ic)
    log, gate = str(tmp_path / "started"), str(tmp_path / "gate")
    # X runs (and waits); Y waits behind it at the worker (in its batch, or handed ahead), or is back
    # in the pool's queue: the pool takes back a task waiting behind one that runs long (Lookahead).
    ic.submit([(1, tasks.record_then_wait_for, (log, "X", gate)), (2, tasks.record, (log, "Y"))])
    wait_for(lambda: read_lines(log) == ["X"], timeout=30, what="X to start")
    ic.send(protocol.Withdraw(req=1, ids=[1, 2], kill=True))
    answer = ic.receive(protocol.Withdrawn)
    assert answer.started[:1] == [1] and sorted(answer.withdrawn + answer.started) == [1, 2]
    results = ic.results_for(len(answer.started))
    ok, exc = results[1]
    assert not ok and isinstance(exc, TaskCancelled) and not isinstance(exc, WorkerLost)
    if 2 in answer.started:
        # Y was at the worker and never started: it ends cancelled (the interchange was told it may
        # have started, so a result comes for it), and never runs.
        ok, exc = results[2]
        assert not ok and isinstance(exc, TaskCancelled) and "before it started" in str(exc)
    # Either way Y never runs (below: the log holds X, then the next task only).
    ic.submit([(3, tasks.record, (log, "after"))])
    assert ic.results_for(1)[3][0]
    assert read_lines(log) == ["X", "after"]


def test_a_kill_spares_the_rest_of_the_batch(fake: Any, tmp_path: Any) -> None:
    """Tasks behind the killed one in its worker's batch never started: back to the queue, run by the new worker."""
    from htex import TaskCancelled

    ic = fake(workers=1, prefetch=8)
    _warm_up(ic)
    log, gate = str(tmp_path / "started"), str(tmp_path / "gate")
    ic.submit([(1, tasks.record_then_wait_for, (log, "X", gate)), (2, tasks.record, (log, "Y"))])
    wait_for(lambda: read_lines(log) == ["X"], timeout=30, what="X to start")
    ic.send(protocol.Withdraw(req=1, ids=[1], kill=True))
    assert ic.receive(protocol.Withdrawn).started == [1]
    results = ic.results_for(2)
    assert isinstance(results[1][1], TaskCancelled) and results[2][0]
    assert read_lines(log) == ["X", "Y"]


def test_withdraw_with_kill_waits_for_the_worker_to_reach_the_task(fake: Any, tmp_path: Any) -> None:
    """The task to cancel waits at its worker behind another: the pool kills the worker as it starts it.

    Tasks of 80 ms first: the pool then hands a busy worker its next task ahead (they are under
    prefetch.LOOKAHEAD_TASK), and takes back what waits only after four times their length (0.3 s),
    time enough for the cancel to come while X still waits at the worker."""
    from htex import TaskCancelled

    ic = fake(workers=1, prefetch=8)
    _warm_up(ic)
    ic.submit([(2000 + i, tasks.sleep_then, (0.08,)) for i in range(12)])
    ic.results_for(12)
    log, gate_z, gate_x = str(tmp_path / "started"), str(tmp_path / "z"), str(tmp_path / "x")
    ic.submit([(1, tasks.record_then_wait_for, (log, "Z", gate_z)), (2, tasks.record_then_wait_for, (log, "X", gate_x)),
               (3, tasks.record, (log, "after"))])
    wait_for(lambda: read_lines(log) == ["Z"], timeout=30, what="Z to start")
    ic.send(protocol.Withdraw(req=1, ids=[2], kill=True))
    assert ic.receive(protocol.Withdrawn).started == [2]
    with open(gate_z, "w"):
        pass
    results = ic.results_for(3)
    assert results[1][0] and results[3][0]  # Z finished; `after` ran on the new worker
    assert not results[2][0] and isinstance(results[2][1], TaskCancelled)
    assert read_lines(log) == ["Z", "X", "after"]


def test_withdraw_gets_back_a_task_waiting_unclaimed_at_its_worker(fake: Any, tmp_path: Any) -> None:
    """A task handed ahead to a busy worker has not started until the worker claims it: a Withdraw without
    kill (a steal, or a cancel) takes it back from the worker and withdraws it (Lookahead.give_back); it used
    to count as maybe started, stay, and run.  Tasks of 80 ms first, as above, so the cancel comes while A
    still waits at the worker."""
    ic = fake(workers=1, prefetch=8)
    _warm_up(ic)
    ic.submit([(2000 + i, tasks.sleep_then, (0.08,)) for i in range(12)])
    ic.results_for(12)
    log, gate = str(tmp_path / "started"), str(tmp_path / "gate")
    ic.submit([(1, tasks.record_then_wait_for, (log, "Z", gate)), (2, tasks.record, (log, "A")),
               (3, tasks.record, (log, "B"))])
    wait_for(lambda: read_lines(log) == ["Z"], timeout=30, what="Z to start")
    ic.send(protocol.Withdraw(req=1, ids=[2], kill=False))
    answer = ic.receive(protocol.Withdrawn)
    assert (list(answer.withdrawn), list(answer.started)) == ([2], [])
    with open(gate, "w"):
        pass
    results = ic.results_for(2)
    assert sorted(results) == [1, 3] and results[1][0] and results[3][0]  # no result for A: it never ran
    assert read_lines(log) == ["Z", "B"]


def test_a_kill_keeps_the_results_the_worker_had_not_sent_yet(fake: Any, tmp_path: Any) -> None:
    """Short tasks finish and the next one starts at once: their results wait in the worker (it sends every
    FLUSH_SECONDS) when the pool kills it to cancel that next one.  They were lost with it; they count now."""
    from htex import TaskCancelled

    ic = fake(workers=1, prefetch=8)
    _warm_up(ic)
    log, gate = str(tmp_path / "started"), str(tmp_path / "gate")
    # One batch: A1..A5 are done in well under FLUSH_SECONDS, then X starts and waits.
    ic.submit([(i, tasks.record, (log, f"A{i}")) for i in range(1, 6)] +
              [(6, tasks.record_then_wait_for, (log, "X", gate))])
    wait_for(lambda: read_lines(log)[-1:] == ["X"], timeout=30, what="X to start")
    ic.send(protocol.Withdraw(req=1, ids=[6], kill=True))
    assert ic.receive(protocol.Withdrawn).started == [6]
    results = ic.results_for(6)
    assert all(results[i] == (True, None) for i in range(1, 6)), results
    assert isinstance(results[6][1], TaskCancelled)
    assert read_lines(log) == ["A1", "A2", "A3", "A4", "A5", "X"]


def test_a_worker_that_dies_keeps_the_results_it_had_not_sent(fake: Any, tmp_path: Any) -> None:
    """The same for any death: the tasks before the one that killed the worker keep their results."""
    from htex import WorkerLost

    ic = fake(workers=1, prefetch=8)
    _warm_up(ic)
    ic.submit([(i, tasks.add, (i, 1)) for i in range(1, 4)] + [(4, tasks.hard_exit, (3,)), (5, tasks.add, (5, 1))])
    results = ic.results_for(5)
    assert [results[i] for i in (1, 2, 3, 5)] == [(True, 2), (True, 3), (True, 4), (True, 6)]
    assert isinstance(results[4][1], WorkerLost) and "while running this task" in str(results[4][1])
