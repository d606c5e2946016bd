"""What another local user can learn about a running executor, and what it can try against it.

Every function here whose first argument is ``notify`` runs as the stranger,
in the child that stranger.py forked and dropped to another user.  It may use
only modules already imported (the interpreter's files are under /root, which
the stranger cannot read): every import is at the top of this module.

The attacker knows nothing of the executor but what any local user can read:
``/proc/<pid>/cmdline`` and ``environ`` of its processes, ``/proc/net/unix``
and ``/proc/net/tcp`` (the listening sockets), and whatever it can read under
the run directory.  It does not know which endpoint is which, so it sends
every message to every endpoint it found.  ``Scope`` (from the root side)
only keeps it to this executor's processes and sockets, so that it does not
attack other runs on the same machine; it never tells it anything it could
not see itself.
"""

from __future__ import annotations

import dataclasses
import errno
import os
import platform
import re
import secrets
import socket
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import zmq

import htex
from htex import protocol, serialize

Notify = Callable[[str, Any], None]

WINDOW = 3.0  # seconds an attacker waits for an answer: a connection that works answers in milliseconds
_READ_MAX = 256 * 1024  # bytes read of each file found under the run directory
_URL = re.compile(rb"(?:ipc|tcp|unix)://[^\x00\s'\"\],}\\]+")
_IDENTITY = re.compile(rb'"([A-Za-z_]*identity[A-Za-z_]*)"\s*:\s*"([^"]+)"')


@dataclass(frozen=True)
class Scope:
    """Which of the things the stranger sees belong to the executor under attack.

    pids: the executor's processes (pid -> role, for messages); inodes: their
    listening sockets; run_dir: the run directory (the user's, so it is known).
    """

    pids: dict[int, str]
    inodes: frozenset[int]
    run_dir: str


@dataclass
class Survey:
    """Everything the stranger could read, gathered as the stranger."""

    cmdlines: dict[int, list[str]] = field(default_factory=dict)
    environs: dict[int, bytes] = field(default_factory=dict)  # only those it could read
    environ_errors: dict[int, str] = field(default_factory=dict)
    unix: list[tuple[str, int]] = field(default_factory=list)  # (name: "@abstract" or a path, inode), listening
    tcp: list[tuple[str, int, int]] = field(default_factory=list)  # (host to connect to, port, inode), listening
    files: dict[str, bytes] = field(default_factory=dict)  # readable files under the run dir (first bytes)
    listable: list[str] = field(default_factory=list)  # directories under the run dir it could list
    unreadable: dict[str, str] = field(default_factory=dict)  # path -> why not
    unix_connect: dict[str, str] = field(default_factory=dict)  # every UNIX socket name seen -> "connected" or errno

    def texts(self) -> Iterator[tuple[str, bytes]]:
        """(where, bytes) of everything it read."""
        for pid, argv in self.cmdlines.items():
            yield f"/proc/{pid}/cmdline", "\0".join(argv).encode(errors="surrogateescape")
        for pid, env in self.environs.items():
            yield f"/proc/{pid}/environ", env
        for path, data in self.files.items():
            yield path, data
        for path in self.listable:
            yield f"the listing of {path}", "\n".join(_listdir(path)).encode(errors="surrogateescape")

    def urls(self) -> list[str]:
        """ipc://, unix:// (poollink.py) and tcp:// URLs named in anything it read."""
        found: dict[str, None] = {}
        for _, data in self.texts():
            for m in _URL.findall(data):
                found[m.decode(errors="replace")] = None
        return list(found)

    def identities(self) -> list[bytes]:
        """Socket identities named in anything it read (e.g. a JSON config on a command line)."""
        found: dict[bytes, None] = {}
        for _, data in self.texts():
            for _key, value in _IDENTITY.findall(data):
                found[value] = None
        return list(found)

    def endpoints(self) -> list[str]:
        """Every ZeroMQ endpoint worth trying: listening sockets seen, and URLs read anywhere."""
        found: dict[str, None] = {}
        for name, _ in self.unix:
            found[f"ipc://{name}"] = None
        for host, port, _ in self.tcp:
            found[f"tcp://{host}:{port}"] = None
        for url in self.urls():
            if not url.startswith("unix://"):  # not ZeroMQ: unix_names() has it
                found[url] = None
        return list(found)

    def unix_names(self) -> list[str]:
        """UNIX socket names seen: listening ones, and ipc:// and unix:// URLs read anywhere."""
        names = {name: None for name, _ in self.unix}
        for url in self.urls():
            scheme, _, name = url.partition("://")
            if scheme in ("ipc", "unix"):
                names[name] = None
        return list(names)


