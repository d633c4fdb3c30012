"""The orphan sweep's I/O: gather states, processes and rows, then destroy what `orphans` finds.

Facts come from this host's data dir (local state files, the local stack's servers under it)
and from the database (state schemas on PostgreSQL, silo, environment and target records).
`find_orphans` decides; this module only reads, and destroys on request.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import shutil
import signal
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

from sqlalchemy import text
from sqlmodel import select

from app.db.models import Environment, Silo, TargetRecord, utcnow
from app.db.session import Database
from app.engine.backends import STATE_SCHEMA_PREFIX, schema_name
from app.engine.executor import Executor
from app.engine.runner import EngineError, EngineJob
from app.lifecycle.converge import load_pinned_stack
from app.lifecycle.orphans import FoundProcess, FoundState, Known, Orphan, Remedy, find_orphans
from app.lifecycle.records import all_records, drop_record
from app.lifecycle.service import Lifecycle, LifecycleError
from app.lifecycle.states import Status
from app.stacks.catalog import Catalog, StackError
from app.stacks.gitrun import GitLimits

log = logging.getLogger("runbot.orphans")

LineSink = Callable[[str], None]
APPLIED = frozenset({Status.READY, Status.SLEEPING})
#: The local stack's server: `python3 <shared>/server.py serve --instance-id <id> ...`.
SERVER_SCRIPT = "server.py"
INGRESS_SCRIPT = "ingress.py"  # the local stack's silo ingress


@dataclass(frozen=True)
class SweepReport:
    orphans: list[Orphan]
    at: datetime = field(default_factory=utcnow)


@dataclass(frozen=True)
class Destroyed:
    orphan: Orphan
    ok: bool
    message: str


def count_resources(state: object) -> int:
    """Resources with at least one instance in a state document (format version 4)."""
    if not isinstance(state, dict):
        return 0
    resources = state.get("resources")
    if not isinstance(resources, list):
        return 0
    return sum(1 for r in resources if isinstance(r, dict) and r.get("instances"))


def _read_state(path: Path) -> int:
    try:
        return count_resources(json.loads(path.read_text()))
    except (OSError, ValueError):
        return 0


def local_states(data_dir: Path) -> list[FoundState]:
    """runbot's local backend: `state/<target>/terraform.tfstate`, and the older
    `state/<target>.tfstate`."""
    root = data_dir / "state"
    found: list[FoundState] = []
    if not root.is_dir():
        return found
    for entry in sorted(root.iterdir()):
        if entry.is_dir():
            path = entry / "terraform.tfstate"
            if path.is_file():
                found.append(FoundState(str(path), entry.name, _read_state(path)))
        elif entry.name.endswith(".tfstate"):
            found.append(FoundState(str(entry), entry.name[: -len(".tfstate")], _read_state(entry)))
    return found


def schema_states(db: Database, names: set[str]) -> list[FoundState]:
    """runbot's pg backend: a `runbot_state_*` schema per target, its `states` table."""
    if not db.is_postgres:
        return []
    by_schema = {schema_name(name): name for name in names}
    found: list[FoundState] = []
    with db.engine.connect() as connection:
        schemas = connection.execute(
            text(
                "SELECT nspname FROM pg_namespace WHERE starts_with(nspname, :prefix)"
                " ORDER BY nspname"
            ),
            {"prefix": STATE_SCHEMA_PREFIX},
        ).scalars()
        for schema in list(schemas):
            exists = connection.execute(
                text("SELECT to_regclass(:table)"), {"table": f'"{schema}".states'}
            ).scalar()
            resources = 0
            if exists is not None:
                for (data,) in connection.execute(text(f'SELECT data FROM "{schema}".states')):
                    with contextlib.suppress(ValueError, TypeError):
                        resources += count_resources(json.loads(data))
            found.append(FoundState(schema, by_schema.get(schema), resources))
        connection.rollback()
    return found


def _argv(pid: int) -> list[str]:
    try:
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return []
    return [part.decode(errors="replace") for part in raw.split(b"\0") if part]


def server_instance(argv: list[str], data_dir: Path) -> str | None:
    """The environment id of a local-stack server started from under ``data_dir``."""
    if len(argv) < 4 or "serve" not in argv or "--instance-id" not in argv:
        return None
    script = next((a for a in argv[1:3] if a.endswith(SERVER_SCRIPT)), None)
    if script is None:
        return None
    with contextlib.suppress(ValueError):
        Path(script).resolve().relative_to(data_dir.resolve())
        index = argv.index("--instance-id")
        return argv[index + 1] if index + 1 < len(argv) else None
    return None  # another runbot's, or nobody's


