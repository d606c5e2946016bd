"""How an executor starts: the named steps of ``HighThroughputExecutor.start()``, and the pools' command.

A base of ``HighThroughputExecutor`` (executor.py).  ``start()`` there calls these steps in
order; each makes one piece and keeps it on the executor, and ``_abandon_start`` undoes
them in reverse when a later step fails:

1. ``_decide_defaults``: encryption and shared memory, from what this host and provider offer;
2. ``_make_run_dir``: ``runinfo/NNN/<label>``, private, with the CURVE keys;
3. ``_open_endpoints``: the ports and UNIX-socket paths pools will reach (endpoints.py);
4. ``_start_monitoring``: the hub, when asked for (monitoring/session.py);
5. ``_make_client``: the I/O thread (client.py);
6. ``_spawn_interchange``: the interchange process, handed the listening sockets.

``launch_command`` is the shell command one block runs to start its pool (poolcmd.py).
"""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Callable
from typing import Any

import psutil

from . import endpoints, poolcmd, protocol, resources, rundir, security, shm
from .client import ClientThread, InterchangeProcess
from .errors import ConfigurationError
from .inflight import Inflight, Lifecycle
from .monitoring.config import Monitoring
from .providers.base import ExecutionProvider
from .providers.cluster import walltime_seconds
from .scaling import Blocks

log = logging.getLogger("htex.executor")


