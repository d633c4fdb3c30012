"""Issue 21, must 6: runs and logs, the outbox, the command ledger and the caches are pruned;
a long log keeps its head and its tail. On SQLite and PostgreSQL (`database_url`)."""

from __future__ import annotations

import os
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

from apscheduler.schedulers.asyncio import AsyncIOScheduler
from sqlmodel import select

from app.db.models import CommentCommand, Environment, OutboxMessage, PullRequest, Run, RunLogChunk
from app.engine.logs import HEAD_LOG, MAX_STORED_LOG, RunLogWriter, read_log
from app.executor import tickets
from app.github.outbox import OutboxGateway
from app.runtime import Runtime, build_runtime
from app.schedule.retention import BATCH, Retention
from app.schedule.ticks import TICK_STATS, Ticks, register_ticks
from app.stacks.catalog import StackSource
from tests.conftest import make_settings

NOW = datetime(2030, 6, 1, 12, 0, tzinfo=UTC)
OLD, RECENT = NOW - timedelta(days=40), NOW - timedelta(days=10)


def add_run(
    rt: Runtime, target: str, finished: datetime | None, status: str = "succeeded", log: bool = True
) -> int:
    with rt.db.session() as session:
        run = Run(
            target_kind="environment",
            target_id=target,
            operation="apply",
            status=status,
            started_at=finished or OLD,
            finished_at=finished,
        )
        session.add(run)
        session.flush()
        assert run.id is not None
        if log:
            session.add(RunLogChunk(run_id=run.id, seq=1, text=f"log of run {run.id}\n"))
        session.commit()
        return run.id


def run_ids(rt: Runtime) -> set[int]:
    with rt.db.session() as session:
        return {run_id for run_id in session.exec(select(Run.id)) if run_id is not None}


def logged_runs(rt: Runtime) -> set[int]:
    with rt.db.session() as session:
        return set(session.exec(select(RunLogChunk.run_id)))


def retention(rt: Runtime, **options: object) -> Retention:
    values: dict[str, object] = {"run_retention": timedelta(days=30), "keep_runs": 5, **options}
    return Retention(rt.db, rt.settings.data_dir, **values)  # type: ignore[arg-type]


async def test_old_runs_and_logs_go_but_each_target_keeps_its_latest_five(
    tmp_path: Path, database_url: str
) -> None:
    rt = build_runtime(make_settings(tmp_path, database_url))
    try:
        busy = [add_run(rt, "pr-1-aaaaa", OLD) for _ in range(8)]  # 8 old runs: 3 go
        quiet = [add_run(rt, "pr-2-bbbbb", OLD) for _ in range(2)]  # only 2: both stay
        recent = [add_run(rt, "pr-3-ccccc", RECENT) for _ in range(7)]  # young: all stay
        running = add_run(rt, "pr-4-ddddd", None, status="running")
        for _ in range(6):
            add_run(rt, "pr-4-ddddd", OLD)
        # An environment's last run stays however old, even past its newest five.
        rt.lifecycle.create_silo("s", "local", {})
        env = rt.lifecycle.create_environment("s", "octo/app", 5, "abc1234")
        linked = add_run(rt, env.id, OLD)
        for _ in range(5):
            add_run(rt, env.id, OLD)
        with rt.db.session() as session:
            row = session.get(Environment, env.id)
            assert row is not None
            row.last_run_id = linked
            session.add(row)
            session.commit()
        before = run_ids(rt)

        deleted = await retention(rt).prune(NOW)

        after = run_ids(rt)
        gone = before - after
        assert set(busy[:3]) <= gone and set(busy[3:]) <= after
        assert set(quiet) <= after and set(recent) <= after
        assert running in after
        assert linked in after
        assert len([r for r in after if r > running and r < linked]) == 5  # pr-4's newest five
        assert deleted.runs == len(gone) == 3 + 1
        assert logged_runs(rt) == after  # each deleted run took its log with it
        assert (await retention(rt).prune(NOW)).runs == 0  # idempotent
    finally:
        rt.db.dispose()


