"""A pool's one connection to the interchange, seen from both ends.

Pools on other hosts reach the interchange over ZeroMQ: a DEALER each, the
interchange's ROUTER for all of them, over TCP (CURVE when the run is
encrypted), or ``ipc://`` for a pool started by hand (``htex pool``).

A pool the executor starts on its own host connects instead to a UNIX
stream socket in the run's private directory (``unix://PATH``) and speaks
framed messages (``framing.py``), as the executor and the interchange do.
Why: every ZeroMQ message wakes the I/O thread of its sender and of its
receiver, and each ZeroMQ call polls its mailbox; on W2 (one task at a time)
that was about 12 poll() calls a round trip in both the interchange and
the pool.  A stream socket is one read and one write.

The stream listener is bound by the executor (``endpoints.py``) before any
block starts, and inherited by the interchange: a pool never finds it
missing.  The directory (0700) keeps other users out, and the interchange
checks each peer's uid as well (``SO_PEERCRED``).  A stream pool has no
identity on the wire: the interchange names each connection itself
(``UNIX_ID``, a form no ZeroMQ identity can take), so no peer can claim
another's.  The end of the stream means the peer is gone: the interchange
loses the pool at once, where over ZeroMQ it waits for the heartbeat
threshold; a pool whose interchange closed the stream stops.
"""

from __future__ import annotations

import logging
import os
import socket
import struct
import time
from collections.abc import Iterator, Sequence
from typing import Any

import zmq

from . import framing, security
from .protocol import Blob

log = logging.getLogger("htex.poollink")

SCHEME = "unix://"
# A stream pool's name in the interchange: ZeroMQ refuses identities that start with a zero byte,
# and its own generated ones are 5 bytes long, so none can look like this.
UNIX_ID = b"\x00unix-%d"
_CRED = struct.Struct("3i")  # struct ucred: pid, uid, gid
LINGER_SECONDS = 2.0  # how long a closing end waits for what it still has to send


class Closed(Exception):
    """The other end closed the stream: its process exited or died."""


# -- the pool's end -----------------------------------------------------------


class ZmqLink:
    """A pool's DEALER: TCP (CURVE when the run is encrypted) or ipc://.  ZeroMQ reconnects by itself,
    so the link never ends; a lost interchange shows as silence (heartbeat_threshold)."""

    def __init__(self, ctx: zmq.Context[Any], url: str, identity: bytes, cert_dir: str | None,
                 poller: zmq.Poller) -> None:
        sock = ctx.socket(zmq.DEALER)
        sock.setsockopt(zmq.IDENTITY, identity)
        sock.setsockopt(zmq.LINGER, int(LINGER_SECONDS * 1000))
        sock.setsockopt(zmq.SNDHWM, 0)
        sock.setsockopt(zmq.RCVHWM, 0)
        if cert_dir and url.startswith("tcp://"):  # UNIX sockets: their directory guards them
            security.connect_as(sock, cert_dir, "pool")
        sock.connect(url)
        poller.register(sock, zmq.POLLIN)
        self.sock = sock
        self.key: Any = sock  # what the poller reports it as

    def messages(self, events: int) -> Iterator[Sequence[Blob]]:
        while self.sock.getsockopt(zmq.EVENTS) & framing.POLLIN:  # no exception at the end (zmq.Again costs)
            yield self.sock.recv_multipart(copy=False)

    def send(self, frames: Sequence[Blob]) -> None:
        self.sock.send_multipart(frames, copy=False)

    def close(self) -> None:
        self.sock.close(linger=500)


class UnixLink:
    """A pool's framed stream to the interchange on its own host (``unix://PATH``)."""

    def __init__(self, url: str, poller: zmq.Poller) -> None:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            sock.connect(url[len(SCHEME):])
        except OSError as exc:
            sock.close()
            raise Closed(f"cannot connect to the interchange at {url}: {exc}; it has stopped, or this is "
                         "not its host (pools elsewhere connect over TCP)") from None
        sock.setblocking(False)
        self.link = framing.StreamLink(sock, poller)
        self.key: Any = self.link.fd

    def messages(self, events: int) -> Iterator[Sequence[Blob]]:
        """What came; raises Closed at the end of the stream (after what came before it)."""
        if events & framing.POLLOUT:
            self.link.flush()
        if events & framing.POLLIN:
            batch = self.link.read()
            if batch is None:
                raise Closed("the interchange closed the connection")
            yield from batch

    def send(self, frames: Sequence[Blob]) -> None:
        """Never blocks; raises Closed if the interchange is gone."""
        try:
            self.link.send(frames)
        except OSError as exc:
            raise Closed(f"cannot send to the interchange: {exc}") from None

    def close(self) -> None:
        _linger(self.link)
        self.link.close()


