"""The pool's command line, both ends (src/htex/poolcmd.py): what the executor writes, the pool reads back."""

from __future__ import annotations

import argparse
import dataclasses
import math
import shlex
import subprocess
import threading
from collections.abc import Iterator
from typing import Any

import pytest
import zmq

from htex import poolcmd, protocol
from htex.errors import ConfigurationError

pytestmark = pytest.mark.timeout(30)

PLACEHOLDERS = {
    "python", "debug", "max_workers", "addresses", "task_port", "result_port", "task_url", "result_url", "pool_urls",
    "prefetch_capacity", "cores_per_worker", "mem_per_worker", "poll_period", "logdir", "block_id",
    "heartbeat_period", "heartbeat_threshold", "address_probe_timeout", "nodes_per_block", "cert_dir", "uid", "placement",
    # Parsl's: 1.0's and today's
    "max_workers_per_node", "address_probe_timeout_string", "worker_port", "logconf", "drain_period",
    "cpu_affinity", "enable_mpi_mode", "mpi_launcher", "accelerators",
}


def launch(**kw: Any) -> poolcmd.PoolLaunch:
    values: dict[str, Any] = dict(
        python="/opt/py thon/bin/python3", debug=True, max_workers=math.inf, addresses=["10.0.0.5", "192.168.1.2"],
        task_port=54001, local_url=None, prefetch_capacity=7, cores_per_worker=0.5,
        mem_per_worker=2.5, poll_period=10, logdir="/runs/my run/000/htex", heartbeat_period=3.0,
        heartbeat_threshold=12.0, address_probe_timeout=45.0, nodes_per_block=2, cert_dir=None, working_dir=None,
    )
    values.update(kw)
    return poolcmd.PoolLaunch(**values)


def parse_back(cmd: str) -> argparse.Namespace:
    """What the pool makes of a launch command: its words after ``python -m htex.process_worker_pool``."""
    words = shlex.split(cmd)
    if words[:2] == ["/bin/sh", "-c"]:  # a command with a prologue (cd, keys) is one `sh -c SCRIPT`
        words = shlex.split(words[2].rpartition("; ")[2])
    rest = words[words.index("htex.process_worker_pool") + 1:]
    return poolcmd.build_parser().parse_args(rest)


def test_every_placeholder_has_a_value() -> None:
    values = launch().values("4")
    assert set(values) == PLACEHOLDERS
    assert values["python"] == "'/opt/py thon/bin/python3'" and values["logdir"] == "'/runs/my run/000/htex'"
    assert values["debug"] == "--debug" and values["max_workers"] == "" and values["block_id"] == "4"
    assert values["addresses"] == "10.0.0.5,192.168.1.2"
    # One connection per pool: Parsl's result port and URL are the task ones (poolcmd's docstring).
    assert values["task_url"] == "tcp://10.0.0.5:54001" and values["result_url"] == "tcp://10.0.0.5:54001"
    assert values["task_port"] == values["result_port"] == values["worker_port"] == 54001
    assert values["pool_urls"] == "" and values["cert_dir"] == "" and values["uid"] == ""
    template = " ".join(f"{{{name}}}" for name in sorted(PLACEHOLDERS))
    assert "{" not in poolcmd.launch_command(template, launch(), "4")  # every one of them is filled in


def test_values_follow_the_launch() -> None:
    values = launch(debug=False, max_workers=8, local_url="unix:///run/h x/pools-unix", cert_dir="/k d",
                    address_probe_timeout=0).values("0")
    assert values["debug"] == "" and values["max_workers"] == "--max_workers=8" and values["cert_dir"] == "'/k d'"
    assert shlex.split(values["pool_urls"]) == ["--task_url=unix:///run/h x/pools-unix"]
    assert values["address_probe_timeout"] == poolcmd.DEFAULT_PROBE_TIMEOUT  # 0 means unset, as in Parsl
    # Parsl filled these with whole flags (1.0: {max_workers}; today: {max_workers_per_node}).
    assert values["max_workers_per_node"] == "--max_workers_per_node=8"
    assert values["address_probe_timeout_string"] == "--address_probe_timeout=30"
    assert launch(max_workers=1_000_000).values("0")["max_workers"] == "--max_workers=1000000"


def test_parsl_1_0_default_launch_cmd_parses_back() -> None:
    cmd = poolcmd.launch_command(poolcmd.PARSL_1_0_LAUNCH_CMD, launch(max_workers=3), "5")
    words = shlex.split(cmd)
    args = poolcmd.build_parser().parse_args(words[words.index("process_worker_pool") + 1:])
    assert (args.max_workers, args.task_port, args.result_port, args.block_id) == (3, 54001, 54001, "5")
    assert args.addresses == "10.0.0.5,192.168.1.2" and args.address_probe_timeout == 45.0


