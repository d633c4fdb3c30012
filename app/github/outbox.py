"""Local mode's stand-in for GitHub: writes land in the ``outboxmessage`` table.

Without App credentials runbot still runs the whole flow (status comment, deployment,
statuses) so a demo or a developer sees exactly what would have been sent: every write is
stored with the REST method and path GitHub would have received, and logged. Ids come
from the outbox rows, so they keep increasing across restarts and later updates refer
to the right stored comment.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from sqlmodel import col, select

from app.access.roles import Role
from app.db.models import OutboxMessage
from app.github.config_errors import CONFIG_FILENAME
from app.github.gateway import (
    CHECK_NAME,
    DEPLOYMENT_STATES,
    REACTIONS,
    CheckRunFields,
    GitHubError,
    NotFoundOnGitHub,
    check_run_body,
    check_tree_limits,
    fit_comment,
    fit_status_description,
)
from app.github.payloads import PullFacts

if TYPE_CHECKING:
    from app.db.session import Database

__all__ = ["DEFAULT_LOCAL_CONFIG", "OutboxGateway"]

logger = logging.getLogger(__name__)

#: What ``.runbot.yml`` says in local mode when no config text was given.
DEFAULT_LOCAL_CONFIG = "stack: local\n"
_LOG_BODY_CHARS = 300


def _clean_path(path: str) -> str:
    clean = path.strip().strip("/")
    while clean.startswith("./"):
        clean = clean[2:]
    return clean


class OutboxGateway:
    """The ``Gateway`` of local mode: reads answer from memory, writes go to the outbox."""

    local = True

    def __init__(
        self, db: Database, config_text: str | None, local_files: dict[str, str] | None = None
    ) -> None:
        self.db = db
        self.config_text = DEFAULT_LOCAL_CONFIG if config_text is None else config_text
        self.local_files = {_clean_path(k): v for k, v in (local_files or {}).items()}

    # ------------------------------------------------------------------ storage

    def _store_sync(self, method: str, path: str, body: dict[str, Any]) -> int:
        with self.db.session() as session:
            message = OutboxMessage(method=method, path=path, body=body)
            session.add(message)
            session.commit()
            if message.id is None:  # pragma: no cover - the database assigns it on insert
                raise GitHubError("the outbox did not assign an id to a stored message.")
            return message.id

    async def _store(self, method: str, path: str, body: dict[str, Any]) -> int:
        message_id = await asyncio.to_thread(self._store_sync, method, path, body)
        shown = json.dumps(body, ensure_ascii=False)
        if len(shown) > _LOG_BODY_CHARS:
            shown = shown[: _LOG_BODY_CHARS - 1] + "…"
        logger.info("outbox: %s %s %s", method, path, shown)
        return message_id

    def _messages_sync(self, method: str, paths: list[str]) -> list[OutboxMessage]:
        if not paths:
            return []
        with self.db.session() as session:
            query = (
                select(OutboxMessage)
                .where(OutboxMessage.method == method, col(OutboxMessage.path).in_(paths))
                .order_by(col(OutboxMessage.id))
            )
            return list(session.exec(query))

    async def _messages(self, method: str, paths: list[str]) -> list[OutboxMessage]:
        return await asyncio.to_thread(self._messages_sync, method, paths)

    def _comment_exists_sync(self, repo: str, comment_id: int) -> bool:
        with self.db.session() as session:
            message = session.get(OutboxMessage, comment_id)
        if message is None or message.method != "POST":
            return False
        prefix = f"/repos/{repo}/issues/"
        return message.path.startswith(prefix) and message.path.endswith("/comments")

    # ------------------------------------------------------------------ reads

    async def read_file(
        self, installation_id: int | None, repo: str, path: str, ref: str
    ) -> str | None:
        clean = _clean_path(path)
        if clean == CONFIG_FILENAME:
            return self.config_text
        return self.local_files.get(clean)

    async def branch_sha(self, installation_id: int | None, repo: str, branch: str) -> str | None:
        """Local mode has no commits: the configuration's own digest stands for one."""
        return hashlib.sha1(self.config_text.encode()).hexdigest() if self.config_text else None

    async def list_tree(
        self, installation_id: int | None, repo: str, path: str, ref: str
    ) -> dict[str, str]:
        root = _clean_path(path)
        prefix = f"{root}/" if root else ""
        tree = {
            name[len(prefix) :]: text
            for name, text in sorted(self.local_files.items())
            if name.startswith(prefix)
        }
        if not tree:
            raise NotFoundOnGitHub(f"{repo} has no directory {root or '/'} among the local files.")
        check_tree_limits(repo, root, len(tree), sum(len(t.encode()) for t in tree.values()))
        return tree

    async def find_comment(
        self, installation_id: int | None, repo: str, number: int, marker: str
    ) -> int | None:
        """The stored comment on that PR whose latest text (after PATCHes) carries ``marker``."""
        created = await self._messages("POST", [f"/repos/{repo}/issues/{number}/comments"])
        bodies = {m.id: str(m.body.get("body", "")) for m in created if m.id is not None}
        paths = {f"/repos/{repo}/issues/comments/{cid}": cid for cid in bodies}
        for update in await self._messages("PATCH", list(paths)):
            bodies[paths[update.path]] = str(update.body.get("body", ""))
        return next((cid for cid, body in bodies.items() if marker in body), None)

    async def permission(self, installation_id: int | None, repo: str, username: str) -> Role:
        return Role.ADMIN  # the person running local mode owns everything

    async def list_open_pulls(self, installation_id: int | None, repo: str) -> list[PullFacts]:
        return []

    async def get_pull(
        self, installation_id: int | None, repo: str, number: int
    ) -> PullFacts | None:
        return None  # local mode: the webhook payload is all there is

    async def installation_repos(self, installation_id: int) -> list[str]:
        return []

    async def ci_state(self, installation_id: int | None, repo: str, sha: str) -> str:
        return "success"

    async def get_app(self) -> dict[str, Any]:
        return {"slug": None, "name": "runbot (local mode)", "local": True}

    async def download_tarball(
        self, installation_id: int | None, repo: str, sha: str, write: Callable[[bytes], None]
    ) -> None:
        raise GitHubError(
            "local mode has no GitHub to download a commit's source from; set RUNBOT_LOCAL_REPO"
            " to the git repository that holds the pull requests' commits."
        )

    async def installation_token(self, installation_id: int) -> str:
        raise GitHubError(
            "local mode has no GitHub App, so there is no installation token; set"
            " RUNBOT_GITHUB_APP_ID and a private key to fetch private stacks."
        )

    # ------------------------------------------------------------------ writes

    async def create_comment(
        self, installation_id: int | None, repo: str, number: int, body: str
    ) -> int:
        return await self._store(
            "POST", f"/repos/{repo}/issues/{number}/comments", {"body": fit_comment(body)}
        )

    async def update_comment(
        self, installation_id: int | None, repo: str, comment_id: int, body: str
    ) -> None:
        if not await asyncio.to_thread(self._comment_exists_sync, repo, comment_id):
            raise NotFoundOnGitHub(f"comment {comment_id} in {repo} is not in the outbox.")
        await self._store(
            "PATCH", f"/repos/{repo}/issues/comments/{comment_id}", {"body": fit_comment(body)}
        )

    async def add_reaction(
        self, installation_id: int | None, repo: str, comment_id: int, content: str
    ) -> None:
        if content not in REACTIONS:
            raise ValueError(f"unknown reaction {content!r}; GitHub accepts {sorted(REACTIONS)}")
        await self._store(
            "POST", f"/repos/{repo}/issues/comments/{comment_id}/reactions", {"content": content}
        )

    async def create_deployment(
        self, installation_id: int | None, repo: str, ref: str, environment: str, description: str
    ) -> int:
        return await self._store(
            "POST",
            f"/repos/{repo}/deployments",
            {
                "ref": ref,
                "environment": environment,
                "description": description,
                "transient_environment": True,
                "production_environment": False,
                "auto_merge": False,
                "required_contexts": [],
            },
        )

    async def create_deployment_status(
        self,
        installation_id: int | None,
        repo: str,
        deployment_id: int,
        state: str,
        environment_url: str | None,
        log_url: str | None,
        description: str,
    ) -> None:
        if state not in DEPLOYMENT_STATES:
            raise ValueError(f"unknown deployment state {state!r}")
        body: dict[str, Any] = {
            "state": state,
            "description": fit_status_description(description),
            "auto_inactive": False,
        }
        if environment_url is not None:
            body["environment_url"] = environment_url
        if log_url is not None:
            body["log_url"] = log_url
        await self._store("POST", f"/repos/{repo}/deployments/{deployment_id}/statuses", body)

    async def list_deployments(
        self, installation_id: int | None, repo: str, environment: str
    ) -> list[int]:
        created = await self._messages("POST", [f"/repos/{repo}/deployments"])
        gone = {
            m.path
            for m in await self._messages(
                "DELETE", [f"/repos/{repo}/deployments/{m.id}" for m in created]
            )
        }
        return [
            m.id
            for m in created
            if m.id is not None
            and m.body.get("environment") == environment
            and f"/repos/{repo}/deployments/{m.id}" not in gone
        ]

    async def delete_deployment(
        self, installation_id: int | None, repo: str, deployment_id: int
    ) -> None:
        await self._store("DELETE", f"/repos/{repo}/deployments/{deployment_id}", {})

    async def delete_environment(
        self, installation_id: int | None, repo: str, environment: str
    ) -> None:
        await self._store("DELETE", f"/repos/{repo}/environments/{environment}", {})

    async def create_check_run(
        self, installation_id: int | None, repo: str, sha: str, fields: CheckRunFields
    ) -> int:
        body = {"name": CHECK_NAME, "head_sha": sha, **check_run_body(fields)}
        return await self._store("POST", f"/repos/{repo}/check-runs", body)

    async def update_check_run(
        self, installation_id: int | None, repo: str, check_run_id: int, fields: CheckRunFields
    ) -> None:
        await self._store(
            "PATCH", f"/repos/{repo}/check-runs/{check_run_id}", check_run_body(fields)
        )

    async def find_check_run(self, installation_id: int | None, repo: str, sha: str) -> int | None:
        created = await self._messages("POST", [f"/repos/{repo}/check-runs"])
        ours = [m for m in created if m.id is not None and m.body.get("head_sha") == sha]
        done = {
            m.path
            for m in await self._messages(
                "PATCH", [f"/repos/{repo}/check-runs/{m.id}" for m in ours]
            )
            if m.body.get("status") == "completed"
        }
        open_runs = [
            m.id
            for m in ours
            if m.body.get("status") != "completed"
            and f"/repos/{repo}/check-runs/{m.id}" not in done
        ]
        return open_runs[-1] if open_runs else None

    async def aclose(self) -> None:
        """Nothing to release: the database belongs to the caller."""
