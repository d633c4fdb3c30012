"""Trust boundaries (issue 15), each finding tried the way a user would, over real HTTP:
webhooks → runbot (uvicorn, real workers and scheduler) → the embedded engine → fake GitHub.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlmodel import select

from app.db.models import PullRequest, Run, utcnow
from app.engine.logs import read_log
from app.github.comment import MARKER
from app.lifecycle.service import pull_id
from app.lifecycle.states import Status
from tests.apphost import (
    INSTALLATION,
    REPO,
    WEBHOOK_SECRET,
    AppServer,
    app_settings,
    seed_repo,
    write_policy,
)
from tests.conftest import TEMPLATES
from tests.fakegithub.server import FakeGitHub
from tests.fakegithub.webhooks import deliver
from tests.helpers import fetch, wait_for

pytest_plugins = ["tests.fakegithub.pytest_plugin"]
pytestmark = pytest.mark.engine

A, B, C = "a" * 40, "b" * 40, "c" * 40


@contextmanager
def serving(
    tmp_path: Path,
    fake: FakeGitHub,
    config: str,
    port_base: int,
    database_url: str | None = None,
    **settings: Any,
) -> Iterator[AppServer]:
    """runbot on `config`, its silo `trust` ready; every environment destroyed afterwards."""
    seed_repo(fake, config)
    fake.set_permission(REPO, "wendy", "write")
    with AppServer(app_settings(tmp_path, fake, database_url, **settings)) as server:
        lifecycle = server.runtime.lifecycle
        lifecycle.create_silo("trust", "local", {"port_base": port_base})
        wait_for(lambda: lifecycle.get_silo("trust").status == Status.READY, timeout=60)
        try:
            yield server
        finally:
            for env in lifecycle.list_environments():
                lifecycle.destroy_environment(env.id)
            wait_for(lambda: not lifecycle.list_environments(), timeout=90)


def pull_event(server: AppServer, fake: FakeGitHub, action: str, number: int = 1) -> None:
    payload = fake.pull_request_event(action, REPO, number)
    payload["installation"] = {"id": INSTALLATION, "node_id": "MDIz"}
    assert deliver(server.webhook_url, "pull_request", payload, WEBHOOK_SECRET).status_code == 202


def comment(server: AppServer, fake: FakeGitHub, body: str, author: str, number: int = 1) -> None:
    payload = fake.issue_comment_event(REPO, number, body, author=author)
    payload["installation"] = {"id": INSTALLATION, "node_id": "MDIz"}
    assert deliver(server.webhook_url, "issue_comment", payload, WEBHOOK_SECRET).status_code == 202


def status_body(fake: FakeGitHub, number: int = 1) -> str:
    bodies = [c["body"] for c in fake.comments(REPO, number) if c["body"].startswith(MARKER)]
    return bodies[-1] if bodies else ""


def the_pull(server: AppServer, number: int = 1) -> PullRequest:
    with server.runtime.db.session() as session:
        pull = session.get(PullRequest, pull_id(REPO, number))
    assert pull is not None
    return pull


def served_commit(server: AppServer) -> str | None:
    """The commit the PR's live environment serves, read from its page."""
    env = server.runtime.lifecycle.live_environment_for(REPO, 1)
    if env is None or env.status != Status.READY or env.url is None:
        return None
    page = fetch(env.url).text
    return next((sha for sha in (A, B, C) if sha in page), None)


def test_finding_5_a_fork_approval_is_bound_to_the_commit_it_approved(
    tmp_path: Path, fake_github: FakeGitHub, port_base: int
) -> None:
    """`/runbot deploy` approves the commit the status comment showed; a later push keeps the
    approved commit running and waits for a new approval; an expiry withdraws the approval."""
    fake = fake_github
    config = "stack: local\nsilo: trust\nforks: approve\n"
    with serving(tmp_path, fake, config, port_base) as server:
        fake.add_pull(REPO, 1, A, "fork-branch", author="forky", fork=True)
        pull_event(server, fake, "opened")
        wait_for(lambda: "/runbot deploy" in status_body(fake), timeout=30)
        comment(server, fake, "/runbot deploy", "wendy")
        wait_for(lambda: served_commit(server) == A, timeout=90)

        # The fork pushes: the approved commit keeps running, the new one waits.
        fake.update_pull(REPO, 1, head_sha=B)
        pull_event(server, fake, "synchronize")
        wait_for(lambda: f"commit {B[:7]} waits" in status_body(fake), timeout=30)
        assert served_commit(server) == A
        env = server.runtime.lifecycle.live_environment_for(REPO, 1)
        assert env is not None and env.head_sha == A and env.deployed_sha == A

        # A maintainer approves what the comment now shows: B.
        comment(server, fake, "/runbot deploy", "wendy")
        wait_for(lambda: served_commit(server) == B, timeout=90)
        assert the_pull(server).approved_sha == B

        # The environment expires: the approval goes with it, and the next push waits.
        reaped = server.call(
            lambda: server.workers.ticks.reap_expired(utcnow() + timedelta(days=30))
        )
        assert reaped and the_pull(server).approved_sha is None
        wait_for(lambda: server.runtime.lifecycle.live_environment_for(REPO, 1) is None, 90)
        fake.update_pull(REPO, 1, head_sha=C)
        pull_event(server, fake, "synchronize")
        wait_for(lambda: the_pull(server).head_sha == C, timeout=30)
        wait_for(lambda: "wait for a maintainer" in (the_pull(server).hold_reason or ""), 30)
        assert server.runtime.lifecycle.live_environment_for(REPO, 1) is None


