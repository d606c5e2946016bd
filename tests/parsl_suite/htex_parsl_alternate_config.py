"""Parsl's own test suite against htex, second configuration: ``pytest --config=THIS_FILE``.

The shape of Parsl's ``parsl/tests/configs/htex_local_alternate.py`` (monitoring on,
blocks started on demand, other staging providers, retries, memoization,
checkpoints, JSON logging), one import changed, and one thing off:
``usage_tracking`` (it sends UDP packets to Parsl's server; no traffic leaves this machine).
"""

import os

from parsl.config import Config
from parsl.data_provider.file_noop import NoOpFileStaging
from parsl.data_provider.ftp import FTPInTaskStaging
from parsl.data_provider.http import HTTPInTaskStaging
from parsl.data_provider.zip import ZipFileStaging
from parsl.dataflow.memoization import BasicMemoizer
from parsl.launchers import SingleNodeLauncher
from parsl.logconfigs.json import JSONLogging
from parsl.monitoring import MonitoringHub
from parsl.providers import LocalProvider

from htex.parsl import HighThroughputExecutor


def fresh_config() -> Config:
    return Config(
        executors=[
            HighThroughputExecutor(
                address="127.0.0.1",
                label="htex_Local",
                working_dir=os.getcwd() + "/test_htex_alternate",
                storage_access=[ZipFileStaging(), FTPInTaskStaging(), HTTPInTaskStaging(), NoOpFileStaging()],
                worker_debug=True,
                cores_per_worker=1,
                heartbeat_period=2,
                heartbeat_threshold=5,
                poll_period=100,
                encrypted=True,
                provider=LocalProvider(init_blocks=0, min_blocks=0, max_blocks=5, launcher=SingleNodeLauncher()),
                block_error_handler=False,
            )
        ],
        strategy="simple",
        memoizer=BasicMemoizer(memoize=True, checkpoint_mode="task_exit"),
        retries=2,
        monitoring=MonitoringHub(monitoring_debug=False, resource_monitoring_interval=1),
        usage_tracking=0,
        project_name="parsl htex_local_alternate test configuration",
        initialize_logging=JSONLogging(level=1),
    )
