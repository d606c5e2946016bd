"""A stand-in for a Kubernetes API server (core v1 pods) with a kubelet that boots pods through the hypervisor.

Answers the calls KubernetesProvider makes, as documented in the Kubernetes
API reference (Pod v1): ``POST``/``GET`` ``/api/v1/namespaces/{ns}/pods``
(``labelSelector=k=v``), ``GET``/``DELETE`` ``.../pods/{name}``.  Errors are
Status objects in the API server's words: 401 without the right bearer token,
404 for an unknown namespace or pod, 403 over the namespace's pod quota.

Its "kubelet": a pod whose image is in ``images`` is booted (its command, run
by the hypervisor, with the exit code kept) and Running; when the command
ends the pod is Succeeded or Failed.  Any other image is never pulled: the pod
stays Pending with ``ErrImagePull``, as a cluster reports it.
"""

from __future__ import annotations

import datetime
import json
import os
import secrets
import shlex
from typing import Any

from aiohttp import web

from .base import Emulator, json_response
from hypervisor import Hypervisor


def _status(code: int, reason: str, message: str) -> web.Response:
    body = {"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure", "message": message,
            "reason": reason, "code": code}
    return json_response(body, code)


def _now() -> str:
    return datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


class KubeAPI(Emulator):
    def __init__(self, hypervisor: Hypervisor | None, namespaces: tuple[str, ...] = ("default",),
                 images: tuple[str, ...] = ("python:3.11",), pod_quota: int = 100) -> None:
        self.token = secrets.token_urlsafe(16)
        self.namespaces = set(namespaces)
        self.images = set(images)
        self.pod_quota = pod_quota
        self.pods: dict[tuple[str, str], dict[str, Any]] = {}
        super().__init__(hypervisor)

    def routes(self) -> list[web.RouteDef]:
        pods = "/api/v1/namespaces/{namespace}/pods"
        return [
            web.post(pods, self._create),
            web.get(pods, self._list),
            web.get(pods + "/{name}", self._read),
            web.delete(pods + "/{name}", self._delete),
        ]

    # ------------------------------------------------------------------ for the tests

    def kubeconfig(self, path: str, token: str | None = None) -> None:
        """Write a kubeconfig for this server (JSON is YAML); ``token``: another bearer token than ours."""
        config = {
            "apiVersion": "v1", "kind": "Config", "current-context": "stand-in",
            "clusters": [{"name": "stand-in", "cluster": {"server": self.url}}],
            "users": [{"name": "htex", "user": {"token": token or self.token}}],
            "contexts": [{"name": "stand-in", "context": {"cluster": "stand-in", "user": "htex"}}],
        }
        with open(path, "w") as f:
            json.dump(config, f)

    def names(self) -> set[str]:
        with self.lock:
            return {name for _, name in self.pods}

    # ------------------------------------------------------------------ the API

    def _refused(self, request: web.Request) -> web.Response | None:
        if request.headers.get("Authorization") != f"Bearer {self.token}":
            return _status(401, "Unauthorized", "Unauthorized")
        ns = request.match_info["namespace"]
        if ns not in self.namespaces:
            return _status(404, "NotFound", f'namespaces "{ns}" not found')
        return None

    async def _create(self, request: web.Request) -> web.Response:
        if (refused := self._refused(request)) is not None:
            return refused
        ns, pod = request.match_info["namespace"], await request.json()
        name = pod["metadata"]["name"]
        with self.lock:
            if (ns, name) in self.pods:
                return _status(409, "AlreadyExists", f'pods "{name}" already exists')
            used = sum(1 for n, _ in self.pods if n == ns)
            if used >= self.pod_quota:
                return _status(403, "Forbidden", f'pods "{name}" is forbidden: exceeded quota: pod-quota, requested: '
                               f"pods=1, used: pods={used}, limited: pods={self.pod_quota}")
            pod["metadata"].update(namespace=ns, uid=secrets.token_hex(16), creationTimestamp=_now())
            pod["status"] = {"phase": "Pending"}
            self.pods[ns, name] = pod
        container = pod["spec"]["containers"][0]
        if container["image"] in self.images:
            self.background(self._kubelet_start(pod, container["command"]))
        else:
            message = (f'rpc error: code = NotFound desc = failed to pull and unpack image "{container["image"]}": '
                       "not found")
            with self.lock:
                pod["status"]["containerStatuses"] = [{"name": container["name"], "ready": False, "restartCount": 0,
                                                       "image": container["image"], "imageID": "",
                                                       "state": {"waiting": {"reason": "ErrImagePull",
                                                                             "message": message}}}]
        return json_response(pod, 201)

    async def _kubelet_start(self, pod: dict[str, Any], command: list[str]) -> None:
        """Boot the pod's command on a host of its own, keeping its exit code as a kubelet does."""
        name = pod["metadata"]["name"]
        script = f"#!/bin/sh\n{shlex.join(command)}\necho $? > \"$(dirname \"$0\")/exit-code\"\n"
        await self.blocking(self.boot, name, script)
        with self.lock:
            if pod["status"]["phase"] == "Pending":
                pod["status"].update(phase="Running", startTime=_now())

    def _current(self, pod: dict[str, Any]) -> dict[str, Any]:
        """A pod whose command ended is Succeeded or Failed, with its container's exit code."""
        name = pod["metadata"]["name"]
        if pod["status"]["phase"] != "Running" or self.hypervisor is None:
            return pod
        path = os.path.join(self.hypervisor.boot_dir, name, "exit-code")
        if not os.path.exists(path):
            return pod
        with open(path) as f:
            code = int(f.read().strip() or 1)
        pod["status"]["phase"] = "Succeeded" if code == 0 else "Failed"
        container = pod["spec"]["containers"][0]
        pod["status"]["containerStatuses"] = [{
            "name": container["name"], "image": container["image"], "imageID": f"{container['image']}@sha256:0",
            "ready": False, "restartCount": 0,
            "state": {"terminated": {"exitCode": code, "reason": "Completed" if code == 0 else "Error"}}}]
        return pod

    async def _list(self, request: web.Request) -> web.Response:
        if (refused := self._refused(request)) is not None:
            return refused
        ns = request.match_info["namespace"]
        key, _, value = request.query.get("labelSelector", "").partition("=")
        with self.lock:
            items = [self._current(p) for (n, _), p in self.pods.items()
                     if n == ns and (not key or p["metadata"].get("labels", {}).get(key) == value)]
        return json_response({"kind": "PodList", "apiVersion": "v1", "metadata": {"resourceVersion": "1"},
                              "items": items})

    async def _read(self, request: web.Request) -> web.Response:
        if (refused := self._refused(request)) is not None:
            return refused
        with self.lock:
            pod = self.pods.get((request.match_info["namespace"], request.match_info["name"]))
            if pod is not None:
                return json_response(self._current(pod))
        return _status(404, "NotFound", f'pods "{request.match_info["name"]}" not found')

    async def _delete(self, request: web.Request) -> web.Response:
        if (refused := self._refused(request)) is not None:
            return refused
        key = (request.match_info["namespace"], request.match_info["name"])
        with self.lock:
            pod = self.pods.get(key)
        if pod is None:
            return _status(404, "NotFound", f'pods "{key[1]}" not found')
        await self.blocking(self.power_off, key[1])
        with self.lock:
            self.pods.pop(key, None)
            pod["metadata"]["deletionTimestamp"] = _now()
        return json_response(pod)
