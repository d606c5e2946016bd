"""The sending end of monitoring, one per process: a queue that the hot path appends to, and a
thread that sends it to the hub in batches.

``emit()`` is a ``deque.append`` (atomic under the GIL, no lock, no system call): it
never waits for the hub, the network or the disk.  Every ``flush_period`` the
thread takes what is queued and sends it as batches of at most BATCH_EVENTS.

The hub may be gone (killed, crashed, its disk full).  The thread watches its
connection (a ZeroMQ socket monitor): while it is not connected, events stay
queued, up to ``max_queued``; beyond that they are dropped and counted, with
one warning.  A hub that comes back (restarted on the same address) gets the
backlog.  ``stop()`` sends what is left, or counts it as lost if the hub is gone.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections import deque
from collections.abc import Callable
from typing import Any

import zmq
from zmq.utils.monitor import recv_monitor_message

from .. import security
from .events import encode_batch, weight

log = logging.getLogger("htex.monitoring")

BATCH_EVENTS = 5000  # events per message, at most (a message of 5,000 task events is ~400 kB)
SENDER_NICE = 5  # the sender thread's CPU priority below its process's
STOP_SECONDS = 1.0  # at stop, by default, for the last batches to leave (the interchange has 2 s to stop in all)
_CONNECTED = zmq.EVENT_HANDSHAKE_SUCCEEDED  # after CURVE's handshake too: the hub took us
_GONE = zmq.EVENT_DISCONNECTED | zmq.EVENT_HANDSHAKE_FAILED_AUTH | zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL


class EventSender(threading.Thread):
    """Batches events to the hub at ``url``; CURVE (as the run's pool key) when ``cert_dir`` is given on TCP."""

    def __init__(self, url: str, run_id: str, source: str, cert_dir: str | None = None, flush_period: float = 0.25,
                 max_queued: int = 200_000, sample: Callable[[], list[Any]] | None = None,
                 sample_period: float = 0.0, collect: Callable[[], list[Any]] | None = None,
                 stop_seconds: float = STOP_SECONDS) -> None:
        super().__init__(name=f"htex-monitor-{source}", daemon=True)
        self.url, self.run_id, self.source, self.cert_dir = url, run_id, source, cert_dir
        self.flush_period = flush_period
        self.max_queued = max_queued
        self.sample, self.sample_period = sample, sample_period
        self.collect = collect  # called before each flush: events a reporter kept in columns
        self.stop_seconds = stop_seconds  # at stop, for the last batches to reach the hub
        self.queue: deque[Any] = deque()
        self.held = 0  # facts (events.weight) in the queue, about
        self.sent = 0  # facts sent (one per task for batched events: events.weight)
        self.dropped = 0  # facts lost
        self.connected = False
        self._ever_connected = False
        self._warned = False
        self._stopping = False
        self._ctx = zmq.Context()
        self._wake_r, self._wake_w = os.pipe()  # stop() writes a byte: the thread wakes at once
        self._pid = os.getpid()

    def emit(self, event: Any) -> None:
        """Queue one event; never blocks.  Beyond max_queued facts (the hub is gone), count it as lost."""
        w = weight(event)
        if self.held + w <= self.max_queued:
            self.queue.append(event)
            self.held += w  # not atomic across threads: a bound, not an account
        else:
            self._drop(w)

    def stop(self) -> None:
        """Send what is queued (``stop_seconds`` at most), then close."""
        if not self.is_alive() or os.getpid() != self._pid:
            return
        os.write(self._wake_w, b"x")
        self.join(self.stop_seconds + 2 * self.flush_period + 1.0)
        if self.dropped:
            log.warning("monitoring: %d events of %s were lost (the hub at %s was unreachable)",
                        self.dropped, self.source, self.url)

    # -- the thread ----------------------------------------------------------------

    def run(self) -> None:
        try:  # Linux: this thread alone yields the CPU to the process's own work (tasks, results)
            os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), SENDER_NICE)
        except (OSError, AttributeError):
            pass
        sock = self._ctx.socket(zmq.PUSH)
        sock.setsockopt(zmq.SNDHWM, 1000)
        sock.setsockopt(zmq.LINGER, int(self.stop_seconds * 1000))
        if self.cert_dir and self.url.startswith("tcp://"):
            security.connect_as(sock, self.cert_dir, "pool")
        monitor = sock.get_monitor_socket(_CONNECTED | _GONE)
        sock.connect(self.url)
        poller = zmq.Poller()
        poller.register(monitor, zmq.POLLIN)
        poller.register(self._wake_r, zmq.POLLIN)
        next_sample = time.monotonic()
        try:
            while not self._stopping:
                events = dict(poller.poll(int(self.flush_period * 1000)))
                if monitor in events:
                    self._watch(monitor)
                if self._wake_r in events:
                    self._stopping = True
                if self.sample is not None and time.monotonic() >= next_sample:
                    next_sample = time.monotonic() + self.sample_period
                    self._take_samples()
                self._flush(sock)
            self._flush(sock)
            if not self.connected and self.queue:
                self._drop(sum(weight(e) for e in self.queue))
                self.queue.clear()
                self.held = 0
        except Exception:
            log.exception("the monitoring sender failed; monitoring events of %s are lost from now on", self.source)
        finally:
            sock.disable_monitor()
            monitor.close(linger=0)
            if not self.connected:
                sock.setsockopt(zmq.LINGER, 0)
            sock.close()
            self._ctx.term()
            os.close(self._wake_r)
            os.close(self._wake_w)

    def _watch(self, monitor: zmq.Socket[Any]) -> None:
        while monitor.poll(0):
            event = recv_monitor_message(monitor)["event"]
            if event == _CONNECTED:
                self.connected = self._ever_connected = True
                if self._warned:
                    log.warning("monitoring: the hub at %s is back", self.url)
                    self._warned = False
            elif event & _GONE:
                self.connected = False
                if event != zmq.EVENT_DISCONNECTED:
                    log.error("monitoring: the hub at %s refused %s (not a key of this run?)", self.url, self.source)
                self._warn("it disconnected")

    def _take_samples(self) -> None:
        assert self.sample is not None
        try:
            for event in self.sample():
                self.emit(event)
        except Exception:
            log.exception("monitoring: sampling resources failed")

    def _flush(self, sock: zmq.Socket[Any]) -> None:
        if self.collect is not None:
            for event in self.collect():
                self.emit(event)
        queue = self.queue
        while queue and self.connected:
            n = min(len(queue), BATCH_EVENTS)
            batch = [queue.popleft() for _ in range(n)]
            facts = sum(weight(e) for e in batch)
            self.held = max(0, self.held - facts)
            try:
                sock.send(encode_batch(self.run_id, self.source, batch), zmq.NOBLOCK)
                self.sent += facts
            except zmq.Again:  # the hub does not read (1,000 batches behind): it is as good as gone
                self._drop(facts)
                self._warn("it stopped reading")
                return

    def _drop(self, n: int) -> None:
        self.dropped += n
        self._warn("its queue is full")

    def _warn(self, why: str) -> None:
        if not self._warned and self._ever_connected:
            self._warned = True
            log.warning("monitoring: the hub at %s is unreachable (%s); events of %s are kept up to %d, then "
                        "dropped and counted (%d so far); the run goes on", self.url, why, self.source,
                        self.max_queued, self.dropped)
