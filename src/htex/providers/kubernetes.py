"""KubernetesProvider: each block is pods whose command runs the pool.

Needs the ``kubernetes`` extra (the kubernetes client).  The calls it makes,
all in one namespace of the core v1 API: ``create``, ``list`` (by the label
``htex-run``) and ``delete`` pods.  Parsl's parameters keep their meaning.
"""

from __future__ import annotations

import json
import os
from typing import Any

from ..errors import ProviderError
from ..launchers import Launcher
from .base import JobState, JobStatus
from .cloud import CloudProvider, require
from .cluster import walltime_seconds

_PHASES = {"Pending": JobState.PENDING, "Running": JobState.RUNNING, "Succeeded": JobState.COMPLETED,
           "Failed": JobState.FAILED, "Unknown": JobState.UNKNOWN}
# A container waiting for one of these will not start by itself (Kubernetes retries forever): HELD,
# which makes the executor cancel the pod and count a failed block.
_STUCK = {"ErrImagePull", "ImagePullBackOff", "InvalidImageName", "CreateContainerConfigError",
          "CreateContainerError", "ErrImageNeverPull"}
# What to check, by HTTP status of the API server's refusal.
_HINTS = {
    401: " (check the user of kube_config's context: its token or certificate)",
    403: " (check the namespace's ResourceQuota and the user's RBAC rights on pods in {namespace})",
    404: " (does namespace {namespace} exist? `kubectl get namespace {namespace}`)",
}


