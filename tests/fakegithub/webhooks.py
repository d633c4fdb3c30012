"""Real GitHub webhook payloads for tests, and a way to deliver them signed.

Fixtures under ``tests/fixtures/webhooks`` are GitHub's published examples
(see ``vendor/extract.py``).  The ``make_*`` helpers edit a copy of one so a
test gets a payload for *its* repository/PR while keeping every field GitHub
sends; each result is validated against the webhook schema, so a helper can
never hand out a payload GitHub would not send.
"""

from __future__ import annotations

import base64
import copy
import hashlib
import hmac
import json
import uuid
from collections.abc import Iterable, Mapping
from functools import cache
from pathlib import Path
from typing import Any

import httpx

from . import schema

FIXTURES_DIR = Path(__file__).resolve().parents[1] / "fixtures" / "webhooks"
HOOKSHOT_USER_AGENT = "GitHub-Hookshot/a1b2c3d"
GITHUB_API = "https://api.github.com"
GITHUB_WEB = "https://github.com"


@cache
def _read_fixture(name: str) -> str:
    path = FIXTURES_DIR / f"{name}.json"
    if not path.is_file():
        known = sorted(p.stem for p in FIXTURES_DIR.glob("*.json"))
        raise FileNotFoundError(f"no webhook fixture {name!r}; have {known}")
    return path.read_text(encoding="utf-8")


def load_fixture(
    event: str, action: str | None = None, variant: str | None = None
) -> dict[str, Any]:
    """A fresh copy of ``tests/fixtures/webhooks/<event>[.<action>][.<variant>].json``.

    The only variant is ``load_fixture("issue_comment", "created", "on_pull_request")``.
    """
    name = ".".join(part for part in (event, action, variant) if part)
    return json.loads(_read_fixture(name))


def fixture_names() -> list[str]:
    """Stems of every vendored fixture, e.g. ``"pull_request.opened"``."""
    return sorted(p.stem for p in FIXTURES_DIR.glob("*.json"))


def schema_key(fixture_name: str) -> str:
    """The webhook-schema key for a fixture stem (drops a ``variant`` suffix)."""
    return ".".join(fixture_name.split(".")[:2])


def encode(payload: Mapping[str, Any]) -> bytes:
    """Serialize a payload as the bytes GitHub would send (and sign)."""
    return json.dumps(payload, separators=(",", ":")).encode()


def sign(body: bytes, secret: str) -> str:
    """The ``X-Hub-Signature-256`` value for *body*: ``sha256=<hex hmac>``."""
    return "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


def webhook_headers(
    event: str, body: bytes, secret: str, delivery_id: str | None = None, *, hook_id: int = 1
) -> dict[str, str]:
    """The headers GitHub sends with a delivery (for tests using an in-process client)."""
    return {
        "Content-Type": "application/json",
        "User-Agent": HOOKSHOT_USER_AGENT,
        "X-GitHub-Event": event,
        "X-GitHub-Delivery": delivery_id or str(uuid.uuid4()),
        "X-GitHub-Hook-ID": str(hook_id),
        "X-GitHub-Hook-Installation-Target-ID": "1",
        "X-GitHub-Hook-Installation-Target-Type": "integration",
        "X-Hub-Signature-256": sign(body, secret),
    }


def deliver(
    url: str,
    event: str,
    payload: Mapping[str, Any],
    secret: str,
    delivery_id: str | None = None,
    *,
    client: httpx.Client | None = None,
    timeout: float = 10.0,
) -> httpx.Response:
    """POST a signed delivery to *url* the way GitHub's Hookshot does."""
    body = encode(payload)
    headers = webhook_headers(event, body, secret, delivery_id)
    if client is not None:
        return client.post(url, content=body, headers=headers)
    with httpx.Client(timeout=timeout, trust_env=False) as own:
        return own.post(url, content=body, headers=headers)


