"""`runbot setup`: create runbot's GitHub App from a manifest, the way Probot does.

GitHub's manifest flow needs a browser: a page POSTs the manifest to GitHub, the person confirms
(and may rename the App), GitHub redirects back with a one-time `code`, and exchanging that code
returns the App's credentials. Nobody copies a private key or webhook secret by hand, and the App
gets exactly the permissions runbot needs and no more.

The setup page is served on loopback only: the browser that opens it runs on the same machine,
and the redirect back carries a code worth an App's private key.
"""

from __future__ import annotations

import hmac
import html
import json
import os
import re
import secrets
import tempfile
import threading
from collections.abc import Mapping
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, quote, urlencode, urlsplit

import httpx

__all__ = [
    "AUTOMATIC_EVENTS",
    "EVENTS",
    "PERMISSIONS",
    "ManifestFlow",
    "SetupError",
    "SetupResult",
    "api_url_for",
    "build_manifest",
    "env_values",
    "read_env_keys",
    "write_env",
]

#: Repository permissions the App asks for: name -> (access, why). Kept next to the reason so the
#: docs (docs/github-app.md) and a test can check that every permission is justified.
PERMISSIONS: dict[str, tuple[str, str]] = {
    "contents": (
        "read",
        "read `.runbot.yml` and repository-stored stacks from the default branch",
    ),
    "metadata": (
        "read",
        "mandatory for every App; list the installed repositories and read a commenter's"
        " permission before obeying a `/runbot` command",
    ),
    "pull_requests": (
        "write",
        "receive `pull_request` events, list open pull requests to heal missed webhooks, and"
        " comment on pull requests",
    ),
    "issues": (
        "write",
        "receive `issue_comment` events, keep the one status comment per PR up to date and react"
        " to `/runbot` commands (PR conversation comments are issue comments)",
    ),
    "deployments": (
        "write",
        "create a Deployment per environment and set its status and URL",
    ),
    "checks": (
        "write",
        "keep the `runbot` check run on each PR's head commit; `wait_for_ci`: read the head"
        " commit's check suites and receive `check_suite` events",
    ),
    "statuses": (
        "read",
        "`wait_for_ci`: read the head commit's commit statuses and receive `status` events",
    ),
}

#: Events the App subscribes to: name -> why.
EVENTS: dict[str, str] = {
    "pull_request": "opened, reopened, ready for review, pushed to (synchronize), closed, labels",
    "issue_comment": "`/runbot` commands in PR comments",
    "check_suite": "`wait_for_ci`: deploy when the head commit's checks complete",
    "status": "`wait_for_ci`: deploy when the head commit's statuses turn green",
}

#: Events GitHub sends every App without a subscription. GitHub *rejects* a manifest that lists
#: them in `default_events` ("Default events unsupported: installation"), so they are not in it.
AUTOMATIC_EVENTS: dict[str, str] = {
    "installation": "an installation is created, deleted, suspended or accepts new permissions",
    "installation_repositories": "repositories are added to or removed from an installation",
}

#: Path the dashboard's "Sign in with GitHub" returns to; it goes into the App's callback URLs.
OAUTH_CALLBACK_PATH = "/auth/github/callback"
WEBHOOK_PATH = "/webhooks/github"
CALLBACK_PATH = "/callback"
GITHUB_COM = "https://github.com"
GITHUB_COM_API = "https://api.github.com"
API_VERSION = "2022-11-28"

#: Keys `runbot setup` owns in the env file, in the order they are written.
APP_KEYS = (
    "RUNBOT_GITHUB_APP_ID",
    "RUNBOT_GITHUB_APP_SLUG",
    "RUNBOT_GITHUB_PRIVATE_KEY",
    "RUNBOT_GITHUB_WEBHOOK_SECRET",
    "RUNBOT_GITHUB_CLIENT_ID",
    "RUNBOT_GITHUB_CLIENT_SECRET",
)


class SetupError(Exception):
    """The setup could not finish; the message says what happened and what to do."""


@dataclass(frozen=True)
class SetupResult:
    """What the exchange produced (never the secrets themselves)."""

    app_id: int
    slug: str
    name: str
    html_url: str
    env_file: Path
    written: tuple[str, ...]

    @property
    def install_url(self) -> str:
        return f"{self.html_url.rstrip('/')}/installations/new"


# ----- the manifest (pure) -------------------------------------------------------------------


def api_url_for(github_url: str) -> str:
    """GitHub.com's API lives on its own host; GitHub Enterprise Server's under /api/v3."""
    github_url = github_url.rstrip("/")
    if github_url == GITHUB_COM:
        return GITHUB_COM_API
    return f"{github_url}/api/v3"


