"""How many tasks a pool may hold beyond its workers (prefetch): a fixed number, or ``"auto"``.

Prefetch hides the round trip: a worker that finishes a task finds the next
one already in its pool instead of waiting for the interchange to hear of the
result and send another.  It costs balance: a task queued in one pool waits
there even when another pool's workers are idle (work stealing, in
``stealing.py``, takes such tasks back).

``"auto"`` (the executor's default) keeps each pool supplied with about what
its workers finish in a round trip, measured from what the interchange sees::

    task_time = interval * workers                      a worker's seconds per task
    prefetch  = 0                                       if task_time >= LONG_TASK
              = ceil(HEADROOM * max(round_trip, ROUND_TRIP_FLOOR) / interval), at most AUTO_MAX

``interval`` is the pool's time per task (its busy time over the tasks it
finished, a moving average over TAU of busy time, so a change of workload
shows within a tenth of a second: W1's 5,000 no-op tasks take 0.15 s, and
with TAU at 0.5 s they ran on the estimate of the warm-up before them, at
half the rate).  The average also forgets by tasks, whichever is faster:
by e each time the pool finishes TASK_ROUNDS tasks per worker.  A long
task's result comes after a silence that TAU alone takes 0.3-0.4 s of busy
time to forget (a 2 s silence is 2 s of busy time for one task): in W6,
where 16 tasks of 2 s hide among 2,000 of 1 ms on two pools, each pool
whose two workers had both run a long task then got 1-3 tasks of prefetch
for 0.3 s while its workers ran 1 ms tasks, waiting a round trip for each.
Forgetting after 8 of them (2 workers) halves those waits; W6's makespan, in
15 side-by-side pairs, is 0.7% shorter (median; shorter in 12).  W4's results
(25 ms apart) still forget by time, so it is unchanged.
Counting per worker keeps a wave of long tasks long: 64 workers finishing
2 s tasks together is one round, not enough to forget the 2 s.
``round_trip`` is the time from a task sent to an
empty pool to its first result (the smallest recent one: it includes one
task's run).  Consequences:

- Long tasks get none: a prefetched task of 2 s may wait 2 s in a busy pool
  while another pool idles, to save a round trip of a millisecond.  A pool is
  never sent prefetch before its first results say its tasks are short.
- Tasks of 0.1-0.5 s get what covers the round trip: one.
- Tasks under LOOKAHEAD_TASK (0.1 s) get at least one per worker, which the pool
  hands to the worker ahead (process_worker_pool's Lookahead): each worker finds
  its next task waiting.  W4 (tasks of 50 ms on 2 workers) got 1 for the pool
  before, so one worker of the two waited a round trip for each task (its gap
  from one task to the next 1.25 ms, against 0.4 with a task waiting).
- Short tasks get what hides the round trip, and more on a slow link (50 ms
  of latency and tasks of 1 ms on 2 workers: 200).  The estimate feeds itself
  upwards from a starved start: more prefetch, more tasks a second, a shorter
  interval, more prefetch, up to AUTO_MAX.
- ROUND_TRIP_FLOOR: an idle round trip on one host is 0.3-1 ms, but under load
  the client, the interchange and the pool share the cores, and what a worker
  waits for is the loaded round trip.  Covering at least 5 ms (10 with
  HEADROOM) of work per pool is what lets no-op tasks go in batches of
  hundreds; the cost, a pool's last 10 ms of queued work, is what stealing
  takes back when another pool idles.

On the wire (``Register.prefetch_capacity``) "auto" is ``AUTO`` (-1); a
number >= 0 is a fixed capacity, and 0 is the spec's behaviour exactly (a
pool gets a task only for an idle worker).
"""

from __future__ import annotations

import math

AUTO = -1  # Register.prefetch_capacity of a pool whose prefetch the interchange adapts
AUTO_MAX = 256  # the most "auto" gives one pool: what a fixed prefetch of 256 does for no-op tasks (W1)
HEADROOM = 2.0  # round trips covered: one is the average, a second absorbs the jitter of a loaded host
ROUND_TRIP_FLOOR = 0.005  # s: the least round trip assumed (see the docstring)
LONG_TASK = 0.5  # s a worker spends on a task, from which a pool gets no prefetch
# s a worker spends on a task, below which its pool hands it its next task ahead (process_worker_pool's
# Lookahead): "auto" then gives a pool at least one task per worker, so that each has one to be handed.
LOOKAHEAD_TASK = 0.1
TAU = 0.1  # s of busy time: the time constant of the interval's moving average
TASK_ROUNDS = 4  # ... or tasks per worker, whichever forgets faster (see the docstring)


def parse(value: int | str) -> int:
    """The executor's ``prefetch_capacity`` (an int >= 0, or "auto") as the pool's flag and the wire carry it."""
    if value == "auto":
        return AUTO
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ValueError(f'prefetch_capacity must be "auto" or an integer >= 0, got {value!r}')
    return value


def flag(value: int) -> str:
    """The pool's ``--prefetch_capacity`` for a wire value (``auto`` for AUTO)."""
    return "auto" if value == AUTO else str(value)


class Auto:
    """The adaptive prefetch of one pool.  The interchange tells it what it does (``sent``, ``finished``) and
    reads ``cap``, the prefetch it may give the pool now."""

    __slots__ = ("busy", "cap", "done", "mark", "probe", "round_trip", "workers")

    def __init__(self, workers: int) -> None:
        self.workers = workers
        self.cap = 0  # nothing before the first results: the tasks may be long
        self.busy = 0.0  # decayed seconds the pool held tasks
        self.done = 0.0  # decayed tasks it finished in that time
        self.mark = 0.0  # when the busy time last started counting (0: the pool holds nothing)
        self.probe = 0.0  # when tasks went to the pool while it held none: the round trip's start
        self.round_trip = math.inf

    def sent(self, now: float, was_empty: bool) -> None:
        """Tasks went to the pool; ``was_empty``: it held none before."""
        if was_empty:
            self.mark = now
            self.probe = now

    def finished(self, n: int, now: float, still_busy: bool) -> int:
        """The pool sent ``n`` results; ``still_busy``: it holds more tasks.  Returns the new ``cap``."""
        if self.probe:
            sample = now - self.probe
            # The smallest recent round trip, rising slowly: one slow answer (a busy host) is not the link.
            self.round_trip = sample if sample < self.round_trip else self.round_trip + 0.1 * (sample - self.round_trip)
            self.probe = 0.0
        if self.mark:
            elapsed = max(0.0, now - self.mark)
            decay = math.exp(-max(elapsed / TAU, n / (TASK_ROUNDS * self.workers)))
            self.busy = self.busy * decay + elapsed
            self.done = self.done * decay + n
        self.mark = now if still_busy else 0.0
        if self.done > 0 and self.busy > 0 and self.round_trip < math.inf:
            interval = self.busy / self.done
            task_time = interval * self.workers
            if task_time >= LONG_TASK:
                self.cap = 0
            else:
                cap = math.ceil(HEADROOM * max(self.round_trip, ROUND_TRIP_FLOOR) / interval)
                self.cap = min(AUTO_MAX, max(cap, self.workers) if task_time < LOOKAHEAD_TASK else cap)
        return self.cap
