"""A task taken back by work stealing (interchange._stolen_back) keeps its priority in the queue.

The interchange is a real Interchange object driven step by step, with pools
that are plain DEALER sockets (test_dispatch.Bench), so the queue the stolen
task returns to is exactly what the test put there.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from test_dispatch import Bench

from htex import protocol

pytestmark = pytest.mark.timeout(30)


@pytest.fixture
def bench() -> Iterator[Bench]:
    b = Bench()
    yield b
    b.close()


def _withdraw_sent_to(bench: Bench, name: str) -> protocol.Withdraw:
    sock = bench.pools[name]
    while sock.poll(5000):
        msg = protocol.decode(sock.recv_multipart())
        if isinstance(msg, protocol.Withdraw):
            return msg
    pytest.fail(f"no Withdraw reached pool {name}")


def test_a_stolen_task_goes_back_to_its_place_among_prioritized_tasks(bench: Bench) -> None:
    bench.add_pool("A", workers=1, prefetch=4)
    bench.ic.functions[7] = b"fn"
    bench.ic.queue.extend_ranked(((i, 7, b"p") for i in range(5)), [1.0] * 5)
    assert bench.dispatch(0) == {"A": [0, 1, 2, 3, 4]}  # one runs, four wait in A's prefetch
    bench.add_pool("B", workers=1, prefetch=0)  # idle, and nothing queued: A's last task is asked back
    bench.ic.stealing.look = True
    bench.ic._steal()
    withdraw = _withdraw_sent_to(bench, "A")
    assert withdraw.ids == [4]
    # Meanwhile less urgent tasks arrive: one with priority 5, one without.
    bench.ic.queue.extend_ranked([(10, 7, b"p")], [5.0])
    bench.ic.queue.extend([(11, 7, b"p")])
    bench.pools["A"].send_multipart(protocol.Withdrawn(req=withdraw.req, withdrawn=[4], started=[]).encode())
    while len(bench.ic.queue) < 3:
        assert bench.ic.pool_sock.poll(5000), "the Withdrawn did not reach the interchange"
        bench.ic._read_pools()
    # Priority 1 (stolen) before 5 before none: as if it had never left.
    assert [t[0] for t in bench.ic.queue.take(3)[0]] == [4, 10, 11]
    assert bench.ic.pools[b"A"].ranks == {0: (1.0, 0), 1: (1.0, 1), 2: (1.0, 2), 3: (1.0, 3)}
