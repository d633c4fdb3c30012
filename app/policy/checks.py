"""The pure checks: may this repository's `.runbot.yml` run, within the policy in force?

`check_request` returns every `Violation` at once (an empty list: allowed), each with its
`Rule`, the policy key that would allow it and a sentence for the PR that names both. Code
branches on the rule; people read the message. `cap_ttl` and `cap_environments` bound what
is not refused but clipped: `/runbot extend` past `max_ttl` stops at it.

The request's text (branch names, git URLs) is chosen by whoever can push a branch, so
messages quote it as bounded inline code that cannot break out of its span.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import timedelta
from enum import StrEnum
from fnmatch import fnmatchcase

from app.policy.model import Forks, Policy, git_host, plain_url
from app.ttl.durations import format_duration

__all__ = [
    "CatalogStack",
    "GitSource",
    "RepoStack",
    "Request",
    "Rule",
    "StackSource",
    "Violation",
    "cap_environments",
    "cap_ttl",
    "check_base_branch",
    "check_request",
    "check_stack",
]

DEFAULT_BRANCH = "default"  # in `base_branches`: the repository's default branch
_SHOW_LIMIT = 80
_ALLOW = "an operator can allow it"


@dataclass(frozen=True)
class CatalogStack:
    """`stack: <name>`: a stack of the operator's catalog."""

    name: str


@dataclass(frozen=True)
class RepoStack:
    """`stack: {path: ...}`: templates from the repository's own tree."""

    path: str


@dataclass(frozen=True)
class GitSource:
    """`stack: {git: URL, path: ...}`: templates from another git repository."""

    url: str
    path: str = "."


StackSource = CatalogStack | RepoStack | GitSource


@dataclass(frozen=True)
class Request:
    """What one repository's `.runbot.yml` asks for, as the caller gathered it.

    `owned_silos` counts the silos the repository's configurations own already (this one's
    excepted); `creates_silo` says whether accepting this configuration makes a new one."""

    stack: StackSource
    base_branch: str
    base_is_default: bool
    forks: Forks = Forks.OFF
    max_environments: int = 10
    ttl_max: timedelta = timedelta(days=7)
    owned_silos: int = 0
    creates_silo: bool = False


class Rule(StrEnum):
    """Which rule refused a request; stored and branched on, so the values are stable."""

    CATALOG_STACK = "catalog_stack"
    REPO_STACK = "repo_stack"
    GIT_STACK = "git_stack"
    GIT_HOST = "git_host"
    BASE_BRANCH = "base_branch"
    FORKS = "forks"
    MAX_ENVIRONMENTS = "max_environments"
    MAX_TTL = "max_ttl"
    MAX_SILOS = "max_silos"
    # Not the operator policy's, but refused the same way: the stack's manifest, the silo.
    REPO_VARS = "repo_vars"
    SILO_SOURCE = "silo_source"


#: The rules of the operator policy file itself (the others are the stack's and the silo's).
POLICY_RULES = frozenset(Rule) - {Rule.REPO_VARS, Rule.SILO_SOURCE}

#: The policy key an operator changes to allow what each rule refused.
RULE_KEYS: dict[Rule, str] = {
    Rule.CATALOG_STACK: "stacks",
    Rule.REPO_STACK: "repo_stacks",
    Rule.GIT_STACK: "git_stacks",
    Rule.GIT_HOST: "git_hosts",
    Rule.BASE_BRANCH: "base_branches",
    Rule.FORKS: "forks",
    Rule.MAX_ENVIRONMENTS: "max_environments",
    Rule.MAX_TTL: "max_ttl",
    Rule.MAX_SILOS: "max_silos",
    Rule.REPO_VARS: "repo_vars",
    Rule.SILO_SOURCE: "silo",
}


@dataclass(frozen=True)
class Violation:
    """One refusal: the rule, the policy key that would allow it, and a sentence for people."""

    rule: Rule
    key: str
    message: str


def _violation(rule: Rule, message: str) -> Violation:
    return Violation(rule, RULE_KEYS[rule], message)


def code(value: object) -> str:
    """Inline code for untrusted text: bounded, one line, no way out of the span."""
    text = " ".join(str(value).split())
    if len(text) > _SHOW_LIMIT:
        text = text[: _SHOW_LIMIT - 1] + "…"
    return "`" + text.replace("`", "'") + "`"


def _setting(key: str, value: object) -> str:
    return f"`{key}: {json.dumps(value)}` in the operator policy"


# ----- stacks -----------------------------------------------------------------------------


def under_prefix(url: str, prefix: str) -> bool:
    """Whether `url` lies under a `git_stacks` prefix, at a path boundary.

    `https://github.com/octo-org` covers `.../octo-org/x.git` and `.../octo-org.git`, but not
    `.../octo-org-evil/x.git` nor `https://github.com/octo-org@evil.example/x.git`."""
    if not url.startswith(prefix):
        return False
    rest = url[len(prefix) :]
    return prefix.endswith(("/", ":")) or rest in ("", ".git") or rest.startswith("/")


