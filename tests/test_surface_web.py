"""Issue 21, must 2: the dashboard and API as a stranger reaches them, over real HTTP.

Only http(s) environment URLs become links (the comments' rule), every response carries the
security headers, only known Host names are answered, the CSRF Origin is RUNBOT_PUBLIC_URL's,
open local mode listens on loopback only, logout revokes the session everywhere, session
secrets rotate, and /metrics can require a token.
"""

from __future__ import annotations

import base64
import hashlib
import os
import re
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from alembic import command
from sqlalchemy import inspect

from app.db.models import Environment
from app.db.session import Database
from app.github.comment import StatusView, render_status_comment
from app.links import safe_link
from app.server import create_app
from tests.apphost import INSTALLATION, REPO, app_settings, free_port
from tests.conftest import ROOT, make_settings
from tests.fakegithub.server import FakeGitHub
from tests.webtools import WebServer, csrf_of, seed_env, seed_silo, sign_in

pytest_plugins = ["tests.fakegithub.pytest_plugin"]

API_TOKEN = "surface-api-token-0123456789"
WRITER = "wanda"
OLD_SECRET = "old-session-secret-" + "a" * 32
NEW_SECRET = "new-session-secret-" + "b" * 32
HOSTILE_URLS = [
    "javascript:alert(document.cookie)",
    "JavaScript:alert(1)",
    " javascript:alert(1)",
    "java\tscript:alert(1)",
    "data:text/html,<script>alert(1)</script>",
    "vbscript:msgbox(1)",
    "//evil.example/no-scheme",
    "http://",
    'https://ok.example/"><script>alert(1)</script>',
]
FINE_URLS = ["http://127.0.0.1:41001/", "https://pr-7.preview.example/path?x=1&y=2"]


# ----- servers -------------------------------------------------------------------------------


Start = Callable[..., WebServer]


@pytest.fixture
def start(tmp_path: Path, fake_github: FakeGitHub) -> Iterator[Start]:
    """Start a web-only runbot on a fresh port with these settings; stopped at the end."""
    fake = fake_github
    fake.add_repo(REPO, files={"main": {".runbot.yml": "stack: local\n"}})
    fake.add_installation(INSTALLATION, "octo-org", [REPO])
    fake.set_permission(REPO, WRITER, "write")
    fake.oauth_login = WRITER
    running: list[WebServer] = []

    def launch(database_url: str | None = None, **overrides: Any) -> WebServer:
        port = free_port()
        values: dict[str, Any] = {
            "github_client_id": fake.client_id,
            "github_client_secret": fake.client_secret,
            "api_token": API_TOKEN,
            "public_url": f"http://127.0.0.1:{port}",
        }
        values.update(overrides)
        app = create_app(app_settings(tmp_path, fake, database_url, **values), background=False)
        server = WebServer(app, port).__enter__()
        running.append(server)
        return server

    yield launch
    for server in running:
        server.__exit__()


def db_of(server: WebServer) -> Database:
    db: Database = server.app.state.runtime.db
    return db


def seed_with_url(server: WebServer, env_id: str, pr: int, url: str) -> None:
    db = db_of(server)
    with db.session() as session:
        if session.get(Environment, env_id) is None:
            session.close()
            if pr == 1:
                seed_silo(db, "shared", {})
            seed_env(db, env_id, REPO, pr, "shared", slot=pr, installation_id=INSTALLATION)
    with db.session() as session:
        row = session.get(Environment, env_id)
        assert row is not None
        row.url = url
        session.add(row)
        session.commit()


def token_client(server: WebServer, **headers: str) -> httpx.Client:
    return httpx.Client(
        base_url=server.url,
        timeout=20,
        trust_env=False,
        headers={"Authorization": f"Bearer {API_TOKEN}", **headers},
    )


# ----- URLs ------------------------------------------------------------------------------------


def comment_link(url: str) -> str | None:
    """The URL the PR comment links, if any."""
    from datetime import UTC, datetime

    body = render_status_comment(
        StatusView(
            repository=REPO,
            pr_number=1,
            state="ready",
            environment_id="pr-1-aaaaa",
            silo="shared",
            url=url,
            now=datetime(2030, 1, 1, tzinfo=UTC),
        )
    )
    found = re.search(r"^\| \*\*Environment\*\* \| \[.*\]\((.*)\) \|$", body, re.M)
    return found.group(1) if found else None


