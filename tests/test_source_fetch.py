"""Fetching a PR's source: GitHub's tarball through the real gateway (302 to codeload) against
the fake GitHub, `git archive` of a local repository, and the cache both fill."""

from __future__ import annotations

import asyncio
import io
import os
import tarfile
import time
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest

from app.github.appgateway import GitHubAppGateway
from app.github.tarball import github_download
from app.settings import SettingsError, load_settings
from app.source.cache import SourceCache
from app.source.fetch import SourceLimits, SourceRefused, Sources, SourceUnavailable
from app.source.localgit import git_archive_download
from tests.fakegithub.server import FakeGitHub
from tests.helpers import git

pytest_plugins = ["tests.fakegithub.pytest_plugin"]

REPO = "octo-org/hello"
HEAD = "a" * 40


@pytest.fixture
def fake(fake_github: FakeGitHub) -> FakeGitHub:
    fake_github.add_repo(REPO, files={"main": {"README.md": "hello\n"}}, private=True)
    fake_github.add_installation(7, "octo-org", [REPO])
    return fake_github


@pytest.fixture
async def gateway(fake: FakeGitHub) -> AsyncIterator[GitHubAppGateway]:
    settings = load_settings(
        github_app_id=fake.app_id, github_private_key=fake.private_key_pem, github_api_url=fake.url
    )
    gw = GitHubAppGateway(settings, min_write_interval=0.0)
    yield gw
    await gw.aclose()


def github_sources(root: Path, gateway: GitHubAppGateway, **limits: int) -> Sources:
    return Sources(SourceCache(root), github_download(gateway), lambda _r: SourceLimits(**limits))


def tarball_requests(fake: FakeGitHub) -> list[str]:
    return [r.path for r in fake.requests if "/tarball/" in r.path or "/_codeload/" in r.path]


async def test_a_pr_head_comes_from_the_tarball_endpoint_through_codeload(
    fake: FakeGitHub, gateway: GitHubAppGateway, tmp_path: Path
) -> None:
    """A pushed commit's files arrive; the second checkout is served by the cache, not GitHub."""
    sha = fake.push_commit(REPO, {"app/index.html": "<h1>PR 1</h1>", "run.sh": "#!/bin/sh\n"})
    fake.add_pull(REPO, 1, head_sha=sha, head_ref="feature")
    sources = github_sources(tmp_path / "sources", gateway)
    tree = await sources.checkout(REPO, sha)
    assert tree == tmp_path / "sources" / "octo-org--hello" / sha
    assert (tree / "app" / "index.html").read_text() == "<h1>PR 1</h1>"
    assert os.access(tree / "run.sh", os.X_OK)
    assert tarball_requests(fake) == [
        f"/repos/{REPO}/tarball/{sha}",
        f"/_codeload/{REPO}/legacy.tar.gz/{sha}",
    ]
    assert await sources.checkout(REPO, sha) == tree
    assert len(tarball_requests(fake)) == 2  # the cache answered
    assert list((tmp_path / "sources" / ".staging").iterdir()) == []


async def test_a_fork_pr_and_a_made_up_sha_are_fetched_from_the_base_repository(
    fake: FakeGitHub, gateway: GitHubAppGateway, tmp_path: Path
) -> None:
    """The fake's own SHAs map to real commits of the files it holds for them."""
    fake.add_pull(REPO, 2, head_sha=HEAD, head_ref="their-branch", fork=True, author="mallory")
    tree = await github_sources(tmp_path, gateway).checkout(REPO, HEAD)
    assert (tree / "README.md").read_text() == "hello\n"
    assert all(path.startswith(f"/repos/{REPO}/") for path in tarball_requests(fake)[:1])


async def test_an_unknown_commit_is_refused_with_what_to_do(
    fake: FakeGitHub, gateway: GitHubAppGateway, tmp_path: Path
) -> None:
    with pytest.raises(SourceRefused, match="404") as caught:
        await github_sources(tmp_path, gateway).checkout(REPO, "b" * 40)
    assert "push again" in str(caught.value)
    assert not (tmp_path / "octo-org--hello").exists()


async def test_an_outage_is_transient_and_the_next_try_works(
    fake: FakeGitHub, gateway: GitHubAppGateway, tmp_path: Path
) -> None:
    sha = fake.push_commit(REPO, {"a.txt": "a"})
    sources = github_sources(tmp_path, gateway)
    fake.fail_next(1, 502, match="tarball")
    with pytest.raises(SourceUnavailable, match="502") as caught:
        await sources.checkout(REPO, sha)
    assert caught.value.retry_after > 0
    assert (await sources.checkout(REPO, sha) / "a.txt").read_text() == "a"


async def test_a_download_past_the_cap_stops_and_names_the_policy_key(
    fake: FakeGitHub, gateway: GitHubAppGateway, tmp_path: Path
) -> None:
    sha = fake.push_commit(REPO, {"noise.bin": os.urandom(3_000_000)})
    sources = github_sources(tmp_path, gateway, max_bytes=1000, max_files=1)
    with pytest.raises(SourceRefused, match="larger than") as caught:
        await sources.checkout(REPO, sha)
    assert "`source_max_bytes`" in str(caught.value)
    assert list((tmp_path / ".staging").iterdir()) == []


