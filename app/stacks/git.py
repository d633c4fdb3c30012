"""Stacks that live in a git repository, fetched into a local cache.

One bare mirror per URL keeps fetches incremental; each commit's tree is
exported once into `trees/<commit>/`, so a pinned commit always gives the exact
code that created a target even after its branch moves. Git runs with argv
lists only, never through a shell, and credentials travel only in `env`
(e.g. GIT_CONFIG_COUNT/GIT_CONFIG_KEY_0/GIT_CONFIG_VALUE_0 for an
`http.extraHeader`), never on the command line where `ps` would show them.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import os
import re
import shutil
import subprocess
import tarfile
import tempfile
from collections.abc import Iterator, Mapping
from pathlib import Path, PurePosixPath

from app.stacks.catalog import load_stack
from app.stacks.model import Stack, StackError, StackSource

__all__ = ["fetch_git_stack", "load_git_stack"]

FETCH_TIMEOUT_SECONDS = 600
LOCAL_TIMEOUT_SECONDS = 120

_FULL_SHA = re.compile(r"[0-9a-f]{40}|[0-9a-f]{64}")
_SHORT_SHA = re.compile(r"[0-9a-f]{7,64}")
# Refused in refs by git itself (see git-check-ref-format); checked here so a
# ref can never be mistaken for an option or a revision expression.
_BAD_REF = re.compile(r"[\x00-\x20\x7f~^:?*\[\\]|\.\.|@\{|//|/\.|\.lock$|^-|^/|/$|\.$")
_URL_SCHEMES = ("https://", "http://", "ssh://", "git://", "file://")
_SCP_LIKE = re.compile(r"[A-Za-z0-9._-]+@[A-Za-z0-9.-]+:[^/].*")
_URL_USERINFO = re.compile(r"(?i)\b([a-z][a-z0-9+.-]*://)[^/@\s]+@")
_TOKEN_PATTERNS = re.compile(
    r"\b(?:gh[pousr]_[A-Za-z0-9]{20,}|github_pat_[A-Za-z0-9_]{20,}|glpat-[A-Za-z0-9_-]{20,})"
)
_AUTH_HEADER = re.compile(r"(?i)(authorization:\s*)(\S+\s+)?\S+")
_NUMBERED_CONFIG = ("GIT_CONFIG_COUNT", "GIT_CONFIG_KEY_", "GIT_CONFIG_VALUE_")
_REFSPECS = ("+refs/heads/*:refs/heads/*", "+refs/tags/*:refs/tags/*")


def fetch_git_stack(
    url: str,
    ref: str,
    path: str,
    cache_dir: Path,
    env: dict[str, str] | None = None,
    commit: str | None = None,
) -> tuple[Path, str]:
    """Return (stack directory inside the exported tree, commit SHA).

    `ref` is a branch, tag or (abbreviated) SHA, resolved after fetching; an
    empty ref means the remote's default branch. With `commit`, that exact
    commit is used and the network is only touched if the mirror lacks it.
    """
    _check_url(url)
    subpath = _check_path(path)
    if commit is not None:
        commit = commit.strip().lower()
        if not _FULL_SHA.fullmatch(commit):
            raise StackError(f"pinned commit {commit!r} is not a full hexadecimal commit SHA")
    elif ref and _BAD_REF.search(ref):
        raise StackError(
            f"git ref {ref!r} is not a valid branch, tag or commit name: "
            "check `ref` in the stack source"
        )
    cache_dir = Path(cache_dir)
    if commit is not None and (cache_dir / "trees" / commit).is_dir():
        # Already exported: no git, no network (destroy must work even if the
        # repository or its credentials are gone).
        return _stack_dir(cache_dir / "trees" / commit, subpath, path, url, env, commit)
    if shutil.which("git") is None:
        raise StackError("git is not installed on the runbot host: install git to use git stacks")
    runner = _Git(url, env)
    mirror = cache_dir / "mirrors" / (hashlib.sha256(url.encode()).hexdigest()[:32] + ".git")
    mirror.parent.mkdir(parents=True, exist_ok=True)
    with _locked(mirror.with_suffix(".lock")):
        created = not (mirror / "HEAD").exists()
        if created:
            shutil.rmtree(mirror, ignore_errors=True)
            runner.run(["init", "--quiet", "--bare", "--", str(mirror)], LOCAL_TIMEOUT_SECONDS)
        try:
            resolved = _resolve_locked(runner, mirror, url, ref, env, commit)
        except StackError:
            if created:  # don't keep an empty mirror for a URL that never worked
                shutil.rmtree(mirror, ignore_errors=True)
            raise
        # Keep the commit reachable in the mirror so neither a force-push nor
        # git's garbage collection can take away code a target was built from.
        runner.run(
            ["--git-dir", str(mirror), "update-ref", f"refs/runbot/pins/{resolved}", resolved],
            LOCAL_TIMEOUT_SECONDS,
        )
        tree = _export(runner, mirror, resolved, cache_dir / "trees")
    return _stack_dir(tree, subpath, path, url, env, resolved)


def _resolve_locked(
    runner: _Git,
    mirror: Path,
    url: str,
    ref: str,
    env: Mapping[str, str] | None,
    commit: str | None,
) -> str:
    """The commit to export: the pinned one (fetching only if missing) or `ref`'s."""
    if commit is None:
        return _resolve(runner, mirror, ref)
    if not runner.has_commit(mirror, commit):
        runner.fetch(mirror, _REFSPECS)
    if not runner.has_commit(mirror, commit):
        # Servers that allow it (GitHub does) can send an unadvertised commit.
        runner.fetch(mirror, (commit,), quiet_failure=True)
    if not runner.has_commit(mirror, commit):
        raise StackError(
            f"commit {commit} is no longer available from {_scrub(url, env)}: "
            "it may have been force-pushed away; redeploy from a current ref"
        )
    return commit