@pytest.mark.parametrize("url", HOSTILE_URLS + FINE_URLS)
def test_dashboard_links_environment_urls_by_the_comments_rule_only_http_s(
    start: Start, url: str
) -> None:
    server = start()
    seed_with_url(server, "pr-1-aaaaa", 1, url)
    client = token_client(server)
    expected = safe_link(url)
    assert expected == comment_link(url), "the comment and the rule disagree"
    for path in ("/", "/environments/pr-1-aaaaa"):
        page = client.get(path)
        assert page.status_code == 200, path
        hrefs = re.findall(r'<a class="url[^"]*"(?: id="env-url")? href="([^"]*)"', page.text)
        if expected is None:
            assert hrefs == [], (path, hrefs)
            assert not re.search(r'href="\s*(javascript|data|vbscript):', page.text, re.I)
        else:
            assert hrefs == [expected.replace("&", "&amp;")], (path, hrefs)


# ----- headers ---------------------------------------------------------------------------------


PAGES = [
    "/",
    "/environments/pr-1-aaaaa",
    "/silos",
    "/usage",
    "/login",
    "/api/environments",
    "/api/me",
    "/static/app.js",
    "/openapi.json",
    "/docs",
    "/healthz",
    "/no-such-page",
]


def assert_guarded(response: httpx.Response, hsts: bool) -> None:
    policy = response.headers.get("content-security-policy", "")
    directives = {part.split()[0]: part.split()[1:] for part in policy.split(";") if part.strip()}
    assert directives.get("default-src") == ["'self'"], policy
    assert directives.get("frame-ancestors") == ["'none'"], policy
    assert "'unsafe-inline'" not in directives.get("script-src", []), policy
    assert response.headers.get("x-content-type-options") == "nosniff"
    assert response.headers.get("referrer-policy") == "same-origin"
    assert response.headers.get("x-frame-options") == "DENY"
    assert ("strict-transport-security" in response.headers) is hsts


def test_every_page_sends_csp_nosniff_and_referrer_policy(start: Start) -> None:
    server = start()
    seed_with_url(server, "pr-1-aaaaa", 1, FINE_URLS[0])
    client = token_client(server)
    for path in PAGES:
        response = client.get(path)
        assert response.status_code in (200, 404), (path, response.status_code)
        assert_guarded(response, hsts=False)
    # Swagger UI's one inline script is allowed by its hash, nothing else inline.
    docs = client.get("/docs")
    script = re.search(r"<script>(.*?)</script>", docs.text, re.DOTALL)
    assert script is not None
    digest = base64.b64encode(hashlib.sha256(script.group(1).encode()).digest()).decode()
    assert f"'sha256-{digest}'" in docs.headers["content-security-policy"]
    assert client.get("/redoc").status_code == 404
    # No page the CSP guards relies on inline script or style.
    for path in ("/", "/environments/pr-1-aaaaa", "/silos", "/usage"):
        text = client.get(path).text
        assert not re.search(r"<script(?![^>]*\bsrc=)[^>]*>", text), path
        assert " style=" not in text and "<style" not in text, path
        assert not re.search(r"\son[a-z]+=", text), path


def test_hsts_is_sent_when_the_public_url_is_https(start: Start) -> None:
    server = start(public_url="https://runbot.example.test")
    client = token_client(server)
    for path in ("/", "/api/environments", "/healthz"):
        response = client.get(path)
        assert_guarded(response, hsts=True)
        assert "max-age=" in response.headers["strict-transport-security"]


# ----- Host and Origin ---------------------------------------------------------------------------


