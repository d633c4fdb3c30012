"""Tests for app.stacks.git against local repositories over file:// (no network)."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

import app.stacks.git as git_module
from app.stacks.catalog import StackError, StackSource
from app.stacks.git import fetch_git_stack, load_git_stack

pytestmark = pytest.mark.skipif(shutil.which("git") is None, reason="needs the git CLI")

SILO = 'output "db_host" {\n  value = "db"\n}\n'


def instance(version: str) -> str:
    return (
        'output "url" {\n'
        '  value       = "https://example.test"\n'
        f'  description = "{version}"\n'
        "}\n"
    )


class Repo:
    """A throwaway source repository with helpers to commit stack versions."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.env = {
            **os.environ,
            "GIT_AUTHOR_NAME": "t",
            "GIT_AUTHOR_EMAIL": "t@example.test",
            "GIT_COMMITTER_NAME": "t",
            "GIT_COMMITTER_EMAIL": "t@example.test",
            "GIT_CONFIG_GLOBAL": os.devnull,
            "GIT_CONFIG_NOSYSTEM": "1",
        }
        path.mkdir()
        self.git("init", "--quiet", "--initial-branch=main")

    @property
    def url(self) -> str:
        return self.path.as_uri()

    def git(self, *args: str) -> str:
        done = subprocess.run(
            ["git", *args], cwd=self.path, env=self.env, capture_output=True, text=True, check=True
        )
        return done.stdout.strip()

    def commit_stack(self, version: str, path: str = "stacks/web") -> str:
        root = self.path / path
        (root / "silo").mkdir(parents=True, exist_ok=True)
        (root / "instance").mkdir(parents=True, exist_ok=True)
        (root / "silo" / "main.tf").write_text(SILO)
        (root / "instance" / "main.tf").write_text(instance(version))
        self.git("add", "-A")
        self.git("commit", "--quiet", "-m", version)
        return self.git("rev-parse", "HEAD")


def description(stack_dir: Path) -> str:
    text = (stack_dir / "instance" / "main.tf").read_text()
    return text.split('description = "')[1].split('"')[0]


@pytest.fixture
def repo(tmp_path: Path) -> Repo:
    return Repo(tmp_path / "src")


@pytest.fixture
def cache(tmp_path: Path) -> Path:
    return tmp_path / "cache"


def test_branch_ref(repo: Repo, cache: Path) -> None:
    repo.commit_stack("v1")
    head = repo.commit_stack("v2")
    stack_dir, commit = fetch_git_stack(repo.url, "main", "stacks/web", cache)
    assert commit == head
    assert stack_dir == cache / "trees" / head / "stacks" / "web"
    assert description(stack_dir) == "v2"


def test_tag_ref(repo: Repo, cache: Path) -> None:
    first = repo.commit_stack("v1")
    repo.git("tag", "-a", "release-1", "-m", "annotated tag")
    repo.commit_stack("v2")
    stack_dir, commit = fetch_git_stack(repo.url, "release-1", "stacks/web", cache)
    assert commit == first  # the commit, not the annotated tag object
    assert description(stack_dir) == "v1"


@pytest.mark.parametrize("length", [40, 10])
def test_sha_ref(repo: Repo, cache: Path, length: int) -> None:
    first = repo.commit_stack("v1")
    repo.commit_stack("v2")
    stack_dir, commit = fetch_git_stack(repo.url, first[:length], "stacks/web", cache)
    assert commit == first
    assert description(stack_dir) == "v1"


def test_empty_ref_means_default_branch(repo: Repo, cache: Path) -> None:
    head = repo.commit_stack("v1")
    repo.git("checkout", "--quiet", "-b", "other")
    other = repo.commit_stack("v-other")
    assert fetch_git_stack(repo.url, "", "stacks/web", cache)[1] == other  # HEAD is `other`
    repo.git("checkout", "--quiet", "main")
    assert fetch_git_stack(repo.url, "", "stacks/web", cache)[1] == head


