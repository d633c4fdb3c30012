"""The silo API through the real HTTP server: who may call it, what it records, what it refuses."""

from __future__ import annotations

import json
import os
import stat
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlmodel import select

from app.db.models import Environment, Silo, utcnow
from app.lifecycle.silotoken import KEY_FILE, derive, load_key
from app.runtime import Runtime
from app.server import create_app
from tests.apphost import free_port
from tests.conftest import make_settings
from tests.webtools import WebServer, seed_env, seed_silo

SECRET = "s3cret-key-for-silo-tokens-0123456789abcdef"


@dataclass
class Site:
    url: str
    rt: Runtime

    def token(self, silo: str) -> str:
        with self.rt.db.session() as session:
            row = session.get(Silo, silo)
            assert row is not None
            return self.rt.silo_tokens.token(silo, row.token_version)

    def post(
        self, path: str, body: Any, token: str | None, raw: bytes | None = None
    ) -> httpx.Response:
        headers = {"Content-Type": b"application/json"}
        if token is not None:
            headers["Authorization"] = f"Bearer {token}".encode()  # bytes: any token may come
        content = raw if raw is not None else json.dumps(body).encode()
        return httpx.post(f"{self.url}{path}", content=content, headers=headers, timeout=10)

    def env(self, env_id: str) -> Environment:
        with self.rt.db.session() as session:
            row = session.get(Environment, env_id)
            assert row is not None
            return row


@pytest.fixture
def site(tmp_path: Path, database_url: str) -> Iterator[Site]:
    port = free_port()
    settings = make_settings(
        tmp_path, database_url, public_url=f"http://127.0.0.1:{port}", silo_token_secret=SECRET
    )
    app = create_app(settings, background=False)
    rt: Runtime = app.state.runtime
    seed_silo(rt.db, "one", {})
    seed_silo(rt.db, "two", {})
    seed_env(rt.db, "pr-1-aaaaa", "acme/app", 1, "one", slot=0, age=timedelta(hours=3))
    seed_env(rt.db, "pr-2-bbbbb", "acme/app", 2, "two", slot=0, age=timedelta(hours=3))
    with WebServer(app, port) as server:
        yield Site(server.url, rt)


def suspend(site: Site, env_id: str) -> None:
    with site.rt.db.session() as session:
        row = session.get(Environment, env_id)
        assert row is not None
        row.desired, row.status = "suspended", "sleeping"
        row.slept_at, row.sleep_reason = utcnow(), "idle"
        session.add(row)
        session.commit()


def test_the_token_is_derived_from_the_secret_and_version_and_never_stored(site: Site) -> None:
    assert site.token("one") == derive(SECRET.encode(), "one", 1)
    assert site.token("one") != site.token("two")
    with site.rt.db.session() as session:
        dumped = " ".join(
            json.dumps(r.model_dump(), default=str) for r in session.exec(select(Silo))
        )
    assert site.token("one") not in dumped


def test_without_a_secret_a_random_key_is_kept_once_in_the_data_dir(tmp_path: Path) -> None:
    first = load_key(None, tmp_path)
    assert load_key(None, tmp_path) == first and len(first) >= 32
    mode = stat.S_IMODE(os.stat(tmp_path / KEY_FILE).st_mode)
    assert mode == 0o600
    (tmp_path / KEY_FILE).write_text("")
    with pytest.raises(ValueError, match="RUNBOT_SILO_TOKEN_SECRET"):
        load_key(None, tmp_path)
    assert load_key("configured", tmp_path) == b"configured"


