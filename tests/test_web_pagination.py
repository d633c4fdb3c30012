"""2,000 environments: every one is reachable exactly once through the API's and the dashboard's
pages, filters narrow correctly, and pages stay fast."""

from __future__ import annotations

import re
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import httpx
import pytest

from app.db.models import Environment, utcnow
from app.server import create_app
from tests.apphost import free_port
from tests.conftest import make_settings
from tests.webtools import WebServer, seed_silo

TOTAL = 2000
REPOS = ("octo/alpha", "octo/beta")
AUTHORS = ("alice", "bob", "carol", "dave")
STATUSES = ("ready", "failed", "sleeping", "destroyed", "queued")


def seed_many(db) -> None:  # type: ignore[no-untyped-def]
    now = utcnow()
    rows = []
    for i in range(TOTAL):
        status = STATUSES[i % len(STATUSES)]
        rows.append(
            Environment(
                id=f"pr-{i}-{i:05x}",
                silo_name="bulk",
                stack="local",
                repository=REPOS[i % 2],
                pr_number=i,
                author=AUTHORS[i % 4],
                head_sha=f"{i:040x}",
                status=status,
                desired="absent" if status == "destroyed" else "present",
                created_at=now - timedelta(minutes=i),
                expires_at=now + timedelta(hours=5),
                destroyed_at=now if status == "destroyed" else None,
                generation=1,
                observed_generation=1,
            )
        )
    with db.session() as session:
        session.add_all(rows)
        session.commit()


@pytest.fixture
def base_url(tmp_path: Path, database_url: str) -> Iterator[str]:
    """Local mode, no sign-in configured: open to loopback, which is where the test is."""
    app = create_app(make_settings(tmp_path, database_url), background=False)
    db = app.state.runtime.db
    seed_silo(db, "bulk", {}, capacity=10)
    seed_many(db)
    with WebServer(app, free_port()) as server:
        yield server.url


def test_api_pages_through_every_environment(base_url: str) -> None:
    client = httpx.Client(base_url=base_url, timeout=30, trust_env=False)
    seen: list[str] = []
    page = 1
    while True:
        data = client.get(
            "/api/environments", params={"status": "all", "per_page": 200, "page": page}
        ).json()
        assert data["total"] == TOTAL and data["pages"] == 10
        seen += [item["id"] for item in data["items"]]
        if not data["has_next"]:
            break
        page += 1
    assert page == 10 and len(seen) == TOTAL and len(set(seen)) == TOTAL
    assert seen[0] == "pr-0-00000" and seen[-1] == f"pr-{TOTAL - 1}-{TOTAL - 1:05x}"  # newest first
    beyond = client.get("/api/environments", params={"status": "all", "page": 11, "per_page": 200})
    assert beyond.json()["items"] == []

    def total(**params: str) -> int:
        return int(client.get("/api/environments", params=params).json()["total"])

    assert total() == TOTAL - TOTAL // 5  # the default hides destroyed ones
    assert total(status="failed") == TOTAL // 5
    assert total(status="all", repo="octo/ALPHA") == TOTAL // 2
    assert total(status="all", author="bob") == TOTAL // 4
    assert total(status="all", repo="octo/beta", author="bob") == TOTAL // 4  # odd i only
    assert total(status="all", repo="octo/alpha", author="bob") == 0
    assert total(status="ready", repo="octo/alpha") == TOTAL // 10  # i % 10 == 0


def test_dashboard_pages_through_every_environment(base_url: str) -> None:
    """Every environment appears exactly once across the pages. How fast a page is, at 10,000
    environments, is measured by `python -m bench --only scale`, not asserted here."""
    client = httpx.Client(base_url=base_url, timeout=30, trust_env=False)
    seen: list[str] = []
    url: str | None = "/?status=all"
    pages = 0
    while url:
        response = client.get(url)
        assert response.status_code == 200
        rows = re.findall(r'<tr data-env="([^"]+)"', response.text)
        assert len(rows) == 50
        seen += rows
        pages += 1
        found = re.search(r'<a rel="next" href="([^"]+)"', response.text)
        url = found.group(1).replace("&amp;", "&") if found else None
    assert pages == 40 and len(seen) == TOTAL and len(set(seen)) == TOTAL
    filtered = client.get("/", params={"repo": "octo/beta", "author": "dave", "status": "all"})
    ids = re.findall(r'<tr data-env="pr-(\d+)-', filtered.text)
    assert ids and all(int(i) % 4 == 3 for i in ids)
    assert "page 1 of 10 · 500 in all" in filtered.text
