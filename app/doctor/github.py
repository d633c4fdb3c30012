"""The doctor's checks of the GitHub side: the App, its permissions and events, webhooks."""

from __future__ import annotations

import asyncio
import ipaddress
import re
from typing import Any
from urllib.parse import urlsplit

from app.doctor.report import Row, fail, ok, warn
from app.settings import Settings, SettingsError
from app.setup import EVENTS, PERMISSIONS

#: GitHub's manifest flow generates 40 characters; anything much shorter is guessable.
MIN_WEBHOOK_SECRET_LENGTH = 32
#: Permissions and events only `wait_for_ci` needs: missing ones are a warning, not a failure.
CI_PERMISSIONS = frozenset({"statuses"})
CI_EVENTS = frozenset({"check_suite", "status"})
_LEVELS = ("none", "read", "write", "admin")


def check_github_app(settings: Settings) -> list[Row]:
    """Credentials (JWT -> GET /app), then the App's permissions and events."""
    has_key = bool(settings.github_private_key or settings.github_private_key_path)
    if not settings.github_app_id and not has_key:
        return [
            warn(
                "github app",
                "not configured: local mode, GitHub writes go to the outbox",
                "run `runbot setup` to create the App and write its credentials",
            )
        ]
    if not settings.github_app_id or not has_key:
        missing = "RUNBOT_GITHUB_APP_ID" if not settings.github_app_id else "a private key"
        return [
            fail(
                "github app",
                f"half configured: {missing} is missing, so runbot runs in local mode",
                "set RUNBOT_GITHUB_APP_ID and RUNBOT_GITHUB_PRIVATE_KEY (or _PATH) together;"
                " `runbot setup` writes both",
            )
        ]
    key_problem = _private_key_problem(settings)
    if key_problem is not None:
        return [
            fail(
                "github app",
                key_problem,
                "use the .pem file from the App's settings page (Private keys > Generate a"
                " private key); in an env file write its line breaks as \\n, or mount the file"
                " and set RUNBOT_GITHUB_PRIVATE_KEY_PATH",
            )
        ]
    try:
        app = asyncio.run(_get_app(settings))
    except Exception as exc:  # any failure here is the row's result, never a crash
        return [_github_failure(settings, exc)]
    name, slug = str(app.get("name", "")), str(app.get("slug", ""))
    settings_url = str(app.get("html_url") or f"{settings.github_url}/apps/{slug}")
    rows = [
        ok(
            "github app",
            f"{name} ({slug}, id {app.get('id')}) answers GET /app at {settings.github_api_url};"
            f" {app.get('installations_count', '?')} installation(s)",
        )
    ]
    if settings.github_app_slug and slug and settings.github_app_slug != slug:
        rows[0] = fail(
            "github app",
            f"RUNBOT_GITHUB_APP_SLUG is {settings.github_app_slug!r} but the App's slug is"
            f" {slug!r}, so `@{slug}` commands would be ignored",
            f"set RUNBOT_GITHUB_APP_SLUG={slug} or leave it unset (runbot asks GitHub)",
        )
    rows.append(_permissions_row(app, settings_url))
    rows.append(_events_row(app, settings_url))
    return rows


def _private_key_problem(settings: Settings) -> str | None:
    from cryptography.hazmat.primitives.asymmetric import rsa
    from cryptography.hazmat.primitives.serialization import load_pem_private_key

    source = (
        "RUNBOT_GITHUB_PRIVATE_KEY_PATH"
        if settings.github_private_key_path
        else "RUNBOT_GITHUB_PRIVATE_KEY"
    )
    try:
        pem = settings.private_key or ""
    except SettingsError as exc:
        return str(exc)
    try:
        key = load_pem_private_key(pem.strip().encode(), password=None)
    except (ValueError, TypeError):
        return (
            f"{source} is not a PEM private key: it must be the whole file, from"
            " -----BEGIN RSA PRIVATE KEY----- to -----END RSA PRIVATE KEY-----"
        )
    if not isinstance(key, rsa.RSAPrivateKey):
        return f"{source} is not an RSA key; GitHub Apps sign their JWT with RS256"
    return None


async def _get_app(settings: Settings) -> dict[str, Any]:
    from app.github.appgateway import GitHubAppGateway

    gateway = GitHubAppGateway(settings)
    try:
        return await gateway.get_app()
    finally:
        await gateway.aclose()