def _listdir(path: str) -> list[str]:
    try:
        return sorted(os.listdir(path))
    except OSError:
        return []


def _read(path: str, limit: int = _READ_MAX) -> bytes:
    with open(path, "rb") as f:
        return f.read(limit)


def _why(exc: OSError) -> str:
    return errno.errorcode.get(exc.errno or 0, str(exc.errno)) + f" ({exc.strerror})"


def _proc_net_unix(inodes: frozenset[int]) -> list[tuple[str, int]]:
    out = []
    for line in _read("/proc/net/unix", 1 << 24).decode(errors="surrogateescape").splitlines()[1:]:
        parts = line.split(None, 7)
        if len(parts) < 8:
            continue  # unnamed (socketpair, or a connected end)
        flags, inode, name = int(parts[3], 16), int(parts[6]), parts[7]
        if flags & 0x10000 and inode in inodes:  # __SO_ACCEPTCON: listening
            out.append((name, inode))
    return out


def _proc_net_tcp(inodes: frozenset[int]) -> list[tuple[str, int, int]]:
    out = []
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            lines = _read(table, 1 << 24).decode().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            parts = line.split()
            if len(parts) < 10 or parts[3] != "0A":  # 0A: LISTEN
                continue
            addr, port_hex = parts[1].split(":")
            inode = int(parts[9])
            if inode not in inodes:
                continue
            raw = bytes.fromhex(addr)
            # /proc prints each 32-bit word in host (little-endian) order
            raw = b"".join(raw[i : i + 4][::-1] for i in range(0, len(raw), 4))
            if len(raw) == 4:
                host = socket.inet_ntop(socket.AF_INET, raw)
                host = "127.0.0.1" if host == "0.0.0.0" else host
            else:
                host = socket.inet_ntop(socket.AF_INET6, raw)
                host = "[::1]" if host == "::" else f"[{host}]"
            out.append((host, int(port_hex, 16), inode))
    return out


def unix_connect(name: str) -> str:
    """Try a plain connect() to a UNIX socket: "connected", or the errno that refused it."""
    addr = "\0" + name[1:] if name.startswith("@") else name
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.settimeout(2.0)
    try:
        s.connect(addr)
        return "connected"
    except OSError as exc:
        return _why(exc)
    finally:
        s.close()


def survey(scope: Scope) -> Survey:
    """Gather what the stranger can see of the executor (run as the stranger)."""
    sv = Survey()
    for pid in scope.pids:
        try:
            sv.cmdlines[pid] = [a.decode(errors="surrogateescape") for a in _read(f"/proc/{pid}/cmdline").split(b"\0") if a]
        except OSError:
            pass
        try:
            sv.environs[pid] = _read(f"/proc/{pid}/environ")
        except OSError as exc:
            sv.environ_errors[pid] = _why(exc)
    sv.unix = _proc_net_unix(scope.inodes)
    sv.tcp = _proc_net_tcp(scope.inodes)

    def refused(exc: OSError) -> None:
        sv.unreadable[str(exc.filename)] = _why(exc)

    for top, dirs, files in os.walk(scope.run_dir, onerror=refused):
        sv.listable.append(top)
        dirs[:] = [d for d in dirs if not os.path.islink(os.path.join(top, d))]
        for name in files:
            path = os.path.join(top, name)
            if os.path.islink(path) or not os.path.isfile(path):
                continue
            try:
                sv.files[path] = _read(path)
            except OSError as exc:
                sv.unreadable[path] = _why(exc)
    for name in sv.unix_names():
        sv.unix_connect[name] = unix_connect(name)
    return sv


# ---------------------------------------------------------------------------
# Talking ZeroMQ to every endpoint
# ---------------------------------------------------------------------------


