"""A stand-in for Google Compute Engine's v1 REST API and Google's OAuth token endpoint.

Answers the calls GoogleCloudProvider makes, as documented for Compute Engine
(cloud.google.com/compute/docs/reference/rest/v1):

* ``POST /token``: a service account's signed JWT (RS256, checked against the
  accounts made with ``service_account``) for an access token; a bad signature
  is Google's ``invalid_grant``.  A self-signed JWT is taken as a bearer token
  too (google-auth sends one to Compute Engine, as Google accepts);
* ``GET  .../projects/{p}/global/images/family/{f}``;
* ``POST .../projects/{p}/zones/{z}/instances``: an operation; the instance is
  PROVISIONING, then booted through the hypervisor (its ``startup-script``
  metadata item) and RUNNING; over ``quota`` instances the operation ends in
  Google's QUOTA_EXCEEDED error and no instance is made;
* ``GET .../instances`` (with ``filter=labels.K=V``), ``GET`` and ``DELETE
  .../instances/{name}``; ``GET .../zones/{z}/operations/{op}`` and ``POST
  .../operations/{op}/wait``.

Every API call needs a token this server issued (else 401, Google's words).
An instance whose script asked the OS to shut down is TERMINATED, as on GCE.
"""

from __future__ import annotations

import asyncio
import base64
import itertools
import json
import secrets
from typing import Any

from aiohttp import web
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa

from .base import Emulator, json_response
from hypervisor import Hypervisor

_BASE = "/compute/v1/projects/{project}"
# How long zoneOperations.wait holds a request (Google: up to 2 minutes).
WAIT_SECONDS = 10.0
_IMAGES = {("debian-cloud", "debian-12"): "debian-12-bookworm-v20261101"}


def _b64(data: str) -> bytes:
    return base64.urlsafe_b64decode(data + "=" * (-len(data) % 4))


def _error(code: int, message: str, reason: str) -> web.Response:
    status = {400: "INVALID_ARGUMENT", 401: "UNAUTHENTICATED", 403: "PERMISSION_DENIED", 404: "NOT_FOUND"}[code]
    body = {"error": {"code": code, "message": message, "status": status,
                      "errors": [{"message": message, "domain": "global", "reason": reason}]}}
    return json_response(body, code)


