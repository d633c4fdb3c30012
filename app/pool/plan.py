"""What a silo's warm pool needs now, from its members and what is wanted (pure).

A pool keeps `size` unclaimed instances applied for one repository in one silo. An instance
made for other templates, another default-branch head or other vars (its `pool_key`), or older
than `max_age`, is retired and made again; the pool never takes the silo's last free slots,
which stay for PRs whose repository has no pool, and keeps nothing while a budget is spent.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from enum import StrEnum
from typing import Any

__all__ = ["Member", "Plan", "Retire", "Want", "plan_pool", "pool_key", "pool_size"]


def pool_key(template: str, config_sha: str, vars: dict[str, Any]) -> str:
    """What a warm instance is made of: a change to any part makes the pool again."""
    shown = json.dumps([template, config_sha, vars], sort_keys=True, default=str)
    return hashlib.sha256(shown.encode()).hexdigest()


def pool_size(manifest: int | None, silo_output: object, cap: int) -> int:
    """The stack's `pool.size`, unless the silo outputs `runbot_pool_size`; at most `cap`."""
    asked = manifest or 0
    if isinstance(silo_output, int) and not isinstance(silo_output, bool) and silo_output >= 0:
        asked = silo_output
    return max(0, min(asked, cap))


class Retire(StrEnum):
    """Why an unclaimed instance is destroyed."""

    CHANGED = "changed"  # templates, default-branch head or vars moved on
    TOO_OLD = "max_age"
    SURPLUS = "surplus"  # the pool was made smaller
    FAILED = "failed"  # its own apply failed: made again
    BUDGET = "budget"  # the repository's or the silo's monthly budget is spent


@dataclass(frozen=True)
class Member:
    """One unclaimed instance of the pool."""

    id: str
    key: str | None
    created_at: datetime
    failed: bool = False


@dataclass(frozen=True)
class Want:
    size: int
    key: str
    max_age: timedelta
    #: Slots the pool may still take in the silo (its free slots less the reserve).
    free_slots: int
    #: After failed applies the pool waits before it makes any more (`WarmPool.paused_until`).
    paused: bool = False
    #: A monthly budget over the repository or the silo is spent: no instance waits unused.
    over_budget: bool = False


@dataclass(frozen=True)
class Plan:
    create: int
    retire: tuple[tuple[str, Retire], ...]

    @property
    def idle(self) -> bool:
        return self.create == 0 and not self.retire


def plan_pool(want: Want, members: Sequence[Member], now: datetime) -> Plan:
    retire: list[tuple[str, Retire]] = []
    keep: list[Member] = []
    for member in sorted(members, key=lambda m: (m.created_at, m.id)):
        if member.failed:
            retire.append((member.id, Retire.FAILED))
        elif member.key != want.key:
            retire.append((member.id, Retire.CHANGED))
        elif now - member.created_at >= want.max_age:
            retire.append((member.id, Retire.TOO_OLD))
        else:
            keep.append(member)
    if want.over_budget:
        return Plan(create=0, retire=(*retire, *((m.id, Retire.BUDGET) for m in keep)))
    # The newest go first when the pool shrinks: the oldest are the likeliest to be ready.
    retire += [(member.id, Retire.SURPLUS) for member in keep[want.size :]]
    create = 0 if want.paused else max(0, min(want.size - len(keep), want.free_slots))
    return Plan(create=create, retire=tuple(retire))
