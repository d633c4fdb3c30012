"""A PR's environment begins: taken from the repository's warm pool when one is ready, else
created; and the pool is told what its next instances are made of."""

from __future__ import annotations

from app.db.models import Environment, PullRequest
from app.github.config import RepoConfig
from app.lifecycle.pool import PullValues
from app.lifecycle.service import Lifecycle

__all__ = ["start_environment", "want_pool"]


def want_pool(lifecycle: Lifecycle, pull: PullRequest, config: RepoConfig, silo: str) -> None:
    """The repository's warm instances in ``silo`` are made of what this PR saw: the default
    branch's head and the vars of its `.runbot.yml` (a write only when these moved)."""
    if pull.config_sha:
        lifecycle.want_pool(
            silo,
            pull.repository,
            installation_id=pull.installation_id,
            default_branch=pull.default_branch or pull.base_ref,
            config_sha=pull.config_sha,
            vars=dict(config.vars),
        )


def start_environment(
    lifecycle: Lifecycle, pull: PullRequest, config: RepoConfig, silo: str, sha: str
) -> Environment:
    """Claim a ready warm instance for the PR (its values then applied as an update), or
    create one; either way the pool refills in the background."""
    want_pool(lifecycle, pull, config, silo)
    values = PullValues(
        pull.repository,
        pull.number,
        sha,
        pull.head_ref,
        pull.author,
        dict(config.vars),
        installation_id=pull.installation_id,
        ttl=config.ttl_policy(),
        config_sha=pull.config_sha,
    )
    return lifecycle.claim_warm(silo, values) or lifecycle.create_for_pull(silo, values)
