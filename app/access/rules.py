"""May this person run this action on this pull request's environment? (pure)

One rule serves the `/runbot` comments, the dashboard and the API. It returns a typed verdict;
the wording of a refusal is each surface's own.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

from app.access.roles import Role

__all__ = ["Access", "Refusal", "Verdict", "authorize"]


@dataclass(frozen=True)
class Access:
    """What an action asks of the person: ``public`` actions only read (anyone, on closed PRs
    too); others need ``least_role`` and at least the operator's configured role, unless
    ``author_may`` and the person opened the PR. ``approves_code``: the action lets code
    nobody with write access has looked at run (a fork's, or one missing its label)."""

    public: bool = False
    least_role: Role = Role.NONE
    author_may: bool = False
    approves_code: bool = False


class Refusal(StrEnum):
    CLOSED = "closed"  # the pull request is closed: it takes no requests
    ROLE = "role"  # the person's role is below what the action needs
    FORK_AUTHOR = "fork_author"  # a fork's author approving their own code


@dataclass(frozen=True)
class Verdict:
    allowed: bool
    refusal: Refusal | None = None
    needed: Role | None = None


def authorize(
    access: Access,
    role: Role,
    *,
    is_author: bool,
    pr_state: str,
    is_fork: bool,
    required: Role = Role.WRITE,
) -> Verdict:
    """``required`` is the operator's RUNBOT_COMMAND_PERMISSION."""
    if access.public:
        return Verdict(True)
    if pr_state != "open":
        return Verdict(False, Refusal.CLOSED)
    needed = max(required, access.least_role)
    if role >= needed or (is_author and access.author_may):
        return Verdict(True)
    if is_author and is_fork and access.approves_code:
        return Verdict(False, Refusal.FORK_AUTHOR, needed)
    return Verdict(False, Refusal.ROLE, needed)
