"""Faults and policies: late, duplicate, missing events, bursts, forks, hostile input, outages."""

from __future__ import annotations

import html
import itertools
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from sqlmodel import col, select

from app.db.models import Environment, PullRequest, Run
from app.github.comment import CONFIG_MARKER, MARKER
from app.lifecycle.states import Status
from tests.apphost import INSTALLATION, REPO, WEBHOOK_SECRET, AppServer, app_settings, seed_repo
from tests.fakegithub.server import FakeGitHub
from tests.fakegithub.webhooks import deliver
from tests.helpers import fetch, nothing_pending, processes_matching, wait_for

pytest_plugins = ["tests.fakegithub.pytest_plugin"]
pytestmark = pytest.mark.engine


@pytest.fixture
def harness(tmp_path: Path, fake_github: FakeGitHub, port_base: int) -> Iterator[Harness]:
    with AppServer(app_settings(tmp_path, fake_github)) as server:
        server.runtime.lifecycle.create_silo("faults", "local", {"port_base": port_base})
        harness = Harness(server, fake_github)
        yield harness
        for env in server.runtime.lifecycle.list_environments():
            server.runtime.lifecycle.destroy_environment(env.id)
        wait_for(lambda: not server.runtime.lifecycle.list_environments(), timeout=60)


class Harness:
    def __init__(self, server: AppServer, fake: FakeGitHub) -> None:
        self.server, self.fake = server, fake

    def config(self, text: str) -> None:
        seed_repo(self.fake, text)

    def event(self, action: str, number: int = 1, **overrides: object) -> dict:
        payload = self.fake.pull_request_event(action, REPO, number, **overrides)
        payload["installation"] = {"id": INSTALLATION, "node_id": "MDIz"}
        return payload

    def send(self, payload: dict, event: str = "pull_request") -> None:
        response = deliver(self.server.webhook_url, event, payload, WEBHOOK_SECRET)
        assert response.status_code in (200, 202), response.text

    def envs(self, number: int = 1) -> list[Environment]:
        with self.server.runtime.db.session() as session:
            return list(
                session.exec(
                    select(Environment)
                    .where(Environment.pr_number == number)
                    .order_by(col(Environment.created_at))
                )
            )

    def pull(self, number: int = 1) -> PullRequest | None:
        with self.server.runtime.db.session() as session:
            return session.get(PullRequest, f"{REPO}#{number}")

    def status_comments(self, number: int = 1) -> list[dict]:
        return [c for c in self.fake.comments(REPO, number) if c["body"].startswith(MARKER)]

    def idle(self) -> bool:
        """Every delivery handled and every environment settled."""
        from app.db.models import Delivery

        with self.server.runtime.db.session() as session:
            pending = session.exec(select(Delivery).where(Delivery.status == "pending")).all()
            busy = session.exec(
                select(Environment).where(Environment.generation != Environment.observed_generation)
            ).all()
        return not pending and not busy

    def applies(self, env_id: str) -> list[Run]:
        with self.server.runtime.db.session() as session:
            return list(
                session.exec(select(Run).where(Run.target_id == env_id, Run.operation == "apply"))
            )


def later(payload: dict, seconds: int) -> dict:
    stamp = datetime.fromisoformat(payload["pull_request"]["updated_at"].replace("Z", "+00:00"))
    payload["pull_request"]["updated_at"] = (
        (stamp + timedelta(seconds=seconds)).astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    )
    return payload


def test_closed_delivered_before_opened(harness: Harness) -> None:
    harness.config("stack: local\nsilo: faults\n")
    harness.fake.add_pull(REPO, 1, "a" * 40, "feature")
    opened = harness.event("opened")
    harness.fake.update_pull(REPO, 1, state="closed")
    closed = later(harness.event("closed"), 5)
    harness.send(closed)
    harness.send(opened)  # late: older than what runbot already knows
    wait_for(harness.idle, timeout=30)
    assert harness.envs() == []
    assert harness.pull() is not None and harness.pull().state == "closed"


