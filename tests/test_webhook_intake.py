"""POST /webhooks/github with bad input: a clear status, and nothing recorded that shouldn't be."""

from __future__ import annotations

import hashlib
import hmac
import json
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from sqlmodel import select

from app.db.models import Delivery, Environment
from app.db.session import Database
from app.github.intake import WebhookIntake, parse_json
from tests.apphost import INSTALLATION, REPO, WEBHOOK_SECRET, AppServer, app_settings, seed_repo
from tests.fakegithub.server import FakeGitHub
from tests.fakegithub.webhooks import sign
from tests.helpers import wait_for

pytest_plugins = ["tests.fakegithub.pytest_plugin"]


@pytest.fixture
def server(tmp_path: Path, fake_github: FakeGitHub, port_base: int) -> Iterator[AppServer]:
    seed_repo(fake_github, "stack: local\nsilo: intake\n")
    fake_github.add_pull(REPO, 1, "a" * 40, "feature")
    with AppServer(app_settings(tmp_path, fake_github)) as running:
        running.runtime.lifecycle.create_silo("intake", "local", {"port_base": port_base})
        yield running
        for env in running.runtime.lifecycle.list_environments():
            running.runtime.lifecycle.destroy_environment(env.id)
        wait_for(lambda: not running.runtime.lifecycle.list_environments(), timeout=60)


def deliveries(server: AppServer) -> list[Delivery]:
    with server.runtime.db.session() as session:
        return list(session.exec(select(Delivery)))


def environments(server: AppServer) -> list[Environment]:
    with server.runtime.db.session() as session:
        return list(session.exec(select(Environment)))


def opened_body(fake: FakeGitHub) -> bytes:
    payload = fake.pull_request_event("opened", REPO, 1)
    payload["installation"] = {"id": INSTALLATION, "node_id": "MDIz"}
    return json.dumps(payload).encode()


def post(server: AppServer, body: bytes, **headers: str) -> httpx.Response:
    base = {"Content-Type": "application/json"}
    base.update({k.replace("_", "-"): v for k, v in headers.items()})
    return httpx.post(server.webhook_url, content=body, headers=base, timeout=60)


def good_headers(body: bytes, delivery: str | None = None, event: str = "pull_request") -> dict:
    return {
        "X_GitHub_Event": event,
        "X_GitHub_Delivery": delivery or str(uuid.uuid4()),
        "X_Hub_Signature_256": sign(body, WEBHOOK_SECRET),
    }


def test_missing_signature_is_401_and_records_nothing(
    server: AppServer, fake_github: FakeGitHub
) -> None:
    body = opened_body(fake_github)
    headers = good_headers(body)
    del headers["X_Hub_Signature_256"]
    response = post(server, body, **headers)
    assert response.status_code == 401
    assert "X-Hub-Signature-256" in response.json()["error"]
    assert deliveries(server) == []


def test_wrong_signature_is_401(server: AppServer, fake_github: FakeGitHub) -> None:
    body = opened_body(fake_github)
    headers = good_headers(body)
    headers["X_Hub_Signature_256"] = sign(body, "not-the-secret")
    assert post(server, body, **headers).status_code == 401
    headers["X_Hub_Signature_256"] = sign(body + b" ", WEBHOOK_SECRET)  # signature of other bytes
    assert post(server, body, **headers).status_code == 401
    assert deliveries(server) == []


def test_sha1_only_signature_is_401(server: AppServer, fake_github: FakeGitHub) -> None:
    body = opened_body(fake_github)
    headers = good_headers(body)
    del headers["X_Hub_Signature_256"]
    digest = hmac.new(WEBHOOK_SECRET.encode(), body, hashlib.sha1).hexdigest()
    headers["X_Hub_Signature"] = f"sha1={digest}"
    assert post(server, body, **headers).status_code == 401
    headers["X_Hub_Signature_256"] = f"sha1={digest}"  # the sha1 form in the sha256 header
    assert post(server, body, **headers).status_code == 401
    assert deliveries(server) == []


def test_truncated_json_is_400(server: AppServer, fake_github: FakeGitHub) -> None:
    body = opened_body(fake_github)[:-20]
    response = post(server, body, **good_headers(body))
    assert response.status_code == 400
    assert "JSON" in response.json()["error"]
    assert deliveries(server) == []


