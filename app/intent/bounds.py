"""The operator policy and the stack's manifest applied to one `.runbot.yml`: pure checks.

The intent processor gathers the facts (the policy in force, the PR's base branch, the silo
the configuration would use, what the stack lets repositories set) and `refusals` returns
every rule the configuration breaks, each naming the key that would allow it. An empty list
lets the decision go on; anything else holds the PR, and nothing runs.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from app.github.config import GitStack, LocalStack, RepoConfig
from app.policy.checks import (
    CatalogStack,
    GitSource,
    RepoStack,
    Request,
    Rule,
    StackSource,
    Violation,
    check_request,
    code,
)
from app.policy.model import Forks, Policy
from app.stacks.mapping import refused_repo_vars

__all__ = ["SiloFacts", "refusals", "stack_request", "vars_refused"]


@dataclass(frozen=True)
class SiloFacts:
    """The silo a configuration names, as runbot knows it.

    ``conflict``: the silo exists and was built from another source (its source, for the
    message); ``creates``: accepting the configuration makes a new silo; ``owned``: how many
    silos the repository's configurations created already (this one excepted)."""

    name: str
    creates: bool
    owned: int
    conflict: str | None = None


def stack_request(config: RepoConfig) -> StackSource:
    stack = config.stack
    if isinstance(stack, GitStack):
        return GitSource(url=stack.git, path=stack.path)
    if isinstance(stack, LocalStack):
        return RepoStack(path=stack.path)
    return CatalogStack(name=stack)


def vars_refused(
    requested: Iterable[str], settable: frozenset[str] | None, provided: frozenset[str]
) -> Violation | None:
    """`vars:` names the repository may not set: runbot's own and the silo's outputs always,
    and, when the stack has a manifest, anything its `repo_vars` does not list."""
    refused = refused_repo_vars(dict.fromkeys(requested), settable, provided)
    if not refused:
        return None
    names = ", ".join(code(f"vars.{name}") for name in refused)
    allowed = sorted(settable or ())
    listed = ", ".join(code(name) for name in allowed) if allowed else "none"
    return Violation(
        Rule.REPO_VARS,
        "repo_vars",
        f"`.runbot.yml` sets {names}, which this repository may not set: the silo and runbot "
        f"decide those values (the stack lets repositories set: {listed}); remove them from "
        "`vars`, or the stack's owner can list them under `repo_vars` in its `runbot.yml`",
    )


def refusals(
    policy: Policy,
    config: RepoConfig,
    *,
    base_branch: str,
    base_is_default: bool,
    silo: SiloFacts,
    settable: frozenset[str] | None = None,
    provided: frozenset[str] = frozenset(),
) -> Sequence[Violation]:
    """Every rule `config` breaks for a PR into `base_branch`; [] when it may run."""
    request = Request(
        stack=stack_request(config),
        base_branch=base_branch,
        base_is_default=base_is_default,
        forks=Forks(config.forks),
        max_environments=config.max_environments,
        ttl_max=config.ttl.max,
        owned_silos=silo.owned,
        creates_silo=silo.creates,
    )
    found = check_request(policy, request)
    if silo.conflict is not None:
        found.append(
            Violation(
                Rule.SILO_SOURCE,
                "silo",
                f"the silo {code(silo.name)} is built from {silo.conflict}, not from the stack "
                "this `.runbot.yml` names; choose another `silo:` name (or none, for this "
                "stack's own)",
            )
        )
    refused_vars = vars_refused(config.vars, settable, provided)
    if refused_vars is not None:
        found.append(refused_vars)
    return found
