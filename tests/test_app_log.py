"""The local stack's app log as the API shows it: only runbot's own path, read without following
links, capped, redacted; over real HTTP and on real files (symlinks, a FIFO, a big log)."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from app.server import create_app
from app.web.applog import MAX_BYTES, AppLogUnavailable, app_log_path, read_app_log
from tests.apphost import free_port
from tests.conftest import make_settings
from tests.webtools import WebServer, seed_env, seed_silo

ENV_ID = "pr-5-eeeee"
SECRET = "silo-admin-token-44aa01"


def _outputs(path: str) -> dict:
    return {"runbot_app_log": {"value": path, "sensitive": False}}


def _silo(shared: Path) -> dict:
    return {
        "shared_dir": {"value": str(shared), "sensitive": False},
        "admin_token": {"value": SECRET, "sensitive": True},
    }


def _log(shared: Path, text: str = "hello-app: serving\n") -> Path:
    (shared / ENV_ID).mkdir(parents=True, exist_ok=True)
    path = shared / ENV_ID / "app.log"
    path.write_text(text)
    return path


def test_only_the_instances_own_app_log_is_read(tmp_path: Path) -> None:
    shared = tmp_path / "shared"
    log = _log(shared)
    assert app_log_path(ENV_ID, _outputs(str(log)), _silo(shared)) == str(log)
    for named in ("/etc/passwd", str(shared / "pr-6-other" / "app.log"), f"{shared}/../x"):
        with pytest.raises(AppLogUnavailable, match="only that file is shown"):
            app_log_path(ENV_ID, _outputs(named), _silo(shared))
    with pytest.raises(AppLogUnavailable, match="runs no app of its own"):
        app_log_path(ENV_ID, {}, _silo(shared))
    with pytest.raises(AppLogUnavailable, match="not a local-stack silo"):
        app_log_path(ENV_ID, _outputs(str(log)), {})
    with pytest.raises(AppLogUnavailable, match="not a local-stack silo"):
        app_log_path("../etc", _outputs(str(log)), _silo(shared))


def test_links_and_special_files_are_not_followed(tmp_path: Path) -> None:
    secret = tmp_path / "key.pem"
    secret.write_text(SECRET)
    shared = tmp_path / "shared"
    log = _log(shared)
    log.unlink()
    log.symlink_to(secret)
    with pytest.raises(AppLogUnavailable, match="cannot be opened"):
        read_app_log(str(log), str)
    log.unlink()
    os.mkfifo(log)
    with pytest.raises(AppLogUnavailable, match="not a regular file"):
        read_app_log(str(log), str)  # and it does not block on the FIFO
    # A linked instance directory is refused too, though the file behind it is regular.
    elsewhere = tmp_path / "elsewhere"
    _log(elsewhere, SECRET)
    (shared / ENV_ID / "app.log").unlink()
    (shared / ENV_ID).rmdir()
    (shared / ENV_ID).symlink_to(elsewhere / ENV_ID)
    with pytest.raises(AppLogUnavailable, match="cannot be opened"):
        read_app_log(str(shared / ENV_ID / "app.log"), str)


def test_a_big_log_is_tailed_and_redacted(tmp_path: Path) -> None:
    lines = [f"line {i} token={SECRET}" for i in range(20000)]
    log = _log(tmp_path / "shared", "\n".join(lines) + "\n")
    assert log.stat().st_size > MAX_BYTES
    shown = read_app_log(str(log), lambda line: line.replace(SECRET, "***"))
    assert shown.truncated and SECRET not in shown.text
    assert shown.text.splitlines()[-1] == "line 19999 token=***"
    assert len(shown.text.splitlines()) == 200


@pytest.fixture
def server(tmp_path: Path) -> Iterator[tuple[WebServer, Path]]:
    app = create_app(make_settings(tmp_path), background=False)
    shared = tmp_path / "workspace" / "shared"
    db = app.state.runtime.db
    seed_silo(db, "local-default", _silo(shared))
    log = shared / ENV_ID / "app.log"
    seed_env(db, ENV_ID, "demo/hello", 5, "local-default", slot=0, outputs=_outputs(str(log)))
    seed_env(db, "pr-6-fffff", "demo/hello", 6, "local-default", slot=1)
    with WebServer(app, free_port()) as running:
        yield running, shared


def test_the_api_shows_the_app_log(server: tuple[WebServer, Path]) -> None:
    running, shared = server
    client = httpx.Client(base_url=running.url, timeout=20, trust_env=False)
    missing = client.get(f"/api/environments/{ENV_ID}/app-log")
    assert missing.status_code == 404 and "cannot be opened" in missing.text
    _log(shared, f"hello-app: serving\nconnecting with {SECRET}\n")
    shown = client.get(f"/api/environments/{ENV_ID}/app-log")
    assert shown.status_code == 200, shown.text
    body = shown.json()
    assert body["text"] == "hello-app: serving\nconnecting with ***"
    assert body["path"] == str(shared / ENV_ID / "app.log") and body["truncated"] is False
    page = client.get("/api/environments/pr-6-fffff/app-log")
    assert page.status_code == 404 and "runs no app of its own" in page.text
    assert client.get("/api/environments/pr-7-nopes/app-log").status_code == 404


def test_the_environment_page_links_the_app_log(server: tuple[WebServer, Path]) -> None:
    running, shared = server
    _log(shared)
    client = httpx.Client(base_url=running.url, timeout=20, trust_env=False)
    page = client.get(f"/environments/{ENV_ID}")
    link = f'href="/api/environments/{ENV_ID}/app-log"'
    assert page.status_code == 200 and link in page.text
    assert client.get(f"/api/environments/{ENV_ID}/app-log").json()["text"] == "hello-app: serving"
    other = client.get("/environments/pr-6-fffff")
    assert other.status_code == 200 and "app-log" not in other.text
