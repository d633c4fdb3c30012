"""What the status comment and the dashboard say about a sleeping environment: since when
(absolute, so the text is stable), why, and how to wake it (the URL only when the stack says
its URL wakes it)."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import pytest

from app import clock
from app.db.models import Environment, PullRequest
from app.github.comment import StatusView, render_status_comment
from app.github.sleeping import sleep_note
from app.github.status import status_view
from app.lifecycle.states import Desired, Status
from app.server import create_app
from tests.apphost import free_port
from tests.conftest import make_settings
from tests.webtools import WebServer, seed_env, seed_silo

SLEPT = datetime(2030, 3, 4, 14, 5, tzinfo=UTC)
URL = "http://127.0.0.1:41000/"


def view(**values: object) -> StatusView:
    fields: dict[str, object] = {
        "repository": "acme/app",
        "pr_number": 7,
        "state": "sleeping",
        "now": SLEPT + timedelta(hours=2),
        "environment_id": "pr-7-abcde",
        "silo": "local-default",
        "url": URL,
        "slept_at": SLEPT,
        "sleep_reason": "idle",
        "sleep_after": timedelta(hours=2),
        "expires_at": SLEPT + timedelta(days=1),
    }
    fields.update(values)
    return StatusView(**fields)  # type: ignore[arg-type]


def test_idle_sleep_says_since_when_why_and_how_to_wake() -> None:
    body = render_status_comment(view(wakes_on_request=True))
    assert (
        "💤 **Sleeping since 2030-03-04 14:05 UTC**: idle for 2h (no push, command or request;"
        " `ttl.sleep_after`). To wake it, open its URL or comment `/runbot wake`." in body
    )
    assert f"[{URL}]({URL})" in body  # the URL that wakes it is shown while asleep
    assert "Expires" in body  # sleep keeps the expiry, and the comment still shows it


def test_without_an_ingress_that_wakes_only_the_command_is_offered() -> None:
    body = render_status_comment(view())
    assert "To wake it, comment `/runbot wake`." in body
    assert "open its URL" not in body and f"]({URL})" not in body


def test_the_url_is_offered_only_when_it_is_a_safe_link() -> None:
    body = render_status_comment(view(wakes_on_request=True, url="javascript:alert(1)"))
    assert "open its URL" not in body and "javascript:" not in body


def test_the_text_is_stable_while_nothing_changes() -> None:
    """Absolute time only: hours later the sleep sentence is the same, so no edit is owed."""
    lines = {
        next(
            line
            for line in render_status_comment(view(now=SLEPT + later)).splitlines()
            if "Sleeping since" in line
        )
        for later in (timedelta(minutes=1), timedelta(hours=5), timedelta(days=2))
    }
    assert len(lines) == 1 and "ago" not in lines.pop()


@pytest.mark.parametrize(
    ("reason", "why"),
    [
        ("command", "put to sleep by a command (`/runbot sleep` or the dashboard)"),
        ("budget", "the monthly budget is reached"),
        ("something-new", "asked to sleep"),
    ],
)
def test_each_reason_is_worded(reason: str, why: str) -> None:
    note = sleep_note("sleeping", SLEPT, reason, None, url_wakes=False, commands=True)
    assert note == (
        f"💤 **Sleeping since 2030-03-04 14:05 UTC**: {why}. To wake it, comment `/runbot wake`."
    )


def test_going_to_sleep_awake_and_no_commands() -> None:
    going = sleep_note("ready", SLEPT, "idle", timedelta(hours=2), url_wakes=False, commands=True)
    assert going is not None and going.startswith("💤 **Going to sleep since 2030-03-04 14:05")
    assert sleep_note("ready", None, None, None, url_wakes=True, commands=True) is None
    assert sleep_note("destroying", SLEPT, "idle", None, url_wakes=True, commands=True) is None
    quiet = sleep_note("sleeping", SLEPT, "idle", None, url_wakes=False, commands=False)
    assert quiet == (
        "💤 **Sleeping since 2030-03-04 14:05 UTC**: idle (no push, command or request;"
        " `ttl.sleep_after`)."
    )
    # Put to sleep before runbot recorded since when: still says how to wake it.
    old = sleep_note("sleeping", None, None, None, url_wakes=False, commands=True)
    assert old == "💤 Sleeping. To wake it, comment `/runbot wake`."


def row(**values: object) -> Environment:
    fields: dict[str, object] = {
        "id": "pr-7-abcde",
        "silo_name": "local-default",
        "stack": "local",
        "repository": "acme/app",
        "pr_number": 7,
        "status": Status.SLEEPING,
        "desired": Desired.SUSPENDED,
        "url": URL,
        "slept_at": SLEPT,
        "sleep_reason": "idle",
        "ttl": {"idle": 86400.0, "max": 604800.0, "warn_before": 3600.0, "sleep_after": 7200.0},
        "created_at": SLEPT - timedelta(hours=3),
        "updated_at": SLEPT,
        "expires_at": SLEPT + timedelta(hours=21),
    }
    fields.update(values)
    return Environment(**fields)  # type: ignore[arg-type]


def test_the_view_takes_the_rows_sleep_and_the_stacks_word_on_waking() -> None:
    pull = PullRequest(
        id="acme/app#7", repository="acme/app", number=7, enabled=True, updated_at=SLEPT
    )
    plain = status_view(pull, row(), public_url="https://runbot.example", app_slug=None)
    assert plain is not None
    assert (plain.slept_at, plain.sleep_reason, plain.sleep_after) == (
        SLEPT,
        "idle",
        timedelta(hours=2),
    )
    assert not plain.wakes_on_request and plain.url is None
    promised = {"runbot_wakes_on_request": {"value": True, "sensitive": False}}
    waking = status_view(
        pull, row(outputs=promised), public_url="https://runbot.example", app_slug=None
    )
    assert waking is not None and waking.wakes_on_request and waking.url == URL
    # Only a literal true counts (untrusted stack output).
    for value in ("true", 1, None):
        odd = {"runbot_wakes_on_request": {"value": value, "sensitive": False}}
        seen = status_view(
            pull, row(outputs=odd), public_url="https://runbot.example", app_slug=None
        )
        assert seen is not None and not seen.wakes_on_request


# --- the dashboard and the API ------------------------------------------------------------


@pytest.fixture
def local_site(tmp_path: Path) -> Iterator[WebServer]:
    with clock.using(clock.ManualClock(SLEPT + timedelta(hours=2))):
        app = create_app(make_settings(tmp_path), background=False)
        db = app.state.runtime.db
        seed_silo(db, "local-default", {})
        seed_env(db, "pr-5-eeeee", "demo/hello", 5, "local-default", slot=0)
        seed_env(db, "pr-6-fffff", "demo/hello", 6, "local-default", slot=1)
        with db.session() as session:
            asleep = session.get(Environment, "pr-5-eeeee")
            awake = session.get(Environment, "pr-6-fffff")
            assert asleep is not None and awake is not None
            sleep_after = {"sleep_after": 7200.0, "idle": 86400.0, "max": 604800.0}
            asleep.status, asleep.desired = Status.SLEEPING, Desired.SUSPENDED
            asleep.slept_at, asleep.sleep_reason = SLEPT, "idle"
            asleep.ttl = {**sleep_after, "warn_before": 3600.0}
            asleep.url = URL
            asleep.outputs = {"runbot_wakes_on_request": {"value": True, "sensitive": False}}
            awake.ttl = {**sleep_after, "warn_before": 3600.0}
            awake.last_activity_at = SLEPT + timedelta(hours=1)
            session.add(asleep)
            session.add(awake)
            session.commit()
        with WebServer(app, free_port()) as server:
            yield server


def test_the_dashboard_and_api_say_the_same(local_site: WebServer) -> None:
    client = httpx.Client(base_url=local_site.url, timeout=20, trust_env=False)
    api = client.get("/api/environments/pr-5-eeeee").json()
    assert api["slept_at"].startswith("2030-03-04T14:05") and api["sleep_reason"] == "idle"
    assert api["sleep_why"].startswith("idle for 2h")
    assert api["wake_ways"] == ["open its URL", "comment `/runbot wake`"]
    assert api["sleeps_at"] is None  # asleep: nothing to fall asleep at
    page = client.get("/environments/pr-5-eeeee").text
    assert 'id="sleep-note"' in page and "Sleeping since" in page
    assert "2030-03-04 14:05:00 UTC" in page  # the absolute time, on hover
    assert "idle for 2h" in page and "open its URL or comment `/runbot wake`" in page
    awake = client.get("/api/environments/pr-6-fffff").json()
    assert awake["slept_at"] is None and awake["wake_ways"] == []
    assert awake["sleeps_at"].startswith("2030-03-04T17:05")  # an hour of activity + 2h
    assert "Sleeps if idle until" in client.get("/environments/pr-6-fffff").text
