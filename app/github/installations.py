"""Which repositories an installation still lets runbot act for, as pure functions.

An organisation admin who uninstalls or suspends the App, or removes a repository from it, has
pulled runbot's access: `record_after` folds an `installation` / `installation_repositories`
event into the installation's record and says what it cut off or gave back (`record_listed`
does the same with GitHub's own list, at resync); `cutoff` says whether one repository is cut
off, and why; `write_gate` what becomes of the GitHub writes still owed to it. The intent
processor and the notifier do the I/O around them.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum

from app.db.models import Installation
from app.github.payloads import InstallationEvent

__all__ = [
    "CUTOFF_REASONS",
    "Change",
    "Cutoff",
    "InstallState",
    "InstallationRecord",
    "WriteGate",
    "cutoff",
    "record_after",
    "record_listed",
    "record_of",
    "write_gate",
]


class InstallState(StrEnum):
    """`installation.state`: whether GitHub still lets runbot act for the installation."""

    ACTIVE = "active"
    SUSPENDED = "suspended"  # `installation.suspend`; `unsuspend` makes it active again
    DELETED = "deleted"  # uninstalled; a re-install is a new installation (a new id)


class Cutoff(StrEnum):
    """Why runbot may no longer act for a repository."""

    UNINSTALLED = "uninstalled"  # the App was uninstalled from the account
    REMOVED = "removed"  # the repository was removed from the installation
    SUSPENDED = "suspended"  # the installation is suspended


class WriteGate(StrEnum):
    """What becomes of a GitHub write (status comment, deployment) owed to a repository."""

    SEND = "send"
    WAIT = "wait"  # suspended: GitHub refuses the writes now, and accepts them after unsuspend
    DROP = "drop"  # uninstalled or removed: no token will ever cover it again


#: What the status comment and the dashboard say of a cut-off repository (for people only).
CUTOFF_REASONS = {
    Cutoff.UNINSTALLED: "the runbot App was uninstalled: environments are destroyed;"
    " install it again to deploy",
    Cutoff.REMOVED: "this repository was removed from the runbot App's installation:"
    " environments are destroyed; add it back to deploy",
    Cutoff.SUSPENDED: "the runbot App's installation is suspended: environments are destroyed"
    " until it is unsuspended",
}


@dataclass(frozen=True)
class InstallationRecord:
    """What runbot knows of one installation (the `installation` row)."""

    state: InstallState = InstallState.ACTIVE
    account: str = ""
    repositories: tuple[str, ...] = ()
    #: Repositories removed from the installation and not added back since.
    removed: tuple[str, ...] = ()


def record_of(row: Installation | None) -> InstallationRecord | None:
    if row is None:
        return None
    return InstallationRecord(
        InstallState(row.state),
        row.account,
        tuple(row.repositories),
        tuple(row.removed_repositories),
    )


@dataclass(frozen=True)
class Change:
    """What an event did: the new record, what it cut off (and why), what it gave back.

    ``repositories`` None means the whole installation; otherwise just those repositories.
    """

    record: InstallationRecord
    cut: Cutoff | None = None
    resumed: bool = False
    repositories: tuple[str, ...] | None = field(default=None)


def _key(name: str) -> str:
    return name.lower()  # GitHub's repository names are case-insensitive


def _without(names: tuple[str, ...], drop: tuple[str, ...]) -> tuple[str, ...]:
    dropped = {_key(name) for name in drop}
    return tuple(name for name in names if _key(name) not in dropped)


def _with(names: tuple[str, ...], add: tuple[str, ...]) -> tuple[str, ...]:
    return tuple(sorted({_key(n): n for n in (*names, *add)}.values(), key=_key))


def record_after(record: InstallationRecord | None, event: InstallationEvent) -> Change:
    """Fold one `installation` or `installation_repositories` event into the record."""
    old = record or InstallationRecord()
    account = event.account or old.account
    if event.event == "installation_repositories":
        repositories = _without(_with(old.repositories, event.added), event.removed)
        removed = _without(_with(old.removed, event.removed), event.added)
        new = InstallationRecord(old.state, account, repositories, removed)
        if event.action == "removed" and event.removed:
            return Change(new, cut=Cutoff.REMOVED, repositories=event.removed)
        if event.action == "added" and event.added:
            return Change(new, resumed=True, repositories=event.added)
        return Change(new)
    listed = event.repositories if event.repositories is not None else old.repositories
    if event.action == "deleted":
        return Change(
            InstallationRecord(InstallState.DELETED, account, listed, old.removed),
            cut=Cutoff.UNINSTALLED,
        )
    if event.action == "suspend":
        return Change(
            InstallationRecord(InstallState.SUSPENDED, account, listed, old.removed),
            cut=Cutoff.SUSPENDED,
        )
    if event.action in ("created", "unsuspend", "new_permissions_accepted"):
        # A listed repository is served again, whatever was removed before.
        removed = _without(old.removed, listed) if event.repositories is not None else old.removed
        new = InstallationRecord(InstallState.ACTIVE, account, listed, removed)
        if event.action == "new_permissions_accepted" and old.state == InstallState.ACTIVE:
            return Change(new)
        return Change(new, resumed=True, repositories=event.repositories)
    return Change(InstallationRecord(old.state, account, listed, old.removed))


def record_listed(record: InstallationRecord, listed: tuple[str, ...]) -> Change:
    """GitHub's list of an active installation's repositories (resync): the truth, so a missed
    `installation_repositories` event is healed like a missed `pull_request` one."""
    listed_keys = {_key(name) for name in listed}
    gone = tuple(name for name in record.repositories if _key(name) not in listed_keys)
    back = tuple(name for name in record.removed if _key(name) in listed_keys)
    removed = _without(_with(record.removed, gone), back)
    new = InstallationRecord(record.state, record.account, listed, removed)
    if gone:
        return Change(new, cut=Cutoff.REMOVED, repositories=gone)
    return Change(new, resumed=bool(back), repositories=back or None)


def cutoff(record: InstallationRecord | None, repository: str) -> Cutoff | None:
    """Why runbot may not act for ``repository`` under this installation (None: it may).

    An installation runbot has no record of is served: GitHub's own answer (a token, or not)
    is then the only guard, and resync records the installation on its next pass.
    """
    if record is None:
        return None
    if record.state == InstallState.DELETED:
        return Cutoff.UNINSTALLED
    if _key(repository) in {_key(name) for name in record.removed}:
        return Cutoff.REMOVED
    if record.state == InstallState.SUSPENDED:
        return Cutoff.SUSPENDED
    return None


def write_gate(cut: Cutoff | None) -> WriteGate:
    """Writes to a suspended installation wait for `unsuspend`; the others can never land."""
    if cut is None:
        return WriteGate.SEND
    return WriteGate.WAIT if cut == Cutoff.SUSPENDED else WriteGate.DROP
