"""Desired-state operations on silos and environments.

Everything that wants something (CLI, webhooks, comment commands, dashboard, API, TTL reaper)
calls these. They only record intent and bump `generation`; the reconciler does the work.
"""

from __future__ import annotations

import dataclasses
import re
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import update
from sqlalchemy.exc import IntegrityError
from sqlmodel import Session, col, select

from app.db.models import Environment, Silo, utcnow
from app.db.session import Database
from app.lifecycle.errors import Conflict, LifecycleError, NotFound
from app.lifecycle.ids import new_environment_id
from app.lifecycle.pool import Pooling, PullValues, of_a_pr, refuse_warm
from app.lifecycle.pulls import mark_pull_dirty, pull_id
from app.lifecycle.sleep import Sleeping
from app.lifecycle.states import LIVE, Desired, Status
from app.stacks.catalog import Catalog, StackError, StackSource, validate_name
from app.stacks.mapping import (
    RUNBOT_INSTANCE_VARIABLES,
    MappingError,
    check_type,
    refused_message,
    refused_repo_vars,
)
from app.ttl.policy import (
    ExtendResult,
    TTLPolicy,
    expiry_after_activity,
    policy_from_record,
    policy_record,
)
from app.ttl.policy import extend as extend_expiry

__all__ = [
    "Conflict",
    "Lifecycle",
    "LifecycleError",
    "NotFound",
    "lifetime_limit",
    "mark_pull_dirty",
    "pull_id",
    "ttl_policy_of",
]

REPOSITORY = re.compile(r"^[A-Za-z0-9_.-]{1,100}/[A-Za-z0-9_.-]{1,100}$")
SHA = re.compile(r"^[0-9a-f]{4,64}$")


def ttl_policy_of(env: Environment) -> TTLPolicy:
    return policy_from_record(env.ttl)


def lifetime_limit(env: Environment) -> datetime | None:
    """The latest the environment may live to (`ttl.max` after creation); None when its row
    stores no TTL record."""
    seconds = env.ttl.get("max") if env.ttl else None
    return env.created_at + timedelta(seconds=seconds) if seconds else None


def _touch(target: Silo | Environment, session: Any) -> None:
    target.generation += 1
    target.next_attempt_at = None
    target.updated_at = utcnow()
    if isinstance(target, Environment):
        target.sync_version += 1
        mark_pull_dirty(session, target.repository, target.pr_number)


def _retry_destroy_now(target: Silo | Environment, session: Any) -> None:
    """Someone asked again: a failed destroy runs at once, its backoff started afresh."""
    target.attempts = 0
    _touch(target, session)
    session.add(target)