def ingress_silo(argv: list[str], data_dir: Path) -> str | None:
    """The silo name of a local-stack ingress (`ingress.py serve --silo`) under ``data_dir``."""
    if "serve" not in argv or "--silo" not in argv or "--dir" not in argv:
        return None
    if not any(a.endswith(INGRESS_SCRIPT) for a in argv[1:3]):
        return None
    with contextlib.suppress(ValueError, IndexError):
        Path(argv[argv.index("--dir") + 1]).resolve().relative_to(data_dir.resolve())
        return argv[argv.index("--silo") + 1]
    return None


def _process_of(pid: int, data_dir: Path) -> FoundProcess | None:
    argv = _argv(pid)
    instance = server_instance(argv, data_dir)
    if instance is not None:
        return FoundProcess(pid, instance)
    silo = ingress_silo(argv, data_dir)
    return FoundProcess(pid, silo, f"silo-{silo}") if silo is not None else None


def local_servers(data_dir: Path) -> list[FoundProcess]:
    found: list[FoundProcess] = []
    proc = Path("/proc")
    if not proc.is_dir():
        return found
    for entry in proc.iterdir():
        process = _process_of(int(entry.name), data_dir) if entry.name.isdigit() else None
        if process is not None:
            found.append(process)
    return found


def _known(db: Database, records: dict[str, TargetRecord]) -> dict[str, Known]:
    def own(name: str) -> bool:
        record = records.get(name)
        return record is not None and record.declared_backend is None

    def known(kind: str, name: str, target_id: str, status: str) -> Known:
        return Known(
            name,
            kind,
            target_id,
            live=status != Status.DESTROYED,
            applied=status in APPLIED,
            own_backend=own(name),
        )

    rows: dict[str, Known] = {}
    with db.session() as session:
        for silo in session.exec(select(Silo)):
            rows[f"silo-{silo.name}"] = known("silo", f"silo-{silo.name}", silo.name, silo.status)
        for env in session.exec(select(Environment)):
            rows[f"env-{env.id}"] = known("environment", f"env-{env.id}", env.id, env.status)
    return rows


def _merge(before: dict[str, Known], after: dict[str, Known]) -> list[Known]:
    """Rows read before and after the facts: live in either read, applied in both. A target
    created or destroyed while the facts were read is never taken for an orphan."""
    merged: list[Known] = []
    for name in before.keys() | after.keys():
        one, two = before.get(name), after.get(name)
        rows = [row for row in (one, two) if row is not None]
        base = rows[-1]
        merged.append(
            Known(
                base.name,
                base.kind,
                base.target_id,
                live=any(row.live for row in rows),
                applied=all(row.applied for row in rows) and len(rows) == 2,
                own_backend=base.own_backend,
            )
        )
    return merged


