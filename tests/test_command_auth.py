"""The pure parts of command handling: the permission matrix cell by cell, which comments are
acted on, and the replies."""

from __future__ import annotations

import itertools
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from app.access.roles import Role, role_from_permission
from app.access.rules import Verdict, authorize
from app.commands.actions import NoApproval, approval_for
from app.commands.registry import VOCABULARY, spec
from app.commands.replies import refusal_text, render_extend_refused
from app.github.comment import MARKER, RunSummary, StatusView, render_status_reply
from app.github.payloads import comment_event
from app.ttl.policy import TTLPolicy, extend
from tests.fakegithub.webhooks import make_issue_comment_event

COMMANDS = VOCABULARY.names


def decide(
    command: str, permission: str, *, required: Role = Role.WRITE, **facts: Any
) -> tuple[Verdict, str]:
    """The verdict for a comment command, and the sentence a refusal replies with."""
    role = Role.named(permission) or Role.NONE
    access = spec(command).access
    verdict = authorize(access, role, required=required, **facts)
    if verdict.allowed:
        return verdict, ""
    return verdict, refusal_text(command, verdict, role, author_may=access.author_may)


# persona -> (permission, is_author, is_fork)
PERSONAS: dict[str, tuple[str, bool, bool]] = {
    "admin": ("admin", False, False),
    "maintain": ("maintain", False, False),
    "write": ("write", False, False),
    "triage": ("triage", False, False),
    "read": ("read", False, False),
    "none": ("none", False, False),
    "pr-author": ("none", True, False),
    "pr-author-reader": ("read", True, False),
    "fork-author": ("none", True, True),
    "writer-author": ("write", True, False),
}
WRITERS = {"admin", "maintain", "write", "writer-author"}
AUTHORS = {"pr-author", "pr-author-reader", "fork-author", "writer-author"}
# What each persona may do on an open PR with the default setting (write).
EXPECTED: dict[str, set[str]] = {
    "help": set(PERSONAS),
    "status": set(PERSONAS),
    "extend": WRITERS | AUTHORS,
    "destroy": WRITERS | AUTHORS,
    "sleep": WRITERS | AUTHORS,
    "wake": WRITERS | AUTHORS,
    "redeploy": WRITERS,
    "deploy": WRITERS,
}


@pytest.mark.parametrize(("command", "persona"), list(itertools.product(COMMANDS, PERSONAS)))
def test_matrix_on_open_pull_requests(command: str, persona: str) -> None:
    permission, is_author, is_fork = PERSONAS[persona]
    decision, message = decide(
        command, permission, is_author=is_author, pr_state="open", is_fork=is_fork
    )
    assert decision.allowed is (persona in EXPECTED[command])
    if not decision.allowed:
        assert decision.needed == Role.WRITE
        assert "**write**" in message
        assert message.endswith(".")


@pytest.mark.parametrize(("command", "persona"), list(itertools.product(COMMANDS, PERSONAS)))
def test_closed_pull_requests_allow_only_status_and_help(command: str, persona: str) -> None:
    permission, is_author, is_fork = PERSONAS[persona]
    decision, message = decide(
        command, permission, is_author=is_author, pr_state="closed", is_fork=is_fork
    )
    assert decision.allowed is (command in ("help", "status"))
    if not decision.allowed:
        assert "closed" in message


def test_refusals_name_the_permission_and_what_the_person_has() -> None:
    _, message = decide("destroy", "read", is_author=False, pr_state="open", is_fork=False)
    assert "**write**" in message and "**read**" in message
    assert "author" in message  # destroy is also open to the PR's author
    _, message = decide("redeploy", "triage", is_author=True, pr_state="open", is_fork=False)
    assert "author" not in message and "**triage**" in message
    _, message = decide("deploy", "none", is_author=True, pr_state="open", is_fork=True)
    assert "cannot approve" in message


@pytest.mark.parametrize("required", [role for role in Role if role > Role.NONE])
def test_configured_permission(required: Role) -> None:
    for role in Role:
        for command in ("redeploy", "sleep"):
            decision, _ = decide(
                command,
                role.label,
                is_author=False,
                pr_state="open",
                is_fork=False,
                required=required,
            )
            assert decision.allowed is (role >= required)
        # Approving a deploy runs someone's code: never less than write.
        deploy, _ = decide(
            "deploy", role.label, is_author=False, pr_state="open", is_fork=True, required=required
        )
        floor = required if required >= Role.WRITE else Role.WRITE
        assert deploy.allowed is (role >= floor)


