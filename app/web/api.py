"""The REST API under /api (OpenAPI at /docs): a thin JSON skin over `service.Service`.

Authentication: `Authorization: Bearer <RUNBOT_API_TOKEN>` for automation, or the dashboard's
session cookie (then POSTs must send the session's CSRF token as `X-CSRF-Token`). Anonymous
callers get 401. Lists are paginated (`page`, `per_page` up to 200) and newest first.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any, Literal, ParamSpec, TypeVar

from fastapi import APIRouter, Depends, HTTPException, Query, Request
from pydantic import BaseModel, Field
from starlette.concurrency import run_in_threadpool

from app.commands.registry import COMMANDS
from app.policy.explain import explanation_record
from app.web.auth import Authenticator, AuthError, Principal
from app.web.service import Service, ServiceError, SiloAction
from app.web.views import (
    DEFAULT_PER_PAGE,
    MAX_PER_PAGE,
    ActionOut,
    AppLogOut,
    EnvironmentOut,
    LogOut,
    OutboxOut,
    PageOut,
    PoolOut,
    RunOut,
    SiloOut,
    UsageOut,
)

T = TypeVar("T")
P = ParamSpec("P")

SILO_ACTIONS: dict[SiloAction, str] = {
    "update": "Re-apply the silo (a git stack moves to its ref's newest commit). Operators only.",
    "destroy": "Destroy the silo; refused while environments live unless `force`. Operators only.",
    "rotate-token": "A new runbot_silo_token: the old one stops working now, and the silo is"
    " re-applied with the new one. Operators only.",
}


class Me(BaseModel):
    kind: Literal["anonymous", "local", "token", "user"]
    login: str | None
    operator: bool
    local_mode: bool
    csrf_token: str | None = Field(
        description="Send as X-CSRF-Token with POSTs made with the session cookie"
    )


class PolicyOut(BaseModel):
    repository: str
    source: str | None = Field(description="RUNBOT_POLICY_FILE; null: the built-in defaults")
    digest: str | None = Field(description="sha256 of the file in force")
    in_force: str
    matched: list[str] = Field(description="the `repos` globs that apply, in file order")
    policy: dict[str, Any]
    origins: dict[str, str] = Field(description="per key: the entry (and line) that set it")


class EnvironmentActionIn(BaseModel):
    by: str | None = Field(default=None, description="extend only: a duration like 4h or 1d")


class SiloActionIn(BaseModel):
    force: bool = Field(default=False, description="destroy only: destroy live environments too")


def _fail(exc: ServiceError | AuthError) -> HTTPException:
    return HTTPException(exc.status, exc.message)


async def _sync(fn: Callable[P, T], *args: P.args, **kwargs: P.kwargs) -> T:
    try:
        return await run_in_threadpool(fn, *args, **kwargs)
    except ServiceError as exc:
        raise _fail(exc) from None


async def _async(make: Callable[[], Awaitable[T]]) -> T:
    try:
        return await make()
    except (ServiceError, AuthError) as exc:
        raise _fail(exc) from None


def api_router(service: Service, auth: Authenticator) -> APIRouter:
    router = APIRouter(prefix="/api")

    async def who(request: Request) -> Principal:
        try:
            principal = await auth.principal(request)
        except AuthError as exc:
            raise _fail(exc) from None
        return principal

    async def someone(principal: Principal = Depends(who)) -> Principal:
        if principal.kind == "anonymous":
            raise HTTPException(
                401,
                "sign in to the dashboard, or send Authorization: Bearer <RUNBOT_API_TOKEN>",
                headers={"WWW-Authenticate": "Bearer"},
            )
        return principal

    async def csrf_checked(request: Request, principal: Principal = Depends(someone)) -> Principal:
        try:
            auth.check_csrf(request, principal, request.headers.get("x-csrf-token"))
        except AuthError as exc:
            raise _fail(exc) from None
        return principal

    per_page_q = Query(DEFAULT_PER_PAGE, ge=1, le=MAX_PER_PAGE)

    @router.get("/me", response_model=Me, tags=["auth"])
    async def me(principal: Principal = Depends(who)) -> Me:
        """Who the API thinks you are."""
        return Me(
            kind=principal.kind,
            login=principal.login,
            operator=principal.operator,
            local_mode=service.settings.local_mode,
            csrf_token=principal.session.csrf if principal.session else None,
        )

    @router.get("/environments", response_model=PageOut[EnvironmentOut], tags=["environments"])
    async def list_environments(
        repo: str | None = Query(None, description="owner/name"),
        status: str | None = Query(None, description="live (default), all, or one status"),
        author: str | None = Query(None, description="PR author login"),
        silo: str | None = None,
        page: int = Query(1, ge=1),
        per_page: int = per_page_q,
        principal: Principal = Depends(someone),
    ) -> PageOut[EnvironmentOut]:
        """Environments of the repositories you can read, newest first."""
        return await _sync(
            service.list_environments, principal, repo, status, author, silo, page, per_page
        )

    @router.get("/environments/{env_id}", response_model=EnvironmentOut, tags=["environments"])
    async def get_environment(
        env_id: str, principal: Principal = Depends(someone)
    ) -> EnvironmentOut:
        return await _sync(service.get_environment, principal, env_id)

    @router.get("/environments/{env_id}/app-log", response_model=AppLogOut, tags=["environments"])
    async def environment_app_log(
        env_id: str, principal: Principal = Depends(someone)
    ) -> AppLogOut:
        """The last lines of the app the local stack runs for the PR (`runbot_app_log`)."""
        return await _sync(service.app_log, principal, env_id)

    @router.get(
        "/environments/{env_id}/runs", response_model=PageOut[RunOut], tags=["environments"]
    )
    async def environment_runs(
        env_id: str,
        page: int = Query(1, ge=1),
        per_page: int = per_page_q,
        principal: Principal = Depends(someone),
    ) -> PageOut[RunOut]:
        """Engine runs of the environment, newest first."""
        return await _sync(service.runs_of, principal, "environment", env_id, page, per_page)

    def add_environment_action(action: str, summary: str) -> None:
        async def act(
            env_id: str,
            body: EnvironmentActionIn | None = None,
            principal: Principal = Depends(csrf_checked),
        ) -> ActionOut:
            by = body.by if body else None
            return await _async(
                lambda: service.act_on_environment(principal, env_id, action, "api", by)
            )

        router.add_api_route(
            f"/environments/{{env_id}}/{action}",
            act,
            methods=["POST"],
            response_model=ActionOut,
            tags=["actions"],
            summary=f"{action.capitalize()} an environment",
            description=summary + " Needs write access to the repository.",
            name=f"environment_{action}",
        )

    for command in COMMANDS:
        if command.action is not None:
            add_environment_action(command.name, command.action.summary)

    @router.get("/silos", response_model=PageOut[SiloOut], tags=["silos"])
    async def list_silos(
        status: str | None = None,
        page: int = Query(1, ge=1),
        per_page: int = per_page_q,
        principal: Principal = Depends(someone),
    ) -> PageOut[SiloOut]:
        return await _sync(service.list_silos, principal, status, page, per_page)

    @router.get("/silos/{name}", response_model=SiloOut, tags=["silos"])
    async def get_silo(name: str, principal: Principal = Depends(someone)) -> SiloOut:
        return await _sync(service.get_silo, principal, name)

    @router.get("/silos/{name}/runs", response_model=PageOut[RunOut], tags=["silos"])
    async def silo_runs(
        name: str,
        page: int = Query(1, ge=1),
        per_page: int = per_page_q,
        principal: Principal = Depends(someone),
    ) -> PageOut[RunOut]:
        return await _sync(service.runs_of, principal, "silo", name, page, per_page)

    def add_silo_action(action: SiloAction, summary: str) -> None:
        async def act(
            name: str,
            body: SiloActionIn | None = None,
            principal: Principal = Depends(csrf_checked),
        ) -> ActionOut:
            force = body.force if body else False
            return await _async(lambda: service.act_on_silo(principal, name, action, force))

        router.add_api_route(
            f"/silos/{{name}}/{action}",
            act,
            methods=["POST"],
            response_model=ActionOut,
            tags=["actions"],
            summary=f"{action.capitalize()} a silo",
            description=summary,
            name=f"silo_{action.replace('-', '_')}",
        )

    for silo_action, text in SILO_ACTIONS.items():
        add_silo_action(silo_action, text)

    @router.get("/pools", response_model=list[PoolOut], tags=["pools"])
    async def pools(principal: Principal = Depends(someone)) -> list[PoolOut]:
        """Each repository's warm pool in each silo (of the repositories you can read): the
        size wanted, the instances ready, being made, failed or being claimed, and each
        unclaimed instance (`pr_number` 0, `pr_url` null)."""
        return await _sync(service.pools, principal)

    @router.get("/runs/{run_id}", response_model=RunOut, tags=["runs"])
    async def get_run(run_id: int, principal: Principal = Depends(someone)) -> RunOut:
        return await _sync(service.get_run, principal, run_id)

    @router.get("/runs/{run_id}/log", response_model=LogOut, tags=["runs"])
    async def run_log(
        run_id: int,
        after: int = Query(0, ge=0, description="Cursor from a previous call; 0: from the start"),
        tail: int | None = Query(None, ge=1, description="Only the last N lines"),
        principal: Principal = Depends(someone),
    ) -> LogOut:
        """The run's log. Poll with `after=<cursor>` to tail a run in progress."""
        return await _sync(service.run_log, principal, run_id, after, tail)

    @router.get("/usage", response_model=UsageOut, tags=["usage"])
    async def usage(principal: Principal = Depends(someone)) -> UsageOut:
        """Environment-hours per repository per day over the last 30 days, and current counts."""
        return await _sync(service.usage, principal)

    @router.get("/policy/{owner}/{name}", response_model=PolicyOut, tags=["policy"])
    async def policy(owner: str, name: str, principal: Principal = Depends(someone)) -> PolicyOut:
        """The operator policy in force for a repository, and where each value comes from.
        Operators only."""
        if not principal.operator:
            raise HTTPException(403, "only operators (RUNBOT_ADMINS, the API token) see the policy")
        explained = service.rt.policy.explain(f"{owner}/{name}")
        return PolicyOut.model_validate(explanation_record(explained))

    @router.get("/outbox", response_model=PageOut[OutboxOut], tags=["outbox"])
    async def outbox(
        page: int = Query(1, ge=1),
        per_page: int = per_page_q,
        principal: Principal = Depends(someone),
    ) -> PageOut[OutboxOut]:
        """Local mode: the GitHub writes runbot would have made. Operators only."""
        return await _sync(service.outbox, principal, page, per_page)

    return router