def test_parsl_placement_placeholders_take_the_given_values() -> None:
    given = launch(cpu_affinity="alternating", accelerators=("0", "1", "2", "3"), drain_period=600)
    cmd = poolcmd.launch_command("x --cpu-affinity {cpu_affinity} --available-accelerators {accelerators} "
                                 "--drain_period={drain_period} {enable_mpi_mode}", given, "0")
    assert cmd.split() == ["x", "--cpu-affinity", "alternating", "--available-accelerators", "0", "1", "2", "3",
                           "--drain_period=600"]


def test_parsl_style_escaped_block_id() -> None:
    cmd = poolcmd.launch_command("process_worker_pool.py --block_id={{block_id}} -t {task_port}", launch(), "12")
    assert cmd == "process_worker_pool.py --block_id=12 -t 54001"


def test_an_unknown_placeholder_names_the_known_ones() -> None:
    with pytest.raises(ConfigurationError, match="unknown placeholder 'bogus'") as info:
        poolcmd.launch_command("process_worker_pool {bogus}", launch(), "0")
    assert str(sorted(PLACEHOLDERS)) in str(info.value)
    with pytest.raises(ConfigurationError, match="unknown placeholder"):
        poolcmd.launch_command("process_worker_pool {0}", launch(), "0")  # a positional one


def _run(cmd: str, prefix: str = "") -> subprocess.CompletedProcess[str]:
    """Run a launch command as a block's script would, optionally behind a launcher's prefix."""
    return subprocess.run(["/bin/bash", "-c", prefix + cmd], cwd="/", capture_output=True, text=True, timeout=10)


def test_keys_reach_a_template_that_does_not_name_them() -> None:
    old_style = "{python} -m htex.process_worker_pool --task_url={task_url} --result_url={result_url}"
    cmd = poolcmd.launch_command("echo $HTEX_CERT_DIR", launch(cert_dir="/runs/my run/certs"), "0")
    for prefix in ("", "env ", "nice -n 0 "):  # also behind a launcher's prefix: one simple command
        assert _run(cmd, prefix).stdout.strip() == "/runs/my run/certs", prefix
    assert "HTEX_CERT_DIR" not in poolcmd.launch_command(old_style, launch(), "0")  # not encrypted: nothing to give
    assert "HTEX_CERT_DIR" not in poolcmd.launch_command(None, launch(cert_dir="/certs"), "0")  # the default names them


def test_working_dir_comes_first(tmp_path: Any) -> None:
    here = tmp_path / "my dir"
    here.mkdir()
    cmd = poolcmd.launch_command("pwd; echo {block_id} $HTEX_CERT_DIR", launch(working_dir=str(here), cert_dir="/c"), "3")
    for prefix in ("", "env "):
        assert _run(cmd, prefix).stdout.split("\n")[:2] == [str(here), "3 /c"], prefix
    missing = poolcmd.launch_command("pwd", launch(working_dir=str(tmp_path / "gone")), "0")
    assert _run(missing).returncode != 0  # the user's working_dir is missing: the block fails


def test_both_ends_agree() -> None:
    """The default launch command, parsed by the pool's own parser, gives back every value it was made of."""
    lx = launch(cert_dir="/runs/my run/certs", working_dir="/w d")
    args = parse_back(poolcmd.launch_command(None, lx, "7"))
    assert args.debug is True and args.max_workers == math.inf
    assert args.addresses.split(",") == lx.addresses and (args.task_port, args.result_port) == (54001, None)
    assert args.task_url is None and args.result_url is None  # no local_url: the pool probes the addresses
    assert (args.prefetch_capacity, args.cores_per_worker, args.mem_per_worker) == (7, 0.5, 2.5)
    assert (args.poll, args.nodes_per_block, args.block_id) == (10, 2, "7")
    assert (args.hb_period, args.hb_threshold, args.address_probe_timeout) == (3.0, 12.0, 45.0)
    assert args.logdir == lx.logdir and args.cert_dir == lx.cert_dir

    local = launch(debug=False, max_workers=3, mem_per_worker=None, local_url="unix:///run/h x/pools-unix")
    args = parse_back(poolcmd.launch_command(None, local, "0"))
    assert args.debug is False and args.max_workers == 3 and args.mem_per_worker is None
    assert not args.cert_dir  # unencrypted: the pool looks at $HTEX_CERT_DIR, then goes without
    assert poolcmd.resolve_url(args) == "unix:///run/h x/pools-unix"