class KubernetesProvider(CloudProvider):
    """Blocks of pods in ``namespace``, each running ``image`` with the boot script as its command.

    Resources are Parsl's: ``init_cpu``/``init_mem`` are the container's
    requests, ``max_cpu``/``max_mem`` its limits (plus ``extra_requests`` and
    ``extra_limits``).  ``persistent_volumes`` is a list of (claim name, mount
    path); ``secret`` names an image pull secret; ``user_id``/``group_id`` and
    ``run_as_non_root`` make the container's security context.  The cluster is
    the current context of ``kube_config`` (default ``~/.kube/config``), else
    the in-cluster configuration.  Pods never restart: a pool that ends ends its
    block.  ``walltime`` is the pod's ``activeDeadlineSeconds``: Kubernetes ends
    it then.
    """

    cloud_name = "Kubernetes"
    halts_itself = False  # a container cannot power off its node; its pod ends with its command

    def __init__(
        self,
        image: str,
        namespace: str = "default",
        nodes_per_block: int = 1,
        init_blocks: int = 4,
        min_blocks: int = 0,
        max_blocks: int = 10,
        max_cpu: float = 2,
        max_mem: str = "500Mi",
        init_cpu: float = 1,
        init_mem: str = "250Mi",
        extra_requests: dict[str, str] | None = None,
        extra_limits: dict[str, str] | None = None,
        parallelism: float = 1,
        worker_init: str = "",
        pod_name: str | None = None,
        user_id: str | None = None,
        group_id: str | None = None,
        run_as_non_root: bool = False,
        secret: str | None = None,
        persistent_volumes: list[tuple[str, str]] | None = None,
        service_account_name: str | None = None,
        annotations: dict[str, str] | None = None,
        walltime: str = "01:00:00",
        launcher: Launcher | None = None,
        cmd_timeout: int = 60,
        status_polling_interval: float = 30.0,
        kube_config: str | None = None,
        context: str | None = None,
        label: str = "kubernetes",
    ) -> None:
        self._kube: Any = require("kubernetes", "kubernetes", "kubernetes", "KubernetesProvider")
        self._urllib3: Any = require("urllib3", "kubernetes", "kubernetes", "KubernetesProvider")
        super().__init__(
            label=label, nodes_per_block=nodes_per_block, init_blocks=init_blocks, min_blocks=min_blocks,
            max_blocks=max_blocks, parallelism=parallelism, walltime=walltime, worker_init=worker_init,
            launcher=launcher, cmd_timeout=cmd_timeout, status_polling_interval=status_polling_interval,
        )
        self.image = image
        self.namespace = namespace
        self.max_cpu, self.max_mem, self.init_cpu, self.init_mem = max_cpu, max_mem, init_cpu, init_mem
        self.extra_requests = dict(extra_requests or {})
        self.extra_limits = dict(extra_limits or {})
        self.pod_name = pod_name
        self.user_id, self.group_id, self.run_as_non_root = user_id, group_id, run_as_non_root
        self.secret = secret
        self.persistent_volumes = list(persistent_volumes or [])
        self.service_account_name = service_account_name
        self.annotations = dict(annotations or {})
        self.kube_config = os.path.expanduser(kube_config) if kube_config else None
        self.context = context
        self._api: Any = None

    # ------------------------------------------------------------------ the API

    def _core(self) -> Any:
        """The core v1 API of the configured cluster, made on first use (so a laptop without one can configure)."""
        if self._api is None:
            config = self._kube.config
            try:
                api_client = config.new_client_from_config(self.kube_config, self.context, persist_config=False)
            except (config.ConfigException, OSError) as exc:
                if self.kube_config:
                    raise ProviderError(f"Kubernetes: cannot use kube_config={self.kube_config!r}: {exc}") from exc
                try:
                    settings = self._kube.client.Configuration()
                    config.load_incluster_config(client_configuration=settings)
                    api_client = self._kube.client.ApiClient(settings)
                except config.ConfigException as exc2:
                    raise ProviderError(f"Kubernetes: no kube config ({exc}) and not in a cluster ({exc2})") from exc2
            self._api = self._kube.client.CoreV1Api(api_client)
        return self._api

    def _call(self, what: str, method: str, **kwargs: Any) -> Any:
        """Call the core API; a refusal is a ProviderError quoting the API server's message."""
        try:
            return getattr(self._core(), method)(_request_timeout=self.cmd_timeout, **kwargs)
        except self._kube.client.ApiException as exc:
            hint = _HINTS.get(exc.status, "").format(namespace=self.namespace)
            raise ProviderError(f"Kubernetes refused to {what}: {exc.status} {_message(exc)}{hint}",
                                status=exc.status) from exc
        except (OSError, self._urllib3.exceptions.HTTPError) as exc:  # the API server cannot be reached
            raise ProviderError(f"Kubernetes: cannot {what}: {exc}") from exc

    def _name_prefix(self, job_name: str) -> str:
        return self.pod_name or job_name

    # ------------------------------------------------------------------ CloudProvider's three

    def _create(self, name: str, script: str) -> str:
        pod = self._kube.client.V1Pod.from_dict(self._pod(name, script))
        self._call(f"create pod {name} in namespace {self.namespace}", "create_namespaced_pod",
                   namespace=self.namespace, body=pod)
        return name

    def _pod(self, name: str, script: str) -> dict[str, Any]:
        container: dict[str, Any] = {
            "name": "htex-pool",
            "image": self.image,
            "command": ["/bin/bash", "-c", script],
            "resources": {
                "requests": {"cpu": str(self.init_cpu), "memory": self.init_mem, **self.extra_requests},
                "limits": {"cpu": str(self.max_cpu), "memory": self.max_mem, **self.extra_limits},
            },
            "volumeMounts": [{"name": claim, "mountPath": path} for claim, path in self.persistent_volumes],
        }
        if self.user_id and self.group_id:
            container["securityContext"] = {"runAsUser": int(self.user_id), "runAsGroup": int(self.group_id),
                                            "runAsNonRoot": self.run_as_non_root}
        spec: dict[str, Any] = {
            "restartPolicy": "Never",
            "activeDeadlineSeconds": walltime_seconds(self.walltime),
            "containers": [container],
            "volumes": [{"name": claim, "persistentVolumeClaim": {"claimName": claim}}
                        for claim, _ in self.persistent_volumes],
        }
        if self.secret:
            spec["imagePullSecrets"] = [{"name": self.secret}]
        if self.service_account_name:
            spec["serviceAccountName"] = self.service_account_name
        metadata = {"name": name, "labels": {"htex-run": self.run_tag, "htex-block": name},
                    "annotations": self.annotations or None}
        return {"apiVersion": "v1", "kind": "Pod", "metadata": metadata, "spec": spec}

    def _states(self, ids: list[str]) -> dict[str, JobStatus]:
        pods = self._call("list pods", "list_namespaced_pod", namespace=self.namespace,
                          label_selector=f"htex-run={self.run_tag}")
        wanted = set(ids)
        return {p.metadata.name: _pod_status(p) for p in pods.items if p.metadata.name in wanted}

    def _delete(self, node: str) -> None:
        try:
            self._call(f"delete pod {node}", "delete_namespaced_pod", name=node, namespace=self.namespace)
        except ProviderError as exc:
            if getattr(exc, "status", None) != 404:  # 404: already gone
                raise


def _pod_status(pod: Any) -> JobStatus:
    """A pod's phase, with the container's own reason when it waits for good or has ended."""
    phase = pod.status.phase if pod.status else "Pending"
    state = _PHASES.get(phase or "Pending", JobState.UNKNOWN)
    for c in (pod.status.container_statuses or []) if pod.status else []:
        waiting, ended = c.state and c.state.waiting, c.state and c.state.terminated
        if waiting and waiting.reason in _STUCK:
            return JobStatus(JobState.HELD, f"pod {pod.metadata.name}: {waiting.reason}: {waiting.message or ''}")
        if ended:
            said = f"{ended.reason or ''} {ended.message or ''}".strip()
            return JobStatus(state, f"pod {pod.metadata.name} exited with {ended.exit_code}: {said}",
                             exit_code=ended.exit_code)
    return JobStatus(state, f"pod {pod.metadata.name} is {phase}")


def _message(exc: Any) -> str:
    """The API server's own message (its Status object), else the HTTP reason."""
    try:
        return str(json.loads(exc.body)["message"])
    except (TypeError, ValueError, KeyError):
        return str(exc.reason)
