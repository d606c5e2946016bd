"""What AWSProvider makes around its instances: a VPC, its way out, a security group; and the state file.

The network, made at the first block and deleted at shutdown:

* a VPC (10.0.0.0/16) and one subnet that gives its instances a public
  address, an internet gateway and a default route through it: pools connect
  *out*, to the executor's public address;
* a security group that lets nothing in (the pools dial out, so no port of
  theirs needs to be reachable), but SSH when a ``key_name`` is given, the
  only use of that key.  Going out is allowed: the pools reach the executor's
  ports, and ``worker_init`` may install software.

Every resource is tagged ``htex:run`` with the provider's run token, and
recorded in the state file (JSON, 0600) as soon as it exists: a client that
died leaves a file from which the next one deletes what it left.

``call`` is the one door to the EC2 API: a refusal becomes ProviderError
quoting the cloud's code and message.
"""

from __future__ import annotations

import json
import logging
import os
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

from ..errors import ProviderError

log = logging.getLogger("htex.providers.aws")

VPC_CIDR = "10.0.0.0/16"
SUBNET_CIDR = "10.0.0.0/24"
# Between two tries of a deletion that waits for instances to be gone (DependencyViolation).
_RETRY_EVERY = 2.0


def call(what: str, fn: Callable[..., Any], **kwargs: Any) -> Any:
    """``fn(**kwargs)``; a refusal or an unreachable endpoint becomes ProviderError quoting the cloud."""
    from botocore.exceptions import BotoCoreError, ClientError

    try:
        return fn(**kwargs)
    except ClientError as exc:
        err = exc.response.get("Error", {})
        raise ProviderError(
            f"EC2 refused to {what}: {err.get('Code', '?')}: {err.get('Message', exc)}{_hint(err.get('Code', ''))}",
            code=err.get("Code", ""),
        ) from exc
    except BotoCoreError as exc:
        raise ProviderError(f"could not {what}: {exc}{_hint(type(exc).__name__)}", code=type(exc).__name__) from exc


def _hint(code: str) -> str:
    if code in ("AuthFailure", "InvalidClientTokenId", "UnrecognizedClientException", "SignatureDoesNotMatch",
                "NoCredentialsError", "PartialCredentialsError"):
        return " (check the credentials: key_file, profile, or AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY)"
    if code.startswith("InvalidAMIID"):
        return " (image_id must name an image of this region; list them with `aws ec2 describe-images`)"
    if code.endswith("LimitExceeded") or code == "InsufficientInstanceCapacity":
        return " (ask AWS for a higher quota, or lower max_blocks or nodes_per_block)"
    if code == "EndpointConnectionError":
        return " (check region and endpoint_url)"
    return ""


def absent(exc: ProviderError) -> bool:
    """The refusal says the thing is gone already (deleting it again is done)."""
    return str(getattr(exc, "code", "")).endswith(".NotFound")