def test_activity_moves_last_activity_of_own_environments_only(site: Site) -> None:
    before = site.env("pr-1-aaaaa").last_activity_at
    at = utcnow().replace(microsecond=0)
    seen = {
        "pr-1-aaaaa": at.isoformat(),
        "pr-2-bbbbb": at.isoformat(),
        "pr-9-zzzzz": at.isoformat(),
    }
    response = site.post("/api/v1/silos/one/activity", {"seen": seen}, site.token("one"))
    assert response.status_code == 200, response.text
    assert response.json() == {"recorded": 1, "ignored": ["pr-2-bbbbb", "pr-9-zzzzz"]}
    assert site.env("pr-1-aaaaa").last_activity_at == at > before
    assert site.env("pr-2-bbbbb").last_activity_at < at  # another silo's: untouched
    # Older and far-future times never move it backwards or past now.
    old = (at - timedelta(hours=1)).isoformat()
    again = site.post(
        "/api/v1/silos/one/activity", {"seen": {"pr-1-aaaaa": old}}, site.token("one")
    )
    assert again.json()["recorded"] == 0 and site.env("pr-1-aaaaa").last_activity_at == at
    future = (utcnow() + timedelta(days=30)).isoformat()
    site.post("/api/v1/silos/one/activity", {"seen": {"pr-1-aaaaa": future}}, site.token("one"))
    assert site.env("pr-1-aaaaa").last_activity_at < utcnow() + timedelta(minutes=2)


def test_wrong_missing_and_other_silos_tokens_answer_401_and_change_nothing(site: Site) -> None:
    before = site.env("pr-1-aaaaa").last_activity_at
    body = {"seen": {"pr-1-aaaaa": utcnow().isoformat()}}
    for token in (None, "nope", site.token("two"), site.token("one") + "x", "é"):
        response = site.post("/api/v1/silos/one/activity", body, token)
        assert response.status_code == 401, token
        assert "runbot_silo_token" in response.json()["detail"]
    unknown = site.post("/api/v1/silos/ghost/wake", {"environment": "pr-1-aaaaa"}, "x")
    assert unknown.status_code == 401
    assert site.env("pr-1-aaaaa").last_activity_at == before


def test_another_silos_environment_answers_404_like_an_unknown_one(site: Site) -> None:
    suspend(site, "pr-2-bbbbb")
    for env_id in ("pr-2-bbbbb", "pr-404-xxxxx"):
        response = site.post("/api/v1/silos/one/wake", {"environment": env_id}, site.token("one"))
        assert response.status_code == 404, response.text
        assert "has no environment" in response.json()["detail"]
    assert site.env("pr-2-bbbbb").desired == "suspended"


def test_wake_wakes_a_sleeping_environment_once(site: Site) -> None:
    suspend(site, "pr-1-aaaaa")
    generation = site.env("pr-1-aaaaa").generation
    first = site.post("/api/v1/silos/one/wake", {"environment": "pr-1-aaaaa"}, site.token("one"))
    assert first.status_code == 200, first.text
    assert first.json()["woken"] is True and first.json()["desired"] == "present"
    assert first.json()["ready"] is False  # the engine has yet to start it
    env = site.env("pr-1-aaaaa")
    assert env.desired == "present" and env.slept_at is None and env.sleep_reason is None
    assert env.generation == generation + 1 and env.trigger == "traffic"
    assert env.last_activity_at > utcnow() - timedelta(minutes=1)
    second = site.post("/api/v1/silos/one/wake", {"environment": "pr-1-aaaaa"}, site.token("one"))
    assert second.status_code == 200 and second.json()["woken"] is False
    assert site.env("pr-1-aaaaa").generation == generation + 1  # idempotent


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        (b"not json", "not JSON"),
        (b"[1, 2]", "JSON object"),
        (b'{"seen": []}', '"seen"'),
        (b'{"seen": {"pr-1-aaaaa": "yesterday"}}', "not an ISO 8601 time"),
        (b'{"seen": {"pr-1-aaaaa": "2026-01-02T03:04:05"}}', "no time zone"),
        (b'{"seen": {"pr-1-aaaaa": 12}}', "ISO 8601 time string"),
        (b'{"seen": {"../etc": "2026-01-02T03:04:05Z"}}', "not an environment id"),
        (
            json.dumps({"seen": {f"pr-{i}-x": "2026-01-02T03:04Z" for i in range(2001)}}).encode(),
            "at most",
        ),
        (b'{"seen": {"pr-1-aaaaa": "' + b"x" * 300_000 + b'"}}', "bytes"),
    ],
)
def test_malformed_activity_is_refused_with_422_and_loses_nothing(
    site: Site, raw: bytes, message: str
) -> None:
    before = site.env("pr-1-aaaaa").last_activity_at
    response = site.post("/api/v1/silos/one/activity", None, site.token("one"), raw=raw)
    assert response.status_code == 422, response.text
    assert message in response.json()["detail"]
    assert site.env("pr-1-aaaaa").last_activity_at == before
    # The same token still works afterwards: nothing was lost or locked.
    ok = site.post("/api/v1/silos/one/activity", {"seen": {}}, site.token("one"))
    assert ok.status_code == 200


