"""The ``htex`` command: start a pool by hand, and see what a running executor is doing.

::

    htex pool --run-dir runinfo/000/HighThroughputExecutor     # join a running executor (managed=False)
    htex pool -a 10.0.0.5 -t 54001 -r 54002 --max_workers 8    # or give process_worker_pool's flags
    htex status runinfo/000                                     # pools, blocks, tasks, rate
    htex status runinfo/000 --watch 2                           # the same, redrawn every 2 s until Ctrl-C
    htex status --address 10.0.0.5:54001 --cert-dir DIR         # without the run directory

Both find the interchange through ``connection.json``, which the executor
writes into ``run_dir/<label>/`` at start: addresses, worker ports and
heartbeat settings.  An encrypted executor keeps its keys beside it, in
``certs/``; both commands use them when they are there (they need the "pool"
keys, so only someone who can read the run directory can connect).

``htex status`` asks the interchange on its task port (a ``StatusRequest``,
answered with a ``StatusReply``): it sees what the interchange sees.  A
task that raised counts as done, and is counted again as raised (the
interchange reads a result's status byte; it never unpickles a result).  It
knows blocks only by the block ids its pools registered with (job ids are
the executor's).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
import time
from collections.abc import Sequence
from typing import IO, Any

import zmq

from . import __version__, poolcmd, protocol, rundir, security
from .progress import format_line

CONNECTION_FILE = rundir.CONNECTION_FILE


class CliError(Exception):
    """A problem to report in one line, without a traceback."""


# ---------------------------------------------------------------------------
# Finding the interchange
# ---------------------------------------------------------------------------


def find_connection(path: str) -> tuple[str, rundir.ConnectionInfo]:
    """The label directory and its connection.json, from a run_dir/<label> or a run_dir with one label.

    A run directory with several executors is ambiguous: the error lists them.
    """
    path = os.path.abspath(path)
    direct = os.path.join(path, CONNECTION_FILE)
    if os.path.isfile(direct):
        return path, _read_info(direct)
    if not os.path.isdir(path):
        raise CliError(f"{path}: no such directory")
    found = sorted(d for d in os.listdir(path) if os.path.isfile(os.path.join(path, d, CONNECTION_FILE)))
    if len(found) == 1:
        label_dir = os.path.join(path, found[0])
        return label_dir, _read_info(os.path.join(label_dir, CONNECTION_FILE))
    if found:
        choices = ", ".join(os.path.join(path, d) for d in found)
        raise CliError(f"{path} holds several executors; name one: {choices}")
    raise CliError(
        f"no {CONNECTION_FILE} in {path} or its sub-directories: give run_dir/<label> of an executor "
        "that has started (it writes the file at start)"
    )


def _read_info(path: str) -> rundir.ConnectionInfo:
    try:
        return rundir.ConnectionInfo.read(path)
    except ValueError as exc:
        raise CliError(str(exc)) from None


def _cert_dir(label_dir: str, info: rundir.ConnectionInfo) -> str | None:
    if info.cert_dir:
        return info.cert_dir
    certs = os.path.join(label_dir, "certs")
    return certs if os.path.isdir(certs) else None


def _pick_address(addresses: Sequence[str]) -> str:
    # The executor lists every interface when pools may be remote; from this host, loopback answers if listed.
    for a in addresses:
        if a.startswith("127."):
            return a
    if not addresses:
        raise CliError("connection.json lists no address")
    return addresses[0]


# ---------------------------------------------------------------------------
# htex pool
# ---------------------------------------------------------------------------


def pool_argv(label_dir: str, info: rundir.ConnectionInfo) -> list[str]:
    """process_worker_pool flags that connect to the executor described by connection.json."""
    return poolcmd.join_argv(
        info.addresses, info.task_port,
        heartbeat_period=info.heartbeat_period, heartbeat_threshold=info.heartbeat_threshold,
        logdir=label_dir, cert_dir=_cert_dir(label_dir, info),
    )


def cmd_pool(args: argparse.Namespace, rest: list[str]) -> int:
    from . import process_worker_pool

    argv = list(rest)
    if args.run_dir:
        try:
            label_dir, info = find_connection(args.run_dir)
            # The user's own flags come last: argparse keeps the last value, so they override the file.
            argv = pool_argv(label_dir, info) + argv
        except CliError as exc:
            raise CliError(f"htex pool: {exc}") from None
        print(f"htex pool: joining {info.label} at {','.join(info.addresses)}:{info.task_port}; "
              f"logs under {label_dir}", file=sys.stderr, flush=True)
    return process_worker_pool.main(argv)


# ---------------------------------------------------------------------------
# htex status
# ---------------------------------------------------------------------------


class StatusClient:
    """Asks one interchange for its status, over one connection kept for repeated samples."""

    def __init__(self, url: str, cert_dir: str | None = None, timeout: float = 5.0) -> None:
        self.where = url
        self.timeout = timeout
        self.ctx = zmq.Context()
        self.sock = self.ctx.socket(zmq.DEALER)
        self.sock.setsockopt(zmq.LINGER, 0)
        if cert_dir and url.startswith("tcp://"):
            # The interchange's worker ports let in only the run's "pool" key (its UNIX sockets
            # are guarded by their directory's permissions instead).
            security.connect_as(self.sock, cert_dir, "pool")
        self.sock.connect(url)

    def sample(self) -> protocol.StatusReply:
        self.sock.send_multipart(protocol.StatusRequest(req=0).encode())
        deadline = time.monotonic() + self.timeout
        while (left := deadline - time.monotonic()) > 0:
            if not self.sock.poll(int(left * 1000) + 1):
                break
            msg = protocol.decode(self.sock.recv_multipart())
            if isinstance(msg, protocol.StatusReply):
                return msg
            # Anything else (a stale reply type) is not ours to handle: wait for the answer.
        raise CliError(
            f"no answer from an interchange at {self.where} within {self.timeout:g} s: is the executor running, "
            "and (if it is encrypted) are its keys given?"
        )

    def close(self) -> None:
        self.sock.close(0)
        self.ctx.term()

    def __enter__(self) -> StatusClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


@dataclasses.dataclass
class BlockSummary:
    """One block, as its registered pools show it."""

    managers: list[str] = dataclasses.field(default_factory=list)
    workers: int = 0
    tasks: int = 0  # running (sent to its pools and not done)


def blocks_of(pools: list[protocol.PoolInfo]) -> dict[str, BlockSummary]:
    """Per block id: its managers, workers and running tasks (from the pools that registered)."""
    blocks: dict[str, BlockSummary] = {}
    for p in pools:
        b = blocks.setdefault(p.block_id, BlockSummary())
        b.managers.append(p.manager)
        b.workers += p.worker_count
        b.tasks += p.tasks
    return blocks


def rate_between(a: protocol.StatusReply, b: protocol.StatusReply) -> float | None:
    """Tasks done per second between two samples, by the interchange's own clock (its uptime)."""
    dt = b.stats.uptime - a.stats.uptime
    if dt <= 0:
        return None
    return (b.stats.done - a.stats.done) / dt