async def adeliver(
    url: str,
    event: str,
    payload: Mapping[str, Any],
    secret: str,
    delivery_id: str | None = None,
    *,
    client: httpx.AsyncClient | None = None,
    timeout: float = 10.0,
) -> httpx.Response:
    """Async :func:`deliver` (for bots served in the test's own event loop)."""
    body = encode(payload)
    headers = webhook_headers(event, body, secret, delivery_id)
    if client is not None:
        return await client.post(url, content=body, headers=headers)
    async with httpx.AsyncClient(timeout=timeout, trust_env=False) as own:
        return await own.post(url, content=body, headers=headers)


# ---------------------------------------------------------------------- builders


def _stable_id(*parts: object) -> int:
    """Deterministic ids so repeated events for one PR agree with each other."""
    return int(hashlib.sha1(":".join(map(str, parts)).encode()).hexdigest()[:8], 16)


def _fake_sha(*parts: object) -> str:
    return hashlib.sha1(":".join(map(str, parts)).encode()).hexdigest()


def _node_id(kind: str, ident: int) -> str:
    return base64.b64encode(f"0{len(kind)}:{kind}{ident}".encode()).decode()


def _replace(node: Any, pairs: list[tuple[str, str]]) -> Any:
    if isinstance(node, dict):
        return {k: _replace(v, pairs) for k, v in node.items()}
    if isinstance(node, list):
        return [_replace(v, pairs) for v in node]
    if isinstance(node, str):
        for old, new in pairs:
            node = node.replace(old, new)
    return node


def _user(
    template: Mapping[str, Any], login: str, api: str, web: str, type: str = "User"
) -> dict[str, Any]:
    """Re-target a webhook user object at *login*, keeping the template's field set."""
    ident = _stable_id("user", login.lower())
    user = dict(template)
    user.update(
        login=login,
        id=ident,
        node_id=_node_id(type, ident),
        avatar_url=f"https://avatars.githubusercontent.com/u/{ident}?v=4",
        gravatar_id="",
        url=f"{api}/users/{login}",
        html_url=f"{web}/{login}",
        followers_url=f"{api}/users/{login}/followers",
        following_url=f"{api}/users/{login}/following{{/other_user}}",
        gists_url=f"{api}/users/{login}/gists{{/gist_id}}",
        starred_url=f"{api}/users/{login}/starred{{/owner}}{{/repo}}",
        subscriptions_url=f"{api}/users/{login}/subscriptions",
        organizations_url=f"{api}/users/{login}/orgs",
        repos_url=f"{api}/users/{login}/repos",
        events_url=f"{api}/users/{login}/events{{/privacy}}",
        received_events_url=f"{api}/users/{login}/received_events",
        type=type,
        site_admin=False,
    )
    return user


def _retarget(payload: dict[str, Any], repo: str, api: str, web: str) -> tuple[dict[str, Any], str]:
    """Point every URL and name in a fixture at *repo* on *api*/*web*."""
    old = payload["repository"]["full_name"]
    pairs = [(f"{GITHUB_API}/", f"{api}/"), (f"{GITHUB_WEB}/", f"{web}/"), (old, repo)]
    if api != GITHUB_API:
        pairs.append((GITHUB_API, api))
    if web != GITHUB_WEB:
        pairs.append((GITHUB_WEB, web))
    return _replace(payload, pairs), old


def _repository(
    template: Mapping[str, Any],
    full_name: str,
    repo_id: int,
    api: str,
    web: str,
    *,
    private: bool,
    fork: bool = False,
    default_branch: str = "main",
) -> dict[str, Any]:
    owner, name = full_name.split("/", 1)
    body = _replace(dict(template), [(template["full_name"], full_name)])
    body.update(
        id=repo_id,
        node_id=_node_id("Repository", repo_id),
        name=name,
        full_name=full_name,
        owner=_user(template["owner"], owner, api, web, template["owner"].get("type", "User")),
        private=private,
        fork=fork,
        default_branch=default_branch,
    )
    if "visibility" in body:
        body["visibility"] = "private" if private else "public"
    return body