async def test_a_backlog_of_runs_larger_than_a_batch_is_pruned_whole(tmp_path: Path) -> None:
    rt = build_runtime(make_settings(tmp_path))
    try:
        with rt.db.session() as session:
            for index in range(BATCH * 2 + 10):
                session.add(
                    Run(
                        target_kind="silo",
                        target_id=f"silo-{index % 3}",
                        operation="apply",
                        status="failed",
                        finished_at=OLD,
                    )
                )
            session.commit()
        assert (await retention(rt, keep_runs=1).prune(NOW)).runs == BATCH * 2 + 10 - 3
        assert len(run_ids(rt)) == 3
    finally:
        rt.db.dispose()


async def test_the_outbox_and_finished_commands_are_pruned(
    tmp_path: Path, database_url: str
) -> None:
    rt = build_runtime(make_settings(tmp_path, database_url))
    try:
        with rt.db.session() as session:
            rows = {
                name: OutboxMessage(
                    method="POST", path=f"/repos/o/r/issues/{i}/comments", created_at=at
                )
                for i, (name, at) in enumerate(
                    [("old", OLD), ("recent", RECENT), ("live-comment", OLD)]
                )
            }
            session.add_all(rows.values())
            session.flush()
            session.add(
                PullRequest(
                    id="o/r#2", repository="o/r", number=2, comment_id=rows["live-comment"].id
                )
            )
            for comment_id, status, at in [
                (1, "done", OLD),
                (2, "executed", OLD),
                (3, "done", RECENT),
                (4, "executing", OLD),  # not finished: kept whatever its age
                (5, "received", OLD),
            ]:
                session.add(
                    CommentCommand(
                        comment_id=comment_id,
                        repository="o/r",
                        pr_number=1,
                        status=status,
                        updated_at=at,
                    )
                )
            session.commit()
            ids = {name: row.id for name, row in rows.items()}

        pruned = await retention(rt, ledger_retention=timedelta(days=30)).prune(NOW)

        with rt.db.session() as session:
            left = set(session.exec(select(OutboxMessage.id)))
            commands = set(session.exec(select(CommentCommand.comment_id)))
        assert left == {ids["recent"], ids["live-comment"]}
        assert commands == {3, 4, 5}
        assert (pruned.outbox, pruned.commands) == (1, 2)
    finally:
        rt.db.dispose()


def age(path: Path, days: float) -> None:
    moment = time.time() - days * 86400
    os.utime(path, (moment, moment))


async def test_caches_are_pruned_but_live_targets_keep_their_code(
    tmp_path: Path, database_url: str
) -> None:
    rt = build_runtime(make_settings(tmp_path, database_url))
    try:
        cache = rt.settings.data_dir / "stacks-cache"
        live, stale, fresh = "a" * 40, "b" * 40, "c" * 40
        for commit in (live, stale, fresh):
            (cache / "trees" / commit / "instance").mkdir(parents=True)
        (cache / "mirrors" / "0123.git").mkdir(parents=True)
        (cache / "mirrors" / "4567.git").mkdir(parents=True)
        repo_stacks = rt.settings.data_dir / "repo-stacks" / "octo-app"
        (repo_stacks / "d1").mkdir(parents=True)
        (repo_stacks / "d2").mkdir(parents=True)
        for path in (
            cache / "trees" / live,
            cache / "trees" / stale,
            cache / "mirrors" / "0123.git",
            repo_stacks / "d1",
            repo_stacks / "d2",
        ):
            age(path, 30)
        rt.lifecycle.create_silo(
            "web",
            "web",
            {},
            StackSource(kind="git", url="https://git.example.com/s.git", path="", commit=live),
        )
        rt.lifecycle.create_silo(
            "mine",
            "mine",
            {},
            StackSource(kind="repo", url=str(repo_stacks / "d1"), path="x", commit="d1"),
        )

        pruned = await retention(rt, cache_retention=timedelta(days=14)).prune(NOW)

        assert sorted(p.name for p in (cache / "trees").iterdir()) == [live, fresh]
        assert [p.name for p in (cache / "mirrors").iterdir() if p.suffix == ".git"] == ["4567.git"]
        assert [p.name for p in repo_stacks.iterdir()] == ["d1"]
        assert pruned.cache_entries == 3
    finally:
        rt.db.dispose()


