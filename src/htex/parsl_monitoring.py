"""Parsl's monitoring for ``htex.parsl``: the default radio, and node and block reports.

With ``Config(monitoring=MonitoringHub(...))`` the DataFlowKernel wraps every
app in Parsl's monitor wrapper, which sends messages (the try's start and end,
the task's resource use) through the executor's ``remote_monitoring_radio``.
Parsl's own HTEX sends them up its result channel; this radio does the same on
htex, without touching htex's core:

* ``submit`` wraps the (already wrapped) app in :func:`run_with_radio`.  In the
  worker it opens a datagram socketpair for the task; the radio's senders (in
  the worker, and in the resource monitor Parsl forks from it) write one
  pickled message per datagram, so a forked writer never interleaves with
  another; a thread reads them while the task runs.
* The messages come back *with the task's result* (:class:`Monitored`, or an
  attribute of the task's exception) and the client puts them on the
  DataFlowKernel's monitoring queue before it settles the app's future.  So
  they reach the hub when the task ends, not while it runs: Parsl's HTEX
  streams them.

:class:`Reporter` (a thread in the client) sends what Parsl's HTEX and its
interchange send: a ``NODE_INFO`` row for every pool when it registers and
when it goes, and a ``BLOCK_INFO`` row for every block whose state changed.
A pool's CPU count and memory come from its workers (with the first result
of each worker), or from this host for a pool on this host.

This module imports Parsl; htex's core never imports it.
"""

from __future__ import annotations

import datetime
import logging
import os
import pickle
import platform
import socket
import sys
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import psutil
from parsl.monitoring.message_type import MessageType
from parsl.monitoring.radios.base import MonitoringRadioReceiver, MonitoringRadioSender, RadioConfig

log = logging.getLogger("htex.parsl")

# The attribute of a task's exception that carries its messages back (removed in the client).
EXC_ATTRIBUTE = "_htex_monitoring"
# A task that runs for days with a short resource_monitoring_interval must not fill the worker's memory.
MAX_MESSAGES = 10_000

# The sending end for the task running in this worker process (inherited by what it forks).
_channel: socket.socket | None = None


class ResultRadio(RadioConfig):
    """htex.parsl's default radio: messages travel back with each task's result (see module doc)."""

    def create_receiver(self, *, run_dir: str, resource_msgs: Any) -> MonitoringRadioReceiver:
        return _NoReceiver()  # the executor's client side delivers them: nothing to listen on

    def create_sender(self) -> MonitoringRadioSender:
        return _ResultSender()

    def __repr__(self) -> str:
        return "htex.parsl.ResultRadio()"


class _NoReceiver(MonitoringRadioReceiver):
    def shutdown(self) -> None:
        pass


class _ResultSender(MonitoringRadioSender):
    def send(self, message: object) -> None:
        sock = _channel
        if sock is None:  # not inside run_with_radio: an app run by another executor with this radio
            log.warning("htex ResultRadio: no task to carry this monitoring message; dropped")
            return
        try:
            sock.send(pickle.dumps(message))
        except OSError as exc:
            log.warning("htex ResultRadio: could not queue a monitoring message (%s); dropped", exc)


@dataclass
class NodeFacts:
    """What the client cannot see of a remote node: sent by each worker with its first result."""

    pool: str  # the manager id (PARSL_WORKER_POOL_ID)
    block_id: str
    hostname: str
    worker_count: int
    python_v: str
    cpu_count: int
    total_memory: int


@dataclass
class Monitored:
    """A task's return value, with the monitoring messages its try sent."""

    value: Any
    messages: list[Any] = field(default_factory=list)
    node: NodeFacts | None = None


_facts_sent = False


def _node_facts_once() -> NodeFacts | None:
    global _facts_sent
    if _facts_sent:
        return None
    _facts_sent = True
    env = os.environ.get
    return NodeFacts(env("PARSL_WORKER_POOL_ID", ""), env("PARSL_WORKER_BLOCK_ID", ""), platform.node(),
                     int(env("PARSL_WORKER_COUNT", "0")), platform.python_version(),
                     psutil.cpu_count() or 0, psutil.virtual_memory().total)


class _Collector(threading.Thread):
    """Reads the task's datagrams while it runs; an empty datagram ends it."""

    def __init__(self, sock: socket.socket) -> None:
        super().__init__(name="htex-radio", daemon=True)
        self.sock = sock
        self.messages: list[Any] = []
        self.dropped = 0

    def run(self) -> None:
        while data := self.sock.recv(1 << 18):  # larger than any datagram a UNIX socket takes by default
            if len(self.messages) >= MAX_MESSAGES:
                self.dropped += 1
                continue
            try:
                self.messages.append(pickle.loads(data))
            except Exception:  # a message we cannot load is one lost row, not a failed task
                self.dropped += 1


