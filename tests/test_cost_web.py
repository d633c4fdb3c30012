"""Money in the API, the metrics and the dashboard's usage page, over real HTTP.

Environments are seeded as rows (no engine): their ledger spans are written by the same flush
hook as in production, on a set clock. A reader of one repository sees its money and none of
another repository's.
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import pytest

from app import clock
from app.clock import ManualClock
from app.db.models import Environment
from app.server import create_app
from app.web.dashboard import usage_svg
from tests.apphost import INSTALLATION, REPO, free_port, sign_in_settings
from tests.conftest import make_settings
from tests.fakegithub.server import FakeGitHub
from tests.test_web_api import API_TOKEN, OTHER, READER
from tests.test_web_metrics import value
from tests.webtools import WebServer, seed_env, seed_silo, sign_in

pytest_plugins = ["tests.fakegithub.pytest_plugin"]

START = datetime(2026, 6, 1, 20, 0, tzinfo=UTC)
METRICS_TOKEN = "metrics-token-5e1f0a"


def priced(hourly: object) -> dict[str, dict[str, object]]:
    return {
        "url": {"value": "http://127.0.0.1:1/", "sensitive": False},
        "runbot_hourly_cost": {"value": hourly, "sensitive": False},
    }


@pytest.fixture
def site(
    tmp_path: Path, fake_github: FakeGitHub, database_url: str
) -> Iterator[tuple[WebServer, FakeGitHub, ManualClock]]:
    fake = fake_github
    fake.add_repo(REPO, files={"main": {".runbot.yml": "stack: local\n"}})
    fake.add_repo(OTHER, private=True)
    fake.add_installation(INSTALLATION, "octo-org", [REPO, OTHER])
    fake.set_permission(REPO, READER, "read")
    port = free_port()
    settings = sign_in_settings(
        tmp_path,
        fake,
        database_url,
        port,
        api_token=API_TOKEN,
        currency="gbp",
        metrics_token=METRICS_TOKEN,
    )
    with clock.using(ManualClock(START)) as manual:
        assert isinstance(manual, ManualClock)
        app = create_app(settings, background=False)
        db = app.state.runtime.db
        seed_silo(db, "shared", {})
        common = {"installation_id": INSTALLATION}
        seed_env(db, "pr-1-aaaaa", REPO, 1, "shared", slot=0, outputs=priced(0.5), **common)
        seed_env(db, "pr-2-bbbbb", REPO, 2, "shared", slot=1, outputs=priced("lots"), **common)
        seed_env(db, "pr-3-ccccc", REPO, 3, "shared", slot=2, **common)  # no cost output
        seed_env(db, "pr-9-zzzzz", OTHER, 9, "shared", slot=3, outputs=priced(7), **common)
        manual.advance(timedelta(hours=6))  # 20:00 to 02:00: two UTC days
        with WebServer(app, port) as server:
            yield server, fake, manual


def test_api_environments_and_usage_carry_money(
    site: tuple[WebServer, FakeGitHub, ManualClock],
) -> None:
    server, _, _ = site
    token = {"Authorization": f"Bearer {API_TOKEN}"}
    with httpx.Client(base_url=server.url, headers=token, trust_env=False, timeout=20) as api:
        items = {e["id"]: e for e in api.get("/api/environments").json()["items"]}
        one = items["pr-1-aaaaa"]
        assert one["cost_so_far"] == pytest.approx(3.0) and one["hourly_cost"] == 0.5
        assert one["currency"] == "GBP"
        # An unusable output (warned about in its run log) counts as no cost output.
        assert items["pr-2-bbbbb"]["cost_so_far"] is None
        assert items["pr-3-ccccc"]["cost_so_far"] is None  # no cost output: no money shown
        assert api.get("/api/environments/pr-9-zzzzz").json()["cost_so_far"] == pytest.approx(42)

        usage = api.get("/api/usage").json()
        assert usage["currency"] == "GBP"
        series = {s["repository"]: s for s in usage["series"]}
        assert series[REPO]["money"][-2:] == [pytest.approx(2.0), pytest.approx(1.0)]
        assert series[REPO]["money_total"] == pytest.approx(3.0)
        assert series[OTHER]["money_total"] == pytest.approx(42.0)

    scrape = {"Authorization": f"Bearer {METRICS_TOKEN}"}
    text = httpx.get(f"{server.url}/metrics", headers=scrape, trust_env=False).text
    assert value(text, "runbot_cost_total", repository=REPO) == pytest.approx(3.0)
    assert value(text, "runbot_cost_total", repository=OTHER) == pytest.approx(42.0)
    assert value(text, "runbot_environment_hourly_cost", repository=REPO) == 0.5
    assert value(text, "runbot_environment_hourly_cost", repository=OTHER) == 7


def test_the_usage_page_charts_money_a_reader_may_see(
    site: tuple[WebServer, FakeGitHub, ManualClock],
) -> None:
    server, fake, _ = site
    fake.oauth_login = READER
    browser = sign_in(server.url)
    try:
        page = browser.get("/usage")
    finally:
        browser.close()
    assert page.status_code == 200
    html = page.text
    assert "Money per day, last 30 days (UTC, GBP)" in html
    assert 'aria-label="money per day"' in html
    assert f"{REPO}: £2.00 on 2026-06-01" in html and f"{REPO}: £1.00 on 2026-06-02" in html
    assert "£3.00" in html
    assert OTHER not in html and "£42.00" not in html  # another repository's money is hidden


def test_the_money_chart_without_money_is_empty() -> None:
    from app.web.views import UsageOut, UsageSeries

    usage = UsageOut(
        days=[START.date()],
        series=[UsageSeries(repository="o/a", hours=[3.0], total=3.0)],
        counts={},
        live=0,
        silos=0,
        currency="CHF",
    )
    assert "<rect" not in str(usage_svg(usage, money=True))
    assert "o/a: 3.0 h" in str(usage_svg(usage))
    usage.series[0].money = [1.5]
    assert "o/a: 1.50 CHF on" in str(usage_svg(usage, money=True))


def test_open_metrics_name_no_repository(tmp_path: Path, database_url: str) -> None:
    """Without RUNBOT_METRICS_TOKEN /metrics is open: the money is one series for all."""
    with clock.using(ManualClock(START)) as manual:
        assert isinstance(manual, ManualClock)
        app = create_app(make_settings(tmp_path, database_url), background=False)
        db = app.state.runtime.db
        seed_silo(db, "shared", {})
        seed_env(db, "pr-1-aaaaa", REPO, 1, "shared", slot=0, outputs=priced(0.5))
        seed_env(db, "pr-9-zzzzz", OTHER, 9, "shared", slot=1, outputs=priced(7))
        manual.advance(timedelta(hours=2))
        with WebServer(app, free_port()) as server:
            text = httpx.get(f"{server.url}/metrics", trust_env=False).text
        assert REPO not in text and OTHER not in text
        assert value(text, "runbot_cost_total", repository="") == pytest.approx(15.0)
        assert value(text, "runbot_environment_hourly_cost", repository="") == 7.5


def test_seeded_rows_have_a_ledger(site: tuple[WebServer, FakeGitHub, ManualClock]) -> None:
    server, _, manual = site
    db = server.app.state.runtime.db
    with db.session() as session:
        row = session.get(Environment, "pr-1-aaaaa")
        assert row is not None
        row.status = "destroyed"
        session.add(row)
        session.commit()
    manual.advance(timedelta(hours=5))
    token = {"Authorization": f"Bearer {API_TOKEN}"}
    got = httpx.get(f"{server.url}/api/environments/pr-1-aaaaa", headers=token, trust_env=False)
    assert got.json()["cost_so_far"] == pytest.approx(3.0) and got.json()["hourly_cost"] == 0
