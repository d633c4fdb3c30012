"""Tests for app.stacks.git against real repositories served over loopback HTTPS."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

import app.stacks.git as git_module
import app.stacks.gitrun as gitrun_module
from app.stacks.catalog import StackError, StackSource
from app.stacks.git import GitLimits, fetch_git_stack, load_git_stack
from tests.gitserver import GIT_HTTP_BACKEND, GitServer

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
    """A throwaway source repository, served over HTTPS, with helpers to commit stack versions."""

    def __init__(self, path: Path, server: GitServer) -> None:
        self.path = path
        self.server = server
        self.limits = GitLimits(allowed_hosts=frozenset({"127.0.0.1"}), ca_file=str(server.ca_file))
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
        self.git("config", "uploadpack.allowAnySHA1InWant", "true")

    @property
    def url(self) -> str:
        return self.server.url(self.path.name)

    def fetch(self, ref: str, path: str, cache: Path, **options: Any) -> tuple[Path, str]:
        options.setdefault("limits", self.limits)
        return fetch_git_stack(self.url, ref, path, cache, **options)

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
def server(tmp_path: Path) -> Iterator[GitServer]:
    with GitServer(tmp_path, tmp_path / "tls") as running:
        yield running


@pytest.fixture
def repo(tmp_path: Path, server: GitServer) -> Repo:
    return Repo(tmp_path / "src", server)


@pytest.fixture
def cache(tmp_path: Path) -> Path:
    return tmp_path / "cache"


def test_branch_ref(repo: Repo, cache: Path) -> None:
    repo.commit_stack("v1")
    head = repo.commit_stack("v2")
    stack_dir, commit = repo.fetch("main", "stacks/web", cache)
    assert commit == head
    assert stack_dir == cache / "trees" / head / "stacks" / "web"
    assert description(stack_dir) == "v2"


def test_tag_ref(repo: Repo, cache: Path) -> None:
    first = repo.commit_stack("v1")
    repo.git("tag", "-a", "release-1", "-m", "annotated tag")
    repo.commit_stack("v2")
    stack_dir, commit = repo.fetch("release-1", "stacks/web", cache)
    assert commit == first  # the commit, not the annotated tag object
    assert description(stack_dir) == "v1"


def test_sha_ref(repo: Repo, cache: Path) -> None:
    first = repo.commit_stack("v1")
    repo.commit_stack("v2")
    stack_dir, commit = repo.fetch(first, "stacks/web", cache)
    assert commit == first
    assert description(stack_dir) == "v1"


def test_an_abbreviated_sha_asks_for_the_full_one(repo: Repo, cache: Path) -> None:
    """A shallow fetch asks the server for a name; only the full SHA names an old commit."""
    first = repo.commit_stack("v1")
    repo.commit_stack("v2")
    with pytest.raises(StackError, match="write all 40 characters"):
        repo.fetch(first[:10], "stacks/web", cache)


def test_the_fetch_is_shallow(repo: Repo, cache: Path) -> None:
    """Only the commit asked for crosses the network, not the history behind it."""
    for version in ("v1", "v2", "v3"):
        head = repo.commit_stack(version)
    repo.fetch("main", "stacks/web", cache)
    (mirror,) = (cache / "mirrors").glob("*.git")
    fetched = subprocess.run(
        ["git", "--git-dir", str(mirror), "rev-list", "--all"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split()
    assert fetched == [head]
    assert (mirror / "shallow").read_text().split() == [head]


def test_empty_ref_means_default_branch(repo: Repo, cache: Path) -> None:
    head = repo.commit_stack("v1")
    repo.git("checkout", "--quiet", "-b", "other")
    other = repo.commit_stack("v-other")
    assert repo.fetch("", "stacks/web", cache)[1] == other  # HEAD is `other`
    repo.git("checkout", "--quiet", "main")
    assert repo.fetch("", "stacks/web", cache)[1] == head


def test_branch_moves_are_seen_on_the_next_fetch(repo: Repo, cache: Path) -> None:
    first = repo.commit_stack("v1")
    assert repo.fetch("main", "stacks/web", cache)[1] == first
    second = repo.commit_stack("v2")
    stack_dir, commit = repo.fetch("main", "stacks/web", cache)
    assert commit == second
    assert description(stack_dir) == "v2"


def test_pinned_commit_keeps_old_code_after_branch_moves(repo: Repo, cache: Path) -> None:
    first = repo.commit_stack("v1")
    _, created_with = repo.fetch("main", "stacks/web", cache)
    assert created_with == first
    repo.commit_stack("v2")
    stack_dir, commit = repo.fetch("main", "stacks/web", cache, commit=created_with)
    assert commit == first
    assert description(stack_dir) == "v1"


def test_pinned_commit_survives_force_push_and_a_lost_tree(repo: Repo, cache: Path) -> None:
    first = repo.commit_stack("v1")
    repo.fetch("main", "stacks/web", cache)
    # Rewrite history so `first` is reachable from nothing upstream ...
    repo.git("checkout", "--quiet", "--orphan", "rewritten")
    repo.commit_stack("rewritten")
    repo.git("branch", "--quiet", "-D", "main")
    repo.git("branch", "--quiet", "-m", "main")
    repo.fetch("main", "stacks/web", cache)  # prunes the old main
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
    stack_dir, commit = repo.fetch("main", "stacks/web", cache, commit=first)
    assert commit == first
    assert description(stack_dir) == "v1"


def test_pinned_commit_that_was_never_fetched_is_fetched(repo: Repo, cache: Path) -> None:
    first = repo.commit_stack("v1")
    stack_dir, commit = repo.fetch("", "stacks/web", cache, commit=first)
    assert (commit, description(stack_dir)) == (first, "v1")


def test_pinned_commit_that_does_not_exist(repo: Repo, cache: Path) -> None:
    repo.commit_stack("v1")
    with pytest.raises(StackError, match=r"commit 0{40} is no longer available"):
        repo.fetch("main", "stacks/web", cache, commit="0" * 40)


def test_pinned_commit_must_be_a_full_sha(repo: Repo, cache: Path) -> None:
    with pytest.raises(StackError, match="not a full hexadecimal commit SHA"):
        repo.fetch("main", "stacks/web", cache, commit="abc123")


def test_exported_tree_is_reused_without_git(
    repo: Repo, cache: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    first = repo.commit_stack("v1")
    stack_dir, _ = repo.fetch("main", "stacks/web", cache)
    (stack_dir / "marker").write_text("kept")
    shutil.rmtree(repo.path)  # the source is gone ...

    def no_git(*args: Any, **kwargs: Any) -> Any:
        raise AssertionError(f"git was run: {args}")

    monkeypatch.setattr(gitrun_module.subprocess, "Popen", no_git)
    again, commit = repo.fetch("main", "stacks/web", cache, commit=first)
    assert (again, commit) == (stack_dir, first)
    assert (again / "marker").read_text() == "kept"  # ... and the tree was not re-exported


def test_mirror_is_named_by_url_hash(repo: Repo, cache: Path) -> None:
    repo.commit_stack("v1")
    repo.fetch("main", "stacks/web", cache)
    mirrors = [p.name for p in (cache / "mirrors").iterdir() if p.suffix == ".git"]
    assert len(mirrors) == 1
    assert "src" not in mirrors[0]
    assert len(mirrors[0]) == 32 + len(".git")


def test_whole_repository_path(repo: Repo, cache: Path) -> None:
    head = repo.commit_stack("v1", path="")
    for path in ("", "."):
        stack_dir, commit = repo.fetch("main", path, cache)
        assert commit == head
        assert stack_dir == cache / "trees" / head
        assert description(stack_dir) == "v1"


def test_load_git_stack_records_the_commit(repo: Repo, cache: Path) -> None:
    head = repo.commit_stack("v1")
    stack = load_git_stack("web", repo.url, "main", "stacks/web", cache, limits=repo.limits)
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
        repo.fetch("main", path, cache)
    assert not cache.exists()  # refused before touching git


def test_symlink_out_of_the_tree_is_rejected(repo: Repo, cache: Path) -> None:
    repo.commit_stack("v1")
    (repo.path / "escape").symlink_to("/etc")
    repo.git("add", "-A")
    repo.git("commit", "--quiet", "-m", "link")
    with pytest.raises(StackError, match="cannot be exported safely"):
        repo.fetch("main", "escape", cache)


def test_missing_path(repo: Repo, cache: Path) -> None:
    head = repo.commit_stack("v1")
    with pytest.raises(StackError, match=f"path 'stacks/api' is not a directory .* {head}"):
        repo.fetch("main", "stacks/api", cache)


def test_unknown_ref(repo: Repo, cache: Path) -> None:
    repo.commit_stack("v1")
    with pytest.raises(StackError, match="git ref 'nope' is not a branch, tag or commit"):
        repo.fetch("nope", "stacks/web", cache)


@pytest.mark.parametrize("ref", ["--upload-pack=touch /tmp/x", "main~1", "a..b", "HEAD@{1}", "a b"])
def test_option_like_or_expression_refs_are_refused(repo: Repo, cache: Path, ref: str) -> None:
    with pytest.raises(StackError, match="is not a valid branch, tag or commit name"):
        repo.fetch(ref, "stacks/web", cache)


@pytest.mark.parametrize(
    ("url", "words"),
    [
        ("file:///srv/stacks.git", "file:// (a path on the runbot host)"),
        ("FILE:///srv/stacks.git", "file://"),
        ("git://127.0.0.1/stacks.git", "git:// (unauthenticated)"),
        ("http://127.0.0.1/stacks.git", "plain http://"),
        ("ext::sh -c id", "is not valid"),
        ("ext::id", "ext:: (runs a command)"),
        ("/local/path", "is not supported"),
        ("./local/path", "is not supported"),
        ("local/path", "is not supported"),
        ("--upload-pack=touch /tmp/x", "is not valid"),
        ("-oProxyCommand=x", "is not valid"),
        ("git@-oProxyCommand=x:repo", "is not supported"),
        ("", "is not valid"),
    ],
)
def test_git_py_refuses_file_git_http_ext_local_and_option_urls(
    tmp_path: Path, cache: Path, url: str, words: str
) -> None:
    """Whatever policy the caller passes (here: every host), git.py itself fetches only over
    https and ssh, and says which transports it takes."""
    with pytest.raises(StackError, match="git URL") as info:
        fetch_git_stack(url, "main", "", cache, limits=GitLimits(allowed_hosts=None))
    assert words in str(info.value)
    assert "https://" in str(info.value)  # what to write instead
    assert not cache.exists()  # refused before git ran


def test_a_host_outside_the_policy_is_refused_before_any_network_access(
    repo: Repo, cache: Path
) -> None:
    repo.commit_stack("v1")
    limits = GitLimits(allowed_hosts=frozenset({"git.example.com"}), ca_file=repo.limits.ca_file)
    with pytest.raises(StackError, match=r"git host '127\.0\.0\.1' is not allowed") as info:
        repo.fetch("main", "stacks/web", cache, limits=limits)
    assert "add it to `git_hosts`" in str(info.value)
    assert repo.server.requests == []
    assert not cache.exists()
    # Without limits nothing is allowed: a caller that forgets them fetches nothing.
    with pytest.raises(StackError, match=r"allowed: none"):
        fetch_git_stack(repo.url, "main", "stacks/web", cache)
    assert repo.server.requests == []


def test_fetch_failure_includes_git_stderr_without_the_token(repo: Repo, cache: Path) -> None:
    token = "ghs_" + "A1b2C3d4" * 4
    missing = repo.server.url(f"{token}/repo.git")
    env = {
        "GIT_CONFIG_COUNT": "1",
        "GIT_CONFIG_KEY_0": "http.extraHeader",
        "GIT_CONFIG_VALUE_0": f"Authorization: Bearer {token}",
    }
    with pytest.raises(StackError) as info:
        fetch_git_stack(missing, "main", "", cache, env=env, limits=repo.limits)
    message = str(info.value)
    assert "git fetch for" in message
    assert "not found" in message  # git's own stderr
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
    real_popen: Callable[..., Any] = subprocess.Popen

    def spy(argv: list[str], **kwargs: Any) -> Any:
        if argv[0] != str(GIT_HTTP_BACKEND):  # the test's server, not runbot
            seen.append((argv, kwargs.get("env") or {}))
        assert kwargs.get("shell") in (None, False)
        return real_popen(argv, **kwargs)

    monkeypatch.setattr(gitrun_module.subprocess, "Popen", spy)
    limits = GitLimits(allowed_hosts=frozenset({"git.invalid"}), ca_file=str(repo.server.ca_file))
    stack_dir, commit = fetch_git_stack(
        fake_url, "main", "stacks/web", cache, env=env, limits=limits
    )
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
        repo.fetch("main", "stacks/web", cache)


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


def test_git_environment_is_an_allow_list_without_runbot_settings(
    tmp_path: Path, cache: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Observed, not inferred: the operator's SSH command is a script that records the
    environment git starts it with, for an ssh:// fetch."""
    for key, value in {
        "RUNBOT_GITHUB_PRIVATE_KEY": "-----BEGIN PRIVATE KEY----- runbot-app-key",
        "RUNBOT_API_TOKEN": "runbot-api-token-value",
        "AWS_SECRET_ACCESS_KEY": "aws-secret-value",
        "GOOGLE_APPLICATION_CREDENTIALS": "/etc/gcp.json",
        "GIT_ASKPASS": "/usr/bin/host-askpass",
        "GIT_CONFIG_COUNT": "1",
        "GIT_CONFIG_KEY_0": "http.extraHeader",
        "GIT_CONFIG_VALUE_0": "Authorization: Bearer host-token",
        "LANG": "C.UTF-8",
    }.items():
        monkeypatch.setenv(key, value)
    record = tmp_path / "ssh-env"
    script = tmp_path / "record-ssh"
    script.write_text(f'#!/bin/sh\nenv > {record}\necho "recorded" >&2\nexit 1\n')
    script.chmod(0o755)
    ca = tmp_path / "ca.pem"
    ca.write_text("not used by ssh; must still be passed\n")
    limits = GitLimits(
        allowed_hosts=frozenset({"git.example.com"}), ssh_command=str(script), ca_file=str(ca)
    )
    caller = {"GIT_CONFIG_COUNT": "1", "GIT_CONFIG_KEY_0": "a.b", "GIT_CONFIG_VALUE_0": "c"}
    with pytest.raises(StackError, match="recorded"):
        fetch_git_stack(
            "ssh://git@git.example.com/org/stacks.git", "main", "", cache, env=caller, limits=limits
        )
    seen = dict(line.split("=", 1) for line in record.read_text().splitlines() if "=" in line)
    assert not [key for key in seen if key.startswith(("RUNBOT_", "AWS_", "GOOGLE_"))]
    assert "GIT_ASKPASS" not in seen and "SSH_ASKPASS" not in seen
    assert "runbot-api-token-value" not in record.read_text()
    assert seen["HOME"] == str(cache / "home")  # a scratch home: no ~/.gitconfig, no helpers
    assert seen["PATH"].endswith(os.environ["PATH"])  # git puts its exec-path first
    assert seen["LANG"] == "C.UTF-8"
    assert seen["GIT_SSL_CAINFO"] == str(ca)
    assert (seen["GIT_CONFIG_KEY_0"], seen["GIT_CONFIG_VALUE_0"]) == ("a.b", "c")  # the caller's
