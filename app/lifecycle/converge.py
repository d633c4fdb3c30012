"""The one converge path that serves silos and environments alike.

`Converger.converge` reads the claimed target, plans, lets its kind admit it (or wait), loads
the stack, records a run, runs the engine and saves the outcome; its follow-ups on the silo's
other rows come last. What differs by kind is in `kinds.py`.
"""

from __future__ import annotations

import asyncio
import shutil
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any, Literal

from sqlalchemy import update
from sqlmodel import col, select

from app.db.models import Environment
from app.db.session import Database
from app.engine.executor import Executor
from app.engine.runner import EngineJob
from app.lifecycle.kinds import (
    EnvironmentKind,
    FollowUp,
    Kind,
    Outcome,
    SiloKind,
    Subject,
    Wait,
)
from app.lifecycle.lease import Claim, Lease
from app.lifecycle.records import drop_record, record_apply, recorded_workspace
from app.lifecycle.runs import LineEcho, PhaseEcho, Runs
from app.lifecycle.scrub import scrub_run_log
from app.lifecycle.silotoken import TOKEN_VARIABLE, SiloTokens
from app.lifecycle.states import Action, Desired, Status, plan_action, status_during_apply
from app.source.fetch import SourceProvider, SourceRefused, SourceUnavailable
from app.stacks.catalog import Catalog, Stack, StackError, StackSource, load_stack
from app.stacks.git import fetch_git_stack
from app.stacks.gitrun import GitLimits

Operation = Literal["apply", "destroy"]
SOURCE_VARIABLE = "runbot_source_dir"
NO_SOURCE_NOTE = (
    "runbot: note: the template declares runbot_source_dir but runbot has no source to give"
    ' it (local mode without RUNBOT_LOCAL_REPO), so it is ""'
)


def _recordable(
    inputs: dict[str, Any], sources: tuple[Path, ...], redact: Iterable[str]
) -> tuple[dict[str, Any], list[str]]:
    """What a destroy gets (the orphan sweep's too): no source, as in `inputs()`, and no silo
    token (derived afresh, never stored; a destroy needs none), with the secret names."""
    kept = {**inputs, SOURCE_VARIABLE: ""} if sources else dict(inputs)
    if TOKEN_VARIABLE in kept:
        kept[TOKEN_VARIABLE] = ""
    secret = list(redact)
    return kept, sorted(k for k, v in kept.items() if v in secret and v != "")


