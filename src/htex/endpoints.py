"""Where the pools find the interchange: the run's private UNIX sockets, and TCP ports when needed.

Every channel on the client's host is a UNIX socket in a directory made for
the run with mode 0700 (the kernel keeps other users out, whether or not the
run is encrypted).  TCP worker ports are bound only when pools may need them,
and then with CURVE unless the user opted out (see README, Security).

The port is bound here, in the client, and the listening socket handed to
the interchange: blocks can start before the interchange runs, and no other
process can take the port between our choice and its bind.

One port: each pool holds one connection to the interchange, which carries
its tasks and its results (a descriptor per pool there, not two: 10,000 pools
fit a limit of 20,000).  Parsl named two, ``worker_ports=(task, result)``,
and so do we, for its configurations: the first is bound, the second is
accepted and not used, and ``result_port`` (the executor's
``worker_result_port``, a launch command's ``{result_port}``) is the task
port, since that is where results go.  Binding the second too would hold a
port and a descriptor for nothing: a pool of this version never connects
there, and one of another version is refused at registration (htex and
Python versions must match), which it learns over its task port.
"""

from __future__ import annotations

import logging
import os
import random
import socket
from dataclasses import dataclass, field

from . import poollink, rundir, security
from .errors import ConfigurationError
from .providers.base import ExecutionProvider

log = logging.getLogger("htex.executor")


@dataclass
class Endpoints:
    """Decided at start(): the addresses pools are told, the private directory, the TCP ports."""

    address: str | None  # the executor's `address`: comma-separated, or None
    provider: ExecutionProvider
    ipc_dir: str = ""
    task_port: int = 0  # 0: no TCP port
    _listeners: list[socket.socket] = field(default_factory=list)
    _unix: socket.socket | None = None  # until handed over
    _unix_path: str = ""

    @property
    def result_port(self) -> int:
        """The same port: results come back over each pool's one connection (the module's docstring)."""
        return self.task_port

    @property
    def ipc_name(self) -> str | None:
        """Prefix of the pools' UNIX socket (``-tasks``); None when pools are remote."""
        return None if self.provider.remote else f"{self.ipc_dir}/pools"

    @property
    def pool_local_url(self) -> str | None:
        """What a pool on this host connects to (poollink.py); with an address given, pools may be in another
        network namespace, so TCP."""
        if not self._unix_path or self.address:
            return None
        return poollink.SCHEME + self._unix_path

    @property
    def unix_fd(self) -> int | None:
        """The UNIX stream listener for pools on this host, handed to the interchange; None when pools are remote."""
        return self._unix.fileno() if self._unix is not None else None

    def addresses(self) -> list[str]:
        if self.address:
            return [a.strip() for a in self.address.split(",") if a.strip()]
        if not self.provider.remote:
            return ["127.0.0.1"]
        return _all_addresses()

    def bind_address(self) -> str:
        return "127.0.0.1" if all(a.startswith("127.") or a == "localhost" for a in self.addresses()) else "*"

    def open(self, tcp: bool, worker_ports: tuple[int, int] | None, port_range: tuple[int, int]) -> None:
        """Make the private directory and the UNIX listener for local pools; bind the pools' port if ``tcp``
        (worker_ports' first: see above)."""
        self.ipc_dir = security.private_dir()
        if self.ipc_name:
            self._unix_path = f"{self.ipc_name}-unix"
            self._unix = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            self._unix.bind(self._unix_path)
            self._unix.listen(4096)
        if not tcp:
            return
        host = "0.0.0.0" if self.bind_address() == "*" else "127.0.0.1"
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._listeners.append(sock)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if worker_ports:
            sock.bind((host, worker_ports[0]))
        else:
            _bind_in_range(sock, host, port_range)
        # A deep backlog: thousands of pools may connect at once (a whole machine's blocks starting).
        sock.listen(4096)
        self.task_port = sock.getsockname()[1]

    def listening_fds(self) -> list[int]:
        """The TCP listeners (the interchange's USE_FD)."""
        return [s.fileno() for s in self._listeners]

    def inherited_fds(self) -> list[int]:
        """Every listener the interchange inherits."""
        return [*self.listening_fds(), *([self._unix.fileno()] if self._unix is not None else [])]

    def handed_over(self) -> None:
        """The interchange holds the listening sockets now (or start failed): close our copies."""
        for sock in self._listeners:
            sock.close()
        self._listeners = []
        if self._unix is not None:
            self._unix.close()  # the name stays: pools connect to the interchange's copy
            self._unix = None

    def write_connection_file(self, logdir: str, label: str, heartbeat_period: float, heartbeat_threshold: float,
                              interchange_pid: int) -> None:
        """What `htex pool` (or a hand-started process_worker_pool) and `htex status` need to connect."""
        rundir.ConnectionInfo(
            label=label, addresses=self.addresses(), task_port=self.task_port, result_port=self.result_port,
            heartbeat_period=heartbeat_period, heartbeat_threshold=heartbeat_threshold,
            interchange_pid=interchange_pid, client_pid=os.getpid(), ipc_dir=self.ipc_dir,
            ipc_tasks=f"ipc://{self.ipc_name}-tasks" if self.ipc_name else None,
        ).write(logdir)

    def remove(self) -> None:
        self.handed_over()
        security.remove_private_dir(self.ipc_dir)


def needs_tcp(encrypted: bool, provider: ExecutionProvider, address: str | None, launch_cmd: str | None,
              managed: bool) -> bool:
    """Bind the worker ports?  Always when encrypted (CURVE guards them); without encryption only when
    pools may need TCP: they may be remote, an address or launch_cmd was given, or they start by hand."""
    return bool(encrypted or provider.remote or address or launch_cmd or not managed)


def _bind_in_range(sock: socket.socket, host: str, port_range: tuple[int, int]) -> None:
    """Bind to a random free port in [low, high), as ZeroMQ's bind_to_random_port does."""
    low, high = port_range
    for _ in range(200):
        try:
            sock.bind((host, random.randrange(low, high)))
            return
        except OSError:
            continue
    raise ConfigurationError(f"no free port in {port_range} after 200 tries; widen worker_port_range")


def _all_addresses() -> list[str]:
    """Every IPv4 address of this host, loopback last: the pools probe them in parallel."""
    import psutil

    found = [a.address for addrs in psutil.net_if_addrs().values() for a in addrs if a.family == socket.AF_INET]
    found.sort(key=lambda a: a.startswith("127."))
    return found or ["127.0.0.1"]