def test_join_argv_is_read_back() -> None:
    argv = poolcmd.join_argv(["127.0.0.1", "10.0.0.5"], 5, heartbeat_period=2, heartbeat_threshold=8.5,
                             logdir="/l d", cert_dir="/c d")
    args = poolcmd.build_parser().parse_args(argv)
    assert (args.addresses, args.task_port, args.result_port) == ("127.0.0.1,10.0.0.5", 5, None)
    assert (args.hb_period, args.hb_threshold, args.logdir, args.cert_dir) == (2.0, 8.5, "/l d", "/c d")
    assert "--cert_dir" not in " ".join(poolcmd.join_argv(["h"], 5, heartbeat_period=1, heartbeat_threshold=4,
                                                          logdir="/l", cert_dir=None))


def test_resolve_url_without_probing() -> None:
    parser = poolcmd.build_parser()
    args = parser.parse_args(["--task_url=tcp://h:1", "--result_url=tcp://h:2", "-a", "x,y", "-t", "3", "-r", "4"])
    assert poolcmd.resolve_url(args) == "tcp://h:1"  # the given URL wins; the result URL is not used
    assert poolcmd.resolve_url(parser.parse_args(["-a", "h", "-t", "3", "-r", "4"])) == "tcp://h:3"  # Parsl 1.0's flags
    assert poolcmd.resolve_url(parser.parse_args(["-a", "h", "-t", "3"])) == "tcp://h:3"
    assert poolcmd.resolve_url(parser.parse_args(["--task_url=ipc:///x"])) == "ipc:///x"
    with pytest.raises(SystemExit, match="give --task_url"):
        poolcmd.resolve_url(parser.parse_args(["-a", "h", "-r", "4"]))


@pytest.fixture
def interchange() -> Iterator[int]:
    """A stand-in interchange on 127.0.0.1 that answers probes; yields its port."""
    ctx = zmq.Context()
    sock = ctx.socket(zmq.ROUTER)
    port = sock.bind_to_random_port("tcp://127.0.0.1")
    stop = threading.Event()

    def answer() -> None:
        while not stop.is_set():
            if sock.poll(50):
                ident, *frames = sock.recv_multipart()
                if isinstance(protocol.decode(frames), protocol.Probe):
                    sock.send_multipart([ident, *protocol.ProbeReply().encode()])

    thread = threading.Thread(target=answer)
    thread.start()
    yield port
    stop.set()
    thread.join()
    sock.close(0)
    ctx.term()


def test_probing_finds_the_address_that_answers(interchange: int) -> None:
    args = poolcmd.build_parser().parse_args(["-a", "127.0.0.3,127.0.0.1", "-t", str(interchange), "-r", "9",
                                              "--address_probe_timeout", "10"])
    assert poolcmd.resolve_url(args) == f"tcp://127.0.0.1:{interchange}"


def test_probing_gives_up_and_says_what_to_set(interchange: int) -> None:
    with pytest.raises(SystemExit, match=r"no interchange answered .* within 0\.5 s; set the executor's `address`"):
        poolcmd.probe_addresses(["127.0.0.3", "127.0.0.4"], interchange, 0.5)


def test_pool_launch_is_frozen() -> None:
    with pytest.raises(dataclasses.FrozenInstanceError):
        launch().debug = False  # type: ignore[misc]


def test_client_dir_is_where_the_command_runs(tmp_path: Any) -> None:
    here = tmp_path / "client dir"
    here.mkdir()
    cmd = poolcmd.launch_command("pwd", launch(client_dir=str(here)), "0")
    run = subprocess.run(["/bin/bash", "-c", cmd], cwd="/", capture_output=True, text=True, timeout=10)
    assert run.stdout.strip() == str(here)
    # A node without it (no shared file system) stays where the scheduler started it, and says so.
    cmd = poolcmd.launch_command("pwd", launch(client_dir=str(tmp_path / "gone")), "0")
    run = subprocess.run(["/bin/bash", "-c", cmd], cwd="/", capture_output=True, text=True, timeout=10)
    assert run.returncode == 0 and run.stdout.strip() == "/" and "no directory" in run.stderr
    # The user's working_dir wins over it.
    cmd = poolcmd.launch_command("pwd", launch(client_dir="/nowhere", working_dir=str(here)), "0")
    run = subprocess.run(["/bin/bash", "-c", cmd], cwd="/", capture_output=True, text=True, timeout=10)
    assert run.stdout.strip() == str(here)
