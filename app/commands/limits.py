"""How much runbot answers someone below triage: what it may write for one command (pure).

A `/runbot` comment costs runbot GitHub writes (a reply, reactions), and writes are paced per
installation, so anyone who can comment could otherwise make every PR's status comment wait.
People with at least triage access, and a PR's author on that PR, are answered in full;
everyone else ("limited") gets at most one reply per PR per `reply_interval` (later replies edit
it), one reaction per comment, and at most `budget` writes per `window` across all PRs.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import timedelta
from enum import StrEnum

from app.access.roles import Role

__all__ = ["FloodLimits", "Step", "is_limited", "plan_answer"]


@dataclass(frozen=True)
class FloodLimits:
    """RUNBOT_COMMAND_REPLY_INTERVAL, RUNBOT_COMMAND_WRITE_BUDGET, RUNBOT_COMMAND_BUDGET_WINDOW."""

    reply_interval: timedelta = timedelta(minutes=10)
    budget: int = 10
    window: timedelta = timedelta(hours=1)


class Step(StrEnum):
    CREATE_REPLY = "create_reply"  # post a new reply comment
    EDIT_REPLY = "edit_reply"  # replace the text of this person's recent reply on the PR
    REACT = "react"  # the one reaction: 👍 or 😕


def is_limited(role: Role, *, is_author: bool) -> bool:
    """Is this commenter's answer capped? Below triage, and not the PR's own author."""
    return role < Role.TRIAGE and not is_author


def plan_answer(
    *, has_reply: bool, recent_reply: int | None, spent: int, limits: FloodLimits
) -> tuple[Step, ...]:
    """The writes a limited commenter's command gets, most useful first, within the budget.

    ``recent_reply``: the id of the reply runbot posted this person on this PR within the
    reply interval (edited instead of posting another); ``spent``: writes already made for
    this person within the budget window.
    """
    steps: list[Step] = []
    if has_reply:
        steps.append(Step.EDIT_REPLY if recent_reply is not None else Step.CREATE_REPLY)
    steps.append(Step.REACT)
    return tuple(steps[: max(0, limits.budget - spent)])
