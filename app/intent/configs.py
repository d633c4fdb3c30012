"""`.runbot.yml` as the default branch has it, at a resolved commit.

The configuration says which templates run next to runbot's secrets, so it is read only
from the repository's default branch as GitHub reports it, never from the branch a PR
targets: pushing a branch `x` with a config and opening a PR into `x` changes nothing. The
branch is resolved to a commit first and the file read at that commit, which is recorded on
the PR, its environment and each run.
"""

from __future__ import annotations

import asyncio

from app.db.models import PullRequest
from app.github.config import RepoConfig, parse_repo_config
from app.github.config_errors import ConfigError
from app.github.gateway import Gateway

__all__ = ["CONFIG_PATH", "ConfigPrefetch", "ConfigRead", "ConfigReader"]

CONFIG_PATH = ".runbot.yml"
#: The file's text (None: there is none) and the commit it was read at.
ConfigRead = tuple[str | None, str | None]
#: A read started early: the default branch it reads, and the read.
ConfigPrefetch = tuple[str, "asyncio.Future[ConfigRead]"]


class ConfigReader:
    def __init__(self, gateway: Gateway) -> None:
        self.gateway = gateway

    async def read(self, installation_id: int | None, repository: str, branch: str) -> ConfigRead:
        """The file at the commit the branch points at now, and that commit."""
        sha = await self.gateway.branch_sha(installation_id, repository, branch)
        if sha is None:
            return None, None
        text = await self.gateway.read_file(installation_id, repository, CONFIG_PATH, sha)
        return text, sha

    async def load(
        self, pull: PullRequest, prefetch: ConfigPrefetch | None = None
    ) -> tuple[RepoConfig | None, str | None]:
        """The parsed file of the PR's repository, and the commit it was read at; a broken
        file raises `ConfigError` carrying that commit."""
        branch = pull.default_branch or pull.base_ref
        if prefetch is not None and prefetch[0] == branch:
            text, sha = await prefetch[1]
        else:
            text, sha = await self.read(pull.installation_id, pull.repository, branch)
        if text is None:
            return None, sha
        try:
            return parse_repo_config(text), sha
        except ConfigError as exc:
            exc.commit = sha
            raise