def test_every_delivery_three_times(harness: Harness) -> None:
    harness.config("stack: local\nsilo: faults\n")
    harness.fake.add_pull(REPO, 1, "a" * 40, "feature")
    opened = harness.event("opened")
    for _ in range(3):
        response = deliver(
            harness.server.webhook_url,
            "pull_request",
            opened,
            WEBHOOK_SECRET,
            delivery_id="dup-open",
        )
        assert response.status_code in (200, 202)
    wait_for(lambda: [e.status for e in harness.envs()] == [Status.READY], timeout=60)
    harness.fake.update_pull(REPO, 1, head_sha="b" * 40)
    sync = later(harness.event("synchronize"), 2)
    for _ in range(3):
        deliver(
            harness.server.webhook_url, "pull_request", sync, WEBHOOK_SECRET, delivery_id="dup-sync"
        )
    wait_for(lambda: harness.envs()[0].deployed_sha == "b" * 40 and harness.idle(), timeout=60)
    env = harness.envs()[0]
    assert len(harness.envs()) == 1
    assert len(harness.applies(env.id)) == 2  # create, then one update
    wait_for(
        lambda: (
            len(harness.status_comments()) == 1 and "b" * 7 in harness.status_comments()[0]["body"]
        )
    )


def test_20_synchronize_events_in_2_seconds_coalesce(harness: Harness) -> None:
    harness.config("stack: local\nsilo: faults\n")
    harness.fake.add_pull(REPO, 1, "0" * 40, "feature")
    harness.send(harness.event("opened"))
    wait_for(lambda: [e.status for e in harness.envs()] == [Status.READY], timeout=60)
    shas = [f"{n:040x}" for n in range(1, 21)]
    for n, sha in enumerate(shas):
        harness.fake.update_pull(REPO, 1, head_sha=sha)
        harness.send(later(harness.event("synchronize"), n + 1))
    wait_for(lambda: harness.envs()[0].deployed_sha == shas[-1] and harness.idle(), timeout=90)
    env = harness.envs()[0]
    assert shas[-1] in fetch(env.url or "").text
    updates = len(harness.applies(env.id)) - 1
    assert 1 <= updates <= 4, f"{updates} updates for 20 pushes: pushes did not coalesce"


def test_fork_pr_with_forks_off_is_explained_not_deployed(harness: Harness) -> None:
    harness.config("stack: local\nsilo: faults\n")
    harness.fake.add_pull(REPO, 1, "a" * 40, "feature", fork=True, author="mallory")
    harness.send(harness.event("opened"))
    wait_for(lambda: len(harness.status_comments()) == 1, timeout=30)
    body = harness.status_comments()[0]["body"]
    assert "fork" in body.lower() and "forks: off" in body
    assert harness.envs() == []


def test_fork_pr_with_forks_approve_waits_for_a_writer(harness: Harness) -> None:
    harness.config("stack: local\nsilo: faults\nforks: approve\n")
    harness.fake.add_pull(REPO, 1, "a" * 40, "feature", fork=True, author="mallory")
    harness.send(harness.event("opened"))
    wait_for(lambda: len(harness.status_comments()) == 1, timeout=30)
    assert "/runbot deploy" in harness.status_comments()[0]["body"]
    assert harness.envs() == []


def test_branch_name_with_shell_metacharacters(harness: Harness, tmp_path: Path) -> None:
    canary = tmp_path / "pwned"
    ref = f'feat/$(touch {canary});`touch {canary}`"<b>x</b>'
    harness.config("stack: local\nsilo: faults\n")
    harness.fake.add_pull(REPO, 1, "a" * 40, ref)
    harness.send(harness.event("opened"))
    wait_for(lambda: [e.status for e in harness.envs()] == [Status.READY], timeout=60)
    env = harness.envs()[0]
    assert env.head_ref == ref
    page = fetch(env.url or "").text
    assert html.escape(ref) in page or html.escape(ref, quote=False) in page
    assert "<b>x</b>" not in page
    assert not canary.exists()


