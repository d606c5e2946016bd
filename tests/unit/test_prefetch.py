"""prefetch.Auto, the adaptive prefetch of one pool: a pure function of what the interchange saw."""

from __future__ import annotations

import pytest

from htex import prefetch


def _run(auto: prefetch.Auto, task_s: float, rtt: float, rounds: int = 50) -> int:
    """A pool of auto.workers workers, always busy, finishing one task per task_s / workers."""
    t = 1000.0
    auto.sent(t, was_empty=True)
    t += rtt
    auto.finished(1, t, still_busy=True)  # the first result: the round trip plus a task
    for _ in range(rounds):
        t += task_s / auto.workers
        auto.finished(1, t, still_busy=True)
    return auto.cap


def test_nothing_before_the_first_results() -> None:
    assert prefetch.Auto(4).cap == 0


def test_long_tasks_get_none() -> None:
    assert _run(prefetch.Auto(2), task_s=prefetch.LONG_TASK * 1.5, rtt=0.001) == 0
    assert _run(prefetch.Auto(64), task_s=2.0, rtt=0.001) == 0


def test_short_tasks_cover_two_round_trips_of_work() -> None:
    # 1 ms tasks on 2 workers: 2,000 a second; two round trips of at least 5 ms each: 20 tasks.
    assert _run(prefetch.Auto(2), task_s=0.001, rtt=0.0005) == pytest.approx(20, abs=1)  # ceil of a float
    # The same on a link of 50 ms: 200 (about: the first, slow sample fades slowly).
    assert _run(prefetch.Auto(2), task_s=0.001, rtt=0.050, rounds=2000) == pytest.approx(200, rel=0.05)
    # Tasks of 50 ms: one per worker (each finds its next task waiting: the pool hands it ahead).
    assert _run(prefetch.Auto(2), task_s=0.05, rtt=0.0005) == 2
    assert _run(prefetch.Auto(8), task_s=0.05, rtt=0.0005) == 8
    # Tasks of 0.2 s: the round trip's worth, one for the pool (the pool hands none ahead at that length).
    assert _run(prefetch.Auto(2), task_s=0.2, rtt=0.0005) == 1


def test_bounded() -> None:
    assert _run(prefetch.Auto(8), task_s=0.00001, rtt=0.001) == prefetch.AUTO_MAX


def test_a_change_to_long_tasks_shows_within_a_second() -> None:
    auto = prefetch.Auto(2)
    assert _run(auto, task_s=0.001, rtt=0.0005) > 0
    auto.finished(2, 1000.0 + 10.0, still_busy=True)  # then 2 results after 2 s of silence (the pool held tasks)
    assert auto.cap == 0


def test_short_tasks_after_a_long_one_get_their_prefetch_back_within_a_few_rounds() -> None:
    """W6: a 2 s task among 1 ms ones.  The long silence makes the pool's cap 0; once each worker has finished
    a few short tasks since, it is back (by busy time alone it took 0.3 s, a round trip per task meanwhile)."""
    auto = prefetch.Auto(2)
    before = _run(auto, task_s=0.001, rtt=0.0005)
    t = 1000.0 + 10.0
    assert auto.finished(1, t, still_busy=True) == 0  # 2 s and more of silence: a long task
    for _ in range(20 * prefetch.TASK_ROUNDS * auto.workers):  # 160 tasks of 1 ms on 2 workers: 80 ms
        t += 0.0005
        auto.finished(1, t, still_busy=True)
    assert auto.cap >= before // 2


def test_a_wave_of_long_tasks_on_many_workers_stays_long() -> None:
    """Forgetting counts tasks per worker: 64 workers finishing their 2 s tasks in a burst is one round."""
    auto = prefetch.Auto(64)
    assert _run(auto, task_s=2.0, rtt=0.001, rounds=64) == 0
    t = 1000.0 + 0.001 + 64 * 2.0 / 64 + 2.0  # then all 64 at once, after 2 s of silence, one message each
    for _ in range(64):
        t += 0.000_01
        assert auto.finished(1, t, still_busy=True) == 0


@pytest.mark.parametrize(("value", "wire"), [("auto", prefetch.AUTO), (0, 0), (256, 256)])
def test_parse(value: object, wire: int) -> None:
    assert prefetch.parse(value) == wire  # type: ignore[arg-type]
    assert prefetch.flag(wire) == str(value)


@pytest.mark.parametrize("bad", [-1, 1.5, "fast", True, None])
def test_parse_refuses(bad: object) -> None:
    with pytest.raises(ValueError, match="auto"):
        prefetch.parse(bad)  # type: ignore[arg-type]
