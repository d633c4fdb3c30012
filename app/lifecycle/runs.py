"""One engine run of a claimed target, recorded: its Run row, phases, log and outcome."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from typing import Any

from sqlmodel import func, select

from app.db.models import Run, RunLogChunk, utcnow
from app.db.session import Database
from app.engine.executor import Executor
from app.engine.logs import RunLogWriter
from app.engine.runner import EngineCancelled, EngineError, EngineFailed, EngineJob
from app.lifecycle.lease import Claim, Lease, LeaseLost
from app.lifecycle.timings import PhaseMarks
from app.lifecycle.urlwait import url_to_wait_for, wait_for_url
from app.logging import log_context
from app.stacks.catalog import StackError

log = logging.getLogger("runbot.reconcile")

LineEcho = Callable[[str, str], None]  # (target label, line)
PhaseEcho = Callable[[str, str], None]  # (target label, phase)
Finished = tuple[dict[str, Any] | None, str | None, list[str]]  # (outputs, error, log tail)


class Runs:
    """Runs engine jobs for the lease holder, under its heartbeat, and records each run."""

    def __init__(
        self,
        db: Database,
        runner: Executor,
        lease: Lease,
        echo_line: LineEcho | None = None,
        echo_phase: PhaseEcho | None = None,
    ) -> None:
        self.db = db
        self.runner = runner
        self.lease = lease
        self.echo_line = echo_line
        self.echo_phase = echo_phase

    def new(
        self,
        claim: Claim,
        operation: str,
        trigger: str,
        head_sha: str | None,
        commit: str,
        config_sha: str | None = None,
    ) -> Run:
        """A run record, saved by `Lease.save(..., start_run=)` with the status it begins under."""
        return Run(
            target_kind=claim.kind,
            target_id=claim.id,
            operation=operation,
            trigger=trigger,
            generation=claim.generation,
            head_sha=head_sha,
            stack_commit=commit or None,
            config_sha=config_sha,
            worker=self.lease.worker_id,
            phase="init",
        )

    def note(self, run: Run, text: str) -> None:
        """A line of runbot's own at the end of a finished run's log."""
        with self.db.session() as session:
            last = session.exec(
                select(func.max(RunLogChunk.seq)).where(RunLogChunk.run_id == run.id)
            ).one()
            session.add(RunLogChunk(run_id=run.id or 0, seq=(last or 0) + 1, text=text + "\n"))
            session.commit()

    def _finish(
        self,
        run: Run,
        writer: RunLogWriter,
        marks: PhaseMarks,
        status: str,
        error: str | None = None,
        exit_code: int | None = None,
    ) -> None:
        """The run's outcome, its phase timings and the last of its log, in one transaction."""
        with self.db.session() as session:
            chunk = writer.take_chunk(final=True)
            if chunk is not None:
                session.add(chunk)
            row = session.get(Run, run.id)
            assert row is not None
            row.status, row.error, row.exit_code = status, error, exit_code
            row.timings = marks.finish(time.monotonic())
            row.finished_at = utcnow()
            session.add(row)
            session.commit()

    def _set_phase(self, run: Run, label: str, marks: PhaseMarks) -> Callable[[str], None]:
        def on_phase(phase: str) -> None:
            timings = marks.enter(phase, time.monotonic())
            with self.db.session() as session:
                row = session.get(Run, run.id)
                if row is not None:
                    row.phase, row.timings = phase, timings
                    session.add(row)
                    session.commit()
            if self.echo_phase:
                self.echo_phase(label, phase)

        return on_phase

    async def execute(self, claim: Claim, run: Run, label: str, job: EngineJob) -> Finished:
        """Run the engine under a heartbeat. Returns (outputs, error sentence, log tail)."""
        with log_context(run_id=run.id):
            log.info("%s %s: %s started", claim.kind, claim.id, job.operation)
            outcome = await self._execute_logged(claim, run, label, job)
            if outcome[1] is None:
                log.info("%s %s: %s succeeded", claim.kind, claim.id, job.operation)
            else:
                log.warning("%s %s: %s failed: %s", claim.kind, claim.id, job.operation, outcome[1])
            return outcome

    async def _execute_logged(self, claim: Claim, run: Run, label: str, job: EngineJob) -> Finished:
        echo_line = self.echo_line
        echo = (lambda line: echo_line(label, line)) if echo_line else None
        writer = RunLogWriter(self.db, run.id or 0, echo=echo)
        marks = PhaseMarks(run.timings)
        cancel = asyncio.Event()
        job.run_id = run.id
        heartbeat = asyncio.create_task(self.lease.heartbeat(claim, cancel))
        on_phase = self._set_phase(run, label, marks)
        try:
            result = await self.runner.execute(job, writer.line, on_phase, cancel)
            waited = (
                url_to_wait_for(result.outputs, job.variables) if job.operation == "apply" else None
            )
            if waited is not None:
                on_phase("url")
                await wait_for_url(*waited, writer.line)
        except EngineCancelled as exc:
            self._finish(run, writer, marks, "cancelled", str(exc), exc.exit_code)
            if cancel.is_set():
                raise LeaseLost(f"{claim.kind} {claim.id}") from exc
            return None, f"the engine {exc}", writer.tail
        except EngineFailed as exc:
            self._finish(run, writer, marks, "failed", str(exc), exc.exit_code)
            # Outputs the failed apply left: the caller scrubs their sensitive values.
            return exc.outputs or None, f"the engine's {exc}", writer.tail
        except (EngineError, StackError, OSError) as exc:
            if isinstance(exc, OSError):  # runbot's own I/O, not the engine: keep where
                log.warning("%s %s: %s raised", claim.kind, claim.id, job.operation, exc_info=exc)
            writer.line(f"runbot: {exc}")
            self._finish(run, writer, marks, "failed", str(exc))
            return None, str(exc), writer.tail
        except asyncio.CancelledError:
            writer.line("runbot: worker shutting down; another worker will continue this run")
            self._finish(run, writer, marks, "cancelled", "worker shut down")
            raise
        finally:
            heartbeat.cancel()
        self._finish(run, writer, marks, "succeeded", exit_code=0)
        return result.outputs, None, writer.tail
