"""The interchange: a load-balancing proxy between one executor and many pools.

::

    executor (ROUTER, binds)                          pools (DEALER, connect)
        |                                                 |
        +-- client DEALER --- Interchange --- task ROUTER  (tasks out, registration, heartbeats)
                                          \\-- result ROUTER (results in)

Started by the executor as ``python -m htex.interchange``, its configuration
(JSON) on stdin: a command line is readable by every local user.  Its
loop, ``run()``, has four named steps: read the client, read the pools, hand
queued tasks to pools with free capacity, keep time.  It blocks on its
sockets; the only timeouts are heartbeats and liveness checks.

It never unpickles a task, function or result: those are opaque bytes that
it queues and forwards (it reads only a result's first byte, to count tasks
that raised).  Anything from a peer that has not
registered is decoded only as far as the header and a small JSON body, and
dropped (with a log line) unless it is a Probe or a Register.

Who may connect: pools on this host reach us over UNIX sockets in the
executor's private directory (0700: the kernel keeps other users out); pools
elsewhere over TCP, with CURVE when the run is encrypted (the default): a ZAP
handler lets in only the run's pool key.  A peer's identity is its own: with
ROUTER_HANDOVER off, a second connection that claims a live pool's identity
cannot take its place.

A pool's capacity is its worker count plus its prefetch capacity.  When a pool
is lost (silent for heartbeat_threshold, or its block's job ended), every task
it held fails with ManagerLost, prefetched ones included: a pool cut off from
us may well have started them, and a task must never run twice unless the
user allowed retries (the executor resends within lost_task_retries).
"""

from __future__ import annotations

import json
import logging
import math
import os
import platform
import sys
import time
from collections import OrderedDict, deque
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import zmq

from . import __version__, protocol, security
from .errors import ProtocolError

log = logging.getLogger("htex.interchange")

_DRAIN = 256  # messages read from one socket before looking at the others (fairness)
MAX_CONTROL_BYTES = 1 << 20  # the task socket only receives Probe, Register, Heartbeat, StatusRequest


@dataclass
class InterchangeConfig:
    client_url: str
    client_identity: str
    tcp: bool = True  # listen on TCP worker ports (else UNIX sockets only)
    bind_address: str = "127.0.0.1"
    worker_ports: tuple[int, int] | None = None
    worker_port_range: tuple[int, int] = (54000, 55000)
    heartbeat_period: float = 30.0
    heartbeat_threshold: float = 120.0
    logdir: str = "."
    debug: bool = False
    cert_dir: str | None = None  # CurveZMQ keys of the run; None = plain TCP
    listen_fds: list[int] | None = None  # listening sockets the executor bound for us (task, result)
    ipc_name: str | None = None  # also listen on ipc://NAME-tasks and -results (a private directory)


@dataclass
class _Pool:
    """What the interchange knows of one registered pool (manager)."""

    identity: bytes
    info: protocol.Register
    capacity: int
    last_heard: float
    registered_at: float
    tasks: dict[int, int] = field(default_factory=dict)  # task id -> function key, sent and not done
    functions: set[int] = field(default_factory=set)
    held: bool = False
    last_busy: float = 0.0

    @property
    def free(self) -> int:
        return 0 if self.held else self.capacity - len(self.tasks)

    @property
    def idle(self) -> int:
        """Workers with nothing to do, as far as we know (tasks sent but not done occupy workers first)."""
        return max(0, min(self.free, self.info.worker_count - len(self.tasks)))

    def describe(self) -> str:
        i = self.info
        return f"manager {i.manager_id} on host {i.hostname} (block {i.block_id}, pid {i.pid})"