def run_with_radio(fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Monitored:
    """In the worker: run ``fn`` with the radio's channel open; return its value with the messages."""
    global _channel
    receive, send = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
    collector = _Collector(receive)
    collector.start()
    _channel = send
    try:
        value = fn(*args, **kwargs)
    except BaseException as exc:
        messages = _finish(collector, send)
        try:
            setattr(exc, EXC_ATTRIBUTE, Monitored(None, messages, _node_facts_once()))
        except Exception:  # an exception that takes no attribute: its messages are lost, not its error
            pass
        raise
    finally:
        _channel = None
    return Monitored(value, _finish(collector, send), _node_facts_once())


def _finish(collector: _Collector, send: socket.socket) -> list[Any]:
    # Parsl's wrapper has joined its monitor process: everything it sent is queued before this.
    send.send(b"")
    collector.join()
    send.close()
    collector.sock.close()
    if collector.dropped:
        print(f"htex ResultRadio: {collector.dropped} monitoring messages dropped", file=sys.stderr)
    return collector.messages


class Reporter:
    """The client's side: hands the tasks' messages to the hub, and reports pools and blocks.

    ``queue`` is the DataFlowKernel's monitoring queue (``executor.monitoring_messages``);
    ``htex`` the running ``htex.HighThroughputExecutor``.  A thread polls pools and blocks
    every ``interval`` seconds; :meth:`stop` polls once more, so a workflow shorter than
    the interval is reported too.
    """

    def __init__(self, queue: Any, htex: Any, run_id: str, label: str, interval: float) -> None:
        self.queue, self.htex, self.run_id, self.label, self.interval = queue, htex, run_id, label, interval
        self.lock = threading.Lock()
        self.nodes: dict[str, dict[str, Any]] = {}  # manager id -> the last NODE_INFO row sent
        self.facts: dict[str, NodeFacts] = {}  # manager id -> its CPU count and memory, from a worker
        self.blocks: dict[str, str] = {}  # block id -> the last state name sent
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"htex-parsl-monitoring-{label}", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join()
        self.poll()

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            self.poll()

    # -- the tasks' messages (the client's I/O thread) -------------------------------------

    def deliver(self, monitored: Monitored) -> None:
        """Called before the app's future is settled: must not raise (the future would never end)."""
        try:
            for message in monitored.messages:
                self.queue.put(message)
            if monitored.node is not None and monitored.node.pool:
                self._learn(monitored.node)
        except Exception:
            log.exception("monitoring: a task's messages could not be handed to the hub")

    def _learn(self, facts: NodeFacts) -> None:
        with self.lock:
            self.facts[facts.pool] = facts
            row = self.nodes.get(facts.pool)
            if row is None:  # a pool that came (and maybe went) between two polls
                self._send_node({
                    "run_id": self.run_id, "hostname": facts.hostname, "uid": facts.pool, "block_id": facts.block_id,
                    "worker_count": facts.worker_count, "python_v": facts.python_v,
                    "last_heartbeat": datetime.datetime.now()}, True)
            elif not row["cpu_count"]:  # reported before its facts were known
                self._send_node(dict(row), row["active"])

    # -- pools and blocks (the reporter's thread) ------------------------------------------

    def poll(self) -> None:
        """Report pools that came or went, and blocks whose state changed, since the last poll; never raises
        (it runs in shutdown(), which must go on)."""
        try:
            self._poll()
        except Exception:
            log.exception("monitoring: pools and blocks could not be reported")

    def _poll(self) -> None:
        try:
            managers = self.htex.connected_managers
        except Exception as exc:  # stopped or broken: the blocks may still be reported
            log.debug("monitoring: no pool list (%s)", exc)
            managers = None
        with self.lock:
            if managers is not None:
                self._report_pools(managers)
        try:
            statuses = self.htex.status()
        except Exception as exc:
            log.debug("monitoring: no block status (%s)", exc)
            return
        changed = [
            {"run_id": self.run_id, "executor_label": self.label, "block_id": block,
             "job_id": self.htex.blocks.get(block), "status": st.state.name, "timestamp": datetime.datetime.now()}
            for block, st in statuses.items() if self.blocks.get(block) != st.state.name
        ]
        for row in changed:
            self.blocks[row["block_id"]] = row["status"]
        if changed:
            self.queue.put((MessageType.BLOCK_INFO, changed))

    def _report_pools(self, managers: list[dict[str, Any]]) -> None:
        now = datetime.datetime.now()
        seen = set()
        for m in managers:
            seen.add(m["manager"])
            if m["manager"] not in self.nodes:
                self._send_node({
                    "run_id": self.run_id, "hostname": m["hostname"], "uid": m["manager"], "block_id": m["block_id"],
                    "worker_count": m["worker_count"], "python_v": m["python_version"],
                    "last_heartbeat": now - datetime.timedelta(seconds=m["last_heartbeat"]),
                }, True)
        for manager, row in list(self.nodes.items()):
            if manager not in seen and row["active"]:
                self._send_node(dict(row), False)

    def _send_node(self, row: dict[str, Any], active: bool) -> None:
        facts = self.facts.get(row["uid"])
        if facts is not None:
            row.update(cpu_count=facts.cpu_count, total_memory=facts.total_memory)
        elif row["hostname"] == platform.node():
            row.update(cpu_count=psutil.cpu_count() or 0, total_memory=psutil.virtual_memory().total)
        else:
            row.update(cpu_count=0, total_memory=0)  # until one of its workers says
        row.update(active=active, timestamp=datetime.datetime.now())
        self.nodes[row["uid"]] = row
        self.queue.put((MessageType.NODE_INFO, dict(row)))
