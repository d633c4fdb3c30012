"""What differs between converging a silo and an environment, as one small strategy per kind.

A `Kind` reads what its target needs, says whether the target may run now (`Wait` if not),
resolves its template's inputs and builds its final row writes. It returns values (`Subject`,
`Wait`, `Outcome` with `FollowUp`s) that the one converge path (`converge.py`) applies.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from enum import Enum
from pathlib import Path
from typing import Any, Generic, TypeVar

from sqlalchemy import func
from sqlalchemy.exc import IntegrityError
from sqlmodel import Session, col, select

from app.cost.rates import rate_warnings
from app.db.models import Environment, Silo, utcnow
from app.db.session import Database
from app.lifecycle.lease import Claim, Mutate
from app.lifecycle.outputs import plain_values, public_values, secret_values, sensitive_values
from app.lifecycle.silotoken import API_URL_VARIABLE, TOKEN_VARIABLE, SiloTokens
from app.lifecycle.states import LIVE, Action, Desired, Status, status_after_apply
from app.links import safe_link
from app.stacks.mapping import instance_inputs, silo_inputs
from app.stacks.model import Stack, Template

T = TypeVar("T", Silo, Environment)


@dataclass(frozen=True)
class Subject(Generic[T]):
    """What a converge reads with the claimed target."""

    target: T
    silo: Silo  # the silo itself, or the environment's silo
    live: int = 0  # a silo's environments that are not destroyed yet


@dataclass(frozen=True)
class Wait:
    """Not now: show `status` with `reason`, release the claim, look again after `delay` s."""

    delay: float
    status: str
    reason: str


class FollowUp(Enum):
    """Work for the silo's other rows, done after the claimed row's last save."""

    REFRESH_INSTANCES = "refresh-instances"  # silo outputs feed instance inputs: re-apply
    KICK_QUEUED = "kick-queued"  # a slot freed or the silo got ready: queued ones try now


@dataclass(frozen=True)
class Outcome:
    """The claimed row's last write in this converge, and what follows it."""

    mutate: Mutate
    follow_ups: tuple[FollowUp, ...] = ()


class Kind(ABC, Generic[T]):
    """What differs between converging a silo and an environment; the path itself is shared."""

    # An environment's teardown reason ("expired", "closed") stays visible while it goes.
    keeps_reason_while_destroying: bool = False

    @abstractmethod
    def read(self, session: Session, key: str) -> Subject[T]: ...

    @abstractmethod
    def admit(self, subject: Subject[T], action: Action) -> Subject[T] | Wait:
        """The subject to run the engine for, or what it waits for first."""

    @abstractmethod
    def engine_target(self, target: T) -> str:
        """The engine's name for the target, which is also its workspace's."""

    @abstractmethod
    def label(self, target: T) -> str:
        """How echoed lines and phases name the target."""

    @abstractmethod
    def origin(self, target: T) -> tuple[str, str | None]:
        """The run's (trigger, head sha)."""

    @abstractmethod
    def inputs(
        self, stack: Stack, subject: Subject[T], workspace: Path
    ) -> tuple[Template, dict[str, Any]]:
        """The stack's template for this kind and its inputs; StackError if they do not resolve."""

    def source_commit(self, target: T) -> tuple[str, str] | None:
        """The (repository, commit) whose files `runbot_source_dir` holds; None: no source."""
        return None

    @abstractmethod
    def redact(self, subject: Subject[T]) -> list[str]:
        """Secret values to scrub from the run's log."""

    @abstractmethod
    def forgotten(self, subject: Subject[T], claim: Claim) -> Outcome:
        """Desired absent and nothing was ever applied: destroyed without an engine run."""

    @abstractmethod
    def applied(self, subject: Subject[T], claim: Claim, outputs: dict[str, Any]) -> Outcome: ...

    def output_warnings(self, outputs: dict[str, Any]) -> list[str]:
        """Lines for the run's log about outputs runbot would not use as they are."""
        return []

    @abstractmethod
    def destroyed(self, subject: Subject[T], claim: Claim) -> Outcome: ...


