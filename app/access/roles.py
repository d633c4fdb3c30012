"""GitHub repository roles, weakest first, and how GitHub's answers map onto them."""

from __future__ import annotations

from collections.abc import Mapping
from enum import IntEnum
from typing import Any

__all__ = ["Role", "role_from_listing", "role_from_permission"]


class Role(IntEnum):
    """A person's role on a repository; comparisons follow the order GitHub grants them in."""

    NONE = 0
    READ = 1
    TRIAGE = 2
    WRITE = 3
    MAINTAIN = 4
    ADMIN = 5

    @property
    def label(self) -> str:
        """GitHub's own name for it (`write`, `maintain`...), for settings and sentences."""
        return self.name.lower()

    @classmethod
    def named(cls, name: object) -> Role | None:
        """The role GitHub calls ``name``, or None for anything else (a custom role's name)."""
        if isinstance(name, str) and name.upper() in cls.__members__:
            return cls[name.upper()]
        return None


def role_from_permission(role_name: object, permission: object) -> Role:
    """The collaborator-permission endpoint's answer: ``role_name`` (the legacy ``permission``
    lacks maintain and triage); a custom role falls back to its base ``permission``; anything
    unknown counts as none."""
    return Role.named(role_name) or Role.named(permission) or Role.NONE


#: A repository listing's `permissions` flags, strongest first, and the role each grants.
_LISTING_FLAGS = (
    ("admin", Role.ADMIN),
    ("maintain", Role.MAINTAIN),
    ("push", Role.WRITE),
    ("triage", Role.TRIAGE),
    ("pull", Role.READ),
)


def role_from_listing(permissions: Mapping[str, Any]) -> Role:
    """The role a repository listing's ``permissions`` flags amount to."""
    for flag, role in _LISTING_FLAGS:
        if permissions.get(flag):
            return role
    return Role.NONE
