"""Comment floods (issue 21, must 3), tried over real HTTP: webhooks → runbot (uvicorn, its real
workers, GitHub writes paced per installation) → the fake GitHub, which records every write.

"25 `/runbot` comments from a user with read access caused 75 GitHub writes, and the flood
delayed every PR's status comment." The PRs here wait for a label, so their status comment
needs no engine run: what is timed is runbot's own path from webhook to comment.
"""

from __future__ import annotations

import time
from datetime import timedelta
from pathlib import Path

import pytest
from sqlmodel import select

from app.access.roles import Role
from app.commands.limits import FloodLimits, Step, is_limited, plan_answer
from app.db.models import CommentCommand
from app.github.comment import MARKER
from tests.apphost import INSTALLATION, REPO, WEBHOOK_SECRET, AppServer, app_settings, seed_repo
from tests.fakegithub.server import FakeGitHub, RecordedRequest
from tests.fakegithub.webhooks import deliver
from tests.helpers import wait_for

pytest_plugins = ["tests.fakegithub.pytest_plugin"]

CONFIG = "stack: local\nlabels: {require: [preview]}\n"
WRITES = frozenset({"POST", "PATCH", "PUT", "DELETE"})


def open_pull(server: AppServer, fake: FakeGitHub, number: int, author: str = "alice") -> float:
    """Open PR `number`; returns the monotonic time its webhook was sent."""
    fake.add_pull(REPO, number, f"{number:040x}", f"feature/{number}", author=author)
    payload = fake.pull_request_event("opened", REPO, number)
    payload["installation"] = {"id": INSTALLATION, "node_id": "MDIz"}
    sent = time.monotonic()
    assert deliver(server.webhook_url, "pull_request", payload, WEBHOOK_SECRET).status_code == 202
    return sent


def comment(server: AppServer, fake: FakeGitHub, body: str, author: str, number: int) -> int:
    payload = fake.issue_comment_event(REPO, number, body, author=author)
    payload["installation"] = {"id": INSTALLATION, "node_id": "MDIz"}
    assert deliver(server.webhook_url, "issue_comment", payload, WEBHOOK_SECRET).status_code == 202
    return int(payload["comment"]["id"])


def status_posted(fake: FakeGitHub, number: int) -> RecordedRequest | None:
    for request in fake.requests_for("POST", f"/repos/{REPO}/issues/{number}/comments"):
        if str((request.body or {}).get("body", "")).startswith(MARKER):
            return request
    return None


def status_latency(server: AppServer, fake: FakeGitHub, number: int) -> float:
    """Seconds from PR `number`'s opened webhook to runbot posting its status comment."""
    sent = open_pull(server, fake, number)
    wait_for(lambda: status_posted(fake, number) is not None, timeout=90)
    posted = status_posted(fake, number)
    assert posted is not None
    return posted.time - sent


def ledger(server: AppServer, author: str) -> list[CommentCommand]:
    with server.runtime.db.session() as session:
        return list(session.exec(select(CommentCommand).where(CommentCommand.author == author)))


def answered(server: AppServer, author: str, count: int) -> bool:
    rows = ledger(server, author)
    return len(rows) == count and all(row.status == "done" for row in rows)


def bot_replies(fake: FakeGitHub, number: int) -> list[dict[str, object]]:
    return [
        c
        for c in fake.comments(REPO, number)
        if c["user"]["login"] == fake.bot_login and not str(c["body"]).startswith(MARKER)
    ]