def test_unknown_roles_count_as_none() -> None:
    assert Role.named("custom-role") is None
    assert role_from_permission("custom-role", None) == Role.NONE
    assert role_from_permission("custom-role", "write") == Role.WRITE  # its base role
    assert role_from_permission("maintain", "write") == Role.MAINTAIN  # role_name first
    assert Role.ADMIN >= Role.WRITE and not Role.TRIAGE >= Role.WRITE


# --- which comments are acted on -------------------------------------------------------------


def _event(**overrides: Any) -> dict[str, Any]:
    return make_issue_comment_event(body="/runbot status", author="wendy", **overrides)


def test_created_comment_on_a_pr_is_read() -> None:
    event = comment_event(_event(issue_author="alice"))
    assert event is not None
    assert (event.author, event.pr_author, event.pr_state) == ("wendy", "alice", "open")
    assert event.body == "/runbot status" and event.number == 1


def test_edited_comments_issues_and_bots_are_not() -> None:
    assert comment_event(_event(action="edited", comment_id=5)) is None
    assert comment_event(_event(on_pull_request=False)) is None
    assert comment_event(make_issue_comment_event(author="dependabot[bot]")) is None
    payload = _event()
    payload["sender"]["type"] = "Bot"
    assert comment_event(payload) is None
    payload = _event()
    payload["comment"]["user"]["type"] = "Bot"
    assert comment_event(payload) is None


@pytest.mark.parametrize("broken", ["issue", "comment", "repository"])
def test_malformed_payloads_are_ignored(broken: str) -> None:
    payload = _event()
    payload[broken] = None
    assert comment_event(payload) is None


# --- replies ---------------------------------------------------------------------------------


def _refusal(current: timedelta, now_offset: timedelta = timedelta(0)) -> str:
    created = datetime(2030, 1, 1, tzinfo=UTC)
    policy = TTLPolicy(idle=timedelta(hours=2), max=timedelta(hours=6))
    now = created + now_offset
    result = extend(policy, created, now, created + current, timedelta(hours=9))
    assert result.capped
    return render_extend_refused(timedelta(hours=9), result, created + current, policy.max, now)


def test_extend_refusal_states_the_cap_and_what_still_fits() -> None:
    text = _refusal(timedelta(hours=2, seconds=17))
    assert "maximum lifetime of 6h" in text and "2030-01-01 06:00:00 UTC" in text
    assert "`/runbot extend 3h59m`" in text  # floored to the minute, so it fits
    assert "nothing was changed" in text and "/runbot redeploy" in text
    short = _refusal(timedelta(hours=5, minutes=59, seconds=30))
    assert "`/runbot extend 30s`" in short


def test_extend_refusal_at_the_cap() -> None:
    text = _refusal(timedelta(hours=6))
    assert "already expires at that cap" in text and "extend by" not in text.split("\n\n")[1]


def test_status_reply_is_never_taken_for_the_status_comment() -> None:
    now = datetime(2030, 1, 1, tzinfo=UTC)
    view = StatusView(
        repository="o/r",
        pr_number=1,
        state="ready",
        now=now,
        environment_id="pr-1-abcde",
        url="http://127.0.0.1:8000/",
        deployed_sha="a" * 40,
        head_sha="a" * 40,
        expires_at=now + timedelta(hours=3),
    )
    run = RunSummary(
        7, "apply", "succeeded", now - timedelta(minutes=5), now - timedelta(minutes=4)
    )
    reply = render_status_reply(view, run)
    assert MARKER not in reply
    assert "[http://127.0.0.1:8000/](http://127.0.0.1:8000/)" in reply
    assert "`aaaaaaa`" in reply and "in 3h (2030-01-01 03:00 UTC)" in reply
    assert "run `7`: `apply`, succeeded, finished 4m ago (2029-12-31 23:56 UTC)" in reply
    assert "| **Last run** | — |" in render_status_reply(view, None)


def test_deploy_approves_the_named_or_the_shown_commit() -> None:
    head, shown = "a" * 40, "b" * 40
    assert approval_for(None, head, shown) == shown  # what the comment showed, not the head
    assert approval_for("aaaaaaa", head, shown) == head
    assert approval_for("bbbbbbbb", head, shown) == shown
    refused = approval_for("ccccccc", head, shown)
    assert isinstance(refused, NoApproval) and "`ccccccc`" in refused.text
    assert "`bbbbbbb`" in refused.text  # says what was shown
    nothing = approval_for(None, head, None)
    assert isinstance(nothing, NoApproval) and f"deploy {head[:7]}" in nothing.text