class OrphanSweep:
    """Lists orphans (the scheduler's tick keeps the latest report) and destroys them."""

    def __init__(
        self,
        db: Database,
        catalog: Catalog,
        runner: Executor,
        lifecycle: Lifecycle,
        data_dir: Path,
        git_limits: Callable[[], GitLimits] = GitLimits,
    ) -> None:
        self.db = db
        self.catalog = catalog
        self.runner = runner
        self.lifecycle = lifecycle
        self.data_dir = data_dir.absolute()
        self.git_limits = git_limits
        self.latest: SweepReport | None = None

    def sweep(self) -> SweepReport:
        records = all_records(self.db)
        before = _known(self.db, records)
        names = set(before) | set(records)
        states = [*local_states(self.data_dir), *schema_states(self.db, names)]
        processes = local_servers(self.data_dir)
        after = _known(self.db, records)
        report = SweepReport(find_orphans(states, processes, _merge(before, after), records.keys()))
        self.latest = report
        return report

    async def tick(self) -> SweepReport:
        """The scheduled comparison: list only, never destroy (`runbot orphans --destroy`)."""
        report = await asyncio.to_thread(self.sweep)
        if report.orphans:
            log.warning(
                "orphans found: %s; list them with `runbot orphans`",
                ", ".join(f"{o.kind} {o.target}" for o in report.orphans),
            )
        return report

    async def destroy(self, report: SweepReport, on_line: LineSink) -> list[Destroyed]:
        """Destroy each orphan as its remedy says; states first, since their templates stop
        their own processes. Returns one outcome per orphan (BY_HAND ones say what to do)."""
        done: list[Destroyed] = []
        order = [Remedy.ENGINE_DESTROY, Remedy.LIFECYCLE_DESTROY, Remedy.BY_HAND]
        for remedy in order:
            for orphan in (o for o in report.orphans if o.remedy is remedy):
                done.append(await self._destroy_one(orphan, on_line))
        # What the templates stopped is gone now; what is still running is stopped here.
        running = {p.pid for p in local_servers(self.data_dir)}
        for orphan in (o for o in report.orphans if o.remedy is Remedy.STOP_PROCESS):
            if orphan.pid in running and self._still_orphan(orphan.target):
                done.append(self._stop(orphan))
            else:
                done.append(Destroyed(orphan, True, "stopped by its template's destroy"))
        self._drop_stale_records()
        return done

    def _drop_stale_records(self) -> None:
        """Records of targets that are gone and whose state holds nothing (an apply killed
        before it wrote any state) have nothing left to destroy."""
        records = all_records(self.db)
        rows = _known(self.db, records)
        states = [*local_states(self.data_dir), *schema_states(self.db, set(records))]
        holding = {s.target for s in states if s.resources > 0}
        for name in records:
            row = rows.get(name)
            if (row is None or not row.live) and name not in holding:
                drop_record(self.db, name)

    def _still_orphan(self, name: str) -> bool:
        row = _known(self.db, {}).get(name)
        return row is None or not row.live

    async def _destroy_one(self, orphan: Orphan, on_line: LineSink) -> Destroyed:
        if orphan.remedy is Remedy.BY_HAND:
            return Destroyed(
                orphan,
                False,
                f"no template is recorded for {orphan.where}: runbot cannot destroy it; destroy"
                " its resources by hand, then remove the state",
            )
        if orphan.remedy is Remedy.LIFECYCLE_DESTROY:
            return self._destroy_target(orphan)
        if not self._still_orphan(orphan.target):
            return Destroyed(orphan, False, "its target is live again; left alone")
        with self.db.session() as session:
            record = session.get(TargetRecord, orphan.target)
        if record is None:
            return Destroyed(orphan, False, "its record vanished; run `runbot orphans` again")
        try:
            stack, _ = load_pinned_stack(
                self.catalog, self.data_dir, record.stack, record.stack_source, self.git_limits()
            )
            template = stack.silo if record.kind == "silo" else stack.instance
            job = EngineJob(
                target=record.name,
                template_dir=template.path,
                operation="destroy",
                variables=record.variables,
                declared_backend=record.declared_backend,
                redact=[
                    str(record.variables[n]) for n in record.sensitive if n in record.variables
                ],
            )
            await self.runner.execute(job, on_line)
        except (StackError, EngineError) as exc:
            return Destroyed(
                orphan, False, f"destroy failed: {exc}; fix the cause and run it again"
            )
        self.runner.forget(record.name)
        shutil.rmtree(self.data_dir / "workspace" / record.name, ignore_errors=True)
        drop_record(self.db, record.name)
        log.info("orphan %s destroyed with its recorded template", record.name)
        return Destroyed(orphan, True, f"destroyed with stack '{record.stack}' as recorded")

    def _destroy_target(self, orphan: Orphan) -> Destroyed:
        kind, _, target_id = orphan.where.partition(" ")
        try:
            if kind == "environment":
                self.lifecycle.destroy_environment(
                    target_id, reason="orphan: its state vanished", trigger="orphans"
                )
            else:
                self.lifecycle.destroy_silo(target_id)
        except LifecycleError as exc:
            return Destroyed(orphan, False, str(exc))
        return Destroyed(orphan, True, f"{orphan.where} marked for destroy")

    def _stop(self, orphan: Orphan) -> Destroyed:
        assert orphan.pid is not None
        for sig, grace in ((signal.SIGTERM, 5.0), (signal.SIGKILL, 2.0)):
            try:
                os.kill(orphan.pid, sig)
            except ProcessLookupError:
                break
            except PermissionError:
                return Destroyed(orphan, False, f"not allowed to stop pid {orphan.pid}")
            if _gone(orphan.pid, self.data_dir, grace):
                break
        else:
            return Destroyed(orphan, False, f"pid {orphan.pid} survived SIGKILL")
        return Destroyed(orphan, True, f"stopped pid {orphan.pid}")


def _gone(pid: int, data_dir: Path, grace: float) -> bool:
    deadline = time.monotonic() + grace
    while time.monotonic() < deadline:
        with contextlib.suppress(ChildProcessError):
            os.waitpid(pid, os.WNOHANG)
        if _process_of(pid, data_dir) is None:
            return True
        time.sleep(0.05)
    return False


def orphan_lines(orphans: list[Orphan]) -> Iterator[str]:
    """One line per orphan, as the CLI prints them."""
    for orphan in orphans:
        extra = f" resources={orphan.resources}" if orphan.resources else ""
        yield f"{orphan.kind:24} {orphan.target:30} {orphan.where}{extra} remedy={orphan.remedy}"