def test_malformed_wake_is_refused_with_422(site: Site) -> None:
    for raw in (b"{}", b'{"environment": 5}', b'{"environment": "a/b"}', b"\xff"):
        response = site.post("/api/v1/silos/one/wake", None, site.token("one"), raw=raw)
        assert response.status_code == 422, raw


def test_a_rotated_token_is_refused_at_once_and_the_silo_is_reapplied(site: Site) -> None:
    old = site.token("one")
    generation = site.rt.lifecycle.get_silo("one").generation
    site.rt.lifecycle.rotate_silo_token("one")
    silo = site.rt.lifecycle.get_silo("one")
    assert silo.token_version == 2 and silo.generation == generation + 1
    body = {"seen": {"pr-1-aaaaa": utcnow().isoformat()}}
    assert site.post("/api/v1/silos/one/activity", body, old).status_code == 401
    assert site.post("/api/v1/silos/one/activity", body, site.token("one")).status_code == 200
    assert site.token("one") != old


def test_rotation_through_the_operator_api_needs_the_operator(
    tmp_path: Path, database_url: str
) -> None:
    port = free_port()
    settings = make_settings(
        tmp_path, database_url, public_url=f"http://127.0.0.1:{port}", api_token="op-token"
    )
    app = create_app(settings, background=False)
    seed_silo(app.state.runtime.db, "one", {})
    with WebServer(app, port) as server:
        url = f"{server.url}/api/silos/one/rotate-token"
        refused = httpx.post(url, headers={"Authorization": "Bearer wrong"}, timeout=10)
        assert refused.status_code in (401, 403)
        assert app.state.runtime.lifecycle.get_silo("one").token_version == 1
        done = httpx.post(url, headers={"Authorization": "Bearer op-token"}, timeout=10)
        assert done.status_code == 200, done.text
        assert "new token" in done.json()["message"]
    assert app.state.runtime.lifecycle.get_silo("one").token_version == 2


def test_target_records_keep_no_silo_token() -> None:
    from app.lifecycle.converge import _recordable

    kept, secret = _recordable({"runbot_silo_token": "abc123", "other": "x"}, (), ["abc123", "x"])
    assert kept["runbot_silo_token"] == "" and secret == ["other"]


def test_the_cli_rotates_a_silos_token_and_names_an_unknown_one(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from typer.testing import CliRunner

    from app.cli.main import cli
    from app.runtime import build_runtime

    monkeypatch.setenv("RUNBOT_DATA_DIR", str(tmp_path / "data"))
    monkeypatch.setenv("RUNBOT_ENGINE", "embedded")
    rt = build_runtime(make_settings(tmp_path))
    seed_silo(rt.db, "one", {})
    before = rt.silo_tokens.token("one", 1)
    runner = CliRunner()
    done = runner.invoke(cli, ["silo", "rotate-token", "one", "--no-wait"], catch_exceptions=False)
    assert done.exit_code == 0, done.output
    silo = rt.lifecycle.get_silo("one")
    assert silo.token_version == 2 and silo.generation == 2  # re-applied with the new token
    assert rt.silo_tokens.token("one", silo.token_version) != before
    assert before not in done.output
    unknown = runner.invoke(cli, ["silo", "rotate-token", "ghost", "--no-wait"])
    assert unknown.exit_code == 1 and "runbot silo list" in unknown.output