def _stack_dir(
    tree: Path,
    subpath: PurePosixPath,
    path: str,
    url: str,
    env: Mapping[str, str] | None,
    commit: str,
) -> tuple[Path, str]:
    stack_dir = tree.joinpath(*subpath.parts) if subpath.parts else tree
    if not stack_dir.resolve().is_relative_to(tree.resolve()):
        raise StackError(f"path {path!r} leaves the repository through a symlink: use a real path")
    if not stack_dir.is_dir():
        raise StackError(
            f"path {path!r} is not a directory in {_scrub(url, env)} at commit {commit}: "
            "check `path` in the stack source"
        )
    return stack_dir, commit


def load_git_stack(
    name: str,
    url: str,
    ref: str,
    path: str,
    cache_dir: Path,
    env: dict[str, str] | None = None,
    commit: str | None = None,
) -> Stack:
    """Fetch and load a git stack, recording the resolved commit in its source."""
    root, resolved = fetch_git_stack(url, ref, path, cache_dir, env=env, commit=commit)
    source = StackSource(kind="git", url=url, ref=ref, path=path, commit=resolved)
    return load_stack(name, root, source)


class _Git:
    """Runs git for one URL with a prompt-free environment and scrubbed errors."""

    def __init__(self, url: str, env: Mapping[str, str] | None) -> None:
        self.url = url
        self.secrets = dict(env or {})
        # The caller's env is the only source of credentials: drop the host's
        # askpass helpers, and its GIT_CONFIG_* entries when the caller brings
        # its own (numbered entries from both would otherwise mix).
        ambient = {
            key: value
            for key, value in os.environ.items()
            if key not in ("GIT_ASKPASS", "SSH_ASKPASS")
            and not ("GIT_CONFIG_COUNT" in self.secrets and key.startswith(_NUMBERED_CONFIG))
        }
        self.env = {**ambient, **self.secrets, "GIT_TERMINAL_PROMPT": "0"}
        self.env.setdefault("GIT_SSH_COMMAND", "ssh -o BatchMode=yes")

    def run(self, args: list[str], timeout: int, *, check: bool = True) -> str:
        try:
            completed = subprocess.run(
                ["git", *args],
                env=self.env,
                capture_output=True,
                text=True,
                timeout=timeout,
                check=False,
            )
        except FileNotFoundError as exc:
            raise StackError(
                "git is not installed on the runbot host: install git to use git stacks"
            ) from exc
        except subprocess.TimeoutExpired as exc:
            raise StackError(
                f"git {_subcommand(args)} for {_scrub(self.url, self.secrets)} took longer than "
                f"{timeout}s: check the repository URL and network"
            ) from exc
        if check and completed.returncode != 0:
            raise StackError(
                f"git {_subcommand(args)} for {_scrub(self.url, self.secrets)} failed: "
                f"{_scrub(completed.stderr.strip(), self.secrets) or 'no error output'}"
            )
        return completed.stdout if completed.returncode == 0 else ""

    def fetch(
        self, mirror: Path, refspecs: tuple[str, ...], *, quiet_failure: bool = False
    ) -> None:
        args = ["--git-dir", str(mirror), "fetch", "--quiet", "--prune", "--no-tags"]
        self.run([*args, "--", self.url, *refspecs], FETCH_TIMEOUT_SECONDS, check=not quiet_failure)

    def has_commit(self, mirror: Path, sha: str) -> bool:
        return self.rev_parse(mirror, sha) == sha

    def rev_parse(self, mirror: Path, name: str) -> str | None:
        out = self.run(
            ["--git-dir", str(mirror), "rev-parse", "--verify", "--quiet", f"{name}^{{commit}}"],
            LOCAL_TIMEOUT_SECONDS,
            check=False,
        ).strip()
        return out or None


def _subcommand(args: list[str]) -> str:
    """The git subcommand in argv (after `--git-dir <dir>`), for messages."""
    rest = args[2:] if args[:1] == ["--git-dir"] else args
    return rest[0] if rest else "git"


