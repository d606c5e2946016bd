"""OpenStackProvider (and JetstreamProvider): each block is Nova servers that boot the pool from user-data.

Needs the ``openstack`` extra (openstacksdk).  The calls it makes: a Keystone
token (the cloud's ``clouds.yaml`` entry), then, once, the flavor, image and
network looked up by name or id (Nova, Glance, Neutron); per block, Nova's
``servers`` create; ``servers/detail`` (status) and delete (cancel).
"""

from __future__ import annotations

import base64
import os
from typing import Any

from ..errors import ProviderError
from ..launchers import Launcher
from .base import JobState, JobStatus
from .cloud import CloudProvider, require

# Nova's server states -> ours.  A server in ERROR never boots (Nova says why in its "fault").
_STATES = {
    "BUILD": JobState.PENDING, "ACTIVE": JobState.RUNNING, "REBOOT": JobState.RUNNING, "HARD_REBOOT": JobState.RUNNING,
    "MIGRATING": JobState.RUNNING, "RESIZE": JobState.RUNNING, "VERIFY_RESIZE": JobState.RUNNING,
    "PASSWORD": JobState.RUNNING, "ERROR": JobState.FAILED, "SHUTOFF": JobState.COMPLETED,
    "STOPPED": JobState.COMPLETED, "SUSPENDED": JobState.COMPLETED, "PAUSED": JobState.COMPLETED,
    "SHELVED": JobState.COMPLETED, "SHELVED_OFFLOADED": JobState.COMPLETED, "DELETED": JobState.COMPLETED,
    "SOFT_DELETED": JobState.COMPLETED,
}
# What to check, by HTTP status of the refusal.
_HINTS = {
    401: " (check the credentials of this cloud's entry in clouds.yaml)",
    403: " (check the project's quotas: `openstack quota show`)",
    404: " (`openstack flavor list`, `image list` and `network list` show what this project can use)",
}


