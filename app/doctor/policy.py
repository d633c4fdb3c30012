"""The doctor's policy row: which operator policy a process started now would hold."""

from __future__ import annotations

from app.doctor.report import Row, fail, ok
from app.policy.load import PolicyError, load_policy
from app.settings import Settings


def check_policy(settings: Settings) -> Row:
    """The file and its digest, or the defaults; a bad file fails, as it would stop serve."""
    try:
        loaded = load_policy(settings.policy_file)
    except PolicyError as exc:
        return fail(
            "policy",
            str(exc),
            "correct the named line and key (`runbot policy check FILE` validates a file);"
            " runbot serve and worker refuse to start with it",
        )
    if loaded.source is None:
        return ok("policy", loaded.describe())
    count = len(loaded.document.repos)
    return ok("policy", f"{loaded.describe()}: default and {count} repos entries")
