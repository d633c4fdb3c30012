"""Money in the status comment, and budgets: the real Workers (intent, reconciler with the
embedded engine, notifier, budget tick) against the fake GitHub, on a set clock.

One month of one repository with `budget: {monthly: 10}` and a stack that costs 1/h: the
comment shows the cost; idle time edits nothing; at 80% the comment warns; at 100% the idle
environment sleeps and a new PR waits with "budget reached; it resets on the 1st"; raising
the budget in the policy file and reloading lets it go on.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from app import clock
from app.clock import ManualClock
from app.db import budgets
from app.db.models import Environment
from app.github.appgateway import GitHubAppGateway
from app.github.comment import MARKER
from app.lifecycle.service import pull_id
from app.lifecycle.states import Desired, HoldKind, Status
from app.runtime import build_runtime
from app.workers import Workers
from tests.apphost import INSTALLATION, REPO, app_settings, seed_repo
from tests.fakegithub.server import FakeGitHub
from tests.helpers import settled

pytest_plugins = ["tests.fakegithub.pytest_plugin"]
pytestmark = pytest.mark.engine

STACKS = Path(__file__).parent / "fixtures" / "stacks-cost"
CONFIG = "stack: priced\nsilo: priced-budget\nvars: {hourly: 1, hourly_asleep: 0.1}\n"
START = datetime(2026, 4, 1, 0, 0, tzinfo=UTC)


def policy_text(monthly: float) -> str:
    return f'repos:\n  "{REPO}":\n    budget: {{monthly: {monthly}}}\n'


class BudgetHost:
    def __init__(
        self, tmp_path: Path, fake: FakeGitHub, database_url: str, config: str = CONFIG
    ) -> None:
        self.fake = fake
        self.policy = tmp_path / "policy.yml"
        self.write_policy(10)
        settings = app_settings(
            tmp_path,
            fake,
            database_url,
            templates_dir=STACKS,
            policy_file=self.policy,
            currency="EUR",
        )
        self.rt = build_runtime(settings)
        self.gateway = GitHubAppGateway(settings, min_write_interval=0.0)
        self.workers = Workers.build(self.rt, gateway=self.gateway)
        assert self.workers.budgets is not None
        self.budgets = self.workers.budgets
        seed_repo(fake, config)

    def write_policy(self, monthly: float) -> None:
        temporary = self.policy.with_suffix(".tmp")
        temporary.write_text(policy_text(monthly))
        os.replace(temporary, self.policy)

    async def open_pull(self, number: int) -> None:
        self.fake.add_pull(REPO, number, f"{number:040x}", f"feature/{number}", author="alice")
        payload = self.fake.pull_request_event("opened", REPO, number)
        payload["installation"] = {"id": INSTALLATION, "node_id": "MDIz"}
        assert await self.workers.intent.handle("pull_request", payload)

    async def converge(self, check: Callable[[], bool]) -> None:
        await self.workers.reconciler.drain(check, timeout=120, poll=0.05)

    async def settle(self, number: int) -> Environment:
        def done() -> bool:
            env = self.rt.lifecycle.live_environment_for(REPO, number)
            return env is not None and settled(env)

        await self.converge(done)
        env = self.rt.lifecycle.live_environment_for(REPO, number)
        assert env is not None
        return env

    async def notify(self) -> None:
        while await self.workers.notifier.sync_one():
            pass

    def status(self, number: int) -> str:
        [body] = [
            c["body"] for c in self.fake.comments(REPO, number) if c["body"].startswith(MARKER)
        ]
        return body

    def comment_writes(self) -> int:
        return len(self.fake.requests_for("POST", f"/repos/{REPO}/issues/*/comments")) + len(
            self.fake.requests_for("PATCH", f"/repos/{REPO}/issues/comments/*")
        )

    def hold_of(self, number: int) -> str | None:
        with self.rt.db.session() as session:
            from app.db.models import PullRequest

            pull = session.get(PullRequest, pull_id(REPO, number))
            assert pull is not None
            return pull.hold_kind


@contextlib.asynccontextmanager
async def budget_host(
    tmp_path: Path, fake: FakeGitHub, database_url: str, config: str = CONFIG
) -> AsyncIterator[BudgetHost]:
    host = BudgetHost(tmp_path, fake, database_url, config)
    try:
        yield host
    finally:
        await host.gateway.aclose()
        host.rt.db.dispose()


@pytest.fixture
async def host(
    tmp_path: Path, fake_github: FakeGitHub, database_url: str
) -> AsyncIterator[BudgetHost]:
    async with budget_host(tmp_path, fake_github, database_url) as host:
        yield host


async def test_money_in_the_comment_and_a_budget_over_a_month(host: BudgetHost) -> None:
    with clock.using(ManualClock(START)) as manual:
        assert isinstance(manual, ManualClock)
        await host.open_pull(1)
        env = await host.settle(1)
        assert env.status == Status.READY
        manual.advance(timedelta(hours=2))
        # A push: the comment is rewritten anyway, and shows the money as of then.
        host.rt.lifecycle.update_environment(env.id, head_sha="b" * 40)
        env = await host.settle(1)
        await host.notify()
        assert "≈ €2.00 so far · €1.00/h" in host.status(1)
        assert "monthly budget" not in host.status(1)

        # Idle hours: ticks and notifier passes write nothing to GitHub.
        writes = host.comment_writes()
        for _ in range(3):
            manual.advance(timedelta(hours=1))
            await host.budgets.tick()
            await host.workers.intent.resync()
            await host.notify()
        assert host.comment_writes() == writes
        assert "≈ €2.00 so far" in host.status(1)

        # 8.5 of 10 spent: the level changed, so the comment is rendered again with a warning.
        manual.advance(timedelta(hours=3, minutes=30))
        report = await host.budgets.tick()
        assert report.changed == (("repository", REPO),) and report.slept == ()
        await host.notify()
        assert host.comment_writes() == writes + 1
        assert f"80% of the monthly budget of repository {REPO} (€10.00) is spent" in (
            host.status(1)
        )
        await host.budgets.tick()
        await host.notify()
        assert host.comment_writes() == writes + 1, "the same level edits nothing"

        # 10.5 of 10: the idle environment sleeps (reason budget), at its asleep rate.
        manual.advance(timedelta(hours=2))
        report = await host.budgets.tick()
        assert report.slept == (env.id,)
        env = await host.settle(1)
        assert env.status == Status.SLEEPING and env.sleep_reason == "budget"
        assert env.desired == Desired.SUSPENDED
        await host.notify()
        assert "is spent: new environments wait and idle ones sleep" in host.status(1)

        # A new PR waits, and says why.
        await host.open_pull(2)
        assert host.rt.lifecycle.live_environment_for(REPO, 2) is None
        assert host.hold_of(2) == HoldKind.BUDGET
        await host.notify()
        assert "budget reached; it resets on the 1st" in host.status(2)

        # The operator raises the budget; on reload the held PR is decided again and proceeds.
        host.write_policy(100)
        host.rt.policy.reload()
        for _ in range(100):
            if host.rt.lifecycle.live_environment_for(REPO, 2) is not None:
                break
            await asyncio.sleep(0.05)
        assert host.hold_of(2) is None
        env2 = await host.settle(2)
        assert env2.status == Status.READY

        # The budget resets on the 1st (UTC): nothing of April counts in May.
        with host.rt.db.session() as session:
            april = budgets.levels(session, host.rt.policy.current, clock.now())
            may = budgets.levels(
                session, host.rt.policy.current, datetime(2026, 5, 1, 0, 1, tzinfo=UTC)
            )
        assert april.by_scope[("repository", REPO)] == budgets.Level.OK  # 100 now
        assert may.by_scope[("repository", REPO)] == budgets.Level.OK


async def test_no_cost_output_shows_no_cost_line(
    tmp_path: Path, fake_github: FakeGitHub, database_url: str
) -> None:
    """A stack that outputs no cost gets no cost row (and no budget warning without spend)."""
    host = BudgetHost(tmp_path, fake_github, database_url)
    try:
        host.fake.add_repo(
            REPO,
            files={
                "main": {
                    ".runbot.yml": "stack: priced\nsilo: free\n"
                    "vars: {hourly: null, hourly_asleep: null}\n"
                }
            },
        )
        with clock.using(ManualClock(START)):
            await host.open_pull(3)
            await host.settle(3)
            await host.notify()
            body = host.status(3)
        assert "**Cost**" not in body and "so far" not in body
    finally:
        await host.gateway.aclose()
        host.rt.db.dispose()
