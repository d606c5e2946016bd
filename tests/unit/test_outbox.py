"""The Outbox (src/htex/client.py): when a task goes straight onto the link from the caller's thread, and when it waits.

Real socketpairs and pipes; the test reads what reached the interchange's end of the link.
"""

from __future__ import annotations

import os
import socket
from collections.abc import Iterator

import pytest
import zmq

from htex import framing, protocol
from htex.client import Outbox

pytestmark = pytest.mark.timeout(30)

NO_PRIORITY = float("nan")


class Rig:
    def __init__(self) -> None:
        ours, self.theirs = socket.socketpair()
        self.wake_r, wake_w = os.pipe()
        os.set_blocking(self.wake_r, False)
        os.set_blocking(wake_w, False)
        self.link = framing.StreamLink(ours, zmq.Poller())
        self.busy = False  # what quiet() answers, negated
        self.outbox = Outbox(wake_w, self.link, lambda: not self.busy)
        self.decoder = framing.Decoder()

    def received(self) -> list[protocol.Message]:
        """Every message at the interchange's end so far."""
        self.theirs.setblocking(False)
        try:
            while self.decoder.read(self.theirs):
                pass
        except BlockingIOError:
            pass
        return [protocol.decode(m) for m in self.decoder.messages()]

    def woken(self) -> bool:
        try:
            return bool(os.read(self.wake_r, 64))
        except BlockingIOError:
            return False

    def close(self) -> None:
        self.outbox.close()
        self.link.close()
        self.theirs.close()
        os.close(self.wake_r)


@pytest.fixture
def rig() -> Iterator[Rig]:
    r = Rig()
    yield r
    r.close()


def test_a_lone_task_goes_at_once_with_its_function_and_wakes_nobody(rig: Rig) -> None:
    rig.outbox.put(task=(1, 7, b"args", NO_PRIORITY), function=(7, b"fn"))
    (msg,) = rig.received()
    assert isinstance(msg, protocol.Tasks)
    assert list(msg.ids) == [1] and list(msg.fn_keys) == [7] and msg.priorities is None
    assert {k: bytes(protocol.as_buffer(v)) for k, v in msg.functions.items()} == {7: b"fn"}
    assert not rig.woken() and not rig.outbox.awake


def test_a_priority_goes_with_it(rig: Rig) -> None:
    rig.outbox.put(task=(1, 7, b"args", 2.5))
    (msg,) = rig.received()
    assert isinstance(msg, protocol.Tasks) and msg.priorities is not None and list(msg.priorities) == [2.5]


def test_under_load_tasks_wait_for_the_io_thread(rig: Rig) -> None:
    rig.busy = True
    rig.outbox.put(task=(1, 7, b"a", NO_PRIORITY), function=(7, b"fn"))
    assert rig.received() == [] and rig.woken()
    rig.busy = False  # a wake-up is on its way: the next task joins the batch, it does not pass it
    rig.outbox.put(task=(2, 7, b"b", NO_PRIORITY))
    assert rig.received() == []
    tasks, _, functions, _ = rig.outbox.take()
    assert [t[0] for t in tasks] == [1, 2] and list(functions) == [7]


def test_a_task_never_passes_a_batch_being_sent(rig: Rig) -> None:
    """Between take() and sent() the I/O thread holds tasks (and the functions they carry) not yet sent."""
    rig.busy = True
    rig.outbox.put(task=(1, 7, b"a", NO_PRIORITY), function=(7, b"fn"))
    rig.outbox.take()
    rig.busy = False
    rig.outbox.put(task=(2, 7, b"b", NO_PRIORITY))  # would reach the interchange before function 7
    assert rig.received() == [] and rig.woken()
    rig.outbox.sent()
    tasks, _, _, _ = rig.outbox.take()  # the I/O thread's next turn sends it
    assert [t[0] for t in tasks] == [2]
    rig.outbox.sent()
    rig.outbox.put(task=(3, 7, b"c", NO_PRIORITY))  # now nothing waits: it goes at once
    assert [list(m.ids) for m in rig.received() if isinstance(m, protocol.Tasks)] == [[3]]


def test_what_the_socket_cannot_take_waits_in_order_and_the_io_thread_is_woken(rig: Rig) -> None:
    big = os.urandom(8 << 20)  # far more than a socket buffer
    rig.outbox.put(task=(1, 7, big, NO_PRIORITY), function=(7, b"fn"))
    assert rig.link.outgoing and rig.woken() and rig.outbox.awake
    rig.outbox.put(task=(2, 7, b"small", NO_PRIORITY))  # a wake-up is on its way: queued behind
    rig.outbox.take()
    rig.outbox.sent()
    # The I/O thread's part: flush when the socket has room (here: as the test reads).
    got: list[protocol.Message] = []
    while rig.link.outgoing:
        rig.link.flush()
        got += rig.received()
    got += rig.received()
    assert [list(m.ids) for m in got if isinstance(m, protocol.Tasks)] == [[1]]
    (msg,) = [m for m in got if isinstance(m, protocol.Tasks)]
    assert bytes(protocol.as_buffer(msg.payloads[0])) == big


def test_control_messages_and_tasks_with_needs_always_go_through_the_io_thread(rig: Rig) -> None:
    rig.outbox.put(control=protocol.Heartbeat())
    assert rig.received() == [] and rig.woken()
    rig.outbox.take()
    rig.outbox.sent()
    rig.outbox.put(task=(1, 7, b"a", NO_PRIORITY), needs=(1.0, 0.0, 0))  # its TaskNeeds must go first
    assert rig.received() == [] and rig.woken()


def test_a_closed_link_queues_the_task(rig: Rig) -> None:
    rig.link.close()
    rig.outbox.put(task=(1, 7, b"a", NO_PRIORITY))
    tasks, _, _, _ = rig.outbox.take()
    assert [t[0] for t in tasks] == [1]
