"""GoogleCloudProvider: each block is Compute Engine instances that boot the pool from a startup script.

Needs the ``gcp`` extra (google-cloud-compute).  The calls it makes, all on
Compute Engine's v1 REST API: ``images.getFromFamily`` (once: the boot disk's
image), ``instances.insert`` (then ``zoneOperations.wait`` until it is done),
``instances.list`` (status) and ``instances.delete`` (cancel).
"""

from __future__ import annotations

import os
import time
from typing import Any

from ..errors import ProviderError
from ..launchers import Launcher
from .base import JobState, JobStatus
from .cloud import CloudProvider, require

# Compute Engine's instance states -> ours.  A stopped instance ran its script to the end (or was
# stopped by hand): its block is over.
_STATES = {
    "PROVISIONING": JobState.PENDING, "STAGING": JobState.PENDING, "PENDING": JobState.PENDING,
    "RUNNING": JobState.RUNNING, "REPAIRING": JobState.RUNNING,
    "STOPPING": JobState.COMPLETED, "STOPPED": JobState.COMPLETED, "TERMINATED": JobState.COMPLETED,
    "SUSPENDING": JobState.COMPLETED, "SUSPENDED": JobState.COMPLETED,
}
_SCOPES = ["https://www.googleapis.com/auth/compute"]
# What to check, by HTTP status of Google's refusal.
_HINTS = {
    401: " (check key_file: a JSON key of a service account of the project, not revoked)",
    403: " (check the service account's roles, e.g. Compute Instance Admin, and the project's quotas)",
    404: " (check project_id, zone, os_project and os_family)",
}