def test_branch_moves_are_seen_on_the_next_fetch(repo: Repo, cache: Path) -> None:
    first = repo.commit_stack("v1")
    assert fetch_git_stack(repo.url, "main", "stacks/web", cache)[1] == first
    second = repo.commit_stack("v2")
    stack_dir, commit = fetch_git_stack(repo.url, "main", "stacks/web", cache)
    assert commit == second
    assert description(stack_dir) == "v2"


def test_pinned_commit_keeps_old_code_after_branch_moves(repo: Repo, cache: Path) -> None:
    first = repo.commit_stack("v1")
    _, created_with = fetch_git_stack(repo.url, "main", "stacks/web", cache)
    assert created_with == first
    repo.commit_stack("v2")
    stack_dir, commit = fetch_git_stack(repo.url, "main", "stacks/web", cache, commit=created_with)
    assert commit == first
    assert description(stack_dir) == "v1"


def test_pinned_commit_survives_force_push_and_a_lost_tree(repo: Repo, cache: Path) -> None:
    first = repo.commit_stack("v1")
    fetch_git_stack(repo.url, "main", "stacks/web", cache)
    # Rewrite history so `first` is reachable from nothing upstream ...
    repo.git("checkout", "--quiet", "--orphan", "rewritten")
    repo.commit_stack("rewritten")
    repo.git("branch", "--quiet", "-D", "main")
    repo.git("branch", "--quiet", "-m", "main")
    fetch_git_stack(repo.url, "main", "stacks/web", cache)  # prunes the old main
    # ... garbage-collect the mirror, and lose the exported tree: the mirror
    # still has the commit because runbot pinned it with a ref.
    (mirror,) = (cache / "mirrors").glob("*.git")
    subprocess.run(
        ["git", "--git-dir", str(mirror), "gc", "--quiet", "--prune=now"],
        env=repo.env,
        check=True,
    )
    shutil.rmtree(cache / "trees")
    shutil.rmtree(repo.path / ".git")  # and the upstream history is gone for good
    stack_dir, commit = fetch_git_stack(repo.url, "main", "stacks/web", cache, commit=first)
    assert commit == first
    assert description(stack_dir) == "v1"


def test_pinned_commit_that_was_never_fetched_is_fetched(repo: Repo, cache: Path) -> None:
    first = repo.commit_stack("v1")
    stack_dir, commit = fetch_git_stack(repo.url, "", "stacks/web", cache, commit=first)
    assert (commit, description(stack_dir)) == (first, "v1")


def test_pinned_commit_that_does_not_exist(repo: Repo, cache: Path) -> None:
    repo.commit_stack("v1")
    with pytest.raises(StackError, match=r"commit 0{40} is no longer available"):
        fetch_git_stack(repo.url, "main", "stacks/web", cache, commit="0" * 40)


def test_pinned_commit_must_be_a_full_sha(repo: Repo, cache: Path) -> None:
    with pytest.raises(StackError, match="not a full hexadecimal commit SHA"):
        fetch_git_stack(repo.url, "main", "stacks/web", cache, commit="abc123")


