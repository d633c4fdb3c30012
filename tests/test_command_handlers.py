"""`/runbot` comments end to end through the real intent, handler and GitHub gateway.

The fake GitHub is the only stand-in: payloads are schema-valid webhooks, reactions, replies
and permission lookups are real HTTP requests. No engine runs here (see test_commands_e2e for
that), so environments stay pending, which is all these rules need.
"""

from __future__ import annotations

import itertools
from collections.abc import AsyncIterator
from datetime import timedelta
from pathlib import Path

import pytest

from app.access.roles import Role
from app.commands.registry import VOCABULARY
from app.lifecycle.states import Desired
from tests.apphost import INSTALLATION, REPO
from tests.commandhost import CommandHost
from tests.fakegithub.server import FakeGitHub

pytest_plugins = ["tests.fakegithub.pytest_plugin"]

ACK_OK = ["eyes", "+1"]
ACK_FAIL = ["eyes", "confused"]
#: Someone below triage on another's PR gets one reaction, no 👀 (app.commands.limits).
LIMITED_OK = ["+1"]
LIMITED_FAIL = ["confused"]


@pytest.fixture
async def host(
    tmp_path: Path, fake_github: FakeGitHub, database_url: str
) -> AsyncIterator[CommandHost]:
    host = CommandHost(tmp_path, fake_github, database_url)
    fake_github.set_permission(REPO, "wendy", "write")
    fake_github.set_permission(REPO, "rita", "read")
    fake_github.set_permission(REPO, "ada", "admin")
    yield host
    await host.close()


@pytest.fixture
async def deployed(host: CommandHost) -> CommandHost:
    await host.open_pull(author="alice")
    assert host.live() is not None
    return host


# --- the commands -------------------------------------------------------------------------


async def test_help_replies_with_usage(deployed: CommandHost) -> None:
    cid = await deployed.comment("/runbot help", "rita")
    assert deployed.reactions(cid) == LIMITED_OK
    [reply] = deployed.replies()
    assert "extend <duration>" in reply and VOCABULARY.usage().splitlines()[0] in reply


async def test_status_reply_has_state_url_sha_expiry_and_last_run(deployed: CommandHost) -> None:
    cid = await deployed.comment("/runbot status", "bob")  # anyone may ask
    assert deployed.reactions(cid) == LIMITED_OK
    [reply] = deployed.replies()
    env = deployed.live()
    assert env is not None and env.expires_at is not None
    assert env.id in reply
    assert "**Status**" in reply and "Queued" in reply
    assert "**Environment**" in reply  # the URL row (no URL while pending)
    assert env.head_sha[:7] in reply
    assert "**Expires**" in reply and "in 1h 59m" in reply
    assert env.expires_at.strftime("%Y-%m-%d %H:%M UTC") in reply
    assert "**Last run**" in reply


async def test_extend_pushes_the_expiry(deployed: CommandHost) -> None:
    before = deployed.live()
    assert before is not None and before.expires_at is not None
    cid = await deployed.comment("/runbot extend 1h30m", "alice")
    after = deployed.live()
    assert after is not None and after.expires_at is not None
    pushed = after.expires_at - before.expires_at
    assert timedelta(hours=1, minutes=29) < pushed <= timedelta(hours=1, minutes=31)
    assert deployed.reactions(cid) == ACK_OK
    assert deployed.replies() == []  # the status comment shows the new expiry; no words needed


async def test_extend_past_max_is_refused_and_states_the_cap(deployed: CommandHost) -> None:
    before = deployed.live()
    assert before is not None
    cap = before.created_at + timedelta(hours=6)
    cid = await deployed.comment("/runbot extend 5h", "wendy")  # 2h idle + 5h > 6h max
    after = deployed.live()
    assert after is not None and after.expires_at == before.expires_at  # unchanged
    assert deployed.reactions(cid) == ACK_FAIL
    [reply] = deployed.replies()
    assert "maximum lifetime of 6h" in reply
    assert cap.strftime("%Y-%m-%d %H:%M:%S UTC") in reply
    assert "`/runbot extend 4h`" in reply  # what still fits: 6h max - 2h idle

    cid = await deployed.comment("/runbot extend 3h", "wendy")  # fits: accepted
    assert deployed.reactions(cid) == ACK_OK
    extended = deployed.live()
    assert extended is not None and extended.expires_at is not None
    assert extended.expires_at <= cap