class OpenStackProvider(CloudProvider):
    """Blocks of servers on an OpenStack cloud named in ``clouds.yaml``.

    ``cloud`` is the entry of ``clouds.yaml`` (openstacksdk's usual places, or
    the file ``clouds_yaml``); ``flavor``, ``image`` and ``network`` are names
    or ids (no ``network``: Nova's ``auto``, the project's own network);
    ``key_name`` an SSH key pair to install; ``security_groups`` their names.
    The boot script is the server's user-data.  A server in ERROR fails its
    block with Nova's fault, and is deleted.  A server powers itself off when
    its pool ends and after ``walltime`` (unless ``linger``): SHUTOFF ends its
    block, and it is deleted.
    """

    cloud_name = "OpenStack"

    def __init__(
        self,
        cloud: str = "openstack",
        flavor: str = "m1.small",
        image: str = "ubuntu-22.04",
        network: str | None = None,
        key_name: str | None = None,
        security_groups: list[str] | None = None,
        clouds_yaml: str | None = None,
        region_name: str | None = None,
        nodes_per_block: int = 1,
        init_blocks: int = 1,
        min_blocks: int = 0,
        max_blocks: int = 10,
        parallelism: float = 1,
        walltime: str = "01:00:00",
        worker_init: str = "",
        launcher: Launcher | None = None,
        cmd_timeout: int = 120,
        status_polling_interval: float = 30.0,
        linger: bool = False,
        label: str = "openstack",
    ) -> None:
        self._sdk: Any = require("openstack", "openstack", "openstacksdk", type(self).__name__)
        super().__init__(
            label=label, nodes_per_block=nodes_per_block, init_blocks=init_blocks, min_blocks=min_blocks,
            max_blocks=max_blocks, parallelism=parallelism, walltime=walltime, worker_init=worker_init,
            launcher=launcher, cmd_timeout=cmd_timeout, status_polling_interval=status_polling_interval,
        )
        self.linger = linger
        self.cloud = cloud
        self.flavor = flavor
        self.image = image
        self.network = network
        self.key_name = key_name
        self.security_groups = list(security_groups or [])
        self.clouds_yaml = os.path.expanduser(clouds_yaml) if clouds_yaml else None
        self.region_name = region_name
        self._conn: Any = None
        self._server_args: dict[str, Any] | None = None

    # ------------------------------------------------------------------ the API

    def _call(self, what: str, fn: Any, *args: Any, **kwargs: Any) -> Any:
        """Call the SDK; a refusal (Keystone's, Nova's, a name not found) is a ProviderError quoting it."""
        from keystoneauth1 import exceptions as ksa_errors

        try:
            return fn(*args, **kwargs)
        except (self._sdk.exceptions.SDKException, ksa_errors.ClientException) as exc:
            code = getattr(exc, "status_code", None) or getattr(exc, "http_status", None)
            if isinstance(exc, self._sdk.exceptions.NotFoundException):
                code = 404
            hint = _HINTS.get(code, "") if isinstance(code, int) else ""
            raise ProviderError(f"OpenStack refused to {what}: {_said(exc)}{hint}") from exc

    def _connection(self) -> Any:
        """A connection to the cloud (Keystone authenticates on its first call), made on first use."""
        if self._conn is None:
            sdk = self._sdk
            files = [self.clouds_yaml] if self.clouds_yaml else None
            region = self._call(f"read cloud {self.cloud!r} from clouds.yaml",
                                lambda: sdk.config.OpenStackConfig(config_files=files).get_one(
                                    cloud=self.cloud, region_name=self.region_name))
            self._conn = sdk.connection.Connection(config=region, api_timeout=self.cmd_timeout)
        return self._conn

    def _resolved(self) -> dict[str, Any]:
        """Flavor, image and network by name or id, looked up once: a name that is not there fails here."""
        if self._server_args is None:
            conn = self._connection()
            # (A service's proxy is made on first use: `conn.image` itself may raise.)
            flavor = self._call(f"find flavor {self.flavor!r}",
                                lambda: conn.compute.find_flavor(self.flavor, ignore_missing=False))
            image = self._call(f"find image {self.image!r}", lambda: conn.image.find_image(self.image, ignore_missing=False))
            networks: Any = "auto"
            if self.network:
                net = self._call(f"find network {self.network!r}",
                                 lambda: conn.network.find_network(self.network, ignore_missing=False))
                networks = [{"uuid": net.id}]
            args: dict[str, Any] = {"flavor_id": flavor.id, "image_id": image.id, "networks": networks}
            if self.key_name:
                args["key_name"] = self.key_name
            if self.security_groups:
                args["security_groups"] = [{"name": g} for g in self.security_groups]
            self._server_args = args
        return self._server_args

    # ------------------------------------------------------------------ CloudProvider's three

    def _create(self, name: str, script: str) -> str:
        user_data = base64.b64encode(script.encode()).decode("ascii")
        args = self._resolved()
        server = self._call(f"create server {name}", lambda: self._connection().compute.create_server(
            name=name, user_data=user_data, metadata={"htex-run": self.run_tag}, **args))
        return str(server.id)

    def _states(self, ids: list[str]) -> dict[str, JobStatus]:
        wanted = set(ids)
        servers = self._call("list servers", lambda: list(self._connection().compute.servers(details=True)))
        found = {}
        for s in servers:
            if s.id in wanted:
                fault = (s.fault or {}).get("message", "") if isinstance(s.fault, dict) else ""
                state = _STATES.get(str(s.status).upper(), JobState.UNKNOWN)
                found[s.id] = JobStatus(state, f"server {s.name} ({s.id}) is {s.status}" + (f": {fault}" if fault else ""))
        return found

    def _delete(self, node: str) -> None:
        self._call(f"delete server {node}", lambda: self._connection().compute.delete_server(node, ignore_missing=True))


class JetstreamProvider(OpenStackProvider):
    """OpenStackProvider with Jetstream2's defaults: its small flavor, its featured Ubuntu image, and the
    project's auto-allocated network.  ``cloud`` is the clouds.yaml entry (Jetstream2's application
    credentials, as its documentation shows how to download)."""

    def __init__(self, cloud: str = "openstack", flavor: str = "m3.small", image: str = "Featured-Ubuntu24",
                 label: str = "jetstream", **kwargs: Any) -> None:
        super().__init__(cloud=cloud, flavor=flavor, image=image, label=label, **kwargs)


def _said(exc: BaseException) -> str:
    """The SDK's message, with the service's own words when it kept them (``details``)."""
    details = getattr(exc, "details", None)
    text = str(exc)
    return f"{text}: {details}" if details and str(details) not in text else text