def _label(template: Mapping[str, Any] | None, repo: str, name: str, api: str) -> dict[str, Any]:
    ident = _stable_id("label", repo, name)
    label = dict(template or {})
    label.update(
        id=ident,
        node_id=_node_id("Label", ident),
        url=f"{api}/repos/{repo}/labels/{name}",
        name=name,
        color=_fake_sha(name)[:6],
        default=False,
        description=None,
        # Newer descriptions (githubkit's webhook models) require these two.
        archived_at=None,
        archived_by=None,
    )
    return label


def _installation(installation_id: int) -> dict[str, Any]:
    return {
        "id": installation_id,
        "node_id": _node_id("Integration::Installation", installation_id),
    }


def _label_template() -> dict[str, Any]:
    return dict(load_fixture("pull_request", "labeled")["label"])


def make_pull_request_event(
    action: str,
    repo: str = "octo-org/hello",
    number: int = 1,
    head_sha: str | None = None,
    head_ref: str = "feature",
    author: str = "octocat",
    fork: bool = False,
    draft: bool = False,
    labels: Iterable[str] = (),
    installation_id: int = 1,
    *,
    base_ref: str = "main",
    base_sha: str | None = None,
    title: str | None = None,
    body: str | None = None,
    merged: bool = False,
    label: str | None = None,
    before: str | None = None,
    sender: str | None = None,
    repo_id: int | None = None,
    pull_id: int | None = None,
    private: bool = False,
    api_url: str = GITHUB_API,
    web_url: str = GITHUB_WEB,
) -> dict[str, Any]:
    """A schema-valid ``pull_request`` payload for *action*, edited from the real fixture.

    *label* is the label added/removed (``labeled``/``unlabeled``; defaults to
    the last of *labels*); *before* is the previous head (``synchronize``).
    """
    api, web = api_url.rstrip("/"), web_url.rstrip("/")
    payload, _ = _retarget(load_fixture("pull_request", action), repo, api, web)
    head_sha = head_sha or _fake_sha(repo, number, head_ref)
    base_sha = base_sha or _fake_sha(repo, base_ref)
    repo_id = repo_id if repo_id is not None else _stable_id("repo", repo.lower())
    pull_id = pull_id if pull_id is not None else _stable_id("pull", repo.lower(), number)
    owner, name = repo.split("/", 1)
    labels = list(labels)
    user_tpl = payload["sender"]

    base_repo = _repository(
        payload["pull_request"]["base"]["repo"], repo, repo_id, api, web, private=private
    )
    head_full = f"{author}/{name}" if fork else repo
    head_repo = (
        _repository(
            payload["pull_request"]["head"]["repo"],
            head_full,
            _stable_id("repo", head_full.lower()),
            api,
            web,
            private=private,
            fork=True,
        )
        if fork
        else copy.deepcopy(base_repo)
    )
    rest, html = f"{api}/repos/{repo}", f"{web}/{repo}"
    pr = payload["pull_request"]
    closed = action == "closed"
    stamp = pr["updated_at"]
    pr.update(
        url=f"{rest}/pulls/{number}",
        id=pull_id,
        node_id=_node_id("PullRequest", pull_id),
        html_url=f"{html}/pull/{number}",
        diff_url=f"{html}/pull/{number}.diff",
        patch_url=f"{html}/pull/{number}.patch",
        issue_url=f"{rest}/issues/{number}",
        commits_url=f"{rest}/pulls/{number}/commits",
        review_comments_url=f"{rest}/pulls/{number}/comments",
        review_comment_url=f"{rest}/pulls/comments{{/number}}",
        comments_url=f"{rest}/issues/{number}/comments",
        statuses_url=f"{rest}/statuses/{head_sha}",
        number=number,
        state="closed" if closed else "open",
        title=title or f"Pull request #{number}",
        body=body,
        user=_user(pr["user"], author, api, web),
        labels=[
            _label(pr["labels"][0] if pr["labels"] else _label_template(), repo, n, api)
            for n in labels
        ],
        draft=draft,
        assignee=None,
        assignees=[],
        requested_reviewers=[],
        requested_teams=[],
        milestone=None,
        closed_at=stamp if closed else None,
        merged_at=stamp if closed and merged else None,
        merge_commit_sha=_fake_sha("merge", head_sha) if merged else None,
        head={
            **pr["head"],
            "label": f"{head_full.split('/')[0]}:{head_ref}",
            "ref": head_ref,
            "sha": head_sha,
            "user": _user(pr["head"]["user"], head_full.split("/")[0], api, web),
            "repo": head_repo,
        },
        base={
            **pr["base"],
            "label": f"{owner}:{base_ref}",
            "ref": base_ref,
            "sha": base_sha,
            "user": _user(pr["base"]["user"], owner, api, web),
            "repo": base_repo,
        },
        _links={
            "self": {"href": f"{rest}/pulls/{number}"},
            "html": {"href": f"{html}/pull/{number}"},
            "issue": {"href": f"{rest}/issues/{number}"},
            "comments": {"href": f"{rest}/issues/{number}/comments"},
            "review_comments": {"href": f"{rest}/pulls/{number}/comments"},
            "review_comment": {"href": f"{rest}/pulls/comments{{/number}}"},
            "commits": {"href": f"{rest}/pulls/{number}/commits"},
            "statuses": {"href": f"{rest}/statuses/{head_sha}"},
        },
    )
    if "merged" in pr:
        pr["merged"] = bool(closed and merged)
    if "maintainer_can_modify" in pr:
        pr["maintainer_can_modify"] = fork
    payload.update(
        action=action,
        number=number,
        repository=copy.deepcopy(base_repo),
        installation=_installation(installation_id),
        sender=_user(user_tpl, sender or author, api, web),
    )
    if "organization" in payload:
        payload["organization"].update(login=owner, url=f"{api}/orgs/{owner}")
    if action in ("labeled", "unlabeled"):
        chosen = label or (labels[-1] if labels else "runbot")
        payload["label"] = _label(payload.get("label"), repo, chosen, api)
    if action == "synchronize":
        payload["before"] = before or _fake_sha("before", head_sha)
        payload["after"] = head_sha
    schema.validate_webhook(f"pull_request.{action}", payload)
    return payload


