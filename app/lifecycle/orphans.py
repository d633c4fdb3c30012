"""Orphans, decided purely: what exists (state, processes) against what runbot records.

The sweep (`sweep.py`) gathers the facts; `find_orphans` compares them and returns typed
orphans, each saying what the destroy may do with it. Nothing here reads a disk or a database.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from enum import StrEnum


class OrphanKind(StrEnum):
    #: A state that still holds resources, and no live silo or environment owns it.
    STATE_WITHOUT_TARGET = "state-without-target"
    #: A silo or environment that says it is applied, while its state holds nothing.
    TARGET_WITHOUT_STATE = "target-without-state"
    #: A local-stack server whose environment id has no live target.
    PROCESS_WITHOUT_TARGET = "process-without-target"


class Remedy(StrEnum):
    """What `runbot orphans --destroy` does with an orphan."""

    ENGINE_DESTROY = "engine-destroy"  # destroy the state with the recorded template and inputs
    LIFECYCLE_DESTROY = "lifecycle-destroy"  # destroy the target through its desired state
    STOP_PROCESS = "stop-process"  # SIGTERM, then SIGKILL, the server process
    BY_HAND = "by-hand"  # nothing recorded to destroy it with: the operator decides


@dataclass(frozen=True)
class FoundState:
    """A state runbot's own backend holds: a local file or a PostgreSQL schema."""

    where: str  # the file's path or the schema's name
    target: str | None  # the engine target ("env-pr-1-abc"); None for an unknown schema
    resources: int


@dataclass(frozen=True)
class FoundProcess:
    """A running local-stack server and the environment id in its argv (or, for a silo's
    ingress, the silo's name with `target` "silo-<name>")."""

    pid: int
    instance_id: str
    target: str = ""  # the engine target it belongs to; "": env-<instance_id>


@dataclass(frozen=True)
class Known:
    """A silo or environment row, as far as orphans are concerned."""

    name: str  # the engine target: "silo-<name>" or "env-<id>"
    kind: str  # "silo" | "environment"
    target_id: str
    live: bool  # not destroyed: runbot still owns what its state holds
    applied: bool  # its status says the last apply landed (ready, sleeping)
    own_backend: bool  # state in runbot's own backend, where the sweep can see it


@dataclass(frozen=True)
class Orphan:
    kind: OrphanKind
    target: str  # the engine target, or the state's location when no target is known
    where: str  # the state's location, the target row, or "pid N"
    remedy: Remedy
    resources: int = 0
    pid: int | None = None


def find_orphans(
    states: Iterable[FoundState],
    processes: Iterable[FoundProcess],
    known: Iterable[Known],
    recorded: Iterable[str],
) -> list[Orphan]:
    """Every orphan among the facts, sorted by kind and target.

    ``recorded`` names the engine targets whose template and inputs are on record, which is
    what an engine destroy of their state needs.
    """
    rows = {row.name: row for row in known}
    records = set(recorded)
    states = list(states)
    found: list[Orphan] = []
    holding = {s.target for s in states if s.target is not None and s.resources > 0}
    for state in states:
        if state.resources <= 0:
            continue
        row = rows.get(state.target) if state.target is not None else None
        if row is not None and row.live:
            continue
        target = state.target or state.where
        remedy = Remedy.ENGINE_DESTROY if target in records else Remedy.BY_HAND
        found.append(
            Orphan(OrphanKind.STATE_WITHOUT_TARGET, target, state.where, remedy, state.resources)
        )
    for row in rows.values():
        if row.live and row.applied and row.own_backend and row.name not in holding:
            found.append(
                Orphan(
                    OrphanKind.TARGET_WITHOUT_STATE,
                    row.name,
                    f"{row.kind} {row.target_id}",
                    Remedy.LIFECYCLE_DESTROY,
                )
            )
    for process in processes:
        target = process.target or f"env-{process.instance_id}"
        row = rows.get(target)
        if row is not None and row.live:
            continue
        found.append(
            Orphan(
                OrphanKind.PROCESS_WITHOUT_TARGET,
                target,
                f"pid {process.pid}",
                Remedy.STOP_PROCESS,
                pid=process.pid,
            )
        )
    order = list(OrphanKind)
    return sorted(found, key=lambda o: (order.index(o.kind), o.target, o.pid or 0))