class Interchange:
    def __init__(self, cfg: InterchangeConfig) -> None:
        self.cfg = cfg
        self.ctx = zmq.Context()
        self.queue: deque[tuple[int, int, protocol.Blob]] = deque()
        self.next_liveness_check = 0.0
        self.results_out: list[Sequence[protocol.Blob]] = []  # results read this turn, sent to the client after dispatch
        self.functions: dict[int, protocol.Blob] = {}
        self.pools: dict[bytes, _Pool] = {}
        self.with_room: OrderedDict[bytes, _Pool] = OrderedDict()  # pools with free capacity, in turn order
        self.stopping = False
        self.client_last_heard = time.monotonic()
        self.client_last_sent = 0.0
        self.pools_last_sent = 0.0
        self.parent = os.getppid()
        self.started = time.monotonic()
        self.dropped = 0
        # done counts results (raised included: "raised" says how many of them are exceptions)
        self.counts = {"received": 0, "dispatched": 0, "done": 0, "raised": 0, "lost": 0, "functions_sent": 0}

        self.client = self.ctx.socket(zmq.DEALER)  # a UNIX socket in the client's private directory
        self.client.setsockopt(zmq.IDENTITY, cfg.client_identity.encode())
        self._unbounded(self.client)
        self.client.connect(cfg.client_url)

        self.task_sock = self._router()
        # Only small control messages arrive here: refuse big ones before they are read.
        self.task_sock.setsockopt(zmq.MAXMSGSIZE, MAX_CONTROL_BYTES)
        self.result_sock = self._router()
        # UNIX sockets first, as plain ZeroMQ (their directory keeps strangers out); then TCP, with
        # CURVE when encrypted.  libzmq takes the security options at bind time, per endpoint.
        if cfg.ipc_name:
            self.task_sock.bind(f"ipc://{cfg.ipc_name}-tasks")
            self.result_sock.bind(f"ipc://{cfg.ipc_name}-results")
        self.task_port = self.result_port = 0
        self.auth = None
        if cfg.tcp:
            if cfg.cert_dir:
                self.auth = security.authenticator(self.ctx, cfg.cert_dir, "pool")
                security.serve(self.task_sock, cfg.cert_dir)
                security.serve(self.result_sock, cfg.cert_dir)
            self._bind_tcp()

        self.poller = zmq.Poller()
        for sock in (self.client, self.task_sock, self.result_sock):
            self.poller.register(sock, zmq.POLLIN)

    def _bind_tcp(self) -> None:
        cfg = self.cfg
        address = f"tcp://{cfg.bind_address}"
        if cfg.worker_ports and cfg.listen_fds:
            # The executor bound these ports and passed us the sockets (ZMQ_USE_FD).
            self.task_port, self.result_port = cfg.worker_ports
            for sock, fd, port in zip(
                (self.task_sock, self.result_sock), cfg.listen_fds, cfg.worker_ports, strict=True
            ):
                sock.setsockopt(zmq.USE_FD, fd)
                sock.bind(f"{address}:{port}")
                sock.setsockopt(zmq.USE_FD, -1)  # it sticks: a later bind would reuse the fd (libzmq aborts)
        elif cfg.worker_ports:
            self.task_port, self.result_port = cfg.worker_ports
            self.task_sock.bind(f"{address}:{self.task_port}")
            self.result_sock.bind(f"{address}:{self.result_port}")
        else:
            low, high = cfg.worker_port_range
            self.task_port = self.task_sock.bind_to_random_port(address, low, high, 200)
            self.result_port = self.result_sock.bind_to_random_port(address, low, high, 200)

    def _router(self) -> zmq.Socket[Any]:
        sock = self.ctx.socket(zmq.ROUTER)
        self._unbounded(sock)
        sock.setsockopt(zmq.ROUTER_MANDATORY, 1)  # a send to a vanished pool raises, not drops
        # No ROUTER_HANDOVER: with it, whoever connects with a live pool's identity takes over its
        # connection (and its results); without it, the newcomer gets an identity of its own.
        return sock

    @staticmethod
    def _unbounded(sock: zmq.Socket[Any]) -> None:
        # A full high-water mark makes ZeroMQ drop or block silently; the executor's
        # in-flight window bounds memory instead.
        sock.setsockopt(zmq.SNDHWM, 0)
        sock.setsockopt(zmq.RCVHWM, 0)
        sock.setsockopt(zmq.LINGER, 0)

    # -- the loop -------------------------------------------------------------

    def run(self) -> None:
        self._to_client(protocol.Ready(task_port=self.task_port, result_port=self.result_port, pid=os.getpid()))
        log.info("interchange ready: task port %d, result port %d", self.task_port, self.result_port)
        try:
            while not self.stopping:
                events = dict(self.poller.poll(self._timeout_ms()))
                if self.client in events:
                    self._read_client()
                if self.task_sock in events:
                    self._read_pools()
                if self.result_sock in events:
                    self._read_results()
                self._dispatch()
                self._forward_results()  # after dispatch: a freed worker gets its next task first
                self._keep_time()
        finally:
            self._shutdown()

    def _timeout_ms(self) -> int:
        now = time.monotonic()
        due = min(
            self.client_last_sent + self.cfg.heartbeat_period,
            self.pools_last_sent + self.cfg.heartbeat_period,
            now + 1.0,  # look at the parent process once a second: if it is gone, so are we
        )
        return max(0, int((due - now) * 1000) + 1)

    # -- step 1: the client -----------------------------------------------------

    def _read_client(self) -> None:
        for _ in range(_DRAIN):
            try:
                frames = self.client.recv_multipart(zmq.NOBLOCK, copy=False)
            except zmq.Again:
                return
            self.client_last_heard = time.monotonic()
            try:
                msg = protocol.decode(frames)
            except ProtocolError as exc:
                log.error("bad message from the client: %s", exc)
                continue
            if isinstance(msg, protocol.Tasks):
                self.functions.update(msg.functions)
                self.queue.extend(zip(msg.ids, msg.fn_keys, msg.payloads, strict=False))
                self.counts["received"] += len(msg.ids)
            elif isinstance(msg, protocol.Command):
                self._command(msg)
            elif isinstance(msg, protocol.Shutdown):
                log.info("client asked for shutdown")
                self.stopping = True
                return

    def _command(self, cmd: protocol.Command) -> None:
        try:
            if cmd.op == "connected_managers":
                result: Any = [self._pool_info(p) for p in self.pools.values()]
            elif cmd.op == "hold_worker":
                result = self._hold(str(cmd.args[0]))
            elif cmd.op == "outstanding":
                result = len(self.queue) + sum(len(p.tasks) for p in self.pools.values())
            elif cmd.op == "stats":
                result = self._stats()
            elif cmd.op == "drop_block":
                # The block's job ended, or is being scaled in: forget its pools now (and tell them to stop).
                block, why, released = str(cmd.args[0]), str(cmd.args[1]), bool(cmd.args[2])
                gone = [p for p in self.pools.values() if p.info.block_id == block]
                for pool in gone:
                    self._to_pool(pool.identity, protocol.Shutdown(reason=why))
                    self._lose_pool(pool, why, released)
                result = len(gone)
            else:
                raise ValueError(f"unknown command {cmd.op!r}")
            reply = protocol.Reply(req=cmd.req, result=result)
        except Exception as exc:
            reply = protocol.Reply(req=cmd.req, error=f"{type(exc).__name__}: {exc}")
        self._to_client(reply)

    def _stats(self) -> dict[str, Any]:
        return dict(
            self.counts,
            queued=len(self.queue),
            pools=len(self.pools),
            workers=sum(p.info.worker_count for p in self.pools.values()),
            running=sum(len(p.tasks) for p in self.pools.values()),
            dropped=self.dropped,
            uptime=time.monotonic() - self.started,
        )

    def _pool_info(self, pool: _Pool) -> dict[str, Any]:
        now = time.monotonic()
        return {
            "manager": pool.info.manager_id,
            "block_id": pool.info.block_id,
            "hostname": pool.info.hostname,
            "pid": pool.info.pid,
            "worker_count": pool.info.worker_count,
            "prefetch_capacity": pool.info.prefetch_capacity,
            "tasks": len(pool.tasks),
            "active": not pool.held,
            "idle_duration": 0.0 if pool.tasks else now - pool.last_busy,
            "last_heartbeat": now - pool.last_heard,
            "python_version": pool.info.python_version,
            "version": pool.info.htex_version,
        }

    def _hold(self, manager_id: str) -> bool:
        for pool in self.pools.values():
            if pool.info.manager_id == manager_id:
                pool.held = True
                self.with_room.pop(pool.identity, None)
                log.info("holding %s: no new tasks go to it", pool.describe())
                return True
        return False

    def _to_client(self, msg: protocol.Message) -> None:
        self.client.send_multipart(msg.encode(), copy=False)
        self.client_last_sent = time.monotonic()

    # -- step 2: the pools --------------------------------------------------------

    def _read_pools(self) -> None:
        for _ in range(_DRAIN):
            try:
                # Small control messages only (MAXMSGSIZE): copying them costs less than zmq.Frame objects.
                frames = self.task_sock.recv_multipart(zmq.NOBLOCK)
            except zmq.Again:
                return
            identity = frames[0]
            try:
                msg = protocol.decode(frames[1:])
            except ProtocolError as exc:
                self._drop(identity, str(exc))
                continue
            pool = self.pools.get(identity)
            if pool is not None:
                pool.last_heard = time.monotonic()
            if isinstance(msg, protocol.Probe):
                self._to_pool(identity, protocol.ProbeReply())
            elif isinstance(msg, protocol.StatusRequest):
                managers = [self._pool_info(p) for p in self.pools.values()]
                self._to_pool(identity, protocol.StatusReply(stats=self._stats(), managers=managers))
            elif isinstance(msg, protocol.Register):
                self._register(identity, msg)
            elif pool is None:
                # A pool we declared lost (it may have been stopped and resumed): tell it to go.
                self._drop(identity, f"{type(msg).__name__} from an unregistered peer")
                if isinstance(msg, protocol.Heartbeat):
                    self._to_pool(identity, protocol.Rejected(reason="unknown pool: it was declared lost"))

    def _register(self, identity: bytes, reg: protocol.Register) -> None:
        mine = (__version__, ".".join(platform.python_version_tuple()[:2]))
        theirs = (reg.htex_version, ".".join(reg.python_version.split(".")[:2]))
        if mine != theirs:
            reason = (
                f"version mismatch: the executor runs htex {mine[0]} on Python {mine[1]}, "
                f"this pool runs htex {theirs[0]} on Python {theirs[1]}; install the same versions on both"
            )
            log.error("refusing manager %s from %s: %s", reg.manager_id, reg.hostname, reason)
            self._to_pool(identity, protocol.Rejected(reason=reason))
            self._to_client(protocol.Event(kind="pool_rejected", message=reason, data={"manager": reg.manager_id}))
            return
        if reg.worker_count < 1 or reg.prefetch_capacity < 0 or identity in self.pools:
            self._drop(identity, f"bad registration {reg}")
            return
        now = time.monotonic()
        pool = _Pool(identity, reg, reg.worker_count + reg.prefetch_capacity, now, now, last_busy=now)
        self.pools[identity] = pool
        self.with_room[identity] = pool
        self._to_pool(identity, protocol.Registered())
        log.info("registered %s with %d workers", pool.describe(), reg.worker_count)
        self._to_client(protocol.Event(kind="pool_registered", message=pool.describe(), data=self._pool_info(pool)))

    def _read_results(self) -> None:
        for _ in range(_DRAIN):
            try:
                frames = self.result_sock.recv_multipart(zmq.NOBLOCK, copy=False)
            except zmq.Again:
                return
            identity = frames[0].bytes
            pool = self.pools.get(identity)
            if pool is None:
                self._drop(identity, "results from an unregistered peer")
                continue
            try:
                msg = protocol.decode(frames[1:])
            except ProtocolError as exc:
                self._drop(identity, str(exc))
                continue
            pool.last_heard = time.monotonic()
            if not isinstance(msg, protocol.Results):
                continue
            known = [tid in pool.tasks for tid in msg.ids]
            for tid in msg.ids:
                pool.tasks.pop(tid, None)
            if all(known):
                self.results_out.append(frames[1:])  # forwarded as they came
            else:
                keep = [i for i, k in enumerate(known) if k]
                log.warning("%s sent %d results for tasks it does not hold", pool.describe(), len(known) - len(keep))
                if keep:
                    ids = protocol.u64_array(msg.ids[i] for i in keep)
                    self.results_out.append(protocol.Results(ids, [msg.payloads[i] for i in keep]).encode())
            self.counts["done"] += len(msg.ids)
            self.counts["raised"] += sum(1 for p in msg.payloads if _raised(p))
            if not pool.tasks:
                pool.last_busy = pool.last_heard
            if pool.free > 0:
                self.with_room[identity] = pool

    def _forward_results(self) -> None:
        if self.results_out:
            for frames in self.results_out:
                self.client.send_multipart(frames, copy=False)
            self.results_out = []
            self.client_last_sent = time.monotonic()

    def _drop(self, identity: bytes, why: str) -> None:
        self.dropped += 1
        if self.dropped <= 100 or self.dropped % 1000 == 0:  # a flood must not fill the disk
            log.warning("dropped a message from %r: %s (%d dropped so far)", identity[:32], why, self.dropped)

    def _to_pool(self, identity: bytes, msg: protocol.Message) -> bool:
        try:
            self.task_sock.send_multipart([identity, *msg.encode()], copy=False)
            return True
        except zmq.ZMQError as exc:  # EHOSTUNREACH: the peer disconnected
            log.info("cannot send to %r: %s", identity[:32], exc)
            return False

    # -- step 3: dispatch -------------------------------------------------------

    def _dispatch(self) -> None:
        """Hand queued tasks, oldest first, to pools with room: idle workers first, then prefetch slots.

        Idle workers are filled a pool at a time.  A task given to an idle
        worker starts at once wherever it goes, so this costs no balance, and
        it sends one message of many tasks instead of many messages of one
        (with 1,000 pools, spreading a batch thinly cost the interchange half
        its rate).  Prefetch slots (room beyond the idle workers) are shared
        fairly: a task queued behind a busy worker should not wait in one pool
        while another could queue it as well.  Pools take turns: each one
        served goes to the back of ``with_room``.
        """
        room = self.with_room
        for _ in range(len(room)):
            if not self.queue:
                return
            identity, pool = room.popitem(last=False)
            n = min(pool.idle, len(self.queue))
            if (n == 0 or self._send_tasks(pool, n)) and pool.free > 0:
                room[identity] = pool
        while self.queue and room:
            pools = list(room.values())
            for i, pool in enumerate(pools):
                n = min(pool.free, math.ceil(len(self.queue) / (len(pools) - i)))
                if self._send_tasks(pool, n) and pool.free > 0:
                    room.move_to_end(pool.identity)
                else:
                    room.pop(pool.identity, None)
                if not self.queue:
                    return

    def _send_tasks(self, pool: _Pool, n: int) -> bool:
        """Send the next n queued tasks to the pool; False (the tasks back in the queue) if it is unreachable."""
        batch = [self.queue.popleft() for _ in range(n)]
        functions = {}
        for _, key, _ in batch:
            if key not in pool.functions and key in self.functions:
                functions[key] = self.functions[key]
        ids = protocol.u64_array(t[0] for t in batch)
        keys = protocol.u64_array(t[1] for t in batch)
        msg = protocol.Tasks(ids, keys, [t[2] for t in batch], functions)
        if not self._to_pool(pool.identity, msg):
            self.queue.extendleft(reversed(batch))  # never left: back to the front
            self.with_room.pop(pool.identity, None)
            return False
        pool.functions.update(functions)
        self.counts["functions_sent"] += len(functions)
        for tid, key, _ in batch:
            pool.tasks[tid] = key
        self.counts["dispatched"] += n
        return True

    # -- step 4: time -------------------------------------------------------------

    def _keep_time(self) -> None:
        now = time.monotonic()
        if now - self.client_last_heard > self.cfg.heartbeat_threshold:
            log.error("no word from the client for %.0f s; stopping", now - self.client_last_heard)
            self.stopping = True
            return
        if now - self.client_last_sent >= self.cfg.heartbeat_period:
            self._to_client(protocol.Heartbeat())
        if now - self.pools_last_sent >= self.cfg.heartbeat_period:
            for identity in list(self.pools):
                self._to_pool(identity, protocol.Heartbeat())
            self.pools_last_sent = now
        if now >= self.next_liveness_check:
            # Not on every turn of the loop: with 1,000 pools heartbeating, this scan (and even the
            # getppid system call) would cost more than the messages.  A second late is nothing.
            self.next_liveness_check = now + min(1.0, self.cfg.heartbeat_threshold / 10)
            if os.getppid() != self.parent:
                log.error("the client process is gone (parent changed); stopping")
                self.stopping = True
                return
            for pool in [p for p in self.pools.values() if now - p.last_heard > self.cfg.heartbeat_threshold]:
                self._lose_pool(pool, f"it sent nothing for {now - pool.last_heard:.0f} s (heartbeat_threshold)")

    def _lose_pool(self, pool: _Pool, why: str, released: bool = False) -> None:
        del self.pools[pool.identity]
        self.with_room.pop(pool.identity, None)
        # Every task it held may have started (a pool cut off from us runs its prefetched tasks):
        # none goes back to the queue.  The executor resends them only within lost_task_retries.
        held = list(pool.tasks)
        message = f"{pool.describe()} was {'released' if released else 'lost'}: {why}"
        log.error("%s; the %d tasks it held fail", message, len(held))
        self.counts["lost"] += len(held)
        if held:
            self._to_client(protocol.TasksFailed(ids=held, error="ManagerLost", message=message))
        kind = "pool_released" if released else "pool_lost"
        data = {"manager": pool.info.manager_id, "block_id": pool.info.block_id}
        self._to_client(protocol.Event(kind=kind, message=message, data=data))

    # -- shutdown -------------------------------------------------------------------

    def _shutdown(self) -> None:
        """Tell every pool to stop, then close the sockets (pools not told exit on heartbeat)."""
        for identity in list(self.pools):
            self._to_pool(identity, protocol.Shutdown(reason="the executor is shutting down"))
        self.task_sock.setsockopt(zmq.LINGER, 1000)
        self.task_sock.close()
        if self.auth is not None:
            self.auth.stop()
        self.ctx.destroy(linger=0)
        log.info("interchange stopped")


def _raised(result: protocol.Blob) -> bool:
    data = protocol.as_buffer(result)
    return len(data) > 0 and data[0] == protocol.RESULT_RAISED


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    raw = json.loads(argv[0] if argv else sys.stdin.read())  # stdin: the executor's way
    for key in ("worker_ports", "worker_port_range"):
        if raw.get(key) is not None:
            raw[key] = tuple(raw[key])
    cfg = InterchangeConfig(**raw)
    os.makedirs(cfg.logdir, exist_ok=True)
    logging.basicConfig(
        filename=os.path.join(cfg.logdir, "interchange.log"),
        level=logging.DEBUG if cfg.debug else logging.INFO,
        format="%(asctime)s %(process)d %(levelname)s %(name)s: %(message)s",
    )
    import signal

    # Ctrl-C in the terminal is the client's; it tells us to stop over the socket.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        Interchange(cfg).run()
    except Exception:
        log.exception("interchange failed")
        raise
    return 0


if __name__ == "__main__":
    sys.exit(main())