@dataclass
class Received:
    endpoint: str
    kind: str  # the message's class name, or "undecodable: why"
    task_ids: list[int]
    frames: list[bytes]


@dataclass
class WireReport:
    """What an attack over ZeroMQ sent where, and everything that came back."""

    endpoints: list[str] = field(default_factory=list)
    connect_errors: dict[str, str] = field(default_factory=dict)  # ZeroMQ refused the URL itself
    events: dict[str, list[str]] = field(default_factory=dict)  # endpoint -> monitor events (handshakes...)
    received: list[Received] = field(default_factory=list)
    identities: list[bytes] = field(default_factory=list)  # socket identities it used
    sent: list[str] = field(default_factory=list)  # what it sent, for the messages
    survey: Survey | None = None

    def kinds(self) -> dict[str, str]:
        """Message kind -> how many came, and from which endpoints."""
        out: dict[str, list[str]] = {}
        for r in self.received:
            out.setdefault(r.kind, []).append(r.endpoint)
        return {kind: f"{len(eps)} from {sorted(set(eps))}" for kind, eps in out.items()}

    def saw(self, needle: bytes) -> list[str]:
        """Endpoints where any received frame contained ``needle``."""
        return sorted({r.endpoint for r in self.received if any(needle in f for f in r.frames)})

    def handshakes(self) -> list[str]:
        """Endpoints where a ZeroMQ handshake succeeded (the stranger was let in at the transport level)."""
        return [ep for ep, evs in self.events.items() if "HANDSHAKE_SUCCEEDED" in evs]

    def describe(self) -> str:
        return (
            f"endpoints tried: {self.endpoints}; ZeroMQ handshakes that succeeded: {self.handshakes()}; "
            f"received: {self.kinds()}"
        )


_SETTLED = {"HANDSHAKE_SUCCEEDED", "HANDSHAKE_FAILED_NO_DETAIL", "HANDSHAKE_FAILED_PROTOCOL", "HANDSHAKE_FAILED_AUTH",
            "CONNECT_RETRIED", "DISCONNECTED", "CLOSED"}


class Wire:
    """One DEALER per endpoint (with a monitor), all polled together; everything received is recorded."""

    def __init__(self, ctx: zmq.Context[Any], report: WireReport, endpoints: list[str], identity: bytes | None) -> None:
        self.report = report
        self.socks: dict[str, zmq.Socket[Any]] = {}
        self.monitors: dict[zmq.Socket[Any], str] = {}
        self.poller = zmq.Poller()
        self.identity = identity
        if identity is not None:
            report.identities.append(identity)
        for ep in endpoints:
            if ep not in report.endpoints:
                report.endpoints.append(ep)
            sock = ctx.socket(zmq.DEALER)
            sock.setsockopt(zmq.LINGER, 0)
            sock.setsockopt(zmq.RECONNECT_IVL, 100)
            if identity is not None:
                sock.setsockopt(zmq.IDENTITY, identity)
            mon = sock.get_monitor_socket()
            try:
                sock.connect(ep)
            except zmq.ZMQError as exc:
                report.connect_errors[ep] = str(exc)
                sock.disable_monitor()
                mon.close(0)
                sock.close(0)
                continue
            self.socks[ep] = sock
            self.monitors[mon] = ep
            self.poller.register(sock, zmq.POLLIN)
            self.poller.register(mon, zmq.POLLIN)

    def send(self, msg: protocol.Message) -> None:
        frames = msg.encode()
        for sock in self.socks.values():
            try:
                sock.send_multipart(frames, zmq.NOBLOCK)
            except zmq.ZMQError:
                pass  # not connected (yet): DEALER queues, or refuses with EAGAIN

    def pump(self, seconds: float, every: float = 0.0, tick: Callable[[], None] | None = None,
             until: Callable[[], bool] | None = None) -> None:
        """Record what arrives for ``seconds`` (or until ``until()``), calling ``tick`` every ``every`` s."""
        deadline = time.monotonic() + seconds
        next_tick = time.monotonic()
        while True:
            now = time.monotonic()
            if now >= deadline or (until is not None and until()):
                return
            if tick is not None and now >= next_tick:
                tick()
                next_tick = now + every
            wake = min(deadline, next_tick) if tick is not None else deadline
            for sock, _ in self.poller.poll(max(1, int((wake - now) * 1000))):
                self._read(sock)

    def _read(self, sock: zmq.Socket[Any]) -> None:
        while True:
            try:
                frames = sock.recv_multipart(zmq.NOBLOCK)
            except zmq.Again:
                return
            ep = self.monitors.get(sock)
            if ep is not None:
                events = self.report.events.setdefault(ep, [])
                if len(events) < 40:  # an unreachable endpoint retries every 100 ms: keep the report small
                    events.append(_monitor_event(frames))
                continue
            ep = next(e for e, s in self.socks.items() if s is sock)
            try:
                msg = protocol.decode(frames)
                kind = type(msg).__name__
                ids = list(msg.ids) if isinstance(msg, protocol.Tasks | protocol.Results) else []
            except Exception as exc:
                kind, ids = f"undecodable: {exc}", []
            self.report.received.append(Received(ep, kind, ids, frames))

    def settled(self) -> bool:
        """Every endpoint's connection has either shaken hands or visibly failed."""
        return all(_SETTLED & set(self.report.events.get(ep, ())) for ep in self.socks)