def test_case_a_reader_flood_of_25_commands_costs_at_most_10_writes_and_delays_no_status(
    tmp_path: Path, fake_github: FakeGitHub
) -> None:
    """25 help/typo comments from a reader: one reply (later ones edit it), one reaction per
    comment at most, at most 10 writes in all; another PR's status comment lands about as
    fast as it did without the flood, measured in this same test."""
    fake = fake_github
    seed_repo(fake, CONFIG)
    fake.set_permission(REPO, "rita", "read")
    with AppServer(app_settings(tmp_path, fake)) as server:
        interval = server.workers.gateway.min_write_interval
        assert interval > 0  # writes are paced, as against GitHub
        status_latency(server, fake, 1)  # the PR the flood lands on, with its status comment
        baseline = status_latency(server, fake, 2)

        mark = len(fake.requests)
        flood = [
            comment(server, fake, "/runbot help" if i % 2 else "/runbot hepl", "rita", 1)
            for i in range(25)
        ]
        flooded = status_latency(server, fake, 3)
        wait_for(lambda: answered(server, "rita", 25), timeout=120)

        writes = [
            r
            for r in fake.requests[mark:]
            if r.method in WRITES
            and not r.path.startswith("/app/")  # installation tokens
            and r.path != f"/repos/{REPO}/issues/3/comments"  # PR 3's status comment
            # ... and the environments' check runs and deployments: status, not answers
            and "/check-runs" not in r.path
            and "/deployments" not in r.path
        ]
        assert len(writes) <= 10, [f"{r.method} {r.path}" for r in writes]
        [reply] = bot_replies(fake, 1)  # one reply on the PR, edited by the later ones
        assert "edited to answer @rita's latest command" in str(reply["body"])
        assert fake.requests_for("PATCH", f"/repos/{REPO}/issues/comments/{reply['id']}")
        assert all(len(fake.reactions(cid)) <= 1 for cid in flood)
        assert fake.reactions(flood[0]) and fake.reactions(flood[0])[0]["content"] == "confused"
        assert sum(row.writes for row in ledger(server, "rita")) == len(writes)
        # The flood is not ahead of PR 3's status comment (it cost 75 writes, ~75 intervals):
        # generous slack, and relative to the latency measured here without a flood.
        assert flooded <= 2 * baseline + 4 * interval, (baseline, flooded)


def test_case_the_budget_is_per_person_across_prs_and_spares_triage_and_authors(
    tmp_path: Path, fake_github: FakeGitHub
) -> None:
    """A reader's budget spent on PR 1 leaves their command on PR 2 unanswered (its effect
    and its ledger entry are kept); someone with triage, and a PR's author on their own PR,
    get the full answer (👀, the reply, 👍) every time."""
    fake = fake_github
    seed_repo(fake, CONFIG)
    fake.set_permission(REPO, "rita", "read")
    fake.set_permission(REPO, "tess", "triage")
    settings = app_settings(tmp_path, fake, command_write_budget=4)
    with AppServer(settings) as server:
        status_latency(server, fake, 1)
        status_latency(server, fake, 2)
        first = comment(server, fake, "/runbot help", "rita", 1)
        second = comment(server, fake, "/runbot status", "rita", 1)
        wait_for(lambda: answered(server, "rita", 2), timeout=60)
        on_other_pr = comment(server, fake, "/runbot help", "rita", 2)
        wait_for(lambda: answered(server, "rita", 3), timeout=60)
        assert [len(fake.reactions(c)) for c in (first, second, on_other_pr)] == [1, 1, 0]
        assert len(bot_replies(fake, 1)) == 1 and bot_replies(fake, 2) == []
        assert sum(row.writes for row in ledger(server, "rita")) == 4
        [row] = [r for r in ledger(server, "rita") if r.comment_id == on_other_pr]
        assert row.outcome == "ok" and row.writes == 0

        for _ in range(2):
            tess = comment(server, fake, "/runbot help", "tess", 2)
            wait_for(lambda c=tess: len(fake.reactions(c)) == 2, timeout=60)
            assert [r["content"] for r in fake.reactions(tess)] == ["eyes", "+1"]
        author = comment(server, fake, "/runbot help", "alice", 2)
        wait_for(lambda: len(fake.reactions(author)) == 2, timeout=60)
        assert len(bot_replies(fake, 2)) == 3  # tess twice, alice once: never folded


@pytest.mark.parametrize(
    ("role", "is_author", "limited"),
    [
        (Role.NONE, False, True),
        (Role.READ, False, True),
        (Role.READ, True, False),
        (Role.TRIAGE, False, False),
        (Role.ADMIN, False, False),
    ],
)
def test_case_who_is_limited(role: Role, is_author: bool, limited: bool) -> None:
    assert is_limited(role, is_author=is_author) is limited


def test_case_a_limited_answer_edits_a_recent_reply_and_stops_at_the_budget() -> None:
    limits = FloodLimits(reply_interval=timedelta(minutes=10), budget=5)
    assert plan_answer(has_reply=True, recent_reply=None, spent=0, limits=limits) == (
        Step.CREATE_REPLY,
        Step.REACT,
    )
    assert plan_answer(has_reply=True, recent_reply=7, spent=2, limits=limits) == (
        Step.EDIT_REPLY,
        Step.REACT,
    )
    assert plan_answer(has_reply=True, recent_reply=7, spent=4, limits=limits) == (Step.EDIT_REPLY,)
    assert plan_answer(has_reply=False, recent_reply=None, spent=5, limits=limits) == ()