class GoogleCloudProvider(CloudProvider):
    """Blocks of Compute Engine instances in one zone of ``project_id``.

    ``key_file`` is a service account's JSON key (None: the application default
    credentials); ``os_project``/``os_family`` name the boot image's family
    (the newest image of it is used); ``machine_type`` (Parsl's ``instance_type``
    is accepted too).  Each instance gets the labels ``htex-run`` and
    ``htex-block``, and the boot script as its ``startup-script`` metadata.
    ``api_endpoint`` points the client at another endpoint (a private one, or a
    test's stand-in).  An instance powers itself off when its pool ends and
    after ``walltime`` (unless ``linger``): it is then TERMINATED, which ends its
    block, and deleted.
    """

    cloud_name = "Google Cloud"

    def __init__(
        self,
        # Parsl's positional order first, so that a Parsl configuration's call works unchanged.
        project_id: str,
        key_file: str | None = None,
        region: str = "us-central1",
        os_project: str = "debian-cloud",
        os_family: str = "debian-12",
        google_version: str = "v1",
        instance_type: str | None = None,
        init_blocks: int = 1,
        min_blocks: int = 0,
        max_blocks: int = 10,
        launcher: Launcher | None = None,
        parallelism: float = 1,
        *,
        zone: str | None = None,
        machine_type: str = "e2-standard-2",
        network: str = "global/networks/default",
        external_ip: bool = True,
        nodes_per_block: int = 1,
        walltime: str = "01:00:00",
        worker_init: str = "",
        cmd_timeout: int = 300,
        status_polling_interval: float = 30.0,
        linger: bool = False,
        api_endpoint: str | None = None,
        label: str = "google_cloud",
    ) -> None:
        self._compute: Any = require("google.cloud.compute_v1", "gcp", "google-cloud-compute", "GoogleCloudProvider")
        super().__init__(
            label=label, nodes_per_block=nodes_per_block, init_blocks=init_blocks, min_blocks=min_blocks,
            max_blocks=max_blocks, parallelism=parallelism, walltime=walltime, worker_init=worker_init,
            launcher=launcher, cmd_timeout=cmd_timeout, status_polling_interval=status_polling_interval,
        )
        self.linger = linger
        self.project_id = project_id
        self.key_file = os.path.expanduser(key_file) if key_file else None
        self.region = region
        self.zone = zone or f"{region}-a"
        self.os_project = os_project
        self.os_family = os_family
        self.machine_type = instance_type or machine_type
        self.network = network
        self.external_ip = external_ip
        self.api_endpoint = api_endpoint
        self.google_version = google_version  # accepted for Parsl compatibility: the client speaks v1
        self._image: str | None = None
        self._clients: dict[str, Any] = {}

    # ------------------------------------------------------------------ the API

    def _client(self, kind: str) -> Any:
        """One client per service (InstancesClient, ImagesClient), made on first use."""
        if kind not in self._clients:
            options = {"api_endpoint": self.api_endpoint} if self.api_endpoint else None
            self._clients[kind] = getattr(self._compute, kind)(credentials=self._credentials(), client_options=options)
        return self._clients[kind]

    def _credentials(self) -> Any:
        try:
            if self.key_file:
                from google.oauth2 import service_account

                return service_account.Credentials.from_service_account_file(  # type: ignore[no-untyped-call]
                    self.key_file, scopes=_SCOPES)
            import google.auth

            return google.auth.default(scopes=_SCOPES)[0]
        except (OSError, ValueError, KeyError) as exc:
            raise ProviderError(f"Google Cloud: cannot load credentials from key_file={self.key_file!r}: {exc}") from exc
        except Exception as exc:  # google.auth.exceptions.DefaultCredentialsError
            raise ProviderError(f"Google Cloud: no credentials: {exc}; give key_file") from exc

    def _call(self, what: str, fn: Any, *args: Any, **kwargs: Any) -> Any:
        """Call the API; a refusal (HTTP error, bad credentials, a failed operation) is a ProviderError."""
        from google.api_core import exceptions as api_errors
        from google.auth import exceptions as auth_errors

        try:
            return fn(*args, **kwargs)
        except (api_errors.GoogleAPIError, auth_errors.GoogleAuthError) as exc:
            code = 401 if isinstance(exc, auth_errors.GoogleAuthError) else getattr(exc, "code", None)
            hint = _HINTS.get(code, "") if isinstance(code, int) else ""
            raise ProviderError(f"Google Cloud refused to {what}: {_said(exc)}{hint}") from exc
        except OSError as exc:  # requests' ConnectionError, Timeout: no answer at all
            raise ProviderError(f"Google Cloud: cannot {what}: {exc}") from exc

    def _image_link(self) -> str:
        if self._image is None:
            image = self._call(f"find the newest image of family {self.os_family!r} in project {self.os_project!r}",
                               self._client("ImagesClient").get_from_family,
                               project=self.os_project, family=self.os_family)
            self._image = str(image.self_link)
        return self._image

    # ------------------------------------------------------------------ CloudProvider's three

    def _create(self, name: str, script: str) -> str:
        c = self._compute
        access = [c.AccessConfig(name="External NAT", type_="ONE_TO_ONE_NAT")] if self.external_ip else []
        instance = c.Instance(
            name=name,
            machine_type=f"zones/{self.zone}/machineTypes/{self.machine_type}",
            disks=[c.AttachedDisk(boot=True, auto_delete=True,
                                  initialize_params=c.AttachedDiskInitializeParams(source_image=self._image_link()))],
            network_interfaces=[c.NetworkInterface(network=self.network, access_configs=access)],
            metadata=c.Metadata(items=[c.Items(key="startup-script", value=script)]),
            labels={"htex-run": self.run_tag, "htex-block": name},
        )
        instances = self._client("InstancesClient")
        op = self._call(f"create instance {name}", instances.insert,
                        project=self.project_id, zone=self.zone, instance_resource=instance, timeout=self.cmd_timeout)
        try:
            self._wait(op.name, f"create instance {name}")
        except ProviderError:
            self._delete_quietly([name])  # a failed insert may still have left the instance behind
            raise
        return name

    def _wait(self, operation: str, what: str) -> None:
        """Wait for a zone operation to end; its errors are a ProviderError quoting Google.

        ``zoneOperations.wait`` answers when the operation is done or after a while (up to two minutes
        on Google's side), so asking again is no busy loop.  (Our own client: the operation object the
        library returns polls the default endpoint, whatever ``api_endpoint`` says.)
        """
        deadline = time.monotonic() + self.cmd_timeout
        while True:
            op = self._call(what, self._client("ZoneOperationsClient").wait, project=self.project_id, zone=self.zone,
                            operation=operation, timeout=self.cmd_timeout)
            if op.status == self._compute.Operation.Status.DONE:
                break
            if time.monotonic() > deadline:
                raise ProviderError(f"Google Cloud did not {what} within cmd_timeout={self.cmd_timeout} s "
                                    f"(operation {operation} is {op.status})")
        errors = [f"{e.code}: {e.message}" for e in op.error.errors] if op.error else []
        if errors or op.http_error_status_code:
            raise ProviderError(f"Google Cloud refused to {what}: {op.http_error_status_code} "
                                f"{op.http_error_message} {'; '.join(errors)}".rstrip())

    def _states(self, ids: list[str]) -> dict[str, JobStatus]:
        query = self._compute.ListInstancesRequest(project=self.project_id, zone=self.zone,
                                                   filter=f"labels.htex-run={self.run_tag}")
        listed = self._call("list instances", self._client("InstancesClient").list, request=query,
                            timeout=self.cmd_timeout)
        wanted = set(ids)
        found = {}
        for inst in self._call("list instances", list, listed):
            if inst.name in wanted:
                state = _STATES.get(inst.status, JobState.UNKNOWN)
                found[inst.name] = JobStatus(state, f"instance {inst.name} is {inst.status}")
        return found

    def _delete(self, node: str) -> None:
        from google.api_core import exceptions as api_errors

        try:
            self._client("InstancesClient").delete(project=self.project_id, zone=self.zone, instance=node,
                                                   timeout=self.cmd_timeout)
        except api_errors.NotFound:
            return  # already gone
        except Exception as exc:
            raise ProviderError(f"Google Cloud refused to delete instance {node}: {_said(exc)}") from exc


def _said(exc: BaseException) -> str:
    """The error and each of Google's own messages under it (a failed operation keeps them in ``errors``)."""
    details = []
    for e in getattr(exc, "errors", None) or []:
        message = e.get("message") if isinstance(e, dict) else getattr(e, "message", None)
        if message and message not in str(exc):
            details.append(str(message))
    return "; ".join([str(exc), *details])
