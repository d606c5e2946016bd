"""A stand-in for an OpenStack cloud: Keystone v3, Nova v2.1, Glance v2 and Neutron v2.0, the calls htex makes.

As documented in the OpenStack API references (docs.openstack.org/api-ref):

* Keystone: version discovery at ``/identity``, ``POST /identity/v3/auth/tokens``
  (password method; a wrong password is Keystone's 401) answering a token in
  ``X-Subject-Token`` and the service catalog in the body;
* Nova under ``/compute/v2.1``: ``flavors`` (``/{id}``, ``/detail``),
  ``servers`` (create: 202, BUILD, then booted through the hypervisor with its
  base64 user-data and ACTIVE; ``/detail``; ``/{id}``; delete: 204); over
  ``quota`` servers, Nova's 403; a flavor of ``no_host_flavors`` is accepted
  but its server goes to ERROR with Nova's "No valid host" fault;
* Glance ``/image/v2/images`` and Neutron ``/network/v2.0/networks``: by id,
  or listed by ``name``.

Every service call needs a token this Keystone issued (``X-Auth-Token``).
"""

from __future__ import annotations

import base64
import datetime
import json
import secrets
import uuid
from typing import Any

from aiohttp import web

from .base import Emulator, json_response
from hypervisor import Hypervisor

USER, PASSWORD, PROJECT = "demo", "s3cret", "demo"


def _when(minutes: int = 0) -> str:
    t = datetime.datetime.now(datetime.UTC) + datetime.timedelta(minutes=minutes)
    return t.strftime("%Y-%m-%dT%H:%M:%S.000000Z")


