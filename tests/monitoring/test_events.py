"""The event batches on the wire: every event type round-trips, and what a peer may send wrong is
refused with BadBatch (the hub counts and drops it), never anything else."""

from __future__ import annotations

import json
import math
from typing import Any

import pytest

from htex.monitoring import events as ev

SAMPLES: list[Any] = [
    ev.RunStarted(1.0, "label", "/run", "host"), ev.RunEnded(2.0),
    ev.TaskSubmitted(1, 1.5, "f", 10, None), ev.TaskSubmitted(2, 1.5, "g", 10, -1.5), ev.TaskResent(1, 3.0, 1),
    ev.TasksSubmitted([3, 4], 1.0, [0, 2], ["f", "g"], [5, 6], [None, 2.5]), ev.TasksDone([3], 4.0, [0], [7]),
    ev.TasksSubmittedPacked(2, ["f", "g"], ev.pack_rows([(5, 1.0, 10, 1, 2.5), (6, 1.5, 0, 0, math.nan)], 5)),
    ev.TasksDonePacked(1, ev.pack_rows([(5, 2.0, 7)], 3)),
    ev.TasksDispatched([1, 2], 2.0, "p"), ev.TasksStarted([1], 2.5, "p", 3),
    ev.TaskEnded(1, 4.0, "failed", 9, "ValueError", "no", "Traceback"), ev.TaskEnded(2, 4.0, "done", 9, None, None, None),
    ev.PoolRegistered("p", 1.0, "0", "h", 4), ev.PoolInfo("p", 1.0, "0", "h", 4, 8, 1000, ["0"]),
    ev.PoolState("p", 5.0, "lost", "silent"), ev.BlockState("0", 1.0, "pending", "pending", "12", "SlurmProvider"),
    ev.BlockState("1", 1.0, "requested", "", None, None), ev.ResourceSample("p", -1, 1.0, 12.5, 1 << 20),
]


def test_every_event_type_round_trips() -> None:
    assert {type(e) for e in SAMPLES} == set(ev.CODES)
    batch = ev.decode_batch(ev.encode_batch("run", "client", SAMPLES))
    assert (batch.run_id, batch.source, batch.events) == ("run", "client", SAMPLES)
    assert [type(e) for e in batch.events] == [type(e) for e in SAMPLES]


def _frame(events: Any, run: Any = "run") -> bytes:
    return b"HM\x01" + json.dumps({"run": run, "source": "x", "events": events}).encode()


@pytest.mark.parametrize("frame", [
    b"", b"HX\x05{}", b"HM\x02{}", b"HM\x01not json", b"HM\x01" + b"[" * 100_000, b"HM\x01[]",
    _frame([], run=7), _frame({"a": 1}), _frame([[999, 1]]), _frame(["x"]), _frame([[]]),
    _frame([[ev.CODES[ev.RunEnded]]]),  # a field missing
    _frame([[ev.CODES[ev.RunEnded], 1.0, 2.0]]),  # one too many
    _frame([[ev.CODES[ev.TaskResent], True, 1.0, 1]]),  # a bool is not a task id
    _frame([[ev.CODES[ev.TaskResent], 1, "soon", 1]]),
    _frame([[ev.CODES[ev.TasksDispatched], [1, "2"], 1.0, "p"]]),
    _frame([[ev.CODES[ev.PoolInfo], "p", 1.0, "0", "h", 4, 8, 1000, "0"]]),  # accelerators: a list
    _frame([[ev.CODES[ev.TasksDone], [1], 1.0, [0.5], [1]]]),  # an offset is whole microseconds
    _frame([[ev.CODES[ev.TasksDonePacked], 2, ev.pack_rows([(1, 1.0, 1)], 3)]]),  # 2 rows said, 1 sent
    _frame([[ev.CODES[ev.TasksDonePacked], 1, "not base64!"]]),
    _frame([[ev.CODES[ev.TasksDonePacked], 1, ev.pack_rows([(1.5, 1.0, 1)], 3)]]),  # a task id is whole
    _frame([[ev.CODES[ev.TasksDonePacked], 1, ev.pack_rows([(1, math.inf, 1)], 3)]]),  # a time is finite
    _frame([[ev.CODES[ev.TasksDonePacked], 1, ev.pack_rows([(-1, 1.0, 1)], 3)]]),
    _frame([[ev.CODES[ev.TasksSubmittedPacked], 1, ["f"], ev.pack_rows([(1, 1.0, 1, 1, 0.0)], 5)]]),  # no name 1
])
def test_bad_batches_are_refused_by_name(frame: bytes) -> None:
    with pytest.raises(ev.BadBatch):
        ev.decode_batch(frame)