def test_json_that_is_not_an_object_is_400(server: AppServer) -> None:
    body = b"[1, 2, 3]"
    assert post(server, body, **good_headers(body)).status_code == 400


@pytest.mark.parametrize("missing", ["X_GitHub_Event", "X_GitHub_Delivery"])
def test_missing_headers_are_400(server: AppServer, fake_github: FakeGitHub, missing: str) -> None:
    body = opened_body(fake_github)
    headers = good_headers(body)
    del headers[missing]
    response = post(server, body, **headers)
    assert response.status_code == 400
    assert deliveries(server) == []


def test_30_mb_body_is_413(server: AppServer) -> None:
    body = b'{"padding": "' + b"x" * (30 * 1024 * 1024) + b'"}'
    response = post(server, body, **good_headers(body))
    assert response.status_code == 413
    assert deliveries(server) == []


def test_same_delivery_three_times_is_processed_once(
    server: AppServer, fake_github: FakeGitHub
) -> None:
    body = opened_body(fake_github)
    headers = good_headers(body, delivery="fixed-delivery-id")
    codes = [post(server, body, **headers).status_code for _ in range(3)]
    assert codes == [202, 200, 200]
    assert [d.id for d in deliveries(server)] == ["fixed-delivery-id"]
    wait_for(lambda: [e.status for e in environments(server)] == ["ready"], timeout=60)
    assert len(environments(server)) == 1


def test_unknown_event_and_ping(server: AppServer) -> None:
    body = json.dumps({"action": "created", "zen": "Keep it logically awesome."}).encode()
    response = post(server, body, **good_headers(body, event="sponsorship"))
    assert response.status_code == 202 and response.json()["status"] == "ignored"
    response = post(server, body, **good_headers(body, event="ping"))
    assert response.status_code == 200 and response.json()["status"] == "pong"
    assert {d.status for d in deliveries(server)} == {"ignored"}
    assert environments(server) == []


def test_a_database_failure_is_a_json_500_that_says_to_redeliver(
    server: AppServer, fake_github: FakeGitHub
) -> None:
    """Deliveries skip FastAPI's stack (RunbotApp), so the intake answers its own failures."""
    db = server.runtime.db
    with db.engine.begin() as connection:
        connection.exec_driver_sql("ALTER TABLE delivery RENAME TO delivery_away")
    try:
        body = opened_body(fake_github)
        response = post(server, body, **good_headers(body))
        assert response.status_code == 500
        assert "redeliver" in response.json()["error"]
    finally:
        with db.engine.begin() as connection:
            connection.exec_driver_sql("ALTER TABLE delivery_away RENAME TO delivery")
    assert deliveries(server) == []
    response = post(server, body, **good_headers(body))  # the redelivery GitHub would send
    assert response.status_code == 202
    assert len(deliveries(server)) == 1


@pytest.mark.parametrize(
    ("method", "path", "root_path", "direct"),
    [
        ("POST", "/webhooks/github", "", True),
        ("POST", "/runbot/webhooks/github", "/runbot", True),  # mounted under a prefix
        ("GET", "/webhooks/github", "", False),  # FastAPI answers 405
        ("POST", "/webhooks/github/", "", False),  # FastAPI redirects
        ("POST", "/webhooks/github/../github", "", False),
        ("POST", "/api/environments", "", False),
    ],
)
def test_which_requests_go_straight_to_the_intake(
    method: str, path: str, root_path: str, direct: bool
) -> None:
    intake = WebhookIntake(Database("sqlite://"), lambda: "s", lambda: None)
    scope = {"type": "http", "method": method, "path": path, "root_path": root_path}
    assert intake.matches(scope) is direct


@pytest.mark.parametrize(
    "body",
    [
        b'{"action": "created", "comment": {"body": "half an emoji \\ud83d"}}',  # lone surrogate
        b'{"action": "created", "score": NaN}',
        b'\xef\xbb\xbf{"action": "created"}',  # a byte-order mark
    ],
)
def test_json_that_only_orjson_refuses_is_still_accepted(body: bytes) -> None:
    """orjson reads payloads first and is stricter than `json`; validity must not change."""
    assert parse_json(body)["action"] == "created"


@pytest.mark.parametrize("body", [b"{", b'{"action": }', b"\xff\xfe", b""])
def test_json_that_both_refuse_is_an_error(body: bytes) -> None:
    with pytest.raises(ValueError):
        parse_json(body)