class StartSteps:
    # The executor's parameters (HighThroughputExecutor.__init__) these steps read ...
    label: str
    provider: ExecutionProvider
    launch_cmd: str | None
    address: str | None
    managed: bool
    worker_ports: tuple[int, int] | None
    worker_port_range: tuple[int, int]
    worker_debug: bool
    max_workers: int | float
    cores_per_worker: float
    mem_per_worker: float | None
    prefetch_capacity: int | str
    heartbeat_period: int
    heartbeat_threshold: int
    poll_period: int
    address_probe_timeout: int | None
    worker_logdir_root: str | None
    working_dir: str | None
    available_accelerators: list[str]
    cpu_affinity: str
    drain_period: float | None
    monitoring: Monitoring | None
    _packed_selector: str | None
    _lifecycle: Lifecycle
    _inflight: Inflight
    _blocks: Blocks
    set_bad_state_and_fail_all: Callable[[BaseException], None]
    # ... and what they decide or make.
    encrypted: bool | None
    shared_memory: bool | None
    run_dir: str
    client_dir: str | None
    cert_dir: str | None
    worker_task_port: int | None
    worker_result_port: int | None
    hub_address: str | None
    hub_port: int | None
    _endpoints: endpoints.Endpoints
    _monitoring: Any  # monitoring.session.MonitoringSession
    _monitor: Any  # monitoring.reporters.ClientReporter
    _client: ClientThread | None
    _interchange: InterchangeProcess | None
    _largest_pool: resources.Limits | None  # found at the first task with needs

    @property
    def logdir(self) -> str:
        return os.path.join(self.run_dir, self.label)

    def _decide_defaults(self) -> None:
        if self.encrypted is None:
            # Secure by default, as today's Parsl: every TCP socket is CURVE, wherever the pools run.
            self.encrypted = security.available()
        if self.shared_memory is None:
            self.shared_memory = not self.provider.remote and shm.supported()
        check(not self.shared_memory or shm.supported(), "shared_memory=True needs Linux (memfd)")

    def _make_run_dir(self) -> None:
        if not self.run_dir:
            self.run_dir = rundir.next_run_dir("runinfo")
        rundir.make_private_dir(self.logdir)
        if self.provider.script_dir is None:
            self.provider.script_dir = os.path.join(self.logdir, "submit_scripts")
        self.cert_dir = os.path.join(self.logdir, "certs") if self.encrypted else None
        if self.cert_dir:
            security.make_keys(self.cert_dir)

    def _open_endpoints(self) -> None:
        tcp = endpoints.needs_tcp(bool(self.encrypted), self.provider, self.address, self.launch_cmd, self.managed)
        if tcp and not self.encrypted:
            log.warning("executor %s is not encrypted: anyone who can reach its worker ports can register a pool "
                        "and read tasks; use encrypted=False only on a trusted network", self.label)
        self._endpoints = endpoints.Endpoints(self.address, self.provider)
        self._blocks.provider = self.provider
        self._endpoints.open(tcp, self.worker_ports, self.worker_port_range)
        self.worker_task_port = self._endpoints.task_port or None
        self.worker_result_port = self._endpoints.result_port or None

    def _start_monitoring(self) -> None:
        from .monitoring.session import MonitoringSession  # only when asked for

        assert self.monitoring is not None
        ends = self._endpoints
        self._monitoring = MonitoringSession.start(
            self.monitoring, run_dir=self.run_dir, logdir=self.logdir, ipc_dir=ends.ipc_dir, cert_dir=self.cert_dir,
            tcp=bool(ends.task_port), bind_address=ends.bind_address(), local_pools=ends.pool_local_url is not None)
        self.hub_address, self.hub_port = self._monitoring.hub_address, self._monitoring.hub_port
        self._monitor = self._blocks.monitor = self._monitoring.reporter
        self._monitor.provider = type(self.provider).__name__
        self._monitor.run_started(self.label, self.run_dir)

    def _make_client(self) -> ClientThread:
        self._inflight.arena = shm.Arena() if self.shared_memory else None
        return ClientThread(self.label, self.heartbeat_period, self.heartbeat_threshold,
                            self._lifecycle, self._inflight, self._inflight.arena,
                            on_event=self._blocks.on_event, on_broken=self.set_bad_state_and_fail_all,
                            monitor=self._monitor)

    def _spawn_interchange(self) -> None:
        assert self._client is not None
        ends = self._endpoints
        config = protocol.InterchangeConfig(
            tcp=bool(ends.task_port), client_fd=self._client.interchange_fd,
            bind_address=ends.bind_address(),
            worker_ports=(ends.task_port, ends.result_port) if ends.task_port else None,
            listen_fds=ends.listening_fds(), heartbeat_period=float(self.heartbeat_period),
            heartbeat_threshold=float(self.heartbeat_threshold), logdir=self.logdir, debug=self.worker_debug,
            cert_dir=self.cert_dir, ipc_name=ends.ipc_name, unix_fd=ends.unix_fd, manager_selector=self._packed_selector,
            monitor_url=self._monitoring.interchange_url if self._monitoring else None,
            monitor_run=self._monitoring.run_id if self._monitoring else None,
            monitor_cert_dir=self._monitoring.cert_dir if self._monitoring else None,
        )
        try:
            self._interchange = self._client.spawn_interchange(config, ends.inherited_fds(), self.logdir)
        finally:
            ends.handed_over()  # the interchange holds the listening sockets now

    def _abandon_start(self) -> None:
        """start() failed: undo what it did, in reverse."""
        self._lifecycle.begin_shutdown()
        self._blocks.cancel_all()
        if self._client is not None:
            self._client.abandon()
        if self._monitoring is not None:
            self._monitoring.stop()
        self._endpoints.remove()
        self._lifecycle.shut_down.set()

    def launch_command(self, block_id: str) -> str:
        """The shell command that starts one pool of ``block_id`` (launch_cmd, formatted)."""
        return poolcmd.launch_command(self.launch_cmd, self._pool_launch(), block_id)

    def _pool_launch(self) -> poolcmd.PoolLaunch:
        return poolcmd.PoolLaunch(
            python=sys.executable, debug=self.worker_debug, max_workers=self.max_workers,
            addresses=self._endpoints.addresses(), task_port=self._endpoints.task_port,
            local_url=self._endpoints.pool_local_url,
            prefetch_capacity=self.prefetch_capacity, cores_per_worker=self.cores_per_worker,
            mem_per_worker=self.mem_per_worker, poll_period=self.poll_period,
            logdir=os.path.join(self.worker_logdir_root, self.label) if self.worker_logdir_root else self.logdir,
            heartbeat_period=self.heartbeat_period, heartbeat_threshold=self.heartbeat_threshold,
            address_probe_timeout=self.address_probe_timeout or poolcmd.DEFAULT_PROBE_TIMEOUT,
            nodes_per_block=self.provider.nodes_per_block, cert_dir=self.cert_dir,
            working_dir=os.path.join(self.client_dir or "", self.working_dir) if self.working_dir else None,
            client_dir=self.client_dir, cpu_affinity=self.cpu_affinity,
            accelerators=tuple(self.available_accelerators), drain_period=self._pool_drain_period(),
            env=self._monitoring.pool_env if self._monitoring else {},
        )

    def _pool_drain_period(self) -> float | None:
        """When a pool drains, in seconds after it starts (the pool's flag): ``drain_period`` before the walltime."""
        if self.drain_period is None:
            return None
        walltime = walltime_seconds(self.provider.walltime)
        check(0 < self.drain_period < walltime,
               f"drain_period={self.drain_period} must be > 0 and less than the provider's walltime "
               f"({self.provider.walltime!r} = {walltime} s): pools drain that many seconds before their block ends")
        return walltime - self.drain_period

    def _limits(self) -> resources.Limits:
        """The largest pool this executor can start (for tasks with needs; see resources.limits)."""
        if self._largest_pool is None:
            self._largest_pool = self._find_limits()
        return self._largest_pool

    def _find_limits(self) -> resources.Limits:
        node_cores, node_gb = getattr(self.provider, "cores_per_node", None), getattr(self.provider, "mem_per_node", None)
        if not self.provider.remote:  # pools start on this host
            node_cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
            node_gb = psutil.virtual_memory().total / 2**30
        return resources.limits(self.max_workers, self.cores_per_worker, self.mem_per_worker, node_cores, node_gb,
                                len(self.available_accelerators or ()))


def check(ok: bool, message: str) -> None:
    """A bad parameter: ConfigurationError, raised where the executor was made or started."""
    if not ok:
        raise ConfigurationError(message)
