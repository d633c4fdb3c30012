"""The policy in force for one repository: the built-in defaults, then `default`, then every
`repos` glob that matches owner/name, in file order; a later match wins key by key.

Key by key means a list is replaced, never concatenated: `stacks: [aws]` in a later entry is
exactly `[aws]`, whatever earlier entries said. Globs are matched case-insensitively (GitHub
names are), with fnmatch rules, where `*` also matches `/`.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, replace
from fnmatch import fnmatchcase
from typing import Any

from app.policy.model import KEYS, Entry, Policy, PolicyFile

__all__ = ["Layer", "effective_policy", "git_hosts_anywhere", "layers", "matches", "merge_layers"]

_DEFAULTS = Policy()


@dataclass(frozen=True)
class Layer:
    """One entry that applies to a repository: `glob` None for `default`."""

    glob: str | None
    entry: Entry


def matches(glob: str, repository: str) -> bool:
    """Whether a `repos` glob covers owner/name (case-insensitive)."""
    return fnmatchcase(repository.lower(), glob.lower())


def layers(policy_file: PolicyFile, repository: str) -> Iterator[Layer]:
    """`default`, then each matching `repos` entry in file order: the order merging applies."""
    yield Layer(None, policy_file.document.default)
    for glob, entry in policy_file.document.repos.items():
        if matches(glob, repository):
            yield Layer(glob, entry)


def _as_policy_value(value: Any) -> Any:
    return tuple(value) if isinstance(value, list) else value


def merge_layers(applied: Iterator[Layer] | list[Layer]) -> Policy:
    """Each layer's keys over the previous ones; unset keys (None) change nothing."""
    changes: dict[str, Any] = {}
    for layer in applied:
        for key in KEYS:
            value = getattr(layer.entry, key)
            if value is not None:
                changes[key] = _as_policy_value(value)
    policy = replace(_DEFAULTS, **changes)
    if policy.git_hosts is None:
        policy = replace(policy, git_hosts=policy.allowed_git_hosts())
    return policy


def effective_policy(policy_file: PolicyFile, repository: str) -> Policy:
    """The policy in force for owner/name."""
    return merge_layers(layers(policy_file, repository))


def git_hosts_anywhere(policy_file: PolicyFile) -> frozenset[str]:
    """Every host some repository may fetch git stacks from: `default` alone, and `default`
    under each `repos` entry. The fetch refuses any other host before touching the network
    (which repository may use which host is decided, exactly, when its request is checked)."""
    default = Layer(None, policy_file.document.default)
    chains = [[default]] + [
        [default, Layer(glob, entry)] for glob, entry in policy_file.document.repos.items()
    ]
    return frozenset(host for chain in chains for host in merge_layers(chain).allowed_git_hosts())
