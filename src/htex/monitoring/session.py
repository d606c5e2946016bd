"""One run's monitoring, on the executor's side: start (or join) the hub, report, stop.

``MonitoringSession.start`` is called by ``HighThroughputExecutor.start()``
after the run directory and the private directory exist, and before the
interchange (which is told where the hub is).  It

1. checks the store (another schema version, or not ours: refused here, by name);
2. starts the hub (``python -m htex.monitoring.hub``, configuration on stdin) and
   waits for its ready line, or takes the address of a hub that runs already;
3. starts the executor's own sender, and says where the interchange and the
   pools send theirs (``interchange_url``, ``pool_env``: exported by the launch command).

``stop()`` (at shutdown, after the interchange and the pools) sends the last
events and stops the hub, which writes what is still arriving.
"""

from __future__ import annotations

import json
import logging
import os
import select
import subprocess
import sys
import time
import uuid
from collections.abc import Callable
from typing import IO

from .. import procs
from ..errors import HtexError, MonitoringError
from .config import Monitoring
from .reporters import ClientReporter
from .sender import EventSender

log = logging.getLogger("htex.monitoring")

HUB_READY_SECONDS = 30.0
CLIENT_STOP_SECONDS = 10.0
HUB_STOP_SECONDS = 30.0  # for the hub to write what it holds (a second's worth, or a backlog) and stop


class MonitoringSession:
    def __init__(self, spec: Monitoring, run_id: str, hub: subprocess.Popen[bytes] | None, stderr_path: str | None,
                 hub_address: str | None, hub_port: int | None, local_url: str, pool_url: str,
                 cert_dir: str | None) -> None:
        self.spec = spec
        self.run_id = run_id
        self.hub = hub
        self.stderr_path = stderr_path
        self.hub_address, self.hub_port = hub_address, hub_port
        self.interchange_url = local_url  # the interchange runs on this host
        self.cert_dir = cert_dir
        # The run's last events (every task's end) leave at shutdown: give them time to arrive.
        sender = EventSender(local_url, run_id, "client", cert_dir, spec.flush_period, stop_seconds=CLIENT_STOP_SECONDS)
        self.reporter = ClientReporter(sender, "")
        self.dashboard_url: str | None = None  # Monitoring(dashboard=True): where it is served
        self._stop_dashboard: Callable[[], None] | None = None
        self.pool_env = {"HTEX_MONITOR_URL": pool_url, "HTEX_MONITOR_RUN": run_id,
                         "HTEX_MONITOR_PERIOD": repr(spec.resource_period)}
        if not spec.start_hub:  # a hub of its own: its keys, or none (pools otherwise use the run's)
            self.pool_env["HTEX_MONITOR_CERT_DIR"] = cert_dir or ""
        sender.start()

    @classmethod
    def start(cls, spec: Monitoring, *, run_dir: str, logdir: str, ipc_dir: str, cert_dir: str | None,
              tcp: bool, bind_address: str, local_pools: bool) -> MonitoringSession:
        """Start the hub (or find it) and this process's sender; raises MonitoringError if it cannot."""
        run_id = uuid.uuid4().hex
        if not spec.start_hub:
            url = f"tcp://{spec.hub_address}:{spec.hub_port}"
            return cls(spec, run_id, None, None, spec.hub_address, spec.hub_port, url, url, spec.hub_cert_dir)
        from . import store  # SQLAlchemy: the extra

        store_url = store.store_url(spec.url or run_dir)
        store.check_store(store_url)
        tcp = tcp or bool(spec.hub_address or spec.hub_port)
        if spec.hub_address:
            bind = "127.0.0.1" if spec.hub_address.startswith("127.") or spec.hub_address == "localhost" else "*"
        else:
            bind = bind_address
        ipc_url = f"ipc://{ipc_dir}/monitor"
        from .hub import HubConfig

        cfg = HubConfig(url=store_url, bind_address=bind if tcp else None, port=spec.hub_port or 0, ipc_url=ipc_url,
                        cert_dir=cert_dir, logdir=logdir, watch_parent=True)
        hub, stderr_path, port = _spawn_hub(cfg, logdir)
        address = spec.hub_address or (bind_address if bind_address != "*" else None)
        # Pools on this host use the private directory; others the TCP port, at the hub's address or
        # else at the address they reached the interchange at ("{interchange}", filled in by the pool).
        pool_url = ipc_url if local_pools or not port else f"tcp://{spec.hub_address or '{interchange}'}:{port}"
        log.info("monitoring hub (pid %d) writes to %s; port %s", hub.pid, store._safe(store_url), port or "none")
        session = cls(spec, run_id, hub, stderr_path, address, port or None, ipc_url, pool_url, cert_dir)
        if spec.dashboard:
            session._serve_dashboard(store_url, store._safe(store_url))
        return session

    def _serve_dashboard(self, store_url: str, shown: str) -> None:
        """Serve the dashboard on 127.0.0.1 for this run; a dashboard that cannot start costs only a warning."""
        try:
            from .dashboard import serve_dashboard  # the [dashboard] extra

            self.dashboard_url, self._stop_dashboard = serve_dashboard(store_url)
        except (ImportError, HtexError) as exc:
            log.warning("Monitoring(dashboard=True): the dashboard did not start (%s); the run is recorded in %s",
                        exc, shown)
            return
        log.info("dashboard of this run: %s", self.dashboard_url)

    def check_hub(self) -> str:
        """'' while the hub runs; else how it ended (with the end of its stderr)."""
        if self.hub is None or self.hub.poll() is None:
            return ""
        tail = procs.tail(self.stderr_path) if self.stderr_path else ""
        return f"the monitoring hub {procs.describe_exit(self.hub.returncode)}" + (f": {tail}" if tail else "")

    def stop(self) -> None:
        """Send the last events, then stop the hub (it writes what is still arriving)."""
        if self._stop_dashboard is not None:
            self._stop_dashboard()
        self.reporter.run_ended()
        if self.hub is not None:
            _regain_cpu(self.hub.pid)  # the hub ran at low priority; now it has the run's last events to take
        sender = self.reporter.sender
        sender.stop()
        gone = self.check_hub()
        if gone:
            log.warning("%s; %d events of this process were lost", gone, sender.dropped)
        if self.hub is not None and self.hub.poll() is None:
            self.hub.terminate()
            try:
                self.hub.wait(HUB_STOP_SECONDS)
            except subprocess.TimeoutExpired:
                log.warning("the monitoring hub did not stop in %g s; killing it", HUB_STOP_SECONDS)
                self.hub.kill()
                self.hub.wait()
        if self.hub is not None and self.hub.stdout is not None:
            self.hub.stdout.close()


