from __future__ import annotations

from typing import Any

from htex.scaling import MAX_FAILED_BLOCKS, ScalingState, decide


def state(**kw: int | float) -> ScalingState:
    base = dict(outstanding=0, live_blocks=0, slots_per_block=2, min_blocks=0, max_blocks=4,
                parallelism=1.0, failed_in_a_row=0)
    base.update(kw)
    return ScalingState(**base)  # type: ignore[arg-type]


def test_idle_keeps_min_blocks() -> None:
    assert decide(state(min_blocks=2)).scale_out == 2
    assert decide(state(min_blocks=2, live_blocks=2)).scale_out == 0


def test_work_asks_for_blocks_up_to_max() -> None:
    assert decide(state(outstanding=3)).scale_out == 2
    assert decide(state(outstanding=100)).scale_out == 4
    assert decide(state(outstanding=100, live_blocks=4)).scale_out == 0


def test_parallelism_scales_the_want() -> None:
    assert decide(state(outstanding=8, parallelism=0.5)).scale_out == 2
    assert decide(state(outstanding=1, parallelism=0.0)).scale_out == 1  # any work needs one block


def test_repeated_failures_give_up() -> None:
    assert decide(state(outstanding=1, failed_in_a_row=MAX_FAILED_BLOCKS)).give_up


def test_idle_blocks_scale_in_down_to_what_is_wanted() -> None:
    assert decide(state(live_blocks=3, idle_blocks=("2", "1", "0"))).scale_in == ("2", "1", "0")
    assert decide(state(live_blocks=3, min_blocks=1, idle_blocks=("2", "1", "0"))).scale_in == ("2", "1")
    # two tasks on 2-slot blocks want one block: one idle block of three may go
    assert decide(state(live_blocks=3, outstanding=2, idle_blocks=("2",))).scale_in == ("2",)


def test_busy_blocks_are_never_scaled_in() -> None:
    assert decide(state(live_blocks=2, outstanding=0, idle_blocks=())).scale_in == ()


def test_idle_blocks_from_manager_records() -> None:
    from types import SimpleNamespace

    from htex.scaling import idle_blocks as _idle_blocks

    managers: list[Any] = [
        SimpleNamespace(block_id="0", tasks=0, idle_duration=50.0),
        SimpleNamespace(block_id="1", tasks=0, idle_duration=500.0),
        SimpleNamespace(block_id="1", tasks=1, idle_duration=0.0),  # a second pool of block 1 is busy
        SimpleNamespace(block_id="2", tasks=0, idle_duration=300.0),
        SimpleNamespace(block_id="3", tasks=0, idle_duration=200.0),
    ]
    assert _idle_blocks(["0", "1", "2", "3"], managers, 120) == ("2", "3")
    assert _idle_blocks(["0", "1", "2"], managers, 10) == ("2", "0")