class ComputeEngine(Emulator):
    def __init__(self, hypervisor: Hypervisor | None, quota: int = 100) -> None:
        self.quota = quota
        self.instances: dict[str, dict[str, Any]] = {}  # name -> the Instance resource
        self.operations: dict[str, dict[str, Any]] = {}
        self.accounts: dict[str, Any] = {}  # client_email -> public key
        self.tokens: set[str] = set()
        self._ids = itertools.count(1000)
        super().__init__(hypervisor)

    def routes(self) -> list[web.RouteDef]:
        zone = _BASE + "/zones/{zone}"
        return [
            web.post("/token", self._token),
            web.get(_BASE + "/global/images/family/{family}", self._image),
            web.post(zone + "/instances", self._insert),
            web.get(zone + "/instances", self._list),
            web.get(zone + "/instances/{name}", self._get),
            web.delete(zone + "/instances/{name}", self._delete),
            web.get(zone + "/operations/{op}", self._operation),
            web.post(zone + "/operations/{op}/wait", self._wait),
        ]

    # ------------------------------------------------------------------ for the tests

    def service_account(self, path: str, project: str, known: bool = True) -> None:
        """Write a service account's JSON key file; ``known=False``: a key this "Google" never issued."""
        key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        email = f"htex-{secrets.token_hex(3)}@{project}.iam.gserviceaccount.com"
        if known:
            self.accounts[email] = key.public_key()
        pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
        info = {"type": "service_account", "project_id": project, "private_key_id": secrets.token_hex(8),
                "private_key": pem.decode(), "client_email": email, "client_id": "1", "token_uri": f"{self.url}/token"}
        with open(path, "w") as f:
            json.dump(info, f)

    def names(self) -> set[str]:
        with self.lock:
            return set(self.instances)

    # ------------------------------------------------------------------ OAuth

    async def _token(self, request: web.Request) -> web.Response:
        form = await request.post()
        if not self._signed(str(form.get("assertion", ""))):
            return json_response({"error": "invalid_grant", "error_description": "Invalid JWT Signature."}, 400)
        token = secrets.token_urlsafe(16)
        self.tokens.add(token)
        return json_response({"access_token": token, "expires_in": 3600, "token_type": "Bearer"})

    def _signed(self, jwt: str) -> bool:
        """Is ``jwt`` signed (RS256) by the key of a service account this server made?"""
        try:
            header, payload, signature = jwt.split(".")
            public = self.accounts[json.loads(_b64(payload))["iss"]]
            public.verify(_b64(signature), f"{header}.{payload}".encode(), padding.PKCS1v15(), hashes.SHA256())
            return True
        except Exception:
            return False

    def _unauthenticated(self, request: web.Request) -> web.Response | None:
        # Google takes an access token from /token, or a service account's self-signed JWT (what
        # google-auth sends to Compute Engine's client).
        bearer = request.headers.get("Authorization", "").removeprefix("Bearer ")
        if bearer in self.tokens or self._signed(bearer):
            return None
        return _error(401, "Request had invalid authentication credentials. Expected OAuth 2 access token, "
                      "login cookie or other valid authentication credential.", "authError")

    # ------------------------------------------------------------------ Compute

    async def _image(self, request: web.Request) -> web.Response:
        if (refused := self._unauthenticated(request)) is not None:
            return refused
        project, family = request.match_info["project"], request.match_info["family"]
        name = _IMAGES.get((project, family))
        if name is None:
            return _error(404, f"The resource 'projects/{project}/global/images/family/{family}' was not found", "notFound")
        link = f"{self.url}/compute/v1/projects/{project}/global/images/{name}"
        return json_response({"kind": "compute#image", "name": name, "family": family, "selfLink": link, "status": "READY"})

    def _new_operation(self, request: web.Request, kind: str, target: str, error: dict[str, Any] | None = None) -> dict[str, Any]:
        project, zone = request.match_info["project"], request.match_info["zone"]
        name = f"operation-{next(self._ids)}-{secrets.token_hex(4)}"
        op: dict[str, Any] = {
            "kind": "compute#operation", "id": str(next(self._ids)), "name": name, "operationType": kind,
            "zone": zone, "status": "DONE" if error else "RUNNING", "progress": 0,
            "targetLink": f"{self.url}{_BASE.format(project=project)}/zones/{zone}/instances/{target}",
            "selfLink": f"{self.url}{_BASE.format(project=project)}/zones/{zone}/operations/{name}",
        }
        if error:
            op.update(error=error, httpErrorStatusCode=403, httpErrorMessage="FORBIDDEN")
        with self.lock:
            self.operations[name] = op
        return op

    async def _insert(self, request: web.Request) -> web.Response:
        if (refused := self._unauthenticated(request)) is not None:
            return refused
        body = await request.json()
        name = body["name"]
        with self.lock:
            if name in self.instances:
                return _error(400, f"The resource 'projects/{request.match_info['project']}/zones/"
                              f"{request.match_info['zone']}/instances/{name}' already exists", "alreadyExists")
            over = len(self.instances) >= self.quota
        if over:
            region = request.match_info["zone"].rsplit("-", 1)[0]
            message = f"Quota 'INSTANCES' exceeded.  Limit: {float(self.quota)} in region {region}."
            error = {"errors": [{"code": "QUOTA_EXCEEDED", "message": message}]}
            return json_response(self._new_operation(request, "insert", name, error))
        items = {i["key"]: i.get("value", "") for i in body.get("metadata", {}).get("items", [])}
        instance = {**body, "kind": "compute#instance", "id": str(next(self._ids)), "status": "PROVISIONING",
                    "zone": request.match_info["zone"]}
        with self.lock:
            self.instances[name] = instance
        op = self._new_operation(request, "insert", name)
        self.background(self._provision(instance, op, items.get("startup-script", "")))
        return json_response(op)

    async def _provision(self, instance: dict[str, Any], op: dict[str, Any], script: str) -> None:
        """What GCE does after answering an insert: boot the machine, then end the operation."""
        await self.blocking(self.boot, instance["name"], script)
        with self.lock:
            instance["status"] = "RUNNING"
            op.update(status="DONE", progress=100)

    def _current(self, instance: dict[str, Any]) -> dict[str, Any]:
        """An instance whose own OS shut down is TERMINATED (GCE keeps it, stopped)."""
        name = instance["name"]
        if instance["status"] == "RUNNING" and self.hypervisor is not None and name in self.hypervisor.halted():
            instance["status"] = "TERMINATED"
        return instance

    async def _list(self, request: web.Request) -> web.Response:
        if (refused := self._unauthenticated(request)) is not None:
            return refused
        wanted = request.query.get("filter", "")
        key, _, value = wanted.removeprefix("labels.").partition("=")
        with self.lock:
            items = [self._current(i) for i in self.instances.values()
                     if not wanted or i.get("labels", {}).get(key.strip()) == value.strip()]
        return json_response({"kind": "compute#instanceList", "items": items})

    async def _get(self, request: web.Request) -> web.Response:
        if (refused := self._unauthenticated(request)) is not None:
            return refused
        with self.lock:
            instance = self.instances.get(request.match_info["name"])
        if instance is None:
            return self._not_found(request)
        return json_response(self._current(instance))

    def _not_found(self, request: web.Request) -> web.Response:
        m = request.match_info
        return _error(404, f"The resource 'projects/{m['project']}/zones/{m['zone']}/instances/{m['name']}' was not found",
                      "notFound")

    async def _delete(self, request: web.Request) -> web.Response:
        if (refused := self._unauthenticated(request)) is not None:
            return refused
        name = request.match_info["name"]
        with self.lock:
            instance = self.instances.get(name)
            if instance is not None:
                instance["status"] = "STOPPING"
        if instance is None:
            return self._not_found(request)
        op = self._new_operation(request, "delete", name)
        await self.blocking(self.power_off, name)
        with self.lock:
            self.instances.pop(name, None)
            op.update(status="DONE", progress=100)
        return json_response(op)

    async def _operation(self, request: web.Request) -> web.Response:
        if (refused := self._unauthenticated(request)) is not None:
            return refused
        with self.lock:
            op = self.operations.get(request.match_info["op"])
        if op is None:
            return _error(404, f"The resource 'operation {request.match_info['op']}' was not found", "notFound")
        return json_response(op)

    async def _wait(self, request: web.Request) -> web.Response:
        """zoneOperations.wait: answer when the operation is done, or after WAIT_SECONDS as it is."""
        if (refused := self._unauthenticated(request)) is not None:
            return refused
        with self.lock:
            op = self.operations.get(request.match_info["op"])
        if op is None:
            return _error(404, f"The resource 'operation {request.match_info['op']}' was not found", "notFound")
        deadline = self._loop.time() + WAIT_SECONDS
        while op["status"] != "DONE" and self._loop.time() < deadline:
            await asyncio.sleep(0.05)  # the server's own wait: Google holds the request up to 2 minutes
        return json_response(op)
