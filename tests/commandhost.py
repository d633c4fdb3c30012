"""An in-process runbot for command and tick tests: the real Workers, fake GitHub, no engine.

`Workers.build` wires the same objects `runbot serve` uses (intent, command handler, notifier,
GitHub gateway), but nothing runs in the background: a test delivers a payload with
`handle()` and sees its whole effect when the call returns. Environments stay `pending`
because no reconciler runs, which is all permission, grammar and TTL bookkeeping need.
"""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path
from typing import Any

from sqlmodel import select

from app.db.models import CommentCommand, Environment, PullRequest
from app.github.appgateway import GitHubAppGateway
from app.github.comment import MARKER
from app.lifecycle.service import pull_id
from app.runtime import build_runtime
from app.schedule.ticks import Ticks
from app.workers import Workers
from tests.apphost import INSTALLATION, REPO, app_settings, seed_repo
from tests.fakegithub.server import FakeGitHub

CONFIG = "stack: local\nsilo: cmd\nttl: {idle: 2h, max: 6h, warn_before: 30m}\nforks: approve\n"
SHA = "a1b2c3d4" * 5


class CommandHost:
    def __init__(
        self, tmp_path: Path, fake: FakeGitHub, database_url: str | None, config: str = CONFIG
    ) -> None:
        self.fake = fake
        settings = app_settings(tmp_path, fake, database_url)
        self.rt = build_runtime(settings)
        # No pacing: these tests count requests, not seconds.
        self.gateway = GitHubAppGateway(settings, min_write_interval=0.0)
        self.workers = Workers.build(self.rt, gateway=self.gateway)
        self.ticks = Ticks(self.rt.db, self.rt.lifecycle, self.gateway)
        seed_repo(fake, config)

    async def close(self) -> None:
        await self.gateway.aclose()
        self.rt.db.dispose()

    # ----- GitHub events -------------------------------------------------------------------------

    async def open_pull(
        self, number: int = 1, author: str = "alice", *, fork: bool = False, sha: str = SHA
    ) -> None:
        self.fake.add_pull(REPO, number, sha, f"feature/{number}", author=author, fork=fork)
        payload = self.fake.pull_request_event("opened", REPO, number)
        payload["installation"] = {"id": INSTALLATION, "node_id": "MDIz"}
        assert await self.workers.intent.handle("pull_request", payload)

    async def show_status(self, number: int = 1) -> None:
        """Post (or edit) the PR's status comment now, as the notifier would: what a maintainer
        reads before approving with `/runbot deploy`."""
        await self.workers.notifier.sync(pull_id(REPO, number))

    def comment_payload(
        self, body: str, author: str, number: int = 1, **kwargs: Any
    ) -> dict[str, Any]:
        payload = self.fake.issue_comment_event(REPO, number, body, author=author, **kwargs)
        payload["installation"] = {"id": INSTALLATION, "node_id": "MDIz"}
        return payload

    async def comment(self, body: str, author: str, number: int = 1, **kwargs: Any) -> int:
        """Post a comment as `author` and let runbot handle it; returns the comment id."""
        payload = self.comment_payload(body, author, number, **kwargs)
        await self.deliver(payload)
        return int(payload["comment"]["id"])

    async def deliver(self, payload: dict[str, Any]) -> None:
        await self.workers.intent.handle("issue_comment", payload)
        await self.workers.commands.answers.drain()  # the notifier loop would send them

    # ----- what happened -----------------------------------------------------------------------

    def reactions(self, comment_id: int) -> list[str]:
        return [r["content"] for r in self.fake.reactions(comment_id)]

    def replies(self, number: int = 1) -> list[str]:
        """Comments runbot posted on the PR other than the status comment."""
        bot = f"{self.fake.slug}[bot]"
        return [
            c["body"]
            for c in self.fake.comments(REPO, number)
            if c["user"]["login"] == bot and not c["body"].startswith(MARKER)
        ]

    def env(self, number: int = 1) -> Environment | None:
        return self.rt.lifecycle.latest_environment_for(REPO, number)

    def live(self, number: int = 1) -> Environment | None:
        return self.rt.lifecycle.live_environment_for(REPO, number)

    def unchanged(self, env: Environment | None, number: int = 1) -> bool:
        """The PR's live environment is still `env`, with no new desired state."""
        now = self.live(number)
        return (
            env is not None
            and now is not None
            and (now.id, now.desired, now.generation, now.expires_at)
            == (env.id, env.desired, env.generation, env.expires_at)
        )

    def pull(self, number: int = 1) -> PullRequest:
        with self.rt.db.session() as session:
            pull = session.get(PullRequest, pull_id(REPO, number))
        assert pull is not None
        return pull

    def ledger(self) -> list[CommentCommand]:
        with self.rt.db.session() as session:
            return list(session.exec(select(CommentCommand)))

    def permission_calls(self, login: str) -> int:
        return len(self.fake.requests_for("GET", f"/repos/{REPO}/collaborators/{login}/permission"))


def hours(value: float) -> timedelta:
    return timedelta(hours=value)