def test_invalid_config_gets_one_comment_naming_the_field(harness: Harness) -> None:
    harness.config("stack: local\nttl: {idle: forever}\n")
    harness.fake.add_pull(REPO, 1, "a" * 40, "feature")
    harness.send(harness.event("opened"))
    harness.send(later(harness.event("synchronize"), 1))
    wait_for(harness.idle, timeout=30)
    wait_for(
        lambda: any(c["body"].startswith(CONFIG_MARKER) for c in harness.fake.comments(REPO, 1))
    )
    comments = [c for c in harness.fake.comments(REPO, 1) if c["body"].startswith(CONFIG_MARKER)]
    assert len(comments) == 1
    assert "ttl.idle" in comments[0]["body"]
    assert harness.envs() == []


def test_config_naming_an_unknown_stack(harness: Harness) -> None:
    harness.config("stack: nosuchstack\n")
    harness.fake.add_pull(REPO, 1, "a" * 40, "feature")
    harness.send(harness.event("opened"))
    wait_for(lambda: len(harness.status_comments()) == 1, timeout=30)
    body = harness.status_comments()[0]["body"]
    assert "nosuchstack" in body and "unknown stack" in body
    assert harness.envs() == []


def test_github_502_then_secondary_rate_limits_delay_but_never_lose_the_comment(
    harness: Harness,
) -> None:
    harness.config("stack: local\nsilo: faults\n")
    harness.fake.add_pull(REPO, 1, "a" * 40, "feature")
    harness.fake.outage(4, status=502, match=r"/issues/")
    harness.fake.secondary_rate_limit(2, retry_after=2, match=r"/issues/")
    harness.send(harness.event("opened"))
    wait_for(lambda: [e.status for e in harness.envs()] == [Status.READY], timeout=60)
    wait_for(
        lambda: (
            harness.status_comments() and "ready" in harness.status_comments()[0]["body"].lower()
        ),
        timeout=90,
    )
    assert len(harness.status_comments()) == 1
    attempts = harness.fake.requests_for(path="*/issues/*")
    assert len(attempts) > 3, "the outage and rate limits were never hit"
    writes = harness.fake.requests_for("POST", "*/issues/*/comments")
    assert len(writes) <= 12, f"{len(writes)} comment POSTs: a retry storm"
    # Content writes are paced; minting an installation token (the source download mints its
    # own, as git fetches do) is no content write.
    times = sorted(
        r.time
        for r in harness.fake.requests
        if r.method in ("POST", "PATCH") and not r.path.endswith("/access_tokens")
    )
    gaps = [b - a for a, b in itertools.pairwise(times)]
    assert all(gap >= 1.0 for gap in gaps), gaps  # writes stay paced


def test_an_outage_through_supersede_and_close_leaves_nothing_pending(harness: Harness) -> None:
    """Issue 20 must 6: GitHub failing the check-run and deployment writes while a push
    supersedes the deployed commit and the PR then closes: once GitHub is back, every check
    run is completed and every deployment's last status is terminal."""
    fake = harness.fake
    harness.config("stack: local\nsilo: faults\n")
    fake.add_pull(REPO, 1, "a" * 40, "feature")
    harness.send(harness.event("opened"))
    wait_for(lambda: [e.status for e in harness.envs()] == [Status.READY], timeout=60)
    wait_for(lambda: bool(fake.check_runs(REPO)) and bool(fake.deployments(REPO)), timeout=60)
    fake.outage(6, status=502, match=r"/check-runs|/deployments")
    fake.update_pull(REPO, 1, head_sha="b" * 40)
    harness.send(harness.event("synchronize"))
    wait_for(lambda: harness.envs()[-1].deployed_sha == "b" * 40, timeout=60)
    fake.update_pull(REPO, 1, state="closed")
    harness.send(harness.event("closed"))
    wait_for(lambda: all(e.status == Status.DESTROYED for e in harness.envs()), timeout=60)
    wait_for(lambda: nothing_pending(fake, REPO), timeout=120, interval=0.5)
    tried = [r for r in fake.requests if "/check-runs" in r.path or "/deployments" in r.path]
    assert len(tried) > 2, "the check-run and deployment endpoints were never called"
    superseded = [run for run in fake.check_runs(REPO) if run["head_sha"] == "a" * 40]
    # It had completed as a success before the push; a completed run is never reopened.
    assert superseded and all(run["conclusion"] in ("success", "neutral") for run in superseded)


