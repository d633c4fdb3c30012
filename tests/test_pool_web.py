"""Issue 18: warm-pool instances in the API, the dashboard, /metrics and usage, over real HTTP.

The first test seeds the rows on a set clock (no engine) and claims one instance through the
real `claim_warm`, so hours and money split at the claim can be checked to the cent. The
second runs the pooled fixture stack under a real `runbot serve`: the keeper fills the pool,
a PR claims an instance, an operator's destroy is refilled.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest

from app import clock
from app.clock import ManualClock
from app.db.models import Environment, WarmPool
from app.lifecycle.pool import PullValues
from app.server import create_app
from app.ttl.policy import TTLPolicy
from tests.apphost import INSTALLATION, REPO
from tests.fakegithub.server import FakeGitHub
from tests.helpers import wait_for
from tests.test_pool import live, open_pull, pooled, ready_with, warm_ready
from tests.test_web_api import API_TOKEN, OTHER, READER, WRITER, readers_and_writers
from tests.test_web_metrics import samples, value
from tests.webtools import WebServer, csrf_of, seed_env, seed_silo, sign_in

pytest_plugins = ["tests.fakegithub.pytest_plugin"]

START = datetime(2026, 6, 1, 8, 0, tzinfo=UTC)
REFUSED = ("extend", "sleep", "wake", "redeploy")


def priced(hourly: float) -> dict[str, dict[str, object]]:
    return {"runbot_hourly_cost": {"value": hourly, "sensitive": False}}


def warm(env_id: str, repository: str = REPO) -> Environment:
    """An unclaimed instance as the keeper makes it, applied and ready."""
    return Environment(
        id=env_id,
        silo_name="pool",
        stack="local",
        repository=repository,
        pr_number=0,
        installation_id=INSTALLATION,
        head_sha="c" * 40,
        head_ref="main",
        status="ready",
        slot=int(env_id[-1]),
        outputs=priced(0.5),
        trigger="pool",
        pool_state="warm",
        pool_key="k",
        created_at=START,
        generation=1,
        observed_generation=1,
    )


@dataclass
class Site:
    server: WebServer
    fake: FakeGitHub
    clock: ManualClock

    @property
    def runtime(self) -> Any:
        return self.server.app.state.runtime

    def token(self) -> httpx.Client:
        headers = {"Authorization": f"Bearer {API_TOKEN}"}
        return httpx.Client(base_url=self.server.url, headers=headers, trust_env=False, timeout=20)

    def user(self, login: str) -> httpx.Client:
        self.fake.oauth_login = login
        return sign_in(self.server.url)

    def row(self, env_id: str) -> Environment:
        return self.runtime.lifecycle.get_environment(env_id)  # type: ignore[no-any-return]


@pytest.fixture
def site(tmp_path: Path, fake_github: FakeGitHub, database_url: str) -> Iterator[Site]:
    """Two warm instances of REPO's pool (0.5 an hour each) from 08:00 and a PR's environment;
    at 10:00 PR 5 claims the older instance; the clock stops at 13:00."""
    fake = fake_github
    port, settings = readers_and_writers(tmp_path, fake, database_url)
    with clock.using(ManualClock(START)) as manual:
        assert isinstance(manual, ManualClock)
        app = create_app(settings, background=False)
        runtime = app.state.runtime
        seed_silo(runtime.db, "pool", {})
        with runtime.db.session() as session:
            session.add(WarmPool(silo_name="pool", repository=REPO, config_sha="c" * 40, size=2))
            session.add(WarmPool(silo_name="pool", repository=OTHER, size=1))
            session.add_all([warm("warm-aaaaaaa1"), warm("warm-bbbbbbb2")])
            session.commit()
        seed_env(runtime.db, "pr-1-aaaaa", REPO, 1, "pool", slot=3, age=timedelta(0))
        manual.advance(timedelta(hours=2))
        claim = PullValues(
            REPO,
            5,
            "5" * 40,
            "feature-5",
            WRITER,
            {},
            installation_id=INSTALLATION,
            ttl=TTLPolicy(),
            config_sha="c" * 40,
        )
        taken = runtime.lifecycle.claim_warm("pool", claim)
        assert taken is not None and taken.id == "warm-aaaaaaa1"  # the oldest first
        manual.advance(timedelta(hours=3))
        with WebServer(app, port) as server:
            yield Site(server, fake, manual)


def test_the_api_lists_pools_and_warm_instances_have_no_pr(site: Site) -> None:
    with site.token() as api:
        (mine, other) = api.get("/api/pools").json()
        assert (mine["silo"], mine["repository"], mine["size"]) == ("pool", REPO, 2)
        assert (mine["ready"], mine["starting"], mine["failed"], mine["claiming"]) == (1, 0, 0, 1)
        assert mine["failures"] == 0 and mine["paused_until"] is None
        (member,) = mine["members"]
        assert member["id"] == "warm-bbbbbbb2" and member["pr_number"] == 0
        assert member["pr_url"] is None and member["pool_state"] == "warm"
        assert (other["repository"], other["size"], other["members"]) == (OTHER, 1, [])

        items = {e["id"]: e for e in api.get("/api/environments").json()["items"]}
        claimed = items["warm-aaaaaaa1"]
        assert claimed["pool_state"] == "claiming" and claimed["pr_number"] == 5
        assert claimed["pr_url"] == f"{site.fake.web_url}/{REPO}/pull/5"
        assert claimed["claimed_at"].startswith("2026-06-01T10:00:00")
        assert items["pr-1-aaaaa"]["pool_state"] is None
        assert items["warm-bbbbbbb2"]["pr_url"] is None

    reader = site.user(READER)
    try:
        assert [p["repository"] for p in reader.get("/api/pools").json()] == [REPO]
    finally:
        reader.close()
    assert httpx.get(f"{site.server.url}/api/pools", trust_env=False).status_code == 401


def test_usage_counts_pool_hours_and_money_apart_until_the_claim(site: Site) -> None:
    with site.token() as api:
        usage = api.get("/api/usage").json()
    (pool,) = usage["pool"]
    # warm-a from 08:00 to its claim at 10:00, warm-b from 08:00 to 13:00.
    assert pool["repository"] == REPO and pool["total"] == 7.0 and pool["hours"][-1] == 7.0
    assert pool["money_total"] == pytest.approx(3.5)
    (prs,) = usage["series"]
    # pr-1 from 08:00 to 13:00, PR 5 from its claim at 10:00: its money is the PR's.
    assert prs["total"] == 5.0 + 3.0 and prs["money_total"] == pytest.approx(1.5)
    assert usage["live"] == 2 and usage["pool_instances"] == 1
    assert usage["counts"] == {"ready": 2}

    with site.token() as api:
        html = api.get("/usage").text
    assert re.search(r'id="pool-hours"><span class="num">7.0</span> warm-pool hours', html)
    assert "$3.50" in html and "1 warm now" in html


def test_actions_on_a_warm_instance_are_refused_and_change_nothing(site: Site) -> None:
    before = site.row("warm-bbbbbbb2")
    writer = site.user(WRITER)
    try:
        headers = {"X-CSRF-Token": csrf_of(writer)}
        for action in REFUSED:
            body = {"by": "4h"} if action == "extend" else None
            answer = writer.post(
                f"/api/environments/warm-bbbbbbb2/{action}", json=body, headers=headers
            )
            assert answer.status_code == 409, (action, answer.text)
            assert "belongs to the pool" in answer.json()["detail"]
            assert "resize the pool" in answer.json()["detail"]
        destroy = writer.post("/api/environments/warm-bbbbbbb2/destroy", headers=headers)
        assert destroy.status_code == 403 and "only operators" in destroy.json()["detail"]
        page = writer.get("/environments/warm-bbbbbbb2").text
        assert 'id="pool-note"' in page
        assert 'id="extend"' not in page and 'id="destroy"' not in page
    finally:
        writer.close()
    after = site.row("warm-bbbbbbb2")
    assert (after.generation, after.desired, after.status) == (1, "present", "ready")
    assert after.updated_at == before.updated_at and after.expires_at is None
    assert after.last_activity_at == before.last_activity_at and after.slept_at is None

    with site.token() as api:
        refused = api.post("/api/environments/warm-bbbbbbb2/sleep")
        assert refused.status_code == 409  # operators too: it means nothing for the pool
        done = api.post("/api/environments/warm-bbbbbbb2/destroy")
        assert done.status_code == 200, done.text
    gone = site.row("warm-bbbbbbb2")
    assert gone.desired == "absent" and gone.pool_state == "warm"
    assert "warm-bbbbbbb2" not in {e.id for e in site.runtime.lifecycle.pool_members("pool", REPO)}


def test_metrics_count_pool_instances_by_silo_and_state(site: Site) -> None:
    text = httpx.get(f"{site.server.url}/metrics", trust_env=False).text
    assert value(text, "runbot_pool_instances", silo="pool", state="ready") == 1
    assert value(text, "runbot_pool_instances", silo="pool", state="claiming") == 1
    assert ("runbot_pool_instances", (("silo", "pool"), ("state", "starting"))) in samples(text)
    assert value(text, "runbot_pool_size", silo="pool") == 3  # REPO's 2 and OTHER's 1
    assert "octo-org" not in text  # an open /metrics names no repository
    with site.token() as api:
        assert api.post("/api/environments/warm-bbbbbbb2/destroy").status_code == 200
    text = httpx.get(f"{site.server.url}/metrics", trust_env=False).text
    assert value(text, "runbot_pool_instances", silo="pool", state="ready") == 0
    assert value(text, "runbot_pool_instances", silo="pool", state="retiring") == 1


def test_claims_are_counted_by_outcome(site: Site) -> None:
    def scrape() -> str:
        return httpx.get(f"{site.server.url}/metrics", trust_env=False).text

    def claim(repository: str, number: int) -> Environment | None:
        values = PullValues(
            repository,
            number,
            f"{number:040x}",
            f"b{number}",
            WRITER,
            {},
            installation_id=INSTALLATION,
            ttl=TTLPolicy(),
            config_sha="c" * 40,
        )
        return site.runtime.lifecycle.claim_warm("pool", values)  # type: ignore[no-any-return]

    before = scrape()
    assert claim(REPO, 6) is not None  # warm-b
    assert claim(REPO, 7) is None  # the pool is empty now
    assert claim(OTHER, 8) is None  # a pool with no instance yet
    assert claim("octo-org/no-pool", 9) is None  # no pool at all: not a claim
    after = scrape()
    assert claims(after, "claimed") == claims(before, "claimed") + 1
    assert claims(after, "empty") == claims(before, "empty") + 2
    assert claims(after, "fallback") == claims(before, "fallback")
    assert value(after, "runbot_pool_instances", silo="pool", state="claiming") == 2


def test_the_dashboard_marks_warm_and_claimed_instances_and_lists_pools(site: Site) -> None:
    with site.token() as api:
        home = api.get("/").text
        silos = api.get("/silos").text
    rows = dict(re.findall(r'<tr data-env="([^"]+)">(.*?)</tr>', home, re.S))
    assert 'class="tag pool warm"' in rows["warm-bbbbbbb2"]
    assert "/pull/0" not in home
    assert 'class="tag pool"' in rows["warm-aaaaaaa1"] and "from pool" in rows["warm-aaaaaaa1"]
    assert "#5" in rows["warm-aaaaaaa1"]
    assert "tag pool" not in rows["pr-1-aaaaa"]
    pools = dict(re.findall(r'<tr data-pool="([^"]+)">(.*?)</tr>', silos, re.S))
    assert set(pools) == {f"pool/{REPO}", f"pool/{OTHER}"}
    cells = re.findall(r'<td class="num">(\d+)</td>', pools[f"pool/{REPO}"])
    assert cells == ["2", "1", "0", "0", "1"]  # wanted, ready, starting, failed, claiming
    assert "warm-bbbbbbb2" in pools[f"pool/{REPO}"]


# ----- a real pool, kept by the keeper ---------------------------------------------------------


def claims(text: str, outcome: str) -> float:
    return value(text, "runbot_pool_claims_total", outcome=outcome)


@pytest.mark.engine
def test_a_served_pool_shows_everywhere_and_an_operator_destroy_is_refilled(
    tmp_path: Path, fake_github: FakeGitHub, database_url: str
) -> None:
    fake = fake_github
    headers = {"Authorization": f"Bearer {API_TOKEN}"}
    with pooled(tmp_path, fake, database_url=database_url, api_token=API_TOKEN) as server:
        api = httpx.Client(base_url=server.url, headers=headers, trust_env=False, timeout=20)
        open_pull(server, fake, 1, "1" * 40)
        wait_for(lambda: ready_with(server, 1, "1" * 40), timeout=90)
        wait_for(lambda: len(warm_ready(server)) == 2, timeout=90)

        (pool,) = api.get("/api/pools").json()
        assert (pool["silo"], pool["repository"], pool["size"], pool["ready"]) == (
            "pool",
            REPO,
            2,
            2,
        )
        assert all(m["pr_url"] is None and m["pr_number"] == 0 for m in pool["members"])
        text = api.get("/metrics").text
        assert value(text, "runbot_pool_instances", silo="pool", state="ready") == 2
        assert value(text, "runbot_pool_size", silo="pool") == 2
        claimed_before = claims(text, "claimed")
        home = api.get("/").text
        assert home.count('class="tag pool warm"') == 2

        target = pool["members"][0]["id"]
        refused = api.post(f"/api/environments/{target}/extend", json={"by": "1h"})
        assert refused.status_code == 409 and "belongs to the pool" in refused.json()["detail"]
        row = server.runtime.lifecycle.get_environment(target)
        assert row.expires_at is None and row.generation == row.observed_generation

        usage = api.get("/api/usage").json()
        assert [s["repository"] for s in usage["pool"]] == [REPO]
        assert usage["pool_instances"] == 2 and usage["live"] == 1  # PR 1's, the pool apart

        open_pull(server, fake, 2, "2" * 40)
        wait_for(lambda: ready_with(server, 2, "2" * 40), timeout=90)
        taken = live(server, 2)
        assert taken is not None and taken.pool_state == "claimed"
        text = api.get("/metrics").text
        assert claims(text, "claimed") == claimed_before + 1
        env = api.get(f"/api/environments/{taken.id}").json()
        assert env["pool_state"] == "claimed" and env["claimed_at"] is not None
        assert env["pr_url"].endswith(f"/{REPO}/pull/2")
        rows = dict(re.findall(r'<tr data-env="([^"]+)">(.*?)</tr>', api.get("/").text, re.S))
        assert "from pool" in rows[taken.id]

        # An operator may destroy an unclaimed instance: the keeper makes a fresh one.
        wait_for(lambda: len(warm_ready(server)) == 2, timeout=90)
        victim = warm_ready(server)[0].id
        assert api.post(f"/api/environments/{victim}/destroy").status_code == 200
        wait_for(
            lambda: (
                len(warm_ready(server)) == 2 and victim not in {e.id for e in warm_ready(server)}
            ),
            timeout=90,
        )
        api.close()