def summary(reply: protocol.StatusReply, rate: float | None) -> dict[str, Any]:
    """What ``--json`` prints: the reply, the blocks derived from it, and the rate (Parsl's word: managers)."""
    return {
        "stats": dataclasses.asdict(reply.stats),
        "managers": [dataclasses.asdict(p) for p in reply.pools],
        "blocks": {k: dataclasses.asdict(b) for k, b in blocks_of(reply.pools).items()},
        "rate": rate,
    }


def render(reply: protocol.StatusReply, rate: float | None, where: str, label: str = "") -> str:
    s = reply.stats
    lines = [
        f"htex {__version__}  {label + '  ' if label else ''}interchange {where}  up {_duration(s.uptime)}",
        f"tasks    {s.queued} queued  {s.running} running  {s.done} done ({s.raised} raised)  "
        f"{s.lost} failed/lost  (received {s.received}, dispatched {s.dispatched})",
        "rate     " + (f"{rate:.1f} tasks/s" if rate is not None else "-"),
        "progress " + format_line(s.done + s.lost, s.lost, s.running, s.received or None, rate),
        "",
        f"managers ({len(reply.pools)}, {s.workers} workers)",
    ]
    rows = [["MANAGER", "HOST", "BLOCK", "WORKERS", "RUNNING", "IDLE", "STATE", "HEARD"]]
    for p in sorted(reply.pools, key=lambda p: (p.block_id, p.manager)):
        rows.append([
            p.manager, p.hostname, p.block_id, str(p.worker_count), str(p.tasks),
            "-" if p.tasks else _duration(p.idle_duration), "active" if p.active else "held",
            f"{p.last_heartbeat:.0f}s ago",
        ])
    lines += _table(rows) if reply.pools else ["  (none connected)"]
    blocks = blocks_of(reply.pools)
    lines += ["", f"blocks ({len(blocks)}, by the block ids pools registered with)"]
    brows = [["BLOCK", "MANAGERS", "WORKERS", "RUNNING"]]
    for block, b in sorted(blocks.items()):
        brows.append([block, str(len(b.managers)), str(b.workers), str(b.tasks)])
    lines += _table(brows) if blocks else ["  (none)"]
    return "\n".join(lines)


