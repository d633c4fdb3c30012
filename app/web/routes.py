"""Wires the dashboard, the REST API, sign-in and /metrics into the runbot app.

`create_app` calls `mount_web` once; everything web-facing beyond intake and health lives in
this package: `service` (the shared service layer), `views` (what it returns), `api`,
`dashboard`, `auth`, `metrics`.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fastapi import FastAPI
from fastapi.responses import Response
from fastapi.staticfiles import StaticFiles
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from app.github.appgateway import GitHubAppGateway
from app.github.gateway import Gateway
from app.runtime import Runtime
from app.web.api import api_router
from app.web.auth import Authenticator
from app.web.dashboard import Dashboard
from app.web.metrics import Metrics
from app.web.service import Service

STATIC = Path(__file__).parent / "static"


@dataclass
class Web:
    auth: Authenticator
    service: Service
    metrics: Metrics


def mount_web(app: FastAPI, rt: Runtime, holder: dict[str, Any]) -> Web:
    """Add `/`, `/api`, `/docs`, `/metrics`, `/static` and sign-in routes to `app`."""
    own: dict[str, Gateway] = {}

    def gateway() -> Gateway | None:
        """The workers' gateway; a web-only app (no loops) makes its own for permission checks."""
        if "loops" in holder:
            return holder["loops"].gateway  # type: ignore[no-any-return]
        if rt.settings.local_mode:
            return None
        if "gateway" not in own:
            own["gateway"] = GitHubAppGateway(rt.settings)
        return own["gateway"]

    def wake() -> None:
        if "loops" in holder:
            holder["loops"].reconciler.wakeup.set()
            holder["loops"].notifier.wakeup.set()

    def worker_id() -> str | None:
        return holder["loops"].reconciler.worker_id if "loops" in holder else None

    auth = Authenticator(rt.settings, gateway)
    service = Service(rt, auth, wake)
    metrics = Metrics(rt.db, worker_id)
    dashboard = Dashboard(service, auth)

    app.include_router(api_router(service, auth))
    app.include_router(auth.router(dashboard.login_page))
    app.include_router(dashboard.router())
    app.mount("/static", StaticFiles(directory=STATIC), name="static")

    @app.get("/metrics", tags=["health"], response_class=Response)
    def prometheus() -> Response:
        """Prometheus text format (no authentication: it carries no repository names)."""
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
                if "gateway" in own:
                    await own["gateway"].aclose()

    app.router.lifespan_context = lifespan
    return Web(auth=auth, service=service, metrics=metrics)
