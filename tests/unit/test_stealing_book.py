"""stealing.Stealing, the interchange's book of steals: which pool is asked, for which tasks, and what may move."""

from __future__ import annotations

from dataclasses import dataclass, field

from htex import stealing


@dataclass
class Pool:
    identity: bytes
    workers: int
    tasks: list[int] = field(default_factory=list)
    capacity: int = 0

    @property
    def held_ids(self) -> list[int]:
        return self.tasks

    @property
    def held_count(self) -> int:
        return len(self.tasks)

    @property
    def free(self) -> int:
        return max(0, self.capacity - len(self.tasks))

    @property
    def idle(self) -> int:
        return max(0, min(self.free, self.workers - len(self.tasks)))


def _book(*pools: Pool) -> stealing.Stealing:
    book = stealing.Stealing()
    for p in pools:
        book.sent(p)
    book.look = True
    return book


def test_the_busiest_pool_is_asked_for_half_its_queue_newest_first() -> None:
    busy = Pool(b"busy", workers=1, tasks=list(range(1, 10)), capacity=9)  # 1 running, 8 queued
    idle = Pool(b"idle", workers=1, capacity=9)
    book = _book(busy, idle)
    req, victim, ids = book.plan([busy, idle])  # type: ignore[misc]
    assert victim is busy and ids == [9, 8, 7, 6] and req >= stealing.FIRST_REQ
    assert book.plan([busy, idle]) is None  # one Withdraw in flight at a time


def test_only_asked_ids_move_and_an_empty_answer_makes_the_pool_exhausted() -> None:
    busy, idle = Pool(b"busy", 1, [1, 2, 3], 9), Pool(b"idle", 1, [], 9)
    book = _book(busy, idle)
    req, _, ids = book.plan([busy, idle])  # type: ignore[misc]
    assert book.answered(req + 1, b"busy") is None  # not ours
    assert book.answered(req, b"idle") is None  # not from the pool asked
    assert book.answered(req, b"busy") == frozenset(ids)
    book.moved(b"busy", 0)
    assert book.plan([busy, idle]) is None  # everything it holds is at a worker: not asked again...
    book.sent(busy)  # ...until it is sent more
    book.look = True
    assert book.plan([busy, idle]) is not None


def test_nothing_to_do_without_an_idle_pool_or_a_victim() -> None:
    a, b = Pool(b"a", 1, [1, 2], 3), Pool(b"b", 1, [3], 3)
    assert _book(a, b).plan([a, b]) is None  # b's one worker is busy
    c, d = Pool(b"c", 2, [1, 2], 4), Pool(b"d", 1, [], 1)
    assert _book(c, d).plan([c, d]) is None  # c queues nothing beyond its workers


def test_a_lost_victim_forgets_the_steal_in_flight() -> None:
    busy, idle = Pool(b"busy", 1, [1, 2, 3], 9), Pool(b"idle", 1, [], 9)
    book = _book(busy, idle)
    req, _, _ = book.plan([busy, idle])  # type: ignore[misc]
    book.gone(b"busy")
    assert book.in_flight is None and not book.victims
    assert book.answered(req, b"busy") is None  # a late answer moves nothing