class OpenStackCloud(Emulator):
    def __init__(self, hypervisor: Hypervisor | None, quota: int = 100) -> None:
        self.quota = quota
        self.tokens: set[str] = set()
        self.flavors = {str(uuid.uuid4()): {"name": n, "vcpus": c, "ram": c * 2048, "disk": 20}
                        for n, c in (("m1.small", 1), ("m3.small", 2), ("m1.giant", 512))}
        self.no_host_flavors = {"m1.giant"}
        self.images = {str(uuid.uuid4()): {"name": n, "status": "active", "visibility": "public"}
                       for n in ("ubuntu-22.04", "Featured-Ubuntu24")}
        self.networks = {str(uuid.uuid4()): {"name": "htex-net", "status": "ACTIVE", "admin_state_up": True}}
        self.servers: dict[str, dict[str, Any]] = {}
        super().__init__(hypervisor)

    def routes(self) -> list[web.RouteDef]:
        nova = "/compute/v2.1"
        return [
            web.get("/identity", self._identity_versions),
            web.get("/identity/", self._identity_versions),
            web.get("/identity/v3", self._identity_v3),
            web.get("/identity/v3/", self._identity_v3),
            web.post("/identity/v3/auth/tokens", self._token),
            web.get("/compute", self._compute_versions),
            web.get("/compute/", self._compute_versions),
            web.get(nova, self._compute_version),
            web.get(nova + "/", self._compute_version),
            web.get(nova + "/flavors/detail", self._flavors),
            web.get(nova + "/flavors", self._flavors),
            web.get(nova + "/flavors/{id}", self._flavor),
            web.post(nova + "/servers", self._create),
            web.get(nova + "/servers/detail", self._servers),
            web.get(nova + "/servers/{id}", self._server),
            web.delete(nova + "/servers/{id}", self._delete),
            web.get("/image", self._image_versions),
            web.get("/image/", self._image_versions),
            web.get("/image/v2/images", self._images),
            web.get("/image/v2/images/{id}", self._image),
            web.get("/network", self._network_versions),
            web.get("/network/", self._network_versions),
            web.get("/network/v2.0/networks", self._networks),
            web.get("/network/v2.0/networks/{id}", self._network),
        ]

    # ------------------------------------------------------------------ for the tests

    def clouds_yaml(self, path: str, password: str = PASSWORD, name: str = "standin") -> None:
        """Write a clouds.yaml (JSON is YAML) with one cloud, ``name``, at this Keystone."""
        auth = {"auth_url": f"{self.url}/identity", "username": USER, "password": password, "project_name": PROJECT,
                "user_domain_name": "Default", "project_domain_name": "Default"}
        with open(path, "w") as f:
            json.dump({"clouds": {name: {"auth": auth, "region_name": "RegionOne", "identity_api_version": 3}}}, f)

    def names(self) -> set[str]:
        """The ids of the servers (the hypervisor's ids too)."""
        with self.lock:
            return set(self.servers)

    # ------------------------------------------------------------------ Keystone

    def _version(self, path: str, vid: str, **extra: Any) -> dict[str, Any]:
        return {"id": vid, "status": "CURRENT", "updated": "2026-01-01T00:00:00Z",
                "links": [{"rel": "self", "href": f"{self.url}{path}"}], **extra}

    async def _identity_versions(self, request: web.Request) -> web.Response:
        v3 = self._version("/identity/v3/", "v3.14", media_types=[
            {"base": "application/json", "type": "application/vnd.openstack.identity-v3+json"}])
        v3["status"] = "stable"
        return json_response({"versions": {"values": [v3]}}, 300)

    async def _identity_v3(self, request: web.Request) -> web.Response:
        v3 = self._version("/identity/v3/", "v3.14")
        v3["status"] = "stable"
        return json_response({"version": v3})

    async def _token(self, request: web.Request) -> web.Response:
        body = await request.json()
        user = body["auth"]["identity"].get("password", {}).get("user", {})
        if user.get("name") != USER or user.get("password") != PASSWORD:
            return json_response({"error": {"code": 401, "title": "Unauthorized",
                                            "message": "The request you have made requires authentication."}}, 401)
        token = secrets.token_hex(16)
        self.tokens.add(token)
        catalog = [
            self._service("compute", "nova", "/compute/v2.1"),
            self._service("image", "glance", "/image"),
            self._service("network", "neutron", "/network"),
            self._service("identity", "keystone", "/identity"),
        ]
        domain = {"id": "default", "name": "Default"}
        out = {"token": {
            "methods": ["password"], "expires_at": _when(60), "issued_at": _when(),
            "user": {"id": "u-demo", "name": USER, "domain": domain, "password_expires_at": None},
            "project": {"id": "p-demo", "name": PROJECT, "domain": domain},
            "roles": [{"id": "r-member", "name": "member"}], "catalog": catalog, "is_domain": False,
        }}
        return json_response(out, 201, headers={"X-Subject-Token": token})

    def _service(self, kind: str, name: str, path: str) -> dict[str, Any]:
        endpoints = [{"id": secrets.token_hex(8), "interface": i, "region": "RegionOne", "region_id": "RegionOne",
                      "url": f"{self.url}{path}"} for i in ("public", "internal")]
        return {"id": secrets.token_hex(8), "type": kind, "name": name, "endpoints": endpoints}

    def _refused(self, request: web.Request) -> web.Response | None:
        if request.headers.get("X-Auth-Token") in self.tokens:
            return None
        return json_response({"error": {"code": 401, "title": "Unauthorized",
                                        "message": "The request you have made requires authentication."}}, 401)

    # ------------------------------------------------------------------ Nova

    async def _compute_versions(self, request: web.Request) -> web.Response:
        return json_response({"versions": [self._version("/compute/v2.1/", "v2.1", version="2.96", min_version="2.1")]})

    async def _compute_version(self, request: web.Request) -> web.Response:
        return json_response({"version": self._version("/compute/v2.1/", "v2.1", version="2.96", min_version="2.1")})

    def _flavor_body(self, fid: str) -> dict[str, Any]:
        return {"id": fid, **self.flavors[fid], "links": [], "OS-FLV-EXT-DATA:ephemeral": 0, "swap": 0,
                "rxtx_factor": 1.0, "os-flavor-access:is_public": True, "extra_specs": {}}

    async def _flavors(self, request: web.Request) -> web.Response:
        if (refused := self._refused(request)) is not None:
            return refused
        return json_response({"flavors": [self._flavor_body(f) for f in self.flavors]})

    async def _flavor(self, request: web.Request) -> web.Response:
        if (refused := self._refused(request)) is not None:
            return refused
        fid = request.match_info["id"]
        if fid not in self.flavors:
            return json_response({"itemNotFound": {"code": 404, "message": f"Flavor {fid} could not be found."}}, 404)
        return json_response({"flavor": self._flavor_body(fid)})

    async def _create(self, request: web.Request) -> web.Response:
        if (refused := self._refused(request)) is not None:
            return refused
        body = (await request.json())["server"]
        with self.lock:
            used = len(self.servers)
            if used >= self.quota:
                message = f"Quota exceeded for instances: Requested 1, but already used {used} of {self.quota} instances"
                return json_response({"forbidden": {"code": 403, "message": message}}, 403)
            sid = str(uuid.uuid4())
            flavor = self.flavors.get(body["flavorRef"])
            if flavor is None:
                message = f"Flavor {body['flavorRef']} could not be found."
                return json_response({"badRequest": {"code": 400, "message": message}}, 400)
            self.servers[sid] = {
                "id": sid, "name": body["name"], "status": "BUILD", "metadata": body.get("metadata", {}),
                "flavor": {"original_name": flavor["name"]}, "image": {"id": body.get("imageRef")},
                "user_data": body.get("user_data", ""), "key_name": body.get("key_name"),
                "networks": body.get("networks"), "created": _when(), "updated": _when(), "addresses": {},
                "tenant_id": "p-demo", "user_id": "u-demo", "links": [],
            }
            server = self.servers[sid]
        if flavor["name"] in self.no_host_flavors:
            with self.lock:
                server.update(status="ERROR", fault={"code": 500, "created": _when(), "message":
                              "No valid host was found. There are not enough hosts available."})
        else:
            script = base64.b64decode(server["user_data"]).decode() if server["user_data"] else ""
            self.background(self._boot(server, script))
        return json_response({"server": {"id": sid, "links": [], "OS-DCF:diskConfig": "MANUAL",
                                         "security_groups": [{"name": "default"}], "adminPass": secrets.token_hex(6)}},
                             202)

    async def _boot(self, server: dict[str, Any], script: str) -> None:
        await self.blocking(self.boot, server["id"], script)
        with self.lock:
            if server["status"] == "BUILD":
                server["status"] = "ACTIVE"

    def _current(self, server: dict[str, Any]) -> dict[str, Any]:
        """A server whose own OS shut down is SHUTOFF, as Nova reports it."""
        if server["status"] == "ACTIVE" and self.hypervisor is not None and server["id"] in self.hypervisor.halted():
            server["status"] = "SHUTOFF"
        return {k: v for k, v in server.items() if k != "user_data"}

    async def _servers(self, request: web.Request) -> web.Response:
        if (refused := self._refused(request)) is not None:
            return refused
        with self.lock:
            return json_response({"servers": [self._current(s) for s in self.servers.values()]})

    def _no_server(self, sid: str) -> web.Response:
        return json_response({"itemNotFound": {"code": 404, "message": f"Instance {sid} could not be found."}}, 404)

    async def _server(self, request: web.Request) -> web.Response:
        if (refused := self._refused(request)) is not None:
            return refused
        with self.lock:
            server = self.servers.get(request.match_info["id"])
            if server is not None:
                return json_response({"server": self._current(server)})
        return self._no_server(request.match_info["id"])

    async def _delete(self, request: web.Request) -> web.Response:
        if (refused := self._refused(request)) is not None:
            return refused
        sid = request.match_info["id"]
        with self.lock:
            if sid not in self.servers:
                return self._no_server(sid)
        await self.blocking(self.power_off, sid)
        with self.lock:
            self.servers.pop(sid, None)
        return web.Response(status=204)

    # ------------------------------------------------------------------ Glance and Neutron

    async def _image_versions(self, request: web.Request) -> web.Response:
        return json_response({"versions": [self._version("/image/v2/", "v2.16")]}, 300)

    async def _network_versions(self, request: web.Request) -> web.Response:
        return json_response({"versions": [self._version("/network/v2.0/", "v2.0")]})

    def _lookup(self, request: web.Request, table: dict[str, dict[str, Any]], kind: str, plural: str) -> web.Response:
        if (refused := self._refused(request)) is not None:
            return refused
        if "id" in request.match_info:
            rid = request.match_info["id"]
            if rid not in table:
                return json_response({"NeutronError" if kind == "network" else "error": {
                    "code": 404, "message": f"No {kind} with ID {rid} found"}}, 404)
            return json_response({"id": rid, **table[rid]} if kind == "image" else {kind: {"id": rid, **table[rid]}})
        name = request.query.get("name")
        items = [{"id": i, **v} for i, v in table.items() if name is None or v["name"] == name]
        return json_response({plural: items})

    async def _images(self, request: web.Request) -> web.Response:
        return self._lookup(request, self.images, "image", "images")

    async def _image(self, request: web.Request) -> web.Response:
        return self._lookup(request, self.images, "image", "images")

    async def _networks(self, request: web.Request) -> web.Response:
        return self._lookup(request, self.networks, "network", "networks")

    async def _network(self, request: web.Request) -> web.Response:
        return self._lookup(request, self.networks, "network", "networks")
