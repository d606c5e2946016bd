from __future__ import annotations

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
