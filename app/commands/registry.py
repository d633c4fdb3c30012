"""Every `/runbot` command, declared once: how it is written, who may use it, what runs it.

Adding a command is one entry here plus its handler in `actions.py`: the grammar, the help
text, the permission rule, the comment handler and the dashboard's and API's actions all read
this table. Order is the order help lists them in.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from app.access.roles import Role
from app.access.rules import Access
from app.commands import actions
from app.commands.actions import ActionRequest, ActionResult, CommandContext
from app.commands.grammar import Vocabulary
from app.commands.replies import Outcome

__all__ = ["COMMANDS", "ENV_ACTIONS", "VOCABULARY", "CommandSpec", "DashboardAction", "spec"]


@dataclass(frozen=True)
class DashboardAction:
    """The command as a dashboard button and an API endpoint."""

    summary: str  # the API's description of the endpoint
    run: Callable[[ActionRequest], ActionResult]
    rank: int  # where the dashboard shows its button: the irreversible ones last


@dataclass(frozen=True)
class CommandSpec:
    name: str
    summary: str  # the help line's explanation
    access: Access
    run: Callable[[CommandContext], Awaitable[Outcome]]
    syntax: str = ""  # as help shows it; the name when empty
    example: str = ""  # the syntax when empty
    takes_duration: bool = False
    takes_commit: bool = False  # an optional commit SHA after the name
    aliases: tuple[str, ...] = ()
    action: DashboardAction | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "syntax", self.syntax or self.name)
        object.__setattr__(self, "example", self.example or self.syntax)


READ_ONLY = Access(public=True)
#: What the PR's author may do to its own environment without the configured role.
AUTHOR_OR_ROLE = Access(author_may=True)
#: Not for the author alone: for a fork these run code nobody with write access has seen.
ROLE_ONLY = Access()

COMMANDS: tuple[CommandSpec, ...] = (
    CommandSpec("help", "show this list of commands", READ_ONLY, actions.run_help),
    CommandSpec(
        "status",
        "show the environment's state, URL and when it expires",
        READ_ONLY,
        actions.run_status,
    ),
    CommandSpec(
        "extend",
        "push the expiry back by a duration like 90s, 30m, 4h, 2d, 1w or 1h30m "
        "(never past the environment's maximum lifetime)",
        AUTHOR_OR_ROLE,
        actions.run_extend,
        syntax="extend <duration>",
        example="extend 4h",
        takes_duration=True,
        action=DashboardAction(
            "Push the expiry back by `by` (e.g. 4h), never past the maximum lifetime.",
            actions.act_extend,
            rank=1,
        ),
    ),
    CommandSpec(
        "destroy",
        "tear the environment down now (alias: `stop`)",
        AUTHOR_OR_ROLE,
        actions.run_destroy,
        aliases=("stop",),
        action=DashboardAction("Tear the environment down now.", actions.act_destroy, rank=5),
    ),
    CommandSpec(
        "redeploy",
        "tear the environment down and deploy it again from scratch",
        ROLE_ONLY,
        actions.run_redeploy,
        action=DashboardAction(
            "Destroy it and create a fresh one (new id) at the same commit.",
            actions.act_redeploy,
            rank=4,
        ),
    ),
    CommandSpec(
        "deploy",
        "approve and deploy the commit the status comment shows, or the commit named; a"
        " later push waits for a new approval",
        # Approving a deploy runs someone's code: never less than write, whatever the setting.
        Access(least_role=Role.WRITE, approves_code=True),
        actions.run_deploy,
        syntax="deploy [<commit>]",
        example="deploy",
        takes_commit=True,
    ),
    CommandSpec(
        "sleep",
        "put the environment to sleep to save resources until `wake`",
        AUTHOR_OR_ROLE,
        actions.run_sleep,
        action=DashboardAction(
            "Suspend it: the stack applies with runbot_suspended=true.",
            actions.act_sleep,
            rank=2,
        ),
    ),
    CommandSpec(
        "wake",
        "wake a sleeping environment",
        AUTHOR_OR_ROLE,
        actions.run_wake,
        action=DashboardAction("Resume a suspended environment.", actions.act_wake, rank=3),
    ),
)

_BY_NAME = {command.name: command for command in COMMANDS}
VOCABULARY = Vocabulary(COMMANDS)
#: Commands the dashboard and the API offer on an environment, in the dashboard's order.
ENV_ACTIONS: tuple[str, ...] = tuple(
    name
    for _, name in sorted(
        (command.action.rank, command.name) for command in COMMANDS if command.action
    )
)


def spec(name: str) -> CommandSpec:
    """The command called ``name`` (a canonical name, as the grammar returns it)."""
    return _BY_NAME[name]
