"""Issue 18 with issue 17: a warm pool spends money while it waits, so a spent monthly budget
empties it (rather than putting its instances to sleep, where no PR could claim them and the
keeper would count them as there), and a raised budget fills it again.

The real Workers (intent, reconciler with the embedded engine, budget tick, pool keeper) on a
set clock, with a stack that costs 1/h per instance.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from app import clock
from app.clock import ManualClock
from app.db.models import Environment
from app.lifecycle.states import Desired, Status
from tests.apphost import INSTALLATION, REPO
from tests.fakegithub.server import FakeGitHub
from tests.helpers import settled
from tests.test_cost_budget import BudgetHost, budget_host

pytest_plugins = ["tests.fakegithub.pytest_plugin"]
pytestmark = pytest.mark.engine

SILO = "priced-pool"
CONFIG = f"stack: priced\nsilo: {SILO}\nvars: {{hourly: 1, hourly_asleep: 0.1}}\n"
START = datetime(2026, 4, 1, 0, 0, tzinfo=UTC)


@pytest.fixture
async def host(
    tmp_path: Path, fake_github: FakeGitHub, database_url: str
) -> AsyncIterator[BudgetHost]:
    async with budget_host(tmp_path, fake_github, database_url, CONFIG) as host:
        yield host


def warm(host: BudgetHost) -> list[Environment]:
    return host.rt.lifecycle.pool_members(SILO, REPO)


def warm_ready(host: BudgetHost) -> list[Environment]:
    return [e for e in warm(host) if settled(e) and e.status == Status.READY]


async def test_a_spent_budget_empties_the_pool_and_a_raised_one_fills_it(host: BudgetHost) -> None:
    lifecycle = host.rt.lifecycle
    keeper = host.workers.pool
    assert keeper is not None
    with clock.using(ManualClock(START)) as manual:
        assert isinstance(manual, ManualClock)
        lifecycle.create_silo(SILO, "priced", {"pool_size": 2})
        await host.converge(lambda: lifecycle.get_silo(SILO).status == Status.READY)
        # The repository's first PR is created cold, and tells the pool what to make.
        host.fake.add_pull(REPO, 1, "1" * 40, "feature/1", author="alice")
        payload = host.fake.pull_request_event("opened", REPO, 1)
        payload["installation"] = {"id": INSTALLATION, "node_id": "MDIz"}
        assert await host.workers.intent.handle("pull_request", payload)
        assert len(keeper.keep().made) == 2

        def pr_settled() -> bool:
            env = lifecycle.live_environment_for(REPO, 1)
            return env is not None and settled(env)

        await host.converge(lambda: len(warm_ready(host)) == 2 and pr_settled())
        pr_env = lifecycle.live_environment_for(REPO, 1)
        assert pr_env is not None and pr_env.status == Status.READY

        # Three instances at 1/h: after 4 hours, 12 of 10 are spent.
        waiting = sorted(e.id for e in warm_ready(host))
        manual.advance(timedelta(hours=4))
        report = await host.budgets.tick()
        retired = keeper.keep()
        assert sorted(retired.retired) == waiting
        assert retired.made == []
        gone = set(retired.retired)
        await host.converge(
            lambda: all(lifecycle.get_environment(i).status == Status.DESTROYED for i in gone)
        )
        # The budget slept the PR's idle environment, never a warm one (they were retired).
        assert pr_env.id in report.slept and not gone & set(report.slept)
        assert warm(host) == []
        assert keeper.keep().made == [], "nothing is made while the budget is spent"
        for env_id in gone:
            assert lifecycle.get_environment(env_id).reason is not None
            assert "budget" in (lifecycle.get_environment(env_id).reason or "")

        # The operator raises the budget: the next tick fills the pool again.
        host.write_policy(100)
        host.rt.policy.reload()
        assert len(keeper.keep().made) == 2
        await host.converge(lambda: len(warm_ready(host)) == 2)
        assert all(e.desired == Desired.PRESENT for e in warm(host))
