"""A test "hypervisor": boots a cloud's instances as processes, each on a host (network namespace) of its own.

No cloud can run here, but its API emulator can (moto for EC2, the REST
stand-ins of the other clouds): a watcher reads the emulator's instances and
asks this hypervisor to boot or kill them, so what a provider put in an
instance's user-data (or startup script, or pod command) really runs, as root,
on a machine that reaches the client only over the network.  The interface::

    hv = Hypervisor(boot_dir, hide=[client_run_dir])
    hv.address                   # where instances reach the client (198.18.0.1): the executor's `address`
    hv.boot(instance_id, script) # run `script` (user-data, a shell script) on a new host; returns its address
    hv.kill(instance_id)         # power it off: every process of its host is killed
    hv.running()                 # ids of instances whose processes are alive
    hv.halted()                  # ids whose own OS asked to shut down (shutdown/halt/poweroff were run)
    hv.booted()                  # ids of every instance booted so far
    hv.instance_of(pid)          # which instance a process runs on; hv.console(id): what it printed
    hv.close()                   # kill everything, delete every namespace and link

An instance is, for the programs in it:

* a network of its own: a namespace from tests/network/netlab.py (its ``Lab``
  holds the machine-wide lock and deletes its ``htex-t-*`` leftovers), with a
  veth address in 198.18.0.0/24 and a default route to the root namespace;
* a mount namespace of its own, in which each path of ``hide`` is covered by an
  empty tmpfs: the client's run directory (its keys, its sockets) is not there,
  as on a real instance, which shares no file system with the client.  The
  rest of this machine's files are the "image" (so Python and htex are at the
  same paths as on the client);
* its own hostname (a UTS namespace): ``ip-198-18-0-N``, as EC2 names them;
* ``shutdown``, ``halt``, ``poweroff`` and ``reboot`` replaced (first on PATH,
  and bind-mounted over the real ones) by a stub that records the request and
  kills the instance's own processes: a script run as root must not stop this
  machine.  The watcher turns ``halted()`` into what the cloud does on an
  instance-initiated shutdown (EC2: terminate or stop);
* a clean environment (PATH, HOME=/root, LANG), as cloud-init gives a script;
  its console (stdout and stderr) is ``boot_dir/<id>/console.log``.

Needs root and iproute2, as tests/network (``netlab.unavailable()`` says why not).
"""

from __future__ import annotations

import os
import shlex
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass

_NETWORK_TESTS = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "network")
if _NETWORK_TESTS not in sys.path:
    sys.path.insert(0, _NETWORK_TESTS)

import netlab  # noqa: E402

_STUBBED = ("shutdown", "halt", "poweroff", "reboot")
_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
# How long kill() keeps killing what is left in a host (a process forking as it is killed).
_KILL_SECONDS = 10.0


def unavailable() -> str | None:
    """Why instances cannot be booted here (a reason for pytest.skip), or None."""
    return netlab.unavailable()


@dataclass
class Instance:
    instance_id: str
    host: netlab.Host
    proc: subprocess.Popen[bytes]
    directory: str

    @property
    def address(self) -> str:
        return self.host.ns_ip