def shown(fake: FakeGitHub, number: int = 1) -> str:
    """The status comment as people read it (markdown escapes removed)."""
    return status_body(fake, number).replace("\\", "")


def status_of(server: AppServer, number: int = 1) -> str | None:
    env = server.runtime.lifecycle.live_environment_for(REPO, number)
    return env.status if env is not None else None


def stack_reads(fake: FakeGitHub, folder: str) -> list[str]:
    return [r.path for r in fake.requests if "/contents/" in r.path and folder in r.path]


def test_finding_1_repository_and_git_stacks_are_refused_by_default(
    tmp_path: Path, fake_github: FakeGitHub
) -> None:
    """Without a policy file, `stack: {path: ...}` and `stack: {git: ...}` are refused with a
    comment naming the rule and the key that would allow it; nothing is fetched or run."""
    fake = fake_github
    seed_repo(fake, "stack: {path: .runbot/stacks/x}\n")
    fake.set_file(REPO, "main", ".runbot/stacks/x/instance/main.tf", 'output "url" { value = "x" }')
    fake.add_pull(REPO, 1, A, "feature")
    with AppServer(app_settings(tmp_path, fake)) as server:
        pull_event(server, fake, "opened")
        wait_for(lambda: "repo_stacks" in shown(fake), timeout=30)
        body = shown(fake)
        assert "may not use stacks from its own tree" in body and "repo_stacks: true" in body
        assert the_pull(server).hold_kind == "policy"
        fake.set_file(REPO, "main", ".runbot.yml", "stack: {git: 'https://evil.example/x.git'}\n")
        pull_event(server, fake, "synchronize")
        wait_for(lambda: "git_stacks" in shown(fake), timeout=30)
        assert "https://evil.example/x.git" in shown(fake)
        lifecycle = server.runtime.lifecycle
        assert lifecycle.list_environments(include_destroyed=True) == []
        assert lifecycle.list_silos() == []
    assert stack_reads(fake, ".runbot/stacks/x") == []


def test_finding_2_config_comes_only_from_the_default_branch_at_a_recorded_commit(
    tmp_path: Path, fake_github: FakeGitHub, port_base: int
) -> None:
    """A PR into another branch is refused unless `base_branches` allows it, and then deploys
    with the default branch's `.runbot.yml` (never the base's), read at a commit recorded on
    the PR, its environment and its run."""
    fake = fake_github
    config = "stack: local\nsilo: trust\nvars: {greeting: from-main}\n"
    policy = write_policy(tmp_path, 'default:\n  base_branches: [default, "release/*"]\n')
    with serving(tmp_path, fake, config, port_base, policy_file=policy) as server:
        # Branch `x` carries a config of its own choosing: a repository stack.
        fake.set_file(REPO, "x", ".runbot.yml", "stack: {path: evil}\nvars: {greeting: from-x}\n")
        fake.add_pull(REPO, 1, A, "feature", base_ref="x")
        pull_event(server, fake, "opened")
        wait_for(lambda: "base_branches" in shown(fake), timeout=30)
        assert "pull requests into the branch `x` get no environment" in shown(fake)
        assert server.runtime.lifecycle.list_environments() == []

        # `release/*` is allowed: the PR deploys, with main's configuration.
        fake.set_file(REPO, "release/1", ".runbot.yml", "stack: local\nvars: {greeting: rel}\n")
        fake.add_pull(REPO, 2, B, "feature-2", base_ref="release/1")
        pull_event(server, fake, "opened", number=2)
        lifecycle = server.runtime.lifecycle
        wait_for(lambda: status_of(server, 2) == Status.READY, timeout=90)
        env = lifecycle.live_environment_for(REPO, 2)
        assert env is not None and env.url is not None and env.silo_name == "trust"
        assert "from-main" in fetch(env.url).text
        main_sha = fake.branch_sha(REPO, "main")
        assert the_pull(server, 2).config_sha == main_sha and env.config_sha == main_sha
        with server.runtime.db.session() as session:
            runs = list(session.exec(select(Run).where(Run.target_id == env.id)))
        assert runs and all(run.config_sha == main_sha for run in runs)


