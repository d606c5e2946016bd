"""The pool's command line, both ends: what the executor writes (launch_cmd) and what the pool reads (its flags).

::

    executor: PoolLaunch --values()--> launch_cmd.format(...) --> provider --> shell on the node
    node:     process_worker_pool FLAGS --build_parser()--> resolve_url() --> the interchange's URL

They live in one module so that a flag is renamed in one place, and a test
parses what ``launch_command`` wrote and gets the values back.  The flags are
Parsl's ``process_worker_pool`` ones (a Parsl ``launch_cmd`` works
unchanged), plus ``--task_url`` (a pool on the executor's host joins over the
executor's private UNIX socket) and ``--cert_dir`` (the run's CurveZMQ keys).

A pool holds one connection to the interchange (tasks in, results out: one
descriptor there per pool).  Parsl 1.0 named two ports, and its launch
commands still say ``--task_port={task_port} --result_port={result_port}``:
``{result_port}`` is the task port (``{result_url}`` the task URL), and the
pool accepts ``-r``/``--result_port``/``--result_url`` and does not use them.

A pool that is given several addresses (a remote pool: the executor does not
know which of its interfaces the node can reach) probes them all at once and
takes the first that answers; ``htex pool`` writes its flags with
``join_argv`` from the executor's connection file.
"""

from __future__ import annotations

import argparse
import logging
import math
import shlex
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import zmq

from . import prefetch, protocol, security
from .errors import ConfigurationError

log = logging.getLogger("htex.pool")

DEFAULT_LAUNCH_CMD = (
    "{python} -m htex.process_worker_pool {debug} {max_workers} -a {addresses} "
    "-t {task_port} -p {prefetch_capacity} -c {cores_per_worker} -m {mem_per_worker} "
    "--poll {poll_period} --logdir={logdir} --block_id={block_id} --hb_period={heartbeat_period} "
    "--hb_threshold={heartbeat_threshold} --address_probe_timeout={address_probe_timeout} "
    "--nodes_per_block={nodes_per_block} --cert_dir={cert_dir} {placement}{pool_urls}"
)
# Parsl 1.0's default launch_cmd, word for word but for the executable's name (Parsl's own
# script is process_worker_pool.py): a launch_cmd copied from a 1.0 site config must start a pool.
PARSL_1_0_LAUNCH_CMD = (
    "process_worker_pool {debug} {max_workers} -a {addresses} -p {prefetch_capacity} "
    "-c {cores_per_worker} -m {mem_per_worker} --poll {poll_period} --task_port={task_port} "
    "--result_port={result_port} --logdir={logdir} --block_id={{block_id}} --hb_period={heartbeat_period} "
    "{address_probe_timeout_string} --hb_threshold={heartbeat_threshold} "
)
# Placeholders of today's Parsl that htex fills from nothing of its own (its logging configuration):
# what Parsl fills when unset, so a template naming them formats.  PoolLaunch.extra overrides them.
PARSL_ONLY_DEFAULTS: dict[str, Any] = {"logconf": ""}
# How long a pool probes its candidate addresses when launch_cmd leaves it unsaid (Parsl's default).
DEFAULT_PROBE_TIMEOUT = 30.0
# Probes are resent this often: IMMEDIATE drops those sent before a connection is up.
_PROBE_EVERY = 0.2


# ---------------------------------------------------------------------------
# The executor's end
# ---------------------------------------------------------------------------


