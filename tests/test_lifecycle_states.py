"""The state machine's pure rules: every apply starts with a legal status change."""

from __future__ import annotations

import pytest

from app.lifecycle.states import Status, check_transition, status_during_apply

# What a target that is wanted present can be found in when a worker claims it. `destroying`
# and `destroy_failed` are not among them: a target asked to go away is never wanted present
# again (a new one is made).
GONE_OR_GOING = (Status.DESTROYING, Status.DESTROY_FAILED, Status.DESTROYED)
CLAIMABLE_FOR_APPLY = [s for s in Status if s not in GONE_OR_GOING]


@pytest.mark.parametrize("found", CLAIMABLE_FOR_APPLY)
def test_an_apply_may_start_from_every_status_a_wanted_target_can_have(found: Status) -> None:
    check_transition(found, status_during_apply(found))  # raises TransitionError if illegal


@pytest.mark.parametrize(
    ("found", "during"),
    [
        (Status.PENDING, Status.CREATING),
        (Status.QUEUED, Status.CREATING),
        (Status.CREATING, Status.CREATING),  # the process that ran the create died
        (Status.FAILED, Status.CREATING),
        (Status.READY, Status.UPDATING),
        (Status.SLEEPING, Status.UPDATING),
        (Status.UPDATING, Status.UPDATING),  # the process that ran the update died
    ],
)
def test_creating_until_ready_once_then_updating(found: Status, during: Status) -> None:
    assert status_during_apply(found) == during