def test_finding_3_silo_outputs_win_and_a_repository_var_naming_one_is_refused(
    tmp_path: Path, fake_github: FakeGitHub, port_base: int
) -> None:
    """`vars: {bind_host: 0.0.0.0}` on the local stack would expose the environment on every
    interface: the silo outputs bind_host, so the configuration is refused, naming it."""
    fake = fake_github
    config = "stack: local\nsilo: trust\nvars: {bind_host: 0.0.0.0, greeting: hi}\n"
    with serving(tmp_path, fake, config, port_base) as server:
        fake.add_pull(REPO, 1, A, "feature")
        pull_event(server, fake, "opened")
        wait_for(lambda: "vars.bind_host" in shown(fake), timeout=30)
        assert "vars.greeting" not in shown(fake) and "repo_vars" in shown(fake)
        assert server.runtime.lifecycle.list_environments(include_destroyed=True) == []
        # Without it, the same PR deploys, listening where the silo says.
        fake.set_file(REPO, "main", ".runbot.yml", "stack: local\nsilo: trust\n")
        pull_event(server, fake, "synchronize")
        wait_for(lambda: status_of(server) == Status.READY, timeout=90)
        env = server.runtime.lifecycle.live_environment_for(REPO, 1)
        assert env is not None and env.url == f"http://127.0.0.1:{port_base - 1}/{env.id}/"
        assert env.outputs["direct_url"]["value"] == f"http://127.0.0.1:{port_base}/"


def write_stack(root: Path, name: str, url_expression: str) -> None:
    (root / name / "silo").mkdir(parents=True)
    (root / name / "instance").mkdir(parents=True)
    (root / name / "silo" / "main.tf").write_text(
        'resource "terraform_data" "silo" {\n  input = "x"\n}\n'
        'output "domain" {\n  value = "example.test"\n}\n'
    )
    (root / name / "instance" / "main.tf").write_text(
        'variable "runbot_pr_number" {\n  type = number\n}\n'
        f'output "url" {{\n  value = "{url_expression}"\n}}\n'
    )


def test_finding_3_a_url_output_that_is_not_http_is_dropped_everywhere(
    tmp_path: Path, fake_github: FakeGitHub
) -> None:
    """A stack whose `url` is `javascript:...` gets no link anywhere, and its run says why."""
    fake = fake_github
    stacks = tmp_path / "stacks"
    write_stack(stacks, "jsurl", "javascript:alert(document.cookie)//${var.runbot_pr_number}")
    seed_repo(fake, "stack: jsurl\nsilo: js\n")
    fake.add_pull(REPO, 1, A, "feature")
    with AppServer(app_settings(tmp_path, fake, templates_dir=stacks)) as server:
        pull_event(server, fake, "opened")
        wait_for(lambda: status_of(server) == Status.READY, timeout=90)
        env = server.runtime.lifecycle.live_environment_for(REPO, 1)
        assert env is not None and env.url is None
        assert env.outputs["url"]["value"].startswith("javascript:")  # kept for operators
        wait_for(lambda: "Ready" in shown(fake) or "ready" in shown(fake), timeout=30)
        assert "javascript" not in status_body(fake)
        assert env.last_run_id is not None
        log_text, _ = read_log(server.runtime.db, env.last_run_id)
        assert "the output `url` is not an http(s) URL" in log_text
        wait_for(lambda: bool(fake.deployments(REPO)), timeout=30)
        deployments = fake.deployments(REPO)
        for deployment in deployments:
            statuses = fake.deployment_statuses(REPO, deployment["id"])
            assert all("javascript" not in str(status) for status in statuses)
        server.runtime.lifecycle.destroy_environment(env.id)
        wait_for(lambda: not server.runtime.lifecycle.list_environments(), timeout=90)