def test_a_long_log_keeps_its_head_and_its_tail_with_an_omitted_marker(
    tmp_path: Path, database_url: str
) -> None:
    """Before, the first 5 MB were kept and the tail, where the error is, was dropped."""
    rt = build_runtime(make_settings(tmp_path, database_url))
    try:
        run_id = add_run(rt, "pr-9-zzzzz", None, status="running", log=False)
        writer = RunLogWriter(rt.db, run_id, flush_interval=3600)
        lines = [f"line {index:07d} " + "x" * 90 for index in range(80_000)]  # ~8 MB
        lines[0] = "Initializing the backend..."
        lines[-1] = "Error: creating the bucket: AccessDenied"
        for line in lines:
            writer.line(line)
        with rt.db.session() as session:
            chunk = writer.take_chunk(final=True)
            assert chunk is not None
            session.add(chunk)
            session.commit()

        text, _ = read_log(rt.db, run_id)
        stored = text.splitlines()
        assert stored[0] == "Initializing the backend..."
        assert stored[-1] == "Error: creating the bucket: AccessDenied"
        (marker,) = [line for line in stored if "bytes omitted" in line]
        omitted = int(marker.split()[1])
        total = sum(len(line) + 1 for line in lines)
        assert omitted == total - (len(text) - len(marker) - 1)  # ASCII: bytes are characters
        assert len(text) <= MAX_STORED_LOG + len(marker) + 1
        head = text[: text.index(marker)]
        assert HEAD_LOG - 200 < len(head) <= HEAD_LOG
        # Nothing lost between head and tail but what the marker counts.
        assert stored[: stored.index(marker)] == lines[: stored.index(marker)]
        tail = stored[stored.index(marker) + 1 :]
        assert tail == lines[-len(tail) :]
    finally:
        rt.db.dispose()


def test_a_short_log_has_no_marker(tmp_path: Path) -> None:
    rt = build_runtime(make_settings(tmp_path))
    try:
        run_id = add_run(rt, "pr-9-zzzzz", None, status="running", log=False)
        writer = RunLogWriter(rt.db, run_id)
        for index in range(100):
            writer.line(f"line {index}")
        writer.flush()
        assert writer.take_chunk(final=True) is None
        text, _ = read_log(rt.db, run_id)
        assert text.splitlines()[-100:] == [f"line {index}" for index in range(100)]
        assert "omitted" not in text
    finally:
        rt.db.dispose()


async def test_the_retention_tick_is_registered_and_counted(tmp_path: Path) -> None:
    rt = build_runtime(make_settings(tmp_path))
    try:
        ticks = Ticks(rt.db, rt.lifecycle, OutboxGateway(rt.db, None), retention=retention(rt))
        scheduler = AsyncIOScheduler(timezone="UTC")

        async def resync() -> None:
            return None

        register_ticks(scheduler, ticks, resync, 30.0)
        assert scheduler.get_job("prune_retained") is not None
        for _ in range(7):
            add_run(rt, "pr-1-aaaaa", OLD)
        before = TICK_STATS["pruned_runs"]
        await ticks.prune_retained(NOW)
        assert TICK_STATS["pruned_runs"] - before == 2
    finally:
        rt.db.dispose()


async def test_run_tickets_go_a_day_after_their_token_expired(
    tmp_path: Path, database_url: str
) -> None:
    """The kubernetes executor's tickets (and pushed lines): kept while a pod may still use
    them, deleted a day after expiry, and with their run."""
    rt = build_runtime(make_settings(tmp_path, database_url))
    for run_id, expires in ((1, NOW - timedelta(days=2)), (2, NOW - timedelta(hours=1))):
        assert tickets.create(rt.db, run_id, "env-x", f"rbr_token{run_id}", "", b"", expires)
        tickets.push_lines(rt.db, run_id, [(1, "a line")], "apply")
    pruned = await retention(rt).prune(NOW)
    assert pruned.tickets == 1
    assert tickets.progress(rt.db, 1) is None and tickets.lines_after(rt.db, 1, 0) == []
    assert tickets.progress(rt.db, 2) is not None and tickets.lines_after(rt.db, 2, 0) != []
