"""Environment ids: DNS-1123 labels with a random suffix.

The suffix means a re-created environment never collides with resources of its predecessor
that a cloud is still tearing down (names of load balancers, namespaces, buckets...).
"""

from __future__ import annotations

import re
import secrets

_ALPHABET = "abcdefghijklmnopqrstuvwxyz0123456789"
DNS_LABEL = re.compile(r"^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$")


def new_environment_id(pr_number: int, suffix_length: int = 5) -> str:
    if pr_number < 0:
        raise ValueError("a PR number cannot be negative")
    suffix = "".join(secrets.choice(_ALPHABET) for _ in range(suffix_length))
    env_id = f"pr-{pr_number}-{suffix}"
    if not DNS_LABEL.match(env_id):
        raise ValueError(f"PR number {pr_number} gives an id longer than 63 characters")
    return env_id


def new_pool_id(suffix_length: int = 8) -> str:
    """A warm-pool instance's id: it names no PR, and keeps its id when a PR claims it."""
    return "warm-" + "".join(secrets.choice(_ALPHABET) for _ in range(suffix_length))
