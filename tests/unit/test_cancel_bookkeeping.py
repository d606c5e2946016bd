"""cancel.Withdrawals: the interchange's cancels waiting for their pools' answers (pure bookkeeping)."""

from __future__ import annotations

from htex import protocol
from htex.cancel import Withdrawals


def test_an_answer_once_every_pool_has_answered() -> None:
    w = Withdrawals()
    sends, answer = w.begin(9, [1], {b"A": [2, 3], b"B": [4]}, kill=False)
    assert answer is None
    (a, wa), (b, wb) = sends
    assert (a, wa.ids, b, wb.ids) == (b"A", [2, 3], b"B", [4]) and wa.req != wb.req and not wa.kill
    assert w.answered(b"B", protocol.Withdrawn(req=wa.req, withdrawn=[2, 3], started=[])) == ([], None)  # not B's
    assert w.answered(b"A", protocol.Withdrawn(req=wa.req, withdrawn=[3, 4], started=[2])) == ([3], None)  # 4: not A's
    done = w.answered(b"B", protocol.Withdrawn(req=wb.req, withdrawn=[4], started=[]))
    assert done == ([4], protocol.Cancelled(req=9, withdrawn=[1, 3, 4], started=[2]))
    assert w.answered(b"B", protocol.Withdrawn(req=wb.req, withdrawn=[], started=[])) == ([], None)  # answered once


def test_nothing_held_by_pools_is_answered_at_once() -> None:
    sends, answer = Withdrawals().begin(1, [5, 6], {}, kill=True)
    assert sends == [] and answer == protocol.Cancelled(req=1, withdrawn=[5, 6], started=[])


def test_a_pool_lost_before_it_answered_may_have_started_its_tasks() -> None:
    w = Withdrawals()
    sends, _ = w.begin(3, [], {b"A": [1], b"B": [2]}, kill=True)
    assert w.pool_gone(b"A") == []  # B has not answered yet
    assert w.answered(b"B", protocol.Withdrawn(req=sends[1][1].req, withdrawn=[2], started=[])) == \
        ([2], protocol.Cancelled(req=3, withdrawn=[2], started=[1]))
    assert w.answered(b"A", protocol.Withdrawn(req=12345, withdrawn=[7], started=[])) == ([], None)  # not ours
