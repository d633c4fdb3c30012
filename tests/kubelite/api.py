"""kubelite's HTTP surface: the Kubernetes REST paths a client uses for Jobs, Pods and Secrets.

Every body a client sends to create, replace or patch an object is checked, in the order the
real API server does: apiVersion/kind against the URL (400), the strict JSON schema (422),
Kubernetes' own validation and immutable fields (422), then the store (404, 409). Every
refusal is a ``Status`` object, and every schema or validation refusal is also kept in
``API.errors`` so that a test can assert its client never sent anything a cluster refuses.
"""

from __future__ import annotations

import asyncio
import copy
import json
import secrets as pysecrets
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any, NamedTuple

import yaml
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response, StreamingResponse
from starlette.routing import Route

from . import schema, validation
from .controller import delete_object
from .kubelet import Kubelet
from .store import RESOURCES, ApiError, Store, apply_patch, field_selector, label_selector

__all__ = ["API", "RecordedRequest"]

_GENERATE = "bcdfghjklmnpqrstvwxz2456789"


class RecordedRequest(NamedTuple):
    """One request as kubelite saw it (body parsed as JSON when it was JSON)."""

    method: str
    path: str
    query: dict[str, str]
    body: Any


@dataclass
class API:
    """The Starlette app over one store; one namespace exists (plus ``default``, empty)."""

    store: Store
    kubelet: Kubelet
    namespace: str
    token: str
    controller_events: list[dict[str, str]]

    def __post_init__(self) -> None:
        self.requests: list[RecordedRequest] = []
        self.errors: list[str] = []
        #: Handlers that raised something other than ApiError: kubelite's own bugs.
        self.crashes: list[str] = []
        self.job_creations: dict[str, int] = {}
        self.stopping = False
        #: When True the log endpoint fails as it does when the API cannot reach the kubelet.
        self.logs_unavailable = False
        group = "/apis/batch/v1"
        core = "/api/v1"
        routes = [
            Route("/version", self.version),
            Route("/api", self.api_versions),
            Route("/apis", self.api_groups),
            Route("/apis/batch", self.batch_group),
            Route(core, self.core_resources),
            Route(group, self.batch_resources),
            Route(core + "/namespaces/{ns}/pods/{name}/log", self.pod_log),
        ]
        for prefix in (core, group):
            routes += [
                Route(prefix + "/{plural}", self.collection, methods=["GET"]),
                Route(
                    prefix + "/namespaces/{ns}/{plural}",
                    self.collection,
                    methods=["GET", "POST", "DELETE"],
                ),
                Route(
                    prefix + "/namespaces/{ns}/{plural}/{name}",
                    self.item,
                    methods=["GET", "PUT", "PATCH", "DELETE"],
                ),
                Route(prefix + "/namespaces/{ns}/{plural}/{name}/status", self.item_status),
            ]
        self.app = Starlette(
            routes=[Route(r.path, self._endpoint(r.endpoint), methods=r.methods) for r in routes]
        )

    # ---------------------------------------------------------------------------- plumbing

    def _endpoint(self, handler: Any) -> Any:
        """Record the request, check the bearer token, and turn ApiError into a Status."""

        async def endpoint(request: Request) -> Response:
            raw = await request.body()
            try:
                body: Any = json.loads(raw) if raw else None
            except ValueError:
                body = raw.decode(errors="replace")
            self.requests.append(
                RecordedRequest(request.method, request.url.path, dict(request.query_params), body)
            )
            if request.headers.get("authorization") != f"Bearer {self.token}":
                error = ApiError(401, "Unauthorized", "Unauthorized")
                return JSONResponse(error.status(), status_code=401)
            try:
                response: Response = await handler(request)
            except ApiError as exc:
                return JSONResponse(exc.status(), status_code=exc.code)
            except Exception as exc:
                self.crashes.append(f"{request.method} {request.url.path}: {exc!r}")
                error = ApiError(500, "InternalError", f"kubelite crashed: {exc!r}")
                return JSONResponse(error.status(), status_code=500)
            return response

        return endpoint

    def _resource(self, request: Request) -> Any:
        plural = request.path_params["plural"]
        res = RESOURCES.get(plural)
        group = "batch" if request.url.path.startswith("/apis/batch/") else ""
        if res is None or res.group != group:
            raise ApiError(404, "NotFound", "the server could not find the requested resource")
        ns = request.path_params.get("ns")
        if ns is not None and ns not in (self.namespace, "default"):
            raise ApiError(
                404,
                "NotFound",
                f'namespaces "{ns}" not found',
                {"name": ns, "kind": "namespaces"},
            )
        return res

    async def _json(self, request: Request) -> Any:
        raw = await request.body()
        try:
            if request.headers.get("content-type", "").startswith("application/apply-patch+yaml"):
                return yaml.safe_load(raw)
            return json.loads(raw)
        except (ValueError, yaml.YAMLError) as exc:
            raise ApiError(
                400, "BadRequest", f"the body of the request is not JSON: {exc}"
            ) from exc

    def _refuse(self, res: Any, name: str, causes: list[tuple[str, str]]) -> None:
        error = ApiError.invalid(res, name, causes)
        self.errors.append(error.message)
        raise error

    def _check(self, res: Any, obj: Any, name: str) -> None:
        """apiVersion/kind (400), then the strict schema (422)."""
        if not isinstance(obj, dict):
            raise ApiError(400, "BadRequest", "the body must be a JSON object")
        if obj.get("apiVersion") != res.api_version or obj.get("kind") != res.kind:
            message = (
                f"the API version in the data ({obj.get('apiVersion')}) does not match the "
                f"expected API version ({res.api_version})"
                if obj.get("apiVersion") != res.api_version
                else f"the kind in the data ({obj.get('kind')}) does not match {res.kind}"
            )
            self.errors.append(message)
            raise ApiError(400, "BadRequest", message)
        problems = schema.errors(obj)
        if problems:
            causes = []
            for problem in problems:
                path, _, message = problem.partition(": ")
                causes.append((path, message))
            self._refuse(res, name, causes)

    @staticmethod
    def _out(obj: dict[str, Any]) -> JSONResponse:
        return JSONResponse(obj)

    # --------------------------------------------------------------------------- discovery

    async def version(self, request: Request) -> Response:
        minor = schema.KUBE_VERSION.split(".")[1]
        return JSONResponse(
            {
                "major": "1",
                "minor": minor,
                "gitVersion": f"v{schema.KUBE_VERSION}.0-kubelite",
                "gitCommit": "0" * 40,
                "gitTreeState": "clean",
                "buildDate": "2026-01-01T00:00:00Z",
                "goVersion": "go1.24",
                "compiler": "gc",
                "platform": "linux/amd64",
            }
        )

    async def api_versions(self, request: Request) -> Response:
        return JSONResponse(
            {
                "kind": "APIVersions",
                "versions": ["v1"],
                "serverAddressByClientCIDRs": [
                    {"clientCIDR": "0.0.0.0/0", "serverAddress": "127.0.0.1"}
                ],
            }
        )

    def _group(self) -> dict[str, Any]:
        version = {"groupVersion": "batch/v1", "version": "v1"}
        return {"name": "batch", "versions": [version], "preferredVersion": version}

    async def api_groups(self, request: Request) -> Response:
        return JSONResponse({"kind": "APIGroupList", "apiVersion": "v1", "groups": [self._group()]})

    async def batch_group(self, request: Request) -> Response:
        return JSONResponse({"kind": "APIGroup", "apiVersion": "v1", **self._group()})

    @staticmethod
    def _resource_list(group_version: str, entries: list[tuple[str, str, list[str]]]) -> Response:
        return JSONResponse(
            {
                "kind": "APIResourceList",
                "apiVersion": "v1",
                "groupVersion": group_version,
                "resources": [
                    {
                        "name": name,
                        "singularName": "" if "/" in name else kind.lower(),
                        "namespaced": True,
                        "kind": kind,
                        "verbs": verbs,
                    }
                    for name, kind, verbs in entries
                ],
            }
        )

    async def core_resources(self, request: Request) -> Response:
        crud = ["create", "delete", "get", "list", "patch", "update", "watch"]
        return self._resource_list(
            "v1",
            [
                ("pods", "Pod", crud),
                ("pods/log", "Pod", ["get"]),
                ("pods/status", "Pod", ["get"]),
                ("secrets", "Secret", crud),
                ("events", "Event", ["list"]),
            ],
        )

    async def batch_resources(self, request: Request) -> Response:
        crud = ["create", "delete", "get", "list", "patch", "update", "watch"]
        return self._resource_list(
            "batch/v1", [("jobs", "Job", crud), ("jobs/status", "Job", ["get"])]
        )

    # -------------------------------------------------------------------------- collection

    async def collection(self, request: Request) -> Response:
        res = self._resource(request)
        ns = request.path_params.get("ns")
        if request.method == "POST":
            if ns is None or res.plural == "events":
                raise ApiError(405, "MethodNotAllowed", "create is not allowed here")
            return await self._create(request, res, ns)
        query = request.query_params
        labels = label_selector(query.get("labelSelector"))
        fields = field_selector(query.get("fieldSelector"))

        def matches(obj: dict[str, Any]) -> bool:
            return labels(obj["metadata"].get("labels") or {}) and fields(obj)

        if request.method == "DELETE":  # deletecollection
            if ns is None or res.plural == "events":
                raise ApiError(405, "MethodNotAllowed", "deletecollection is not allowed here")
            policy, grace = await self._delete_options(request)
            with self.store.lock:
                names = [
                    o["metadata"]["name"] for o in self.store.objects(res.plural, ns) if matches(o)
                ]
                for name in names:
                    delete_object(self.store, res.plural, ns, name, policy, grace)
            return JSONResponse(
                {"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Success"}
            )

        if query.get("watch") in ("true", "1"):
            return StreamingResponse(
                self._watch(
                    res, ns, matches, query.get("resourceVersion"), query.get("timeoutSeconds")
                ),
                media_type="application/json",
            )
        with self.store.lock:
            source = self.events() if res.plural == "events" else self.store.objects(res.plural, ns)
            items = sorted(
                (copy.deepcopy(o) for o in source if matches(o)),
                key=lambda o: (o["metadata"]["namespace"], o["metadata"]["name"]),
            )
            rv = str(self.store.rv)
        try:
            limit = int(query.get("limit") or 0)
            start = int(query.get("continue") or 0)
        except ValueError:
            raise ApiError(400, "BadRequest", "limit and continue must be integers") from None
        cont = ""
        if limit and start + limit < len(items):
            cont = str(start + limit)
        page = items[start : start + limit] if limit else items[start:]
        for item in page:
            item.pop("apiVersion", None)
            item.pop("kind", None)
        meta: dict[str, Any] = {"resourceVersion": rv}
        if cont:
            meta["continue"] = cont
        return JSONResponse(
            {
                "kind": f"{res.kind}List",
                "apiVersion": res.api_version,
                "metadata": meta,
                "items": page,
            }
        )

    async def _watch(
        self, res: Any, ns: str | None, matches: Any, rv: str | None, timeout: str | None
    ) -> AsyncIterator[bytes]:
        ns = ns or self.namespace
        deadline = time.monotonic() + (float(timeout) if timeout else 1800.0)
        with self.store.lock:
            if not rv or rv == "0":
                last = self.store.rv
                initial = [
                    copy.deepcopy(o) for o in self.store.objects(res.plural, ns) if matches(o)
                ]
            else:
                last, initial = int(rv), []
                if last < self.store.oldest_rv():
                    gone = ApiError(410, "Expired", f"too old resource version: {rv}").status()
                    yield json.dumps({"type": "ERROR", "object": gone}).encode() + b"\n"
                    return
        for obj in initial:
            yield json.dumps({"type": "ADDED", "object": obj}).encode() + b"\n"
        while not self.stopping and time.monotonic() < deadline:
            for event in self.store.events_since(last, res.plural, ns):
                last = event.rv
                if matches(event.obj):
                    yield json.dumps({"type": event.type, "object": event.obj}).encode() + b"\n"
            await asyncio.sleep(0.02)

    async def _create(self, request: Request, res: Any, ns: str, obj: Any = None) -> Response:
        if obj is None:
            obj = await self._json(request)
        name = (obj.get("metadata") or {}).get("name") if isinstance(obj, dict) else None
        if res.plural == "jobs" and name:
            self.job_creations[name] = self.job_creations.get(name, 0) + 1
        self._check(res, obj, name or "")
        meta = obj.setdefault("metadata", {})
        if meta.get("namespace") not in (None, ns):
            raise ApiError(
                400,
                "BadRequest",
                "the namespace of the provided object does not match the namespace sent on "
                "the request",
            )
        if not name:
            if not meta.get("generateName"):
                self._refuse(
                    res, "", [("metadata.name", "Required value: name or generateName is required")]
                )
            meta["name"] = meta["generateName"] + "".join(
                pysecrets.choice(_GENERATE) for _ in range(5)
            )
        validation.strip_server_fields(obj, res.plural)
        stored = validation.default(res.plural, obj, ns)
        causes = validation.semantic_errors(res.plural, stored)
        if causes:
            self._refuse(res, meta["name"], causes)
        if request.query_params.get("dryRun") == "All":
            return JSONResponse(stored, status_code=201)
        created = self.store.create(res.plural, stored)
        return JSONResponse(copy.deepcopy(created), status_code=201)

    # -------------------------------------------------------------------------------- item

    async def item(self, request: Request) -> Response:
        res = self._resource(request)
        ns, name = request.path_params["ns"], request.path_params["name"]
        if request.method == "GET":
            return JSONResponse(copy.deepcopy(self.store.must_get(res.plural, ns, name)))
        if request.method == "DELETE":
            return await self._delete(request, res, ns, name)
        body = await self._json(request)
        ctype = request.headers.get("content-type", "")
        if ctype.startswith("application/apply-patch+yaml"):
            if not request.query_params.get("fieldManager"):
                raise ApiError(
                    400, "BadRequest", "PATCH with application/apply-patch+yaml needs fieldManager"
                )
            if self.store.get(res.plural, ns, name) is None:  # server-side apply creates
                if not isinstance(body, dict) or (body.get("metadata") or {}).get("name") != name:
                    raise ApiError(400, "BadRequest", "the name in the body must match the URL")
                return await self._create(request, res, ns, body)
        with self.store.lock:
            live = self.store.must_get(res.plural, ns, name)
            if request.method == "PUT":
                new = body
                want = (body.get("metadata") or {}).get("resourceVersion")
                if want and want != live["metadata"]["resourceVersion"]:
                    raise ApiError(
                        409,
                        "Conflict",
                        f'Operation cannot be fulfilled on {res.qualified} "{name}": the object '
                        "has been modified; please apply your changes to the latest version and "
                        "try again",
                        {"name": name, "group": res.group, "kind": res.plural},
                    )
            else:
                new = apply_patch(ctype, live, body)
            return self._update(request, res, live, new)

    def _update(
        self, request: Request, res: Any, live: dict[str, Any], new: dict[str, Any]
    ) -> Response:
        name = live["metadata"]["name"]
        new = copy.deepcopy(new)
        new.setdefault("apiVersion", res.api_version)
        new.setdefault("kind", res.kind)
        self._check(res, new, name)
        meta = new.setdefault("metadata", {})
        if meta.get("name", name) != name:
            self._refuse(res, name, [("metadata.name", "Invalid value: field is immutable")])
        for key in validation.SERVER_FIELDS:
            if key in live["metadata"]:
                meta[key] = live["metadata"][key]
            else:
                meta.pop(key, None)
        meta["name"], meta["namespace"] = name, live["metadata"]["namespace"]
        if res.plural in ("jobs", "pods"):
            new["status"] = copy.deepcopy(live.get("status", {}))
        if res.plural == "secrets" and "stringData" in new:
            new = validation.default("secrets", new, meta["namespace"]) | {"metadata": meta}
        causes = validation.semantic_errors(res.plural, new)
        causes += validation.immutable_changes(res.plural, live, new)
        if causes:
            self._refuse(res, name, causes)
        if request.query_params.get("dryRun") == "All":
            return JSONResponse(new)
        if res.plural == "jobs" and new["spec"] != live["spec"]:
            meta["generation"] = live["metadata"].get("generation", 1) + 1
        stored = self.store.put(res.plural, new)
        return JSONResponse(copy.deepcopy(stored))

    async def _delete_options(self, request: Request) -> tuple[str | None, int | None]:
        """(propagationPolicy, gracePeriodSeconds) from the query or a DeleteOptions body."""
        options = (await self._json(request)) if await request.body() else {}
        if not isinstance(options, dict):
            raise ApiError(400, "BadRequest", "DeleteOptions must be an object")
        query = request.query_params
        policy = query.get("propagationPolicy") or options.get("propagationPolicy")
        if policy is None and options.get("orphanDependents") is not None:
            policy = "Orphan" if options["orphanDependents"] else "Background"
        grace_raw = query.get("gracePeriodSeconds", options.get("gracePeriodSeconds"))
        try:
            grace = int(grace_raw) if grace_raw is not None else None
        except ValueError:
            raise ApiError(400, "BadRequest", "gracePeriodSeconds must be an integer") from None
        return policy, grace

    async def _delete(self, request: Request, res: Any, ns: str, name: str) -> Response:
        policy, grace = await self._delete_options(request)
        options = (await self._json(request)) if await request.body() else {}
        query = request.query_params
        with self.store.lock:
            live = self.store.must_get(res.plural, ns, name)
            pre = options.get("preconditions") or {}
            if pre.get("uid") not in (None, live["metadata"]["uid"]):
                raise ApiError(
                    409, "Conflict", "Precondition failed: UID in precondition does not match"
                )
            if query.get("dryRun") == "All":
                return JSONResponse(copy.deepcopy(live))
            obj = delete_object(self.store, res.plural, ns, name, policy, grace)
            still = self.store.get(res.plural, ns, name)
            if still is not None:
                return JSONResponse(copy.deepcopy(still))
        return JSONResponse(
            {
                "kind": "Status",
                "apiVersion": "v1",
                "metadata": {},
                "status": "Success",
                "details": {
                    "name": name,
                    "group": res.group,
                    "kind": res.plural,
                    "uid": obj["metadata"]["uid"],
                },
            }
        )

    async def item_status(self, request: Request) -> Response:
        res = self._resource(request)
        if request.method != "GET":
            raise ApiError(405, "MethodNotAllowed", "kubelite serves status read-only")
        ns, name = request.path_params["ns"], request.path_params["name"]
        return JSONResponse(copy.deepcopy(self.store.must_get(res.plural, ns, name)))

    def events(self) -> list[dict[str, Any]]:
        """The controller's events as core/v1 Event objects (read-only, never stored)."""
        out = []
        for i, event in enumerate(self.controller_events):
            kind, name = event["involvedObject"].split("/", 1)
            out.append(
                {
                    "apiVersion": "v1",
                    "kind": "Event",
                    "metadata": {"name": f"{name}.{i:08x}", "namespace": self.namespace},
                    "involvedObject": {
                        "apiVersion": "batch/v1" if kind == "Job" else "v1",
                        "kind": kind,
                        "name": name,
                        "namespace": self.namespace,
                    },
                    "reason": event["reason"],
                    "message": event["message"],
                    "type": event["type"],
                    "count": 1,
                    "firstTimestamp": event["time"],
                    "lastTimestamp": event["time"],
                    "source": {"component": "job-controller"},
                }
            )
        return out

    # --------------------------------------------------------------------------------- log

    async def pod_log(self, request: Request) -> Response:
        ns, name = request.path_params["ns"], request.path_params["name"]
        if ns != self.namespace:
            raise ApiError.not_found(RESOURCES["pods"], name)
        pod = self.store.must_get("pods", ns, name)
        if self.logs_unavailable:
            raise ApiError(
                500,
                "InternalError",
                f'Get "https://127.0.0.1:10250/containerLogs/{ns}/{name}": '
                "dial tcp 127.0.0.1:10250: connect: connection refused",
            )
        container = pod["spec"]["containers"][0]["name"]
        asked = request.query_params.get("container")
        if asked not in (None, container):
            raise ApiError(
                400,
                "BadRequest",
                f"container {asked} is not valid for pod {name}",
            )
        try:
            proc = self.kubelet.by_name(name)
        except KeyError:
            raise ApiError(
                400,
                "BadRequest",
                f'container "{container}" in pod "{name}" is waiting to start: ContainerCreating',
            ) from None
        tail = request.query_params.get("tailLines")
        if request.query_params.get("follow") not in ("true", "1"):
            text = proc.log_path.read_bytes() if proc.log_path.exists() else b""
            if tail is not None:
                text = b"".join(text.splitlines(keepends=True)[-int(tail) :]) if int(tail) else b""
            return PlainTextResponse(text)

        async def follow() -> AsyncIterator[bytes]:
            try:
                log = open(proc.log_path, "rb")  # noqa: SIM115 - closed in finally
            except OSError:
                return
            try:
                while True:
                    done = not proc.alive()
                    data = log.read()
                    if data:
                        yield data
                    if done or self.stopping:
                        return
                    await asyncio.sleep(0.02)
            finally:
                log.close()

        return StreamingResponse(follow(), media_type="text/plain")