async def test_destroy_and_its_alias_stop(deployed: CommandHost) -> None:
    env = deployed.live()
    assert env is not None
    cid = await deployed.comment("/runbot stop", "alice")
    assert deployed.reactions(cid) == ACK_OK
    gone = deployed.rt.lifecycle.get_environment(env.id)
    assert gone.desired == Desired.ABSENT and gone.trigger == "comment"
    assert gone.reason is not None and "alice" in gone.reason
    # A deliberate destroy stays: resync (or any re-reconcile) must not bring it back...
    await deployed.workers.intent.reconcile_pull(deployed.pull().id)
    assert deployed.live() is None
    # ...until redeploy asks for it.
    cid = await deployed.comment("/runbot redeploy", "wendy")
    assert deployed.reactions(cid) == ACK_OK
    fresh = deployed.live()
    assert fresh is not None and fresh.id != env.id


async def test_redeploy_of_a_live_environment_replaces_it(deployed: CommandHost) -> None:
    env = deployed.live()
    assert env is not None
    await deployed.comment("/runbot redeploy", "wendy")
    assert deployed.rt.lifecycle.get_environment(env.id).desired == Desired.ABSENT
    fresh = deployed.live()
    assert fresh is not None and fresh.id != env.id and fresh.head_sha == env.head_sha


async def test_sleep_and_wake_set_the_desired_state(deployed: CommandHost) -> None:
    env = deployed.live()
    assert env is not None
    await deployed.comment("/runbot sleep", "alice")
    slept = deployed.rt.lifecycle.get_environment(env.id)
    assert slept.desired == Desired.SUSPENDED
    assert slept.expires_at == env.expires_at  # sleeping keeps the expiry
    await deployed.comment("/runbot wake", "alice")
    assert deployed.rt.lifecycle.get_environment(env.id).desired == Desired.PRESENT
    assert deployed.replies() == []


async def test_commands_without_an_environment_say_so(host: CommandHost) -> None:
    host.fake.add_pull(REPO, 5, "c" * 40, "feature/5", author="alice")
    cid = await host.comment("/runbot sleep", "wendy", number=5)
    assert host.reactions(cid) == ACK_FAIL
    [reply] = host.replies(5)
    assert "no environment" in reply


async def test_writer_deploy_approves_a_fork(host: CommandHost) -> None:
    await host.open_pull(author="forky", fork=True)
    assert host.live() is None and "write access" in (host.pull().hold_reason or "")
    await host.show_status()
    cid = await host.comment("/runbot deploy", "forky")  # the fork's author cannot approve
    assert host.reactions(cid) == ACK_FAIL
    assert "cannot approve" in host.replies()[-1]
    assert host.live() is None
    cid = await host.comment("/runbot deploy", "wendy")
    assert host.reactions(cid) == ACK_OK
    assert host.live() is not None
    assert host.pull().approved_sha == host.pull().head_sha


async def test_destroy_withdraws_a_fork_approval(host: CommandHost) -> None:
    await host.open_pull(author="forky", fork=True)
    await host.show_status()
    await host.comment("/runbot deploy", "wendy")
    assert host.live() is not None
    await host.comment("/runbot destroy", "wendy")
    assert host.live() is None and host.pull().approved_sha is None
    host.fake.update_pull(REPO, 1, head_sha="f" * 40)  # the fork pushes again
    payload = host.fake.pull_request_event("synchronize", REPO, 1)
    payload["installation"] = {"id": INSTALLATION, "node_id": "MDIz"}
    await host.workers.intent.handle("pull_request", payload)
    assert host.live() is None
    assert "/runbot deploy" in (host.pull().hold_reason or "")


# --- who may -------------------------------------------------------------------------------


PERSONAS = {
    # login: (role on the repository, is it the PR's author)
    "ada": "admin",
    "wendy": "write",
    "rita": "read",
    "nobody": "none",
    "alice": "none",  # the PR's author, without write access
    "forky": "none",  # the author of a PR from a fork
}
# command -> the personas it is allowed for
ALLOWED = {
    "extend 1h": {"ada", "wendy", "alice", "forky"},
    "sleep": {"ada", "wendy", "alice", "forky"},
    "redeploy": {"ada", "wendy"},
    "status": set(PERSONAS),
}


@pytest.fixture
async def sqlite_host(tmp_path: Path, fake_github: FakeGitHub) -> AsyncIterator[CommandHost]:
    """The matrix does not depend on the database; both engines run the other tests."""
    host = CommandHost(tmp_path, fake_github, None)
    yield host
    await host.close()