def build_manifest(name: str, public_url: str, redirect_url: str) -> dict[str, Any]:
    """The App manifest GitHub creates the App from."""
    public_url = public_url.rstrip("/")
    return {
        "name": name,
        "url": public_url,
        "description": "An ephemeral environment for every pull request, built with OpenTofu.",
        "hook_attributes": {"url": f"{public_url}{WEBHOOK_PATH}", "active": True},
        "redirect_url": redirect_url,
        "callback_urls": [f"{public_url}{OAUTH_CALLBACK_PATH}"],
        "public": False,
        "request_oauth_on_install": False,
        "default_permissions": {name: access for name, (access, _) in PERMISSIONS.items()},
        "default_events": list(EVENTS),
    }


def new_app_url(github_url: str, org: str | None, state: str) -> str:
    """Where the manifest is posted: the user's or the organization's "new App" page."""
    base = github_url.rstrip("/")
    where = f"/organizations/{quote(org, safe='')}" if org else ""
    return f"{base}{where}/settings/apps/new?{urlencode({'state': state})}"


def setup_page(action: str, manifest: Mapping[str, Any]) -> str:
    """The local page: one button that posts the manifest to GitHub."""
    value = html.escape(json.dumps(manifest), quote=True)
    name = html.escape(str(manifest.get("name", "")))
    hook = html.escape(str(manifest["hook_attributes"]["url"]))
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>runbot setup</title></head>
<body style="font-family: sans-serif; max-width: 40em; margin: 3em auto">
<h1>Create the runbot GitHub App</h1>
<p>GitHub will create the App <b>{name}</b> (you can rename it on the next page), with webhooks
sent to <code>{hook}</code>, then send you back here. runbot stores its credentials in your
env file.</p>
<form id="manifest" action="{html.escape(action, quote=True)}" method="post">
<input type="hidden" name="manifest" value="{value}">
<button type="submit">Create the GitHub App on {html.escape(urlsplit(action).netloc)}</button>
</form>
</body></html>
"""


def env_values(
    app: Mapping[str, Any], public_url: str, github_url: str, api_url: str
) -> dict[str, str]:
    """The env file entries for a converted manifest; non-default GitHub URLs (GHES) included."""
    missing = [
        key
        for key in ("id", "slug", "pem", "webhook_secret", "client_id", "client_secret")
        if not app.get(key)
    ]
    if missing:
        raise SetupError(
            "GitHub's answer to the manifest exchange lacks " + ", ".join(missing) + "."
        )
    values = {
        "RUNBOT_GITHUB_APP_ID": str(int(app["id"])),
        "RUNBOT_GITHUB_APP_SLUG": str(app["slug"]),
        "RUNBOT_GITHUB_PRIVATE_KEY": str(app["pem"]),
        "RUNBOT_GITHUB_WEBHOOK_SECRET": str(app["webhook_secret"]),
        "RUNBOT_GITHUB_CLIENT_ID": str(app["client_id"]),
        "RUNBOT_GITHUB_CLIENT_SECRET": str(app["client_secret"]),
        "RUNBOT_PUBLIC_URL": public_url.rstrip("/"),
    }
    if github_url.rstrip("/") != GITHUB_COM:
        values["RUNBOT_GITHUB_URL"] = github_url.rstrip("/")
    if api_url.rstrip("/") != GITHUB_COM_API:
        values["RUNBOT_GITHUB_API_URL"] = api_url.rstrip("/")
    return values


# ----- the env file --------------------------------------------------------------------------

_BARE = re.compile(r"[A-Za-z0-9_./:@+=,-]*")
_ASSIGNMENT = re.compile(r"\s*(?:export\s+)?([A-Za-z_][A-Za-z0-9_]*)\s*=\s*(.*)")


def _quote(value: str) -> str:
    """Format a value so python-dotenv, Docker Compose and a POSIX shell all read it back.

    Multi-line values (the PEM) go in double quotes with `\\n` escapes: dotenv and compose turn
    them into line breaks, and runbot turns a literal `\\n` into one too.
    """
    if _BARE.fullmatch(value):
        return value
    if "\n" not in value and "'" not in value and "\\" not in value:
        return f"'{value}'"  # no escapes, no ${...} interpolation
    if "$" in value or "`" in value:
        raise SetupError("refusing to write a multi-line value containing $ or ` to the env file")
    escaped = value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")
    return f'"{escaped}"'


def _opens_quote(rest: str) -> bool:
    """True when a value starts a quoted string that continues on the next line."""
    rest = rest.strip()
    if not rest or rest[0] not in "\"'":
        return False
    quote_char, body = rest[0], rest[1:]
    escaped = False
    for char in body:
        if escaped:
            escaped = False
        elif char == "\\" and quote_char == '"':
            escaped = True
        elif char == quote_char:
            return False
    return True


def _closes_quote(line: str, quote_char: str) -> bool:
    escaped = False
    for char in line:
        if escaped:
            escaped = False
        elif char == "\\" and quote_char == '"':
            escaped = True
        elif char == quote_char:
            return True
    return False


def read_env_keys(path: Path) -> set[str]:
    """The keys an env file assigns (values are not interpreted)."""
    if not path.exists():
        return set()
    keys: set[str] = set()
    continuation: str | None = None
    for line in path.read_text(encoding="utf-8").splitlines():
        if continuation is not None:
            if _closes_quote(line, continuation):
                continuation = None
            continue
        match = _ASSIGNMENT.fullmatch(line)
        if match and not line.lstrip().startswith("#"):
            keys.add(match.group(1))
            if _opens_quote(match.group(2)):
                continuation = match.group(2).strip()[0]
    return keys


def write_env(path: Path, values: Mapping[str, str | None], header: str = "") -> None:
    """Set (or, for None, remove) keys in an env file, keeping every other line as it was.

    The file holds a private key, so it is written to a temporary file created with mode 0600 and
    renamed over the original: no moment exists where the secrets are readable by others.
    """
    lines = path.read_text(encoding="utf-8").splitlines() if path.exists() else []
    kept: list[str] = []
    done: set[str] = set()
    continuation: str | None = None
    for line in lines:
        if continuation is not None:
            if _closes_quote(line, continuation):
                continuation = None
            continue
        match = _ASSIGNMENT.fullmatch(line)
        key = match.group(1) if match and not line.lstrip().startswith("#") else None
        if key is None or key not in values:
            kept.append(line)
            continue
        if match and _opens_quote(match.group(2)):
            continuation = match.group(2).strip()[0]
        value = values[key]
        if value is not None and key not in done:
            kept.append(f"{key}={_quote(value)}")
        done.add(key)
    added = [(k, v) for k, v in values.items() if v is not None and k not in done]
    if added:
        if kept and kept[-1].strip():
            kept.append("")
        if header:
            kept.append(f"# {header}")
        kept.extend(f"{key}={_quote(value)}" for key, value in added)
    text = "\n".join(kept) + "\n"
    path = path.absolute()
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, temporary = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        os.fchmod(fd, 0o600)
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(text)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise
    os.chmod(path, 0o600)


# ----- the local server ----------------------------------------------------------------------


class ManifestFlow:
    """Serves the setup page on loopback, takes GitHub's redirect and exchanges the code.

    One flow creates one App: after a successful exchange the callback answers 410.
    """

    def __init__(
        self,
        *,
        github_url: str,
        api_url: str,
        public_url: str,
        env_file: Path,
        name: str,
        org: str | None = None,
        port: int = 0,
    ) -> None:
        self.github_url = github_url.rstrip("/")
        self.api_url = api_url.rstrip("/")
        self.public_url = public_url.rstrip("/")
        self.env_file = env_file
        self.name = name
        self.org = org
        self.state = secrets.token_urlsafe(24)
        self.result: SetupResult | None = None
        self.error: SetupError | None = None
        self.finished = threading.Event()
        self._exchange_lock = threading.Lock()
        self._server = ThreadingHTTPServer(("127.0.0.1", port), self._handler_class())
        self._server.daemon_threads = True
        self._thread: threading.Thread | None = None

    @property
    def port(self) -> int:
        return int(self._server.server_address[1])

    @property
    def local_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/"

    @property
    def redirect_url(self) -> str:
        return f"http://127.0.0.1:{self.port}{CALLBACK_PATH}"

    def manifest(self) -> dict[str, Any]:
        return build_manifest(self.name, self.public_url, self.redirect_url)

    def start(self) -> ManifestFlow:
        self._thread = threading.Thread(
            target=self._server.serve_forever, name="runbot-setup", daemon=True
        )
        self._thread.start()
        return self

    def wait(self, timeout: float) -> SetupResult:
        """Block until GitHub's redirect was handled; raise SetupError on failure or timeout."""
        if not self.finished.wait(timeout):
            raise SetupError(
                f"no answer from GitHub within {timeout:.0f} s; run `runbot setup` again"
            )
        if self.error is not None:
            raise self.error
        assert self.result is not None
        return self.result

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        if self._thread is not None:
            self._thread.join(timeout=5)

    # -- request handling

    def page(self) -> str:
        return setup_page(new_app_url(self.github_url, self.org, self.state), self.manifest())

    def callback(self, query: Mapping[str, list[str]]) -> tuple[int, str]:
        """Handle GitHub's redirect; returns (HTTP status, HTML message)."""
        state = (query.get("state") or [""])[0]
        code = (query.get("code") or [""])[0]
        if not hmac.compare_digest(state.encode(), self.state.encode()):
            # Not from the page this process served: ignore it and keep waiting.
            return 400, "This link does not belong to the running `runbot setup`."
        if not re.fullmatch(r"[A-Za-z0-9_-]{1,100}", code):
            return 400, "GitHub's redirect carries no usable code."
        with self._exchange_lock:
            if self.finished.is_set():
                return 410, "This setup is already finished; see the terminal."
            try:
                self.result = self.exchange(code)
            except SetupError as exc:
                self.error = exc
                return 502, html.escape(str(exc))
            finally:
                self.finished.set()
        install = html.escape(self.result.install_url, quote=True)
        return 200, (
            f"Created the GitHub App <b>{html.escape(self.result.name)}</b>; its credentials are"
            f" in {html.escape(str(self.env_file))}.</p><p>Now "
            f'<a href="{install}">install it on your repositories</a>.'
        )

    def exchange(self, code: str) -> SetupResult:
        """POST /app-manifests/{code}/conversions, then write the env file."""
        url = f"{self.api_url}/app-manifests/{code}/conversions"
        try:
            response = httpx.post(
                url,
                headers={
                    "Accept": "application/vnd.github+json",
                    "X-GitHub-Api-Version": API_VERSION,
                    "User-Agent": "runbot-setup",
                },
                timeout=30,
            )
        except httpx.HTTPError as exc:
            raise SetupError(
                f"cannot reach {self.api_url} to exchange the code ({exc}). GitHub has created"
                f" the App: delete it at {self.github_url}/settings/apps and run `runbot setup`"
                " again."
            ) from None
        if response.status_code != 201:
            raise SetupError(
                f"GitHub refused the code exchange ({response.status_code}"
                f" {response.text[:200]}). Codes expire after one hour and work once: delete the"
                f" App at {self.github_url}/settings/apps and run `runbot setup` again."
            )
        try:
            app = response.json()
        except ValueError:
            raise SetupError("GitHub answered the code exchange with something not JSON.") from None
        if not isinstance(app, dict):
            raise SetupError("GitHub answered the code exchange with something not an object.")
        values = env_values(app, self.public_url, self.github_url, self.api_url)
        write_env(
            self.env_file,
            {**values, "RUNBOT_GITHUB_PRIVATE_KEY_PATH": None},
            header=f"GitHub App {app['slug']} (id {app['id']}), written by `runbot setup`",
        )
        html_url = str(app.get("html_url") or f"{self.github_url}/apps/{app['slug']}")
        return SetupResult(
            app_id=int(app["id"]),
            slug=str(app["slug"]),
            name=str(app.get("name") or app["slug"]),
            html_url=html_url,
            env_file=self.env_file,
            written=tuple(values),
        )

    def _handler_class(self) -> type[BaseHTTPRequestHandler]:
        flow = self

        class Handler(BaseHTTPRequestHandler):
            server_version = "runbot-setup"

            def do_GET(self) -> None:
                parts = urlsplit(self.path)
                if parts.path == "/":
                    self._send(200, flow.page())
                elif parts.path == CALLBACK_PATH:
                    status, message = flow.callback(parse_qs(parts.query))
                    self._send(status, _message_page(message))
                else:
                    self._send(404, _message_page("Not found."))

            def _send(self, status: int, body: str) -> None:
                data = body.encode()
                self.send_response(status)
                self.send_header("Content-Type", "text/html; charset=utf-8")
                self.send_header("Content-Length", str(len(data)))
                self.send_header("Cache-Control", "no-store")
                self.send_header("Referrer-Policy", "no-referrer")
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, format: str, *args: Any) -> None:
                """Quiet: the redirect's query string holds the one-time code."""

        return Handler


def _message_page(message: str) -> str:
    return (
        '<!doctype html><html lang="en"><head><meta charset="utf-8"><title>runbot setup</title>'
        '</head><body style="font-family: sans-serif; max-width: 40em; margin: 3em auto">'
        f"<h1>runbot setup</h1><p>{message}</p></body></html>\n"
    )