@dataclass(frozen=True)
class PoolLaunch:
    """Everything a launch command is made of, for one executor (the block id aside)."""

    python: str
    debug: bool
    max_workers: float
    addresses: list[str]
    task_port: int  # 0: the interchange listens on no TCP port (an unencrypted run on this host)
    local_url: str | None  # unix://.../pools-unix for pools on this host ({pool_urls}); None: TCP only
    prefetch_capacity: int | str  # "auto" or a number
    cores_per_worker: float
    mem_per_worker: float | None
    poll_period: int
    logdir: str
    heartbeat_period: float
    heartbeat_threshold: float
    address_probe_timeout: float
    nodes_per_block: int
    cert_dir: str | None
    working_dir: str | None  # the user's: where tasks run, and a block fails if it is missing
    # Placeholders only a Parsl template names (see PARSL_ONLY_DEFAULTS); they override the defaults.
    extra: Mapping[str, Any] = field(default_factory=dict)
    # The client's directory at start(): where tasks run when working_dir is not given, as with Parsl
    # (its LocalProvider's blocks inherit it; sbatch/qsub, called from it, start jobs there).
    client_dir: str | None = None
    # Node placement (placement.py), draining, MPI mode (mpi.py): Parsl's pool flags and placeholders.
    cpu_affinity: str = "none"
    accelerators: tuple[str, ...] = ()
    drain_period: float | None = None  # the pool drains this many seconds after it starts (Parsl's flag)
    mpi_launcher: str | None = None  # MPI mode (mpi.py): how tasks launch MPI programs; None: not MPI
    # Exported before the pool starts (monitoring: where its hub is, HTEX_MONITOR_*).
    env: Mapping[str, str] = field(default_factory=dict)

    def values(self, block_id: str) -> dict[str, Any]:
        """The placeholders a launch_cmd may use (Parsl's, and ours), shell-quoted where they are paths.

        Where Parsl filled a placeholder with a whole flag, so do we: ``{max_workers}`` (Parsl 1.0) and
        ``{max_workers_per_node}`` (today) are ``--max_workers=N``, or nothing for no cap;
        ``{address_probe_timeout_string}`` is ``--address_probe_timeout=S``.  ``{worker_port}`` (today's
        Parsl has one port) is the task port.
        """
        cap = "" if self.max_workers == math.inf else _number(self.max_workers)
        probe = self.address_probe_timeout or DEFAULT_PROBE_TIMEOUT
        return {
            **PARSL_ONLY_DEFAULTS,
            **self.extra,
            "python": shlex.quote(self.python),
            "debug": "--debug" if self.debug else "",
            "max_workers": f"--max_workers={cap}" if cap else "",
            "max_workers_per_node": f"--max_workers_per_node={cap}" if cap else "",
            "address_probe_timeout_string": f"--address_probe_timeout={_number(probe)}",
            "worker_port": self.task_port,
            "addresses": ",".join(self.addresses),
            "task_port": self.task_port,
            "result_port": self.task_port,
            "task_url": f"tcp://{self.addresses[0]}:{self.task_port}",
            "result_url": f"tcp://{self.addresses[0]}:{self.task_port}",  # one connection: see the docstring
            # The default launch_cmd's way in: a UNIX stream for pools on this host, else the addresses to probe.
            "pool_urls": f"--task_url={shlex.quote(self.local_url)}" if self.local_url else "",
            "prefetch_capacity": self.prefetch_capacity,
            "cores_per_worker": self.cores_per_worker,
            "mem_per_worker": self.mem_per_worker,
            "poll_period": self.poll_period,
            "logdir": shlex.quote(self.logdir),
            "block_id": block_id,
            "heartbeat_period": self.heartbeat_period,
            "heartbeat_threshold": self.heartbeat_threshold,
            "address_probe_timeout": probe,
            "nodes_per_block": self.nodes_per_block,
            "cert_dir": shlex.quote(self.cert_dir) if self.cert_dir else "",
            "uid": "",
            "cpu_affinity": shlex.quote(self.cpu_affinity),
            "accelerators": " ".join(shlex.quote(a) for a in self.accelerators),
            "drain_period": _number(self.drain_period) if self.drain_period is not None else None,
            "placement": self._placement_flags(),
            "enable_mpi_mode": "--enable_mpi_mode" if self.mpi_launcher else "",
            "mpi_launcher": self.mpi_launcher or "mpiexec",
        }

    def _placement_flags(self) -> str:
        """The default launch_cmd's placement flags, each followed by a space; "" when none is used."""
        flags = ""
        if self.cpu_affinity != "none":
            flags += f"--cpu-affinity {shlex.quote(self.cpu_affinity)} "
        if self.drain_period is not None:
            flags += f"--drain_period={_number(self.drain_period)} "
        if self.mpi_launcher:
            flags += f"--enable_mpi_mode --mpi-launcher={self.mpi_launcher} "
        if self.accelerators:  # nargs="*": the next flag (a "--" word) ends the list
            flags += f"--available-accelerators {' '.join(shlex.quote(a) for a in self.accelerators)} "
        return flags


def _number(x: float) -> str:
    """``8`` for 8.0, ``2.5`` for 2.5: no ``1e+06`` for a large cap."""
    return str(int(x)) if float(x).is_integer() else str(x)