def test_finding_4_a_repository_stack_silo_belongs_to_its_repository(
    tmp_path: Path, fake_github: FakeGitHub, port_base: int
) -> None:
    """Two repositories whose own stacks share a folder name get two silos, each owned by its
    repository; naming the other's silo is refused with a comment."""
    fake = fake_github
    other = "octo-org/other"
    for repo, base in ((REPO, port_base), (other, port_base + 10)):
        files = {".runbot.yml": "stack: {path: .runbot/stacks/web}\n"}
        for path in (TEMPLATES / "local").rglob("*"):
            if path.is_file() and path.suffix in (".tf", ".py", ".yml"):
                relative = path.relative_to(TEMPLATES / "local").as_posix()
                text = path.read_text()
                if relative == "silo/variables.tf":
                    text = text.replace("47100", str(base))
                    text = text.replace("default     = 20", "default = 5")
                files[f".runbot/stacks/web/{relative}"] = text
        fake.add_repo(repo, files={"main": files})
    fake.add_installation(INSTALLATION, "octo-org", [REPO, other])
    policy = write_policy(tmp_path, "default:\n  repo_stacks: true\n")
    fake.add_pull(REPO, 1, A, "feature")
    fake.add_pull(other, 1, B, "feature")
    with AppServer(app_settings(tmp_path, fake, policy_file=policy)) as server:
        lifecycle = server.runtime.lifecycle
        pull_event(server, fake, "opened")
        wait_for(lambda: status_of(server) == Status.READY, timeout=120)
        mine = lifecycle.get_silo("octo-org-hello-web")
        assert mine.owner == REPO and mine.source_key == f"repo:{REPO}:.runbot/stacks/web"

        # The other repository names this silo: refused, nothing of its own is run in it.
        named = "stack: {path: .runbot/stacks/web}\nsilo: octo-org-hello-web\n"
        fake.set_file(other, "main", ".runbot.yml", named)
        payload = fake.pull_request_event("opened", other, 1)
        payload["installation"] = {"id": INSTALLATION, "node_id": "MDIz"}
        deliver(server.webhook_url, "pull_request", payload, WEBHOOK_SECRET)
        refused = lambda: shown_on(fake, other)  # noqa: E731
        wait_for(lambda: "is built from the stack `.runbot/stacks/web`" in refused(), 30)
        assert f"of the repository `{REPO}`" in refused()
        assert lifecycle.live_environment_for(other, 1) is None

        # With no `silo:`, it gets a silo of its own, owned by it.
        fake.set_file(other, "main", ".runbot.yml", "stack: {path: .runbot/stacks/web}\n")
        deliver(server.webhook_url, "pull_request", payload, WEBHOOK_SECRET)
        theirs = lambda: lifecycle.live_environment_for(other, 1)  # noqa: E731
        wait_for(lambda: (env := theirs()) is not None and env.status == Status.READY, 120)
        env = theirs()
        assert env is not None and env.silo_name == "octo-org-other-web"
        assert lifecycle.get_silo("octo-org-other-web").owner == other
        for silo in ("octo-org-hello-web", "octo-org-other-web"):
            lifecycle.destroy_silo(silo, force=True)
        wait_for(
            lambda: all(s.status == Status.DESTROYED for s in lifecycle.list_silos()), timeout=120
        )


def shown_on(fake: FakeGitHub, repo: str, number: int = 1) -> str:
    bodies = [c["body"] for c in fake.comments(repo, number) if c["body"].startswith(MARKER)]
    return bodies[-1].replace("\\", "") if bodies else ""


def test_finding_9_operator_ceilings_bound_the_config_and_extend(
    tmp_path: Path, fake_github: FakeGitHub, port_base: int
) -> None:
    """`max_environments: 1000`, `ttl.max: 365d` and a new silo past `max_silos` are refused,
    each naming its key; `/runbot extend` stops at `max_ttl`, even lowered after creation."""
    fake = fake_github
    policy = write_policy(tmp_path, "default:\n  max_ttl: 2d\n  max_silos: 0\n")
    good = "stack: local\nsilo: trust\nttl: {idle: 2h, max: 2d}\n"
    with serving(tmp_path, fake, good, port_base, policy_file=policy) as server:
        fake.add_pull(REPO, 1, A, "feature")
        for config, key in (
            ("stack: local\nsilo: trust\nmax_environments: 1000\n", "max_environments"),
            ("stack: local\nsilo: trust\nttl: {idle: 2h, max: 365d}\n", "max_ttl"),
            ("stack: local\nsilo: another\n", "max_silos"),
        ):
            fake.set_file(REPO, "main", ".runbot.yml", config)
            pull_event(server, fake, "synchronize")
            wait_for(lambda key=key: f"`{key}:" in shown(fake), timeout=30)
            assert server.runtime.lifecycle.list_environments() == []
        assert [s.name for s in server.runtime.lifecycle.list_silos()] == ["trust"]

        fake.set_file(REPO, "main", ".runbot.yml", good)
        pull_event(server, fake, "synchronize")
        wait_for(lambda: status_of(server) == Status.READY, timeout=90)
        env = server.runtime.lifecycle.live_environment_for(REPO, 1)
        assert env is not None
        policy.write_text("default:\n  max_ttl: 3h\n  max_silos: 0\n")
        server.runtime.policy.reload()
        comment(server, fake, "/runbot extend 4h", "wendy")
        wait_for(
            lambda: any("Cannot extend" in c["body"] for c in fake.comments(REPO, 1)), timeout=30
        )
        after = server.runtime.lifecycle.live_environment_for(REPO, 1)
        assert after is not None and after.expires_at == env.expires_at
