"""The run-token API a Kubernetes pod talks to: its spec and template in, its log and result out.

Every call carries `Authorization: Bearer <run token>`, the short-lived token the dispatcher
minted for this one run (its sha256 is in the ticket; compared in constant time). 401: no
token; 403: not this run's token; 410: expired, or the run has finished and its spec is gone.
The token opens nothing else: not the operator API, not another run.
"""

from __future__ import annotations

from typing import Any, Literal

from fastapi import APIRouter, HTTPException, Request
from fastapi.responses import Response
from pydantic import BaseModel, Field
from starlette.concurrency import run_in_threadpool

from app.db.models import RunTicket, utcnow
from app.db.session import Database
from app.executor import tickets
from app.executor.tickets import TicketError


class SpecOut(BaseModel):
    envelope: str = Field(description="the signed spec: JSON {spec, sig}")
    next_seq: int = Field(description="the first line number this pod should push")


class LineIn(BaseModel):
    seq: int = Field(ge=1)
    text: str


class LinesIn(BaseModel):
    lines: list[LineIn] = Field(default_factory=list, max_length=tickets.MAX_LINES_PER_PUSH)
    phase: str | None = Field(default=None, max_length=20)


class LinesOut(BaseModel):
    last_seq: int


class ResultIn(BaseModel):
    status: Literal["succeeded", "failed", "cancelled"]
    outputs: dict[str, Any] = Field(default_factory=dict)
    error: str | None = None
    phase: str | None = None
    exit_code: int | None = None
    kind: Literal["engine", "error"] | None = None


class ResultOut(BaseModel):
    recorded: bool = Field(description="false: a result was recorded already (a resend)")


def run_token_router(db: Database) -> APIRouter:
    router = APIRouter(prefix="/api/runs", tags=["run token"])
    auth_doc: dict[int | str, dict[str, Any]] = {
        401: {"description": "no run token"},
        403: {"description": "not this run's"},
    }

    def authorize(run_id: int, request: Request) -> RunTicket:
        return tickets.authorize(db, run_id, request.headers.get("authorization"), utcnow())

    async def guarded(fn: Any, *args: Any) -> Any:
        try:
            return await run_in_threadpool(fn, *args)
        except TicketError as exc:
            headers = {"WWW-Authenticate": 'Bearer realm="runbot run"'} if exc.status == 401 else {}
            raise HTTPException(exc.status, exc.message, headers=headers) from None

    @router.get("/{run_id}/spec", responses=auth_doc)
    async def spec(run_id: int, request: Request) -> SpecOut:
        """The run's signed, expiring spec (verify its signature with a key from the token)."""

        def read() -> SpecOut:
            ticket = authorize(run_id, request)
            tickets.open_for_fetch(ticket)
            return SpecOut(envelope=ticket.spec, next_seq=ticket.last_seq + 1)

        result: SpecOut = await guarded(read)
        return result

    @router.get("/{run_id}/template", responses=auth_doc, response_class=Response)
    async def template(run_id: int, request: Request) -> Response:
        """The pinned template as a gzipped tar; its sha256 is in the signed spec."""

        def read() -> bytes:
            ticket = authorize(run_id, request)
            tickets.open_for_fetch(ticket)
            return ticket.template or b""

        data: bytes = await guarded(read)
        return Response(data, media_type="application/gzip")

    @router.post("/{run_id}/lines", responses=auth_doc)
    async def lines(run_id: int, body: LinesIn, request: Request) -> LinesOut:
        """Log lines, numbered from 1; a line number already stored is ignored (resends)."""

        def push() -> int:
            authorize(run_id, request)
            return tickets.push_lines(
                db, run_id, [(line.seq, line.text) for line in body.lines], body.phase
            )

        return LinesOut(last_seq=await guarded(push))

    @router.post("/{run_id}/result", responses=auth_doc)
    async def result(run_id: int, body: ResultIn, request: Request) -> ResultOut:
        """The run's outcome, recorded once; a resend is accepted and changes nothing."""

        def push() -> bool:
            authorize(run_id, request)
            return tickets.push_result(db, run_id, body.model_dump(exclude_none=True))

        return ResultOut(recorded=await guarded(push))

    return router