def launch_command(template: str | None, launch: PoolLaunch, block_id: str) -> str:
    """The shell command that starts one pool of ``block_id``: ``template`` (or DEFAULT_LAUNCH_CMD), formatted.

    An unknown placeholder is a ConfigurationError that lists the known ones.
    Parsl-style templates escape the block id as ``{{block_id}}``: it is
    filled in too.  A template without ``{cert_dir}`` (written before
    encryption, as Parsl 1.0's) gets the keys through ``HTEX_CERT_DIR``; and
    ``working_dir`` is where the command runs (a missing one fails the block),
    else ``client_dir`` (a node that lacks it, without a shared file system,
    stays where the scheduler started it, as a Slurm job does).
    """
    template = template or DEFAULT_LAUNCH_CMD
    values = launch.values(block_id)
    try:
        cmd = template.format(**values)
    except (KeyError, IndexError) as exc:
        raise ConfigurationError(f"launch_cmd has an unknown placeholder {exc}; known ones: {sorted(values)}") from None
    cmd = cmd.replace("{block_id}", block_id)
    before = [f"export {name}={shlex.quote(value)}" for name, value in launch.env.items()]
    if launch.cert_dir and "{cert_dir}" not in template:
        before.append(f"export HTEX_CERT_DIR={shlex.quote(launch.cert_dir)}")
    if launch.working_dir:
        before.append(f"cd {shlex.quote(launch.working_dir)} || exit 1")
    elif launch.client_dir:
        where = shlex.quote(launch.client_dir)
        before.append(f'cd {where} || echo htex: no directory {where} here, tasks run in "$PWD" >&2')
    if not before:
        return cmd
    # One simple command, whatever it holds: a launcher or a user may put a prefix before it
    # (`srun ...`, `ip netns exec NS ...`, WrappedLauncher's), which shell syntax would break.
    return "/bin/sh -c " + shlex.quote("; ".join([*before, cmd]))


def join_argv(
    addresses: list[str], port: int, *,
    heartbeat_period: float, heartbeat_threshold: float, logdir: str, cert_dir: str | None,
) -> list[str]:
    """The pool's flags that join a running executor (``htex pool --run-dir``: from its connection file)."""
    argv = [
        "-a", ",".join(addresses),
        "-t", str(port),
        "--hb_period", str(heartbeat_period),
        "--hb_threshold", str(heartbeat_threshold),
        "--logdir", logdir,
    ]
    if cert_dir:
        argv.append(f"--cert_dir={cert_dir}")
    return argv


# ---------------------------------------------------------------------------
# The pool's end
# ---------------------------------------------------------------------------


def _float_or_inf(text: str) -> float:
    return math.inf if text.lower() in ("inf", "infinity", "none") else float(text)


def _prefetch(text: str) -> int:
    """``auto`` or a number >= 0, as the pool registers it (prefetch.AUTO for auto)."""
    try:
        return prefetch.parse(text if text == "auto" else int(text))
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _optional_float(text: str) -> float | None:
    return None if text.lower() in ("none", "", "0") else float(text)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="process_worker_pool",
        description="Start an htex worker pool (one per node) that connects to an interchange.",
    )
    p.add_argument("-d", "--debug", action="store_true", help="log at debug level, one log per worker")
    p.add_argument("-a", "--addresses", default="", help="comma-separated interchange addresses to probe")
    p.add_argument("-t", "--task_port", type=int, default=None, help="the interchange's port")
    p.add_argument("-r", "--result_port", type=int, default=None,
                   help="accepted for Parsl compatibility; not used (one connection carries tasks and results)")
    p.add_argument("--task_url", default=None,
                   help="the interchange's URL (tcp://host:port, ipc://path, unix://path); overrides -a/-t")
    p.add_argument("--result_url", default=None, help="accepted for older launch commands; not used")
    p.add_argument("-u", "--uid", default=None, help="manager id (default: random)")
    p.add_argument("-b", "--block_id", default="-1", help="the block this pool belongs to")
    p.add_argument("-c", "--cores_per_worker", type=float, default=1.0)
    p.add_argument("-m", "--mem_per_worker", type=_optional_float, default=None, help="GB per worker")
    p.add_argument("--max_workers", "--max_workers_per_node", type=_float_or_inf, default=math.inf)
    p.add_argument("-p", "--prefetch_capacity", type=_prefetch, default=prefetch.AUTO,
                   help='tasks held beyond the workers: "auto" (the default: the interchange adapts it) or a number')
    p.add_argument("--hb_period", type=float, default=30.0, help="heartbeat period, s")
    p.add_argument("--hb_threshold", type=float, default=120.0, help="declare the interchange lost after, s")
    p.add_argument("--address_probe_timeout", type=float, default=DEFAULT_PROBE_TIMEOUT)
    p.add_argument("--poll", type=int, default=10, help="accepted for Parsl compatibility; htex never polls")
    p.add_argument("--nodes_per_block", type=int, default=1, help="accepted for Parsl compatibility")
    p.add_argument("-l", "--logdir", default="process_worker_pool_logs")
    p.add_argument("--cert_dir", default=None,
                   help="the run's CurveZMQ keys (encrypted executors); default: $HTEX_CERT_DIR")
    # Node placement (placement.py), draining, MPI mode (mpi.py), with Parsl's flags
    p.add_argument("--cpu-affinity", "--cpu_affinity", dest="cpu_affinity", default="none",
                   help="none, block, alternating, block-reverse, or list:0-3:4-7 (one core group per worker)")
    p.add_argument("--available-accelerators", "--available_accelerators", dest="accelerators", nargs="*",
                   default=[], help="device ids; one worker per accelerator, each sees only its own")
    p.add_argument("--drain_period", type=_optional_float, default=None,
                   help="stop taking tasks this many seconds after start, finish the running ones, exit")
    p.add_argument("--enable_mpi_mode", action="store_true", help="share the block's nodes among MPI tasks")
    p.add_argument("--mpi-launcher", "--mpi_launcher", dest="mpi_launcher", default="mpiexec",
                   choices=("mpiexec", "srun", "aprun"), help="the launcher PARSL_MPI_PREFIX uses")
    return p