async def test_two_replicas_filling_one_commit_at_once_both_get_the_whole_tree(
    fake: FakeGitHub, gateway: GitHubAppGateway, tmp_path: Path
) -> None:
    """Each fills its own staging folder; one rename wins, the other keeps the winner's."""
    files = {f"dir{i}/file{i}.txt": f"content {i}\n" for i in range(200)}
    sha = fake.push_commit(REPO, files)
    first, second = github_sources(tmp_path, gateway), github_sources(tmp_path, gateway)
    trees = await asyncio.gather(*(s.checkout(REPO, sha) for s in (first, second, first)))
    assert len(set(trees)) == 1
    assert len(tarball_requests(fake)) == 6  # all three really filled it, at once
    tree = trees[0]
    assert sorted(str(p.relative_to(tree)) for p in tree.rglob("*.txt")) == sorted(files)
    assert all((tree / name).read_text() == text for name, text in files.items())
    assert list((tmp_path / ".staging").iterdir()) == []


def test_prune_keeps_the_newest_and_what_is_in_use_and_drops_stale_staging(
    tmp_path: Path,
) -> None:
    cache = SourceCache(tmp_path, keep=2, in_use=600, stale=600)
    now = time.time()
    ages = {"1" * 40: 5000, "2" * 40: 4000, "3" * 40: 3000, "4" * 40: 100}
    for sha, age in ages.items():
        staged = cache.staging()
        (staged / "tree").mkdir()
        tree = cache.commit("o/r", sha, staged / "tree")
        os.utime(tree, (now - age, now - age))
        staged.rmdir()
    stale, fresh = cache.staging(), cache.staging()
    os.utime(stale, (now - 5000, now - 5000))
    pruned = cache.prune(now)
    assert (pruned.trees, pruned.staging) == (2, 1)
    kept = sorted(p.name for p in (tmp_path / "o--r").iterdir())
    assert kept == ["3" * 40, "4" * 40]
    assert not stale.exists() and fresh.exists()
    # a tree used just now (lookup touches it) survives a prune past `keep`
    assert cache.lookup("o/r", "3" * 40) is not None
    assert SourceCache(tmp_path, keep=0, in_use=600).prune().trees == 0


async def test_local_mode_archives_the_commit_from_the_local_repository(tmp_path: Path) -> None:
    repo = tmp_path / "repo"
    repo.mkdir()
    git(repo, "init", "-q")
    (repo / "site").mkdir()
    (repo / "site" / "index.html").write_text("<h1>local</h1>")
    git(repo, "add", ".")
    git(repo, "commit", "-q", "-m", "first")
    sha = git(repo, "rev-parse", "HEAD")
    (repo / "site" / "index.html").write_text("<h1>uncommitted</h1>")
    sources = Sources(SourceCache(tmp_path / "sources"), git_archive_download(repo))
    tree = await sources.checkout("octo-org/hello", sha)
    assert (tree / "site" / "index.html").read_text() == "<h1>local</h1>"
    with pytest.raises(SourceRefused, match="RUNBOT_LOCAL_REPO") as caught:
        await sources.checkout("octo-org/hello", "c" * 40)
    assert "commit it there" in str(caught.value)
    assert str(repo) not in str(caught.value)  # no host path: reasons reach comments
    with pytest.raises(SourceRefused, match="RUNBOT_LOCAL_REPO") as caught:
        await Sources(
            SourceCache(tmp_path / "s2"), git_archive_download(tmp_path / "no-repo")
        ).checkout("octo-org/hello", sha)
    assert str(tmp_path) not in str(caught.value)
    for bad in ("HEAD", "--output=/tmp/x", "a" * 39):
        with pytest.raises(SourceRefused, match="not a commit id"):
            await sources.checkout("octo-org/hello", bad)


def test_the_fake_answers_as_github_does(fake: FakeGitHub) -> None:
    """302 to codeload with a token in the Location; codeload serves application/x-gzip with
    one top folder `owner-repo-sha7/`, as `git archive --prefix` makes it."""
    sha = fake.push_commit(REPO, {"a.txt": "a"})
    token = fake.issue_installation_token(7)
    headers = {"Authorization": f"Bearer {token}"}
    with httpx.Client(base_url=fake.url, headers=headers) as client:
        found = client.get(f"/repos/{REPO}/tarball/{sha}")
        assert found.status_code == 302
        location = found.headers["location"]
        assert location.startswith(f"{fake.url}/_codeload/{REPO}/legacy.tar.gz/{sha}?token=")
        body = httpx.get(location)
        assert client.get(f"/repos/{REPO}/tarball/{'d' * 40}").status_code == 404
    assert body.headers["content-type"] == "application/x-gzip"
    with tarfile.open(fileobj=io.BytesIO(body.content), mode="r:gz") as tar:
        names = tar.getnames()
    assert names == ["octo-org-hello-" + sha[:7], f"octo-org-hello-{sha[:7]}/a.txt"]
    assert httpx.get(location).status_code == 404  # the token was for one download


def test_runbot_local_repo_must_be_a_git_repository(tmp_path: Path) -> None:
    with pytest.raises(SettingsError, match=r"RUNBOT_LOCAL_REPO: .*must be a git repository"):
        load_settings(local_repo=tmp_path)
    git(tmp_path, "init", "-q")
    assert load_settings(local_repo=tmp_path).local_repo == tmp_path
