"""Who sees which rows: environments of readable repositories, and the silos they use.

Shared by the service layer and the views it composes (usage, pools), so the rule exists
once: an operator sees everything, anyone else the repositories they can read.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import func
from sqlmodel import col, select

from app.db.models import Environment, Silo
from app.web.auth import Principal

__all__ = ["visible", "visible_silos"]


def visible(query: Any, principal: Principal) -> Any | None:
    """Restrict a query on Environment to readable repositories; None: nothing is."""
    if principal.kind == "anonymous":
        return None
    if principal.readable is None:
        return query
    if not principal.readable:
        return None
    return query.where(func.lower(Environment.repository).in_(sorted(principal.readable)))


def visible_silos(query: Any, principal: Principal) -> Any | None:
    """Restrict a query on Silo to silos with an environment of a readable repository (all
    of them for operators); None: none is visible."""
    used = visible(select(Environment.silo_name).distinct(), principal)
    if used is None:
        return None
    if principal.readable is None:
        return query
    return query.where(col(Silo.name).in_(used))
