"""CurveZMQ for every socket: keys made per run, handed out through the run directory.

Three key pairs per run, in ``run_dir/<label>/certs/`` (directory 0700, files 0600):

* ``server``      the interchange's worker-facing sockets and the executor's
                  client socket are CURVE servers with it;
* ``interchange`` the interchange connects to the executor with it;
* ``pool``        every pool connects to the interchange with it.

A server socket accepts a peer only if the peer proves it holds the secret key
of the pair allowed there (a ZAP handler checks the public key), so a process
that cannot read the run directory can neither register a pool nor submit.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from typing import Any

import zmq

ROLES = ("server", "interchange", "pool")


def available() -> bool:
    return bool(zmq.has("curve"))


def private_dir() -> str:
    """A new directory only this user can enter (0700), short enough for UNIX socket paths (108 bytes)."""
    return tempfile.mkdtemp(prefix="htex-")


def remove_private_dir(path: str | None) -> None:
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


class _OnlyKey:
    """ZAP credentials check: exactly one public key is allowed."""

    def __init__(self, allowed: bytes) -> None:
        self.allowed = allowed

    def callback(self, domain: str, key: bytes) -> bool:
        return key == self.allowed


def authenticator(ctx: zmq.Context[Any], cert_dir: str, allowed_role: str) -> Any:
    """Start a ZAP handler on ``ctx`` that lets in only ``allowed_role``'s key.  Stop it at shutdown."""
    import zmq.auth.thread  # pulls in asyncio: only encrypted runs pay for it

    auth = zmq.auth.thread.ThreadAuthenticator(ctx)
    auth.start()
    auth.configure_curve_callback("*", credentials_provider=_OnlyKey(load(cert_dir, allowed_role, secret=False)[0]))
    return auth