def _resolve(runner: _Git, mirror: Path, ref: str) -> str:
    """Fetch, then resolve ref as a branch, then a tag, then a commit SHA."""
    if not ref:
        runner.fetch(mirror, ("+HEAD:refs/runbot/remote-head",))
        candidates = ["refs/runbot/remote-head"]
    else:
        runner.fetch(mirror, _REFSPECS)
        candidates = [f"refs/heads/{ref}", f"refs/tags/{ref}"]
        if ref.startswith("refs/"):
            candidates.insert(0, ref)
        if _SHORT_SHA.fullmatch(ref.lower()):
            candidates.append(ref.lower())
    for candidate in candidates:
        sha = runner.rev_parse(mirror, candidate)
        if sha:
            return sha
    if ref and _FULL_SHA.fullmatch(ref.lower()):
        # A commit no branch or tag reaches (e.g. a pull request head).
        runner.fetch(mirror, (ref.lower(),), quiet_failure=True)
        sha = runner.rev_parse(mirror, ref.lower())
        if sha:
            return sha
    raise StackError(
        f"git ref {ref!r} is not a branch, tag or commit in {_scrub(runner.url, runner.secrets)}: "
        "check `ref` in the stack source"
    )


def _export(runner: _Git, mirror: Path, commit: str, trees: Path) -> Path:
    """Export `commit` into trees/<commit>/ once; later calls reuse it.

    Extraction goes to a temporary directory renamed into place, so a crash
    or a concurrent export never leaves a half-written tree behind.
    """
    target = trees / commit
    if target.is_dir():
        return target
    trees.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{commit[:12]}-", dir=trees))
    try:
        archive = staging / "tree.tar"
        runner.run(
            [
                "--git-dir",
                str(mirror),
                "archive",
                "--format=tar",
                f"--output={archive}",
                commit,
            ],
            FETCH_TIMEOUT_SECONDS,
        )
        content = staging / "tree"
        content.mkdir()
        try:
            with tarfile.open(archive, mode="r:") as tar:
                # The "data" filter refuses absolute paths, `..` and links that
                # point outside the tree, so a hostile repo cannot write elsewhere.
                tar.extractall(content, filter="data")
        except tarfile.TarError as exc:
            raise StackError(
                f"commit {commit} of {_scrub(runner.url, runner.secrets)} cannot be "
                f"exported safely ({exc}): remove links that point outside the repository"
            ) from exc
        try:
            content.rename(target)
        except OSError:
            if not target.is_dir():
                raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return target


def _check_url(url: str) -> None:
    if not url or url.startswith("-") or any(ch in url for ch in "\x00\r\n"):
        raise StackError(f"git URL {url!r} is not valid: use https://, ssh://, git:// or file://")
    if not (url.startswith(_URL_SCHEMES) or _SCP_LIKE.fullmatch(url)):
        raise StackError(
            f"git URL {_scrub(url, None)!r} is not supported: use https://, ssh://, git://, "
            "file:// or user@host:path"
        )


def _check_path(path: str) -> PurePosixPath:
    """The stack's directory inside the repository; must stay inside it."""
    if "\\" in path or "\x00" in path:
        raise StackError(f"path {path!r} is not allowed: use a relative path with '/'")
    posix = PurePosixPath(path)
    if posix.is_absolute() or ".." in posix.parts:
        raise StackError(
            f"path {path!r} is not allowed: it must be relative to the repository root "
            "and must not contain '..'"
        )
    return PurePosixPath(*[part for part in posix.parts if part != "."])


def _scrub(text: str, secrets: Mapping[str, str] | None) -> str:
    """Remove credentials from text that may end up in logs or PR comments."""
    for key, value in (secrets or {}).items():
        if not value.strip() or not _may_hold_secret(key):
            continue
        # Both the whole value and its last word: a header value such as
        # "Authorization: Bearer <token>" may surface only as the token.
        for secret in sorted({value, value.split()[-1]}, key=len, reverse=True):
            if len(secret) >= 6:
                text = text.replace(secret, "***")
    text = _URL_USERINFO.sub(r"\1***@", text)
    text = _AUTH_HEADER.sub(r"\1***", text)
    return _TOKEN_PATTERNS.sub("***", text)


def _may_hold_secret(key: str) -> bool:
    upper = key.upper()
    if upper.startswith("GIT_CONFIG_KEY_"):
        return False  # config names such as http.extraHeader, not their values
    return upper.startswith("GIT_CONFIG_VALUE_") or any(
        word in upper for word in ("TOKEN", "PASSWORD", "SECRET", "AUTH", "CREDENTIAL", "KEY")
    )


@contextlib.contextmanager
def _locked(lock_path: Path) -> Iterator[None]:
    """Serialise work on one mirror across threads and processes (git's own
    ref locks make concurrent fetches into one repository fail)."""
    with open(lock_path, "a+b") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)
