"""The EC2 side of the cloud tests: moto's server, a watcher that boots its instances, a quota stand-in.

* ``MotoServer``: ``python -m moto.server`` in a process of its own on
  127.0.0.1, a real AWS API emulator that boto3 talks to over HTTP; images are
  checked (MOTO_ENABLE_AMI_VALIDATION), as AWS does.
* ``Ec2Watcher``: a thread that reads the emulator's instances
  (DescribeInstances, DescribeInstanceAttribute userData) and makes them real
  with the Hypervisor: a running instance is booted with its user-data, a
  terminated (or stopped) one is killed, and one whose OS shut itself down is
  terminated through the API, as EC2 does for InstanceInitiatedShutdownBehavior
  "terminate".
* ``QuotaProxy``: moto has no instance quota, so this small HTTP proxy in front
  of it answers RunInstances with EC2's documented refusal
  (InstanceLimitExceeded) when the instances asked for would pass ``limit``,
  and passes every other request to moto unchanged.  A stand-in for AWS's
  quota, said so where used.
"""

from __future__ import annotations

import base64
import http.server
import os
import socket
import subprocess
import sys
import threading
import time
import urllib.parse
import urllib.request
from dataclasses import dataclass
from typing import Any

from hypervisor import Hypervisor

_STARTUP_SECONDS = 60.0
REGION = "us-east-2"
TESTS = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))  # tests/: tasks.py, support.py


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class MotoServer:
    def __init__(self, log_path: str) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        env = {**os.environ, "MOTO_ENABLE_AMI_VALIDATION": "true"}
        self._log = open(log_path, "wb")  # noqa: SIM115 (the server writes it until close())
        self.proc = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(self.port)],
                                     stdin=subprocess.DEVNULL, stdout=self._log, stderr=subprocess.STDOUT, env=env)
        deadline = time.monotonic() + _STARTUP_SECONDS
        while not self._answers():
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.close()
                with open(log_path, errors="replace") as f:
                    raise RuntimeError(f"moto's server did not start: {f.read()[-2000:]}")
            time.sleep(0.1)

    def _answers(self) -> bool:
        try:
            with urllib.request.urlopen(f"{self.url}/moto-api/data.json", timeout=2):
                return True
        except OSError:
            return False

    def post(self, path: str, body: bytes = b"") -> None:
        """Moto's own control API: /moto-api/reset (forget everything), /moto-api/reset-auth (N: check keys)."""
        req = urllib.request.Request(f"{self.url}{path}", data=body, method="POST", headers={"Content-Type": "text/plain"})
        with urllib.request.urlopen(req, timeout=10):
            pass

    def close(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self._log.close()


@dataclass
class Cloud:
    """What the ``cloud`` fixture gives: instances the emulator runs are booted by ``hv``."""

    hv: Hypervisor
    watcher: Ec2Watcher


_GONE = ("shutting-down", "terminated", "stopping", "stopped")


class Ec2Watcher(threading.Thread):
    """Keeps the hypervisor's instances in step with the emulator's (every ``period`` s)."""

    def __init__(self, ec2: Any, hv: Hypervisor, period: float = 0.2) -> None:
        super().__init__(name="ec2-watcher", daemon=True)
        self.ec2, self.hv, self.period = ec2, hv, period
        self.error: BaseException | None = None
        self._stop_event = threading.Event()
        self._terminated: set[str] = set()
        self.start()

    def run(self) -> None:
        try:
            while not self._stop_event.wait(self.period):
                self.step()
        except BaseException as exc:
            self.error = exc

    def step(self) -> None:
        booted = self.hv.booted()
        for inst in self._instances():
            iid, state = inst["InstanceId"], inst["State"]["Name"]
            if state == "running" and iid not in booted:
                attr = self.ec2.describe_instance_attribute(InstanceId=iid, Attribute="userData")
                script = base64.b64decode(attr.get("UserData", {}).get("Value", "")).decode()
                self.hv.boot(iid, script)
            elif state in _GONE and iid in booted:
                self.hv.kill(iid)
        for iid in self.hv.halted() - self._terminated:  # the instance ran `shutdown`: EC2 terminates it
            self.ec2.terminate_instances(InstanceIds=[iid])
            self._terminated.add(iid)

    def _instances(self) -> list[dict[str, Any]]:
        pages = self.ec2.get_paginator("describe_instances").paginate()
        return [i for page in pages for r in page["Reservations"] for i in r["Instances"]]

    def stop(self) -> None:
        self._stop_event.set()
        self.join(30)
        if self.error is not None:
            raise RuntimeError(f"the EC2 watcher failed: {self.error!r}") from self.error


_LIMIT_XML = (
    '<?xml version="1.0" encoding="UTF-8"?>\n<Response><Errors><Error><Code>InstanceLimitExceeded</Code>'
    "<Message>You have requested more instances ({asked}) than your current instance limit of {limit} allows for "
    "the specified instance type. Please visit http://aws.amazon.com/contact-us/ec2-request to request an "
    "adjustment to this limit.</Message></Error></Errors><RequestID>htex-quota-proxy</RequestID></Response>"
)


class QuotaProxy:
    """An HTTP proxy to moto that refuses RunInstances past ``limit`` live instances (see the module's docstring)."""

    def __init__(self, upstream: str, ec2: Any, limit: int) -> None:
        self.upstream, self.ec2, self.limit = upstream, ec2, limit
        proxy = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                form = urllib.parse.parse_qs(body.decode())
                if form.get("Action") == ["RunInstances"]:
                    asked = int(form.get("MinCount", ["1"])[0])
                    if proxy.live() + asked > proxy.limit:
                        self._reply(400, _LIMIT_XML.format(asked=asked, limit=proxy.limit).encode())
                        return
                req = urllib.request.Request(proxy.upstream + self.path, data=body, method="POST",
                                             headers={k: v for k, v in self.headers.items() if k.lower() != "host"})
                try:
                    with urllib.request.urlopen(req, timeout=30) as resp:
                        self._reply(resp.status, resp.read())
                except urllib.error.HTTPError as err:
                    self._reply(err.code, err.read())

            def _reply(self, status: int, data: bytes) -> None:
                self.send_response(status)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *args: Any) -> None:
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self._thread = threading.Thread(target=self.server.serve_forever, name="quota-proxy", daemon=True)
        self._thread.start()

    def live(self) -> int:
        pages = self.ec2.get_paginator("describe_instances").paginate(
            Filters=[{"Name": "instance-state-name", "Values": ["pending", "running"]}])
        return sum(len(r["Instances"]) for page in pages for r in page["Reservations"])

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self._thread.join(10)


def leftovers(ec2: Any) -> dict[str, list[str]]:
    """What is left in the emulator besides its defaults: live instances, VPCs, subnets, groups, gateways."""
    default_vpcs = {v["VpcId"] for v in ec2.describe_vpcs()["Vpcs"] if v.get("IsDefault")}
    pages = ec2.get_paginator("describe_instances").paginate()
    left = {
        "instances": [i["InstanceId"] for p in pages for r in p["Reservations"] for i in r["Instances"]
                      if i["State"]["Name"] != "terminated"],
        "vpcs": [v["VpcId"] for v in ec2.describe_vpcs()["Vpcs"] if v["VpcId"] not in default_vpcs],
        "subnets": [s["SubnetId"] for s in ec2.describe_subnets()["Subnets"] if s["VpcId"] not in default_vpcs],
        "security groups": [g["GroupId"] for g in ec2.describe_security_groups()["SecurityGroups"]
                            if g["VpcId"] not in default_vpcs],
        "internet gateways": [g["InternetGatewayId"] for g in ec2.describe_internet_gateways()["InternetGateways"]
                              if not any(a["VpcId"] in default_vpcs for a in g.get("Attachments", []))],
    }
    return {k: v for k, v in left.items() if v}
