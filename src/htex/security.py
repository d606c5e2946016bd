"""Who may connect: the run's private directory for UNIX sockets, CurveZMQ keys for TCP.

On the client's host every channel is a UNIX socket in a directory made for
the run with mode 0700 (``private_dir``): the kernel refuses other users.

TCP sockets are CURVE servers when the run is encrypted (the default).  Two
key pairs per run, in ``run_dir/<label>/certs/`` (directory 0700, files 0600):

* ``server``  the interchange's worker-facing TCP sockets are CURVE servers with it;
* ``pool``    every pool connects with it (``--cert_dir`` or ``$HTEX_CERT_DIR``).

A ZAP handler (``Authenticator``) lets in only a peer that proves it holds the
pool key's secret, so a process that cannot read the run directory can neither
register a pool, nor send results, nor ask for status.
"""

from __future__ import annotations

import os
import threading
from typing import Any

import zmq
import zmq.utils.z85

ROLES = ("server", "pool")


def available() -> bool:
    return bool(zmq.has("curve"))


def private_dir() -> str:
    """A new directory only this user can enter (0700), short enough for UNIX socket paths (108 bytes)."""
    import tempfile  # here: the interchange and the pools never need it (it pulls in bz2, lzma)

    return tempfile.mkdtemp(prefix="htex-")


def remove_private_dir(path: str | None) -> None:
    import shutil

    if path:
        shutil.rmtree(path, ignore_errors=True)


def make_keys(cert_dir: str) -> None:
    """Create the run's three key pairs (public and secret) with owner-only permissions."""
    os.makedirs(cert_dir, mode=0o700, exist_ok=True)
    os.chmod(cert_dir, 0o700)
    for role in ROLES:
        public, secret = zmq.curve_keypair()
        for suffix, key in (("public", public), ("secret", secret)):
            path = os.path.join(cert_dir, f"{role}.{suffix}")
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            with os.fdopen(fd, "wb") as f:
                f.write(key)


def load(cert_dir: str, role: str, secret: bool = True) -> tuple[bytes, bytes | None]:
    """(public, secret) of a role; secret is None when not asked for."""
    with open(os.path.join(cert_dir, f"{role}.public"), "rb") as f:
        public = f.read().strip()
    if not secret:
        return public, None
    with open(os.path.join(cert_dir, f"{role}.secret"), "rb") as f:
        return public, f.read().strip()


def serve(sock: zmq.Socket[Any], cert_dir: str) -> None:
    """Make ``sock`` a CURVE server (call before bind)."""
    public, secret = load(cert_dir, "server")
    sock.curve_publickey = public
    sock.curve_secretkey = secret
    sock.curve_server = True


def connect_as(sock: zmq.Socket[Any], cert_dir: str, role: str) -> None:
    """Make ``sock`` a CURVE client of the run's server, as ``role`` (call before connect)."""
    public, secret = load(cert_dir, role)
    sock.curve_publickey = public
    sock.curve_secretkey = secret
    sock.curve_serverkey = load(cert_dir, "server", secret=False)[0]


class Authenticator(threading.Thread):
    """A ZAP handler (ZeroMQ RFC 27) that lets in CURVE clients holding one public key, and no one else.

    Its own small thread rather than pyzmq's ThreadAuthenticator, which imports asyncio: 6 MiB more
    in every interchange, for a check that is one comparison.  It owns its sockets: the ZAP endpoint
    and the inproc pipe that stops it.
    """

    def __init__(self, ctx: zmq.Context[Any], allowed: bytes) -> None:
        super().__init__(name="htex-zap", daemon=True)
        self.allowed = allowed
        self._zap = ctx.socket(zmq.REP)
        self._zap.linger = 0
        self._zap.bind("inproc://zeromq.zap.01")  # must be bound before the first CURVE handshake
        self._stop_url = f"inproc://htex-zap-stop-{id(self)}"
        self._control = ctx.socket(zmq.PAIR)
        self._control.linger = 0
        self._control.bind(self._stop_url)
        self._ctx = ctx
        self.start()

    def run(self) -> None:
        poller = zmq.Poller()
        poller.register(self._zap, zmq.POLLIN)
        poller.register(self._control, zmq.POLLIN)
        try:
            while self._control not in dict(poller.poll()):
                self._answer(self._zap.recv_multipart())
        finally:
            self._zap.close()
            self._control.close()

    def _answer(self, request: list[bytes]) -> None:
        # version, request id, domain, address, identity, mechanism, credentials...
        if len(request) < 6:
            self._zap.send_multipart([b"1.0", b"", b"400", b"malformed ZAP request", b"", b""])
            return
        version, request_id, mechanism, credentials = request[0], request[1], request[5], request[6:]
        ok = mechanism == b"CURVE" and len(credentials) == 1 and zmq.utils.z85.encode(credentials[0]) == self.allowed
        status, text = (b"200", b"OK") if ok else (b"400", b"not a key of this run")
        self._zap.send_multipart([version, request_id, status, text, b"", b""])

    def stop(self) -> None:
        stopper = self._ctx.socket(zmq.PAIR)
        stopper.linger = 0
        stopper.connect(self._stop_url)
        stopper.send(b"")
        self.join(5.0)
        stopper.close()


def authenticator(ctx: zmq.Context[Any], cert_dir: str, allowed_role: str) -> Authenticator:
    """Start a ZAP handler on ``ctx`` that lets in only ``allowed_role``'s key.  Stop it at shutdown."""
    return Authenticator(ctx, load(cert_dir, allowed_role, secret=False)[0])