def test_exported_tree_is_reused_without_git(
    repo: Repo, cache: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    first = repo.commit_stack("v1")
    stack_dir, _ = fetch_git_stack(repo.url, "main", "stacks/web", cache)
    (stack_dir / "marker").write_text("kept")
    shutil.rmtree(repo.path)  # the source is gone ...

    def no_git(*args: Any, **kwargs: Any) -> Any:
        raise AssertionError(f"git was run: {args}")

    monkeypatch.setattr(git_module.subprocess, "run", no_git)
    again, commit = fetch_git_stack(repo.url, "main", "stacks/web", cache, commit=first)
    assert (again, commit) == (stack_dir, first)
    assert (again / "marker").read_text() == "kept"  # ... and the tree was not re-exported


def test_mirror_is_named_by_url_hash(repo: Repo, cache: Path) -> None:
    repo.commit_stack("v1")
    fetch_git_stack(repo.url, "main", "stacks/web", cache)
    mirrors = [p.name for p in (cache / "mirrors").iterdir() if p.suffix == ".git"]
    assert len(mirrors) == 1
    assert "src" not in mirrors[0]
    assert len(mirrors[0]) == 32 + len(".git")


def test_whole_repository_path(repo: Repo, cache: Path) -> None:
    head = repo.commit_stack("v1", path="")
    for path in ("", "."):
        stack_dir, commit = fetch_git_stack(repo.url, "main", path, cache)
        assert commit == head
        assert stack_dir == cache / "trees" / head
        assert description(stack_dir) == "v1"


def test_load_git_stack_records_the_commit(repo: Repo, cache: Path) -> None:
    head = repo.commit_stack("v1")
    stack = load_git_stack("web", repo.url, "main", "stacks/web", cache)
    assert stack.source == StackSource(
        kind="git", url=repo.url, ref="main", path="stacks/web", commit=head
    )
    assert stack.instance.outputs["url"].description == "v1"


# --- refusals ---------------------------------------------------------------------


@pytest.mark.parametrize(
    "path", ["../x", "..", "stacks/../../etc", "/etc", "/", "stacks\\..\\x", "a\x00b"]
)
def test_path_traversal_is_rejected(repo: Repo, cache: Path, path: str) -> None:
    repo.commit_stack("v1")
    with pytest.raises(StackError, match=re.escape(f"path {path!r} is not allowed")):
        fetch_git_stack(repo.url, "main", path, cache)
    assert not cache.exists()  # refused before touching git


def test_symlink_out_of_the_tree_is_rejected(repo: Repo, cache: Path) -> None:
    repo.commit_stack("v1")
    (repo.path / "escape").symlink_to("/etc")
    repo.git("add", "-A")
    repo.git("commit", "--quiet", "-m", "link")
    with pytest.raises(StackError, match="cannot be exported safely"):
        fetch_git_stack(repo.url, "main", "escape", cache)


def test_missing_path(repo: Repo, cache: Path) -> None:
    head = repo.commit_stack("v1")
    with pytest.raises(StackError, match=f"path 'stacks/api' is not a directory .* {head}"):
        fetch_git_stack(repo.url, "main", "stacks/api", cache)


def test_unknown_ref(repo: Repo, cache: Path) -> None:
    repo.commit_stack("v1")
    with pytest.raises(StackError, match="git ref 'nope' is not a branch, tag or commit"):
        fetch_git_stack(repo.url, "nope", "stacks/web", cache)


@pytest.mark.parametrize("ref", ["--upload-pack=touch /tmp/x", "main~1", "a..b", "HEAD@{1}", "a b"])
def test_option_like_or_expression_refs_are_refused(repo: Repo, cache: Path, ref: str) -> None:
    with pytest.raises(StackError, match="is not a valid branch, tag or commit name"):
        fetch_git_stack(repo.url, ref, "stacks/web", cache)


@pytest.mark.parametrize("url", ["--upload-pack=x", "ext::sh -c id", "/local/path", ""])
def test_unsupported_urls_are_refused(cache: Path, url: str) -> None:
    with pytest.raises(StackError, match="git URL"):
        fetch_git_stack(url, "main", "", cache)


def test_fetch_failure_includes_git_stderr_without_the_token(tmp_path: Path, cache: Path) -> None:
    token = "ghs_" + "A1b2C3d4" * 4
    missing = tmp_path / token / "repo.git"
    env = {
        "GIT_CONFIG_COUNT": "1",
        "GIT_CONFIG_KEY_0": "http.extraHeader",
        "GIT_CONFIG_VALUE_0": f"Authorization: Bearer {token}",
    }
    with pytest.raises(StackError) as info:
        fetch_git_stack(missing.as_uri(), "main", "", cache, env=env)
    message = str(info.value)
    assert "git fetch for" in message
    assert "does not appear to be a git repository" in message  # git's own stderr
    assert token not in message
    assert "***" in message
    assert not any((cache / "mirrors").glob("*.git"))  # no empty mirror left behind


def test_credentials_travel_only_in_env(
    repo: Repo, cache: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The env reaches git (here it rewrites the URL) and never appears in argv."""
    head = repo.commit_stack("v1")
    fake_url = "https://git.invalid/org/stacks.git"
    secret = "Authorization: Bearer sekrit-value-123"
    env = {
        "GIT_CONFIG_COUNT": "2",
        "GIT_CONFIG_KEY_0": f"url.{repo.url}.insteadOf",
        "GIT_CONFIG_VALUE_0": fake_url,
        "GIT_CONFIG_KEY_1": "http.extraHeader",
        "GIT_CONFIG_VALUE_1": secret,
    }
    seen: list[tuple[list[str], dict[str, str]]] = []
    real_run: Callable[..., Any] = subprocess.run

    def spy(argv: list[str], **kwargs: Any) -> Any:
        seen.append((argv, kwargs.get("env") or {}))
        assert kwargs.get("shell") in (None, False)
        return real_run(argv, **kwargs)

    monkeypatch.setattr(git_module.subprocess, "run", spy)
    stack_dir, commit = fetch_git_stack(fake_url, "main", "stacks/web", cache, env=env)
    assert commit == head
    assert description(stack_dir) == "v1"
    assert seen
    for argv, run_env in seen:
        assert isinstance(argv, list)
        assert argv[0] == "git"
        assert not any("sekrit" in arg for arg in argv)
        assert run_env["GIT_TERMINAL_PROMPT"] == "0"
        assert run_env["GIT_CONFIG_VALUE_1"] == secret


def test_git_missing(repo: Repo, cache: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(git_module.shutil, "which", lambda name: None)
    with pytest.raises(StackError, match="git is not installed"):
        fetch_git_stack(repo.url, "main", "stacks/web", cache)


def test_scrub_removes_common_credential_shapes() -> None:
    scrub = git_module._scrub
    text = (
        "fatal: https://x-access-token:ghp_abcdefghijklmnopqrstuvwx@github.com/o/r.git "
        "Authorization: Basic dXNlcjpwYXNz github_pat_11ABCDEFG0123456789_abcdefghij"
    )
    out = scrub(text, None)
    for secret in ("x-access-token", "ghp_abcdefghijklmnopqrstuvwx", "dXNlcjpwYXNz", "github_pat_"):
        assert secret not in out
    assert "github.com/o/r.git" in out


def test_host_git_settings_do_not_mix_with_the_callers(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GIT_ASKPASS", "/usr/bin/host-askpass")
    monkeypatch.setenv("GIT_CONFIG_COUNT", "2")
    monkeypatch.setenv("GIT_CONFIG_KEY_1", "http.extraHeader")
    monkeypatch.setenv("GIT_CONFIG_VALUE_1", "Authorization: Bearer host-token")
    monkeypatch.setenv("GIT_CONFIG_GLOBAL", "/etc/host-gitconfig")
    caller = {"GIT_CONFIG_COUNT": "1", "GIT_CONFIG_KEY_0": "a.b", "GIT_CONFIG_VALUE_0": "c"}
    env = git_module._Git("file:///x", caller).env
    assert "GIT_ASKPASS" not in env
    assert "GIT_CONFIG_KEY_1" not in env
    assert "GIT_CONFIG_VALUE_1" not in env
    assert env["GIT_CONFIG_COUNT"] == "1"
    assert env["GIT_CONFIG_GLOBAL"] == "/etc/host-gitconfig"  # not a credential: kept
    # A caller that brings its own askpass helper gets it.
    own = git_module._Git("file:///x", {"GIT_ASKPASS": "/opt/helper"}).env
    assert own["GIT_ASKPASS"] == "/opt/helper"
    assert own["GIT_CONFIG_VALUE_1"] == "Authorization: Bearer host-token"  # caller set none