class SiloKind(Kind[Silo]):
    def __init__(self, default_capacity: int, tokens: SiloTokens | None = None) -> None:
        self.default_capacity = default_capacity
        self.tokens = tokens  # None: runbot_api_url / runbot_silo_token keep their defaults

    def read(self, session: Session, key: str) -> Subject[Silo]:
        silo = session.get(Silo, key)
        assert silo is not None
        live = session.exec(
            select(func.count())
            .select_from(Environment)
            .where(
                Environment.silo_name == silo.name,
                col(Environment.status).in_([s.value for s in LIVE]),
            )
        ).one()
        return Subject(silo, silo, live)

    def admit(self, subject: Subject[Silo], action: Action) -> Subject[Silo] | Wait:
        if action is Action.DESTROY and subject.live:
            return Wait(
                2.0,
                subject.target.status,
                f"waiting for {subject.live} environment(s) to be destroyed first",
            )
        return subject

    def engine_target(self, target: Silo) -> str:
        return f"silo-{target.name}"

    def label(self, target: Silo) -> str:
        return f"silo {target.name}"

    def origin(self, target: Silo) -> tuple[str, str | None]:
        return "cli", None

    def inputs(
        self, stack: Stack, subject: Subject[Silo], workspace: Path
    ) -> tuple[Template, dict[str, Any]]:
        silo = subject.target
        runbot: dict[str, Any] = {
            "runbot_silo_name": silo.name,
            "runbot_workspace_dir": str(workspace),
        }
        secret: dict[str, Any] = {}
        declared = stack.silo.variables
        if self.tokens is not None and API_URL_VARIABLE in declared:
            runbot[API_URL_VARIABLE] = self.tokens.api_url
        if self.tokens is not None and TOKEN_VARIABLE in declared:
            secret[TOKEN_VARIABLE] = self.tokens.token(silo.name, silo.token_version)
        return stack.silo, silo_inputs(stack.silo, runbot, silo.vars, secret)

    def redact(self, subject: Subject[Silo]) -> list[str]:
        silo = subject.target
        token = [self.tokens.token(silo.name, silo.token_version)] if self.tokens else []
        return [*sensitive_values(silo.outputs), *token]

    def forgotten(self, subject: Subject[Silo], claim: Claim) -> Outcome:
        def forget(row: Silo) -> None:
            row.status, row.observed_generation = Status.DESTROYED, claim.generation

        return Outcome(forget)

    def applied(self, subject: Subject[Silo], claim: Claim, outputs: dict[str, Any]) -> Outcome:
        before = subject.target.outputs
        changed = public_values(outputs) != public_values(before) or secret_values(
            outputs
        ) != secret_values(before)

        def done(row: Silo) -> None:
            row.status, row.outputs, row.observed_generation = (
                Status.READY,
                outputs,
                claim.generation,
            )
            capacity = outputs.get("runbot_capacity", {}).get("value")
            row.capacity = (
                int(capacity)
                if isinstance(capacity, int | float | str) and str(capacity).isdigit()
                else self.default_capacity
            )
            row.reason, row.next_attempt_at = None, None

        refresh = (FollowUp.REFRESH_INSTANCES,) if changed and before else ()
        return Outcome(done, (*refresh, FollowUp.KICK_QUEUED))

    def destroyed(self, subject: Subject[Silo], claim: Claim) -> Outcome:
        def gone(row: Silo) -> None:
            row.status, row.outputs, row.capacity = Status.DESTROYED, {}, None
            row.observed_generation, row.reason = claim.generation, None

        return Outcome(gone)