class Lifecycle(Sleeping, Pooling):
    def __init__(self, db: Database, catalog: Catalog, default_capacity: int = 20) -> None:
        self.db = db
        self.catalog = catalog
        self.default_capacity = default_capacity

    # ----- silos -----------------------------------------------------------------------------

    def create_silo(
        self,
        name: str,
        stack: str,
        vars: dict[str, Any] | None = None,
        source: StackSource | None = None,
        *,
        source_key: str = "",
        owner: str | None = None,
    ) -> Silo:
        validate_name("silo", name)
        if source is None or source.kind == "catalog":
            loaded = self.catalog.get(stack)
            for key, value in (vars or {}).items():
                if key in loaded.silo.variables:
                    check_type(loaded.silo.variables[key], value)
                else:
                    raise LifecycleError(
                        f"the silo template of stack '{stack}' declares no variable '{key}';"
                        f" it declares: {', '.join(sorted(loaded.silo.variables)) or 'none'}"
                    )
        source_record = {"kind": "catalog"} if source is None else source.__dict__.copy()
        source_key = source_key or f"catalog:{stack}"
        with self.db.session() as session:
            silo = session.get(Silo, name)
            if silo is not None and silo.status != Status.DESTROYED:
                raise Conflict(
                    f"silo '{name}' already exists ({silo.status}); use `runbot silo update {name}`"
                )
            if silo is None:
                silo = Silo(name=name, stack=stack, stack_source=source_record, vars=vars or {})
            else:
                silo.stack, silo.stack_source, silo.vars = stack, source_record, vars or {}
                silo.desired, silo.status, silo.reason, silo.force_destroy = (
                    "present",
                    "pending",
                    None,
                    False,
                )
                silo.outputs, silo.capacity = {}, None
                _touch(silo, session)
            silo.source_key, silo.owner = source_key, owner
            session.add(silo)
            session.commit()
            return silo

    def update_silo(
        self, name: str, vars: dict[str, Any] | None = None, refresh: bool = True
    ) -> Silo:
        """Re-apply a silo: new vars, a changed template, or a git stack's newest commit."""
        with self.db.session() as session:
            silo = self._live_silo(session, name)
            if vars is not None:
                silo.vars = {**silo.vars, **vars}
            if refresh and silo.stack_source.get("kind") == "git":
                silo.stack_source = {**silo.stack_source, "commit": ""}
            _touch(silo, session)
            session.add(silo)
            session.commit()
            return silo

    def destroy_silo(self, name: str, force: bool = False) -> Silo:
        with self.db.session() as session:
            failed = session.get(Silo, name)
            if failed is not None and failed.status == Status.DESTROY_FAILED:
                _retry_destroy_now(failed, session)  # asking again retries it now
                session.commit()
                return failed
            silo = self._live_silo(session, name)
            live = self._live_environments(session, name)
            if live and not force:
                ids = ", ".join(env.id for env in live[:10])
                raise Conflict(
                    f"silo '{name}' still has {len(live)} live environment(s) ({ids}); destroy them"
                    " first, or pass --force to destroy them and then the silo"
                )
            for env in live:
                if env.status == Status.DESTROY_FAILED:
                    _retry_destroy_now(env, session)
                elif env.desired != Desired.ABSENT:
                    env.desired, env.reason, env.trigger = (
                        Desired.ABSENT,
                        "silo destroyed",
                        "silo-destroy",
                    )
                    _touch(env, session)
                    session.add(env)
            silo.desired, silo.force_destroy = Desired.ABSENT, force
            _touch(silo, session)
            session.add(silo)
            session.commit()
            return silo

    def get_silo(self, name: str) -> Silo:
        with self.db.session() as session:
            silo = session.get(Silo, name)
            if silo is None:
                raise NotFound(f"no silo named '{name}'; `runbot silo list` shows the silos")
            return silo

    def list_silos(self) -> list[Silo]:
        with self.db.session() as session:
            return list(session.exec(select(Silo).order_by(Silo.name)))

    def _live_silo(self, session: Session, name: str) -> Silo:
        silo = session.get(Silo, name)
        if silo is None or silo.status == Status.DESTROYED:
            raise NotFound(f"no live silo named '{name}'; `runbot silo list` shows the silos")
        if silo.desired == Desired.ABSENT:
            raise Conflict(f"silo '{name}' is being destroyed")
        return silo

    @staticmethod
    def _live_environments(session: Any, silo_name: str) -> list[Environment]:
        query = select(Environment).where(
            Environment.silo_name == silo_name, col(Environment.status).in_([s.value for s in LIVE])
        )
        return list(session.exec(query))

    # ----- environments ----------------------------------------------------------------------

    def check_instance_inputs(self, silo: Silo, repo_vars: dict[str, Any]) -> None:
        """Reject, before any apply, an instance that needs a variable nobody provides."""
        if silo.stack_source.get("kind", "catalog") != "catalog":
            return  # checked by the reconciler once the pinned code is fetched
        stack = self.catalog.get(silo.stack)
        silo_outputs = set(stack.silo.outputs) | set(silo.outputs)
        provided = stack.provided_names() | silo_outputs
        refused = refused_repo_vars(repo_vars, stack.repo_vars, provided)
        if refused:
            raise MappingError(refused_message(refused, provided, stack.repo_vars))
        for name, variable in stack.instance.variables.items():
            if name in repo_vars:
                check_type(variable, repo_vars[name])
            elif (
                variable.required
                and name not in RUNBOT_INSTANCE_VARIABLES
                and name not in silo_outputs
            ):
                raise MappingError(
                    f"{variable.file}:{variable.line}: instance variable '{name}' has no default"
                    " and"
                    " nothing provides it: add it under `vars:` in .runbot.yml (or --var with the"
                    " CLI), or give the silo an output of that name"
                )

    def create_environment(
        self,
        silo: str,
        repository: str,
        pr_number: int,
        head_sha: str,
        head_ref: str = "",
        author: str = "",
        vars: dict[str, Any] | None = None,
        trigger: str = "cli",
        installation_id: int | None = None,
        ttl: TTLPolicy | None = None,
        now: datetime | None = None,
        config_sha: str | None = None,
        pool_state: str | None = None,
    ) -> Environment:
        """``pool_state`` `fallback`: made because a claimed warm instance failed to update."""
        if not REPOSITORY.match(repository):
            raise LifecycleError(f"repository '{repository}' is not of the form owner/name")
        if not SHA.match(head_sha):
            raise LifecycleError(f"head SHA '{head_sha}' is not a hexadecimal commit id")
        if pr_number < 0 or pr_number > 10**9:
            raise LifecycleError(f"PR number {pr_number} is out of range")
        now = now or utcnow()
        policy = ttl or TTLPolicy()
        with self.db.session() as session:
            silo_row = self._live_silo(session, silo)
            try:
                self.check_instance_inputs(silo_row, vars or {})
            except StackError as exc:
                raise LifecycleError(str(exc)) from exc
            env = Environment(
                id=new_environment_id(pr_number),
                silo_name=silo_row.name,
                stack=silo_row.stack,
                stack_source=dict(silo_row.stack_source),
                repository=repository,
                pr_number=pr_number,
                installation_id=installation_id,
                author=author,
                head_sha=head_sha,
                head_ref=head_ref,
                vars=vars or {},
                trigger=trigger,
                config_sha=config_sha,
                ttl=policy_record(policy),
                last_activity_at=now,
                created_at=now,
                expires_at=expiry_after_activity(policy, now, now),
                pool_state=pool_state,
            )
            session.add(env)
            try:
                session.commit()
            except IntegrityError:
                # Someone else (a resync, a webhook on another replica) created this PR's
                # environment first: creating is idempotent, so theirs is the answer.
                session.rollback()
                existing = self.live_environment_for(repository, pr_number)
                if existing is None:
                    raise
                return existing
            return env

    def _load_env(self, session: Session, env_id: str) -> Environment:
        env = session.get(Environment, env_id)
        if env is None:
            raise NotFound(f"no environment '{env_id}'; `runbot env list` shows them")
        return env

    def _live_env(self, session: Any, env_id: str) -> Environment:
        env = self._load_env(session, env_id)
        if env.status == Status.DESTROYED or env.desired == Desired.ABSENT:
            raise Conflict(f"environment '{env_id}' is destroyed or being destroyed")
        return env

    def _record_activity(self, env: Environment, now: datetime) -> None:
        env.last_activity_at = now
        env.expires_at = expiry_after_activity(ttl_policy_of(env), env.created_at, now)

    def update_environment(
        self,
        env_id: str,
        head_sha: str | None = None,
        head_ref: str | None = None,
        vars: dict[str, Any] | None = None,
        trigger: str = "cli",
        now: datetime | None = None,
        config_sha: str | None = None,
    ) -> Environment:
        """New SHA or vars: the newest request wins; intermediate ones are never applied."""
        if head_sha is not None and not SHA.match(head_sha):
            raise LifecycleError(f"head SHA '{head_sha}' is not a hexadecimal commit id")
        with self.db.session() as session:
            env = self._live_env(session, env_id)
            if head_sha is not None:
                env.head_sha = head_sha
            if head_ref is not None:
                env.head_ref = head_ref
            if vars is not None:
                env.vars = vars
            if config_sha is not None:
                env.config_sha = config_sha
            env.trigger = trigger
            self._record_activity(env, now or utcnow())
            if env.sleep_reason == "idle":  # a push ends idleness; a command's or budget's
                env.desired, env.slept_at, env.sleep_reason = Desired.PRESENT, None, None
            _touch(env, session)
            session.add(env)
            session.commit()
            return env

    def set_suspended(self, env_id: str, suspended: bool, trigger: str = "cli") -> Environment:
        """`/runbot sleep|wake` and the dashboard: the same bookkeeping as automatic sleep
        (reason ``command``), and asking counts as activity either way."""
        now = utcnow()
        with self.db.session() as session:
            refuse_warm(self._live_env(session, env_id), "put to sleep or woken")
        if suspended:
            self.sleep_by_command(env_id, trigger, now)
        elif not self.wake_up(env_id, trigger, now):
            self.record_traffic({env_id: now})  # already awake: only the activity counts
        return self.get_environment(env_id)

    def rotate_silo_token(self, name: str) -> Silo:
        """A new `runbot_silo_token`: the old one stops verifying now; the re-apply this asks for
        gives the silo (its ingress) the new one."""
        with self.db.session() as session:
            silo = self._live_silo(session, name)
            silo.token_version += 1
            _touch(silo, session)
            session.add(silo)
            session.commit()
            return silo

    def extend(
        self,
        env_id: str,
        by: timedelta,
        trigger: str = "cli",
        now: datetime | None = None,
        *,
        partial: bool = True,
        ceiling: timedelta | None = None,
    ) -> ExtendResult:
        """Push the expiry out, never past the lifetime cap (`ttl.max` from creation, and
        the operator's ``ceiling``, `max_ttl`, if lower).

        With ``partial=False`` a request that the cap would cut short changes nothing (the
        result says ``capped``): a comment asking for 4h must not silently get 10 minutes.
        """
        now = now or utcnow()
        with self.db.session() as session:
            env = self._live_env(session, env_id)
            refuse_warm(env, "extended")
            policy = ttl_policy_of(env)
            if ceiling is not None and ceiling < policy.max:
                policy = dataclasses.replace(policy, max=ceiling)
            result = extend_expiry(policy, env.created_at, now, env.expires_at or now, by)
            if result.capped and not partial:
                return result
            if result.expires_at != env.expires_at:
                env.expires_at = result.expires_at
                env.last_activity_at = now
                env.trigger = trigger
                env.sync_version += 1
                env.updated_at = now
                mark_pull_dirty(session, env.repository, env.pr_number)
                session.add(env)
                session.commit()
            return result

    def reap_if_expired(self, env_id: str, now: datetime) -> bool:
        """Destroy an environment whose expiry has passed, with reason ``expired``.

        One conditional UPDATE: of N scheduler replicas racing on the same row exactly one
        matches (PostgreSQL re-checks the WHERE after the row lock), and an extend committed
        in the meantime moves ``expires_at`` so the row no longer matches at all.
        """
        with self.db.session() as session:
            result = session.exec(
                update(Environment)
                .where(col(Environment.id) == env_id)
                .where(col(Environment.desired) != Desired.ABSENT)
                .where(col(Environment.status) != Status.DESTROYED)
                .where(col(Environment.expires_at) <= now)
                .values(
                    desired=Desired.ABSENT,
                    reason="expired",
                    trigger="ttl",
                    generation=Environment.generation + 1,
                    requested_at=now,
                    next_attempt_at=None,
                    updated_at=now,
                    sync_version=Environment.sync_version + 1,
                )
            )
            if result.rowcount != 1:
                return False
            env = session.get(Environment, env_id)
            assert env is not None
            mark_pull_dirty(session, env.repository, env.pr_number, withdraw_approval=True)
            session.commit()
            return True

    def mark_warned(self, env_id: str, expires_at: datetime, now: datetime) -> bool:
        """Record that the expiry ``expires_at`` has been warned about; True for the one caller
        that did it (the conditional UPDATE makes each expiry warn once across replicas)."""
        with self.db.session() as session:
            result = session.exec(
                update(Environment)
                .where(col(Environment.id) == env_id)
                .where(col(Environment.expires_at) == expires_at)
                .where(col(Environment.warned_for).is_distinct_from(expires_at))
                .where(col(Environment.desired) != Desired.ABSENT)
                .values(
                    warned_for=expires_at,
                    updated_at=now,
                    sync_version=Environment.sync_version + 1,
                )
            )
            if result.rowcount != 1:
                return False
            env = session.get(Environment, env_id)
            assert env is not None
            mark_pull_dirty(session, env.repository, env.pr_number, withdraw_approval=True)
            session.commit()
            return True

    def create_for_pull(
        self, silo: str, values: PullValues, pool_state: str | None = None
    ) -> Environment:
        return self.create_environment(
            silo,
            values.repository,
            values.pr_number,
            values.head_sha,
            values.head_ref,
            values.author,
            dict(values.vars),
            trigger=values.trigger,
            installation_id=values.installation_id,
            ttl=values.ttl,
            config_sha=values.config_sha,
            pool_state=pool_state,
        )

    def redeploy(
        self,
        env_id: str,
        trigger: str = "cli",
        reason: str = "redeploy",
        pool_state: str | None = None,
    ) -> Environment:
        """Start over: a failed or destroyed environment is re-created fresh (new id);
        a live one is destroyed and a fresh one created in its place, with the same values.
        A warm pool instance is the keeper's to remake, not anyone's to redeploy."""
        with self.db.session() as session:
            env = self._load_env(session, env_id)
        refuse_warm(env, "redeployed")
        if env.status not in (Status.DESTROYED,) and env.desired != Desired.ABSENT:
            self.destroy_environment(env.id, reason=reason, trigger=trigger)
        return self.create_for_pull(env.silo_name, PullValues.of(env, trigger), pool_state)

    def retry(self, env_id: str, trigger: str = "cli") -> Environment:
        """Run the desired state again (after a failure, or to re-apply unchanged inputs)."""
        with self.db.session() as session:
            env = self._load_env(session, env_id)
            if env.status == Status.DESTROYED:
                raise Conflict(f"environment '{env_id}' is destroyed; create a new one")
            env.trigger = trigger
            env.attempts = 0
            _touch(env, session)
            session.add(env)
            session.commit()
            return env

    def destroy_environment(
        self, env_id: str, reason: str = "requested", trigger: str = "cli"
    ) -> Environment:
        with self.db.session() as session:
            env = self._load_env(session, env_id)
            if env.desired == Desired.ABSENT:
                # A failed destroy: asking again retries it now.
                if env.status in (Status.FAILED, Status.DESTROY_FAILED):
                    _retry_destroy_now(env, session)
                    session.commit()
                return env
            env.desired, env.reason, env.trigger = Desired.ABSENT, reason, trigger
            _touch(env, session)
            session.add(env)
            session.commit()
            return env

    def get_environment(self, env_id: str) -> Environment:
        with self.db.session() as session:
            return self._load_env(session, env_id)

    def list_environments(
        self, include_destroyed: bool = False, silo: str | None = None
    ) -> list[Environment]:
        with self.db.session() as session:
            query = select(Environment).order_by(col(Environment.created_at).desc())
            if not include_destroyed:
                query = query.where(Environment.status != Status.DESTROYED)
            if silo:
                query = query.where(Environment.silo_name == silo)
            return list(session.exec(query))

    def latest_environment_for(self, repository: str, pr_number: int) -> Environment | None:
        """The PR's newest environment in any state, destroyed ones included."""
        with self.db.session() as session:
            query = (
                select(Environment)
                .where(Environment.repository == repository, Environment.pr_number == pr_number)
                .where(of_a_pr())
                .order_by(col(Environment.created_at).desc())
            )
            return session.exec(query).first()

    def failed_destroys_for(self, repository: str, pr_number: int) -> list[Environment]:
        """The PR's environments whose destroy failed and is being retried."""
        with self.db.session() as session:
            query = select(Environment).where(
                Environment.repository == repository,
                Environment.pr_number == pr_number,
                Environment.status == Status.DESTROY_FAILED,
                of_a_pr(),
            )
            return list(session.exec(query))

    def live_environment_for(self, repository: str, pr_number: int) -> Environment | None:
        """The PR's current environment: not destroyed and not on its way out."""
        with self.db.session() as session:
            query = (
                select(Environment)
                .where(Environment.repository == repository, Environment.pr_number == pr_number)
                .where(
                    Environment.desired != Desired.ABSENT, Environment.status != Status.DESTROYED
                )
                .where(of_a_pr())
                .order_by(col(Environment.created_at).desc())
            )
            return session.exec(query).first()
