"""The request pipeline: record, faults, auth, rate limit, validation, render.

One path for every route, so each handler sees a request GitHub would accept
and each answer carries GitHub's headers.
"""

from __future__ import annotations

import hashlib
import json
import math
import time
import uuid
from typing import Any
from urllib.parse import parse_qsl

from fastapi import Request
from fastapi.responses import Response

from . import schema
from .state import (
    _LOST,
    DOCS,
    RecordedRequest,
    Violation,
    _Auth,
    _Ctx,
    _GitHubError,
    _level_at_least,
    _Repo,
    _Resp,
    _Route,
)


class Dispatch:
    """FakeGitHub's request pipeline (a mixin; ``server.py`` makes the state)."""

    @staticmethod
    def _parse_body(request: Request, raw: bytes) -> Any:
        if not raw:
            return None
        ctype = request.headers.get("content-type", "")
        if "application/x-www-form-urlencoded" in ctype:
            return dict(parse_qsl(raw.decode(), keep_blank_values=True))
        try:
            return json.loads(raw)
        except ValueError:
            return raw.decode(errors="replace")

    async def _dispatch(self, request: Request, route: _Route) -> Response:
        arrived = time.monotonic()
        raw = await request.body()
        body = self._parse_body(request, raw)
        auth = self._authenticate(request)
        with self._lock:
            try:
                return self._dispatch_locked(request, route, body, raw, auth, arrived)
            finally:
                self._handled_count += 1
                self._handled.notify_all()

    def _dispatch_locked(
        self, request: Request, route: _Route, body: Any, raw: bytes, auth: _Auth, arrived: float
    ) -> Response:
        path = request.url.path
        version = request.headers.get("x-github-api-version", schema.DEFAULT_API_VERSION)
        self._requests.append(RecordedRequest(arrived, request.method, path, body, auth.kind))
        fault, lost = self._take_fault(request.method, path), None
        if fault is not None and fault.status == _LOST:
            lost = self._error(_GitHubError(502, "Server Error"))
            fault, lost.headers = None, {"retry-after": "1"}  # retried soon, not in 30 s
        if fault is not None:
            return self._render(fault, auth)
        if version not in schema.api_versions():
            return self._render(
                self._error(
                    _GitHubError(400, f"The requested version {version!r} is not supported.")
                ),
                auth,
            )
        self._api_version = version
        try:
            resp = self._handle(request, route, body, raw, auth)
        except _GitHubError as err:
            resp = self._error(err)
        finally:
            self._api_version = schema.DEFAULT_API_VERSION
        if route.template is not None and resp.raw is None and resp.body is not None:
            try:
                schema.validate_response(
                    route.method, route.template, resp.status, resp.body, version
                )
            except schema.SchemaViolation as exc:
                self._violations.append(Violation("response", route.method, path, str(exc)))
        return self._render(lost or resp, auth, version)

    def _handle(self, request: Request, route: _Route, body: Any, raw: bytes, auth: _Auth) -> _Resp:
        if auth.kind == "invalid":
            raise _GitHubError(401, auth.error or "Bad credentials")
        anonymous_blocked = auth.kind == "none" and route.repo_scoped and not self.anonymous_reads
        if auth.kind not in route.auth or anonymous_blocked:
            if auth.kind == "none":
                raise _GitHubError(401, "Requires authentication")
            if route.auth == frozenset({"app"}):
                raise _GitHubError(401, "A JSON web token could not be decoded")
            raise _GitHubError(403, "Resource not accessible by integration")
        self._count_rate(auth)
        if raw and body is not None and isinstance(body, str) and route.template is not None:
            raise _GitHubError(400, "Problems parsing JSON")
        ctx = _Ctx(request, dict(request.path_params), dict(request.query_params), body, auth)
        # Like GitHub: access (404) and permissions (403) before body validation (422).
        if route.repo_scoped:
            repo = self._repos.get(f"{ctx.params['owner']}/{ctx.params['repo']}".lower())
            if repo is None or not self._accessible(auth, repo):
                raise _GitHubError(404, "Not Found")
        if route.permission is not None and auth.kind == "installation":
            scopes, level = route.permission
            granted = [auth.permissions.get(s, "none") for s in scopes]
            if not any(g != "none" and _level_at_least(g, level) for g in granted):
                raise _GitHubError(403, "Resource not accessible by integration")
        if route.template is not None:
            try:
                schema.validate_request(
                    route.method, route.template, body, ctx.query, self._api_version
                )
            except schema.SchemaViolation as exc:
                self._violations.append(
                    Violation("request", route.method, request.url.path, str(exc))
                )
                raise _GitHubError(422, f"Invalid request.\n\n{exc.detail}") from None
        return route.handler(ctx)

    def _count_rate(self, auth: _Auth) -> None:
        limit = 60 if auth.kind == "none" else self.rate_limit
        start, used = self._rate.get(auth.key, (time.time(), 0))
        if time.time() >= start + 3600:
            start, used = time.time(), 0
        if used >= limit:
            who = (
                f"installation ID {auth.installation_id}"
                if auth.kind == "installation"
                else f"user ID {self._user(auth.login).id}"
                if auth.login
                else "this client"
            )
            raise _GitHubError(403, f"API rate limit exceeded for {who}.")
        self._rate[auth.key] = (start, used + 1)

    def _rate_headers(self, auth: _Auth) -> dict[str, str]:
        limit = 60 if auth.kind == "none" else self.rate_limit
        start, used = self._rate.get(auth.key, (time.time(), 0))
        return {
            "x-ratelimit-limit": str(limit),
            "x-ratelimit-remaining": str(max(0, limit - used)),
            "x-ratelimit-reset": str(int(start + 3600)),
            "x-ratelimit-used": str(used),
            "x-ratelimit-resource": "core",
        }

    def _error(self, err: _GitHubError) -> _Resp:
        body: dict[str, Any] = {
            "message": err.message,
            "documentation_url": DOCS,
            "status": str(err.status),
        }
        if err.errors is not None:
            body["errors"] = err.errors
        return _Resp(err.status, body, err.headers)

    def _render(
        self, resp: _Resp, auth: _Auth, version: str = schema.DEFAULT_API_VERSION
    ) -> Response:
        with self._lock:
            headers = self._rate_headers(auth)
        headers.update(
            {
                "x-github-request-id": uuid.uuid4().hex[:20].upper(),
                "x-github-api-version-selected": version,
                "x-github-media-type": "github.v3; format=json",
            }
        )
        headers.update(resp.headers)
        if resp.raw is not None:
            content = resp.raw
        elif resp.body is None:
            content = b""
        else:
            content = json.dumps(resp.body).encode()
        if self.cache_headers and resp.status == 200 and content:
            headers.setdefault("cache-control", "private, max-age=60, s-maxage=60")
            headers.setdefault("etag", f'W/"{hashlib.sha256(content).hexdigest()}"')
            headers.setdefault("vary", "Accept, Authorization, Cookie, X-GitHub-OTP")
        media_type = resp.media_type if content else None
        return Response(content, status_code=resp.status, headers=headers, media_type=media_type)

    def _paginate(self, ctx: _Ctx, items: list[Any]) -> tuple[list[Any], dict[str, str]]:
        try:
            per_page = max(1, min(100, int(ctx.query.get("per_page", 30))))
            page = max(1, int(ctx.query.get("page", 1)))
        except ValueError:
            raise _GitHubError(400, "Invalid pagination parameters") from None
        last = max(1, math.ceil(len(items) / per_page))
        url = ctx.request.url

        def link(n: int) -> str:
            return str(url.include_query_params(per_page=per_page, page=n))

        rels = []
        if page < last:
            rels += [f'<{link(page + 1)}>; rel="next"', f'<{link(last)}>; rel="last"']
        if page > 1:
            rels += [f'<{link(page - 1)}>; rel="prev"', f'<{link(1)}>; rel="first"']
        headers = {"link": ", ".join(rels)} if rels else {}
        return items[(page - 1) * per_page : page * per_page], headers

    def _ctx_repo(self, ctx: _Ctx) -> _Repo:
        return self._repos[f"{ctx.params['owner']}/{ctx.params['repo']}".lower()]

    @staticmethod
    def _int_param(ctx: _Ctx, name: str) -> int:
        try:
            return int(ctx.params[name])
        except ValueError:
            raise _GitHubError(404, "Not Found") from None
