"""The local stack's ingress process (infra-templates/local/silo/ingress.py) as a proxy.

A real ingress process in front of a real backend on loopback: what passes through, what is
dropped, what is refused, and that a runbot it cannot reach never breaks proxying.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.client import HTTPConnection
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from tests.apphost import free_port

INGRESS = Path(__file__).resolve().parents[1] / "infra-templates" / "local" / "silo" / "ingress.py"


@dataclass
class Backend:
    port: int
    seen: list[dict[str, Any]] = field(default_factory=list)


@pytest.fixture
def backend() -> Iterator[Backend]:
    """Echoes what it received as JSON, with a hop-by-hop header of its own."""
    state = Backend(0)

    class Echo(BaseHTTPRequestHandler):
        def log_message(self, *args: object) -> None:
            pass

        def _echo(self) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            body = self.rfile.read(length).decode() if length else ""
            record = {"path": self.path, "headers": dict(self.headers.items()), "body": body}
            state.seen.append(record)
            raw = json.dumps(record).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(raw)))
            self.send_header("Connection", "close, X-Backend-Hop")
            self.send_header("X-Backend-Hop", "secret")
            self.send_header("X-App", "yes")
            self.end_headers()
            self.wfile.write(raw)

        do_GET = do_POST = _echo

    server = ThreadingHTTPServer(("127.0.0.1", 0), Echo)
    state.port = server.server_address[1]
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield state
    server.shutdown()
    server.server_close()


@dataclass
class Ingress:
    port: int
    shared: Path

    def route(self, instance_id: str, port: int, suspended: bool = False) -> None:
        directory = self.shared / instance_id
        directory.mkdir(exist_ok=True)
        route = {"port": port, "host": "127.0.0.1", "suspended": suspended}
        (directory / "route.json").write_text(json.dumps(route))

    def request(
        self,
        method: str,
        path: str,
        headers: dict[str, str] | None = None,
        body: bytes | None = None,
    ) -> tuple[int, dict[str, str], bytes]:
        conn = HTTPConnection("127.0.0.1", self.port, timeout=10)
        try:
            conn.request(method, path, body=body, headers=headers or {})
            resp = conn.getresponse()
            return resp.status, {k.lower(): v for k, v in resp.getheaders()}, resp.read()
        finally:
            conn.close()


def ingress_env(shared: Path, port: int, **extra: str) -> dict[str, str]:
    return {
        "PATH": os.environ["PATH"],
        "RUNBOT_SHARED_DIR": str(shared),
        "RUNBOT_SILO_NAME": "proxy-test",
        "RUNBOT_INGRESS_HOST": "127.0.0.1",
        "RUNBOT_INGRESS_PORT": str(port),
        **extra,
    }


@pytest.fixture
def ingress(tmp_path: Path) -> Iterator[Ingress]:
    shared = tmp_path / "shared"
    shared.mkdir()
    port = free_port()
    closed = free_port()  # runbot "is down": every report fails, and is retried
    env = ingress_env(
        shared,
        port,
        RUNBOT_API_URL=f"http://127.0.0.1:{closed}",
        RUNBOT_SILO_TOKEN="t0ken-never-on-a-command-line",
        RUNBOT_REPORT_INTERVAL="0.2",
    )
    start = subprocess.run(
        [sys.executable, str(INGRESS), "start"], env=env, capture_output=True, text=True, timeout=30
    )
    assert start.returncode == 0, start.stderr
    yield Ingress(port, shared)
    stop = subprocess.run(
        [sys.executable, str(INGRESS), "stop"], env=env, capture_output=True, text=True, timeout=30
    )
    assert stop.returncode == 0, stop.stderr


def test_path_prefix_is_stripped_and_the_prefix_forwarded(
    ingress: Ingress, backend: Backend
) -> None:
    ingress.route("pr-1-abc", backend.port)
    status, headers, body = ingress.request(
        "GET", "/pr-1-abc/a/b?x=1", {"X-Forwarded-Prefix": "/evil", "X-Custom": "kept"}
    )
    assert status == 200 and headers["x-app"] == "yes"
    seen = json.loads(body)
    assert seen["path"] == "/a/b?x=1"
    assert seen["headers"]["X-Forwarded-Prefix"] == "/pr-1-abc"  # ours, not the client's
    assert seen["headers"]["X-Custom"] == "kept"
    assert seen["headers"]["Host"] == f"127.0.0.1:{ingress.port}"  # passed through
    status, headers, _ = ingress.request("GET", "/pr-1-abc?q=2")
    assert status == 308 and headers["location"] == "/pr-1-abc/?q=2"
    status, _, body = ingress.request("GET", "/pr-1-abc/?next=/a/b")
    assert status == 200 and json.loads(body)["path"] == "/?next=/a/b"


def test_host_routing_and_request_bodies_pass_through(ingress: Ingress, backend: Backend) -> None:
    ingress.route("pr-2-def", backend.port)
    status, _, body = ingress.request(
        "POST", "/submit", {"Host": "pr-2-def.preview.example:8080"}, b'{"a": 1}'
    )
    assert status == 200
    seen = json.loads(body)
    assert seen["path"] == "/submit" and seen["body"] == '{"a": 1}'
    assert "X-Forwarded-Prefix" not in seen["headers"]
    assert seen["headers"]["X-Forwarded-Host"] == "pr-2-def.preview.example:8080"
    # A chunked request body reaches the app whole, with a length.
    with socket.create_connection(("127.0.0.1", ingress.port), timeout=10) as sock:
        sock.sendall(
            b"POST /pr-2-def/c HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
            b"4\r\nwiki\r\n5\r\npedia\r\n0\r\n\r\n"
        )
        answer = b"".join(iter(lambda: sock.recv(65536), b""))
    assert b" 200 " in answer.split(b"\r\n", 1)[0]
    assert backend.seen[-1]["body"] == "wikipedia"


def test_hop_by_hop_headers_are_dropped_both_ways(ingress: Ingress, backend: Backend) -> None:
    ingress.route("pr-3-ghi", backend.port)
    status, headers, body = ingress.request(
        "GET",
        "/pr-3-ghi/",
        {
            "Connection": "keep-alive, X-Client-Hop",
            "X-Client-Hop": "secret",
            "Keep-Alive": "timeout=5",
            "Proxy-Authorization": "Basic c2VjcmV0",
            "TE": "trailers",
        },
    )
    assert status == 200
    sent = {k.lower() for k in json.loads(body)["headers"]}
    assert not sent & {"x-client-hop", "keep-alive", "proxy-authorization", "te"}
    assert "x-backend-hop" not in headers and headers["x-app"] == "yes"


@pytest.mark.parametrize(
    "path",
    [
        "/pr-4-jkl/../pr-5-other/",
        "/pr-4-jkl/%2e%2e/x",
        "/pr-4-jkl/./x",
        "/../etc/passwd",
        "/nobody-here/",
        "/",
        "http://pr-4-jkl/x",
        "/pr-4-jkl\\..\\x/",
    ],
)
def test_dot_segments_and_unknown_ids_answer_404(
    ingress: Ingress, backend: Backend, path: str
) -> None:
    ingress.route("pr-4-jkl", backend.port)
    before = len(backend.seen)
    status, _, _ = ingress.request("GET", path)
    assert status == 404
    assert len(backend.seen) == before  # nothing reached the app


def test_a_huge_header_is_refused_by_the_server(ingress: Ingress, backend: Backend) -> None:
    ingress.route("pr-6-mno", backend.port)
    with socket.create_connection(("127.0.0.1", ingress.port), timeout=10) as sock:
        sock.sendall(b"GET /pr-6-mno/ HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * 70_000 + b"\r\n\r\n")
        answer = b"".join(iter(lambda: sock.recv(65536), b""))
    assert answer.split(b"\r\n", 1)[0].split()[1] in (b"400", b"431")
    assert backend.seen == []


def test_sleeping_routes_answer_the_waking_page_until_the_app_answers(
    ingress: Ingress, backend: Backend
) -> None:
    down = free_port()
    ingress.route("pr-7-pqr", down, suspended=True)
    status, headers, body = ingress.request("GET", "/pr-7-pqr/")
    assert status == 503 and headers["retry-after"] == "2"
    assert b'<meta http-equiv="refresh" content="2">' in body and b"pr-7-pqr" in body
    # Marked suspended, but its app already answers: proxied.
    ingress.route("pr-7-pqr", backend.port, suspended=True)
    assert ingress.request("GET", "/pr-7-pqr/")[0] == 200
    # Awake but not answering: a plain 502, no waking page.
    ingress.route("pr-7-pqr", down)
    status, _, body = ingress.request("GET", "/pr-7-pqr/")
    assert status == 502 and b"not answering" in body


def test_an_unreachable_runbot_is_logged_and_never_breaks_proxying(
    ingress: Ingress, backend: Backend
) -> None:
    ingress.route("pr-8-stu", backend.port)
    for _ in range(3):
        assert ingress.request("GET", "/pr-8-stu/")[0] == 200
        time.sleep(0.3)
    log = (ingress.shared / "ingress.log").read_text()
    assert "cannot reach runbot" in log and "retrying" in log
    assert "t0ken-never-on-a-command-line" not in log
    # Neither on a command line nor in the environment of any process still running.
    for pid in (p for p in os.listdir("/proc") if p.isdigit()):
        for name in ("cmdline", "environ"):
            try:
                seen = Path(f"/proc/{pid}/{name}").read_bytes()
            except OSError:
                continue
            assert b"t0ken-never-on-a-command-line" not in seen, (pid, name)


def test_start_refuses_a_bad_port_and_stop_is_idempotent(tmp_path: Path) -> None:
    shared = tmp_path / "shared"
    bad = subprocess.run(
        [sys.executable, str(INGRESS), "start"],
        env=ingress_env(shared, 70000),
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert bad.returncode == 1 and "out of range" in bad.stderr
    shared.mkdir()
    again = subprocess.run(
        [sys.executable, str(INGRESS), "stop"],
        env=ingress_env(shared, free_port()),
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert again.returncode == 0, again.stderr
