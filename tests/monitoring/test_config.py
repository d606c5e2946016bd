"""Monitoring options: bad ones are refused by name, before anything starts; the URL a target means."""

from __future__ import annotations

import os
from typing import Any

import pytest

from htex import ConfigurationError, HighThroughputExecutor, Monitoring
from htex.monitoring.store import store_url


@pytest.mark.parametrize("kw, words", [
    ({"resource_period": 0}, "resource_period"),
    ({"flush_period": -1}, "flush_period"),
    ({"start_hub": False}, "hub_address and hub_port"),
    ({"hub_port": 70000}, "hub_port"),
])
def test_bad_options_are_refused(kw: dict[str, Any], words: str) -> None:
    with pytest.raises(ConfigurationError, match=words):
        Monitoring(**kw)


def test_the_executor_takes_true_false_or_options() -> None:
    assert HighThroughputExecutor(monitoring=True).monitoring == Monitoring()
    assert HighThroughputExecutor(monitoring=False).monitoring is None
    assert HighThroughputExecutor().monitoring is None
    spec = Monitoring(resource_period=2)
    assert HighThroughputExecutor(monitoring=spec).monitoring is spec
    with pytest.raises(ConfigurationError, match="monitoring must be"):
        HighThroughputExecutor(monitoring="yes")  # type: ignore[arg-type]


def test_store_targets(tmp_path: Any) -> None:
    assert store_url(str(tmp_path)) == f"sqlite:///{tmp_path}/monitoring.db"
    assert store_url("x.db") == f"sqlite:///{os.path.abspath('x.db')}"
    url = "postgresql+psycopg://u:p@h/db"
    assert store_url(url) == url
