"""Prove the fake GitHub itself: fixtures, schemas, and githubkit talking to it for real."""

from __future__ import annotations

import hashlib
import hmac
import itertools
import json
import threading
import time
from collections.abc import Iterator
from datetime import datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlparse

import httpx
import pytest
from githubkit import (
    AppAuthStrategy,
    GitHub,
    OAuthWebAuthStrategy,
    UnauthAuthStrategy,
)
from githubkit.cache import MemCacheStrategy
from githubkit.exception import RequestFailed, SecondaryRateLimitExceeded
from githubkit.webhooks import parse_obj as parse_webhook

from tests.fakegithub import schema, webhooks
from tests.fakegithub.server import FakeGitHub

pytest_plugins = ["tests.fakegithub.pytest_plugin"]  # the fake_github fixture, under test here

REPO = "octo-org/hello"
INSTALLATION = 7
HEAD = "a" * 40


def _app_client(fake: FakeGitHub, **config: Any) -> GitHub[AppAuthStrategy]:
    """githubkit as runbot should configure it against the fake."""
    options: dict[str, Any] = {
        "base_url": fake.url,
        "auto_retry": False,
        "http_cache": False,
        "cache_strategy": MemCacheStrategy(),  # githubkit's default cache is process-global
    }
    options.update(config)
    return GitHub(AppAuthStrategy(fake.app_id, fake.private_key_pem), **options)


@pytest.fixture
def fake() -> Iterator[FakeGitHub]:
    with FakeGitHub(slug="runbot-test") as fake:
        fake.add_repo(
            REPO,
            files={"main": {"runbot.yml": "stack: silo\n", "infra/main.tf": "# tf\n"}},
        )
        fake.add_installation(INSTALLATION, "octo-org", [REPO])
        fake.add_pull(REPO, 1, head_sha=HEAD, head_ref="feature", author="octocat")
        yield fake


@pytest.fixture
def gh(fake: FakeGitHub) -> GitHub[Any]:
    app = _app_client(fake)
    return app.with_auth(app.auth.as_installation(INSTALLATION))


# ---------------------------------------------------------------- fixtures & schemas


@pytest.mark.parametrize("name", webhooks.fixture_names())
def test_webhook_fixture_validates_against_schema(name: str) -> None:
    payload = json.loads((webhooks.FIXTURES_DIR / f"{name}.json").read_text())
    schema.validate_webhook(webhooks.schema_key(name), payload)


@pytest.mark.parametrize("name", webhooks.fixture_names())
def test_webhook_fixture_parses_with_githubkit(name: str) -> None:
    # runbot parses deliveries with githubkit, whose models follow newer descriptions.
    event = name.split(".")[0]
    parsed = parse_webhook(event, webhooks.load_fixture(*name.split(".")))
    assert parsed is not None


def test_every_required_fixture_is_vendored() -> None:
    expected = {
        *(
            f"pull_request.{a}"
            for a in (
                "opened",
                "synchronize",
                "closed",
                "reopened",
                "ready_for_review",
                "converted_to_draft",
                "labeled",
                "unlabeled",
            )
        ),
        "issue_comment.created",
        "issue_comment.created.on_pull_request",
        "issue_comment.edited",
        "installation.created",
        "installation.deleted",
        "installation_repositories.added",
        "installation_repositories.removed",
        "check_suite.completed",
        "status",
        "ping",
    }
    assert expected <= set(webhooks.fixture_names())
    assert (
        "pull_request"
        in webhooks.load_fixture("issue_comment", "created", "on_pull_request")["issue"]
    )
    assert "pull_request" not in webhooks.load_fixture("issue_comment", "created")["issue"]


def test_schema_rejects_invalid_webhook_readably() -> None:
    payload = webhooks.load_fixture("pull_request", "opened")
    del payload["pull_request"]["head"]["sha"]
    with pytest.raises(
        schema.SchemaViolation, match=r"\$\.pull_request\.head.*'sha' is a required"
    ):
        schema.validate_webhook("pull_request.opened", payload)


def test_schema_handles_openapi_nullable() -> None:
    converted = schema.to_json_schema({"type": "string", "nullable": True, "enum": ["a"]}, "urn:x")
    assert converted == {"type": ["string", "null"], "enum": ["a", None]}
    wrapped = schema.to_json_schema({"$ref": "#/components/schemas/x", "nullable": True}, "urn:x")
    assert wrapped == {"anyOf": [{"type": "null"}, {"$ref": "urn:x#/components/schemas/x"}]}


