"""The monitoring hub: one process that receives every event batch and writes it to the store.

::

    executor  --\\
    interchange --> PULL (ipc:// in the run's private directory; TCP, CURVE when encrypted) --> Store
    pools     --/

Started by the executor as ``python -m htex.monitoring.hub`` (its configuration,
JSON, on stdin: a store URL may hold a password), or by hand for a hub that
many runs share::

    python -m htex.monitoring.hub --url postgresql+psycopg://user:pw@db/htex --address 0.0.0.0 --port 55055

It prints one JSON line when it listens (``{"port": ..., "pid": ...}``).  Its
loop: wait for batches, read what has come (up to READ_BATCHES), write them in
one transaction per run, repeat.  It stops on SIGTERM (after reading what is
still arriving, DRAIN_SECONDS at most), when the process that started it is
gone, or when the store cannot be written (disk full, database gone): then it
exits with EXIT_STORE_FAILED and the senders count what they cannot send.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import sys
import time
from collections import defaultdict
from dataclasses import asdict, dataclass
from typing import Any

import zmq

from .. import security
from ..errors import MonitoringError
from .events import BadBatch, decode_batch

log = logging.getLogger("htex.monitoring.hub")

READ_BATCHES = 500  # batches read in one go
# Events are merged in memory and written every WRITE_SECONDS (or WRITE_EVENTS): a task's four
# events then cost one upsert, not four.  A reader sees a task's end at most this late; a task that
# has not ended may wait one more round (Store.flush(hold=True)): a short task is written once.
WRITE_SECONDS = 1.0
WRITE_EVENTS = 200_000
DRAIN_SECONDS = 2.0  # at stop: keep reading while batches still arrive, this long at most
EXIT_STORE_FAILED = 3
EXIT_BAD_STORE = 2
HUB_NICE = 19  # an executor's own hub runs at the lowest CPU priority: the run goes first


@dataclass(frozen=True)
class HubConfig:
    url: str  # the store: a SQLAlchemy URL
    bind_address: str | None = None  # TCP: "127.0.0.1", "0.0.0.0", ...; None: no TCP
    port: int = 0  # 0: a free port in port_range
    port_range: tuple[int, int] = (55000, 56000)
    ipc_url: str | None = None  # also listen here (the run's private directory)
    cert_dir: str | None = None  # CURVE on TCP: the run's server key; only the pool key gets in
    logdir: str | None = None
    watch_parent: bool = False  # stop when the process that started us is gone
    debug: bool = False

    def to_json(self) -> bytes:
        return json.dumps(asdict(self)).encode()

    @classmethod
    def from_json(cls, data: bytes) -> HubConfig:
        raw = json.loads(data)
        if "port_range" in raw:
            raw["port_range"] = tuple(raw["port_range"])
        return cls(**raw)


class Hub:
    def __init__(self, cfg: HubConfig) -> None:
        from .store import Store  # SQLAlchemy: only here, in the hub

        self.cfg = cfg
        self.store = Store(cfg.url)
        self.parent = os.getppid()
        self.received = self.bad = 0
        self.ctx = zmq.Context()
        self.sock = self.ctx.socket(zmq.PULL)
        self.sock.setsockopt(zmq.RCVHWM, 10_000)
        self.sock.setsockopt(zmq.LINGER, 0)
        self.auth: security.Authenticator | None = None
        self.port = 0
        self.stopping = False
        self.write_due = 0.0
        # SIGTERM sets a flag and wakes the poll through this pipe; raising from the handler instead
        # could interrupt a transaction and lose the batch in it.
        self._wake_r, wake_w = os.pipe()
        os.set_blocking(self._wake_r, False)
        os.set_blocking(wake_w, False)
        signal.set_wakeup_fd(wake_w)
        if cfg.ipc_url:
            self.sock.bind(cfg.ipc_url)
        if cfg.bind_address:
            if cfg.cert_dir:
                self.auth = security.authenticator(self.ctx, cfg.cert_dir, "pool")
                security.serve(self.sock, cfg.cert_dir)
            address = f"tcp://{cfg.bind_address}"
            if cfg.port:
                self.sock.bind(f"{address}:{cfg.port}")
                self.port = cfg.port
            else:
                self.port = self.sock.bind_to_random_port(address, *cfg.port_range, max_tries=200)

    def run(self) -> int:
        print(json.dumps({"port": self.port, "pid": os.getpid()}), flush=True)
        log.info("monitoring hub ready: store %s, port %d, ipc %s", _safe(self.cfg.url), self.port, self.cfg.ipc_url)
        code = 0
        poller = zmq.Poller()
        poller.register(self.sock, zmq.POLLIN)
        poller.register(self._wake_r, zmq.POLLIN)
        try:
            while not self.stopping:
                if self.sock in dict(poller.poll(self._timeout_ms())):
                    self._read()
                if self.store.waiting and (time.monotonic() >= self.write_due or self.store.pending >= WRITE_EVENTS):
                    self._write(hold=True)
                if self.cfg.watch_parent and os.getppid() != self.parent:
                    log.error("the process that started the hub is gone; stopping")
                    break
            else:
                _regain_cpu()  # the run has ended: finish quickly
                self._drain()
            self._write()
        except Exception as exc:  # the store failed (disk full, the server went away): a dead hub
            log.exception("cannot write to the monitoring store")
            print(f"htex monitoring hub: cannot write to the store {_safe(self.cfg.url)}: {exc!s:.300}; stopping "
                  "(the run goes on; its senders count the events they lose)", file=sys.stderr)
            code = EXIT_STORE_FAILED
        finally:
            self._close()
        log.info("monitoring hub stopped: %d events written, %d bad batches", self.received, self.bad)
        return code

    def _timeout_ms(self) -> int:
        if not self.store.waiting:
            return 1000
        return max(0, min(1000, int((self.write_due - time.monotonic()) * 1000) + 1))

    def _write(self, hold: bool = False) -> None:
        """Write what was read; ``hold``: while the run goes, tasks not ended yet may wait one more round."""
        self.received += self.store.pending
        self.store.flush(hold)
        self.write_due = time.monotonic() + WRITE_SECONDS

    def _read(self) -> None:
        if not self.store.waiting:
            self.write_due = time.monotonic() + WRITE_SECONDS
        by_run: dict[str, list[Any]] = defaultdict(list)
        for _ in range(READ_BATCHES):
            try:
                frame = self.sock.recv(zmq.NOBLOCK, copy=False)
            except zmq.Again:
                break
            try:
                batch = decode_batch(frame.buffer)
            except BadBatch as exc:
                self.bad += 1
                if self.bad <= 100:
                    log.warning("dropped a bad batch: %s", exc)
                continue
            by_run[batch.run_id].extend(batch.events)
        for run_id, events in by_run.items():
            self.store.add(run_id, events)

    def _drain(self) -> None:
        """Stopping: keep reading while batches still arrive (the senders' last flushes)."""
        deadline = time.monotonic() + DRAIN_SECONDS
        while time.monotonic() < deadline and self.sock.poll(200):
            self._read()

    def _close(self) -> None:
        if self.auth is not None:
            self.auth.stop()
        self.sock.close()
        self.ctx.term()
        self.store.close()
        os.close(self._wake_r)


def _safe(url: str) -> str:
    from .store import _safe as safe

    return safe(url)


def _regain_cpu() -> None:
    if os.getpriority(os.PRIO_PROCESS, 0) > 0:
        try:
            os.setpriority(os.PRIO_PROCESS, 0, 0)  # allowed to root (CAP_SYS_NICE) only; else we stay low
        except OSError:
            pass


def _parse(argv: list[str]) -> HubConfig:
    parser = argparse.ArgumentParser(prog="python -m htex.monitoring.hub", description=__doc__.split("\n\n")[0])
    parser.add_argument("--config-stdin", action="store_true", help="read the configuration (JSON) from stdin")
    parser.add_argument("--url", help="the store: a SQLAlchemy URL or a .db path (default: $HTEX_MONITORING_URL)")
    parser.add_argument("--address", default="127.0.0.1", help="TCP address to listen on")
    parser.add_argument("--port", type=int, default=0, help="TCP port (0: a free one, printed)")
    parser.add_argument("--cert-dir", help="CURVE keys (server and pool, made by htex.security.make_keys(DIR)): "
                        "only senders holding the pool key get in")
    parser.add_argument("--logdir", help="where to write hub.log")
    parser.add_argument("--debug", action="store_true")
    args = parser.parse_args(argv)
    if args.config_stdin:
        return HubConfig.from_json(sys.stdin.buffer.read())
    url = args.url or os.environ.get("HTEX_MONITORING_URL")
    if not url:
        parser.error("give --url (or set HTEX_MONITORING_URL)")
    from .store import store_url

    return HubConfig(url=store_url(url), bind_address=args.address, port=args.port, cert_dir=args.cert_dir,
                     logdir=args.logdir, debug=args.debug)


def main(argv: list[str] | None = None) -> int:
    cfg = _parse(sys.argv[1:] if argv is None else argv)
    logging.basicConfig(
        filename=os.path.join(cfg.logdir, "hub.log") if cfg.logdir else None,
        level=logging.DEBUG if cfg.debug else logging.INFO,
        format="%(asctime)s %(process)d %(levelname)s %(name)s: %(message)s",
    )

    hub: Hub | None = None

    def on_signal(signum: int, frame: object) -> None:
        if hub is not None:
            hub.stopping = True

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, signal.SIG_IGN if cfg.watch_parent else on_signal)  # Ctrl-C is the executor's
    if cfg.watch_parent:
        # Started by an executor, on the run's host: the run's own processes go first when the CPU is
        # short (the hub catches up as soon as it is not; events wait in its socket meanwhile).  Not
        # SCHED_IDLE: on a machine that is never idle the hub would never write.
        os.nice(HUB_NICE)
    try:
        hub = Hub(cfg)
    except MonitoringError as exc:
        print(f"htex monitoring hub: {exc}", file=sys.stderr)
        return EXIT_BAD_STORE
    except Exception as exc:  # the database is unreachable, the file cannot be made, ...
        print(f"htex monitoring hub: cannot open the store {_safe(cfg.url)}: {exc!s:.300}", file=sys.stderr)
        return EXIT_BAD_STORE
    return hub.run()


if __name__ == "__main__":
    sys.exit(main())