def check_stack(policy: Policy, stack: StackSource) -> list[Violation]:
    """Whether the repository may use this stack source."""
    if isinstance(stack, CatalogStack):
        if any(fnmatchcase(stack.name, glob) for glob in policy.stacks):
            return []
        return [
            _violation(
                Rule.CATALOG_STACK,
                f"this repository may not use the stack {code(stack.name)} "
                f"({_setting('stacks', list(policy.stacks))}); {_ALLOW} by adding "
                f"{code(stack.name)} to `stacks` for this repository",
            )
        ]
    if isinstance(stack, RepoStack):
        if policy.repo_stacks:
            return []
        return [
            _violation(
                Rule.REPO_STACK,
                "this repository may not use stacks from its own tree "
                f"({_setting('repo_stacks', False)}); {_ALLOW} with `repo_stacks: true` "
                "for this repository",
            )
        ]
    url = stack.url
    if not plain_url(url):
        return [
            _violation(
                Rule.GIT_STACK,
                f"the git URL {code(url)} has `.` or `..` segments or %-escapes, so no "
                "`git_stacks` prefix of the operator policy covers it; write the URL plainly",
            )
        ]
    if not any(under_prefix(url, prefix) for prefix in policy.git_stacks):
        return [
            _violation(
                Rule.GIT_STACK,
                f"this repository may not use stacks from {code(url)} "
                f"({_setting('git_stacks', list(policy.git_stacks))}); {_ALLOW} by adding a "
                "prefix of that URL to `git_stacks` for this repository",
            )
        ]
    host = git_host(url)
    hosts = policy.allowed_git_hosts()
    if host is None or host not in hosts:
        return [
            _violation(
                Rule.GIT_HOST,
                f"this repository may not fetch stacks from the host {code(host or url)} "
                f"({_setting('git_hosts', list(hosts))}); {_ALLOW} by adding "
                f"{code(host or url)} to `git_hosts` for this repository",
            )
        ]
    return []


# ----- base branch ------------------------------------------------------------------------


def base_branch_allowed(policy: Policy, branch: str, is_default: bool) -> bool:
    """`default` stands for the default branch; the other entries are branch globs."""
    for entry in policy.base_branches:
        if entry == DEFAULT_BRANCH:
            if is_default:
                return True
        elif fnmatchcase(branch, entry):
            return True
    return False


def check_base_branch(policy: Policy, branch: str, is_default: bool) -> Violation | None:
    """Whether a PR into `branch` may get an environment at all."""
    if base_branch_allowed(policy, branch, is_default):
        return None
    which = "the default branch" if is_default else f"the branch {code(branch)}"
    return _violation(
        Rule.BASE_BRANCH,
        f"pull requests into {which} get no environment here "
        f"({_setting('base_branches', list(policy.base_branches))}); {_ALLOW} by adding "
        + ("`default`" if is_default else f"{code(branch)} or a glob such as `release/*`")
        + " to `base_branches` for this repository",
    )


# ----- the whole request ------------------------------------------------------------------

_FORKS_ORDER = (Forks.OFF, Forks.APPROVE)


def check_request(policy: Policy, request: Request) -> list[Violation]:
    """Every rule the request breaks, in the order of the policy keys; [] when it may run."""
    found = check_stack(policy, request.stack)
    base = check_base_branch(policy, request.base_branch, request.base_is_default)
    if base is not None:
        found.append(base)
    if _FORKS_ORDER.index(request.forks) > _FORKS_ORDER.index(policy.forks):
        found.append(
            _violation(
                Rule.FORKS,
                f"`.runbot.yml` asks for `forks: {request.forks}`, but this repository may "
                f"allow at most `forks: {policy.forks}` ({_setting('forks', policy.forks.value)}"
                f"); {_ALLOW} with `forks: {request.forks}` for this repository",
            )
        )
    if request.max_environments > policy.max_environments:
        found.append(
            _violation(
                Rule.MAX_ENVIRONMENTS,
                f"`.runbot.yml` asks for `max_environments: {request.max_environments}`, more "
                f"than this repository may have "
                f"({_setting('max_environments', policy.max_environments)}); ask for at most "
                f"{policy.max_environments}, or an operator can raise `max_environments` for "
                "this repository",
            )
        )
    if request.ttl_max > policy.max_ttl:
        wanted, ceiling = format_duration(request.ttl_max), format_duration(policy.max_ttl)
        found.append(
            _violation(
                Rule.MAX_TTL,
                f"`.runbot.yml` asks for `ttl.max: {wanted}`, longer than an environment may "
                f"live here ({_setting('max_ttl', ceiling)}); ask for at most {ceiling}, or an "
                "operator can raise `max_ttl` for this repository",
            )
        )
    if request.creates_silo and request.owned_silos + 1 > policy.max_silos:
        found.append(
            _violation(
                Rule.MAX_SILOS,
                f"this configuration would create a silo, and the repository owns "
                f"{request.owned_silos} already "
                f"({_setting('max_silos', policy.max_silos)}); reuse a silo it owns, or an "
                "operator can raise `max_silos` for this repository",
            )
        )
    return found


def cap_ttl(policy: Policy, requested: timedelta) -> timedelta:
    """A lifetime bounded by `max_ttl` (what `/runbot extend` may reach at most)."""
    return min(requested, policy.max_ttl)


def cap_environments(policy: Policy, requested: int) -> int:
    """An environment count bounded by `max_environments`."""
    return min(requested, policy.max_environments)