def _table(rows: list[list[str]]) -> list[str]:
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    return ["  " + "  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in rows]


def _duration(seconds: float) -> str:
    s = int(seconds)
    if s >= 3600:
        return f"{s // 3600}h{s % 3600 // 60:02d}m"
    if s >= 60:
        return f"{s // 60}m{s % 60:02d}s"
    return f"{seconds:.0f}s"


def _status_target(args: argparse.Namespace) -> tuple[str, str | None, str]:
    """(url, cert_dir, label) from --address/--cert-dir or from a run directory."""
    if args.address:
        host, _, port = args.address.rpartition(":")
        if not host or not port.isdigit():
            raise CliError(f"--address wants HOST:PORT (the task port), got {args.address!r}")
        return f"tcp://{host}:{port}", args.cert_dir, ""
    if not args.target:
        raise CliError("give a run directory (run_dir or run_dir/<label>) or --address HOST:PORT")
    label_dir, info = find_connection(args.target)
    label = info.label
    if info.ipc_tasks and os.path.exists(info.ipc_tasks.removeprefix("ipc://")):
        return info.ipc_tasks, None, label  # on the executor's host: its private UNIX socket
    host, port = _pick_address(info.addresses), info.task_port
    if not port:
        raise CliError(f"the executor of {label_dir} listens on no TCP port; run htex status on its host")
    return f"tcp://{host}:{port}", args.cert_dir or _cert_dir(label_dir, info), label


def cmd_status(args: argparse.Namespace, out: IO[str]) -> int:
    url, cert_dir, label = _status_target(args)
    where = url.removeprefix("tcp://")
    with StatusClient(url, cert_dir, args.timeout) as client:
        if args.watch is None:
            first = client.sample()
            rate = None
            last = first
            if args.sample > 0:
                time.sleep(args.sample)  # the rate needs a second sample some time later
                last = client.sample()
                rate = rate_between(first, last)
            _emit(out, args, last, rate, where, label)
            return 0
        clear = out.isatty() and not args.json
        previous: protocol.StatusReply | None = None
        count = 0
        try:
            while True:
                reply = client.sample()
                rate = rate_between(previous, reply) if previous is not None else None
                if clear:
                    out.write("\x1b[H\x1b[2J")  # home and clear: redraw in place
                elif count and not args.json:
                    out.write("\n")  # a blank line between screens; JSON stays one object per line
                _emit(out, args, reply, rate, where, label)
                previous = reply
                count += 1
                if args.count and count >= args.count:
                    return 0
                time.sleep(args.watch)
        except KeyboardInterrupt:
            out.write("\n")
            return 0


def _emit(out: IO[str], args: argparse.Namespace, reply: protocol.StatusReply, rate: float | None,
          where: str, label: str) -> None:
    if args.json:
        out.write(json.dumps(summary(reply, rate)) + "\n")
    else:
        out.write(render(reply, rate, where, label) + "\n")
    out.flush()


# ---------------------------------------------------------------------------
# htex dashboard
# ---------------------------------------------------------------------------


def cmd_dashboard(args: argparse.Namespace, out: IO[str]) -> int:
    from .errors import HtexError

    try:
        from .monitoring.dashboard import serve_dashboard

        url, stop = serve_dashboard(args.target, args.host, args.port, poll=args.poll)
    except (ImportError, HtexError) as exc:  # no extra, no store, a store of another version: one line each
        raise CliError(str(exc)) from None
    out.write(f"htex dashboard: {url}\n(Ctrl-C to stop)\n")
    out.flush()
    try:
        while True:
            time.sleep(3600)  # the server runs in its own thread; Ctrl-C ends this wait
    except KeyboardInterrupt:
        pass
    finally:
        stop()
    return 0


# ---------------------------------------------------------------------------
# main
# ---------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="htex",
        description="htex: run Python functions at high throughput. Start worker pools by hand, "
                    "and see what a running executor is doing.",
    )
    p.add_argument("--version", action="version", version=f"htex {__version__}")
    sub = p.add_subparsers(dest="command", metavar="COMMAND")

    pool = sub.add_parser(
        "pool", allow_abbrev=False,
        help="start a worker pool that joins a running executor",
        description="Start a worker pool on this node that joins a running executor, for executors "
                    "created with managed=False (you start the pools). With --run-dir, everything is "
                    "read from the executor's connection.json; any other flag goes to process_worker_pool "
                    "(see `process_worker_pool --help`: --max_workers, -c/--cores_per_worker, --block_id, "
                    "-d, ...) and overrides what the file says.",
        epilog="example: htex pool --run-dir runinfo/000/HighThroughputExecutor --max_workers 8",
    )
    pool.add_argument("--run-dir", metavar="DIR",
                      help="the executor's run_dir/<label> (or a run_dir holding one executor)")

    status = sub.add_parser(
        "status", allow_abbrev=False,
        help="show pools, blocks, tasks and the rate of a running executor",
        description="Ask a running interchange what it is doing: its pools (managers) and their blocks, "
                    "tasks queued, running, done and lost, and the rate of tasks done.",
        epilog="examples: htex status runinfo/000   |   htex status runinfo/000/HighThroughputExecutor --watch 2",
    )
    status.add_argument("target", nargs="?", metavar="RUN_DIR",
                        help="the executor's run_dir/<label>, or a run_dir holding one executor")
    status.add_argument("--address", metavar="HOST:PORT", help="the interchange's task port, instead of RUN_DIR")
    status.add_argument("--cert-dir", metavar="DIR", help="the run's keys (default: <label dir>/certs if present)")
    status.add_argument("--watch", type=float, nargs="?", const=2.0, default=None, metavar="SECONDS",
                        help="redraw every SECONDS (default 2) until Ctrl-C")
    status.add_argument("--count", type=int, default=0, metavar="N", help="with --watch: stop after N refreshes")
    status.add_argument("--sample", type=float, default=1.0, metavar="SECONDS",
                        help="without --watch: seconds between the two samples the rate is measured from (0: no rate)")
    status.add_argument("--timeout", type=float, default=5.0, metavar="SECONDS", help="how long to wait for an answer")
    status.add_argument("--json", action="store_true", help="print JSON (one object per refresh)")

    dash = sub.add_parser(
        "dashboard", allow_abbrev=False,
        help="serve a web page showing a run's monitoring store, live while it runs",
        description="Serve the dashboard of a monitoring store (written by monitoring=True) and print its URL. "
                    "Off 127.0.0.1 the URL carries a token that every request needs. Needs pip install 'htex[dashboard]'.",
        epilog="examples: htex dashboard runinfo/000   |   htex dashboard monitoring.db --port 8787   |   "
               "htex dashboard postgresql://host/db --host 0.0.0.0",
    )
    dash.add_argument("target", metavar="PATH", help="a run directory (holding monitoring.db), a database file, "
                                                     "or an SQLAlchemy URL")
    dash.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1: this host only)")
    dash.add_argument("--port", type=int, default=0, help="port (default 0: a free one)")
    dash.add_argument("--poll", type=float, default=1.0, metavar="SECONDS", help="how often to look for new rows")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args, rest = parser.parse_known_args(list(sys.argv[1:] if argv is None else argv))
    if args.command is None:
        parser.print_help(sys.stderr)
        return 2
    if args.command != "pool" and rest:
        parser.error(f"unrecognized arguments: {' '.join(rest)}")
    try:
        if args.command == "pool":
            return cmd_pool(args, rest)
        if args.command == "dashboard":
            return cmd_dashboard(args, sys.stdout)
        return cmd_status(args, sys.stdout)
    except CliError as exc:
        print(f"htex {args.command}: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
