"""The silo API a silo's ingress calls: its traffic in, and wake-ups for sleeping environments.

Every call carries `Authorization: Bearer <runbot_silo_token>` of the silo in the path,
compared in constant time with the token derived from the silo's current `token_version`, so a
rotated token is refused at once. 401: no token, a wrong one, or no such live silo (one answer,
so a caller learns nothing about other silos). The token acts on its own silo's environments
only: another silo's environment answers 404 like an unknown one. The token opens nothing else.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from fastapi import APIRouter, HTTPException, Request
from pydantic import BaseModel, Field
from sqlmodel import col, select
from starlette.concurrency import run_in_threadpool

from app.db.models import Environment, Silo, utcnow
from app.lifecycle.service import Lifecycle
from app.lifecycle.silotoken import SiloTokens
from app.lifecycle.states import Desired, Status

MAX_BODY_BYTES = 256 * 1024
MAX_SEEN = 2000
ENV_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,62}$")


class ActivityOut(BaseModel):
    recorded: int = Field(description="environments whose last activity moved forward")
    ignored: list[str] = Field(description="ids that are not live environments of this silo")


class WakeOut(BaseModel):
    environment: str
    status: str
    desired: str
    woken: bool = Field(description="this call woke it; false: it was not asleep (idempotent)")
    ready: bool = Field(description="its app is up: the ingress can proxy to it again")


class BodyError(ValueError):
    """An unusable request body; the message says what to send instead (422)."""


@dataclass(frozen=True)
class Activity:
    seen: dict[str, datetime]


def parse_activity(raw: bytes) -> Activity:
    """`{"seen": {"<env id>": "<ISO time with zone>", ...}}`, bounded; BodyError otherwise."""
    data = _json_object(raw)
    seen = data.get("seen")
    if not isinstance(seen, dict):
        raise BodyError('send {"seen": {"<environment id>": "<ISO 8601 time>", ...}}')
    if len(seen) > MAX_SEEN:
        raise BodyError(f"{len(seen)} environments in one report; send at most {MAX_SEEN}")
    parsed: dict[str, datetime] = {}
    for env_id, value in seen.items():
        if not ENV_ID.match(env_id):
            raise BodyError(f"{env_id[:70]!r} is not an environment id")
        parsed[env_id] = _iso_time(env_id, value)
    return Activity(parsed)


def parse_wake(raw: bytes) -> str:
    data = _json_object(raw)
    env_id = data.get("environment")
    if not isinstance(env_id, str) or not ENV_ID.match(env_id):
        raise BodyError('send {"environment": "<environment id>"}')
    return env_id


def _json_object(raw: bytes) -> dict[str, Any]:
    if len(raw) > MAX_BODY_BYTES:
        raise BodyError(f"the body is over {MAX_BODY_BYTES} bytes; send smaller batches")
    try:
        data = json.loads(raw)
    except (ValueError, UnicodeDecodeError) as exc:
        raise BodyError(f"the body is not JSON ({exc}); send a JSON object") from None
    if not isinstance(data, dict):
        raise BodyError("the body must be a JSON object")
    return data


def _iso_time(env_id: str, value: object) -> datetime:
    if not isinstance(value, str) or len(value) > 40:
        raise BodyError(f"seen[{env_id!r}] must be an ISO 8601 time string, e.g. 2026-01-02T03:04Z")
    try:
        at = datetime.fromisoformat(value)
    except ValueError:
        raise BodyError(
            f"seen[{env_id!r}] = {value!r} is not an ISO 8601 time; send e.g. 2026-01-02T03:04:05Z"
        ) from None
    if at.tzinfo is None:
        raise BodyError(f"seen[{env_id!r}] = {value!r} has no time zone; add Z or +00:00")
    return at


def silo_api_router(
    lifecycle: Lifecycle, tokens: Callable[[], SiloTokens], wake_workers: Callable[[], None]
) -> APIRouter:
    router = APIRouter(prefix="/api/v1/silos", tags=["silo token"])
    db = lifecycle.db
    auth_doc: dict[int | str, dict[str, Any]] = {
        401: {"description": "no silo token, a wrong or rotated one, or no such silo"},
        404: {"description": "not an environment of this silo"},
        422: {"description": "the body is not what the endpoint takes; the message says why"},
    }

    def authorize(name: str, header: str | None) -> None:
        scheme, _, presented = (header or "").partition(" ")
        with db.session() as session:
            silo = session.get(Silo, name)
        ok = (
            silo is not None
            and silo.status != Status.DESTROYED
            and scheme.lower() == "bearer"
            and tokens().verify(silo.name, silo.token_version, presented.strip())
        )
        if not ok:
            raise HTTPException(
                401,
                f"send Authorization: Bearer <runbot_silo_token of silo {name[:70]!r}>",
                headers={"WWW-Authenticate": 'Bearer realm="runbot silo"'},
            )

    async def body(request: Request) -> bytes:
        chunks, size = [], 0
        async for chunk in request.stream():
            size += len(chunk)
            if size > MAX_BODY_BYTES:
                raise HTTPException(422, f"the body is over {MAX_BODY_BYTES} bytes")
            chunks.append(chunk)
        return b"".join(chunks)

    def parsed(parse: Callable[[bytes], Any], raw: bytes) -> Any:
        try:
            return parse(raw)
        except BodyError as exc:
            raise HTTPException(422, str(exc)) from None

    def own(name: str, ids: list[str]) -> set[str]:
        with db.session() as session:
            query = select(Environment.id).where(
                col(Environment.id).in_(ids),
                Environment.silo_name == name,
                col(Environment.status) != Status.DESTROYED,
            )
            return set(session.exec(query))

    @router.post("/{name}/activity", responses=auth_doc)
    async def activity(name: str, request: Request) -> ActivityOut:
        """Batched last-request times per environment: the idle sleep counts from them."""
        await run_in_threadpool(authorize, name, request.headers.get("authorization"))
        report: Activity = parsed(parse_activity, await body(request))

        def record() -> ActivityOut:
            mine = own(name, list(report.seen))
            seen = {k: v for k, v in report.seen.items() if k in mine}
            moved = lifecycle.record_traffic(seen) if seen else 0
            return ActivityOut(recorded=moved, ignored=sorted(set(report.seen) - mine))

        result: ActivityOut = await run_in_threadpool(record)
        return result

    @router.post("/{name}/wake", responses=auth_doc)
    async def wake(name: str, request: Request) -> WakeOut:
        """Wake a sleeping environment of this silo (a request reached it); idempotent."""
        await run_in_threadpool(authorize, name, request.headers.get("authorization"))
        env_id: str = parsed(parse_wake, await body(request))

        def act() -> WakeOut:
            if not own(name, [env_id]):
                raise HTTPException(404, f"silo {name!r} has no environment {env_id!r}")
            woken = lifecycle.wake_up(env_id, trigger="traffic", now=utcnow())
            env = lifecycle.get_environment(env_id)
            return WakeOut(
                environment=env.id,
                status=env.status,
                desired=env.desired,
                woken=woken,
                ready=env.status == Status.READY and env.desired == Desired.PRESENT,
            )

        result: WakeOut = await run_in_threadpool(act)
        if result.woken:
            wake_workers()
        return result

    return router