class EnvironmentKind(Kind[Environment]):
    keeps_reason_while_destroying = True

    def __init__(self, db: Database, default_capacity: int) -> None:
        self.db = db
        self.default_capacity = default_capacity

    def read(self, session: Session, key: str) -> Subject[Environment]:
        env = session.get(Environment, key)
        assert env is not None
        silo = session.get(Silo, env.silo_name)
        assert silo is not None
        return Subject(env, silo)

    def admit(self, subject: Subject[Environment], action: Action) -> Subject[Environment] | Wait:
        """An apply waits for a usable silo, then for a free slot in it (reserved here)."""
        if action is not Action.APPLY:
            return subject
        env, silo = subject.target, subject.silo
        if silo.status != Status.READY or silo.desired == Desired.ABSENT:
            why = f"silo '{silo.name}' is {silo.status}"
            if silo.status == Status.FAILED:
                why += f": {silo.reason} (fix it, then `runbot silo update {silo.name}`)"
            return Wait(2.0, _queued_or_same(env), f"waiting: {why}")
        if env.slot is None and self._allocate_slot(env, silo) is None:
            capacity = silo.capacity or self.default_capacity
            return Wait(
                5.0,
                _queued_or_same(env),
                f"silo '{silo.name}' is full ({capacity}/{capacity} slots in use);"
                " it starts when a slot frees",
            )
        with self.db.session() as session:
            fresh = session.get(Environment, env.id)
            assert fresh is not None
        return Subject(fresh, silo)

    def _allocate_slot(self, env: Environment, silo: Silo) -> int | None:
        capacity = silo.capacity or self.default_capacity
        with self.db.session() as session:
            used = set(
                session.exec(
                    select(Environment.slot).where(
                        Environment.silo_name == silo.name, col(Environment.slot).is_not(None)
                    )
                )
            )
            free = next((slot for slot in range(capacity) if slot not in used), None)
            if free is None:
                return None
            row = session.get(Environment, env.id)
            assert row is not None
            row.slot = free
            session.add(row)
            try:
                session.commit()
            except IntegrityError:  # another worker took it in the meantime
                session.rollback()
                return None
            return free

    def engine_target(self, target: Environment) -> str:
        return f"env-{target.id}"

    def label(self, target: Environment) -> str:
        return target.id

    def origin(self, target: Environment) -> tuple[str, str | None]:
        return target.trigger, target.head_sha

    def inputs(
        self, stack: Stack, subject: Subject[Environment], workspace: Path
    ) -> tuple[Template, dict[str, Any]]:
        env, silo = subject.target, subject.silo
        runbot = {
            "runbot_instance_id": env.id,
            "runbot_slot": env.slot if env.slot is not None else 0,
            "runbot_pr_number": env.pr_number,
            "runbot_head_sha": env.head_sha,
            "runbot_head_ref": env.head_ref,
            "runbot_repository": env.repository,
            "runbot_suspended": env.desired == Desired.SUSPENDED,
            "runbot_workspace_dir": str(workspace),
            # The head commit's files, read-only: filled in by the converge when the template
            # declares it (the fetch costs a download); "" for destroys and without a source.
            "runbot_source_dir": "",
        }
        inputs = instance_inputs(
            stack.instance,
            runbot,
            env.vars,
            plain_values(silo.outputs),
            settable=stack.repo_vars,
            provided=stack.provided_names(),
        )
        return stack.instance, inputs

    def source_commit(self, target: Environment) -> tuple[str, str] | None:
        return target.repository, target.head_sha

    def redact(self, subject: Subject[Environment]) -> list[str]:
        return [*sensitive_values(subject.silo.outputs), *sensitive_values(subject.target.outputs)]

    def forgotten(self, subject: Subject[Environment], claim: Claim) -> Outcome:
        def forget(row: Environment) -> None:
            row.status, row.slot, row.url = Status.DESTROYED, None, None
            row.destroyed_at, row.observed_generation = utcnow(), claim.generation

        return Outcome(forget, (FollowUp.KICK_QUEUED,))

    def output_warnings(self, outputs: dict[str, Any]) -> list[str]:
        return [*rate_warnings(outputs), *self._url_warnings(outputs)]

    @staticmethod
    def _url_warnings(outputs: dict[str, Any]) -> list[str]:
        url = outputs.get("url", {}).get("value")
        if url is None or outputs["url"].get("sensitive"):
            return []
        if isinstance(url, str) and safe_link(url) is not None:
            return []
        return [
            "runbot: warning: the output `url` is not an http(s) URL, so runbot shows no link"
            " (not in the comment, the dashboard, the API or the deployment); make the"
            " instance template output `https://...` or `http://...`"
        ]

    def applied(
        self, subject: Subject[Environment], claim: Claim, outputs: dict[str, Any]
    ) -> Outcome:
        head_sha, desired = subject.target.head_sha, subject.target.desired
        url = outputs.get("url", {}).get("value")

        def done(row: Environment) -> None:
            row.status = status_after_apply(desired)
            row.outputs, row.deployed_sha, row.observed_generation = (
                outputs,
                head_sha,
                claim.generation,
            )
            shown = isinstance(url, str) and not outputs["url"].get("sensitive") and safe_link(url)
            row.url = url if shown else None
            row.attempts = 0
            if row.pool_state == "claiming" and row.generation == claim.generation:
                row.pool_state = "claimed"  # the PR's values are applied: a claim that held
            # A newer change that arrived during this run may carry a "wait until the
            # pushes stop" time (intent's burst coalescing); keep it. Anything else in
            # next_attempt_at was a retry delay, now spent.
            if (
                row.generation == claim.generation
                or row.next_attempt_at is None
                or row.next_attempt_at <= utcnow()
            ):
                row.next_attempt_at = None

        return Outcome(done)

    def destroyed(self, subject: Subject[Environment], claim: Claim) -> Outcome:
        def gone(row: Environment) -> None:
            row.status, row.slot, row.url, row.outputs = Status.DESTROYED, None, None, {}
            row.destroyed_at, row.observed_generation, row.attempts = (
                utcnow(),
                claim.generation,
                0,
            )

        return Outcome(gone, (FollowUp.KICK_QUEUED,))


def _queued_or_same(env: Environment) -> str:
    return Status.QUEUED if env.status in (Status.PENDING, Status.QUEUED) else env.status
