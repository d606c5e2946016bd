"""What root knows of a running executor: its processes, its listening sockets, its secrets.

The attacker runs as another user and reads everything itself; the root side
only uses this to keep it to this executor (other runs may share the machine)
and to judge what leaked.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from typing import Any

import psutil

from attacks import Scope


def socket_inodes(pid: int) -> set[int]:
    """Inodes of the sockets a process holds (read as root)."""
    out: set[int] = set()
    try:
        fds = os.listdir(f"/proc/{pid}/fd")
    except OSError:
        return out
    for fd in fds:
        try:
            link = os.readlink(f"/proc/{pid}/fd/{fd}")
        except OSError:
            continue
        if link.startswith("socket:["):
            out.add(int(link[len("socket:[") : -1]))
    return out


def listening() -> dict[int, str]:
    """Every listening UNIX and TCP socket of the machine: inode -> its name or port (read as root)."""
    out: dict[int, str] = {}
    with open("/proc/net/unix") as f:
        for line in f.read().splitlines()[1:]:
            parts = line.split(None, 7)
            if len(parts) >= 7 and int(parts[3], 16) & 0x10000:
                out[int(parts[6])] = parts[7] if len(parts) == 8 else ""
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            with open(table) as f:
                lines = f.read().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            parts = line.split()
            if len(parts) >= 10 and parts[3] == "0A":
                out[int(parts[9])] = f"tcp port {int(parts[1].split(':')[1], 16)}"
    return out


def role(cmdline: str) -> str:
    if "htex.interchange" in cmdline:
        return "interchange"
    if "htex.worker" in cmdline:
        return "worker"
    if "process_worker_pool" in cmdline:
        return "pool"
    return "other"


@dataclass
class Target:
    """A running executor, and what root knows of it (to scope the attack and to judge what leaked)."""

    name: str
    ex: Any = field(repr=False)
    base: str
    run_dir: str
    mine_before: set[int]  # sockets of this (client) process before the executor started
    needles: dict[str, bytes] = field(default_factory=dict, repr=False)  # what must not leak -> its bytes (never printed)

    @property
    def logdir(self) -> str:
        return str(self.ex.logdir)

    @property
    def cert_dir(self) -> str:
        return os.path.join(self.logdir, "certs")

    def connection(self) -> dict[str, Any]:
        with open(os.path.join(self.logdir, "connection.json")) as f:
            info: dict[str, Any] = json.load(f)
        return info

    def processes(self) -> dict[int, str]:
        """The executor's processes (this test's descendants): pid -> role."""
        out = {}
        for p in psutil.Process().children(recursive=True):
            try:
                out[p.pid] = role(" ".join(p.cmdline()))
            except psutil.Error:
                continue
        return out

    def scope(self) -> Scope:
        pids = self.processes()
        held = set().union(*(socket_inodes(pid) for pid in pids)) if pids else set()
        held |= socket_inodes(os.getpid()) - self.mine_before  # the executor's end of its link to the interchange
        return Scope(pids=pids, inodes=frozenset(held & set(listening())), run_dir=self.run_dir)

    def socket_names(self) -> list[str]:
        """Names of the executor's listening UNIX sockets (root's view)."""
        names = listening()
        return [names[i] for i in self.scope().inodes if names.get(i, "").startswith(("/", "@"))]

    def ipc_dirs(self) -> list[str]:
        """Directories holding the executor's path UNIX sockets, and connection.json's "ipc_dir"."""
        dirs = {os.path.dirname(n) for n in self.socket_names() if n.startswith("/")}
        ipc_dir = self.connection().get("ipc_dir")
        if ipc_dir:
            dirs.add(str(ipc_dir))
        return sorted(dirs)


def needles(ex: Any, logdir: str) -> dict[str, bytes]:
    """Secrets of a run that no other user may read anywhere."""
    out: dict[str, bytes] = {}
    certs = os.path.join(logdir, "certs")
    if os.path.isdir(certs):
        for name in sorted(os.listdir(certs)):
            if name.endswith(".public"):
                continue
            with open(os.path.join(certs, name), "rb") as f:
                key = f.read().strip()
            if key:
                out[f"the secret key in certs/{name}"] = key
    return out