def test_dns_rebinding_a_foreign_host_gets_400(start: Start) -> None:
    server = start(public_url="https://runbot.example.test", allowed_hosts="runbot.internal")
    client = token_client(server)
    for host in ("evil.example", f"evil.example:{server.port}", "127.0.0.1.evil.example", ""):
        response = client.get("/", headers={"Host": host})
        assert response.status_code == 400, host
        assert "RUNBOT_PUBLIC_URL" in response.json()["error"]
        assert_guarded(response, hsts=True)
        assert client.get("/api/environments", headers={"Host": host}).status_code == 400
    for host in (
        "runbot.example.test",
        "RUNBOT.example.test:443",
        "runbot.internal",
        f"localhost:{server.port}",
        f"127.0.0.1:{server.port}",
        f"[::1]:{server.port}",
    ):
        assert client.get("/", headers={"Host": host}).status_code == 200, host
    # Probes and scrapers address a pod by its IP: exempt.
    for path in ("/healthz", "/readyz", "/metrics"):
        assert client.get(path, headers={"Host": "10.1.2.3:8000"}).status_code == 200, path


@pytest.fixture
def local_site(tmp_path: Path) -> Iterator[WebServer]:
    """Local mode (no App credentials), no OAuth client: the dashboard is open on loopback."""
    port = free_port()
    settings = make_settings(tmp_path, public_url=f"http://127.0.0.1:{port}")
    app = create_app(settings, background=False)
    seed_silo(app.state.runtime.db, "local-default", {})
    seed_env(app.state.runtime.db, "pr-5-eeeee", "demo/hello", 5, "local-default", slot=0)
    with WebServer(app, port) as server:
        yield server


def test_dns_rebinding_cannot_reach_the_open_local_dashboard(local_site: WebServer) -> None:
    client = httpx.Client(base_url=local_site.url, timeout=20, trust_env=False)
    page = client.get("/")
    assert page.status_code == 200
    csrf = re.search(r'name="csrf_token" value="([^"]+)"', page.text) or re.search(
        r'"csrf_token": ?"([^"]+)"', client.get("/api/me").text
    )
    assert csrf is not None
    # A page at evil.example whose name now resolves to 127.0.0.1: same origin for the browser.
    rebound = {"Host": f"evil.example:{local_site.port}"}
    assert client.get("/", headers=rebound).status_code == 400
    assert client.get("/api/me", headers=rebound).status_code == 400
    slept = client.post(
        "/api/environments/pr-5-eeeee/sleep",
        headers={**rebound, "Origin": f"http://evil.example:{local_site.port}"},
        params={"csrf_token": csrf.group(1)},
    )
    assert slept.status_code == 400
    # The banner says a tunnel defeats the loopback check.
    assert "A tunnel to this port" in page.text and "operator rights" in page.text


def test_csrf_origin_is_compared_with_the_public_url_not_the_host(start: Start) -> None:
    server = start(allowed_hosts="runbot.internal")
    seed_with_url(server, "pr-1-aaaaa", 1, FINE_URLS[0])
    client = sign_in(server.url)
    csrf = csrf_of(client)
    form = {"csrf_token": csrf, "by": "1h"}
    # Host and Origin agree, but are not RUNBOT_PUBLIC_URL's: refused.
    internal = f"runbot.internal:{server.port}"
    forged = client.post(
        "/environments/pr-1-aaaaa/extend",
        data=form,
        headers={"Host": internal, "Origin": f"http://{internal}"},
    )
    assert forged.status_code == 403, forged.text
    assert "RUNBOT_PUBLIC_URL" in forged.text
    api = client.post(
        "/api/environments/pr-1-aaaaa/sleep",
        headers={"Host": internal, "Origin": f"http://{internal}", "X-CSRF-Token": csrf},
    )
    assert api.status_code == 403
    # From the public URL's origin (and its loopback aliases) the same form goes through.
    for origin in (server.url, f"http://localhost:{server.port}"):
        done = client.post("/environments/pr-1-aaaaa/extend", data=form, headers={"Origin": origin})
        assert done.status_code == 303, (origin, done.text)


def test_open_local_mode_refuses_to_listen_beyond_loopback(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("RUNBOT_")}
    env.update(RUNBOT_DATA_DIR=str(tmp_path / "data"), PYTHONPATH=str(ROOT))
    port = str(free_port())
    try:
        done = subprocess.run(
            [sys.executable, "-m", "app.cli", "serve", "--host", "0.0.0.0", "--port", port],
            env=env,
            cwd=tmp_path,
            capture_output=True,
            text=True,
            timeout=30,
        )
    except subprocess.TimeoutExpired:
        pytest.fail("runbot serve listened on 0.0.0.0 in open local mode")
    assert done.returncode != 0
    assert "loopback only" in done.stderr + done.stdout
    assert "RUNBOT_GITHUB_CLIENT_ID" in done.stderr + done.stdout


