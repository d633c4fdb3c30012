"""Issue 21, must 1: the webhook intake as a stranger reaches it, through the real server.

Malformed signature headers get a 401 (never a 5xx), bodies are capped (413) and must arrive
within a deadline (408, no worker held), and only verified deliveries count as intake activity.
"""

from __future__ import annotations

import json
import socket
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from sqlmodel import select

from app.db.models import Delivery
from app.github.intake import ACTIVITY
from tests.apphost import WEBHOOK_SECRET, AppServer, app_settings
from tests.fakegithub.server import FakeGitHub
from tests.fakegithub.webhooks import sign

pytest_plugins = ["tests.fakegithub.pytest_plugin"]

READ_TIMEOUT = 1.0
PING = json.dumps({"zen": "Keep it logically awesome.", "hook_id": 1}).encode()


@pytest.fixture
def server(tmp_path: Path, fake_github: FakeGitHub) -> Iterator[AppServer]:
    settings = app_settings(tmp_path, fake_github, webhook_read_timeout=READ_TIMEOUT)
    with AppServer(settings) as running:
        yield running


def recorded(server: AppServer) -> list[Delivery]:
    with server.runtime.db.session() as session:
        return list(session.exec(select(Delivery)))


def post(
    server: AppServer, body: bytes, signature: bytes | None, event: str = "ping"
) -> httpx.Response:
    headers: dict[str, str | bytes] = {
        "Content-Type": "application/json",
        "X-GitHub-Event": event,
        "X-GitHub-Delivery": str(uuid.uuid4()),
    }
    if signature is not None:
        headers["X-Hub-Signature-256"] = signature
    return httpx.post(server.webhook_url, content=body, headers=headers, timeout=30)


def open_slow_request(server: AppServer, declared: int = 1000) -> socket.socket:
    """A delivery whose headers arrive (with a well-formed signature) and whose body trickles."""
    sock = socket.create_connection(("127.0.0.1", server.port), timeout=10)
    head = (
        f"POST /webhooks/github HTTP/1.1\r\nHost: 127.0.0.1:{server.port}\r\n"
        "Content-Type: application/json\r\nX-GitHub-Event: ping\r\n"
        f"X-GitHub-Delivery: {uuid.uuid4()}\r\nX-Hub-Signature-256: sha256={'0' * 64}\r\n"
        f"Content-Length: {declared}\r\n\r\n{{"
    )
    sock.sendall(head.encode())
    return sock


def answer_or_close(sock: socket.socket, within: float) -> bytes:
    """What the server sends before it closes, read for at most `within` seconds."""
    sock.settimeout(within)
    received = b""
    try:
        while chunk := sock.recv(4096):
            received += chunk
            if b"\r\n\r\n" in received:
                break
    except TimeoutError:
        raise AssertionError(f"the server held a slow body for over {within} s") from None
    return received


@pytest.mark.parametrize(
    "signature",
    [
        pytest.param(b"sha256=" + "é".encode("latin-1") * 64, id="non_ascii"),
        pytest.param(b"sha256=" + b"0" * 60 + "ÿ€".encode() + b"0", id="non_ascii_utf8"),
        pytest.param(b"", id="empty"),
        pytest.param(b"junk", id="junk"),
        pytest.param(b"sha256=", id="no_digest"),
        pytest.param(b"sha256=xyz", id="not_hex"),
        pytest.param(b"sha1=" + b"0" * 40, id="sha1"),
        pytest.param(b"sha256=" + b"0" * 6000, id="oversized"),
        pytest.param(None, id="missing"),
    ],
)
def test_malformed_signature_header_is_401_never_5xx(
    server: AppServer, signature: bytes | None
) -> None:
    response = post(server, PING, signature)
    assert response.status_code == 401, response.text
    assert "X-Hub-Signature-256" in response.json()["error"]
    assert recorded(server) == []
    # Still answering, and a signed delivery still goes in.
    assert post(server, PING, sign(PING, WEBHOOK_SECRET).encode()).status_code == 200


def test_body_over_5_mb_is_413_even_when_signed(server: AppServer) -> None:
    body = json.dumps({"zen": "x" * (5 * 1024 * 1024 + 10)}).encode()
    response = post(server, body, sign(body, WEBHOOK_SECRET).encode())
    assert response.status_code == 413
    assert "5 MB" in response.json()["error"]
    # Without a Content-Length (chunked), the cap holds while reading.
    chunks = (body[i : i + 65536] for i in range(0, len(body), 65536))
    streamed = httpx.post(
        server.webhook_url,
        content=chunks,
        headers={
            "X-GitHub-Event": "ping",
            "X-GitHub-Delivery": str(uuid.uuid4()),
            "X-Hub-Signature-256": sign(body, WEBHOOK_SECRET),
        },
        timeout=30,
    )
    assert streamed.status_code == 413
    assert recorded(server) == []


def test_slow_body_gets_408_within_the_read_deadline_and_blocks_no_one(
    server: AppServer,
) -> None:
    started = time.monotonic()
    slow = [open_slow_request(server) for _ in range(3)]
    try:
        # While the bodies trickle, the server answers others at once.
        assert httpx.get(f"{server.url}/healthz", timeout=2).status_code == 200
        signed = post(server, PING, sign(PING, WEBHOOK_SECRET).encode())
        assert signed.status_code == 200
        for sock in slow:
            answer = answer_or_close(sock, within=READ_TIMEOUT + 4)
            assert answer == b"" or answer.startswith(b"HTTP/1.1 408"), answer
    finally:
        for sock in slow:
            sock.close()
    assert time.monotonic() - started < READ_TIMEOUT + 5
    assert len(recorded(server)) == 1  # the signed ping only


def test_unverified_requests_do_not_count_as_intake_activity(server: AppServer) -> None:
    before = ACTIVITY.last
    for _ in range(20):
        assert post(server, PING, b"sha256=" + b"1" * 64).status_code == 401
        assert post(server, PING, b"junk").status_code == 401
    assert ACTIVITY.last == before, "refused deliveries moved the intake's activity clock"
    slow = open_slow_request(server)
    try:
        time.sleep(0.3)  # the server is reading its body now
        assert ACTIVITY.in_flight == 0
        assert not ACTIVITY.busy(within=0.0), "an unsigned request made delivery processing wait"
    finally:
        slow.close()
    # A verified delivery does count.
    assert post(server, PING, sign(PING, WEBHOOK_SECRET).encode()).status_code == 200
    assert ACTIVITY.last > before
