"""Small helpers for tests that drive the real local stack."""

from __future__ import annotations

import asyncio
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
from sqlalchemy import update

from app.db.models import Environment, Silo
from app.lifecycle.states import Status
from app.runtime import Runtime


def fetch(url: str, timeout: float = 3.0) -> httpx.Response:
    return httpx.get(url, timeout=timeout)


def refuses(url: str) -> bool:
    """Nothing answers for the environment at `url`: its port is closed or, behind the local
    stack's ingress, the ingress knows no such environment (404). A sleeping environment's
    waking page (503) is not asked for: asking would wake it."""
    try:
        response = httpx.get(url, timeout=2.0)
    except httpx.ConnectError:
        return True
    return response.headers.get("server", "").startswith("runbot-ingress/") and (
        response.status_code == 404
    )


def processes_matching(pattern: str) -> list[str]:
    """Command lines of live processes whose argv contains `pattern` (excluding pgrep itself)."""
    out = subprocess.run(["pgrep", "-af", "--", pattern], capture_output=True, text=True)
    return [line for line in out.stdout.splitlines() if "pgrep" not in line]


def fail_every_silo(rt: Runtime) -> None:
    """Mark the silos failed without an engine run: their environments wait as `queued`."""
    with rt.db.session() as session:
        session.execute(
            update(Silo).values(status=Status.FAILED, observed_generation=Silo.generation)
        )
        session.commit()


def settled(row: Silo | Environment) -> bool:
    return row.observed_generation >= row.generation and row.lease_owner is None


async def converge(
    rt: Runtime, check: Callable[[], bool], timeout: float = 120.0, **options: object
) -> None:
    reconciler = rt.reconciler(**options)
    await reconciler.drain(check, timeout=timeout, poll=0.1)


def converge_sync(
    rt: Runtime, check: Callable[[], bool], timeout: float = 120.0, **options: object
) -> None:
    asyncio.run(converge(rt, check, timeout, **options))


def silo_ready(rt: Runtime, name: str) -> Callable[[], bool]:
    def check() -> bool:
        silo = rt.lifecycle.get_silo(name)
        return settled(silo) and silo.status in (Status.READY, Status.FAILED, Status.DESTROYED)

    return check


def env_settled(rt: Runtime, env_id: str) -> Callable[[], bool]:
    return lambda: settled(rt.lifecycle.get_environment(env_id))


def wait_for(check: Callable[[], bool], timeout: float = 30.0, interval: float = 0.1) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError("condition not met in time")
        time.sleep(interval)


TERMINAL_DEPLOYMENT_STATES = frozenset({"success", "failure", "error", "inactive"})


def nothing_pending(fake: Any, repo: str) -> bool:
    """Issue 20's invariant: no check run is still queued or in progress, and every
    deployment's last status is terminal (a closed PR's deployments are deleted: terminal too)."""
    runs_done = all(run["status"] == "completed" for run in fake.check_runs(repo))
    last = [fake.deployment_statuses(repo, d["id"])[-1:] for d in fake.deployments(repo)]
    return runs_done and all(s and s[0]["state"] in TERMINAL_DEPLOYMENT_STATES for s in last)


def what_is_pending(fake: Any, repo: str) -> str:
    """The check runs and deployments `nothing_pending` still waits for, one per line."""
    lines = [
        f"check run {run['id']} on {run['head_sha'][:12]}: {run['status']}"
        for run in fake.check_runs(repo)
        if run["status"] != "completed"
    ]
    for deployment in fake.deployments(repo):
        states = [s["state"] for s in fake.deployment_statuses(repo, deployment["id"])]
        if not states or states[-1] not in TERMINAL_DEPLOYMENT_STATES:
            where = deployment.get("environment")
            lines.append(f"deployment {deployment['id']} ({where}): {states}")
    return "\n".join(lines)


def git(repo: Path, *args: str) -> str:
    """Run git in `repo` as a throwaway committer; its stripped stdout."""
    return subprocess.run(
        ["git", "-C", str(repo), "-c", "user.email=t@example.com", "-c", "user.name=t", *args],
        check=True,
        capture_output=True,
        text=True,
    ).stdout.strip()
