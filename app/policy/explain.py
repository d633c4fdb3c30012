"""Why a repository has the policy it has: each key's value and the entry that set it.

`runbot policy explain`, the API and the doctor show the same `Explanation`, so an operator
asking "why was this refused" sees the line of the file to change.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from app.policy.load import dotted
from app.policy.merge import layers, merge_layers
from app.policy.model import KEYS, Policy, PolicyFile

__all__ = ["Explanation", "Origin", "OriginKind", "explain", "explanation_record", "render"]


class OriginKind(StrEnum):
    BUILT_IN = "built-in"  # no entry sets the key
    DEFAULT = "default"  # the file's `default` entry
    REPOS = "repos"  # a `repos` glob
    DERIVED = "derived"  # git_hosts left unset: the hosts of git_stacks


@dataclass(frozen=True)
class Origin:
    """Where one key's value comes from; `line` is the line of the key in the file."""

    kind: OriginKind
    glob: str | None = None
    line: int | None = None

    def __str__(self) -> str:
        if self.kind is OriginKind.BUILT_IN:
            return "built-in default"
        if self.kind is OriginKind.DERIVED:
            return "derived: the hosts of git_stacks"
        where = "default" if self.glob is None else dotted(("repos", self.glob))
        return where if self.line is None else f"{where} (line {self.line})"


@dataclass(frozen=True)
class Explanation:
    """The policy in force for `repository`, where each value comes from, and what matched."""

    repository: str
    policy: Policy
    origins: dict[str, Origin]
    matched: tuple[str, ...]  # the `repos` globs that apply, in file order
    policy_file: PolicyFile


def explain(policy_file: PolicyFile, repository: str) -> Explanation:
    """The effective policy of owner/name, each key with the last entry that set it."""
    applied = list(layers(policy_file, repository))
    origins = {key: Origin(OriginKind.BUILT_IN) for key in KEYS}
    for layer in applied:
        kind = OriginKind.DEFAULT if layer.glob is None else OriginKind.REPOS
        path: tuple[str, ...] = ("default",) if layer.glob is None else ("repos", layer.glob)
        for key in KEYS:
            if getattr(layer.entry, key) is not None:
                origins[key] = Origin(kind, layer.glob, policy_file.lines.get((*path, key)))
    if origins["git_hosts"].kind is OriginKind.BUILT_IN:
        origins["git_hosts"] = Origin(OriginKind.DERIVED)
    return Explanation(
        repository=repository,
        policy=merge_layers(applied),
        origins=origins,
        matched=tuple(layer.glob for layer in applied if layer.glob is not None),
        policy_file=policy_file,
    )


def explanation_record(explanation: Explanation) -> dict[str, Any]:
    """JSON-ready: what the API returns."""
    policy_file = explanation.policy_file
    return {
        "repository": explanation.repository,
        "source": policy_file.source,
        "digest": policy_file.digest,
        "in_force": policy_file.describe(),
        "matched": list(explanation.matched),
        "policy": {key: explanation.policy.value_of(key) for key in KEYS},
        "origins": {key: str(origin) for key, origin in explanation.origins.items()},
    }


def render(explanation: Explanation) -> str:
    """Plain text for the terminal: one key per line, its value and where it comes from."""
    matched = ["default", *(dotted(("repos", glob)) for glob in explanation.matched)]
    lines = [
        f"policy      {explanation.policy_file.describe()}",
        f"repository  {explanation.repository}",
        f"entries     {', '.join(matched)}",
        "",
    ]
    width = max(len(key) for key in KEYS) + 2
    shown = {key: json.dumps(explanation.policy.value_of(key)) for key in KEYS}
    value_width = min(40, max(len(text) for text in shown.values())) + 2
    for key in KEYS:
        lines.append(
            f"{key:<{width}}{shown[key]:<{value_width}}{explanation.origins[key]}".rstrip()
        )
    return "\n".join(lines)