def _monitor_event(frames: list[bytes]) -> str:
    event = int.from_bytes(frames[0][:2], "little")
    try:
        return zmq.Event(event).name or str(event)
    except ValueError:
        return str(event)


def _value(f: dataclasses.Field[Any], identity: str) -> Any:
    """A plausible value for a field of a message the attacker forges, whatever fields the protocol has."""
    name, kind = f.name, str(f.type)
    by_name: dict[str, Any] = {
        "manager_id": identity, "block_id": "0", "hostname": socket.gethostname(), "pid": os.getpid(),
        "worker_count": 8, "prefetch_capacity": 100, "htex_version": htex.__version__,
        "python_version": platform.python_version(),
    }
    if name in by_name:
        return by_name[name]
    if "python" in name:
        return platform.python_version()
    if "version" in name:
        return htex.__version__
    if f.default is not dataclasses.MISSING:
        return f.default
    if f.default_factory is not dataclasses.MISSING:
        return f.default_factory()
    for prefix, value in (("str", identity), ("int", 1), ("float", 1.0), ("bool", False), ("list", []), ("dict", {}),
                          ("bytes", b"")):
        if kind.startswith(prefix):
            return value
    return None


def fake(cls: type[Any], identity: str) -> Any:
    """An instance of a protocol message class with every field filled in (fields read at run time)."""
    return cls(**{f.name: _value(f, identity) for f in dataclasses.fields(cls)})


def _identity() -> bytes:
    return secrets.token_hex(6).encode()  # looks like a pool's manager id


# ---------------------------------------------------------------------------
# The attacks (run as the stranger)
# ---------------------------------------------------------------------------


def look(notify: Notify, scope: Scope) -> Survey:
    """Only look: what the command lines, environments, /proc/net and the run directory give away."""
    return survey(scope)


def try_paths(notify: Notify, listings: list[str], reads: list[str]) -> dict[str, str]:
    """Try to list directories and read files; path -> "listed: ..." / "read N bytes" / the errno."""
    out: dict[str, str] = {}
    for path in listings:
        try:
            out[path] = f"listed: {sorted(os.listdir(path))}"
        except OSError as exc:
            out[path] = _why(exc)
    for path in reads:
        try:
            out[path] = f"read {len(_read(path))} bytes"
        except OSError as exc:
            out[path] = _why(exc)
    return out


def register_fake_pool(notify: Notify, scope: Scope, window: float = WINDOW) -> WireReport:
    """Register as a pool with 8 workers on every endpoint and keep it alive: does the interchange send it tasks?"""
    sv = survey(scope)
    report = WireReport(survey=sv)
    ctx = zmq.Context()
    identity = _identity()
    wire = Wire(ctx, report, sv.endpoints(), identity)
    register = fake(protocol.Register, identity.decode())
    wire.send(register)
    report.sent.append(repr(register))
    wire.pump(window, every=0.3, tick=lambda: wire.send(protocol.Heartbeat()))
    return report