def _regain_cpu(pid: int) -> None:
    try:
        os.setpriority(os.PRIO_PROCESS, pid, 0)
    except OSError:
        pass  # lowering a nice value needs root (CAP_SYS_NICE): then the hub finishes at its own pace


def _spawn_hub(cfg: object, logdir: str) -> tuple[subprocess.Popen[bytes], str, int]:
    """Start the hub; wait for its ready line; return it, its stderr file and its TCP port (0: none)."""
    from .hub import HubConfig

    assert isinstance(cfg, HubConfig)
    stderr_path = os.path.join(logdir, "hub.stderr")
    with open(stderr_path, "wb") as err:
        hub = subprocess.Popen([sys.executable, "-m", "htex.monitoring.hub", "--config-stdin"],
                               stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=err, start_new_session=True)
    assert hub.stdin is not None and hub.stdout is not None
    with hub.stdin as pipe:  # on stdin: a store URL may hold a password
        pipe.write(cfg.to_json())
    line = _read_line(hub.stdout, HUB_READY_SECONDS)
    try:
        return hub, stderr_path, int(json.loads(line)["port"])
    except (ValueError, KeyError, TypeError):
        if hub.poll() is None:
            hub.kill()
        hub.wait()
        hub.stdout.close()
        tail = procs.tail(stderr_path)
        raise MonitoringError(f"the monitoring hub did not start: it {procs.describe_exit(hub.returncode)}"
                              + (f"; its stderr ends with:\n{tail}" if tail else f"; see {logdir}/hub.log")) from None


def _read_line(pipe: IO[bytes], timeout: float) -> bytes:
    """One line from the hub's stdout, or b'' if it closed or said nothing within ``timeout``."""
    deadline = time.monotonic() + timeout
    data = b""
    fd = pipe.fileno()
    while not data.endswith(b"\n"):
        left = deadline - time.monotonic()
        if left <= 0 or not select.select([fd], [], [], left)[0]:
            return b""
        chunk = os.read(fd, 4096)
        if not chunk:
            return data
        data += chunk
    return data