def test_request_validation_reports_field() -> None:
    with pytest.raises(schema.SchemaViolation, match="required_contexts"):
        schema.validate_request(
            "POST", "/repos/{owner}/{repo}/deployments", {"ref": "main", "required_contexts": "x"}
        )
    schema.validate_request(
        "POST", "/repos/{owner}/{repo}/deployments", {"ref": "main", "required_contexts": []}
    )


@pytest.mark.parametrize(
    "action",
    [
        "opened",
        "synchronize",
        "closed",
        "reopened",
        "labeled",
        "unlabeled",
        "ready_for_review",
        "converted_to_draft",
    ],
)
@pytest.mark.parametrize("fork", [False, True])
def test_make_pull_request_event(action: str, fork: bool) -> None:
    event = webhooks.make_pull_request_event(
        action,
        repo="acme/widgets",
        number=42,
        head_sha="b" * 40,
        head_ref="topic",
        author="mallory" if fork else "octocat",
        fork=fork,
        draft=action == "converted_to_draft",
        labels=("preview",),
        installation_id=99,
        merged=action == "closed",
    )
    pr = event["pull_request"]
    assert event["action"] == action and event["number"] == 42 == pr["number"]
    assert event["repository"]["full_name"] == "acme/widgets" == pr["base"]["repo"]["full_name"]
    assert pr["head"]["sha"] == "b" * 40 and pr["head"]["ref"] == "topic"
    assert pr["head"]["repo"]["fork"] is fork
    assert pr["head"]["repo"]["full_name"] == ("mallory/widgets" if fork else "acme/widgets")
    assert event["installation"]["id"] == 99
    assert [label["name"] for label in pr["labels"]] == ["preview"]
    assert "Codertocat" not in json.dumps(event)
    if action == "closed":
        assert pr["state"] == "closed" and pr["merged"] is True
    if action == "synchronize":
        assert event["after"] == "b" * 40
    assert parse_webhook("pull_request", event).action == action


def test_make_issue_comment_event_on_pr_and_issue() -> None:
    on_pr = webhooks.make_issue_comment_event(body="/runbot destroy", author="bob", number=3)
    assert on_pr["issue"]["pull_request"]["url"].endswith("/repos/octo-org/hello/pulls/3")
    assert on_pr["comment"]["body"] == "/runbot destroy" and on_pr["sender"]["login"] == "bob"
    plain = webhooks.make_issue_comment_event(on_pull_request=False)
    assert "pull_request" not in plain["issue"]
    assert "Codertocat" not in json.dumps([on_pr, plain])
    edited = webhooks.make_issue_comment_event("edited", previous_body="old", comment_id=5)
    assert edited["changes"] == {"body": {"from": "old"}} and edited["comment"]["id"] == 5


def test_sign_matches_github_documentation() -> None:
    # Test vector from GitHub's "Validating webhook deliveries" documentation.
    assert webhooks.sign(b"Hello, World!", "It's a Secret to Everybody") == (
        "sha256=757107ea0eb2509fc211221cce984b8a37570b6d7586c22c46f4379c8b043e17"
    )


