"""Issue 21, must 4: a git stack's fetch cannot freeze runbot, wander off, or fill the disk.

Every case runs real git against a real server on loopback HTTPS (`tests/gitserver.py`) that
misbehaves on purpose: it trickles bytes, redirects, or serves a repository over the cap.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from app.lifecycle.states import Status
from app.stacks.catalog import StackError, StackSource
from app.stacks.git import GitLimits, fetch_git_stack
from tests.apphost import AppServer, app_settings
from tests.fakegithub.server import FakeGitHub
from tests.gitserver import GitServer, bare_copy
from tests.helpers import wait_for

pytestmark = pytest.mark.skipif(shutil.which("git") is None, reason="needs the git CLI")
pytest_plugins = ["tests.fakegithub.pytest_plugin"]

GIT_ENV = {
    **os.environ,
    "GIT_AUTHOR_NAME": "t",
    "GIT_AUTHOR_EMAIL": "t@example.test",
    "GIT_COMMITTER_NAME": "t",
    "GIT_COMMITTER_EMAIL": "t@example.test",
}
STACK = {
    "stacks/web/silo/main.tf": 'output "db_host" {\n  value = "db"\n}\n',
    "stacks/web/instance/main.tf": 'output "url" {\n  value = "https://example.test"\n}\n',
}


def make_repo(path: Path, files: dict[str, bytes | str]) -> Path:
    path.mkdir(parents=True)
    subprocess.run(["git", "init", "-q", "-b", "main", str(path)], check=True)
    for name, content in {**STACK, **files}.items():
        target = path / name
        target.parent.mkdir(parents=True, exist_ok=True)
        if isinstance(content, bytes):
            target.write_bytes(content)
        else:
            target.write_text(content)
    subprocess.run(["git", "-C", str(path), "add", "-A"], check=True, env=GIT_ENV)
    subprocess.run(["git", "-C", str(path), "commit", "-qm", "stack"], check=True, env=GIT_ENV)
    return path


@pytest.fixture
def served(tmp_path: Path) -> Iterator[GitServer]:
    root = tmp_path / "served"
    root.mkdir()
    bare_copy(make_repo(tmp_path / "small", {}), root, "small.git")
    # Over a 1 MB cap when fetched (random bytes do not compress) ...
    bare_copy(
        make_repo(tmp_path / "big-pack", {"blob.bin": os.urandom(3_000_000)}), root, "big-pack.git"
    )
    # ... and a 30 kB pack that checks out to 5 MB (zeros compress very well).
    bare_copy(
        make_repo(tmp_path / "big-tree", {"zeros.bin": bytes(5_000_000)}), root, "big-tree.git"
    )
    with GitServer(root, tmp_path / "tls") as server:
        yield server


def limits(server: GitServer, **options: object) -> GitLimits:
    values: dict[str, object] = {
        "allowed_hosts": frozenset({"127.0.0.1"}),
        "ca_file": str(server.ca_file),
        "max_bytes": 1_000_000,
        **options,
    }
    return GitLimits(**values)  # type: ignore[arg-type]


def leftovers(cache: Path) -> list[str]:
    """Everything a refused fetch might leave behind: mirrors, trees, partial packs."""
    found = []
    for sub in ("mirrors", "trees"):
        if (cache / sub).exists():
            found += [p.name for p in (cache / sub).iterdir() if not p.name.endswith(".lock")]
    return found


def test_the_operator_ca_bundle_lets_git_fetch_from_a_private_server(
    served: GitServer, tmp_path: Path
) -> None:
    cache = tmp_path / "cache"
    stack_dir, _ = fetch_git_stack(
        served.url("small.git"), "main", "stacks/web", cache, limits=limits(served)
    )
    assert (stack_dir / "instance" / "main.tf").is_file()
    # Without the CA, the same server is not trusted: TLS is verified, not skipped.
    with pytest.raises(StackError, match="certificate"):
        fetch_git_stack(
            served.url("small.git"),
            "main",
            "stacks/web",
            tmp_path / "other-cache",
            limits=limits(served, ca_file=None),
        )


def test_a_redirecting_server_is_refused(served: GitServer, tmp_path: Path) -> None:
    # Same CA: were the redirect followed, git would trust the other server and fetch from it.
    with GitServer(tmp_path / "served", tmp_path / "tls") as redirecting:
        redirecting.mode = "redirect"
        redirecting.redirect_to = f"https://127.0.0.1:{served.port}"
        cache = tmp_path / "cache"
        with pytest.raises(StackError, match=r"git fetch for .* failed") as info:
            fetch_git_stack(
                redirecting.url("small.git"), "main", "stacks/web", cache, limits=limits(served)
            )
        assert "302" in str(info.value) or "redirect" in str(info.value).lower()
        assert redirecting.requests  # it was asked ...
        assert served.requests == []  # ... and git did not follow it to the other server
        assert leftovers(cache) == []


@pytest.mark.parametrize("name", ["big-pack", "big-tree"])
def test_an_oversize_repository_is_refused_and_cleaned_up(
    served: GitServer, tmp_path: Path, name: str
) -> None:
    """big-pack passes the cap while git fetches; big-tree while its tree is exported."""
    cache = tmp_path / "cache"
    with pytest.raises(StackError, match=r"larger than 1000000 bytes \(RUNBOT_GIT_MAX_BYTES\)"):
        fetch_git_stack(
            served.url(f"{name}.git"), "main", "stacks/web", cache, limits=limits(served)
        )
    assert leftovers(cache) == []
    if (cache / "trees").exists():  # no half-written staging directory either
        assert list((cache / "trees").iterdir()) == []
    # The same repository under a cap it fits fetches fine: the cap, not the repo, refused it.
    stack_dir, _ = fetch_git_stack(
        served.url(f"{name}.git"),
        "main",
        "stacks/web",
        cache,
        limits=limits(served, max_bytes=20_000_000),
    )
    assert stack_dir.is_dir()


def test_a_slow_remote_is_aborted_by_the_low_speed_limit(served: GitServer, tmp_path: Path) -> None:
    served.mode = "trickle"  # one byte a second
    started = time.monotonic()
    with pytest.raises(StackError, match=r"too slow|took longer"):
        fetch_git_stack(
            served.url("small.git"),
            "main",
            "stacks/web",
            tmp_path / "cache",
            limits=limits(served, low_speed_limit=1000, low_speed_time=2, timeout=60),
        )
    assert time.monotonic() - started < 20  # the low-speed abort, not the 60 s timeout


def test_a_slow_remote_does_not_block_the_event_loop(
    served: GitServer, tmp_path: Path, fake_github: FakeGitHub
) -> None:
    """While a silo's stack trickles in, /healthz and the API answer at once; then the fetch is
    aborted by the low-speed limit and the silo fails with git's reason."""
    served.mode = "trickle"
    policy = tmp_path / "policy.yml"
    policy.write_text(f'default:\n  git_stacks: ["https://127.0.0.1:{served.port}/"]\n')
    settings = app_settings(
        tmp_path,
        fake_github,
        policy_file=policy,
        git_ca_file=served.ca_file,
        git_low_speed_time=4,
        git_timeout=120,
    )
    with AppServer(settings) as server:
        source = StackSource(kind="git", url=served.url("small.git"), ref="main", path="stacks/web")
        server.runtime.lifecycle.create_silo("web", "web", {}, source)
        wait_for(lambda: served.active > 0, timeout=30)  # the fetch is in flight
        slowest = 0.0
        with httpx.Client(base_url=server.url, timeout=5) as client:
            while served.active > 0:
                started = time.monotonic()
                assert client.get("/healthz").status_code == 200
                slowest = max(slowest, time.monotonic() - started)
                time.sleep(0.2)
        assert slowest < 1.0
        wait_for(
            lambda: server.runtime.lifecycle.get_silo("web").status == Status.FAILED, timeout=60
        )
        reason = server.runtime.lifecycle.get_silo("web").reason or ""
        assert "too slow" in reason.lower(), reason