def forge_results(notify: Notify, scope: Scope, ids: list[int], value: Any, window: float = WINDOW) -> WireReport:
    """Send Results carrying ``value`` for ``ids`` (and for any task it is given) on every endpoint.

    Three ways: from a fresh identity; from a pool it registered first (as a
    real pool would, on the same identity); and from every identity it read
    somewhere (e.g. the interchange's, on the executor's client socket).
    """
    sv = survey(scope)
    report = WireReport(survey=sv)
    ctx = zmq.Context()
    payload = serialize.pack_result(value)
    endpoints = sv.endpoints()
    wires = [Wire(ctx, report, endpoints, _identity()) for _ in range(2)]
    wires += [Wire(ctx, report, endpoints, ident) for ident in sv.identities()]
    register = fake(protocol.Register, (wires[1].identity or b"").decode())
    wires[1].send(register)
    report.sent.append(repr(register))

    def given() -> list[int]:
        return sorted({i for r in report.received for i in r.task_ids if r.kind == "Tasks"})

    # Give the registration a moment to be answered with tasks (the ids a real pool would answer for).
    first = wires[1]
    first.pump(window / 2, every=0.3, tick=lambda: first.send(protocol.Heartbeat()), until=lambda: bool(given()))
    forged_ids = sorted(set(ids) | set(given()))
    msg = protocol.Results(protocol.u64_array(forged_ids), [payload] * len(forged_ids))
    for w in wires:
        w.send(msg)
    report.sent.append(f"Results for ids {forged_ids} carrying {value!r}")
    deadline = time.monotonic() + window / 2
    while time.monotonic() < deadline:
        for w in wires:
            w.pump(0.05)
    return report


def ask_status(notify: Notify, scope: Scope, window: float = WINDOW) -> WireReport:
    """Send StatusRequest (what `htex status` sends) on every endpoint."""
    sv = survey(scope)
    report = WireReport(survey=sv)
    ctx = zmq.Context()
    wire = Wire(ctx, report, sv.endpoints(), _identity())
    request = fake(protocol.StatusRequest, "stranger")
    report.sent.append(repr(request))
    # Resent every half second: a DEALER drops nothing, but a peer may drop what comes before its handshake.
    wire.pump(window, every=0.5, tick=lambda: wire.send(request),
              until=lambda: any(r.kind == "StatusReply" for r in report.received))
    return report


def take_over(notify: Notify, scope: Scope, manager_ids: list[str], ids: list[int], value: Any,
              window: float = WINDOW) -> WireReport:
    """Connect with a live pool's identity to every endpoint, heartbeat and send forged results as it.

    Tells the parent "in place" once every connection shook hands or visibly
    failed, then holds them for ``window`` s while the parent submits tasks.
    """
    sv = survey(scope)
    report = WireReport(survey=sv)
    ctx = zmq.Context()
    wires = [Wire(ctx, report, sv.endpoints(), m.encode()) for m in manager_ids]
    deadline = time.monotonic() + 2.0
    while time.monotonic() < deadline and not all(w.settled() for w in wires):
        for w in wires:
            w.pump(0.05)
    msg = protocol.Results(protocol.u64_array(ids), [serialize.pack_result(value)] * len(ids))
    for w in wires:
        w.send(protocol.Heartbeat())
        w.send(msg)
    report.sent.append(f"Heartbeat, then Results for ids {ids} carrying {value!r}, as {manager_ids}")
    notify("in place", report.handshakes())

    answered: set[int] = set()
    end = time.monotonic() + window
    while time.monotonic() < end:
        for w in wires:
            w.send(protocol.Heartbeat())
            w.pump(0.1 / max(1, len(wires)))
        # Tasks meant for the real pool that reached us: answer them with the forged value, as the pool.
        new = sorted({i for r in report.received if r.kind == "Tasks" for i in r.task_ids} - answered)
        if new:
            answered.update(new)
            forged = protocol.Results(protocol.u64_array(new), [serialize.pack_result(value)] * len(new))
            for w in wires:
                w.send(forged)
            report.sent.append(f"Results for the tasks it was given, {new}, carrying {value!r}")
    return report
