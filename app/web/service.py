"""The one service layer behind the dashboard and the REST API: queries, actions, authorization.

Both front ends call these and only these, so a rule (who sees what, who may do what, which
outputs are masked) exists exactly once. Queries are synchronous database work (callers run them
in a worker thread); actions check permissions with GitHub (async), then call the same
`Lifecycle` methods as the comment commands and the CLI.

Environments of repositories a principal cannot read are reported as absent, not forbidden, so
their existence does not leak. Silos are shared, and their outputs, runs and engine logs are the
silo's own: an operator sees every silo, anyone else only the silos where a repository they can
read has an environment (destroyed ones count: their pages stay readable). Any other silo, and
its runs, is absent (404) in the same words as one that does not exist.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime, timedelta
from typing import Any, Literal, get_args

from sqlalchemy import func
from sqlmodel import col, select
from starlette.concurrency import run_in_threadpool

from app.access.roles import Role
from app.access.rules import Refusal, authorize
from app.commands.actions import ActionRequest
from app.commands.registry import ENV_ACTIONS, spec
from app.cost.money import EnvironmentCost
from app.db.models import Environment, OutboxMessage, PullRequest, Run, Silo, utcnow
from app.engine.credentials import Redactor
from app.engine.logs import read_log
from app.lifecycle.outputs import public_outputs, sensitive_values
from app.lifecycle.pool import WARM
from app.lifecycle.service import LifecycleError, pull_id
from app.lifecycle.service import NotFound as LifecycleNotFound
from app.lifecycle.states import LIVE, Status
from app.runtime import Runtime
from app.ttl.durations import DurationError, parse_duration
from app.web.applog import AppLogUnavailable, app_log_path, read_app_log
from app.web.auth import Authenticator, AuthError, Principal
from app.web.money import cost_fields, environment_costs
from app.web.pools import PoolRefusal, pool_refusal, pools_of
from app.web.usage import usage_of
from app.web.views import (
    DEFAULT_PER_PAGE,
    MAX_PER_PAGE,
    STATUS_FILTERS,
    USAGE_DAYS,
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
    pr_url,
    run_out,
    sleep_fields,
)
from app.web.visible import visible, visible_silos

SiloAction = Literal["update", "destroy", "rotate-token"]
SILO_ACTIONS: tuple[str, ...] = get_args(SiloAction)


class ServiceError(Exception):
    status = 400

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class NotVisible(ServiceError):
    status = 404


class Forbidden(ServiceError):
    status = 403


class Invalid(ServiceError):
    status = 422


class Conflict(ServiceError):
    status = 409


def _page_args(page: int, per_page: int) -> tuple[int, int]:
    if page < 1:
        raise Invalid("page starts at 1")
    if not 1 <= per_page <= MAX_PER_PAGE:
        raise Invalid(f"per_page must be between 1 and {MAX_PER_PAGE}")
    return page, per_page


class Service:
    def __init__(self, rt: Runtime, auth: Authenticator, wake: Callable[[], None]) -> None:
        self.rt = rt
        self.db = rt.db
        self.settings = rt.settings
        self.required_role = Role.named(rt.settings.command_permission) or Role.WRITE
        self.auth = auth
        self.wake = wake

    # ----- views of rows -----------------------------------------------------------------------

    def environment_out(
        self, env: Environment, costs: dict[str, EnvironmentCost] | None = None
    ) -> EnvironmentOut:
        live = env.status != Status.DESTROYED
        if costs is None:
            costs = environment_costs(self.db, [env], utcnow())
        return EnvironmentOut(
            id=env.id,
            repository=env.repository,
            pr_number=env.pr_number,
            pr_url=pr_url(self.settings.github_url, env.repository, env.pr_number),
            author=env.author,
            status=env.status,
            desired=env.desired,
            reason=env.reason,
            url=env.url,
            silo=env.silo_name,
            slot=env.slot,
            stack=env.stack,
            head_sha=env.head_sha,
            head_ref=env.head_ref,
            deployed_sha=env.deployed_sha,
            trigger=env.trigger,
            created_at=env.created_at,
            updated_at=env.updated_at,
            expires_at=env.expires_at if live else None,
            max_expires_at=(
                env.created_at + timedelta(seconds=float(env.ttl["max"]))
                if live and env.ttl.get("max")
                else None
            ),
            destroyed_at=env.destroyed_at,
            last_run_id=env.last_run_id,
            outputs=public_outputs(env.outputs),
            retry_at=_retry_at(env),
            failed_attempts=env.attempts,
            pool_state=env.pool_state,
            claimed_at=env.claimed_at,
            **cost_fields(env, costs.get(env.id), self.settings.currency),
            **sleep_fields(env, live),
        )

    def _silo_out(self, session: Any, silo: Silo, principal: Principal) -> SiloOut:
        used = session.exec(
            select(func.count())
            .select_from(Environment)
            .where(Environment.silo_name == silo.name, col(Environment.slot).is_not(None))
        ).one()
        live = self._visible(
            select(func.count())
            .select_from(Environment)
            .where(
                Environment.silo_name == silo.name,
                col(Environment.status).in_([s.value for s in LIVE]),
            ),
            principal,
        )
        return SiloOut(
            name=silo.name,
            stack=silo.stack,
            status=silo.status,
            desired=silo.desired,
            reason=silo.reason,
            capacity=silo.capacity or self.settings.default_capacity,
            used=used,
            environments=session.exec(live).one() if live is not None else 0,
            created_at=silo.created_at,
            updated_at=silo.updated_at,
            outputs=public_outputs(silo.outputs),
            retry_at=_retry_at(silo),
            failed_attempts=silo.attempts,
        )

    _visible = staticmethod(visible)
    _visible_silos = staticmethod(visible_silos)

    # ----- environments ------------------------------------------------------------------------

    def list_environments(
        self,
        principal: Principal,
        repo: str | None = None,
        status: str | None = None,
        author: str | None = None,
        silo: str | None = None,
        page: int = 1,
        per_page: int = DEFAULT_PER_PAGE,
    ) -> PageOut[EnvironmentOut]:
        """Newest first. `status`: live (the default: all but destroyed), all, or one status."""
        page, per_page = _page_args(page, per_page)
        status = status or "live"
        if status not in STATUS_FILTERS:
            raise Invalid(f"status must be one of: {', '.join(STATUS_FILTERS)}")
        conditions: list[Any] = []
        if repo:
            conditions.append(func.lower(Environment.repository) == repo.strip().lower())
        if author:
            conditions.append(func.lower(Environment.author) == author.strip().lower())
        if silo:
            conditions.append(Environment.silo_name == silo)
        if status == "live":
            conditions.append(Environment.status != Status.DESTROYED)
        elif status != "all":
            conditions.append(Environment.status == status)
        count = self._visible(select(func.count()).select_from(Environment), principal)
        rows = self._visible(select(Environment), principal)
        if count is None or rows is None:
            return PageOut(items=[], page=page, per_page=per_page, total=0)
        with self.db.session() as session:
            total = session.exec(count.where(*conditions)).one()
            found = session.exec(
                rows.where(*conditions)
                .order_by(col(Environment.created_at).desc(), col(Environment.id).desc())
                .offset((page - 1) * per_page)
                .limit(per_page)
            ).all()
        costs = environment_costs(self.db, found, utcnow())
        return PageOut(
            items=[self.environment_out(env, costs) for env in found],
            page=page,
            per_page=per_page,
            total=total,
        )

    def _environment_row(self, principal: Principal, env_id: str) -> Environment:
        with self.db.session() as session:
            env = session.get(Environment, env_id)
        if env is None or not principal.can_read(env.repository):
            raise NotVisible(f"no environment '{env_id}' that you can see")
        return env

    def get_environment(self, principal: Principal, env_id: str) -> EnvironmentOut:
        return self.environment_out(self._environment_row(principal, env_id))

    def app_log(self, principal: Principal, env_id: str) -> AppLogOut:
        """The local stack's app log of a visible environment (applog.py says what is read)."""
        env = self._environment_row(principal, env_id)
        with self.db.session() as session:
            silo = session.get(Silo, env.silo_name)
        silo_outputs = silo.outputs if silo is not None else {}
        try:
            path = app_log_path(env.id, env.outputs, silo_outputs)
            redact = Redactor([*sensitive_values(silo_outputs), *sensitive_values(env.outputs)])
            log = read_app_log(path, redact)
        except AppLogUnavailable as exc:
            raise NotVisible(f"no app log for '{env_id}': {exc}") from None
        return AppLogOut(
            environment_id=env.id, path=log.path, text=log.text, truncated=log.truncated
        )

    def repositories(self, principal: Principal) -> list[str]:
        """Repositories with environments this principal can see (for the filter)."""
        query = self._visible(select(Environment.repository).distinct(), principal)
        if query is None:
            return []
        with self.db.session() as session:
            return sorted(set(session.exec(query).all()), key=str.lower)

    # ----- silos -------------------------------------------------------------------------------

    def list_silos(
        self,
        principal: Principal,
        status: str | None = None,
        page: int = 1,
        per_page: int = DEFAULT_PER_PAGE,
    ) -> PageOut[SiloOut]:
        """The silos the principal may see (module docstring), by name."""
        page, per_page = _page_args(page, per_page)
        conditions = [Silo.status == status] if status else []
        count = self._visible_silos(select(func.count()).select_from(Silo), principal)
        rows = self._visible_silos(select(Silo), principal)
        if count is None or rows is None:
            return PageOut(items=[], page=page, per_page=per_page, total=0)
        with self.db.session() as session:
            total = session.exec(count.where(*conditions)).one()
            silos = session.exec(
                rows.where(*conditions)
                .order_by(col(Silo.name))
                .offset((page - 1) * per_page)
                .limit(per_page)
            ).all()
            items = [self._silo_out(session, silo, principal) for silo in silos]
        return PageOut(items=items, page=page, per_page=per_page, total=total)

    def get_silo(self, principal: Principal, name: str) -> SiloOut:
        query = self._visible_silos(select(Silo).where(Silo.name == name), principal)
        with self.db.session() as session:
            silo = session.exec(query).first() if query is not None else None
            if silo is None:  # absent or not for this principal: the same answer
                raise NotVisible(f"no silo '{name}' that you can see")
            return self._silo_out(session, silo, principal)

    # ----- runs and logs -----------------------------------------------------------------------

    def runs_of(
        self,
        principal: Principal,
        kind: Literal["environment", "silo"],
        target: str,
        page: int = 1,
        per_page: int = DEFAULT_PER_PAGE,
    ) -> PageOut[RunOut]:
        """Newest first."""
        page, per_page = _page_args(page, per_page)
        if kind == "environment":
            self._environment_row(principal, target)
        else:
            self.get_silo(principal, target)
        condition = (Run.target_kind == kind, Run.target_id == target)
        with self.db.session() as session:
            total = session.exec(select(func.count()).select_from(Run).where(*condition)).one()
            runs = session.exec(
                select(Run)
                .where(*condition)
                .order_by(col(Run.id).desc())
                .offset((page - 1) * per_page)
                .limit(per_page)
            ).all()
        return PageOut(items=[run_out(r) for r in runs], page=page, per_page=per_page, total=total)

    def _run_row(self, principal: Principal, run_id: int) -> Run:
        with self.db.session() as session:
            run = session.get(Run, run_id)
        if run is None:
            raise NotVisible(f"no run {run_id}")
        try:
            if run.target_kind == "environment":
                self._environment_row(principal, run.target_id)
            else:
                self.get_silo(principal, run.target_id)
        except NotVisible:
            raise NotVisible(f"no run {run_id} that you can see") from None
        return run

    def get_run(self, principal: Principal, run_id: int) -> RunOut:
        return run_out(self._run_row(principal, run_id))

    def run_log(
        self, principal: Principal, run_id: int, after: int = 0, tail: int | None = None
    ) -> LogOut:
        """The log after chunk `after` (0: from the start); `tail` keeps only the last lines."""
        if after < 0:
            raise Invalid("after must be 0 or a cursor returned earlier")
        if tail is not None and tail < 1:
            raise Invalid("tail must be a positive number of lines")
        run = self._run_row(principal, run_id)
        finished = run.finished_at is not None  # read before the log: no line can be missed
        text, cursor = read_log(self.db, run_id, after)
        if tail is not None:
            lines = text.splitlines(keepends=True)
            text = "".join(lines[-tail:])
        return LogOut(run_id=run_id, text=text, cursor=cursor, finished=finished, status=run.status)

    # ----- usage -------------------------------------------------------------------------------

    def usage(
        self, principal: Principal, now: datetime | None = None, days: int = USAGE_DAYS
    ) -> UsageOut:
        """Environment-hours and money per repository per UTC day, the warm pool apart."""
        return usage_of(self.db, principal, self.settings.currency, now or utcnow(), days)

    # ----- warm pools --------------------------------------------------------------------------

    def pools(self, principal: Principal) -> list[PoolOut]:
        """Each repository's warm pool in each silo, for the repositories the principal reads."""
        return pools_of(self.rt.lifecycle, principal, self.environment_out)

    # ----- outbox ------------------------------------------------------------------------------

    def outbox(
        self, principal: Principal, page: int = 1, per_page: int = DEFAULT_PER_PAGE
    ) -> PageOut[OutboxOut]:
        """Local mode's would-be GitHub writes, newest first; for operators."""
        page, per_page = _page_args(page, per_page)
        if not principal.operator:
            raise Forbidden("the outbox is shown to operators only")
        with self.db.session() as session:
            total = session.exec(select(func.count()).select_from(OutboxMessage)).one()
            rows = session.exec(
                select(OutboxMessage)
                .order_by(col(OutboxMessage.id).desc())
                .offset((page - 1) * per_page)
                .limit(per_page)
            ).all()
        items = [
            OutboxOut(
                id=m.id or 0, method=m.method, path=m.path, body=m.body, created_at=m.created_at
            )
            for m in rows
        ]
        return PageOut(items=items, page=page, per_page=per_page, total=total)

    # ----- actions -----------------------------------------------------------------------------

    def _pull_of(self, env: Environment) -> PullRequest | None:
        with self.db.session() as session:
            return session.get(PullRequest, pull_id(env.repository, env.pr_number))

    async def _refusal(
        self, principal: Principal, env: Environment, action: str
    ) -> str | PoolRefusal | None:
        """Why the principal may not do `action` to `env` (None: allowed).

        An unclaimed warm-pool instance belongs to the pool, not to a PR (`pools.py`).

        The comment commands' rule, word for word: the command's `Access` from the registry,
        fed with the person's role on the repository, whether they authored the PR, and its
        state.
        """
        if env.pool_state == WARM:
            return pool_refusal(principal, action)
        if principal.operator:
            return None
        role = await self.auth.role(principal, env.repository, env.installation_id)
        pull = await run_in_threadpool(self._pull_of, env)
        login = (principal.login or "").lower()
        verdict = authorize(
            spec(action).access,
            role,
            is_author=bool(login) and login == env.author.lower(),
            pr_state=pull.state if pull else "open",
            is_fork=pull.fork if pull else False,
            required=self.required_role,
        )
        if verdict.allowed:
            return None
        if verdict.refusal == Refusal.CLOSED or verdict.needed is None:
            return f"{env.repository}#{env.pr_number} is closed; its environment takes no requests"
        return (
            f"you need {verdict.needed.label} access to {env.repository} to {action} its"
            f" environment (yours: {role.label})"
        )

    async def allowed_actions(self, principal: Principal, env_id: str) -> frozenset[str]:
        """Which actions to offer on the environment's page (each action checks again)."""
        env = await run_in_threadpool(self._environment_row, principal, env_id)
        allowed = set()
        for action in ENV_ACTIONS:
            try:
                if await self._refusal(principal, env, action) is None:
                    allowed.add(action)
            except AuthError:
                break
        return frozenset(allowed)

    async def act_on_environment(
        self,
        principal: Principal,
        env_id: str,
        action: str,
        via: str,
        by: str | None = None,
    ) -> ActionOut:
        """The comment commands' operations, under the comment commands' rule."""
        env = await run_in_threadpool(self._environment_row, principal, env_id)
        if action not in ENV_ACTIONS:
            raise Invalid(f"unknown action '{action}'")
        command = spec(action)
        assert command.action is not None
        refusal = await self._refusal(principal, env, action)
        if isinstance(refusal, PoolRefusal):
            raise Conflict(refusal.message)
        if refusal is not None:
            raise Forbidden(refusal)
        # A dashboard or API action is activity: it keeps the environment awake.
        await run_in_threadpool(self.rt.lifecycle.record_traffic, {env_id: utcnow()})
        request = ActionRequest(
            lifecycle=self.rt.lifecycle,
            env_id=env_id,
            trigger=principal.trigger(via),
            who=principal.login or ("the API" if principal.kind == "token" else "the dashboard"),
            by=_duration_arg(by) if command.takes_duration else None,
        )
        try:
            result = await run_in_threadpool(command.action.run, request)
        except LifecycleNotFound as exc:
            raise NotVisible(str(exc)) from exc
        except LifecycleError as exc:
            raise Conflict(str(exc)) from exc
        self.wake()
        return ActionOut(
            message=result.message,
            environment=self.environment_out(result.environment),
            expires_at=result.expires_at,
            capped=result.capped,
        )

    async def act_on_silo(
        self, principal: Principal, name: str, action: SiloAction, force: bool = False
    ) -> ActionOut:
        """Silos are shared by many repositories: only operators change them."""
        silo = await run_in_threadpool(self.get_silo, principal, name)
        if not principal.operator:
            raise Forbidden(
                "silos are shared by many repositories: only operators (RUNBOT_ADMINS, the API"
                " token) may change them"
            )
        lifecycle = self.rt.lifecycle
        try:
            if action == "update":
                await run_in_threadpool(lifecycle.update_silo, name)
                message = f"silo {name} is being updated"
            elif action == "destroy":
                await run_in_threadpool(lifecycle.destroy_silo, name, force)
                message = f"silo {name} is being destroyed"
            elif action == "rotate-token":
                await run_in_threadpool(lifecycle.rotate_silo_token, name)
                message = f"silo {name} has a new token; it is being re-applied with it"
            else:
                raise Invalid(f"unknown action '{action}'")
        except LifecycleNotFound as exc:
            raise NotVisible(str(exc)) from exc
        except LifecycleError as exc:
            raise Conflict(str(exc)) from exc
        self.wake()
        silo = await run_in_threadpool(self.get_silo, principal, name)
        return ActionOut(message=message, silo=silo)


def _retry_at(target: Environment | Silo) -> datetime | None:
    return target.next_attempt_at if target.status == Status.DESTROY_FAILED else None


def _duration_arg(by: str | None) -> timedelta:
    if by is None or not by.strip():
        raise Invalid("extend needs a duration, e.g. 4h, 1d or 1h30m")
    try:
        return parse_duration(by)
    except DurationError as exc:
        raise Invalid(str(exc)) from exc
