"""Stacks that live in a git repository, fetched into a local cache.

One bare mirror per URL holds shallow fetches (depth 1: only the commit asked for, not its
history); each commit's tree is exported once into `trees/<commit>/`, so a pinned commit always
gives the exact code that created a target even after its branch moves. Only https:// and ssh://
URLs (and `user@host:path`) on a host the operator policy allows are fetched, and git runs inside
the fence of `gitrun` (transports, redirects, speed, size, environment). Git runs with argv lists
only, never through a shell, and credentials travel only in `env` (e.g.
GIT_CONFIG_COUNT/GIT_CONFIG_KEY_0/GIT_CONFIG_VALUE_0 for an `http.extraHeader`), never on the
command line where `ps` would show them.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import os
import re
import shutil
import tarfile
import tempfile
from collections.abc import Iterator, Mapping
from pathlib import Path, PurePosixPath

from app.policy.model import git_host
from app.stacks.catalog import load_stack
from app.stacks.gitrun import GitLimits, GitRunner, GitTooLarge
from app.stacks.model import Stack, StackError, StackSource

__all__ = ["GitLimits", "check_git_url", "fetch_git_stack", "load_git_stack", "prune_git_cache"]

_FULL_SHA = re.compile(r"[0-9a-f]{40}|[0-9a-f]{64}")
_SHORT_SHA = re.compile(r"[0-9a-f]{7,64}")
# Refused in refs by git itself (see git-check-ref-format); checked here so a
# ref can never be mistaken for an option or a revision expression.
_BAD_REF = re.compile(r"[\x00-\x20\x7f~^:?*\[\\]|\.\.|@\{|//|/\.|\.lock$|^-|^/|/$|\.$")
_URL_SCHEMES = ("https://", "ssh://")
_SCP_LIKE = re.compile(r"[A-Za-z0-9._-]+@[A-Za-z0-9][A-Za-z0-9.-]*:[^/].*")
_REFUSED_TRANSPORTS = {
    "http://": "plain http:// (unencrypted)",
    "git://": "git:// (unauthenticated)",
    "file://": "file:// (a path on the runbot host)",
    "ext::": "ext:: (runs a command)",
}
_SUPPORTED = "use https://host/path, ssh://host/path or user@host:path"
_URL_USERINFO = re.compile(r"(?i)\b([a-z][a-z0-9+.-]*://)[^/@\s]+@")
_TOKEN_PATTERNS = re.compile(
    r"\b(?:gh[pousr]_[A-Za-z0-9]{20,}|github_pat_[A-Za-z0-9_]{20,}|glpat-[A-Za-z0-9_-]{20,})"
)
_AUTH_HEADER = re.compile(r"(?i)(authorization:\s*)(\S+\s+)?\S+")
_FETCHED = "refs/runbot/fetched"


def fetch_git_stack(
    url: str,
    ref: str,
    path: str,
    cache_dir: Path,
    env: dict[str, str] | None = None,
    commit: str | None = None,
    *,
    limits: GitLimits | None = None,
) -> tuple[Path, str]:
    """Return (stack directory inside the exported tree, commit SHA).

    `ref` is a branch, tag or full commit SHA, fetched shallowly and resolved by the remote; an
    empty ref means the remote's default branch. With `commit`, that exact commit is used and
    the network is only touched if the mirror lacks it. `limits` (default: no host allowed)
    says which hosts git may contact and how far a fetch may go.
    """
    limits = limits if limits is not None else GitLimits()
    check_git_url(url, limits.allowed_hosts)
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
        # repository or its credentials are gone). Touched: in use, so the pruning keeps it.
        os.utime(cache_dir / "trees" / commit)
        return _stack_dir(cache_dir / "trees" / commit, subpath, path, url, env, commit)
    if shutil.which("git") is None:
        raise StackError("git is not installed on the runbot host: install git to use git stacks")
    runner = _Git(url, env, limits, cache_dir / "home")
    mirror = cache_dir / "mirrors" / (hashlib.sha256(url.encode()).hexdigest()[:32] + ".git")
    mirror.parent.mkdir(parents=True, exist_ok=True)
    with _locked(mirror.with_suffix(".lock")):
        created = not (mirror / "HEAD").exists()
        if created:
            shutil.rmtree(mirror, ignore_errors=True)
            runner.run(["init", "--quiet", "--bare", "--", str(mirror)])
        os.utime(mirror)  # in use: the cache pruning keeps it
        try:
            resolved = _resolve_locked(runner, mirror, url, ref, env, commit)
            # Keep the commit reachable in the mirror so neither a force-push nor
            # git's garbage collection can take away code a target was built from.
            runner.run(
                ["--git-dir", str(mirror), "update-ref", f"refs/runbot/pins/{resolved}", resolved]
            )
            tree = _export(runner, mirror, resolved, cache_dir / "trees")
            os.utime(tree)  # in use: the cache pruning keeps it
        except StackError as exc:
            # Don't keep an empty mirror for a URL that never worked, nor an oversize one.
            if created or isinstance(exc, GitTooLarge):
                shutil.rmtree(mirror, ignore_errors=True)
            raise
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
        # Servers that allow it (GitHub does) send a commit by its SHA.
        runner.fetch(mirror, commit, quiet_failure=True)
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
    *,
    limits: GitLimits | None = None,
) -> Stack:
    """Fetch and load a git stack, recording the resolved commit in its source."""
    root, resolved = fetch_git_stack(
        url, ref, path, cache_dir, env=env, commit=commit, limits=limits
    )
    source = StackSource(kind="git", url=url, ref=ref, path=path, commit=resolved)
    return load_stack(name, root, source)


class _Git:
    """Git for one URL: the operator's fence (`GitRunner`) and errors with credentials scrubbed."""

    def __init__(
        self, url: str, env: Mapping[str, str] | None, limits: GitLimits, home: Path
    ) -> None:
        self.url = url
        self.secrets = dict(env or {})
        self.runner = GitRunner(limits, home, self.secrets)

    @property
    def env(self) -> dict[str, str]:
        return self.runner.env

    def run(self, args: list[str], *, check: bool = True, watch: Path | None = None) -> str:
        what = f"git {_subcommand(args)} for {_scrub(self.url, self.secrets)}"
        completed = self.runner.run(args, watch=watch, what=what)
        if check and completed.returncode != 0:
            raise StackError(
                f"{what} failed: "
                f"{_scrub(completed.stderr.strip(), self.secrets) or 'no error output'}"
            )
        return completed.stdout if completed.returncode == 0 else ""

    def fetch(self, mirror: Path, source: str, *, quiet_failure: bool = False) -> str:
        """Fetch one ref or commit, shallowly, into refs/runbot/fetched; returns git's stderr
        on a failure the caller tolerates (`quiet_failure`)."""
        args = ["--git-dir", str(mirror), "fetch", "--quiet", "--depth=1", "--no-tags"]
        argv = [*args, "--", self.url, f"+{source}:{_FETCHED}"]
        what = f"git fetch for {_scrub(self.url, self.secrets)}"
        completed = self.runner.run(argv, watch=mirror, what=what)
        if completed.returncode == 0:
            return ""
        stderr = _scrub(completed.stderr.strip(), self.secrets) or "no error output"
        if quiet_failure:
            return stderr
        raise StackError(f"{what} failed: {stderr}")

    def has_commit(self, mirror: Path, sha: str) -> bool:
        return self.rev_parse(mirror, sha) == sha

    def rev_parse(self, mirror: Path, name: str) -> str | None:
        out = self.run(
            ["--git-dir", str(mirror), "rev-parse", "--verify", "--quiet", f"{name}^{{commit}}"],
            check=False,
        ).strip()
        return out or None