def resolve_url(args: argparse.Namespace) -> str:
    """Find the interchange: the given URL, or the first of the candidate addresses that answers."""
    if args.task_url:
        return str(args.task_url)
    addresses = [a for a in args.addresses.split(",") if a]
    if not addresses or args.task_port is None:
        raise SystemExit("process_worker_pool: give --task_url, or -a ADDRS -t PORT")
    if len(addresses) == 1:
        addr = addresses[0]
    else:
        addr = probe_addresses(addresses, args.task_port, args.address_probe_timeout, args.cert_dir or None)
    return f"tcp://{addr}:{args.task_port}"


def probe_addresses(addresses: list[str], port: int, timeout: float, cert_dir: str | None = None) -> str:
    """Send a Probe to every candidate at once; return the first address that answers."""
    ctx = zmq.Context()
    try:
        socks = _probe_sockets(ctx, addresses, port, cert_dir)
        poller = zmq.Poller()
        for sock in socks:
            poller.register(sock, zmq.POLLIN)
        deadline = time.monotonic() + timeout
        probe = protocol.Probe().encode()
        next_probe = 0.0
        while time.monotonic() < deadline:
            if time.monotonic() >= next_probe:
                for sock in socks:
                    try:
                        sock.send_multipart(probe, zmq.NOBLOCK)
                    except zmq.Again:
                        pass
                next_probe = time.monotonic() + _PROBE_EVERY
            for sock, _ in poller.poll(int(_PROBE_EVERY * 1000)):
                try:
                    if isinstance(protocol.decode(sock.recv_multipart()), protocol.ProbeReply):
                        log.info("interchange answers at %s", socks[sock])
                        return socks[sock]
                except Exception as exc:
                    log.info("bad probe answer from %s: %s", socks[sock], exc)
        raise SystemExit(
            f"process_worker_pool: no interchange answered on port {port} at any of {addresses} "
            f"within {timeout:g} s; set the executor's `address` to one the workers can reach"
        )
    finally:
        ctx.destroy(linger=0)


def _probe_sockets(
    ctx: zmq.Context[Any], addresses: list[str], port: int, cert_dir: str | None,
) -> dict[zmq.Socket[Any], str]:
    """A socket connecting to each address that can be used (an unresolvable one is logged and skipped)."""
    socks: dict[zmq.Socket[Any], str] = {}
    for addr in addresses:
        sock = ctx.socket(zmq.DEALER)
        sock.setsockopt(zmq.LINGER, 0)
        sock.setsockopt(zmq.IMMEDIATE, 1)  # queue nothing for an address that is not connected
        if cert_dir:
            security.connect_as(sock, cert_dir, "pool")
        try:
            sock.connect(f"tcp://{addr}:{port}")
        except zmq.ZMQError as exc:
            log.info("cannot use address %s: %s", addr, exc)
            sock.close()
            continue
        socks[sock] = addr
    return socks
