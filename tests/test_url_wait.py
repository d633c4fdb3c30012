"""Issue 18 must 5: the run's `url` phase, waiting for the environment's URL to answer.

A real HTTP server on loopback answers 503 for a while, then 200; runbot's wait measures it.
What the stack's outputs ask for is decided purely, untrusted values included.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from app.lifecycle.urlwait import URL_TIMEOUT_DEFAULT, answered, url_to_wait_for, wait_for_url


def out(value: object, sensitive: bool = False) -> dict[str, object]:
    return {"value": value, "sensitive": sensitive}


def test_only_a_stack_that_asks_is_waited_for() -> None:
    url = out("http://127.0.0.1:1/x/")
    assert url_to_wait_for({"url": url}, {}) is None
    asked = {"url": url, "runbot_wait_for_url": out(True)}
    assert url_to_wait_for(asked, {}) == ("http://127.0.0.1:1/x/", URL_TIMEOUT_DEFAULT)
    assert url_to_wait_for(asked, {"runbot_suspended": True}) is None  # asleep: never asked
    assert url_to_wait_for({**asked, "runbot_url_timeout": out(5)}, {})[1] == 5.0  # type: ignore[index]
    assert url_to_wait_for({**asked, "runbot_url_timeout": out(10**6)}, {})[1] == 900.0  # type: ignore[index]


@pytest.mark.parametrize(
    "outputs",
    [
        {"url": out("javascript:alert(1)"), "runbot_wait_for_url": out(True)},
        {"url": out("http://127.0.0.1:1/", sensitive=True), "runbot_wait_for_url": out(True)},
        {"url": out(["not", "a", "url"]), "runbot_wait_for_url": out(True)},
        {"url": out("http://127.0.0.1:1/"), "runbot_wait_for_url": out("yes")},
    ],
)
def test_untrusted_engine_output_is_never_asked(outputs: dict[str, object]) -> None:
    assert url_to_wait_for(outputs, {}) is None


def test_an_answer_is_anything_but_a_server_error() -> None:
    assert answered(200) and answered(302) and answered(404)
    assert not answered(502) and not answered(503)


@pytest.fixture
def slow_app() -> Iterator[tuple[str, dict[str, float]]]:
    """503 for 0.6 s from the first request, then 200."""
    state = {"first": 0.0, "asked": 0.0}

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            state["asked"] += 1
            state["first"] = state["first"] or time.monotonic()
            self.send_response(200 if time.monotonic() >= state["first"] + 0.6 else 503)
            self.end_headers()

        def log_message(self, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/", state
    finally:
        server.shutdown()
        server.server_close()


def test_the_wait_lasts_until_the_app_answers(slow_app: tuple[str, dict[str, float]]) -> None:
    url, state = slow_app
    lines: list[str] = []
    began = time.monotonic()
    assert asyncio.run(wait_for_url(url, 10.0, lines.append)) is True
    spent = time.monotonic() - began
    assert 0.5 <= spent < 5.0 and state["asked"] >= 2
    assert "answered 200" in lines[-1]


def test_a_url_that_never_answers_is_shown_with_a_warning() -> None:
    lines: list[str] = []
    assert asyncio.run(wait_for_url("http://127.0.0.1:9/", 0.5, lines.append)) is False
    assert lines[-1].startswith("runbot: warning:") and "runbot_url_timeout" in lines[-1]
