"""Parsl's own test suite against htex: ``pytest --config=THIS_FILE`` (see scripts/test.sh).

The same shape as Parsl's ``parsl/tests/configs/htex_local.py``, one import changed.
"""

from parsl.config import Config
from parsl.launchers import SimpleLauncher
from parsl.providers import LocalProvider

from htex.parsl import HighThroughputExecutor


def fresh_config() -> Config:
    return Config(
        executors=[
            HighThroughputExecutor(
                label="htex_local",
                loopback_address="::1",
                worker_debug=True,
                cores_per_worker=1,
                encrypted=True,
                provider=LocalProvider(init_blocks=1, max_blocks=1, launcher=SimpleLauncher()),
            )
        ],
        strategy="none",
    )
