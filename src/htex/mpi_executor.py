"""MPIExecutor: the HighThroughputExecutor for MPI tasks, each over some of a block's nodes (see mpi.py).

::

    from htex import MPIExecutor, SimpleLauncher
    from htex.providers.slurm import SlurmProvider

    ex = MPIExecutor(max_workers_per_block=2, mpi_launcher="srun",
                     provider=SlurmProvider(nodes_per_block=4, launcher=SimpleLauncher()))
    ex.submit(run_my_mpi_app, {"num_nodes": 2, "ranks_per_node": 8})

One pool per block (hence SimpleLauncher: the pool runs on the block's first
node), ``max_workers_per_block`` workers in it, each running one MPI task at
a time over the nodes the task asked for.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from concurrent.futures import Future
from typing import Any

from . import mpi, poolcmd
from .errors import ConfigurationError
from .executor import HighThroughputExecutor
from .launchers import SimpleLauncher
from .providers.base import ExecutionProvider
from .providers.local import LocalProvider

__all__ = ["MPIExecutor"]

# Workers are as many as max_workers_per_block, whatever the cores: they only wait for MPI programs.
_ANY_CORES = 1e-9


class MPIExecutor(HighThroughputExecutor):
    """Run MPI tasks: ``submit(fn, {"num_nodes": N, "ranks_per_node": R}, ...)`` runs ``fn`` on a worker once N
    of its block's nodes are free; ``fn`` (a Parsl bash app's command, or your subprocess call) starts its MPI
    program with ``$PARSL_MPI_PREFIX``.  Other parameters are the HighThroughputExecutor's."""

    def __init__(self, label: str = "MPIExecutor", provider: ExecutionProvider | None = None, *,
                 max_workers_per_block: int = 1, mpi_launcher: str = "mpiexec", **kwargs: Any) -> None:
        for name in ("max_workers", "max_workers_per_node", "cores_per_worker"):
            if name in kwargs:
                raise ConfigurationError(f"MPIExecutor sets {name} itself: give max_workers_per_block")
        if max_workers_per_block < 1:
            raise ConfigurationError(f"max_workers_per_block must be >= 1, got {max_workers_per_block}")
        if mpi_launcher not in mpi.LAUNCHERS:
            raise ConfigurationError(f"mpi_launcher={mpi_launcher!r} is not one of {list(mpi.LAUNCHERS)}")
        if provider is None:
            provider = LocalProvider(init_blocks=1, min_blocks=0, max_blocks=1, launcher=SimpleLauncher())
        if not self._one_pool_per_block(provider):
            raise ConfigurationError(
                f"MPIExecutor needs a provider whose launcher is SimpleLauncher (one pool per block, on its first "
                f"node, which hands out the block's nodes), got {type(provider.launcher).__name__}"
            )
        super().__init__(label, provider, max_workers=max_workers_per_block, cores_per_worker=_ANY_CORES, **kwargs)
        self.max_workers_per_block = max_workers_per_block
        self.mpi_launcher = mpi_launcher

    @staticmethod
    def _one_pool_per_block(provider: ExecutionProvider) -> bool:
        return isinstance(provider.launcher, SimpleLauncher)

    def submit(self, func: Callable[..., Any], resource_specification: dict[str, Any] | None, *args: Any,
               **kwargs: Any) -> Future[Any]:
        """Run ``func(*args, **kwargs)`` as an MPI task; InvalidResourceSpecification (or MPINodesUnavailable:
        more nodes than a block has) at once for a specification that cannot run."""
        spec = mpi.check_spec(resource_specification or {}, self.provider.nodes_per_block)
        rest = {k: v for k, v in (resource_specification or {}).items() if k == "priority"}
        return super().submit(mpi.run_task, rest, func, dataclasses.asdict(spec), *args, **kwargs)

    def _pool_launch(self) -> poolcmd.PoolLaunch:
        return dataclasses.replace(super()._pool_launch(), mpi_launcher=self.mpi_launcher)
