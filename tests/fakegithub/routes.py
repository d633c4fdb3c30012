"""The HTTP routing: which GitHub endpoints the fake serves, who may call each.

Each route names its GitHub path template so requests and responses are validated
against it; anything else is recorded as an ``unsupported`` violation.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import Response

from .state import DOCS, RecordedRequest, Violation, _Ctx, _Resp, _Route


class Routes:
    """FakeGitHub's route table (a mixin; ``server.py`` makes the state)."""

    def _build_app(self) -> FastAPI:
        app = FastAPI(openapi_url=None, docs_url=None, redoc_url=None)
        app_jwt = frozenset({"app"})
        inst = frozenset({"installation"})
        user = frozenset({"user"})
        writes = frozenset({"installation", "user"})
        reads = frozenset({"installation", "user", "none"})  # public repos are anonymous-readable
        anyone = frozenset({"none", "app", "installation", "user"})
        rp = "/repos/{owner}/{repo}"
        issues = ("issues", "pull_requests")
        # (method, GitHub path template, handler, who may call it, installation permission)
        table: list[tuple[str, str, Callable[[_Ctx], _Resp], frozenset[str], Any]] = [
            ("GET", "/app", self._h_get_app, app_jwt, None),
            (
                "POST",
                "/app/installations/{installation_id}/access_tokens",
                self._h_create_token,
                app_jwt,
                None,
            ),
            ("GET", f"{rp}/installation", self._h_repo_installation, app_jwt, None),
            (
                "GET",
                "/installation/repositories",
                self._h_installation_repos,
                inst,
                (("metadata",), "read"),
            ),
            ("GET", rp, self._h_get_repo, reads, (("metadata",), "read")),
            ("GET", f"{rp}/contents/{{path}}", self._h_contents, reads, (("contents",), "read")),
            ("GET", f"{rp}/tarball/{{ref}}", self._h_tarball, reads, (("contents",), "read")),
            ("GET", f"{rp}/pulls", self._h_list_pulls, reads, (("pull_requests",), "read")),
            (
                "GET",
                f"{rp}/pulls/{{pull_number}}",
                self._h_get_pull,
                reads,
                (("pull_requests",), "read"),
            ),
            (
                "GET",
                f"{rp}/issues/{{issue_number}}/comments",
                self._h_list_comments,
                reads,
                (issues, "read"),
            ),
            (
                "POST",
                f"{rp}/issues/{{issue_number}}/comments",
                self._h_create_comment,
                writes,
                (issues, "write"),
            ),
            (
                "PATCH",
                f"{rp}/issues/comments/{{comment_id}}",
                self._h_update_comment,
                writes,
                (issues, "write"),
            ),
            (
                "POST",
                f"{rp}/issues/comments/{{comment_id}}/reactions",
                self._h_comment_reaction,
                writes,
                (issues, "write"),
            ),
            (
                "POST",
                f"{rp}/issues/{{issue_number}}/reactions",
                self._h_issue_reaction,
                writes,
                (issues, "write"),
            ),
            (
                "GET",
                f"{rp}/deployments",
                self._h_list_deployments,
                reads,
                (("deployments",), "read"),
            ),
            (
                "POST",
                f"{rp}/deployments",
                self._h_create_deployment,
                writes,
                (("deployments",), "write"),
            ),
            (
                "GET",
                f"{rp}/deployments/{{deployment_id}}/statuses",
                self._h_list_deployment_statuses,
                reads,
                (("deployments",), "read"),
            ),
            (
                "POST",
                f"{rp}/deployments/{{deployment_id}}/statuses",
                self._h_create_deployment_status,
                writes,
                (("deployments",), "write"),
            ),
            (
                "DELETE",
                f"{rp}/deployments/{{deployment_id}}",
                self._h_delete_deployment,
                writes,
                (("deployments",), "write"),
            ),
            (
                "DELETE",
                f"{rp}/environments/{{environment_name}}",
                self._h_delete_environment,
                writes,
                (("administration",), "write"),
            ),
            ("POST", f"{rp}/check-runs", self._h_create_check_run, inst, (("checks",), "write")),
            (
                "PATCH",
                f"{rp}/check-runs/{{check_run_id}}",
                self._h_update_check_run,
                inst,
                (("checks",), "write"),
            ),
            (
                "GET",
                f"{rp}/commits/{{ref}}/check-runs",
                self._h_list_check_runs,
                reads,
                (("checks",), "read"),
            ),
            (
                "GET",
                f"{rp}/collaborators/{{username}}/permission",
                self._h_permission,
                reads,
                (("metadata",), "read"),
            ),
            (
                "GET",
                f"{rp}/commits/{{ref}}/check-suites",
                self._h_check_suites,
                reads,
                (("checks",), "read"),
            ),
            (
                "GET",
                f"{rp}/commits/{{ref}}/status",
                self._h_combined_status,
                reads,
                (("statuses",), "read"),
            ),
            (
                "GET",
                f"{rp}/git/ref/{{ref}}",
                self._h_git_ref,
                reads,
                (("contents",), "read"),
            ),
            (
                "POST",
                "/app-manifests/{code}/conversions",
                self._h_manifest_conversion,
                anyone,
                None,
            ),
            ("GET", "/user", self._h_get_user, user, None),
            ("GET", "/user/installations", self._h_user_installations, user, None),
            (
                "GET",
                "/user/installations/{installation_id}/repositories",
                self._h_user_installation_repos,
                user,
                None,
            ),
        ]
        # Starlette paths differ where a parameter may contain "/" (file path, git ref).
        starlette_path = {
            f"{rp}/contents/{{path}}": f"{rp}/contents/{{path:path}}",
            f"{rp}/commits/{{ref}}/check-suites": f"{rp}/commits/{{ref:path}}/check-suites",
            f"{rp}/commits/{{ref}}/check-runs": f"{rp}/commits/{{ref:path}}/check-runs",
            f"{rp}/commits/{{ref}}/status": f"{rp}/commits/{{ref:path}}/status",
            f"{rp}/git/ref/{{ref}}": f"{rp}/git/ref/{{ref:path}}",
            f"{rp}/tarball/{{ref}}": f"{rp}/tarball/{{ref:path}}",
        }
        routes = [
            _Route(
                method,
                starlette_path.get(template, template),
                template,
                auth,
                handler,
                permission,
                repo_scoped=template.startswith(rp) and auth != app_jwt,
            )
            for method, template, handler, auth, permission in table
        ]
        # The repository root listing: GET .../contents with no path.
        routes.append(
            _Route(
                "GET",
                f"{rp}/contents",
                f"{rp}/contents/{{path}}",
                reads,
                self._h_contents,
                (("contents",), "read"),
                repo_scoped=True,
            )
        )
        web_routes = [
            # codeload.github.com, where the tarball endpoint redirects: here on one server.
            _Route(
                "GET",
                "/_codeload/{owner}/{repo}/legacy.tar.gz/{ref:path}",
                None,
                anyone,
                self._h_codeload,
            ),
            _Route("GET", "/login/oauth/authorize", None, anyone, self._h_oauth_authorize),
            _Route("POST", "/login/oauth/access_token", None, anyone, self._h_oauth_token),
            _Route("POST", "/settings/apps/new", None, anyone, self._h_manifest_new),
            _Route(
                "POST",
                "/organizations/{org}/settings/apps/new",
                None,
                anyone,
                self._h_manifest_new,
            ),
        ]
        self._routes = routes + web_routes
        for route in self._routes:
            app.add_api_route(
                route.path, self._endpoint(route), methods=[route.method], include_in_schema=False
            )
        app.add_api_route(
            "/{rest:path}",
            self._unsupported,
            methods=["GET", "POST", "PATCH", "PUT", "DELETE"],
            include_in_schema=False,
        )
        return app

    def _endpoint(self, route: _Route) -> Callable[[Request], Awaitable[Response]]:
        async def endpoint(request: Request) -> Response:
            return await self._dispatch(request, route)

        endpoint.__name__ = f"{route.method.lower()}_{route.path}"
        return endpoint

    async def _unsupported(self, request: Request) -> Response:
        raw = await request.body()
        body = self._parse_body(request, raw)
        auth = self._authenticate(request)
        with self._lock:
            self._requests.append(
                RecordedRequest(time.monotonic(), request.method, request.url.path, body, auth.kind)
            )
            self._violations.append(
                Violation(
                    "unsupported",
                    request.method,
                    request.url.path,
                    "the fake GitHub does not implement this endpoint",
                )
            )
        return self._render(
            _Resp(404, {"message": "Not Found", "documentation_url": DOCS, "status": "404"}), auth
        )