@pytest.mark.parametrize(
    ("command", "login"), list(itertools.product(ALLOWED, PERSONAS)), ids=lambda v: str(v)
)
async def test_permission_matrix_over_the_real_api(
    sqlite_host: CommandHost, command: str, login: str
) -> None:
    host = sqlite_host
    fork = login == "forky"
    author = login if login in ("alice", "forky") else "alice"
    for name, role in PERSONAS.items():
        host.fake.set_permission(REPO, name, role)
    await host.open_pull(author=author, fork=fork)
    if fork:
        await host.show_status()
        await host.comment("/runbot deploy", "wendy")
    env = host.live()
    assert env is not None
    cid = await host.comment(f"/runbot {command}", login)
    allowed = login in ALLOWED[command]
    limited = PERSONAS[login] in ("read", "none") and login != author
    expected = (LIMITED_OK, LIMITED_FAIL) if limited else (ACK_OK, ACK_FAIL)
    assert host.reactions(cid) == (expected[0] if allowed else expected[1])
    if not allowed:
        reply = host.replies()[-1]
        assert "**write** permission" in reply and f"**{PERSONAS[login]}**" in reply
        assert f"@{login}" in reply
        assert host.unchanged(env)  # nothing changed


async def test_configured_permission_is_honoured(
    tmp_path: Path, fake_github: FakeGitHub, database_url: str
) -> None:
    host = CommandHost(tmp_path, fake_github, database_url)
    host.workers.commands.permission_needed = Role.ADMIN
    fake_github.set_permission(REPO, "wendy", "write")
    fake_github.set_permission(REPO, "ada", "admin")
    try:
        await host.open_pull(author="alice")
        cid = await host.comment("/runbot redeploy", "wendy")
        assert host.reactions(cid) == ACK_FAIL
        assert "**admin** permission" in host.replies()[-1]
        cid = await host.comment("/runbot redeploy", "ada")
        assert host.reactions(cid) == ACK_OK
    finally:
        await host.close()


async def test_permission_lookups_are_cached(deployed: CommandHost) -> None:
    await deployed.comment("/runbot sleep", "wendy")
    await deployed.comment("/runbot wake", "wendy")
    await deployed.comment("/runbot extend 1h", "wendy")
    assert deployed.permission_calls("wendy") == 1


async def test_closed_pr_refuses_all_but_status_and_help(deployed: CommandHost) -> None:
    env = deployed.live()
    deployed.fake.update_pull(REPO, 1, state="closed")  # its close event not handled yet
    cid = await deployed.comment("/runbot destroy", "wendy")
    assert deployed.reactions(cid) == ACK_FAIL
    assert "closed" in deployed.replies()[-1]
    assert deployed.unchanged(env)
    cid = await deployed.comment("/runbot status", "rita")
    assert deployed.reactions(cid) == LIMITED_OK


# --- exactly once --------------------------------------------------------------------------


async def test_a_redelivered_command_acts_and_replies_once(deployed: CommandHost) -> None:
    before = deployed.live()
    assert before is not None and before.expires_at is not None
    payload = deployed.comment_payload("/runbot extend 1h", "alice")
    await deployed.deliver(payload)
    await deployed.deliver(payload)
    after = deployed.live()
    assert after is not None and after.expires_at is not None
    assert after.expires_at - before.expires_at < timedelta(hours=1, minutes=1)
    assert deployed.reactions(payload["comment"]["id"]) == ACK_OK
    [row] = deployed.ledger()
    assert row.status == "done" and row.outcome == "ok"


async def test_reply_lost_to_an_outage_is_posted_once_on_retry(deployed: CommandHost) -> None:
    from app.github.gateway import RetryLater

    payload = deployed.comment_payload("/runbot extend 9h", "alice")  # refused: needs a reply
    deployed.fake.fail_next(1, 502, match=r"POST /repos/.*/issues/\d+/comments$")
    with pytest.raises(RetryLater):
        await deployed.deliver(payload)
    assert deployed.replies() == []
    [row] = deployed.ledger()
    assert row.status == "executed" and row.outcome == "refused"
    await deployed.deliver(payload)  # the delivery's retry
    assert len(deployed.replies()) == 1
    assert deployed.reactions(payload["comment"]["id"]) == ACK_FAIL


# --- bad input (named in the issue) ----------------------------------------------------------


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        ("/runbot extend -4h", "is negative"),
        ("/runbot extend 0s", "must be greater than zero"),
        ("/runbot extend 99999999w", "365d ceiling"),
        ("/runbot extend 4x", "unknown unit"),
        ("/runbot", "No command given"),
        ("/runbot destory", "Did you mean `/runbot destroy`?"),
    ],
)
async def test_bad_commands_reply_with_usage(
    deployed: CommandHost, body: str, expected: str
) -> None:
    env = deployed.live()
    cid = await deployed.comment(body, "wendy")
    assert deployed.reactions(cid) == ACK_FAIL
    [reply] = deployed.replies()
    assert expected in reply
    assert "Example: `/runbot" in reply  # usage
    assert deployed.unchanged(env)


