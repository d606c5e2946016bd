"""Test hosts on one machine: a network namespace per "host", linked to the root namespace.

Each host is a namespace ``htex-t-<token>-<i>`` (the token is unique per lab)
with ``lo`` up and one link to the root namespace, in a /30 of its own in
198.18.0.0/24 (the benchmarking range, RFC 2544; no other address is used):
root side ``198.18.0.<4i+1>``, host side ``198.18.0.<4i+2>``, and a default
route through the root side.  The interchange listens on the root side of the
first link (``Lab.address``, 198.18.0.1): every host reaches it through its own
link, and the kernel keeps a local address when its link is down, so cutting
one host's link leaves the others alone.

The link is either a veth pair (``Lab.host()``), or two TAP devices with a
user-space relay between them that delays and drops frames (``Lab.relay_host()``,
see relay.py: this kernel has no sch_netem).  ``Host.cut()`` sets the root side
down and, when the ``with`` block ends, up again: packets both ways are lost
for that long, and TCP connections survive it (they retransmit) unless a peer
gives up first.

Labs take an exclusive lock (another pytest session waits), so the addresses of
links that exist at the same time are distinct, and anything named ``htex-t-*``
found while holding the lock is a leftover of a session that died: ``sweep()``
deletes it.  Everything a lab made is deleted when it closes, whatever the test
did.  Needs root and iproute2 (``ip``); ``unavailable()`` says why not.
"""

from __future__ import annotations

import contextlib
import fcntl
import ipaddress
import os
import re
import secrets
import shutil
import socket
import struct
import subprocess
import tempfile
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

from htex.launchers import Launcher, SingleNodeLauncher

import relay

PREFIX = "htex-t-"
NETWORK = ipaddress.ip_network("198.18.0.0/24")
_LOCK_PATH = "/run/htex-netlab.lock" if os.access("/run", os.W_OK) else os.path.join(tempfile.gettempdir(), "htex-netlab.lock")
_LOCK_WAIT = 60.0