def _github_failure(settings: Settings, exc: Exception) -> Row:
    from app.github.gateway import NotFoundOnGitHub, RetryLater

    message = " ".join(str(exc).split())
    app_id = settings.github_app_id
    if isinstance(exc, RetryLater):
        return fail(
            "github app",
            f"cannot reach {settings.github_api_url}: {message}",
            "check RUNBOT_GITHUB_API_URL (GitHub Enterprise Server: https://<host>/api/v3) and"
            " this machine's outbound HTTPS (proxy, firewall)",
        )
    if isinstance(exc, NotFoundOnGitHub):
        return fail(
            "github app",
            f"GitHub knows no App with id {app_id}: {message}",
            "set RUNBOT_GITHUB_APP_ID to the App ID shown on the App's settings page",
        )
    if re.search(r"\b401\b", message):
        return fail(
            "github app",
            f"GitHub rejected the App's JWT: the private key does not belong to App {app_id}"
            f" ({message})",
            f"generate a new private key on App {app_id}'s settings page and set it as"
            " RUNBOT_GITHUB_PRIVATE_KEY (or _PATH); check RUNBOT_GITHUB_APP_ID and this"
            " machine's clock",
        )
    return fail(
        "github app",
        f"GET /app failed: {type(exc).__name__}: {message}",
        "check RUNBOT_GITHUB_APP_ID, the private key and RUNBOT_GITHUB_API_URL",
    )


def _level(value: object) -> int:
    return _LEVELS.index(value) if value in _LEVELS else 0


def _permissions_row(app: dict[str, Any], settings_url: str) -> Row:
    granted = app.get("permissions") or {}
    short = [
        f"{name}: {access}"
        for name, (access, _) in PERMISSIONS.items()
        if _level(granted.get(name, "none")) < _level(access)
    ]
    fix = (
        f"add them at {settings_url} (App settings > Permissions & events), then accept the"
        " new permissions on each installation"
    )
    if not short:
        return ok("app permissions", "all granted: " + ", ".join(PERMISSIONS))
    core = [item for item in short if item.split(":")[0] not in CI_PERMISSIONS]
    if core:
        return fail("app permissions", "missing " + ", ".join(short), fix)
    return warn(
        "app permissions", "missing " + ", ".join(short) + ": `wait_for_ci` cannot work", fix
    )


def _events_row(app: dict[str, Any], settings_url: str) -> Row:
    subscribed = set(app.get("events") or [])
    missing = [event for event in EVENTS if event not in subscribed]
    fix = f"subscribe to them at {settings_url} (App settings > Permissions & events)"
    if not missing:
        return ok("app events", "subscribed: " + ", ".join(EVENTS))
    if any(event not in CI_EVENTS for event in missing):
        return fail("app events", "not subscribed: " + ", ".join(missing), fix)
    return warn(
        "app events",
        "not subscribed: " + ", ".join(missing) + ": `wait_for_ci` waits for the next resync",
        fix,
    )


def check_webhook_secret(settings: Settings) -> Row:
    secret = settings.github_webhook_secret
    if not secret:
        if settings.local_mode:
            return ok(
                "webhook secret",
                f"local mode: generated in {settings.data_dir / 'webhook-secret'}",
            )
        return fail(
            "webhook secret",
            "RUNBOT_GITHUB_WEBHOOK_SECRET is not set; runbot refuses to start without it",
            "set it to the App's webhook secret (`runbot setup` writes it)",
        )
    if len(secret) < MIN_WEBHOOK_SECRET_LENGTH:
        return fail(
            "webhook secret",
            f"only {len(secret)} characters: a short secret can be guessed, and then anyone can"
            " send runbot forged webhooks",
            f"generate a random secret of at least {MIN_WEBHOOK_SECRET_LENGTH} characters and set"
            " it both in the App's settings (Webhook secret) and as RUNBOT_GITHUB_WEBHOOK_SECRET",
        )
    return ok("webhook secret", f"set ({len(secret)} characters)")


def _local_host(host: str) -> bool:
    """True for addresses GitHub's servers cannot reach (loopback, private, link-local)."""
    host = host.lower().rstrip(".")
    if host == "localhost" or host.endswith(".localhost"):
        return True
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        return False
    return (
        address.is_loopback or address.is_private or address.is_link_local or address.is_unspecified
    )


def local_address_problem(url: str) -> str | None:
    """Why GitHub could not deliver webhooks to `url`, or None (shared with `runbot setup`)."""
    if _local_host(urlsplit(url).hostname or ""):
        return f"{url} is a local address: GitHub cannot deliver webhooks to it"
    return None


def check_public_url(settings: Settings) -> Row:
    url = settings.public_url
    explicit = "public_url" in settings.model_fields_set
    if settings.local_mode:
        note = "" if explicit else " (the default)"
        return ok("public url", f"{url}{note}; local mode only uses it for links")
    if not explicit:
        return fail(
            "public url",
            f"RUNBOT_PUBLIC_URL is not set, so PR comments would link to {url}",
            "set RUNBOT_PUBLIC_URL to the https:// address GitHub and your users reach runbot at",
        )
    problem = local_address_problem(url)
    if problem:
        return fail(
            "public url",
            problem,
            "set RUNBOT_PUBLIC_URL to a public https:// address (a reverse proxy or tunnel in"
            " front of port 8000), and the App's webhook URL to <that>/webhooks/github",
        )
    if url.startswith("http://"):
        return warn(
            "public url",
            f"{url} is plain HTTP: webhook bodies and dashboard sessions travel unencrypted",
            "put a TLS-terminating proxy in front and use its https:// address",
        )
    return ok("public url", f"{url}; webhooks go to {url}/webhooks/github")