@dataclass
class Network:
    """The ids of what was made (None: not made, or deleted)."""

    vpc_id: str | None = None
    subnet_id: str | None = None
    gateway_id: str | None = None
    group_id: str | None = None

    def create(self, ec2: Any, name: str, tags: list[dict[str, str]], ssh: bool, saved: Callable[[], None]) -> None:
        """Make the VPC, subnet, gateway, route and security group; ``saved()`` after each, for the state file."""
        def tagged(kind: str) -> list[dict[str, Any]]:
            return [{"ResourceType": kind, "Tags": [{"Key": "Name", "Value": name}, *tags]}]

        self.vpc_id = call("create a VPC", ec2.create_vpc, CidrBlock=VPC_CIDR, TagSpecifications=tagged("vpc"))["Vpc"]["VpcId"]
        saved()
        self.gateway_id = call("create an internet gateway", ec2.create_internet_gateway,
                               TagSpecifications=tagged("internet-gateway"))["InternetGateway"]["InternetGatewayId"]
        saved()
        call("attach the internet gateway", ec2.attach_internet_gateway, InternetGatewayId=self.gateway_id, VpcId=self.vpc_id)
        self.subnet_id = call("create a subnet", ec2.create_subnet, VpcId=self.vpc_id, CidrBlock=SUBNET_CIDR,
                              TagSpecifications=tagged("subnet"))["Subnet"]["SubnetId"]
        saved()
        call("give the subnet public addresses", ec2.modify_subnet_attribute, SubnetId=self.subnet_id,
             MapPublicIpOnLaunch={"Value": True})
        tables = call("find the VPC's route table", ec2.describe_route_tables,
                      Filters=[{"Name": "vpc-id", "Values": [self.vpc_id]}])["RouteTables"]
        for table in tables:
            call("route out through the gateway", ec2.create_route, RouteTableId=table["RouteTableId"],
                 DestinationCidrBlock="0.0.0.0/0", GatewayId=self.gateway_id)
        self.group_id = call("create a security group", ec2.create_security_group, GroupName=name, VpcId=self.vpc_id,
                             Description="htex pools: they connect out; nothing comes in but SSH with a key",
                             TagSpecifications=tagged("security-group"))["GroupId"]
        saved()
        if ssh:
            call("let SSH in", ec2.authorize_security_group_ingress, GroupId=self.group_id, IpPermissions=[
                {"IpProtocol": "tcp", "FromPort": 22, "ToPort": 22, "IpRanges": [{"CidrIp": "0.0.0.0/0"}]}])

    def delete(self, ec2: Any, deadline: float, saved: Callable[[], None]) -> None:
        """Delete what exists, in dependency order (call once the instances are terminated)."""
        if self.group_id:
            _retry(deadline, "delete the security group", ec2.delete_security_group, GroupId=self.group_id)
            self.group_id = None
            saved()
        if self.subnet_id:
            _retry(deadline, "delete the subnet", ec2.delete_subnet, SubnetId=self.subnet_id)
            self.subnet_id = None
            saved()
        if self.gateway_id:
            if self.vpc_id:
                _retry(deadline, "detach the internet gateway", ec2.detach_internet_gateway,
                       InternetGatewayId=self.gateway_id, VpcId=self.vpc_id)
            _retry(deadline, "delete the internet gateway", ec2.delete_internet_gateway, InternetGatewayId=self.gateway_id)
            self.gateway_id = None
            saved()
        if self.vpc_id:
            _retry(deadline, "delete the VPC", ec2.delete_vpc, VpcId=self.vpc_id)
            self.vpc_id = None
            saved()

    @property
    def made(self) -> bool:
        return any(asdict(self).values())


def _retry(deadline: float, what: str, fn: Callable[..., Any], **kwargs: Any) -> None:
    """Delete; a resource still in use by instances being terminated is tried again until ``deadline``."""
    while True:
        try:
            call(what, fn, **kwargs)
            return
        except ProviderError as exc:
            if absent(exc) or (str(getattr(exc, "code", "")) == "Gateway.NotAttached"):
                return
            if getattr(exc, "code", "") != "DependencyViolation" or time.monotonic() > deadline:
                raise
        time.sleep(_RETRY_EVERY)  # EC2 frees a terminated instance's interfaces in its own time


def wait_terminated(ec2: Any, run: str, deadline: float) -> None:
    """Wait until no instance tagged with ``run`` is anything but terminated (ProviderError after deadline)."""
    while True:
        left = [i["InstanceId"] for i in instances(ec2, run) if i["State"]["Name"] != "terminated"]
        if not left:
            return
        if time.monotonic() > deadline:
            raise ProviderError(f"instances {left} were not terminated in time; terminate them in the EC2 console")
        time.sleep(_RETRY_EVERY)


def instances(ec2: Any, run: str) -> list[dict[str, Any]]:
    """Every instance tagged ``htex:run=run`` (with its ReservationId), one paginated call."""
    found = []
    pages = call("describe instances", lambda: list(ec2.get_paginator("describe_instances").paginate(
        Filters=[{"Name": "tag:htex:run", "Values": [run]}])))
    for page in pages:
        for reservation in page["Reservations"]:
            for inst in reservation["Instances"]:
                found.append({**inst, "ReservationId": reservation["ReservationId"]})
    return found


@dataclass
class State:
    """What one provider made, as written in its state file."""

    run: str
    region: str
    network: Network = field(default_factory=Network)
    jobs: dict[str, list[str]] = field(default_factory=dict)  # reservation id -> instance ids

    def save(self, path: str | None) -> None:
        if not path:
            return
        tmp = f"{path}.tmp"
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:
            json.dump({"run": self.run, "region": self.region, "network": asdict(self.network), "jobs": self.jobs}, f,
                      indent=1)
        os.replace(tmp, path)  # a reader never sees half a file

    @classmethod
    def load(cls, path: str) -> State | None:
        try:
            with open(path) as f:
                data = json.load(f)
            return cls(run=data["run"], region=data["region"], network=Network(**data["network"]), jobs=data["jobs"])
        except FileNotFoundError:
            return None
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise ProviderError(f"the state file {path} cannot be read ({exc}); remove it once its resources are gone") from exc
