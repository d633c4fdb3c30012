"""The local stack runs the PR's own code (issue 19): a template declaring runbot_source_dir
gets the head commit's files through a real engine run, from the fake GitHub's tarball or from
RUNBOT_LOCAL_REPO; a refused tarball fails the environment with the reason."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
from sqlmodel import col, select

from app.db.models import Environment, PullRequest, Run, RunLogChunk, TargetRecord
from app.github.appgateway import GitHubAppGateway
from app.github.comment import render_status_comment
from app.github.status import status_view
from app.github.tarball import github_download
from app.lifecycle.states import Status
from app.runtime import Runtime, build_runtime
from app.workers import Workers
from tests.conftest import make_settings
from tests.fakegithub.server import FakeGitHub
from tests.helpers import converge, converge_sync, env_settled, git, silo_ready

pytestmark = pytest.mark.engine
pytest_plugins = ["tests.fakegithub.pytest_plugin"]

STACKS = Path(__file__).parent / "fixtures" / "stacks-source"
REPO = "octo-org/site"


def runtime(tmp_path: Path, fake: FakeGitHub | None = None, **overrides: object) -> Runtime:
    github = (
        {"github_app_id": fake.app_id, "github_private_key": fake.private_key_pem}
        | {"github_api_url": fake.url}
        if fake
        else {}
    )
    settings = make_settings(tmp_path, templates_dir=STACKS, **github, **overrides)
    rt = build_runtime(settings)
    rt.lifecycle.create_silo("web", "sourced")
    converge_sync(rt, silo_ready(rt, "web"))
    assert rt.lifecycle.get_silo("web").status == Status.READY
    return rt


def converge_from_github(rt: Runtime, env_id: str) -> None:
    async def run() -> None:
        gateway = GitHubAppGateway(rt.settings, min_write_interval=0.0)
        try:
            source = rt.sources(github_download(gateway))
            await converge(rt, env_settled(rt, env_id), source=source)
        finally:
            await gateway.aclose()

    asyncio.run(run())


def run_log(rt: Runtime, env_id: str) -> str:
    with rt.db.session() as session:
        run = session.exec(
            select(Run).where(col(Run.target_id) == env_id).order_by(col(Run.id).desc())
        ).first()
        assert run is not None
        chunks = session.exec(select(RunLogChunk).where(RunLogChunk.run_id == run.id)).all()
    return "".join(chunk.text for chunk in chunks)


@pytest.fixture
def fake(fake_github: FakeGitHub) -> FakeGitHub:
    fake_github.add_repo(REPO, private=True)
    fake_github.add_installation(11, "octo-org", [REPO])
    return fake_github


def test_the_pr_head_reaches_the_engine_and_a_push_brings_the_next(
    tmp_path: Path, fake: FakeGitHub
) -> None:
    rt = runtime(tmp_path, fake)
    first = fake.push_commit(REPO, {"app/index.html": "<h1>first</h1>"})
    fake.add_pull(REPO, 1, head_sha=first, head_ref="feature")
    env = rt.lifecycle.create_environment("web", REPO, 1, first)
    converge_from_github(rt, env.id)
    env = rt.lifecycle.get_environment(env.id)
    assert env.status == Status.READY, env.reason
    assert env.outputs["page"]["value"] == "<h1>first</h1>"
    workspace = rt.settings.data_dir.absolute() / "workspace" / f"env-{env.id}"
    assert (workspace / "index.html").read_text() == "<h1>first</h1>"
    source = rt.settings.data_dir.absolute() / "sources" / "octo-org--site" / first
    assert not (source / "written").exists()
    assert "SOURCE-READ-ONLY" in run_log(rt, env.id)
    with rt.db.session() as session:  # what an orphan destroy would run with: no source
        record = session.get(TargetRecord, f"env-{env.id}")
        assert record is not None and record.variables["runbot_source_dir"] == ""

    second = fake.push_commit(REPO, {"app/index.html": "<h1>second</h1>"})
    fake.update_pull(REPO, 1, head_sha=second)
    rt.lifecycle.update_environment(env.id, head_sha=second)
    converge_from_github(rt, env.id)
    env = rt.lifecycle.get_environment(env.id)
    assert env.status == Status.READY, env.reason
    assert (workspace / "index.html").read_text() == "<h1>second</h1>"
    tarballs = [r.path for r in fake.requests if "/tarball/" in r.path]
    assert tarballs == [f"/repos/{REPO}/tarball/{first}", f"/repos/{REPO}/tarball/{second}"]

    rt.lifecycle.destroy_environment(env.id)  # needs no source: nothing is downloaded
    converge_from_github(rt, env.id)
    assert rt.lifecycle.get_environment(env.id).status == Status.DESTROYED
    assert len([r for r in fake.requests if "/tarball/" in r.path]) == 2


def test_a_refused_tarball_fails_the_environment_with_the_reason(
    tmp_path: Path, fake: FakeGitHub
) -> None:
    policy = tmp_path / "policy.yml"
    policy.write_text("default:\n  source_max_files: 3\n")
    rt = runtime(tmp_path, fake, policy_file=policy)
    sha = fake.push_commit(REPO, {f"app/page{i}.html": "x" for i in range(5)})
    env = rt.lifecycle.create_environment("web", REPO, 2, sha)
    converge_from_github(rt, env.id)
    env = rt.lifecycle.get_environment(env.id)
    assert env.status == Status.FAILED
    assert env.reason is not None
    assert "more than 3 entries" in env.reason and "`source_max_files`" in env.reason
    with rt.db.session() as session:  # nothing ran
        assert session.exec(select(Run).where(col(Run.target_id) == env.id)).first() is None
    # the status comment says it, like any failure
    pull = PullRequest(id=f"{REPO}#2", repository=REPO, number=2, enabled=True, head_sha=sha)
    view = status_view(pull, env, public_url="http://runbot.test", app_slug=None)
    assert view is not None
    comment = render_status_comment(view)
    assert "more than 3 entries" in comment and r"source\_max\_files" in comment


def test_an_outage_waits_and_retries_instead_of_failing(tmp_path: Path, fake: FakeGitHub) -> None:
    rt = runtime(tmp_path, fake)
    sha = fake.push_commit(REPO, {"app/index.html": "<h1>later</h1>"})
    env = rt.lifecycle.create_environment("web", REPO, 3, sha)
    fake.fail_next(1, 503, match="tarball")

    async def until_waiting() -> None:
        gateway = GitHubAppGateway(rt.settings, min_write_interval=0.0)
        try:
            source = rt.sources(github_download(gateway))

            def waiting() -> bool:
                row = rt.lifecycle.get_environment(env.id)
                return row.lease_owner is None and "fetch the PR's source" in (row.reason or "")

            await converge(rt, waiting, source=source)
        finally:
            await gateway.aclose()

    asyncio.run(until_waiting())
    row = rt.lifecycle.get_environment(env.id)
    assert row.status != Status.FAILED and "503" in (row.reason or "")
    assert row.next_attempt_at is not None
    with rt.db.session() as session:  # try now rather than in 30 s
        stored = session.get(Environment, env.id)
        assert stored is not None
        stored.next_attempt_at = None
        session.add(stored)
        session.commit()
    converge_from_github(rt, env.id)
    env = rt.lifecycle.get_environment(env.id)
    assert env.status == Status.READY, env.reason
    assert env.outputs["page"]["value"] == "<h1>later</h1>"


def test_local_mode_takes_the_source_from_runbot_local_repo(tmp_path: Path) -> None:
    repo = tmp_path / "repo"
    (repo / "app").mkdir(parents=True)
    (repo / "app" / "index.html").write_text("<h1>from my laptop</h1>")
    git(repo, "init", "-q")
    git(repo, "add", ".")
    git(repo, "commit", "-qm", "page")
    sha = git(repo, "rev-parse", "HEAD")
    rt = runtime(tmp_path, local_repo=repo)
    env = rt.lifecycle.create_environment("web", "me/site", 1, sha)
    converge_sync(rt, env_settled(rt, env.id))
    env = rt.lifecycle.get_environment(env.id)
    assert env.status == Status.READY, env.reason
    assert env.outputs["page"]["value"] == "<h1>from my laptop</h1>"


def test_without_a_source_the_variable_is_empty_and_the_log_says_why(tmp_path: Path) -> None:
    """Local mode without RUNBOT_LOCAL_REPO has nowhere to fetch from: `""`, and a note."""
    rt = runtime(tmp_path)
    env = rt.lifecycle.create_environment("web", "me/site", 1, "e" * 40)
    converge_sync(rt, env_settled(rt, env.id))
    env = rt.lifecycle.get_environment(env.id)
    assert env.status == Status.FAILED  # this template reads a file of the source
    assert "RUNBOT_LOCAL_REPO" in run_log(rt, env.id).splitlines()[-1]


def test_the_workers_fetch_sources_from_github(tmp_path: Path, fake: FakeGitHub) -> None:
    """`runbot serve`/`worker` wire the gateway's tarball in: no source passed by hand."""
    rt = runtime(tmp_path, fake)
    sha = fake.push_commit(REPO, {"app/index.html": "<h1>served</h1>"})
    env = rt.lifecycle.create_environment("web", REPO, 4, sha)

    async def run() -> None:
        workers = Workers.build(rt)
        try:
            await workers.reconciler.drain(env_settled(rt, env.id), timeout=120, poll=0.1)
        finally:
            await workers.gateway.aclose()

    asyncio.run(run())
    row = rt.lifecycle.get_environment(env.id)
    assert row.status == Status.READY, row.reason
    assert row.outputs["page"]["value"] == "<h1>served</h1>"
