"""The silo and environment state machines (and why a PR has none), as pure data and functions.

Desired state is what people asked for; status is what the last run observed. `plan_action`
is the only place that decides what a worker does with a claimed target.
"""

from __future__ import annotations

from enum import StrEnum


class Desired(StrEnum):
    PRESENT = "present"
    SUSPENDED = "suspended"  # environments only: applied with runbot_suspended=true
    ABSENT = "absent"


class Status(StrEnum):
    PENDING = "pending"
    QUEUED = "queued"
    CREATING = "creating"
    READY = "ready"
    UPDATING = "updating"
    SLEEPING = "sleeping"
    FAILED = "failed"
    DESTROYING = "destroying"
    #: A destroy failed: retried with backoff until it succeeds; the slot stays taken.
    DESTROY_FAILED = "destroy_failed"
    DESTROYED = "destroyed"


class Action(StrEnum):
    NONE = "none"
    APPLY = "apply"
    DESTROY = "destroy"
    FORGET = "forget"  # desired absent, and nothing was ever applied: no engine run needed


class HoldKind(StrEnum):
    """Why a PR's head has no environment (`pullrequest.hold_kind`); set by the intent's
    decision, read by the notifier and the commands. Its sentence is for people only."""

    CLOSED = "closed"
    CONFIG_ERROR = "config_error"
    FORK_OFF = "fork_off"
    FORK_AWAITING_APPROVAL = "fork_awaiting_approval"
    DRAFT = "draft"
    LABELS = "labels"
    QUEUED = "queued"
    WAITING_FOR_CI = "waiting_for_ci"
    CI_FAILED = "ci_failed"
    CANNOT_DEPLOY = "cannot_deploy"
    #: The operator policy (or the stack's manifest, or the silo's source) refuses the config.
    POLICY = "policy"
    #: The repository's or silo's monthly budget is spent: new environments wait for the 1st
    #: (or for the operator to raise it).
    BUDGET = "budget"
    # The App was uninstalled, or the repository removed from it (issue 15, finding 6).
    UNINSTALLED = "uninstalled"
    # The installation is suspended: environments are destroyed until `unsuspend`.
    SUSPENDED = "suspended"


# Statuses where the engine may have created something that a destroy must clean up.
MAY_HOLD_RESOURCES = frozenset(
    {
        Status.CREATING,
        Status.READY,
        Status.UPDATING,
        Status.SLEEPING,
        Status.FAILED,
        Status.DESTROYING,
        Status.DESTROY_FAILED,
    }
)
LIVE = frozenset(
    {
        Status.PENDING,
        Status.QUEUED,
        Status.CREATING,
        Status.READY,
        Status.UPDATING,
        Status.SLEEPING,
        Status.FAILED,
        Status.DESTROYING,
        Status.DESTROY_FAILED,
    }
)
BUSY = frozenset({Status.CREATING, Status.UPDATING, Status.DESTROYING})

# Allowed status transitions; the reconciler asserts every move against this table.
TRANSITIONS: dict[Status, frozenset[Status]] = {
    # FAILED from PENDING/QUEUED: the stack could not be loaded (e.g. its git fetch failed).
    Status.PENDING: frozenset(
        {Status.QUEUED, Status.CREATING, Status.FAILED, Status.DESTROYED, Status.DESTROYING}
    ),
    Status.QUEUED: frozenset(
        {Status.QUEUED, Status.CREATING, Status.FAILED, Status.DESTROYED, Status.DESTROYING}
    ),
    Status.CREATING: frozenset(
        {Status.CREATING, Status.READY, Status.SLEEPING, Status.FAILED, Status.DESTROYING}
    ),
    Status.READY: frozenset({Status.UPDATING, Status.DESTROYING, Status.READY}),
    Status.UPDATING: frozenset(
        {Status.UPDATING, Status.READY, Status.SLEEPING, Status.FAILED, Status.DESTROYING}
    ),
    Status.SLEEPING: frozenset({Status.UPDATING, Status.DESTROYING, Status.SLEEPING}),
    Status.FAILED: frozenset({Status.CREATING, Status.UPDATING, Status.DESTROYING, Status.FAILED}),
    Status.DESTROYING: frozenset(
        {Status.DESTROYING, Status.DESTROYED, Status.DESTROY_FAILED, Status.FAILED}
    ),
    # Retried until it succeeds; FAILED only for runbot's own internal errors.
    Status.DESTROY_FAILED: frozenset(
        {Status.DESTROYING, Status.DESTROY_FAILED, Status.DESTROYED, Status.FAILED}
    ),
    Status.DESTROYED: frozenset({Status.DESTROYED}),
}
# A destroy whose stack did not even load (a git fetch failed) fails before it is DESTROYING.
for _status in MAY_HOLD_RESOURCES:
    TRANSITIONS[_status] = TRANSITIONS[_status] | {Status.DESTROY_FAILED}


class TransitionError(Exception):
    pass


def check_transition(current: str, new: str) -> Status:
    old, target = Status(current), Status(new)
    if target not in TRANSITIONS[old]:
        raise TransitionError(f"illegal status change {old} -> {target}")
    return target


def plan_action(desired: str, status: str) -> Action:
    """What converging a claimed target means, given what is wanted and what was observed."""
    want, have = Desired(desired), Status(status)
    if want is Desired.ABSENT:
        if have is Status.DESTROYED:
            return Action.NONE
        return Action.DESTROY if have in MAY_HOLD_RESOURCES else Action.FORGET
    if have is Status.DESTROYED:
        return Action.NONE  # a destroyed target never comes back; a new one gets a new id
    return Action.APPLY


def status_during_apply(status: str) -> Status:
    """Creating until the target has been ready once; updating afterwards.

    A target can be found mid-apply (`creating`, `updating`) when the process that ran the apply
    died; the apply that takes over keeps the status.
    """
    if Status(status) in (Status.READY, Status.SLEEPING, Status.UPDATING):
        return Status.UPDATING
    return Status.CREATING


def status_after_apply(desired: str) -> Status:
    return Status.SLEEPING if Desired(desired) is Desired.SUSPENDED else Status.READY
