"""The status comment's money: the environment's cost line and the budget warning."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from app.cost.budget import budget_line
from app.cost.money import cost_line
from app.cost.rates import read_rates
from app.db.budgets import standing_of
from app.db.ledger import cost_of
from app.db.models import Environment, PullRequest, utcnow
from app.db.session import Database
from app.policy.model import PolicyFile


def money_fields(
    db: Database,
    policy_file: PolicyFile,
    currency: str,
    pull: PullRequest,
    env: Environment | None,
    at: datetime,
) -> dict[str, Any]:
    """`StatusView.cost` and `budget_warning`.

    The cost is as of ``at``, the view's own time (the last visible change), so rendering the
    same rows again gives the same comment: idle time edits nothing on GitHub. The warning
    names a level, which changes at most twice a month, and is read at the current time.
    """
    with db.session() as session:
        cost = cost_of(session, env.id, at) if env is not None else None
        silo = env.silo_name if env is not None else None
        standing = standing_of(session, policy_file, pull.repository, silo, utcnow())
    shown = (
        env is not None
        and cost is not None
        and (read_rates(env.outputs)[0].declared or cost.so_far > 0)
    )
    return {
        "cost": cost_line(cost, currency) if shown and cost is not None else None,
        "budget_warning": budget_line(standing, currency),
    }