def make_issue_comment_event(
    action: str = "created",
    repo: str = "octo-org/hello",
    number: int = 1,
    body: str = "/runbot deploy",
    author: str = "octocat",
    *,
    on_pull_request: bool = True,
    comment_id: int | None = None,
    installation_id: int = 1,
    author_association: str = "MEMBER",
    issue_author: str | None = None,
    previous_body: str | None = None,
    repo_id: int | None = None,
    private: bool = False,
    api_url: str = GITHUB_API,
    web_url: str = GITHUB_WEB,
) -> dict[str, Any]:
    """A schema-valid ``issue_comment`` payload (created/edited), on a PR by default."""
    api, web = api_url.rstrip("/"), web_url.rstrip("/")
    variant = "on_pull_request" if on_pull_request and action == "created" else None
    payload, _ = _retarget(load_fixture("issue_comment", action, variant), repo, api, web)
    repo_id = repo_id if repo_id is not None else _stable_id("repo", repo.lower())
    comment_id = comment_id if comment_id is not None else _stable_id("comment", repo, number, body)
    rest, html = f"{api}/repos/{repo}", f"{web}/{repo}"
    kind = "pull" if on_pull_request else "issues"
    issue = payload["issue"]
    issue_id = _stable_id("issue", repo.lower(), number)
    issue.update(
        url=f"{rest}/issues/{number}",
        repository_url=rest,
        labels_url=f"{rest}/issues/{number}/labels{{/name}}",
        comments_url=f"{rest}/issues/{number}/comments",
        events_url=f"{rest}/issues/{number}/events",
        html_url=f"{html}/{kind}/{number}",
        id=issue_id,
        node_id=_node_id("PullRequest" if on_pull_request else "Issue", issue_id),
        number=number,
        user=_user(issue["user"], issue_author or author, api, web),
        assignee=None,
        assignees=[],
        milestone=None,
    )
    if on_pull_request:
        issue["pull_request"] = {
            "url": f"{rest}/pulls/{number}",
            "html_url": f"{html}/pull/{number}",
            "diff_url": f"{html}/pull/{number}.diff",
            "patch_url": f"{html}/pull/{number}.patch",
            "merged_at": None,
        }
    else:
        issue.pop("pull_request", None)
    if isinstance(issue.get("reactions"), dict):
        issue["reactions"]["url"] = f"{rest}/issues/{number}/reactions"
    comment = payload["comment"]
    comment.update(
        url=f"{rest}/issues/comments/{comment_id}",
        html_url=f"{html}/{kind}/{number}#issuecomment-{comment_id}",
        issue_url=f"{rest}/issues/{number}",
        id=comment_id,
        node_id=_node_id("IssueComment", comment_id),
        user=_user(comment["user"], author, api, web),
        author_association=author_association,
        performed_via_github_app=None,
        body=body,
    )
    if isinstance(comment.get("reactions"), dict):
        comment["reactions"]["url"] = f"{rest}/issues/comments/{comment_id}/reactions"
    payload.update(
        action=action,
        repository=_repository(payload["repository"], repo, repo_id, api, web, private=private),
        installation=_installation(installation_id),
        sender=_user(payload["sender"], author, api, web),
    )
    owner = repo.split("/", 1)[0]
    if "organization" in payload:
        payload["organization"].update(login=owner, url=f"{api}/orgs/{owner}")
    if action == "edited":
        payload["changes"] = {"body": {"from": previous_body if previous_body is not None else ""}}
    schema.validate_webhook(f"issue_comment.{action}", payload)
    return payload


