"""The run-token API a pod talks to: who may call it, and resends that change nothing."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from app.db.models import RunTicket, utcnow
from app.executor import tickets
from app.executor.pod import Api, LinePusher
from app.executor.spec import SPEC_VERSION, digest, new_token, sign, verify
from app.server import create_app
from tests.apphost import free_port
from tests.conftest import make_settings
from tests.webtools import WebServer

TEMPLATE = b"\x1f\x8b fake tarball"


@pytest.fixture
def api(tmp_path: Path, database_url: str) -> Iterator[tuple[TestClient, object]]:
    app = create_app(make_settings(tmp_path, database_url), background=False)
    with TestClient(app, base_url="http://127.0.0.1") as client:
        yield client, app.state.runtime.db


def ticket(db: object, run_id: int, token: str, expires_in: float = 600) -> None:
    spec = {"v": SPEC_VERSION, "run_id": run_id, "exp": int(time.time() + expires_in)}
    envelope = sign(spec, token)
    expires = utcnow() + timedelta(seconds=expires_in)
    assert tickets.create(db, run_id, "env-x", token, envelope, TEMPLATE, expires)  # type: ignore[arg-type]


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def test_the_run_token_opens_its_own_runs_spec_and_template(api: tuple[TestClient, object]) -> None:
    client, db = api
    token = new_token()
    ticket(db, 11, token)
    response = client.get("/api/runs/11/spec", headers=bearer(token))
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["next_seq"] == 1
    assert verify(body["envelope"], token, time.time(), 11)["run_id"] == 11
    template = client.get("/api/runs/11/template", headers=bearer(token))
    assert template.status_code == 200 and template.content == TEMPLATE
    assert digest(template.content) == digest(TEMPLATE)


def test_no_token_another_runs_token_and_an_expired_token_are_refused_clearly(
    api: tuple[TestClient, object],
) -> None:
    client, db = api
    mine, other, old = new_token(), new_token(), new_token()
    ticket(db, 21, mine)
    ticket(db, 22, other)
    ticket(db, 23, old, expires_in=-1)
    for path in ("spec", "template"):
        anonymous = client.get(f"/api/runs/21/{path}")
        assert anonymous.status_code == 401
        assert "Bearer <run token>" in anonymous.json()["detail"]
        assert anonymous.headers["www-authenticate"].startswith("Bearer")
        assert (
            client.get(f"/api/runs/21/{path}", headers={"Authorization": "Basic x"}).status_code
            == 401
        )
        wrong = client.get(f"/api/runs/21/{path}", headers=bearer(other))
        assert wrong.status_code == 403 and "run 21" in wrong.json()["detail"]
        unknown = client.get(f"/api/runs/99/{path}", headers=bearer(mine))
        assert unknown.status_code == 403  # the same answer: a token cannot probe for runs
        expired = client.get(f"/api/runs/23/{path}", headers=bearer(old))
        assert expired.status_code == 410 and "expired" in expired.json()["detail"]
    push = client.post("/api/runs/21/lines", json={"lines": []}, headers=bearer(other))
    assert push.status_code == 403
    result = client.post("/api/runs/21/result", json={"status": "succeeded"}, headers=bearer(other))
    assert result.status_code == 403
    # the operator API's own token is no run token, and the run token no operator token
    assert client.get("/api/environments", headers=bearer(mine)).status_code == 401


def test_a_resent_batch_of_lines_is_stored_once_in_order(api: tuple[TestClient, object]) -> None:
    client, db = api
    token = new_token()
    ticket(db, 31, token)
    first = {"lines": [{"seq": 1, "text": "one"}, {"seq": 2, "text": "two"}], "phase": "init"}
    for _ in range(3):
        response = client.post("/api/runs/31/lines", json=first, headers=bearer(token))
        assert response.status_code == 200 and response.json() == {"last_seq": 2}
    changed = {"lines": [{"seq": 2, "text": "TWO?"}, {"seq": 3, "text": "three"}], "phase": "apply"}
    assert client.post("/api/runs/31/lines", json=changed, headers=bearer(token)).json() == {
        "last_seq": 3
    }
    assert tickets.lines_after(db, 31, 0) == [(1, "one"), (2, "two"), (3, "three")]  # type: ignore[arg-type]
    assert tickets.lines_after(db, 31, 1) == [(2, "two"), (3, "three")]  # type: ignore[arg-type]
    progress = tickets.progress(db, 31)  # type: ignore[arg-type]
    assert progress is not None and progress.phases == ("init", "apply") and progress.last_seq == 3
    # a replacement pod (a disrupted first one) continues the numbering
    spec = client.get("/api/runs/31/spec", headers=bearer(token)).json()
    assert spec["next_seq"] == 4
    bad = client.post(
        "/api/runs/31/lines", json={"lines": [{"seq": 0, "text": "x"}]}, headers=bearer(token)
    )
    assert bad.status_code == 422


def test_the_result_is_recorded_once_and_drops_the_spec(api: tuple[TestClient, object]) -> None:
    client, db = api
    token = new_token()
    ticket(db, 41, token)
    done = {"status": "succeeded", "outputs": {"url": {"value": "http://x", "sensitive": False}}}
    first = client.post("/api/runs/41/result", json=done, headers=bearer(token))
    assert first.status_code == 200 and first.json() == {"recorded": True}
    again = client.post(
        "/api/runs/41/result", json={"status": "failed", "error": "late"}, headers=bearer(token)
    )
    assert again.status_code == 200 and again.json() == {"recorded": False}
    progress = tickets.progress(db, 41)  # type: ignore[arg-type]
    assert progress is not None and progress.result is not None
    assert progress.result["status"] == "succeeded"
    with db.session() as session:  # type: ignore[attr-defined]
        row = session.get(RunTicket, 41)
        assert row.spec == "" and row.template is None  # credentials do not outlive the run
    gone = client.get("/api/runs/41/spec", headers=bearer(token))
    assert gone.status_code == 410 and "finished" in gone.json()["detail"]
    wrong = client.post("/api/runs/41/result", json={"status": "maybe"}, headers=bearer(token))
    assert wrong.status_code == 422


def test_a_ticket_is_written_once_and_rotated_only_before_a_result(
    api: tuple[TestClient, object],
) -> None:
    client, db = api
    first, second = new_token(), new_token()
    ticket(db, 51, first)
    envelope = sign({"v": SPEC_VERSION, "run_id": 51, "exp": int(time.time()) + 60}, second)
    assert not tickets.create(db, 51, "env-x", second, envelope, b"", utcnow())  # type: ignore[arg-type]
    assert client.get("/api/runs/51/spec", headers=bearer(first)).status_code == 200
    tickets.rotate(db, 51, second, envelope, TEMPLATE, utcnow() + timedelta(minutes=5))  # type: ignore[arg-type]
    assert client.get("/api/runs/51/spec", headers=bearer(first)).status_code == 403
    assert client.get("/api/runs/51/spec", headers=bearer(second)).status_code == 200


def test_every_phase_is_kept_in_order_and_a_bad_phase_name_is_refused(
    api: tuple[TestClient, object],
) -> None:
    client, db = api
    token = new_token()
    ticket(db, 51, token)
    for phase in ("init", "init", "apply", "output"):
        response = client.post("/api/runs/51/lines", json={"phase": phase}, headers=bearer(token))
        assert response.status_code == 200, response.text
    progress = tickets.progress(db, 51)  # type: ignore[arg-type]
    assert progress is not None and progress.phases == ("init", "apply", "output")
    forged = {"lines": [{"seq": 1, "text": "kept?"}], "phase": "apply; rm -rf"}
    refused = client.post("/api/runs/51/lines", json=forged, headers=bearer(token))
    assert refused.status_code == 422 and "lowercase letters" in refused.json()["detail"]
    assert tickets.lines_after(db, 51, 0) == []  # type: ignore[arg-type]  # the push is whole or not at all


def test_the_pods_pusher_keeps_a_phase_quicker_than_its_flush(
    tmp_path: Path, database_url: str
) -> None:
    """A phase that starts and ends between two flushes is still pushed, with its own lines."""
    app = create_app(make_settings(tmp_path, database_url), background=False)
    db = app.state.runtime.db
    token = new_token()
    ticket(db, 61, token)

    async def burst(url: str) -> None:
        api = Api(url, token, 61)
        pusher = LinePusher(api, 1, patience=10)
        pusher.line("before any phase")
        pusher.set_phase("init")
        pusher.line("Initializing")
        pusher.set_phase("apply")
        pusher.set_phase("apply")
        pusher.line("Apply complete")
        pusher.set_phase("output")
        await pusher.close()
        await api.aclose()

    port = free_port()
    with WebServer(app, port) as server:
        asyncio.run(burst(server.url))
    progress = tickets.progress(db, 61)
    assert progress is not None and progress.phases == ("init", "apply", "output")
    assert [text for _, text in tickets.lines_after(db, 61, 0)] == [
        "before any phase",
        "Initializing",
        "Apply complete",
    ]
