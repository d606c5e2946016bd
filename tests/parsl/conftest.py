"""Shared by the Parsl tests: a DFK loaded on htex, cleaned up after the test."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import pytest


@pytest.fixture
def load_dfk(tmp_path: Any) -> Iterator[Callable[..., Any]]:
    """``load_dfk(executor_kwargs=..., **config_kwargs)`` loads a DFK on htex; all are cleaned up after."""
    import parsl
    from parsl.config import Config

    import htex
    from htex.parsl import HighThroughputExecutor

    loaded: list[Any] = []

    def load(executor_kwargs: dict[str, Any] | None = None, **config: Any) -> Any:
        kw: dict[str, Any] = {
            "provider": htex.LocalProvider(init_blocks=1, max_blocks=1),
            "max_workers": 2,
            "heartbeat_period": 1,
            "heartbeat_threshold": 4,
        }
        kw.update(executor_kwargs or {})
        config.setdefault("run_dir", str(tmp_path / "runinfo"))
        dfk = parsl.load(Config(executors=[HighThroughputExecutor(**kw)], **config))
        loaded.append(dfk)
        return dfk

    yield load
    for dfk in loaded:
        if not dfk.cleanup_called:
            dfk.cleanup()