def make_installation_event(
    event: str,
    action: str,
    installation_id: int,
    account: str,
    repos: Iterable[tuple[str, int, bool]] = (),
    *,
    sender: str = "octocat",
    api_url: str = GITHUB_API,
    web_url: str = GITHUB_WEB,
) -> dict[str, Any]:
    """A schema-valid ``installation`` or ``installation_repositories`` payload.

    ``repos`` are ``(full_name, id, private)``: the installation's repositories (``created``,
    ``deleted``), or those added or removed (``installation_repositories``); ``suspend`` and
    ``unsuspend`` carry none, as GitHub sends them.
    """
    api, web = api_url.rstrip("/"), web_url.rstrip("/")
    payload = load_fixture(event, action)
    listed = [
        {
            "id": repo_id,
            "node_id": _node_id("Repository", repo_id),
            "name": name.split("/", 1)[1],
            "full_name": name,
            "private": private,
        }
        for name, repo_id, private in repos
    ]
    inst = payload["installation"]
    owner = _user(inst["account"], account, api, web, "Organization")
    inst.update(
        id=installation_id,
        account=owner,
        target_id=owner["id"],
        target_type="Organization",
        access_tokens_url=f"{api}/app/installations/{installation_id}/access_tokens",
        repositories_url=f"{api}/installation/repositories",
        html_url=f"{web}/organizations/{account}/settings/installations/{installation_id}",
    )
    who = _user(payload["sender"], sender, api, web)
    if action == "suspend":
        inst["suspended_by"] = who
    payload["sender"] = who
    if event == "installation_repositories":
        payload["repository_selection"] = "selected"
        payload["repositories_added"] = listed if action == "added" else []
        payload["repositories_removed"] = listed if action == "removed" else []
        payload["requester"] = None
    elif "repositories" in payload:
        payload["repositories"] = listed
    schema.validate_webhook(f"{event}.{action}", payload)
    return payload
