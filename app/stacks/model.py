"""Value types shared by the stack catalog, the HCL reader and the input mapping.

Kept free of parsing and I/O so that `app.stacks.mapping` can stay pure while
still speaking in these types.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

__all__ = [
    "RUNBOT_INSTANCE_VARIABLES",
    "RUNBOT_SILO_VARIABLES",
    "Output",
    "Stack",
    "StackError",
    "StackSource",
    "Template",
    "Variable",
    "validate_name",
]

_NAME_RE = re.compile(r"[a-z0-9][a-z0-9_-]{0,62}")

#: Instance variables runbot fills itself; they win over repo vars and silo outputs.
RUNBOT_INSTANCE_VARIABLES: frozenset[str] = frozenset(
    {
        "runbot_instance_id",
        "runbot_slot",
        "runbot_pr_number",
        "runbot_head_sha",
        "runbot_head_ref",
        "runbot_repository",
        "runbot_suspended",
        "runbot_workspace_dir",
        "runbot_source_dir",
    }
)

#: Silo variables runbot fills itself; they win over the operator's vars. `runbot_api_url` and
#: the sensitive `runbot_silo_token` are what a silo's ingress needs to call the silo API.
RUNBOT_SILO_VARIABLES: frozenset[str] = frozenset(
    {"runbot_silo_name", "runbot_workspace_dir", "runbot_api_url", "runbot_silo_token"}
)


class StackError(Exception):
    """A problem with a stack that its owner can fix; the message says where and how.

    The message is shown verbatim to operators (`runbot doctor`) and in PR
    comments, so it is a plain sentence rather than a code.
    """


def validate_name(kind: str, name: object) -> str:
    """Return `name` unchanged if it is safe to use as a directory and resource name.

    Names end up in filesystem paths and Terraform workspace/resource names, so
    anything that could traverse a path or collide by case is refused up front. It may come
    straight from YAML, so a non-string is refused too.
    """
    if not isinstance(name, str) or _NAME_RE.fullmatch(name) is None:
        raise StackError(
            f"{kind} name {name!r} is not allowed: use lowercase letters, digits, "
            "'-' and '_' (max 63)"
        )
    return name


@dataclass(frozen=True)
class Variable:
    """One `variable` block; `type` is the constraint as HCL text ("any" when omitted).

    `default` is the Python value of a literal default. Terraform only accepts
    constant defaults, so a non-literal one is kept as its expression text
    wrapped in `${...}`; it is informational, since runbot never passes defaults.
    """

    name: str
    type: str
    default: Any
    required: bool
    description: str
    sensitive: bool
    file: str
    line: int

    @property
    def location(self) -> str:
        """`file:line` for messages."""
        return f"{self.file}:{self.line}"


@dataclass(frozen=True)
class Output:
    """One `output` block (its value expression is not needed by runbot)."""

    name: str
    description: str
    sensitive: bool
    file: str
    line: int

    @property
    def location(self) -> str:
        """`file:line` for messages."""
        return f"{self.file}:{self.line}"


@dataclass(frozen=True)
class Template:
    """One Terraform root module: its interface and the backend it declares.

    `backend` is the label of `terraform { backend "<type>" {} }`, "cloud" for a
    `terraform { cloud {} }` block, or None when state would be local.
    """

    path: Path
    variables: dict[str, Variable]
    outputs: dict[str, Output]
    backend: str | None


@dataclass(frozen=True)
class StackSource:
    """Where a stack's code came from, so a later apply/destroy can use the same code.

    kind is "catalog" (operator's templates dir), "git" (url/ref/path, resolved
    to `commit`) or "repo" (the pull request's own repository).
    """

    kind: str
    url: str = ""
    ref: str = ""
    path: str = ""
    commit: str = ""


@dataclass(frozen=True)
class PoolSpec:
    """A stack's warm pool (`pool:` in its `runbot.yml`): how many instances to keep applied
    ahead of PRs in each silo, and how old one may grow before it is made again."""

    size: int
    max_age_seconds: int = 86_400


@dataclass(frozen=True)
class Stack:
    """A silo template and an instance template that belong together."""

    name: str
    root: Path
    silo: Template
    instance: Template
    source: StackSource
    #: The instance variables repositories may set (`repo_vars` in the stack's `runbot.yml`);
    #: None: the stack has no manifest, so any it declares that runbot and the silo leave.
    repo_vars: frozenset[str] | None = None
    #: None: the manifest asks for no pool (a silo output `runbot_pool_size` still may).
    pool: PoolSpec | None = None

    def provided_names(self) -> frozenset[str]:
        """Instance inputs runbot or the silo decide: a repository can never set them."""
        return RUNBOT_INSTANCE_VARIABLES | frozenset(self.silo.outputs)

    def needs_repo_vars(self) -> list[Variable]:
        """Instance variables only the repo config `vars` can fill.

        Not an error when loading (the repo may supply them), but worth listing in
        `runbot doctor` and docs so repository owners know what to set.
        """
        return [
            variable
            for name, variable in sorted(self.instance.variables.items())
            if variable.required
            and name not in RUNBOT_INSTANCE_VARIABLES
            and name not in self.silo.outputs
        ]

    def needs_operator_vars(self) -> list[Variable]:
        """Silo variables the operator must supply (no default, not runbot-provided)."""
        return [
            variable
            for name, variable in sorted(self.silo.variables.items())
            if variable.required and name not in RUNBOT_SILO_VARIABLES
        ]
