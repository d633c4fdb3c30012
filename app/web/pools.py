"""The warm pools in the dashboard and the API: each repository's pool in each silo, and
what may be done to an unclaimed instance.

An unclaimed instance belongs to the pool, not to a PR: extend, sleep, wake and redeploy
mean nothing for it (it has no expiry, it must stay ready to be claimed, the keeper re-makes
it), so they are refused with 409 and what to do instead. An operator may destroy one (a
stuck or suspect instance): the keeper makes a fresh one on its next tick. Anyone else may
not, whatever their role on the repository, since the pool is the operator's.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass

from sqlalchemy import func
from sqlmodel import select

from app.db.models import Environment
from app.lifecycle.pool import CLAIMING, RESIZE_HINT, standing_of
from app.lifecycle.service import Lifecycle
from app.lifecycle.states import Desired, Status
from app.web.auth import Principal
from app.web.views import EnvironmentOut, PoolOut

__all__ = ["PoolRefusal", "pool_refusal", "pools_of"]


@dataclass(frozen=True)
class PoolRefusal:
    """The action does not apply to a warm-pool instance (409), unlike a missing right (403)."""

    message: str


def pool_refusal(principal: Principal, action: str) -> PoolRefusal | str | None:
    """Why ``action`` is refused on an unclaimed warm-pool instance; None: allowed."""
    if action == "destroy":
        if principal.operator:
            return None
        return (
            "only operators (RUNBOT_ADMINS, the API token) may destroy a warm-pool instance;"
            " the pool makes another"
        )
    return PoolRefusal(
        f"a warm-pool instance belongs to the pool, not to a PR, so it cannot {action}: the"
        f" next PR of the repository claims it; {RESIZE_HINT}"
    )


def _claiming(lifecycle: Lifecycle) -> dict[tuple[str, str], int]:
    """Claimed instances still taking their PR's values, per (silo, repository)."""
    with lifecycle.db.session() as session:
        rows = session.exec(
            select(Environment.silo_name, Environment.repository, func.count())
            .where(
                Environment.pool_state == CLAIMING,
                Environment.status != Status.DESTROYED,
                Environment.desired != Desired.ABSENT,
            )
            .group_by(Environment.silo_name, Environment.repository)
        ).all()
    return {(silo, repository): n for silo, repository, n in rows}


def pools_of(
    lifecycle: Lifecycle,
    principal: Principal,
    environment_out: Callable[[Environment], EnvironmentOut],
) -> list[PoolOut]:
    """The pools of the repositories ``principal`` reads, by silo then repository."""
    claiming = _claiming(lifecycle)
    out: list[PoolOut] = []
    for pool in lifecycle.pools():
        if not principal.can_read(pool.repository):
            continue
        members = lifecycle.pool_members(pool.silo_name, pool.repository)
        members.sort(key=lambda env: (env.created_at, env.id))
        standing = Counter(standing_of(env) for env in members)
        out.append(
            PoolOut(
                silo=pool.silo_name,
                repository=pool.repository,
                size=pool.size,
                ready=standing["ready"],
                failed=standing["failed"],
                starting=standing["starting"],
                claiming=claiming.get((pool.silo_name, pool.repository), 0),
                failures=pool.failures,
                paused_until=pool.paused_until,
                members=[environment_out(env) for env in members],
                updated_at=pool.updated_at,
            )
        )
    out.sort(key=lambda pool: (pool.silo, pool.repository.lower()))
    return out
