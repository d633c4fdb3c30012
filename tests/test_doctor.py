"""`runbot doctor`: a healthy setup passes; each broken one fails on the right row, with its fix.

Everything is real: the engine binary, SQLite and PostgreSQL, the stack catalog on disk, and the
App's credentials checked with a JWT against the fake GitHub.
"""

from __future__ import annotations

import shutil
import socket
import sqlite3
from collections.abc import Callable
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from typer.testing import CliRunner

from app.cli.main import cli
from app.db.session import Database
from app.doctor.checks import run_checks
from app.doctor.github import MIN_WEBHOOK_SECRET_LENGTH
from app.doctor.report import Row, State, render
from app.settings import Settings, load_settings
from app.workers import acquire_sqlite_lock
from tests.conftest import TEMPLATES
from tests.fakegithub.server import FakeGitHub

pytest_plugins = ["tests.fakegithub.pytest_plugin"]

SECRET = "0123456789abcdef0123456789abcdef01234567"  # 40 characters, like GitHub's
PUBLIC_URL = "https://runbot.example.com"


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture
def healthy_env(
    fake_github: FakeGitHub, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> dict[str, str]:
    """A complete App-mode configuration as environment variables, with a migrated database."""
    env = {
        "RUNBOT_DATA_DIR": str(tmp_path / "data"),
        "RUNBOT_TEMPLATES_DIR": str(TEMPLATES),
        "RUNBOT_ENGINE": "embedded",
        "RUNBOT_GITHUB_APP_ID": str(fake_github.app_id),
        "RUNBOT_GITHUB_PRIVATE_KEY": fake_github.private_key_pem.replace("\n", "\\n"),
        "RUNBOT_GITHUB_WEBHOOK_SECRET": SECRET,
        "RUNBOT_GITHUB_API_URL": fake_github.url,
        "RUNBOT_GITHUB_URL": fake_github.web_url,
        "RUNBOT_PUBLIC_URL": PUBLIC_URL,
    }
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    settings = load_settings()
    Database(settings.resolved_database_url).migrate()
    return env


@pytest.fixture
def checks(monkeypatch: pytest.MonkeyPatch) -> Callable[..., dict[str, Row]]:
    """Run doctor's checks with some settings changed (None removes one)."""

    def run(replicas: int = 1, **changes: str | None) -> dict[str, Row]:
        for key, value in changes.items():
            if value is None:
                monkeypatch.delenv(key, raising=False)
            else:
                monkeypatch.setenv(key, value)
        rows = run_checks(load_settings(), replicas=replicas)
        by_check = {row.check: row for row in rows}
        assert len(by_check) == len(rows), "check names are unique"
        return by_check

    return run


def only_failures(rows: dict[str, Row]) -> set[str]:
    return {name for name, row in rows.items() if row.state is State.FAIL}


def test_healthy_setup_passes(healthy_env: dict[str, str]) -> None:
    result = CliRunner().invoke(cli, ["doctor"])
    assert result.exit_code == 0, result.output
    rows = {row.check: row for row in run_checks(load_settings())}
    for name in (
        "settings",
        "data dir",
        "database",
        "migrations",
        "processes",
        "stack local",
        "stack aws",
        "stack kubernetes",
        "github app",
        "app permissions",
        "app events",
        "webhook secret",
        "public url",
    ):
        assert rows[name].state is State.OK, rows[name]
    # The embedded engine works, but in App mode doctor says it is for trials.
    assert rows["engine"].state is State.WARN
    assert "1." in rows["engine"].detail and "RUNBOT_ENGINE=tofu" in rows["engine"].fix
    assert "runbot-test" in rows["github app"].detail
    assert "FAIL" not in result.output and "0 failed" in result.output


def test_local_mode_without_github_passes(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RUNBOT_TEMPLATES_DIR", str(TEMPLATES))
    monkeypatch.setenv("RUNBOT_ENGINE", "embedded")
    monkeypatch.setenv("RUNBOT_DATA_DIR", str(tmp_path / "fresh"))
    rows = {row.check: row for row in run_checks(load_settings())}
    assert only_failures(rows) == set()
    assert rows["engine"].state is State.OK
    assert rows["github app"].state is State.WARN and "runbot setup" in rows["github app"].fix
    assert "not created yet" in rows["database"].detail
    assert not (tmp_path / "fresh").exists(), "doctor only reads"


@pytest.mark.parametrize(
    ("engine", "detail", "fix"),
    [
        ("no-such-tofu", "'no-such-tofu' is not on PATH", "install OpenTofu"),
        ("/nonexistent/tofu", "is not an executable file", "tofu or terraform binary"),
    ],
)
def test_missing_engine(
    healthy_env: dict[str, str],
    checks: Callable[..., dict[str, Row]],
    engine: str,
    detail: str,
    fix: str,
) -> None:
    rows = checks(RUNBOT_ENGINE=engine)
    assert only_failures(rows) == {"engine"}
    assert detail in rows["engine"].detail
    assert fix in rows["engine"].fix


def test_an_engine_that_is_not_terraform(
    healthy_env: dict[str, str], checks: Callable[..., dict[str, Row]]
) -> None:
    rows = checks(RUNBOT_ENGINE=shutil.which("false") or "/bin/false")
    assert only_failures(rows) == {"engine"}
    assert "exited 1" in rows["engine"].detail
    assert "OpenTofu or Terraform" in rows["engine"].fix


def test_bad_key_text(healthy_env: dict[str, str], checks: Callable[..., dict[str, Row]]) -> None:
    rows = checks(RUNBOT_GITHUB_PRIVATE_KEY="not a key")
    assert only_failures(rows) == {"github app"}
    assert "is not a PEM private key" in rows["github app"].detail
    assert "Generate a private key" in rows["github app"].fix


def test_key_of_another_app(
    healthy_env: dict[str, str], checks: Callable[..., dict[str, Row]], fake_github: FakeGitHub
) -> None:
    other = rsa.generate_private_key(public_exponent=65537, key_size=2048).private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.TraditionalOpenSSL,
        serialization.NoEncryption(),
    )
    rows = checks(RUNBOT_GITHUB_PRIVATE_KEY=other.decode())
    assert only_failures(rows) == {"github app"}
    assert "does not belong to App" in rows["github app"].detail
    assert "generate a new private key" in rows["github app"].fix
    assert fake_github.requests_for("GET", "/app"), "the JWT really went to GitHub"


def test_key_file_that_cannot_be_read(
    healthy_env: dict[str, str], checks: Callable[..., dict[str, Row]], tmp_path: Path
) -> None:
    rows = checks(
        RUNBOT_GITHUB_PRIVATE_KEY=None,
        RUNBOT_GITHUB_PRIVATE_KEY_PATH=str(tmp_path / "missing.pem"),
    )
    assert only_failures(rows) == {"github app"}
    assert "cannot read" in rows["github app"].detail


def test_unreachable_database(
    healthy_env: dict[str, str], checks: Callable[..., dict[str, Row]]
) -> None:
    url = f"postgresql+psycopg://runbot:hunter2@127.0.0.1:{closed_port()}/runbot"
    rows = checks(RUNBOT_DATABASE_URL=url)
    assert only_failures(rows) == {"database"}
    assert "cannot use postgresql+psycopg://runbot:***@127.0.0.1" in rows["database"].detail
    assert "hunter2" not in render(rows.values())
    assert "check RUNBOT_DATABASE_URL" in rows["database"].fix
    assert rows["migrations"].state is State.WARN


def test_a_file_that_is_not_a_database(
    healthy_env: dict[str, str], checks: Callable[..., dict[str, Row]], tmp_path: Path
) -> None:
    junk = tmp_path / "junk.db"
    junk.write_bytes(b"this is not SQLite" * 100)
    rows = checks(RUNBOT_DATABASE_URL=f"sqlite:///{junk}")
    assert only_failures(rows) == {"database"}
    assert "not a database" in rows["database"].detail


def test_database_migrated_by_a_newer_runbot(
    healthy_env: dict[str, str], checks: Callable[..., dict[str, Row]]
) -> None:
    path = Path(healthy_env["RUNBOT_DATA_DIR"]) / "runbot.db"
    with sqlite3.connect(path) as connection:
        connection.execute("UPDATE alembic_version SET version_num = '9999_future'")
    rows = checks()
    assert only_failures(rows) == {"migrations"}
    assert "9999_future" in rows["migrations"].detail
    assert "never downgrades" in rows["migrations"].fix


def test_broken_stack(
    healthy_env: dict[str, str], checks: Callable[..., dict[str, Row]], tmp_path: Path
) -> None:
    catalog = tmp_path / "catalog"
    shutil.copytree(TEMPLATES / "local", catalog / "local")
    shutil.copytree(TEMPLATES / "local", catalog / "broken")
    main = catalog / "broken" / "instance" / "main.tf"
    main.write_text(main.read_text() + '\nresource "terraform_data" "x" {\n  input = \n}\n')
    shutil.copytree(TEMPLATES / "local", catalog / "nourl")
    (catalog / "nourl" / "instance" / "outputs.tf").unlink()
    rows = checks(RUNBOT_TEMPLATES_DIR=str(catalog))
    assert only_failures(rows) == {"stack broken", "stack nourl"}
    assert rows["stack local"].state is State.OK
    assert (
        "main.tf:" in rows["stack broken"].detail and "syntax error" in rows["stack broken"].detail
    )
    assert 'output "url"' in rows["stack nourl"].detail
    assert str(catalog / "broken") in rows["stack broken"].fix
    assert "docs/writing-stacks.md" in rows["stack broken"].fix


def test_missing_catalog(
    healthy_env: dict[str, str], checks: Callable[..., dict[str, Row]], tmp_path: Path
) -> None:
    rows = checks(RUNBOT_TEMPLATES_DIR=str(tmp_path / "nowhere"))
    assert only_failures(rows) == {"stacks"}
    assert "RUNBOT_TEMPLATES_DIR" in rows["stacks"].fix


@pytest.mark.parametrize("secret", [None, "short-secret"])
def test_webhook_secret_missing_or_short(
    healthy_env: dict[str, str], checks: Callable[..., dict[str, Row]], secret: str | None
) -> None:
    rows = checks(RUNBOT_GITHUB_WEBHOOK_SECRET=secret)
    assert only_failures(rows) == {"webhook secret"}
    if secret is None:
        assert "not set" in rows["webhook secret"].detail
    else:
        assert f"at least {MIN_WEBHOOK_SECRET_LENGTH} characters" in rows["webhook secret"].fix
        assert secret not in rows["webhook secret"].detail, "the secret is never shown"


@pytest.mark.parametrize(
    ("url", "state", "detail"),
    [
        (None, State.FAIL, "RUNBOT_PUBLIC_URL is not set"),
        ("http://127.0.0.1:8000", State.FAIL, "GitHub cannot deliver webhooks"),
        ("http://10.1.2.3", State.FAIL, "GitHub cannot deliver webhooks"),
        ("http://runbot.example.com", State.WARN, "plain HTTP"),
    ],
)
def test_public_url(
    healthy_env: dict[str, str],
    checks: Callable[..., dict[str, Row]],
    url: str | None,
    state: State,
    detail: str,
) -> None:
    rows = checks(RUNBOT_PUBLIC_URL=url)
    assert rows["public url"].state is state
    assert detail in rows["public url"].detail
    assert rows["public url"].fix
    assert only_failures(rows) == ({"public url"} if state is State.FAIL else set())


def test_sqlite_with_several_replicas(
    healthy_env: dict[str, str], checks: Callable[..., dict[str, Row]]
) -> None:
    lock = acquire_sqlite_lock(load_settings())  # a running `runbot serve`
    try:
        rows = checks()
        assert rows["processes"].state is State.OK
        assert "a runbot process is running on it" in rows["processes"].detail
        rows = checks(replicas=3)
        assert only_failures(rows) == {"processes"}
        assert "3 replicas planned on SQLite" in rows["processes"].detail
        assert "PostgreSQL" in rows["processes"].fix
    finally:
        assert lock is not None
        lock.close()
    assert "no runbot is running" in checks()["processes"].detail


def test_replicas_flag_through_the_cli(healthy_env: dict[str, str]) -> None:
    result = CliRunner().invoke(cli, ["doctor", "--replicas", "2"])
    assert result.exit_code == 1
    lines = result.output.splitlines()
    [index] = [i for i, line in enumerate(lines) if line.startswith("processes")]
    assert "FAIL" in lines[index]
    fix = lines[index + 1 : index + 3]
    assert fix[0].strip().startswith("fix: set RUNBOT_DATABASE_URL to PostgreSQL"), fix


@pytest.mark.postgres
def test_postgres_before_and_after_migrations(
    healthy_env: dict[str, str], checks: Callable[..., dict[str, Row]], postgres_url: str
) -> None:
    rows = checks(replicas=3, RUNBOT_DATABASE_URL=postgres_url)
    assert only_failures(rows) == set()
    assert "PostgreSQL" in rows["database"].detail
    assert rows["migrations"].state is State.WARN and "pending" in rows["migrations"].detail
    assert rows["processes"].state is State.OK
    Database(postgres_url).migrate()
    rows = checks(replicas=3, RUNBOT_DATABASE_URL=postgres_url)
    assert rows["migrations"].state is State.OK


def test_app_missing_permissions_and_events(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An App created by hand without what runbot needs: core gaps fail, CI-only gaps warn."""
    with FakeGitHub(
        permissions={"contents": "read", "metadata": "read", "pull_requests": "write"},
        events=["pull_request", "issue_comment"],
    ) as fake:
        settings = Settings(
            data_dir=tmp_path / "data",
            templates_dir=TEMPLATES,
            engine="embedded",
            github_app_id=fake.app_id,
            github_private_key=fake.private_key_pem,
            github_webhook_secret=SECRET,
            github_api_url=fake.url,
            github_url=fake.web_url,
            public_url=PUBLIC_URL,
            github_app_slug="someone-else",
        )
        rows = {row.check: row for row in run_checks(settings)}
        assert fake.violations == []
    assert rows["app permissions"].state is State.FAIL
    assert "issues: write" in rows["app permissions"].detail
    assert "deployments: write" in rows["app permissions"].detail
    assert "accept the new permissions" in rows["app permissions"].fix
    assert rows["app events"].state is State.WARN
    assert "check_suite, status" in rows["app events"].detail
    assert rows["github app"].state is State.FAIL
    assert "RUNBOT_GITHUB_APP_SLUG" in rows["github app"].detail


def test_bad_settings_are_one_failing_row(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RUNBOT_MAX_CONCURRENT_RUNS", "lots")
    result = CliRunner().invoke(cli, ["doctor"])
    assert result.exit_code == 1
    assert result.output.splitlines()[1].startswith("settings")
    assert "RUNBOT_MAX_CONCURRENT_RUNS" in result.output
    assert "fix: correct the named RUNBOT_* setting" in result.output


def test_render_shows_fixes_only_for_problems() -> None:
    rows = [
        Row("engine", State.OK, "tofu 1.10.6", fix="never shown"),
        Row("database", State.FAIL, "cannot connect " + "x" * 150, fix="check the URL"),
        Row("public url", State.WARN, "plain HTTP", fix="use TLS"),
    ]
    text = render(rows, width=80)
    assert "never shown" not in text
    lines = text.splitlines()
    assert lines[0].split() == ["CHECK", "STATE", "DETAIL"]
    database = next(i for i, line in enumerate(lines) if line.startswith("database"))
    assert all(len(line) <= 80 for line in lines)
    assert "fix: check the URL" in "\n".join(lines[database + 1 : database + 4])
    assert "fix: use TLS" in text
    assert lines[-1] == "3 checks: 1 ok, 1 warning(s), 1 failed"
