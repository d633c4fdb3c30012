"""Where each repository and silo stands against its budget this month, from the ledger.

The budgets are the operator policy's (`repos` entries per repository, `silos` per silo); the
spend is the calendar month so far (UTC), read from the cost spans.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from sqlmodel import Session

from app.cost.budget import Level, Standing, level_of, worst
from app.db.ledger import month_to_date_by_repository, month_to_date_by_silo
from app.policy.merge import effective_policy
from app.policy.model import PolicyFile


def repository_scope(repository: str) -> str:
    return f"repository {repository}"


def silo_scope(silo: str) -> str:
    return f"silo {silo}"


def standings(
    session: Session, policy_file: PolicyFile, repository: str, silo: str | None, now: datetime
) -> list[Standing]:
    """The budgets that apply to an environment of ``repository`` in ``silo``, with spend."""
    found: list[Standing] = []
    budget = effective_policy(policy_file, repository).budget
    if budget is not None:
        spent = month_to_date_by_repository(session, now, [repository]).get(repository, 0.0)
        found.append(Standing(repository_scope(repository), budget.monthly, spent))
    entry = policy_file.document.silos.get(silo) if silo else None
    if entry is not None and entry.budget is not None and silo:
        spent = month_to_date_by_silo(session, now, [silo]).get(silo, 0.0)
        found.append(Standing(silo_scope(silo), entry.budget.monthly, spent))
    return found


def standing_of(
    session: Session, policy_file: PolicyFile, repository: str, silo: str | None, now: datetime
) -> Standing | None:
    """The budget furthest spent of those that apply (None: no budget applies)."""
    return worst(standings(session, policy_file, repository, silo, now))


#: A budget's scope: ("repository", "octo/app") or ("silo", "local-default").
Scope = tuple[str, str]


@dataclass(frozen=True)
class Levels:
    """How far every budgeted scope with spend this month is into its budget."""

    by_scope: dict[Scope, Level]

    def reached(self, kind: str) -> frozenset[str]:
        return frozenset(
            name
            for (k, name), level in self.by_scope.items()
            if k == kind and level >= Level.REACHED
        )

    def covers(self, repository: str, silo: str) -> bool:
        """An environment of ``repository`` in ``silo`` is under a spent budget."""
        return (
            self.by_scope.get(("repository", repository)) is Level.REACHED
            or self.by_scope.get(("silo", silo)) is Level.REACHED
        )


def levels(session: Session, policy_file: PolicyFile, now: datetime) -> Levels:
    """Every scope's level this month (one ledger read per kind of scope; none at all when
    the policy sets no budget, so a fleet without budgets pays nothing per tick)."""
    found: dict[Scope, Level] = {}
    document = policy_file.document
    repo_budgets = document.default.budget is not None or any(
        entry.budget is not None for entry in document.repos.values()
    )
    spent_by_repo = month_to_date_by_repository(session, now) if repo_budgets else {}
    for repository, spent in spent_by_repo.items():
        budget = effective_policy(policy_file, repository).budget
        if budget is not None:
            found[("repository", repository)] = level_of(spent, budget.monthly)
    silo_budgets = {
        name: entry.budget.monthly
        for name, entry in policy_file.document.silos.items()
        if entry.budget is not None
    }
    if silo_budgets:
        for name, spent in month_to_date_by_silo(session, now, list(silo_budgets)).items():
            found[("silo", name)] = level_of(spent, silo_budgets[name])
    return Levels(found)
