"""Wires the dashboard, the REST API, sign-in and /metrics into the runbot app.

`create_app` calls `mount_web` once; everything web-facing beyond intake and health lives in
this package: `service` (the shared service layer, with `visible`, `usage` and `pools`),
`views` (what it returns), `api`, `dashboard`, `auth`, `metrics`.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response
from fastapi.staticfiles import StaticFiles
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from app.github.gateway import Gateway
from app.runtime import Runtime
from app.web.api import api_router
from app.web.auth import Authenticator, bearer_ok
from app.web.dashboard import Dashboard
from app.web.metrics import Metrics
from app.web.runtoken import run_token_router
from app.web.service import Service
from app.web.siloapi import silo_api_router
from app.web.surface import SurfaceGuard

STATIC = Path(__file__).parent / "static"


@dataclass
class Web:
    auth: Authenticator
    service: Service
    metrics: Metrics


@dataclass(frozen=True)
class WebHooks:
    """What the web needs from the process around it (the server composes them)."""

    gateway: Callable[[], Gateway | None]  # for permission checks; None in local mode
    wake: Callable[[], None]  # something changed: the workers should look now
    worker_id: Callable[[], str | None]  # this process's worker, if it runs one


def mount_web(app: FastAPI, rt: Runtime, hooks: WebHooks) -> Web:
    """Add `/`, `/api`, `/docs`, `/metrics`, `/static` and sign-in routes to `app`."""
    gateway, wake, worker_id = hooks.gateway, hooks.wake, hooks.worker_id
    auth = Authenticator(rt.settings, gateway, rt.db)
    service = Service(rt, auth, wake)
    # Repository names only behind RUNBOT_METRICS_TOKEN: an open /metrics names none.
    metrics = Metrics(
        rt.db, worker_id, lambda: rt.orphans.latest, by_repository=bool(rt.settings.metrics_token)
    )
    dashboard = Dashboard(service, auth)

    app.include_router(api_router(service, auth))
    app.include_router(run_token_router(rt.db))
    app.include_router(silo_api_router(rt.lifecycle, lambda: rt.silo_tokens, wake))
    app.include_router(auth.router(dashboard.login_page))
    app.include_router(dashboard.router())
    app.mount("/static", StaticFiles(directory=STATIC), name="static")
    app.add_middleware(SurfaceGuard, settings=rt.settings)
    metrics_token = rt.settings.metrics_token

    @app.get("/metrics", tags=["health"], response_class=Response)
    def prometheus(request: Request) -> Response:
        """Prometheus text format; with RUNBOT_METRICS_TOKEN set, only for that bearer token
        (then the cost metrics carry repository names; open, they carry none, but counts and
        timings are still the operator's)."""
        if metrics_token and not bearer_ok(request.headers.get("authorization"), metrics_token):
            return JSONResponse(
                {"error": "send Authorization: Bearer <RUNBOT_METRICS_TOKEN> to read /metrics"},
                status_code=401,
                headers={"WWW-Authenticate": 'Bearer realm="runbot metrics"'},
            )
        metrics.refresh()
        return Response(generate_latest(metrics.registry), media_type=CONTENT_TYPE_LATEST)

    inner = app.router.lifespan_context

    @contextlib.asynccontextmanager
    async def lifespan(instance: Any) -> AsyncIterator[Any]:
        async with inner(instance) as state:
            try:
                yield state
            finally:
                await auth.aclose()

    app.router.lifespan_context = lifespan
    return Web(auth=auth, service=service, metrics=metrics)
