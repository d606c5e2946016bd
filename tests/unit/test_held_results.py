"""worker.Held: the results a worker has not sent, in the memory it shares with its pool, as the pool reads them."""

from __future__ import annotations

import mmap

from htex import protocol, worker


def _memory() -> mmap.mmap:
    return mmap.mmap(-1, worker.SHARED_SIZE)


def test_the_pool_reads_what_finished_before_the_running_task() -> None:
    mem = _memory()
    held = worker.Held(mem)
    held.start(1)
    assert held.add(1, b"one")
    held.start(2)
    assert held.add(2, b"two")
    assert worker.read_held(mem) == [(1, b"one")]  # 2's result is not covered until the next task starts
    held.start(3)
    assert worker.read_held(mem) == [(1, b"one"), (2, b"two")]
    assert protocol.STARTED.unpack_from(mem)[0] == 3  # the pool's started word is the head's first field


def test_after_a_send_the_next_task_starts_with_nothing_held() -> None:
    mem = _memory()
    held = worker.Held(mem)
    held.start(1)
    held.add(1, b"one")
    held.start(2)  # the batch's last task: its result goes with 1's
    held.sent()
    assert (held.ids, held.blobs) == ([], [])
    assert worker.read_held(mem) == [(1, b"one")]  # sent, then killed before the next start: the pool drops it
    held.start(3)
    assert worker.read_held(mem) == []


def test_a_result_that_does_not_fit_is_not_held() -> None:
    mem = _memory()
    held = worker.Held(mem)
    held.start(1)
    assert not held.add(1, b"x" * worker.SHARED_SIZE)
    assert held.ids == []
    assert held.add(1, b"small")


def test_a_torn_size_reads_only_complete_entries() -> None:
    mem = _memory()
    held = worker.Held(mem)
    held.start(1)
    held.add(1, b"one")
    held.add(2, b"two")
    worker.HEAD.pack_into(mem, 0, 3, held.end - worker.HEAD.size - 1)  # the second entry cut short
    assert worker.read_held(mem) == [(1, b"one")]