def test_deliver_posts_signed_hookshot_request() -> None:
    received: dict[str, Any] = {}

    class Receiver(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            received["headers"] = dict(self.headers)
            received["body"] = self.rfile.read(int(self.headers["Content-Length"]))
            self.send_response(202)
            self.end_headers()

        def log_message(self, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Receiver)
    thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    try:
        payload = webhooks.load_fixture("ping")
        url = f"http://127.0.0.1:{server.server_address[1]}/webhooks/github"
        response = webhooks.deliver(url, "ping", payload, "s3cret", delivery_id="d-1")
    finally:
        server.shutdown()
    assert response.status_code == 202
    headers, body = received["headers"], received["body"]
    assert headers["X-GitHub-Event"] == "ping" and headers["X-GitHub-Delivery"] == "d-1"
    assert headers["User-Agent"].startswith("GitHub-Hookshot/")
    assert headers["Content-Type"] == "application/json"
    expected = hmac.new(b"s3cret", body, hashlib.sha256).hexdigest()
    assert headers["X-Hub-Signature-256"] == f"sha256={expected}"
    assert json.loads(body) == payload


def test_vendored_extracts_stay_small() -> None:
    assert schema.REST_EXTRACT.stat().st_size < 1_500_000
    assert schema.WEBHOOKS_EXTRACT.stat().st_size < 1_500_000


# ---------------------------------------------------------------- githubkit, for real


def test_app_jwt_and_installation_token(fake: FakeGitHub) -> None:
    app = _app_client(fake)
    me = app.rest.apps.get_authenticated().parsed_data
    assert me is not None and me.id == fake.app_id and me.slug == "runbot-test"
    assert app.rest.apps.get_repo_installation("octo-org", "hello").parsed_data.id == INSTALLATION
    token = app.rest.apps.create_installation_access_token(INSTALLATION).parsed_data
    assert token.token.startswith("ghs_")
    remaining = datetime.fromisoformat(token.expires_at).timestamp() - time.time()
    assert 3500 < remaining <= 3600
    kinds = [r.auth for r in fake.requests]
    assert kinds == ["app", "app", "app"]
    assert fake.violations == []


def test_comment_lifecycle_via_githubkit(fake: FakeGitHub, gh: GitHub[Any]) -> None:
    created = gh.rest.issues.create_comment(
        "octo-org", "hello", 1, body="<!-- runbot -->\nbuilding"
    ).parsed_data
    assert created.user is not None and created.user.login == "runbot-test[bot]"
    assert created.user.type == "Bot" and created.performed_via_github_app is not None
    gh.rest.issues.update_comment("octo-org", "hello", created.id, body="<!-- runbot -->\nready")
    listed = gh.rest.issues.list_comments("octo-org", "hello", 1).parsed_data
    assert [c.body for c in listed] == ["<!-- runbot -->\nready"]
    reaction = gh.rest.reactions.create_for_issue_comment(
        "octo-org", "hello", created.id, content="rocket"
    )
    assert reaction.status_code == 201
    again = gh.rest.reactions.create_for_issue_comment(
        "octo-org", "hello", created.id, content="rocket"
    )
    assert again.status_code == 200
    assert [c["body"] for c in fake.comments(REPO, 1)] == ["<!-- runbot -->\nready"]
    assert [r["content"] for r in fake.reactions(created.id)] == ["rocket"]
    writes = fake.requests_for("POST", "/repos/*/issues/*/comments")
    assert len(writes) == 1 and writes[0].body == {"body": "<!-- runbot -->\nbuilding"}
    assert writes[0].auth == "installation"
    assert fake.violations == []


def test_comment_pagination_with_link_header(fake: FakeGitHub, gh: GitHub[Any]) -> None:
    for i in range(5):
        fake.add_comment(REPO, 1, f"comment {i}", author="bob")
    first = gh.rest.issues.list_comments("octo-org", "hello", 1, per_page=2)
    link = first.headers["link"]
    assert 'rel="next"' in link and 'rel="last"' in link and "page=3" in link
    everything = list(
        gh.rest.paginate(
            gh.rest.issues.list_comments, owner="octo-org", repo="hello", issue_number=1, per_page=2
        )
    )
    assert [c.body for c in everything] == [f"comment {i}" for i in range(5)]
    assert fake.violations == []


def test_pulls_repo_contents_and_checks(fake: FakeGitHub, gh: GitHub[Any]) -> None:
    fake.add_pull(
        REPO,
        2,
        head_sha="c" * 40,
        head_ref="evil",
        author="mallory",
        fork=True,
        draft=True,
        labels=["preview"],
    )
    fake.set_file("mallory/hello", "evil", "runbot.yml", "stack: pwned\n")
    pulls = gh.rest.pulls.list("octo-org", "hello", state="open", per_page=1)
    assert 'rel="next"' in pulls.headers["link"]
    pull2 = gh.rest.pulls.get("octo-org", "hello", 2).parsed_data
    assert (
        pull2.head.repo is not None
        and pull2.head.repo.fork
        and pull2.head.repo.full_name == "mallory/hello"
    )
    assert pull2.draft and [label.name for label in pull2.labels] == ["preview"]
    assert gh.rest.repos.get("octo-org", "hello").parsed_data.default_branch == "main"

    main_file = gh.rest.repos.get_content("octo-org", "hello", "runbot.yml").parsed_data
    assert main_file.type == "file" and "\n" in main_file.content
    import base64

    assert base64.b64decode(main_file.content) == b"stack: silo\n"
    fork_file = gh.rest.repos.get_content(
        "octo-org", "hello", "runbot.yml", ref="c" * 40
    ).parsed_data
    assert base64.b64decode(fork_file.content) == b"stack: pwned\n"
    listing = gh.rest.repos.get_content("octo-org", "hello", "infra").parsed_data
    assert [(e.name, e.type) for e in listing] == [("main.tf", "file")]
    with pytest.raises(RequestFailed) as missing:
        gh.rest.repos.get_content("octo-org", "hello", "nope.yml")
    assert missing.value.response.status_code == 404

    fake.set_check_suites(REPO, HEAD, [("completed", "success"), ("in_progress", None)])
    fake.set_combined_status(REPO, HEAD, "failure", {"ci/lint": "failure"})
    suites = gh.rest.checks.list_suites_for_ref("octo-org", "hello", "feature").parsed_data
    assert [(s.status, s.conclusion) for s in suites.check_suites] == [
        ("completed", "success"),
        ("in_progress", None),
    ]
    combined = gh.rest.repos.get_combined_status_for_ref("octo-org", "hello", HEAD).parsed_data
    assert combined.state == "failure" and combined.statuses[0].context == "ci/lint"

    fake.set_permission(REPO, "bob", "write")
    perm = gh.rest.repos.get_collaborator_permission_level("octo-org", "hello", "bob").parsed_data
    assert perm.permission == "write"
    assert gh.rest.apps.list_repos_accessible_to_installation().parsed_data.total_count == 1
    assert fake.violations == []


def test_deployments_and_statuses(fake: FakeGitHub, gh: GitHub[Any]) -> None:
    first = gh.rest.repos.create_deployment(
        "octo-org",
        "hello",
        ref="feature",
        environment="pr-1",
        required_contexts=[],
        auto_merge=False,
        transient_environment=False,
        production_environment=False,
        payload={"pr": 1},
    ).parsed_data
    assert first.sha == HEAD and first.environment == "pr-1"
    assert fake.deployments(REPO)[0]["payload"] == {"pr": 1}
    gh.rest.repos.create_deployment_status(
        "octo-org", "hello", first.id, state="success", environment_url="https://pr-1.example"
    )
    second = gh.rest.repos.create_deployment(
        "octo-org",
        "hello",
        ref="feature",
        environment="pr-1",
        required_contexts=[],
        auto_merge=False,
        production_environment=False,
    ).parsed_data
    gh.rest.repos.create_deployment_status("octo-org", "hello", second.id, state="success")
    # auto_inactive: the earlier successful deployment of pr-1 was marked inactive.
    assert [s["state"] for s in fake.deployment_statuses(REPO, first.id)] == ["success", "inactive"]
    listed = gh.rest.repos.list_deployments("octo-org", "hello", environment="pr-1").parsed_data
    assert [d.id for d in listed] == [second.id, first.id]
    statuses = gh.rest.repos.list_deployment_statuses("octo-org", "hello", first.id).parsed_data
    assert [s.state for s in statuses] == ["inactive", "success"]
    assert [d["id"] for d in fake.deployments(REPO)] == [first.id, second.id]

    # Without required_contexts, GitHub refuses to deploy a commit with failing statuses.
    fake.set_combined_status(REPO, HEAD, "failure", {"ci": "failure"})
    with pytest.raises(RequestFailed) as conflict:
        gh.rest.repos.create_deployment("octo-org", "hello", ref="feature", auto_merge=False)
    assert conflict.value.response.status_code == 409
    assert fake.violations == []


def test_api_versions_are_served_like_github(fake: FakeGitHub, gh: GitHub[Any]) -> None:
    # githubkit 0.16 asks for 2026-03-10, which dropped e.g. has_downloads / merge_commit_sha.
    assert "2026-03-10" in schema.api_versions()
    assert "has_downloads" in httpx.get(f"{fake.url}/repos/octo-org/hello").json()  # 2022-11-28
    response = gh.rest.repos.get("octo-org", "hello")
    assert response.headers["x-github-api-version-selected"] == "2026-03-10"
    assert "has_downloads" not in response.json()
    assert "merge_commit_sha" not in gh.rest.pulls.get("octo-org", "hello", 1).json()
    unknown = httpx.get(
        f"{fake.url}/repos/octo-org/hello", headers={"X-GitHub-Api-Version": "2019-01-01"}
    )
    assert unknown.status_code == 400
    assert fake.violations == []


def test_schema_invalid_request_is_recorded(fake: FakeGitHub) -> None:
    token = fake.issue_installation_token(INSTALLATION)
    response = httpx.post(
        f"{fake.url}/repos/octo-org/hello/deployments",
        json={"ref": "feature", "required_contexts": "x"},
        headers={"Authorization": f"token {token}"},
    )
    assert response.status_code == 422
    assert "required_contexts" in response.json()["message"]
    [violation] = fake.violations
    assert violation.kind == "request" and violation.method == "POST"
    assert "required_contexts" in violation.message
    assert fake.deployments(REPO) == []


def test_unsupported_endpoint_is_a_violation(fake: FakeGitHub) -> None:
    response = httpx.delete(f"{fake.url}/repos/octo-org/hello/labels/bug")
    assert response.status_code == 404
    assert [v.kind for v in fake.violations] == ["unsupported"]


def test_auth_is_enforced_like_github(fake: FakeGitHub) -> None:
    anon = httpx.post(f"{fake.url}/repos/octo-org/hello/issues/1/comments", json={"body": "x"})
    assert anon.status_code == 401 and anon.json()["message"] == "Requires authentication"
    assert httpx.get(f"{fake.url}/installation/repositories").status_code == 401
    assert httpx.get(f"{fake.url}/repos/octo-org/hello").status_code == 200  # public repo
    bad = httpx.get(f"{fake.url}/repos/octo-org/hello", headers={"Authorization": "token nope"})
    assert bad.status_code == 401 and bad.json()["message"] == "Bad credentials"
    with FakeGitHub() as other:  # a JWT signed with another App's key
        forged = GitHub(
            AppAuthStrategy(fake.app_id, other.private_key_pem),
            base_url=fake.url,
            auto_retry=False,
            http_cache=False,
            cache_strategy=MemCacheStrategy(),
        )
        with pytest.raises(RequestFailed) as denied:
            forged.rest.apps.get_authenticated()
        assert denied.value.response.status_code == 401
    token = fake.issue_installation_token(INSTALLATION)
    fake.expire_tokens()
    expired = httpx.get(
        f"{fake.url}/installation/repositories", headers={"Authorization": f"Bearer {token}"}
    )
    assert expired.status_code == 401
    fake.add_repo("someone/else", private=True)
    fresh = fake.issue_installation_token(INSTALLATION)
    hidden = httpx.get(
        f"{fake.url}/repos/someone/else", headers={"Authorization": f"token {fresh}"}
    )
    assert hidden.status_code == 404
    for response in (anon, bad, expired, hidden):
        assert {
            "x-ratelimit-limit",
            "x-ratelimit-remaining",
            "x-ratelimit-reset",
            "x-ratelimit-used",
        } <= set(response.headers)
    assert fake.violations == []


def test_fail_next_then_success(fake: FakeGitHub, gh: GitHub[Any]) -> None:
    gh.rest.repos.get("octo-org", "hello")  # token fetched
    fake.fail_next(1, status=502)
    with pytest.raises(RequestFailed) as failed:
        gh.rest.repos.get("octo-org", "hello")
    assert failed.value.response.status_code == 502
    assert gh.rest.repos.get("octo-org", "hello").status_code == 200


def test_githubkit_auto_retry_rides_over_a_502(fake: FakeGitHub) -> None:
    app = _app_client(fake, auto_retry=True)
    gh = app.with_auth(app.auth.as_installation(INSTALLATION))
    fake.fail_next(1, status=502, match=r"^GET /repos/")
    assert gh.rest.repos.get("octo-org", "hello").status_code == 200
    gets = fake.requests_for("GET", "/repos/octo-org/hello")
    assert len(gets) == 2 and gets[1].time - gets[0].time >= 0.9  # githubkit backs off 1 s


def test_outage_window(fake: FakeGitHub, gh: GitHub[Any]) -> None:
    gh.rest.repos.get("octo-org", "hello")
    fake.outage(0.3, status=503)
    with pytest.raises(RequestFailed):
        gh.rest.repos.get("octo-org", "hello")
    time.sleep(0.35)
    assert gh.rest.repos.get("octo-org", "hello").status_code == 200


def test_secondary_rate_limit(fake: FakeGitHub, gh: GitHub[Any]) -> None:
    gh.rest.repos.get("octo-org", "hello")
    fake.secondary_rate_limit(1, retry_after=3)
    with pytest.raises(SecondaryRateLimitExceeded) as limited:
        gh.rest.issues.create_comment("octo-org", "hello", 1, body="x")
    response = limited.value.response
    assert response.status_code == 403 and response.headers["retry-after"] == "3"
    assert response.json()["message"].startswith("You have exceeded a secondary rate limit")
    assert limited.value.retry_after.total_seconds() == 3
    fake.secondary_rate_limit(5)
    fake.reset_faults()
    assert gh.rest.issues.create_comment("octo-org", "hello", 1, body="x").status_code == 201


def test_primary_rate_limit(fake: FakeGitHub, gh: GitHub[Any]) -> None:
    fake.rate_limit = 2
    gh.rest.repos.get("octo-org", "hello")
    with pytest.raises(RequestFailed) as limited:
        gh.rest.repos.get("octo-org", "hello")
        gh.rest.repos.get("octo-org", "hello")
    assert limited.value.response.status_code == 403
    assert limited.value.response.headers["x-ratelimit-remaining"] == "0"


async def test_async_githubkit(fake: FakeGitHub, gh: GitHub[Any]) -> None:
    created = (
        await gh.rest.issues.async_create_comment("octo-org", "hello", 1, body="async")
    ).parsed_data
    listed = (await gh.rest.issues.async_list_comments("octo-org", "hello", 1)).parsed_data
    assert [c.id for c in listed] == [created.id]


def test_oauth_web_flow_and_user_endpoints(fake: FakeGitHub) -> None:
    fake.add_repo("octo-org/private", private=True)
    fake.add_installation(8, "other-org", ["other-org/unrelated"])
    fake.set_installation_repos(INSTALLATION, [REPO, "octo-org/private"])
    fake.set_permission("octo-org/private", "alice", "write")
    authorize = httpx.get(
        f"{fake.web_url}/login/oauth/authorize",
        params={
            "client_id": fake.client_id,
            "redirect_uri": "http://runbot.test/auth/callback",
            "state": "xyz",
        },
    )
    assert authorize.status_code == 302
    location = urlparse(authorize.headers["location"])
    query = parse_qs(location.query)
    assert location.netloc == "runbot.test" and query["state"] == ["xyz"]
    user_gh = GitHub(
        OAuthWebAuthStrategy(
            fake.client_id,
            fake.client_secret,
            query["code"][0],
            redirect_uri="http://runbot.test/auth/callback",
        ),
        base_url=fake.url,
        auto_retry=False,
        http_cache=False,
        cache_strategy=MemCacheStrategy(),
    )
    me = user_gh.rest.users.get_authenticated().parsed_data
    assert me.login == "alice"
    installs = user_gh.rest.apps.list_installations_for_authenticated_user().parsed_data
    assert [i.id for i in installs.installations] == [INSTALLATION]
    repos = user_gh.rest.apps.list_installation_repos_for_authenticated_user(
        INSTALLATION
    ).parsed_data
    assert [r.full_name for r in repos.repositories] == ["octo-org/private"]
    assert repos.repositories[0].permissions is not None and repos.repositories[0].permissions.push
    with pytest.raises(RequestFailed):
        user_gh.rest.apps.list_installation_repos_for_authenticated_user(8)
    perm = user_gh.rest.repos.get_collaborator_permission_level(
        "octo-org", "private", "alice"
    ).parsed_data
    assert perm.permission == "write"
    reused = httpx.post(
        f"{fake.web_url}/login/oauth/access_token",
        data={
            "client_id": fake.client_id,
            "client_secret": fake.client_secret,
            "code": query["code"][0],
        },
        headers={"Accept": "application/json"},
    )
    assert reused.json()["error"] == "bad_verification_code"
    assert fake.violations == []


def test_manifest_flow(fake: FakeGitHub) -> None:
    manifest = {
        "name": "runbot-acme",
        "url": "https://runbot.acme.test",
        "redirect_url": "https://runbot.acme.test/setup/github/callback",
        "hook_attributes": {"url": "https://runbot.acme.test/webhooks/github"},
        "default_permissions": {"pull_requests": "write", "deployments": "write"},
        "default_events": ["pull_request", "issue_comment"],
    }
    posted = httpx.post(
        f"{fake.web_url}/organizations/acme/settings/apps/new",
        params={"state": "st"},
        data={"manifest": json.dumps(manifest)},
    )
    assert posted.status_code == 302
    redirect = urlparse(posted.headers["location"])
    code = parse_qs(redirect.query)["code"][0]
    assert redirect.path == "/setup/github/callback"
    assert fake.manifests == [{"manifest": manifest, "state": "st", "org": "acme"}]
    anon = GitHub(UnauthAuthStrategy(), base_url=fake.url, auto_retry=False, http_cache=False)
    app = anon.rest.apps.create_from_manifest(code).parsed_data
    assert app.id == fake.app_id and app.pem == fake.private_key_pem and app.name == "runbot-acme"
    assert app.webhook_secret == fake.webhook_secret and app.client_secret == fake.client_secret
    assert app.html_url.endswith(f"/apps/{fake.slug}")
    with pytest.raises(RequestFailed):
        anon.rest.apps.create_from_manifest(code)  # single use
    fake.add_manifest_code("seeded")
    assert anon.rest.apps.create_from_manifest("seeded").status_code == 201
    assert fake.violations == []


def test_fake_events_match_fake_state(fake: FakeGitHub, gh: GitHub[Any]) -> None:
    event = fake.pull_request_event("opened", REPO, 1)
    assert event["pull_request"]["head"]["sha"] == HEAD
    assert event["repository"]["id"] == fake.repo_id(REPO)
    assert event["installation"]["id"] == INSTALLATION
    assert event["pull_request"]["url"] == f"{fake.url}/repos/{REPO}/pulls/1"
    comment_event = fake.issue_comment_event(REPO, 1, "/runbot deploy", "bob")
    comment_id = comment_event["comment"]["id"]
    assert [c["id"] for c in fake.comments(REPO, 1)] == [comment_id]
    gh.rest.reactions.create_for_issue_comment("octo-org", "hello", comment_id, content="eyes")
    assert [r["user"]["login"] for r in fake.reactions(comment_id)] == ["runbot-test[bot]"]
    edited = fake.issue_comment_event(
        REPO, 1, "/runbot destroy", action="edited", comment_id=comment_id
    )
    assert edited["changes"]["body"]["from"] == "/runbot deploy"
    fake.add_issue(REPO, 10)
    plain = fake.issue_comment_event(REPO, 10, "hello")
    assert "pull_request" not in plain["issue"]
    assert fake.violations == []


def test_requests_are_recorded_for_pacing(fake: FakeGitHub, gh: GitHub[Any]) -> None:
    for i in range(3):
        gh.rest.issues.create_comment("octo-org", "hello", 1, body=f"{i}")
    writes = fake.requests_for("POST", "/repos/octo-org/hello/issues/1/comments")
    assert [w.body["body"] for w in writes] == ["0", "1", "2"]
    assert all(b.time >= a.time for a, b in itertools.pairwise(writes))
    fake.clear_records()
    assert fake.requests == []


def test_installation_permissions_are_enforced(fake_github: FakeGitHub) -> None:
    fake_github.add_repo("acme/app")
    fake_github.add_installation(
        11, "acme", ["acme/app"], permissions={"metadata": "read", "issues": "read"}
    )
    token = fake_github.issue_installation_token(11)
    headers = {"Authorization": f"token {token}"}
    read = httpx.get(f"{fake_github.url}/repos/acme/app", headers=headers)
    assert read.status_code == 200
    fake_github.add_issue("acme/app", 1)
    denied = httpx.post(
        f"{fake_github.url}/repos/acme/app/issues/1/comments", json={"body": "x"}, headers=headers
    )
    assert denied.status_code == 403
    assert denied.json()["message"] == "Resource not accessible by integration"


def test_wait_for_handled_wakes_at_the_next_request_and_times_out_without_one(
    fake: FakeGitHub, gh: GitHub[Any]
) -> None:
    seen = fake.handled_count
    assert not fake.wait_for_handled(seen, 0.05)  # nothing sent: it times out
    reader = threading.Timer(0.2, lambda: gh.rest.pulls.get("octo-org", "hello", 1))
    started = time.monotonic()
    reader.start()
    assert fake.wait_for_handled(seen, 10)
    assert 0.15 < time.monotonic() - started < 5  # woken by that request, not the timeout
    reader.join()
    assert fake.handled_count > seen
