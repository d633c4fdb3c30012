"""REST API and dashboard authorization over real HTTP, with sign-in through the fake GitHub.

Four callers hit every endpoint: anonymous, a reader and a writer of one repository (signed in
with GitHub's OAuth web flow on the fake), and the API token. Another repository's environments
must be invisible to both people. Rows are seeded directly; no engine runs here.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import httpx
import pytest
from sqlmodel import select

from app.db.models import Environment, Silo
from app.server import create_app
from app.settings import Settings
from tests.apphost import INSTALLATION, REPO, free_port, sign_in_settings
from tests.fakegithub.server import FakeGitHub
from tests.webtools import WebServer, csrf_of, seed_env, seed_run, seed_silo, sign_in

pytest_plugins = ["tests.fakegithub.pytest_plugin"]

OTHER = "octo-org/secret-project"
API_TOKEN = "test-api-token-0123456789"
SILO_SECRET = "silo-admin-token-7f3a9c1d2e"
ENV_SECRET = "env-db-password-99b1c0ffee"
READER, WRITER = "rita", "wanda"


@dataclass
class Site:
    server: WebServer
    fake: FakeGitHub
    runs: dict[str, int]

    @property
    def db(self):  # type: ignore[no-untyped-def]
        return self.server.app.state.runtime.db

    def client(self, role: str) -> httpx.Client:
        if role == "anonymous":
            return httpx.Client(base_url=self.server.url, timeout=20, trust_env=False)
        if role == "token":
            return httpx.Client(
                base_url=self.server.url,
                timeout=20,
                trust_env=False,
                headers={"Authorization": f"Bearer {API_TOKEN}"},
            )
        self.fake.oauth_login = READER if role == "reader" else WRITER
        return sign_in(self.server.url)


def readers_and_writers(
    tmp_path: Path, fake: FakeGitHub, database_url: str
) -> tuple[int, Settings]:
    """REPO (READER reads it, WRITER writes) and the private OTHER; settings with GitHub
    sign-in and the API token, for a runbot served on the port returned."""
    fake.add_repo(REPO, files={"main": {".runbot.yml": "stack: local\n"}})
    fake.add_repo(OTHER, private=True)
    fake.add_installation(INSTALLATION, "octo-org", [REPO, OTHER])
    fake.set_permission(REPO, READER, "read")
    fake.set_permission(REPO, WRITER, "write")
    port = free_port()
    return port, sign_in_settings(tmp_path, fake, database_url, port, api_token=API_TOKEN)


@pytest.fixture
def site(tmp_path: Path, fake_github: FakeGitHub, database_url: str) -> Iterator[Site]:
    fake = fake_github
    port, settings = readers_and_writers(tmp_path, fake, database_url)
    app = create_app(settings, background=False)
    db = app.state.runtime.db
    seed_silo(
        db,
        "shared",
        {
            "port_base": {"value": 41000, "sensitive": False},
            "admin_token": {"value": SILO_SECRET, "sensitive": True},
        },
    )
    env_outputs = {
        "url": {"value": "http://127.0.0.1:1/", "sensitive": False},
        "db_password": {"value": ENV_SECRET, "sensitive": True},
    }
    common = {"installation_id": INSTALLATION, "outputs": env_outputs}
    seed_env(db, "pr-1-aaaaa", REPO, 1, "shared", slot=0, **common)
    seed_env(db, "pr-2-bbbbb", REPO, 2, "shared", slot=1, **common)
    seed_env(db, "pr-3-ccccc", REPO, 3, "shared", slot=2, **common)
    seed_env(db, "pr-9-zzzzz", OTHER, 9, "shared", slot=3, author="mallory", **common)
    runs = {
        "mine": seed_run(db, "environment", "pr-1-aaaaa", "init\napply: ok\n"),
        "other": seed_run(db, "environment", "pr-9-zzzzz", "secret project log\n"),
        "silo": seed_run(db, "silo", "shared", "silo apply\n"),
    }
    with WebServer(app, port) as server:
        yield Site(server, fake, runs)


Expect = dict[str, int]  # role -> status


def expect(anonymous: int, reader: int, writer: int, token: int) -> Expect:
    return {"anonymous": anonymous, "reader": reader, "writer": writer, "token": token}


def endpoints(runs: dict[str, int]) -> list[tuple[str, str, dict | None, Expect]]:
    """Every API endpoint, in an order where the destructive ones come last."""
    mine, other, silo_run = runs["mine"], runs["other"], runs["silo"]
    return [
        ("GET", "/api/me", None, expect(200, 200, 200, 200)),
        ("GET", "/api/environments", None, expect(401, 200, 200, 200)),
        ("GET", "/api/environments/pr-1-aaaaa", None, expect(401, 200, 200, 200)),
        ("GET", "/api/environments/pr-9-zzzzz", None, expect(401, 404, 404, 200)),
        ("GET", "/api/environments/pr-1-aaaaa/runs", None, expect(401, 200, 200, 200)),
        ("GET", "/api/environments/pr-9-zzzzz/runs", None, expect(401, 404, 404, 200)),
        # Seeded without an app of their own: nobody gets an app log, invisible or not.
        ("GET", "/api/environments/pr-1-aaaaa/app-log", None, expect(401, 404, 404, 404)),
        ("GET", "/api/environments/pr-9-zzzzz/app-log", None, expect(401, 404, 404, 404)),
        ("GET", "/api/silos", None, expect(401, 200, 200, 200)),
        ("GET", "/api/silos/shared", None, expect(401, 200, 200, 200)),
        ("GET", "/api/silos/shared/runs", None, expect(401, 200, 200, 200)),
        ("GET", f"/api/runs/{mine}", None, expect(401, 200, 200, 200)),
        ("GET", f"/api/runs/{other}", None, expect(401, 404, 404, 200)),
        ("GET", f"/api/runs/{silo_run}", None, expect(401, 200, 200, 200)),
        ("GET", f"/api/runs/{mine}/log", None, expect(401, 200, 200, 200)),
        ("GET", f"/api/runs/{other}/log?after=0", None, expect(401, 404, 404, 200)),
        ("GET", "/api/usage", None, expect(401, 200, 200, 200)),
        ("GET", "/api/pools", None, expect(401, 200, 200, 200)),
        ("GET", "/api/outbox", None, expect(401, 403, 403, 200)),
        ("GET", f"/api/policy/{REPO}", None, expect(401, 403, 403, 200)),
        ("POST", "/api/environments/pr-1-aaaaa/extend", {"by": "2h"}, expect(401, 403, 200, 200)),
        ("POST", "/api/environments/pr-9-zzzzz/extend", {"by": "2h"}, expect(401, 404, 404, 200)),
        ("POST", "/api/environments/pr-1-aaaaa/sleep", None, expect(401, 403, 200, 200)),
        ("POST", "/api/environments/pr-1-aaaaa/wake", None, expect(401, 403, 200, 200)),
        ("POST", "/api/environments/pr-2-bbbbb/redeploy", None, expect(401, 403, 200, 200)),
        ("POST", "/api/environments/pr-3-ccccc/destroy", None, expect(401, 403, 200, 200)),
        ("POST", "/api/silos/shared/update", None, expect(401, 403, 403, 200)),
        # Live environments remain: destroying the silo without force is refused.
        ("POST", "/api/silos/shared/destroy", None, expect(401, 403, 403, 409)),
    ]


@pytest.mark.parametrize("role", ["anonymous", "reader", "writer", "token"])
def test_every_endpoint_answers_each_kind_of_caller(site: Site, role: str) -> None:
    client = site.client(role)
    csrf = csrf_of(client) if role in ("reader", "writer") else None
    headers = {"X-CSRF-Token": csrf} if csrf else {}
    bodies: list[str] = []
    for method, path, body, wanted in endpoints(site.runs):
        response = client.request(method, path, json=body, headers=headers)
        assert response.status_code == wanted[role], (role, method, path, response.text)
        bodies.append(response.text)
    for text in bodies:
        assert SILO_SECRET not in text and ENV_SECRET not in text

    with site.db.session() as session:
        envs = {e.id: e for e in session.exec(select(Environment))}
        silo = session.get(Silo, "shared")
    assert silo is not None
    acted = role in ("writer", "token")
    assert (envs["pr-3-ccccc"].desired == "absent") is acted
    assert (len(envs) == 5) is acted  # redeploy made a new environment
    assert (envs["pr-2-bbbbb"].desired == "absent") is acted
    assert (envs["pr-1-aaaaa"].generation == 3) is acted  # slept, then woke
    assert (silo.generation == 2) is (role == "token")
    assert silo.desired == "present"
    if acted:
        assert envs["pr-1-aaaaa"].trigger == ("api" if role == "token" else f"api:{WRITER}")
    if role == "writer":
        # Write access was checked the way the comment commands check it: through the App.
        checked = site.fake.requests_for("GET", f"/repos/{REPO}/collaborators/*/permission")
        assert checked and all(r.auth == "installation" for r in checked)


def test_lists_show_only_readable_repositories(site: Site) -> None:
    for role, expected in (
        ("reader", {"pr-1-aaaaa", "pr-2-bbbbb", "pr-3-ccccc"}),
        ("token", {"pr-1-aaaaa", "pr-2-bbbbb", "pr-3-ccccc", "pr-9-zzzzz"}),
    ):
        client = site.client(role)
        page = client.get("/api/environments").json()
        assert {item["id"] for item in page["items"]} == expected
        assert page["total"] == len(expected)
        silo = client.get("/api/silos/shared").json()
        assert silo["environments"] == len(expected)
        assert silo["used"] == 4 and silo["capacity"] == 5
        assert silo["outputs"] == {"port_base": 41000, "admin_token": "(sensitive)"}
        usage = client.get("/api/usage").json()
        assert {s["repository"] for s in usage["series"]} == {
            REPO if role == "reader" else r for r in (REPO, OTHER)
        }
        html = client.get("/").text
        assert ("pr-9-zzzzz" in html) is (role == "token")
        assert "mallory" not in html or role == "token"


def test_detail_outputs_and_log(site: Site) -> None:
    client = site.client("reader")
    env = client.get("/api/environments/pr-1-aaaaa").json()
    assert env["outputs"] == {"url": "http://127.0.0.1:1/", "db_password": "(sensitive)"}
    assert env["pr_url"] == f"{site.fake.web_url}/{REPO}/pull/1"
    runs = client.get("/api/environments/pr-1-aaaaa/runs").json()
    assert [r["id"] for r in runs["items"]] == [site.runs["mine"]]
    assert runs["items"][0]["duration_seconds"] == pytest.approx(42, abs=1)
    log = client.get(f"/api/runs/{site.runs['mine']}/log").json()
    assert log["text"] == "init\napply: ok\n" and log["cursor"] == 2 and log["finished"]
    tail = client.get(f"/api/runs/{site.runs['mine']}/log?after=1").json()
    assert tail["text"] == "apply: ok\n" and tail["cursor"] == 2
    assert client.get(f"/api/runs/{site.runs['mine']}/log?after=2").json()["text"] == ""
    last = client.get(f"/api/runs/{site.runs['mine']}/log?tail=1").json()
    assert last["text"] == "apply: ok\n"
    page = client.get("/environments/pr-1-aaaaa")
    assert page.status_code == 200
    assert "apply: ok" in page.text and ENV_SECRET not in page.text and "db_password" in page.text
    # A reader is shown no action buttons, and the form POST is refused with a message.
    assert 'id="destroy"' not in page.text and "need write access" in page.text
    csrf = re.search(r'name="csrf_token" value="([^"]+)"', page.text)
    assert csrf is not None  # the sign-out form carries it
    refused = client.post(
        "/environments/pr-1-aaaaa/destroy",
        data={"csrf_token": csrf.group(1)},
        follow_redirects=True,
    )
    assert "you need write access to octo-org/hello" in refused.text
    with site.db.session() as session:
        row = session.get(Environment, "pr-1-aaaaa")
        assert row is not None and row.desired == "present"
    assert client.get("/environments/pr-9-zzzzz").status_code == 404


def test_writer_acts_from_the_dashboard_with_csrf(site: Site) -> None:
    client = site.client("writer")
    page = client.get("/environments/pr-1-aaaaa").text
    assert 'id="destroy"' in page and 'id="extend"' in page
    token = re.search(r'name="csrf_token" value="([^"]+)"', page)
    assert token is not None
    before = client.get("/api/environments/pr-1-aaaaa").json()["expires_at"]

    forged = client.post("/environments/pr-1-aaaaa/extend", data={"by": "1d"})
    assert forged.status_code == 403  # no CSRF token
    cross = client.post(
        "/environments/pr-1-aaaaa/extend",
        data={"by": "1d", "csrf_token": token.group(1)},
        headers={"Origin": "https://evil.example"},
    )
    assert cross.status_code == 403
    api_forged = client.post("/api/environments/pr-1-aaaaa/destroy")
    assert api_forged.status_code == 403
    assert client.get("/api/environments/pr-1-aaaaa").json()["expires_at"] == before

    done = client.post(
        "/environments/pr-1-aaaaa/extend",
        data={"by": "1d", "csrf_token": token.group(1)},
        follow_redirects=True,
    )
    assert done.status_code == 200 and "extend: expires in" in done.text
    after = client.get("/api/environments/pr-1-aaaaa").json()["expires_at"]
    assert datetime.fromisoformat(after) > datetime.fromisoformat(before)

    bad = client.post(
        "/environments/pr-1-aaaaa/extend",
        data={"by": "soon", "csrf_token": token.group(1)},
        follow_redirects=True,
    )
    assert 'class="flash error"' in bad.text
    gone = client.post(
        "/environments/pr-1-aaaaa/destroy",
        data={"csrf_token": token.group(1)},
        follow_redirects=True,
    )
    assert "is being destroyed" in gone.text
    with site.db.session() as session:
        row = session.get(Environment, "pr-1-aaaaa")
        assert row is not None and row.desired == "absent" and row.trigger == f"dashboard:{WRITER}"
    # Silo actions are for operators: a writer of one repository cannot touch shared silos.
    refused = client.post(
        "/silos/shared/destroy", data={"csrf_token": token.group(1)}, follow_redirects=True
    )
    assert "only operators" in refused.text
    # Both kinds of action button share one check: the token first, then the action's name.
    for path in ("/silos/shared/update", "/environments/pr-1-aaaaa/sleep"):
        assert client.post(path, data={}).status_code == 403, path
    for path in ("/silos/shared/explode", "/environments/pr-1-aaaaa/explode"):
        unknown = client.post(path, data={"csrf_token": token.group(1)})
        assert unknown.status_code == 404 and "no action" in unknown.text, path


def test_anonymous_is_sent_to_sign_in_and_bad_tokens_are_refused(site: Site) -> None:
    anonymous = site.client("anonymous")
    for path in ("/", "/silos", "/usage", "/environments/pr-1-aaaaa", "/outbox"):
        response = anonymous.get(path)
        assert response.status_code == 303, path
        assert response.headers["location"].startswith("/login?next=")
    login = anonymous.get("/login")
    assert "Sign in with GitHub" in login.text
    wrong = httpx.get(
        f"{site.server.url}/api/environments", headers={"Authorization": "Bearer nope"}
    )
    assert wrong.status_code == 401
    assert anonymous.post("/api/environments/pr-1-aaaaa/destroy").status_code == 401
    # A forged or stale session cookie is no session.
    forged = httpx.get(
        f"{site.server.url}/api/environments", cookies={"runbot_session": "e30.forged.sig"}
    )
    assert forged.status_code == 401
    # The OAuth callback refuses a state it did not issue.
    bad = anonymous.get("/auth/github/callback?code=x&state=y")
    assert bad.status_code == 400 and "try again" in bad.text


def test_sign_out_ends_the_session(site: Site) -> None:
    client = site.client("reader")
    assert client.get("/api/me").json()["login"] == READER
    csrf = csrf_of(client)
    client.post("/logout", data={"csrf_token": csrf})
    assert client.get("/api/me").json()["kind"] == "anonymous"
    assert client.get("/").status_code == 303


def test_validation_errors_are_plain(site: Site) -> None:
    client = site.client("token")
    assert client.get("/api/environments?per_page=500").status_code == 422
    assert client.get("/api/environments?status=bogus").status_code == 422
    bad = client.post("/api/environments/pr-1-aaaaa/extend", json={"by": "forever"})
    assert bad.status_code == 422 and "forever" in bad.json()["detail"]
    missing = client.post("/api/environments/pr-1-aaaaa/extend", json={})
    assert missing.status_code == 422
    assert client.get("/api/runs/999999").status_code == 404
    docs = client.get("/openapi.json").json()
    for path in (
        "/api/environments",
        "/api/environments/{env_id}",
        "/api/environments/{env_id}/runs",
        "/api/environments/{env_id}/extend",
        "/api/silos/{name}/destroy",
        "/api/runs/{run_id}/log",
        "/api/pools",
    ):
        assert path in docs["paths"], path
    # Served straight from the ASGI server (RunbotApp), yet still described.
    assert "post" in docs["paths"]["/webhooks/github"]
    assert client.get("/docs").status_code == 200


def test_sign_in_never_redirects_off_site(site: Site) -> None:
    site.fake.oauth_login = READER
    client = httpx.Client(base_url=site.server.url, timeout=20, trust_env=False)
    for target in ("//evil.example/x", "https://evil.example/", "/\\evil.example"):
        landed = client.get("/auth/github", params={"next": target}, follow_redirects=True)
        assert landed.status_code == 200 and str(landed.url) == f"{site.server.url}/", target
    kept = client.get("/auth/github", params={"next": "/usage"}, follow_redirects=True)
    assert str(kept.url) == f"{site.server.url}/usage"


@pytest.fixture
def local_site(tmp_path: Path) -> Iterator[WebServer]:
    """Local mode (no App credentials) and no OAuth client: open on loopback only."""
    from tests.conftest import make_settings

    app = create_app(make_settings(tmp_path), background=False)
    db = app.state.runtime.db
    seed_silo(db, "local-default", {"admin_token": {"value": SILO_SECRET, "sensitive": True}})
    seed_env(db, "pr-5-eeeee", "demo/hello", 5, "local-default", slot=0)
    with WebServer(app, free_port()) as server:
        yield server


def test_local_mode_is_open_on_loopback_only_and_says_so(local_site: WebServer) -> None:
    client = httpx.Client(base_url=local_site.url, timeout=20, trust_env=False)
    page = client.get("/")
    assert page.status_code == 200 and "pr-5-eeeee" in page.text
    assert "open to anyone on this machine (loopback only)" in page.text
    assert 'href="/outbox"' in page.text
    me = client.get("/api/me").json()
    assert me["kind"] == "local" and me["operator"]
    # Through a proxy (or from another machine) nobody gets in.
    relayed = client.get("/", headers={"X-Forwarded-For": "203.0.113.9"})
    assert relayed.status_code == 403 and "loopback" in relayed.text
    assert client.get("/api/environments", headers={"Forwarded": "for=1.2.3.4"}).status_code == 403
    # Open does not mean forgeable: actions still need the session's CSRF token.
    assert client.post("/api/environments/pr-5-eeeee/sleep").status_code == 403
    slept = client.post(
        "/api/environments/pr-5-eeeee/sleep", headers={"X-CSRF-Token": me["csrf_token"]}
    )
    assert slept.status_code == 200 and slept.json()["environment"]["desired"] == "suspended"
    for path in ("/silos", "/silos/local-default", "/api/silos", "/outbox", "/api/outbox"):
        response = client.get(path)
        assert response.status_code == 200 and SILO_SECRET not in response.text, path


def test_the_comment_commands_rule_decides(site: Site) -> None:
    """A PR's author may extend, sleep, wake and destroy its environment without write access
    (as with `/runbot extend`), but not redeploy it; nobody but operators acts on a closed PR."""
    from app.db.models import PullRequest

    with site.db.session() as session:
        row = session.get(Environment, "pr-1-aaaaa")
        assert row is not None
        row.author = READER
        session.add(row)
        session.add(PullRequest(id=f"{REPO}#2", repository=REPO, number=2, state="closed"))
        session.commit()
    reader = site.client("reader")
    headers = {"X-CSRF-Token": csrf_of(reader)}
    page = reader.get("/environments/pr-1-aaaaa").text
    assert 'id="extend"' in page and 'id="destroy"' in page and 'id="redeploy"' not in page
    assert (
        reader.post(
            "/api/environments/pr-1-aaaaa/extend", json={"by": "1h"}, headers=headers
        ).status_code
        == 200
    )
    refused = reader.post("/api/environments/pr-1-aaaaa/redeploy", headers=headers)
    assert refused.status_code == 403 and "need write access" in refused.json()["detail"]

    writer = site.client("writer")
    closed = writer.post(
        "/api/environments/pr-2-bbbbb/sleep", headers={"X-CSRF-Token": csrf_of(writer)}
    )
    assert closed.status_code == 403 and "is closed" in closed.json()["detail"]
    token = site.client("token")
    assert token.post("/api/environments/pr-2-bbbbb/sleep").status_code == 200