class Converger:
    """Drives one claimed target to its desired state, writing through the claim's lease."""

    def __init__(
        self,
        db: Database,
        catalog: Catalog,
        runner: Executor,
        data_dir: Path,
        lease: Lease,
        *,
        default_capacity: int,
        more_work: Callable[[], None],
        git_limits: Callable[[], GitLimits] = GitLimits,
        echo_line: LineEcho | None = None,
        echo_phase: PhaseEcho | None = None,
        source: SourceProvider | None = None,
        silo_tokens: SiloTokens | None = None,
    ) -> None:
        self.db = db
        self.source = source  # the PR's head commit, for templates declaring runbot_source_dir
        self.catalog = catalog
        self.runner = runner
        self.data_dir = data_dir
        self.lease = lease
        self.more_work = more_work  # wakes the claim loop: follow-ups made targets claimable
        self.git_limits = git_limits  # read per fetch: the policy's hosts follow its reloads
        self.runs = Runs(db, runner, lease, echo_line, echo_phase)
        self.kinds: dict[str, Kind[Any]] = {
            "silo": SiloKind(default_capacity, silo_tokens),
            "environment": EnvironmentKind(db, default_capacity),
        }

    async def converge(self, claim: Claim) -> None:
        """Plan, admit or wait, run the engine, conclude: the same steps for every kind."""
        kind = self.kinds[claim.kind]
        with self.db.session() as session:
            subject = kind.read(session, claim.id)
        action = plan_action(subject.target.desired, subject.target.status)
        if action is Action.NONE:
            self.lease.save(
                claim,
                lambda row: setattr(row, "observed_generation", claim.generation),
                release=True,
            )
            return
        if action is Action.FORGET:
            self._conclude(claim, subject, kind.forgotten(subject, claim))
            return
        admitted = kind.admit(subject, action)
        if isinstance(admitted, Wait):
            self.lease.release_later(claim, admitted.delay, admitted.status, admitted.reason)
            return
        subject, target = admitted, admitted.target
        operation: Operation = "apply" if action is Action.APPLY else "destroy"
        name = kind.engine_target(target)
        workspace = self.data_dir / "workspace" / name
        try:
            # Off the event loop: a git fetch may take minutes, and intake, the dashboard and
            # lease heartbeats share this loop.
            stack, commit = await asyncio.to_thread(
                self._load_stack, target.stack, target.stack_source
            )
            template, inputs = kind.inputs(stack, subject, workspace)
        except StackError as exc:
            # A destroy whose code did not load is a failed destroy: retried, nothing leaks.
            self.lease.fail(claim, str(exc), None, retry=operation == "destroy")
            return
        sources: tuple[Path, ...] = ()
        commit_of = kind.source_commit(target)
        wants_source = operation == "apply" and SOURCE_VARIABLE in template.variables
        if wants_source and commit_of is not None and self.source is not None:
            fetched = await self._fetch_source(claim, target, *commit_of)
            if fetched is None:
                return
            inputs[SOURCE_VARIABLE], sources = str(fetched), (fetched,)
        busy = status_during_apply(target.status) if operation == "apply" else Status.DESTROYING
        # A retried destroy drops the failure it retries: a success must not show it.
        clear_reason = (
            busy is not Status.DESTROYING
            or not kind.keeps_reason_while_destroying
            or target.status == Status.DESTROY_FAILED
        )

        def begin(row: Any) -> None:
            row.status = busy
            if clear_reason:
                row.reason = None
            if commit:
                row.stack_source = {**row.stack_source, "commit": commit}

        job = EngineJob(
            target=name,
            template_dir=template.path,
            operation=operation,
            variables=inputs,
            declared_backend=template.backend,
            redact=kind.redact(subject),
            # The silo's workspace holds what its instances share (the local stack's servers).
            workspaces=self._workspaces(subject, workspace),
            sources=sources,
            silo=subject.silo.name,
        )
        trigger, head_sha = kind.origin(target)
        config_sha = getattr(target, "config_sha", None)  # environments only
        run = self.runs.new(claim, operation, trigger, head_sha, commit, config_sha)
        self.lease.save(claim, begin, start_run=run)
        if operation == "apply":
            pinned = {**target.stack_source, "commit": commit} if commit else target.stack_source
            record_apply(
                self.db,
                name,
                claim.kind,
                claim.id,
                target.stack,
                pinned,
                *_recordable(inputs, sources, job.redact),
                template.backend,
            )
        for path in job.workspaces:
            path.mkdir(parents=True, exist_ok=True)
        outputs, error, _tail = await self.runs.execute(claim, run, kind.label(target), job)
        if wants_source and commit_of is not None and self.source is None:
            self.runs.note(run, NO_SOURCE_NOTE)  # after the run: the log's lines come first
        scrub_run_log(self.db, run.id, outputs)  # before the outcome shows: comments quote it
        if error is not None:
            self.lease.fail(claim, error, run.id, retry=operation == "destroy")
            return
        if operation == "apply":
            assert outputs is not None
            for warning in kind.output_warnings(outputs):
                self.runs.note(run, warning)
            self._conclude(claim, subject, kind.applied(subject, claim, outputs))
        else:
            self.runner.forget(name)
            shutil.rmtree(workspace, ignore_errors=True)
            drop_record(self.db, name)
            self._conclude(claim, subject, kind.destroyed(subject, claim))

    async def _fetch_source(
        self, claim: Claim, target: Any, repository: str, sha: str
    ) -> Path | None:
        """The commit's files, under the claim's heartbeat (a download may outlast the lease);
        None once the claim was failed (a refused tarball) or released to try later."""
        assert self.source is not None
        cancel = asyncio.Event()
        heartbeat = asyncio.create_task(self.lease.heartbeat(claim, cancel))
        try:
            return await self.source.checkout(repository, sha)
        except SourceRefused as exc:
            self.lease.fail(claim, f"runbot did not fetch the PR's source: {exc}", None)
        except SourceUnavailable as exc:
            self.lease.release_later(
                claim,
                exc.retry_after,
                target.status,
                f"waiting to fetch the PR's source: {exc}",
            )
        finally:
            heartbeat.cancel()
        return None

    def _workspaces(self, subject: Subject[Any], own: Path) -> tuple[Path, ...]:
        """What a sandboxed run may write besides its working copy: its own workspace and its
        silo's, where the silo's apply recorded it (another replica's data dir, perhaps)."""
        name = f"silo-{subject.silo.name}"
        silo = recorded_workspace(self.db, name) or self.data_dir / "workspace" / name
        if silo != own and not silo.is_dir() and not silo.is_relative_to(self.data_dir):
            return (own,)  # another host's path: nothing of it to bind here
        return tuple(dict.fromkeys((own, silo)))

    def _conclude(self, claim: Claim, subject: Subject[Any], outcome: Outcome) -> None:
        """The last save releases the claim; only then do the silo's other rows move."""
        self.lease.save(claim, outcome.mutate, release=True)
        for follow_up in outcome.follow_ups:
            if follow_up is FollowUp.REFRESH_INSTANCES:
                self._refresh_instances(subject.silo.name)
            else:
                self._kick_queued(subject.silo.name)

    def _load_stack(self, name: str, source: dict[str, Any]) -> tuple[Stack, str]:
        return load_pinned_stack(self.catalog, self.data_dir, name, source, self.git_limits())

    def _refresh_instances(self, silo_name: str) -> None:
        """Silo outputs feed instance inputs: re-apply live instances when they change."""
        with self.db.session() as session:
            for env in session.exec(
                select(Environment).where(
                    Environment.silo_name == silo_name,
                    col(Environment.status).in_([Status.READY.value, Status.SLEEPING.value]),
                    Environment.desired != Desired.ABSENT,
                )
            ):
                env.generation += 1
                env.trigger = "silo-update"
                session.add(env)
            session.commit()
        self.more_work()

    def _kick_queued(self, silo_name: str) -> None:
        with self.db.session() as session:
            session.exec(
                update(Environment)
                .where(
                    col(Environment.silo_name) == silo_name,
                    col(Environment.status) == Status.QUEUED,
                )
                .values(next_attempt_at=None)
            )
            session.commit()
        self.more_work()


def load_pinned_stack(
    catalog: Catalog, data_dir: Path, name: str, source: dict[str, Any], limits: GitLimits
) -> tuple[Stack, str]:
    """The stack's code, pinned to the recorded commit for git stacks."""
    kind = source.get("kind", "catalog")
    if kind == "catalog":
        return catalog.get(name), ""  # parsed once per template change
    if kind == "git":
        path, commit = fetch_git_stack(
            source["url"],
            source.get("ref", ""),
            source.get("path", ""),
            data_dir / "stacks-cache",
            env=None,
            commit=source.get("commit") or None,
            limits=limits,
        )
        return load_stack(
            name,
            path,
            StackSource(
                kind="git",
                url=source["url"],
                ref=source.get("ref", ""),
                path=source.get("path", ""),
                commit=commit,
            ),
        ), commit
    if kind == "repo":
        # A stack stored in the PR's repository, fetched at the config's commit into `url`.
        source_record = StackSource(
            kind="repo",
            url=source["url"],
            path=source.get("path", ""),
            commit=source.get("commit", ""),
        )
        return load_stack(name, Path(source["url"]), source_record), source_record.commit
    raise StackError(f"unknown stack source kind '{kind}'")