def _subcommand(args: list[str]) -> str:
    """The git subcommand in argv (after `--git-dir <dir>`), for messages."""
    rest = args[2:] if args[:1] == ["--git-dir"] else args
    return rest[0] if rest else "git"


def _resolve(runner: _Git, mirror: Path, ref: str) -> str:
    """Fetch `ref` (a branch, tag or full SHA, as the remote resolves it) at depth 1."""
    stderr = runner.fetch(mirror, ref or "HEAD", quiet_failure=True)
    sha = None if stderr else runner.rev_parse(mirror, _FETCHED)
    if sha:
        return sha
    if stderr and "couldn't find remote ref" not in stderr and "not our ref" not in stderr:
        raise StackError(f"git fetch for {_scrub(runner.url, runner.secrets)} failed: {stderr}")
    hint = (
        "; an abbreviated commit SHA cannot be fetched shallowly: write all 40 characters"
        if ref and _SHORT_SHA.fullmatch(ref.lower()) and not _FULL_SHA.fullmatch(ref.lower())
        else ""
    )
    raise StackError(
        f"git ref {ref!r} is not a branch, tag or commit in {_scrub(runner.url, runner.secrets)}: "
        f"check `ref` in the stack source{hint}"
    )


def _export(runner: _Git, mirror: Path, commit: str, trees: Path) -> Path:
    """Export `commit` into trees/<commit>/ once; later calls reuse it.

    Extraction goes to a temporary directory renamed into place, so a crash
    or a concurrent export never leaves a half-written tree behind. The archive
    is watched like a fetch: a checkout larger than the cap is stopped.
    """
    target = trees / commit
    if target.is_dir():
        return target
    trees.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{commit[:12]}-", dir=trees))
    try:
        archive = staging / "tree.tar"
        runner.run(
            ["--git-dir", str(mirror), "archive", "--format=tar", f"--output={archive}", commit],
            watch=staging,
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


def check_git_url(url: str, allowed_hosts: frozenset[str] | None) -> None:
    """Refuse, before any network access, a URL runbot does not fetch: another transport than
    https and ssh, a local path, an option-like text, or a host the operator did not allow."""
    if not url or url.startswith("-") or any(ch.isspace() or ch == "\x00" for ch in url):
        raise StackError(f"git URL {_scrub(url, None)!r} is not valid: {_SUPPORTED}")
    for prefix, what in _REFUSED_TRANSPORTS.items():
        if url.lower().startswith(prefix):
            raise StackError(
                f"git URL {_scrub(url, None)!r} uses {what}, which runbot does not fetch: "
                f"{_SUPPORTED}"
            )
    if not (url.startswith(_URL_SCHEMES) or _SCP_LIKE.fullmatch(url)):
        raise StackError(
            f"git URL {_scrub(url, None)!r} is not supported (only https and ssh are; local "
            f"paths and other transports are refused): {_SUPPORTED}"
        )
    host = git_host(url)
    if host is None or not host[0].isalnum():
        raise StackError(
            f"git URL {_scrub(url, None)!r} names no host runbot can check: {_SUPPORTED}, "
            "with credentials in the environment rather than in the URL"
        )
    if allowed_hosts is not None and host not in allowed_hosts:
        allowed = ", ".join(sorted(allowed_hosts)) or "none"
        raise StackError(
            f"git host {host!r} is not allowed by the operator policy (allowed: {allowed}): "
            "add it to `git_hosts` (or a `git_stacks` prefix on it) in RUNBOT_POLICY_FILE"
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


def prune_git_cache(cache_dir: Path, keep: frozenset[str], older_than: float) -> int:
    """Delete exported trees and mirrors last used before `older_than` (a UNIX time), except
    the trees of the commits in `keep` (what live targets were built from: their destroy needs
    that code). Returns how many went. A mirror is only deleted under its lock, so never in
    the middle of a fetch; a deleted one is fetched again, shallowly, when next needed."""
    removed = 0
    trees = Path(cache_dir) / "trees"
    if trees.is_dir():
        for tree in trees.iterdir():
            if tree.name in keep or not _unused_since(tree, older_than):
                continue
            shutil.rmtree(tree, ignore_errors=True)
            removed += 1
    mirrors = Path(cache_dir) / "mirrors"
    if mirrors.is_dir():
        for mirror in mirrors.glob("*.git"):
            with _locked(mirror.with_suffix(".lock")):
                if _unused_since(mirror, older_than):
                    shutil.rmtree(mirror, ignore_errors=True)
                    removed += 1
    return removed


def _unused_since(path: Path, moment: float) -> bool:
    try:
        return path.stat().st_mtime < moment
    except OSError:
        return False