def test_missed_webhook_is_fixed_by_resync(harness: Harness) -> None:
    harness.config("stack: local\nsilo: faults\n")
    harness.fake.add_pull(REPO, 1, "a" * 40, "feature")
    harness.send(
        {
            "action": "created",
            "installation": {"id": INSTALLATION, "account": {"login": "octo-org"}},
            "repositories": [{"full_name": REPO}],
        },
        event="installation",
    )
    wait_for(harness.idle, timeout=30)
    assert harness.envs() == []  # no pull_request webhook ever arrived
    harness.server.call(harness.server.workers.intent.resync)
    wait_for(lambda: [e.status for e in harness.envs()] == [Status.READY], timeout=60)
    # And a close that was missed too.
    harness.fake.update_pull(REPO, 1, state="closed")
    harness.server.call(harness.server.workers.intent.resync)
    wait_for(lambda: [e.status for e in harness.envs()] == [Status.DESTROYED], timeout=60)


def test_drafts_labels_and_max_environments(harness: Harness) -> None:
    harness.config(
        "stack: local\nsilo: faults\nlabels: {require: [preview]}\nmax_environments: 1\n"
    )
    harness.fake.add_pull(REPO, 1, "a" * 40, "one", labels=("preview",))
    harness.fake.add_pull(REPO, 2, "b" * 40, "two", labels=("preview",))
    harness.fake.add_pull(REPO, 3, "c" * 40, "three", draft=True, labels=("preview",))
    harness.fake.add_pull(REPO, 4, "d" * 40, "four")
    for number in (1, 2, 3, 4):
        harness.send(harness.event("opened", number))
    wait_for(lambda: [e.status for e in harness.envs(1)] == [Status.READY], timeout=60)
    wait_for(harness.idle, timeout=30)
    assert harness.envs(2) == [] and "max_environments" in (harness.pull(2).hold_reason or "")
    assert harness.envs(3) == [] and "draft" in (harness.pull(3).hold_reason or "")
    assert harness.envs(4) == [] and "preview" in (harness.pull(4).hold_reason or "")
    # Removing the label destroys; the freed capacity lets the queued PR start.
    harness.fake.update_pull(REPO, 1, labels=[])
    harness.send(later(harness.event("unlabeled", 1), 3))
    wait_for(lambda: [e.status for e in harness.envs(1)] == [Status.DESTROYED], timeout=60)
    wait_for(lambda: [e.status for e in harness.envs(2)] == [Status.READY], timeout=60)


def test_wait_for_ci_holds_until_checks_pass(harness: Harness) -> None:
    harness.config("stack: local\nsilo: faults\nwait_for_ci: true\n")
    sha = "e" * 40
    harness.fake.add_pull(REPO, 1, sha, "feature")
    harness.fake.set_check_suites(REPO, sha, [("in_progress", None)])
    harness.send(harness.event("opened"))
    wait_for(
        lambda: (
            harness.pull() is not None
            and "waiting for checks" in (harness.pull().hold_reason or "")
        ),
        timeout=30,
    )
    assert harness.envs() == []
    harness.fake.set_check_suites(REPO, sha, [("completed", "success")])
    suite = {
        "action": "completed",
        "check_suite": {"head_sha": sha, "status": "completed", "conclusion": "success"},
        "repository": {"full_name": REPO},
        "installation": {"id": INSTALLATION},
    }
    harness.send(suite, event="check_suite")
    wait_for(lambda: [e.status for e in harness.envs()] == [Status.READY], timeout=60)
    assert sha in fetch(harness.envs()[0].url or "").text
    assert len(processes_matching(f"--instance-id {harness.envs()[0].id}")) == 1