async def test_unicode_look_alike_is_not_executed(deployed: CommandHost) -> None:
    env = deployed.live()
    cid = await deployed.comment("/runbot d\u0435stroy", "wendy")  # Cyrillic small ie
    assert deployed.reactions(cid) == ACK_FAIL
    [reply] = deployed.replies()
    assert "U+0435" in reply and "Did you mean `/runbot destroy`?" in reply
    assert deployed.unchanged(env)


@pytest.mark.parametrize(
    "body",
    [
        "/runbotextend 4h",
        "```\n/runbot destroy\n```",
        "Looks good!\n/runbot destroy",
        "> /runbot destroy",
        "please /runbot destroy",
        "/runbot destroy\n" + "x" * 60_000,  # a 60 KB comment, on several lines
    ],
    ids=["no-space", "fenced", "second-line", "quoted", "mid-sentence", "60KB-multiline"],
)
async def test_comments_that_are_not_commands_are_ignored(deployed: CommandHost, body: str) -> None:
    env = deployed.live()
    cid = await deployed.comment(body, "wendy")
    assert deployed.reactions(cid) == []
    assert deployed.replies() == []
    assert deployed.unchanged(env)
    assert deployed.ledger() == []


async def test_60kb_single_line_command_gets_a_short_reply(deployed: CommandHost) -> None:
    body = "/runbot destroy " + "x" * 60_000
    cid = await deployed.comment(body, "wendy")
    assert deployed.reactions(cid) == ACK_FAIL
    [reply] = deployed.replies()
    assert "takes no arguments" in reply and len(reply) < 5_000
    assert deployed.live() is not None


async def test_reader_trying_destroy_is_refused(deployed: CommandHost) -> None:
    env = deployed.live()
    cid = await deployed.comment("/runbot destroy", "rita")
    assert deployed.reactions(cid) == LIMITED_FAIL
    [reply] = deployed.replies()
    assert "@rita" in reply and "**write** permission" in reply and "**read**" in reply
    assert deployed.unchanged(env)


@pytest.mark.parametrize("how", ["login", "type"])
async def test_bot_comments_are_ignored(deployed: CommandHost, how: str) -> None:
    env = deployed.live()
    login = "renovate[bot]" if how == "login" else "ci-robot"
    deployed.fake.set_permission(REPO, login, "admin")
    payload = deployed.comment_payload("/runbot destroy", login)
    if how == "type":
        payload["sender"]["type"] = payload["comment"]["user"]["type"] = "Bot"
    await deployed.deliver(payload)
    assert deployed.reactions(payload["comment"]["id"]) == []
    assert deployed.unchanged(env)


async def test_edited_comment_is_ignored(deployed: CommandHost) -> None:
    env = deployed.live()
    original = deployed.fake.add_comment(REPO, 1, "LGTM", author="wendy")
    payload = deployed.comment_payload(
        "/runbot destroy", "wendy", action="edited", comment_id=original["id"]
    )
    await deployed.deliver(payload)
    assert deployed.reactions(original["id"]) == []
    assert deployed.unchanged(env)


async def test_command_on_an_issue_is_ignored(deployed: CommandHost) -> None:
    deployed.fake.add_issue(REPO, 7)
    env = deployed.live()
    cid = await deployed.comment("/runbot destroy", "wendy", number=7)
    assert deployed.reactions(cid) == []
    assert deployed.fake.comments(REPO, 7)[-1]["id"] == cid  # no reply
    assert deployed.unchanged(env)


async def test_app_slug_prefix(deployed: CommandHost) -> None:
    cid = await deployed.comment(f"@{deployed.fake.slug} sleep", "wendy")
    assert deployed.reactions(cid) == ACK_OK
    env = deployed.live()
    assert env is not None and env.desired == Desired.SUSPENDED


async def test_deploy_approves_only_a_commit_someone_was_shown(host: CommandHost) -> None:
    """Before any status comment, a bare `/runbot deploy` approves nothing: the head could be a
    push nobody reviewed. Naming the commit works; naming another one is refused."""
    await host.open_pull(author="forky", fork=True)
    cid = await host.comment("/runbot deploy", "wendy")
    assert host.reactions(cid) == ACK_FAIL and host.live() is None
    assert "has not shown a commit" in host.replies()[-1]
    cid = await host.comment("/runbot deploy 0123456789abcdef", "wendy")
    assert host.reactions(cid) == ACK_FAIL and host.live() is None
    assert "is not this pull request's head" in host.replies()[-1]
    assert host.pull().approved_sha is None
    head = host.pull().head_sha
    cid = await host.comment(f"/runbot deploy {head[:9].upper()}", "wendy")
    assert host.reactions(cid) == ACK_OK
    assert host.pull().approved_sha == head and host.live() is not None