class Hypervisor:
    """Boots and kills instances; see the module's docstring.  Thread-safe; close() is idempotent."""

    def __init__(self, boot_dir: str, hide: Sequence[str] = ()) -> None:
        self.boot_dir = os.path.abspath(boot_dir)
        self.hide = [os.path.abspath(p) for p in hide]
        for path in self.hide:
            if self.boot_dir == path or self.boot_dir.startswith(path + os.sep):
                raise ValueError(f"boot_dir {self.boot_dir} is under a hidden path {path}: instances could not read it")
        os.makedirs(self.boot_dir, exist_ok=True)
        self._lock = threading.Lock()
        self._instances: dict[str, Instance] = {}
        self._lab = netlab.Lab()
        try:
            # Host 0 boots nothing: the root side of its link is the client's address, there before any instance.
            self._gateway = self._lab.host()
        except BaseException:
            self._lab.close()
            raise

    @property
    def address(self) -> str:
        """The client's address as instances see it: give it to the executor as ``address``."""
        return self._gateway.root_ip

    def boot(self, instance_id: str, script: str) -> str:
        """Start ``script`` as the instance's user-data, on a new host; return the host's address."""
        with self._lock:
            if instance_id in self._instances:
                raise ValueError(f"instance {instance_id} was booted already")
            host = self._lab.host()
            directory = os.path.join(self.boot_dir, instance_id)
            os.makedirs(os.path.join(directory, "bin"), exist_ok=True)
            user_data = os.path.join(directory, "user-data")
            with open(user_data, "w") as f:
                f.write(script)
            os.chmod(user_data, 0o700)
            stub = self._write_stubs(directory)
            hostname = "ip-" + host.ns_ip.replace(".", "-")
            with open(os.path.join(directory, "console.log"), "wb") as console:
                proc = subprocess.Popen(
                    ["ip", "netns", "exec", host.ns, "unshare", "--mount", "--uts", "--propagation", "private", "--",
                     "/bin/sh", "-c", self._setup(stub, hostname, directory), "instance", user_data],
                    stdin=subprocess.DEVNULL, stdout=console, stderr=subprocess.STDOUT,
                    start_new_session=True, env={"PATH": _PATH}, cwd="/",
                )
            self._instances[instance_id] = Instance(instance_id, host, proc, directory)
            return host.ns_ip

    def _setup(self, stub: str, hostname: str, directory: str) -> str:
        """The shell lines that make the namespaces an instance, then run the user-data (``$1``)."""
        lines = ["set -e", f"hostname {shlex.quote(hostname)}"]
        lines += [f"mount -t tmpfs -o mode=0755 htex-hidden {shlex.quote(p)}" for p in self.hide if os.path.isdir(p)]
        lines += [f"[ ! -e /usr/sbin/{name} ] || mount --bind {shlex.quote(stub)} /usr/sbin/{name}" for name in _STUBBED]
        bin_dir = shlex.quote(os.path.join(directory, "bin"))
        # A script without "#!" is run by sh, as cloud-init would not: close enough for tests.
        run = 'if head -c2 "$1" | grep -q "^#!"; then exec "$1"; else exec /bin/sh "$1"; fi'
        lines.append(f"exec env -i PATH={bin_dir}:{_PATH} HOME=/root LANG=C.UTF-8 /bin/sh -c {shlex.quote(run)} sh \"$1\"")
        return "\n".join(lines)

    def _write_stubs(self, directory: str) -> str:
        """The stand-in for shutdown & co: record the request, then kill every process of this instance.

        ``kill -KILL 0`` is the stub's process group: the instance's session (the user-data and what it
        started, unless a program made a session of its own; kill() finds those through the namespace).
        """
        halted = shlex.quote(os.path.join(directory, "halted"))
        stub = os.path.join(directory, "bin", "shutdown")
        with open(stub, "w") as f:
            f.write(f"#!/bin/sh\necho \"$0 $*\" > {halted}\nkill -KILL 0\n")
        os.chmod(stub, 0o755)
        for name in _STUBBED[1:]:
            link = os.path.join(directory, "bin", name)
            if not os.path.exists(link):
                os.symlink(stub, link)
        return stub

    def kill(self, instance_id: str) -> None:
        """Power the instance off: SIGKILL every process in its network namespace (not only its children)."""
        with self._lock:
            inst = self._instances.get(instance_id)
        if inst is None:
            return
        deadline = time.monotonic() + _KILL_SECONDS
        while True:
            pids = [int(p) for p in netlab.ip("netns", "pids", inst.host.ns, check=False).stdout.split()]
            for pid in pids:
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
            if not pids and inst.proc.poll() is not None:
                return
            if time.monotonic() > deadline:
                raise RuntimeError(f"instance {instance_id}: processes {pids} survive SIGKILL")
            inst.proc.poll()  # reap ip-netns-exec's child, our own
            time.sleep(0.02)

    def running(self) -> set[str]:
        with self._lock:
            return {i for i, inst in self._instances.items() if inst.proc.poll() is None or self._has_processes(inst)}

    def _has_processes(self, inst: Instance) -> bool:
        return bool(netlab.ip("netns", "pids", inst.host.ns, check=False).stdout.split())

    def halted(self) -> set[str]:
        with self._lock:
            return {i for i, inst in self._instances.items() if os.path.exists(os.path.join(inst.directory, "halted"))}

    def booted(self) -> set[str]:
        """Every instance ever booted (running or not)."""
        with self._lock:
            return set(self._instances)

    def instance_of(self, pid: int) -> str | None:
        """The instance process ``pid`` runs on (by its network namespace), or None."""
        with self._lock:
            hosts = [(i, inst.host) for i, inst in self._instances.items()]
        return next((i for i, host in hosts if host.runs(pid)), None)

    def address_of(self, instance_id: str) -> str:
        with self._lock:
            return self._instances[instance_id].address

    def console(self, instance_id: str) -> str:
        """What the instance printed so far (its user-data's stdout and stderr)."""
        with self._lock:
            path = os.path.join(self._instances[instance_id].directory, "console.log")
        with open(path, errors="replace") as f:
            return f.read()

    def close(self) -> None:
        for instance_id in list(self.booted()):
            try:
                self.kill(instance_id)
            except RuntimeError:
                pass  # the namespace's deletion below still leaves its processes without a network
        self._lab.close()