# ----- sessions ----------------------------------------------------------------------------------


def signed_in_cookie(client: httpx.Client) -> str:
    cookie = client.cookies.get("runbot_session")
    assert cookie
    return str(cookie)


def with_cookie(server: WebServer, cookie: str) -> httpx.Client:
    return httpx.Client(
        base_url=server.url, timeout=20, trust_env=False, cookies={"runbot_session": cookie}
    )


def who(server: WebServer, cookie: str) -> str:
    me = with_cookie(server, cookie).get("/api/me")
    assert me.status_code == 200, me.text
    return str(me.json()["kind"])


def test_logout_revokes_the_session_so_a_copied_cookie_stops_working(
    start: Start, database_url: str
) -> None:
    server = start(database_url)
    client = sign_in(server.url)
    copied = signed_in_cookie(client)
    assert who(server, copied) == "user"
    out = client.post("/logout", data={"csrf_token": csrf_of(client)})
    assert out.status_code == 303
    assert who(server, copied) == "anonymous"
    page = with_cookie(server, copied).get("/")
    assert page.status_code == 303 and page.headers["location"].startswith("/login")
    # On another replica (a second process on the same database) too.
    other = start(database_url, session_secret=None)
    assert who(other, copied) == "anonymous"
    # Signing in again gives a new session that works.
    assert who(server, signed_in_cookie(sign_in(server.url))) == "user"


def test_session_secret_rotation_keeps_old_cookies_until_the_old_secret_is_removed(
    start: Start,
) -> None:
    old = start(session_secret=OLD_SECRET)
    old_cookie = signed_in_cookie(sign_in(old.url))
    assert who(old, old_cookie) == "user"

    rotated = start(session_secret=f"{NEW_SECRET},{OLD_SECRET}")
    assert who(rotated, old_cookie) == "user", "an old secret must still verify its cookies"
    new_cookie = signed_in_cookie(sign_in(rotated.url))
    assert who(start(session_secret=NEW_SECRET), new_cookie) == "user", "not signed with newest"

    retired = start(session_secret=NEW_SECRET)
    assert who(retired, old_cookie) == "anonymous", "a removed secret must revoke its cookies"
    assert who(retired, new_cookie) == "user"


# ----- /metrics --------------------------------------------------------------------------------


def test_metrics_require_the_bearer_token_when_one_is_set(start: Start) -> None:
    server = start(metrics_token="metrics-token-0123456789abcdef")
    plain = httpx.Client(base_url=server.url, timeout=20, trust_env=False)
    refused = plain.get("/metrics")
    assert refused.status_code == 401
    assert "RUNBOT_METRICS_TOKEN" in refused.json()["error"]
    assert refused.headers["www-authenticate"].startswith("Bearer")
    for wrong in (
        b"Bearer nope",
        b"Basic bWV0cmljcw==",
        b"Bearer " + API_TOKEN.encode(),
        b"Bearer \xe9",
    ):
        assert plain.get("/metrics", headers={"Authorization": wrong}).status_code == 401
    good = plain.get("/metrics", headers={"Authorization": "Bearer metrics-token-0123456789abcdef"})
    assert good.status_code == 200 and "runbot_" in good.text
    # Without the setting, /metrics stays open (the default).
    assert httpx.get(f"{start().url}/metrics", timeout=20).status_code == 200


# ----- the migration ---------------------------------------------------------------------------


def test_migration_0011_adds_and_removes_the_revoked_session_table(database_url: str) -> None:
    db = Database(database_url)
    config = db._alembic_config()
    with db.engine.begin() as connection:
        config.attributes["connection"] = connection
        command.upgrade(config, "0011")
    assert "revokedsession" in inspect(db.engine).get_table_names()
    with db.engine.begin() as connection:
        config.attributes["connection"] = connection
        command.downgrade(config, "0010")
    assert "revokedsession" not in inspect(db.engine).get_table_names()
    db.dispose()
