"""Helpers for the dashboard/API tests: a web-only runbot on loopback, sign-in, seeded rows."""

from __future__ import annotations

import asyncio
import threading
import time
from datetime import timedelta
from typing import Any

import httpx
import uvicorn
from fastapi import FastAPI

from app.db.models import Environment, Run, RunLogChunk, Silo, utcnow
from app.db.session import Database


class WebServer:
    """The real app under uvicorn on a port chosen up front (so public_url can name it)."""

    def __init__(self, app: FastAPI, port: int) -> None:
        self.app = app
        self.port = port
        self.server = uvicorn.Server(
            uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", lifespan="on")
        )
        self.thread = threading.Thread(target=lambda: asyncio.run(self.server.serve()), daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def __enter__(self) -> WebServer:
        self.thread.start()
        deadline = time.monotonic() + 20
        while not self.server.started:
            if time.monotonic() > deadline or not self.thread.is_alive():
                raise RuntimeError("runbot did not start")
            time.sleep(0.02)
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=60)


def sign_in(base_url: str) -> httpx.Client:
    """Sign in through the fake GitHub's OAuth endpoints, as `fake.oauth_login`.

    The client follows every redirect: runbot → GitHub's authorize page (auto-approved by the
    fake) → runbot's callback → the dashboard.
    """
    client = httpx.Client(base_url=base_url, timeout=20, trust_env=False)
    response = client.get("/auth/github?next=/", follow_redirects=True)
    assert response.status_code == 200, response.text
    assert str(response.url).startswith(base_url), response.url
    return client


def csrf_of(client: httpx.Client) -> str:
    token = client.get("/api/me").json()["csrf_token"]
    assert token
    return str(token)


def seed_silo(db: Database, name: str, outputs: dict[str, Any], capacity: int = 5) -> None:
    with db.session() as session:
        session.add(
            Silo(
                name=name,
                stack="local",
                status="ready",
                capacity=capacity,
                outputs=outputs,
                generation=1,
                observed_generation=1,
            )
        )
        session.commit()


def seed_env(
    db: Database,
    env_id: str,
    repository: str,
    pr_number: int,
    silo: str,
    *,
    author: str = "octocat",
    status: str = "ready",
    slot: int | None = None,
    installation_id: int | None = None,
    outputs: dict[str, Any] | None = None,
    age: timedelta = timedelta(hours=1),
) -> None:
    now = utcnow()
    destroyed = status == "destroyed"
    with db.session() as session:
        session.add(
            Environment(
                id=env_id,
                silo_name=silo,
                stack="local",
                repository=repository,
                pr_number=pr_number,
                installation_id=installation_id,
                author=author,
                head_sha="abcdef1234567",
                head_ref="feature",
                status=status,
                desired="absent" if destroyed else "present",
                slot=None if destroyed else slot,
                url=None if destroyed else f"http://127.0.0.1:1/{env_id}",
                outputs=outputs or {},
                ttl={"idle": 48 * 3600.0, "max": 7 * 86400.0, "warn_before": 3600.0},
                created_at=now - age,
                last_activity_at=now - age,
                expires_at=None if destroyed else now + timedelta(hours=47),
                destroyed_at=now if destroyed else None,
                generation=1,
                observed_generation=1,
            )
        )
        session.commit()


def seed_run(
    db: Database, kind: str, target: str, log: str, *, worker: str = "", finished: bool = True
) -> int:
    now = utcnow()
    with db.session() as session:
        run = Run(
            target_kind=kind,
            target_id=target,
            operation="apply",
            trigger="test",
            status="succeeded" if finished else "running",
            phase="done" if finished else "apply",
            worker=worker,
            started_at=now - timedelta(seconds=42),
            finished_at=now if finished else None,
        )
        session.add(run)
        session.commit()
        session.refresh(run)
        assert run.id is not None
        for seq, line in enumerate(log.splitlines(keepends=True), start=1):
            session.add(RunLogChunk(run_id=run.id, seq=seq, text=line))
        session.commit()
        return run.id