def connect(url: str, ctx: zmq.Context[Any], identity: bytes, cert_dir: str | None,
            poller: zmq.Poller) -> ZmqLink | UnixLink:
    if url.startswith(SCHEME):
        return UnixLink(url, poller)
    return ZmqLink(ctx, url, identity, cert_dir, poller)


# -- the interchange's end ----------------------------------------------------


class UnixPools:
    """The interchange's UNIX links: the listener the executor bound, and a StreamLink per connection.

    ``ready`` takes what the poller reported for one of ``fds`` and returns the
    messages that came, each with the connection's identity; connections that
    ended (their peer closed, or a send failed) wait in ``ended`` for the
    interchange to lose their pools.
    """

    def __init__(self, listener_fd: int, poller: zmq.Poller) -> None:
        self.listener = socket.socket(fileno=listener_fd)
        self.listener.setblocking(False)
        self.poller = poller
        poller.register(self.listener.fileno(), framing.POLLIN)
        self.fds: dict[int, bytes] = {self.listener.fileno(): b""}  # every fd we watch -> its identity
        self.links: dict[bytes, framing.StreamLink] = {}
        self.ended: list[bytes] = []  # connections that ended (peer closed, or a send failed)
        self.paused = False  # not accepting for now: out of descriptors
        self._count = 0
        self._uid = os.getuid()

    def __contains__(self, identity: bytes) -> bool:
        return identity in self.links

    def ready(self, fd: int, events: int) -> list[tuple[bytes, Sequence[Blob]]]:
        """The messages that came on ``fd`` (a connection that ended joins ``ended``).

        A corrupt stream raises ProtocolError: it cannot be resynchronised, and the caller drops it.
        """
        identity = self.fds[fd]
        if not identity:
            self._accept()
            return []
        link = self.links[identity]
        if events & framing.POLLOUT:
            try:
                link.flush()
            except OSError:
                self._close(identity)
                return []
        if not events & framing.POLLIN:
            return []
        batch = link.read()
        if batch is None:  # what came before the end was returned by earlier reads
            self._close(identity)
            return []
        return [(identity, frames) for frames in batch]

    def send(self, identity: bytes, frames: Sequence[Blob]) -> bool:
        """Queue or send one message; False if the connection is gone (it is closed then)."""
        link = self.links.get(identity)
        if link is None:
            return False
        try:
            link.send(frames)
            return True
        except OSError as exc:
            log.info("cannot send to %r: %s", identity, exc)
            self._close(identity)
            return False

    def drop(self, identity: bytes) -> None:
        """Close one connection (a corrupt stream)."""
        if identity in self.links:
            self._close(identity)

    def close(self) -> None:
        """Send what waits (up to LINGER_SECONDS in all), then close every connection and the listener."""
        deadline = time.monotonic() + LINGER_SECONDS
        for identity in list(self.links):
            _linger(self.links[identity], deadline)
            self._close(identity)
        self.ended = []
        if not self.paused:
            self.poller.unregister(self.listener.fileno())
        self.listener.close()

    def resume(self) -> None:
        """Accept again (called once a second): descriptors may have been freed."""
        if self.paused:
            self.paused = False
            self.poller.register(self.listener.fileno(), framing.POLLIN)

    def _accept(self) -> None:
        while True:
            try:
                sock, _ = self.listener.accept()
            except BlockingIOError:
                return
            except OSError as exc:
                # Out of descriptors: the listener stays readable, so stop watching it (else the loop spins)
                # until resume(); fdlimit.Probe says so in the log, and the pool waits in the backlog.
                log.debug("accept failed: %s", exc)
                self.poller.unregister(self.listener.fileno())
                self.paused = True
                return
            pid, uid, _ = _CRED.unpack(sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, _CRED.size))
            if uid != self._uid and uid != 0:  # the directory already keeps them out: a second lock
                log.warning("refused a UNIX connection from pid %d of uid %d (not ours)", pid, uid)
                sock.close()
                continue
            sock.setblocking(False)
            self._count += 1
            identity = UNIX_ID % self._count
            link = framing.StreamLink(sock, self.poller)
            self.links[identity] = link
            self.fds[link.fd] = identity

    def _close(self, identity: bytes) -> None:
        link = self.links.pop(identity)
        del self.fds[link.fd]
        link.close()
        self.ended.append(identity)


def _linger(link: framing.StreamLink, deadline: float | None = None) -> None:
    """Send what waits in ``link``, blocking until ``deadline`` at most (a peer that does not read loses it)."""
    if link.closed or not link.outgoing:
        return
    end = time.monotonic() + LINGER_SECONDS if deadline is None else deadline
    try:
        while link.outgoing and (left := end - time.monotonic()) > 0:
            link.sock.settimeout(left)
            link.outgoing = framing.send_some(link.sock, link.outgoing)
    except OSError:
        pass