def ip(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    """Run ``ip ARGS``; on failure raise with ip's own message."""
    proc = subprocess.run(["ip", *args], capture_output=True, text=True, timeout=30)
    if check and proc.returncode != 0:
        raise RuntimeError(f"ip {' '.join(args)} failed ({proc.returncode}): {proc.stderr.strip()}")
    return proc


_why_not: list[str | None] = []


def unavailable() -> str | None:
    """Why network namespaces cannot be used here (a sentence for pytest.skip), or None if they can."""
    if _why_not:
        return _why_not[0]
    reason: str | None = None
    if os.geteuid() != 0:
        reason = "network tests need root (network namespaces, veth and TAP devices); see ci/netns/README.md"
    elif shutil.which("ip") is None:
        reason = "network tests need iproute2's `ip` (Debian package iproute2); see ci/netns/README.md"
    else:
        probe = f"{PREFIX}probe-{os.getpid()}"
        made = ip("netns", "add", probe, check=False)
        if made.returncode != 0:
            reason = f"`ip netns add` fails here: {made.stderr.strip()} (network tests need root in the initial namespace)"
        else:
            ip("netns", "delete", probe, check=False)
    _why_not.append(reason)
    return reason


def tap_unavailable() -> str | None:
    """Why TAP devices cannot be made here, or None."""
    if not os.path.exists("/dev/net/tun"):
        return "the relay needs /dev/net/tun (TAP devices, kernel option CONFIG_TUN); it is missing here"
    try:
        os.close(relay.open_tap(f"{PREFIX}probe"))  # gone again with its only fd
    except OSError as exc:
        return f"cannot make a TAP device here: {exc}"
    return None


# -- leftovers ---------------------------------------------------------------------------------


def _names(kind: str) -> list[str]:
    if kind == "netns":
        out = ip("netns", "list", check=False).stdout
        return [line.split()[0] for line in out.splitlines() if line.startswith(PREFIX)]
    out = ip("-o", "link", "show", check=False).stdout
    # "12: htex-t-ab12r0@if11: <...>" -> the name, without the @peer
    found = (line.split(":")[1].strip().split("@")[0] for line in out.splitlines() if ":" in line)
    return [name for name in found if name.startswith(PREFIX)]


def sweep() -> list[str]:
    """Delete every namespace and link named htex-t-* (call it holding the lock); return what was deleted."""
    gone = []
    for name in _names("link"):
        if ip("link", "delete", name, check=False).returncode != 0:
            ip("tuntap", "del", "dev", name, "mode", "tap", check=False)
        gone.append(name)
    for name in _names("netns"):
        ip("netns", "delete", name, check=False)
        gone.append(name)
    return gone


@contextlib.contextmanager
def locked() -> Iterator[None]:
    """Hold the machine-wide lab lock (one lab at a time on this machine, whatever the session)."""
    fd = os.open(_LOCK_PATH, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        deadline = time.monotonic() + _LOCK_WAIT
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() > deadline:
                    raise TimeoutError(f"another test session holds {_LOCK_PATH} for more than {_LOCK_WAIT:.0f} s") from None
                time.sleep(0.1)  # waiting for another session's lab: nothing to poll but the lock
        yield
    finally:
        os.close(fd)  # releases the lock


# -- hosts ---------------------------------------------------------------------------------------


@dataclass
class Host:
    """One namespace and its link to the root namespace."""

    ns: str
    root_if: str  # the root side of the link: cut() sets it down
    ns_if: str
    root_ip: str
    ns_ip: str
    relay: relay.Relay | None = None

    @property
    def prefix(self) -> str:
        """The command prefix that runs something on this host."""
        return f"ip netns exec {self.ns}"

    @contextlib.contextmanager
    def cut(self) -> Iterator[None]:
        """The link is down inside the ``with`` block (packets both ways are lost), up again after it."""
        ip("link", "set", self.root_if, "down")
        try:
            yield
        finally:
            ip("link", "set", self.root_if, "up")

    def cut_for(self, seconds: float) -> None:
        """Cut the link for ``seconds`` (the fault itself: holding it down is not synchronisation)."""
        with self.cut():
            time.sleep(seconds)

    def netns_inode(self) -> int:
        return os.stat(f"/run/netns/{self.ns}").st_ino

    def runs(self, pid: int) -> bool:
        """Whether process ``pid`` lives in this host's namespace."""
        try:
            link = os.readlink(f"/proc/{pid}/ns/net")
        except OSError:
            return False
        return link == f"net:[{self.netns_inode()}]"

    def popen(self, argv: Sequence[str], **kw: Any) -> subprocess.Popen[bytes]:
        """Start ``argv`` on this host (a child of the test process)."""
        return subprocess.Popen(["ip", "netns", "exec", self.ns, *argv], **kw)


class Lab:
    """The hosts of one test.  Use as a context manager (or call close()): it deletes all it made."""

    def __init__(self) -> None:
        self.token = secrets.token_hex(2)
        self.hosts: list[Host] = []
        self._stack = contextlib.ExitStack()
        self._stack.enter_context(locked())
        try:
            sweep()  # holding the lock, anything named htex-t-* belongs to a session that died
        except BaseException:
            self._stack.close()
            raise

    @property
    def address(self) -> str:
        """The address the interchange listens on: the root side of the first link."""
        if not self.hosts:
            raise RuntimeError("make a host first: the interchange's address is the root side of the first link")
        return self.hosts[0].root_ip

    def _next(self) -> tuple[int, str, str, str]:
        i = len(self.hosts)
        if 4 * i + 3 >= NETWORK.num_addresses:
            raise RuntimeError("no /30 left in 198.18.0.0/24")
        ns = f"{PREFIX}{self.token}-{i}"
        base = int(NETWORK.network_address) + 4 * i
        root_ip, ns_ip = (str(ipaddress.ip_address(base + k)) for k in (1, 2))
        # Interface names: at most 15 characters (htex-t-ab12r0).
        return i, ns, root_ip, ns_ip

    def _add_ns(self, ns: str) -> None:
        ip("netns", "add", ns)
        self._stack.callback(ip, "netns", "delete", ns, check=False)
        ip("-n", ns, "link", "set", "lo", "up")

    def _address(self, host: Host) -> None:
        ip("addr", "add", f"{host.root_ip}/30", "dev", host.root_if)
        ip("link", "set", host.root_if, "up")
        ip("-n", host.ns, "addr", "add", f"{host.ns_ip}/30", "dev", host.ns_if)
        ip("-n", host.ns, "link", "set", host.ns_if, "up")
        ip("-n", host.ns, "route", "add", "default", "via", host.root_ip)

    def host(self) -> Host:
        """A host linked by a veth pair."""
        i, ns, root_ip, ns_ip = self._next()
        self._add_ns(ns)
        root_if, ns_if = f"{PREFIX}{self.token}r{i}", f"{PREFIX}{self.token}n{i}"
        ip("link", "add", root_if, "type", "veth", "peer", "name", ns_if, "netns", ns)
        self._stack.callback(ip, "link", "delete", root_if, check=False)  # deletes both ends
        host = Host(ns, root_if, ns_if, root_ip, ns_ip)
        self._address(host)
        self.hosts.append(host)
        return host

    def relay_host(self, delay_ms: float = 0.0, loss: float = 0.0, seed: int = 1, max_seconds: float = 300.0) -> Host:
        """A host linked by two TAP devices and a relay that delays each frame by ``delay_ms`` (each way)
        and drops each with probability ``loss``."""
        i, ns, root_ip, ns_ip = self._next()
        self._add_ns(ns)
        root_if, ns_if = f"{PREFIX}{self.token}r{i}", f"{PREFIX}{self.token}n{i}"
        root_fd = relay.open_tap(root_if)
        self._stack.callback(os.close, root_fd)  # the last fd closed, the device is gone
        ns_fd = relay.open_tap(ns_if)
        self._stack.callback(os.close, ns_fd)
        ip("link", "set", ns_if, "netns", ns)  # the fd stays valid across the move
        host = Host(ns, root_if, ns_if, root_ip, ns_ip)
        self._address(host)
        host.relay = relay.Relay(root_fd, ns_fd, delay_ms=delay_ms, loss=loss, seed=seed, max_seconds=max_seconds)
        self._stack.callback(host.relay.stop)  # runs before the fds close (callbacks run last-in first-out)
        self.hosts.append(host)
        return host

    def close(self) -> None:
        self._stack.close()

    def __enter__(self) -> Lab:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


# -- pools on hosts --------------------------------------------------------------------------------

# The old code gives pools of a local provider abstract UNIX socket URLs (ipc://@name).  Abstract
# sockets belong to a network namespace: a pool on another host cannot reach them.  Dropped, the pool
# uses -a/-t/-r (TCP to the executor's address).  With the design-11 code, a local provider with an
# explicit address gives TCP URLs only: there is nothing to drop.
_ABSTRACT_IPC = re.compile(r"\s--(?:task|result)_url=ipc://@\S+")
_BLOCK_ID = re.compile(r"(?:--block_id[= ]|\s-b\s+)(\S+)")


class NetnsLauncher(Launcher):
    """Starts block i's pool on host ``namespaces[i % len(namespaces)]`` (``ip netns exec NS``)."""

    def __init__(self, namespaces: Sequence[str]) -> None:
        super().__init__(debug=False)
        if not namespaces:
            raise ValueError("at least one namespace")
        self.namespaces = list(namespaces)
        self.inner = SingleNodeLauncher(debug=False)

    def namespace(self, command: str) -> str:
        found = _BLOCK_ID.search(command)
        block = int(found.group(1)) if found and found.group(1).isdigit() else 0
        return self.namespaces[block % len(self.namespaces)]

    def __call__(self, command: str, tasks_per_node: int, nodes_per_block: int) -> str:
        command = _ABSTRACT_IPC.sub("", command)
        return self.inner(f"ip netns exec {self.namespace(command)} {command}", tasks_per_node, nodes_per_block)


def tcp_connections(pid: int) -> list[tuple[str, int, str, int, int]]:
    """TCP sockets of the namespace process ``pid`` is in: (local ip, port, remote ip, port, state)."""
    found = []
    with open(f"/proc/{pid}/net/tcp") as f:
        next(f)
        for line in f:
            local, remote, state = line.split()[1:4]
            lip, lport = local.split(":")
            rip, rport = remote.split(":")
            found.append((_ip(lip), int(lport, 16), _ip(rip), int(rport, 16), int(state, 16)))
    return found


ESTABLISHED = 1


def _ip(hex_be32: str) -> str:
    return socket.inet_ntoa(struct.pack("=I", int(hex_be32, 16)))


def pools_on(ex: Any, hosts: Sequence[Host], timeout: float = 30.0) -> dict[str, dict[str, Any]]:
    """Wait until ``ex`` has one pool per host; check each runs on its host and talks TCP over its link.

    Returns the pools (``connected_managers`` entries) by host namespace.
    """
    from support import wait_for

    def registered() -> list[dict[str, Any]] | None:
        managers: list[dict[str, Any]] = ex.connected_managers
        return managers if len(managers) >= len(hosts) else None

    managers = wait_for(registered, timeout=timeout, what=f"{len(hosts)} pools to register")
    address = ex.address
    found: dict[str, dict[str, Any]] = {}
    for m in managers:
        host = next((h for h in hosts if h.runs(m["pid"])), None)
        assert host is not None, f"pool {m} runs on none of the hosts {[h.ns for h in hosts]}"
        found[host.ns] = m
    assert len(found) == len(hosts), f"not one pool per host: {managers}"
    for host in hosts:
        pid = found[host.ns]["pid"]

        def linked(pid: int = pid, host: Host = host) -> bool:
            # The pool's one connection (a SYN lost on a lossy link is sent again after 1 s, 3 s, ...).
            up = [c for c in tcp_connections(pid) if c[0] == host.ns_ip and c[2] == address and c[4] == ESTABLISHED]
            return len(up) >= 1

        wait_for(linked, timeout=timeout, what=f"the pool on {host.ns} to have its TCP connection to {address}")
    return found
