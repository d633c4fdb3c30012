"""The GitHub gateway against the fake GitHub on loopback, and the local-mode outbox.

Timing assertions use the fake's recorded arrival times (what GitHub would see), not the
test's own wall clock.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import socket
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import httpx
import pytest
from sqlmodel import select

from app.access.roles import Role
from app.db.models import OutboxMessage
from app.db.session import Database
from app.github.appgateway import GitHubAppGateway
from app.github.gateway import (
    MAX_TREE_FILES,
    CheckRunFields,
    Gateway,
    GitHubError,
    NotFoundOnGitHub,
    RetryLater,
)
from app.github.outbox import OutboxGateway
from app.github.payloads import PullFacts
from app.github.transport import GATEWAY_STATS, OUTAGE_BACKOFF
from app.settings import Settings, load_settings
from tests.fakegithub.server import FakeGitHub

pytest_plugins = ["tests.fakegithub.pytest_plugin"]

REPO = "octo-org/hello"
OTHER_REPO = "acme/widgets"
INSTALLATION = 7
OTHER_INSTALLATION = 8
HEAD = "a" * 40
MARKER = "<!-- runbot:status -->"
TOKEN_POSTS = "/app/installations/*/access_tokens"


class RecordingSleep:
    """Stands in for asyncio.sleep: records every wait, and really waits only if asked to."""

    def __init__(self, real: bool = True) -> None:
        self.real = real
        self.calls: list[float] = []

    async def __call__(self, seconds: float) -> None:
        self.calls.append(seconds)
        if self.real:
            await asyncio.sleep(seconds)


@pytest.fixture
def fake(fake_github: FakeGitHub) -> FakeGitHub:
    fake_github.add_repo(
        REPO,
        files={
            "main": {
                ".runbot.yml": "stack: silo\n",
                "infra/main.tf": "# main\n",
                "infra/modules/net/vars.tf": 'variable "cidr" {}\n',
                "README.md": "hello\n",
            }
        },
    )
    fake_github.add_installation(INSTALLATION, "octo-org", [REPO])
    fake_github.add_pull(REPO, 1, head_sha=HEAD, head_ref="feature", author="octocat")
    return fake_github


def app_settings(fake: FakeGitHub, **overrides: object) -> Settings:
    values: dict[str, object] = {
        "github_app_id": fake.app_id,
        "github_private_key": fake.private_key_pem,
        "github_api_url": fake.url,
    }
    values.update(overrides)
    return load_settings(**values)


@pytest.fixture
async def gateway(fake: FakeGitHub) -> AsyncIterator[GitHubAppGateway]:
    gw = GitHubAppGateway(app_settings(fake), min_write_interval=0.0)
    yield gw
    await gw.aclose()


def write_times(fake: FakeGitHub) -> list[float]:
    """Arrival times of content-creating requests (token minting is not content)."""
    return [
        r.time
        for r in fake.requests
        if r.method in ("POST", "PATCH") and not r.path.startswith("/app/")
    ]


# ---------------------------------------------------------------- auth


async def test_installation_token_obtained_once_and_reused(
    fake: FakeGitHub, gateway: GitHubAppGateway
) -> None:
    assert isinstance(gateway, Gateway) and gateway.local is False
    assert await gateway.read_file(INSTALLATION, REPO, ".runbot.yml", "main") == "stack: silo\n"
    await gateway.create_comment(INSTALLATION, REPO, 1, "hello")
    await gateway.list_open_pulls(INSTALLATION, REPO)
    # installation_id=None: looked up once with the App JWT, then cached.
    assert await gateway.permission(None, REPO, "octocat") == Role.READ
    assert await gateway.ci_state(None, REPO, HEAD) == "success"
    assert len(fake.requests_for("POST", TOKEN_POSTS)) == 1
    assert len(fake.requests_for("GET", f"/repos/{REPO}/installation")) == 1
    repo_calls = [r for r in fake.requests if r.path.startswith("/repos/")]
    assert {r.auth for r in repo_calls if not r.path.endswith("/installation")} == {"installation"}
    assert fake.violations == []


async def test_concurrent_first_requests_share_one_token(
    fake: FakeGitHub, gateway: GitHubAppGateway
) -> None:
    # The intent reads the PR and .runbot.yml at once: a fresh client must not mint two tokens.
    config, pulls, *more = await asyncio.gather(
        gateway.read_file(INSTALLATION, REPO, ".runbot.yml", "main"),
        gateway.list_open_pulls(INSTALLATION, REPO),
        *(gateway.read_file(INSTALLATION, REPO, ".runbot.yml", "main") for _ in range(3)),
    )
    assert config == "stack: silo\n" and isinstance(pulls, list) and more == [config] * 3
    assert len(fake.requests_for("POST", TOKEN_POSTS)) == 1


async def test_git_token_cached_until_five_minutes_before_expiry(fake: FakeGitHub) -> None:
    now = [1000.0]
    gw = GitHubAppGateway(app_settings(fake), clock=lambda: now[0])
    try:
        token = await gw.installation_token(INSTALLATION)
        now[0] += 3600 - 300 - 60  # GitHub's tokens live an hour; still outside the margin
        assert await gw.installation_token(INSTALLATION) == token
        assert len(fake.requests_for("POST", TOKEN_POSTS)) == 1
        now[0] += 120  # inside the last five minutes: a git fetch could outlive it
        renewed = await gw.installation_token(INSTALLATION)
        assert renewed != token
        assert len(fake.requests_for("POST", TOKEN_POSTS)) == 2
    finally:
        await gw.aclose()
    listed = httpx.get(
        f"{fake.url}/installation/repositories", headers={"Authorization": f"token {renewed}"}
    )
    assert listed.status_code == 200 and listed.json()["repositories"][0]["full_name"] == REPO
    assert fake.violations == []


async def test_revoked_installation_token_is_replaced(
    fake: FakeGitHub, gateway: GitHubAppGateway
) -> None:
    await gateway.read_file(INSTALLATION, REPO, ".runbot.yml", "main")
    fake.expire_tokens()  # GitHub revoked the token before githubkit's cache expired it
    before = GATEWAY_STATS["token_refreshes"]
    assert await gateway.read_file(INSTALLATION, REPO, "README.md", "main") == "hello\n"
    assert GATEWAY_STATS["token_refreshes"] == before + 1
    assert len(fake.requests_for("POST", TOKEN_POSTS)) == 2
    assert fake.violations == []


async def test_configured_api_version_is_sent(fake: FakeGitHub) -> None:
    # The fake answers 400 to versions GitHub does not know: proof the setting reaches it.
    unknown = GitHubAppGateway(app_settings(fake, github_api_version="2019-01-01"))
    try:
        with pytest.raises(GitHubError, match="2019-01-01") as refused:
            await unknown.read_file(INSTALLATION, REPO, ".runbot.yml", "main")
        assert not isinstance(refused.value, RetryLater)
    finally:
        await unknown.aclose()
    newer = GitHubAppGateway(app_settings(fake, github_api_version="2026-03-10"))
    try:
        [pull] = await newer.list_open_pulls(INSTALLATION, REPO)
        assert pull.head_sha == HEAD
    finally:
        await newer.aclose()
    assert fake.violations == []


# ---------------------------------------------------------------- comments & reactions


async def test_comment_create_find_update(fake: FakeGitHub, gateway: GitHubAppGateway) -> None:
    quoted = fake.add_comment(REPO, 1, f"why does it say {MARKER}?", author="mallory")
    for i in range(120):  # push the App's comment onto the second page
        fake.add_comment(REPO, 1, f"comment {i}", author="bob")
    assert await gateway.find_comment(INSTALLATION, REPO, 1, MARKER) is None

    created = await gateway.create_comment(INSTALLATION, REPO, 1, f"{MARKER}\nbuilding")
    assert await gateway.find_comment(INSTALLATION, REPO, 1, MARKER) == created
    await gateway.update_comment(INSTALLATION, REPO, created, f"{MARKER}\nready")

    bodies = {c["id"]: c["body"] for c in fake.comments(REPO, 1)}
    assert bodies[created] == f"{MARKER}\nready"
    assert bodies[quoted["id"]] == f"why does it say {MARKER}?"
    [mine] = [c for c in fake.comments(REPO, 1) if c["id"] == created]
    assert mine["user"]["login"] == f"{fake.slug}[bot]"
    # The slug came from GET /app once (no RUNBOT_GITHUB_APP_SLUG set).
    assert len(fake.requests_for("GET", "/app")) == 1
    # Every page was read: 121 comments, then 122, at 100 per page.
    assert len(fake.requests_for("GET", f"/repos/{REPO}/issues/1/comments")) == 4
    assert fake.violations == []


async def test_find_comment_uses_configured_slug(fake: FakeGitHub) -> None:
    gw = GitHubAppGateway(app_settings(fake, github_app_slug="someone-else"))
    try:
        await gw.create_comment(INSTALLATION, REPO, 1, MARKER)
        # Written by runbot-test[bot], so not "ours" under another App's slug.
        assert await gw.find_comment(INSTALLATION, REPO, 1, MARKER) is None
        assert fake.requests_for("GET", "/app") == []
    finally:
        await gw.aclose()
    assert fake.violations == []


async def test_update_of_deleted_comment_is_not_found(
    fake: FakeGitHub, gateway: GitHubAppGateway
) -> None:
    # The fake has no DELETE endpoint; an id GitHub never issued answers the same 404.
    with pytest.raises(NotFoundOnGitHub, match="no longer exists"):
        await gateway.update_comment(INSTALLATION, REPO, 987_654_321, "x")
    assert len(fake.requests_for("PATCH", "/repos/*/issues/comments/987654321")) == 1
    assert fake.violations == []


async def test_reactions(fake: FakeGitHub, gateway: GitHubAppGateway) -> None:
    command = fake.add_comment(REPO, 1, "/runbot deploy", author="bob")
    await gateway.add_reaction(INSTALLATION, REPO, command["id"], "eyes")
    await gateway.add_reaction(INSTALLATION, REPO, command["id"], "+1")
    await gateway.add_reaction(INSTALLATION, REPO, command["id"], "+1")  # GitHub: 200, no dup
    reactions = fake.reactions(command["id"])
    assert [r["content"] for r in reactions] == ["eyes", "+1"]
    assert {r["user"]["login"] for r in reactions} == {f"{fake.slug}[bot]"}
    sent = len(fake.requests)
    with pytest.raises(ValueError, match="unknown reaction"):
        await gateway.add_reaction(INSTALLATION, REPO, command["id"], "thumbsup")
    assert len(fake.requests) == sent
    assert fake.violations == []


# ---------------------------------------------------------------- deployments


async def test_deployment_flags_and_status_sequence(
    fake: FakeGitHub, gateway: GitHubAppGateway
) -> None:
    # A failing status would make GitHub refuse (409) unless required_contexts=[] is sent.
    fake.set_combined_status(REPO, HEAD, "failure", {"ci/lint": "failure"})
    deployment_id = await gateway.create_deployment(
        INSTALLATION, REPO, "feature", "pr-1", "runbot preview of #1"
    )
    [deployment] = fake.deployments(REPO)
    assert deployment["id"] == deployment_id and deployment["sha"] == HEAD
    assert deployment["environment"] == "pr-1" and deployment["ref"] == "feature"
    assert deployment["description"] == "runbot preview of #1"
    assert deployment["transient_environment"] is True
    assert deployment["production_environment"] is False
    [request] = fake.requests_for("POST", f"/repos/{REPO}/deployments")
    assert request.body["auto_merge"] is False and request.body["required_contexts"] == []

    await gateway.create_deployment_status(
        INSTALLATION, REPO, deployment_id, "in_progress", None, "https://runbot.test/runs/1", "go"
    )
    await gateway.create_deployment_status(
        INSTALLATION, REPO, deployment_id, "success", "https://pr-1.example", None, "x" * 300
    )
    await gateway.create_deployment_status(
        INSTALLATION, REPO, deployment_id, "inactive", None, None, "destroyed"
    )
    statuses = fake.deployment_statuses(REPO, deployment_id)
    assert [s["state"] for s in statuses] == ["in_progress", "success", "inactive"]
    assert statuses[0]["log_url"] == "https://runbot.test/runs/1"
    assert statuses[1]["environment_url"] == "https://pr-1.example"
    assert len(statuses[1]["description"]) == 140
    bodies = [r.body for r in fake.requests_for("POST", "/repos/*/deployments/*/statuses")]
    assert all(body["auto_inactive"] is False for body in bodies)
    assert "environment_url" not in bodies[0] and "log_url" not in bodies[1]
    with pytest.raises(ValueError, match="deployment state"):
        await gateway.create_deployment_status(
            INSTALLATION, REPO, deployment_id, "done", None, None, ""
        )
    assert fake.violations == []


# ---------------------------------------------------------------- people, pulls, files


async def test_permission_levels(fake: FakeGitHub, gateway: GitHubAppGateway) -> None:
    for login, role in [("ada", "admin"), ("mo", "maintain"), ("bob", "write"), ("tri", "triage")]:
        fake.set_permission(REPO, login, role)
    fake.set_permission(REPO, "nobody", "none")
    results = {
        login: (await gateway.permission(INSTALLATION, REPO, login)).label
        for login in ("ada", "mo", "bob", "tri", "nobody", "no-such-user")
    }
    assert results == {
        "ada": "admin",
        "mo": "maintain",
        "bob": "write",
        "tri": "triage",
        "nobody": "none",
        "no-such-user": "none",
    }
    assert fake.violations == []


async def test_list_open_pulls_reads_every_page(
    fake: FakeGitHub, gateway: GitHubAppGateway
) -> None:
    for number in range(2, 131):
        fake.add_pull(REPO, number, head_sha=f"{number:040x}", head_ref=f"topic-{number}")
    fake.add_pull(
        REPO,
        200,
        head_sha="c" * 40,
        head_ref="evil",
        author="mallory",
        fork=True,
        draft=True,
        labels=["preview", "big"],
    )
    fake.add_pull(REPO, 201, head_sha="d" * 40, head_ref="old", state="closed")
    pulls = await gateway.list_open_pulls(INSTALLATION, REPO)
    assert sorted(p.number for p in pulls) == [*range(1, 131), 200]
    assert len(fake.requests_for("GET", f"/repos/{REPO}/pulls")) == 2
    by_number = {p.number: p for p in pulls}
    assert by_number[200] == PullFacts(
        number=200,
        head_sha="c" * 40,
        head_ref="evil",
        base_ref="main",
        base_sha=fake.pull(REPO, 200)["base"]["sha"],
        author="mallory",
        draft=True,
        fork=True,
        labels=("preview", "big"),
        state="open",
        default_branch="main",
        public=True,
    )
    assert len(by_number[200].base_sha) == 40
    assert by_number[1].fork is False and by_number[1].author == "octocat"
    assert fake.violations == []


async def test_installation_repos(fake: FakeGitHub, gateway: GitHubAppGateway) -> None:
    fake.set_installation_repos(INSTALLATION, [REPO, "octo-org/other"])
    assert sorted(await gateway.installation_repos(INSTALLATION)) == [REPO, "octo-org/other"]
    assert fake.violations == []


async def test_read_file_and_list_tree(fake: FakeGitHub, gateway: GitHubAppGateway) -> None:
    assert await gateway.read_file(INSTALLATION, REPO, "nope.yml", "main") is None
    assert await gateway.read_file(INSTALLATION, REPO, "/infra/main.tf", "main") == "# main\n"
    fake.set_file(REPO, "feature", ".runbot.yml", "stack: feature\n")
    assert await gateway.read_file(INSTALLATION, REPO, ".runbot.yml", HEAD) == "stack: feature\n"
    with pytest.raises(GitHubError, match="directory"):
        await gateway.read_file(INSTALLATION, REPO, "infra", "main")

    assert await gateway.list_tree(INSTALLATION, REPO, "infra", "main") == {
        "main.tf": "# main\n",
        "modules/net/vars.tf": 'variable "cidr" {}\n',
    }
    with pytest.raises(NotFoundOnGitHub, match="no directory stacks/web"):
        await gateway.list_tree(INSTALLATION, REPO, "stacks/web", "main")
    with pytest.raises(GitHubError, match="is a file"):
        await gateway.list_tree(INSTALLATION, REPO, "README.md", "main")
    assert fake.violations == []


async def test_list_tree_refuses_huge_directories(
    fake: FakeGitHub, gateway: GitHubAppGateway
) -> None:
    for i in range(MAX_TREE_FILES + 1):
        fake.set_file(REPO, "main", f"big/f{i:03}.tf", "#\n")
    with pytest.raises(GitHubError, match=f"more than {MAX_TREE_FILES} files"):
        await gateway.list_tree(INSTALLATION, REPO, "big", "main")
    assert fake.requests_for("GET", f"/repos/{REPO}/contents/big/*") == []  # nothing fetched
    fake.set_file(REPO, "main", "fat/blob.tf", "x" * 1_100_000)
    with pytest.raises(GitHubError, match="MB"):
        await gateway.list_tree(INSTALLATION, REPO, "fat", "main")
    assert fake.violations == []


@pytest.mark.parametrize(
    ("suites", "status", "expected"),
    [
        ([], None, "success"),
        (
            [("completed", "success"), ("completed", "neutral"), ("completed", "skipped")],
            None,
            "success",
        ),
        ([], ("success", {"ci": "success"}), "success"),
        ([("completed", "success"), ("in_progress", None)], None, "pending"),
        ([("queued", None)], None, "pending"),
        ([("completed", "success")], ("pending", {"ci/lint": "pending"}), "pending"),
        ([("completed", "failure"), ("in_progress", None)], None, "failure"),
        ([("completed", "cancelled")], None, "failure"),
        ([("completed", "timed_out")], None, "failure"),
        ([("completed", "action_required")], None, "failure"),
        ([("in_progress", None)], ("failure", {"ci": "failure"}), "failure"),
        ([], ("error", {"ci": "error"}), "failure"),
    ],
)
async def test_ci_state(
    fake: FakeGitHub,
    gateway: GitHubAppGateway,
    suites: list[tuple[str, str | None]],
    status: tuple[str, dict[str, str]] | None,
    expected: str,
) -> None:
    fake.set_check_suites(REPO, HEAD, suites)
    if status is not None:
        fake.set_combined_status(REPO, HEAD, *status)
    assert await gateway.ci_state(INSTALLATION, REPO, HEAD) == expected
    assert fake.violations == []


async def test_get_app(fake: FakeGitHub, gateway: GitHubAppGateway) -> None:
    app = await gateway.get_app()
    assert app["id"] == fake.app_id and app["slug"] == fake.slug
    [request] = fake.requests_for("GET", "/app")
    assert request.auth == "app"
    assert fake.violations == []


# ---------------------------------------------------------------- pacing, limits, outages


async def test_writes_are_paced_per_installation(fake: FakeGitHub) -> None:
    fake.add_installation(OTHER_INSTALLATION, "acme", [OTHER_REPO])
    fake.add_issue(OTHER_REPO, 5)
    command = fake.add_comment(REPO, 1, "/runbot deploy", author="bob")
    gw = GitHubAppGateway(app_settings(fake), min_write_interval=0.3)
    try:
        # Warm both tokens so only content requests are timed.
        await gw.read_file(INSTALLATION, REPO, ".runbot.yml", "main")
        await gw.installation_repos(OTHER_INSTALLATION)
        fake.clear_records()

        async def four_writes() -> None:
            comment = await gw.create_comment(INSTALLATION, REPO, 1, "one")
            await gw.update_comment(INSTALLATION, REPO, comment, "two")
            await gw.add_reaction(INSTALLATION, REPO, command["id"], "eyes")
            await gw.create_deployment(INSTALLATION, REPO, "feature", "pr-1", "three")

        async def other_installation() -> None:
            await gw.create_comment(OTHER_INSTALLATION, OTHER_REPO, 5, "a")
            await gw.create_comment(OTHER_INSTALLATION, OTHER_REPO, 5, "b")

        await asyncio.gather(four_writes(), other_installation())
    finally:
        await gw.aclose()
    mine = [
        r.time
        for r in fake.requests
        if r.method in ("POST", "PATCH") and f"/repos/{REPO}/" in r.path
    ]
    other = [r.time for r in fake.requests if f"/repos/{OTHER_REPO}/" in r.path]
    assert len(mine) == 4 and len(other) == 2
    assert all(b - a >= 0.3 for a, b in itertools.pairwise(mine))
    assert mine[-1] - mine[0] >= 3 * 0.3
    assert other[1] - other[0] >= 0.3
    # Installations are paced independently: the other one did not queue behind ours.
    assert abs(other[0] - mine[0]) < 0.3
    assert fake.violations == []


async def test_reads_are_not_paced(fake: FakeGitHub) -> None:
    gw = GitHubAppGateway(app_settings(fake), min_write_interval=0.5)
    try:
        await gw.create_comment(INSTALLATION, REPO, 1, "write first")
        for _ in range(4):
            await gw.read_file(INSTALLATION, REPO, "README.md", "main")
    finally:
        await gw.aclose()
    reads = [r.time for r in fake.requests_for("GET", f"/repos/{REPO}/contents/README.md")]
    assert len(reads) == 4 and reads[-1] - write_times(fake)[0] < 0.5
    assert fake.violations == []


async def test_short_secondary_rate_limit_is_waited_inline(fake: FakeGitHub) -> None:
    sleep = RecordingSleep()
    gw = GitHubAppGateway(app_settings(fake), sleep=sleep)
    try:
        await gw.read_file(INSTALLATION, REPO, ".runbot.yml", "main")  # token first
        fake.secondary_rate_limit(1, retry_after=1, match=r"^POST /repos/.*/comments$")
        before = GATEWAY_STATS["rate_limit_waits:secondary"]
        comment_id = await gw.create_comment(INSTALLATION, REPO, 1, "after the wait")
    finally:
        await gw.aclose()
    assert sleep.calls == [1.0]
    assert GATEWAY_STATS["rate_limit_waits:secondary"] == before + 1
    attempts = fake.requests_for("POST", f"/repos/{REPO}/issues/1/comments")
    assert len(attempts) == 2 and attempts[1].time - attempts[0].time >= 0.99
    assert [c["id"] for c in fake.comments(REPO, 1)] == [comment_id]
    assert fake.violations == []


async def test_long_secondary_rate_limit_is_deferred_without_sleeping(fake: FakeGitHub) -> None:
    sleep = RecordingSleep(real=False)
    gw = GitHubAppGateway(app_settings(fake), sleep=sleep)
    try:
        await gw.read_file(INSTALLATION, REPO, ".runbot.yml", "main")
        fake.secondary_rate_limit(1, retry_after=30)
        with pytest.raises(RetryLater) as deferred:
            await gw.create_comment(INSTALLATION, REPO, 1, "not now")
    finally:
        await gw.aclose()
    assert deferred.value.retry_after == 30
    assert "secondary rate limit" in str(deferred.value)
    assert sleep.calls == []
    assert len(fake.requests_for("POST", f"/repos/{REPO}/issues/1/comments")) == 1
    assert fake.comments(REPO, 1) == []
    assert fake.violations == []


async def test_primary_rate_limit_defers_until_reset(
    fake: FakeGitHub, gateway: GitHubAppGateway
) -> None:
    await gateway.read_file(INSTALLATION, REPO, ".runbot.yml", "main")
    fake.rate_limit = 1  # the token has used its hour's budget
    with pytest.raises(RetryLater, match="primary rate limit") as deferred:
        await gateway.list_open_pulls(INSTALLATION, REPO)
    assert 3000 < deferred.value.retry_after <= 3601
    assert len(fake.requests_for("GET", f"/repos/{REPO}/pulls")) == 1
    assert fake.violations == []


async def test_outage_is_deferred_after_a_bounded_number_of_requests(
    fake: FakeGitHub, gateway: GitHubAppGateway
) -> None:
    await gateway.read_file(INSTALLATION, REPO, ".runbot.yml", "main")
    fake.clear_records()
    fake.outage(30, status=502)
    with pytest.raises(RetryLater) as read_deferred:
        await gateway.read_file(INSTALLATION, REPO, "README.md", "main")
    assert read_deferred.value.retry_after == OUTAGE_BACKOFF
    assert len(fake.requests) == 2  # one quick retry for a read, then give the worker back
    fake.clear_records()
    with pytest.raises(RetryLater):
        await gateway.create_comment(INSTALLATION, REPO, 1, "x")
    assert len(fake.requests) == 1  # a POST is never resent blindly: it may have landed
    fake.reset_faults()
    assert await gateway.read_file(INSTALLATION, REPO, "README.md", "main") == "hello\n"
    assert fake.violations == []


async def test_a_resent_write_keeps_the_write_pacing(fake: FakeGitHub) -> None:
    """A PATCH that met a 502 is resent (it is idempotent), but not sooner than the pacing
    allows: GitHub counts the failed write too."""
    gw = GitHubAppGateway(app_settings(fake), min_write_interval=1.0)
    try:
        comment = await gw.create_comment(INSTALLATION, REPO, 1, "one")
        fake.clear_records()
        fake.fail_next(1, status=502, match=r"^PATCH ")
        await gw.update_comment(INSTALLATION, REPO, comment, "two")
    finally:
        await gw.aclose()
    attempts = [r.time for r in fake.requests_for("PATCH", f"/repos/{REPO}/issues/comments/*")]
    assert len(attempts) == 2
    assert attempts[1] - attempts[0] >= 1.0
    assert [c["body"] for c in fake.comments(REPO, 1)] == ["two"]
    assert fake.violations == []


async def test_unreachable_github_is_deferred(fake: FakeGitHub) -> None:
    with socket.socket() as probe:  # a loopback port nobody listens on
        probe.bind(("127.0.0.1", 0))
        dead = f"http://127.0.0.1:{probe.getsockname()[1]}"
    sleep = RecordingSleep(real=False)
    gw = GitHubAppGateway(app_settings(fake, github_api_url=dead), sleep=sleep)
    try:
        with pytest.raises(RetryLater, match="could not be reached"):
            await gw.read_file(INSTALLATION, REPO, ".runbot.yml", "main")
    finally:
        await gw.aclose()
    assert len(sleep.calls) == 1  # the single quick retry


# ---------------------------------------------------------------- local mode


@pytest.fixture
def database(tmp_path: Path) -> Iterator[Database]:
    db = Database(f"sqlite:///{tmp_path / 'outbox.db'}")
    db.migrate()
    yield db
    db.dispose()


async def test_outbox_stores_writes_and_finds_its_comment(
    database: Database, caplog: pytest.LogCaptureFixture
) -> None:
    outbox = OutboxGateway(database, None, {"stacks/web/main.tf": "# web\n", "x.txt": "x"})
    assert isinstance(outbox, Gateway) and outbox.local is True
    caplog.set_level(logging.INFO, logger="app.github.outbox")

    first = await outbox.create_comment(None, REPO, 1, f"{MARKER}\nbuilding")
    other_pr = await outbox.create_comment(None, REPO, 2, f"{MARKER}\nother")
    assert other_pr > first
    assert await outbox.find_comment(None, REPO, 1, MARKER) == first
    assert await outbox.find_comment(None, REPO, 3, MARKER) is None
    await outbox.update_comment(None, REPO, first, f"{MARKER}\nready <!-- v2 -->")
    assert await outbox.find_comment(None, REPO, 1, "<!-- v2 -->") == first
    with pytest.raises(NotFoundOnGitHub):
        await outbox.update_comment(None, REPO, 10_000, "gone")
    await outbox.add_reaction(None, REPO, first, "rocket")
    deployment = await outbox.create_deployment(None, REPO, "feature", "pr-1", "preview")
    assert deployment > other_pr
    await outbox.create_deployment_status(
        None, REPO, deployment, "success", "http://127.0.0.1:8080", None, "ready"
    )

    with database.session() as session:
        rows = [(m.method, m.path, m.body) for m in session.exec(select(OutboxMessage))]
    assert rows == [
        ("POST", f"/repos/{REPO}/issues/1/comments", {"body": f"{MARKER}\nbuilding"}),
        ("POST", f"/repos/{REPO}/issues/2/comments", {"body": f"{MARKER}\nother"}),
        (
            "PATCH",
            f"/repos/{REPO}/issues/comments/{first}",
            {"body": f"{MARKER}\nready <!-- v2 -->"},
        ),
        ("POST", f"/repos/{REPO}/issues/comments/{first}/reactions", {"content": "rocket"}),
        (
            "POST",
            f"/repos/{REPO}/deployments",
            {
                "ref": "feature",
                "environment": "pr-1",
                "description": "preview",
                "transient_environment": True,
                "production_environment": False,
                "auto_merge": False,
                "required_contexts": [],
            },
        ),
        (
            "POST",
            f"/repos/{REPO}/deployments/{deployment}/statuses",
            {
                "state": "success",
                "description": "ready",
                "auto_inactive": False,
                "environment_url": "http://127.0.0.1:8080",
            },
        ),
    ]
    assert f"outbox: POST /repos/{REPO}/issues/1/comments" in caplog.text
    assert f"outbox: PATCH /repos/{REPO}/issues/comments/{first}" in caplog.text


async def test_outbox_reads(database: Database) -> None:
    default = OutboxGateway(database, None)
    assert await default.read_file(None, REPO, ".runbot.yml", "main") == "stack: local\n"
    configured = OutboxGateway(
        database, "stack: web\n", {"stacks/web/main.tf": "# web\n", "stacks/web/m/v.tf": "v\n"}
    )
    assert await configured.read_file(None, REPO, "/.runbot.yml", HEAD) == "stack: web\n"
    assert await configured.read_file(None, REPO, "stacks/web/main.tf", HEAD) == "# web\n"
    assert await configured.read_file(None, REPO, "missing.tf", HEAD) is None
    assert await configured.list_tree(None, REPO, "stacks/web/", HEAD) == {
        "main.tf": "# web\n",
        "m/v.tf": "v\n",
    }
    with pytest.raises(NotFoundOnGitHub):
        await configured.list_tree(None, REPO, "stacks/api", HEAD)
    assert await configured.permission(None, REPO, "anyone") == Role.ADMIN
    assert await configured.ci_state(None, REPO, HEAD) == "success"
    assert await configured.list_open_pulls(None, REPO) == []
    with pytest.raises(GitHubError, match="local mode"):
        await configured.installation_token(1)


async def test_outbox_finds_the_check_run_a_cut_off_create_left_open(database: Database) -> None:
    """Local mode's half of the crash-safe create: an open `runbot` check run on the commit
    is found; a completed one, or one on another commit, is not."""
    outbox = OutboxGateway(database, None)
    sha, other = "a" * 40, "b" * 40
    assert await outbox.find_check_run(None, REPO, sha) is None
    queued = CheckRunFields(status="queued", title="Queued", summary="waiting")
    first = await outbox.create_check_run(None, REPO, sha, queued)
    await outbox.create_check_run(None, REPO, other, queued)
    assert await outbox.find_check_run(None, REPO, sha) == first
    done = CheckRunFields(status="completed", conclusion="success", title="Ready", summary="up")
    await outbox.update_check_run(None, REPO, first, done)
    assert await outbox.find_check_run(None, REPO, sha) is None
