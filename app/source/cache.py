"""The unpacked sources on this host, one folder per (repository, commit), reused across runs.

`data_dir/sources/<owner>--<name>/<sha>` holds a commit's files. A fill unpacks into its own
staging folder under `data_dir/sources/.staging/` and renames it into place: a reader sees a
whole tree or none, and two tasks or replicas filling the same commit at once both succeed,
the second rename losing to the first and its copy dropped. `prune` keeps the newest trees
(a use touches a tree's time) and removes staging folders a crashed fill left behind.
"""

from __future__ import annotations

import errno
import os
import re
import shutil
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

#: A commit id as runbot passes it to git and GitHub: SHA-1 or SHA-256, lower-case hex.
SHA_RE = re.compile(r"[0-9a-f]{40}(?:[0-9a-f]{24})?")
_STAGING = ".staging"
_SLUG_RE = re.compile(r"[^A-Za-z0-9._-]")


def repository_slug(repository: str) -> str:
    """`owner/name` as one folder name that cannot climb (`owner--name`)."""
    slug = _SLUG_RE.sub("_", repository.replace("/", "--"))
    return slug.lstrip(".") or "_"


@dataclass(frozen=True)
class Pruned:
    """What one prune removed."""

    trees: int
    staging: int


class SourceCache:
    """The trees under `root`; `keep` is how many commits stay after a prune."""

    def __init__(
        self, root: Path, keep: int = 20, in_use: float = 6 * 3600, stale: float = 6 * 3600
    ) -> None:
        self.root = root
        self.keep = keep
        self.in_use = in_use  # a tree used this recently is never pruned (a run may read it)
        self.stale = stale  # a staging folder older than this was left by a crashed fill

    def path(self, repository: str, sha: str) -> Path:
        return self.root / repository_slug(repository) / sha

    def lookup(self, repository: str, sha: str) -> Path | None:
        """The tree if it is here, touched so that pruning keeps it."""
        path = self.path(repository, sha)
        if not path.is_dir():
            return None
        os.utime(path)
        return path

    def staging(self) -> Path:
        """A fresh folder to fill, on the same file system as the trees (for the rename)."""
        folder = self.root / _STAGING / uuid.uuid4().hex
        folder.mkdir(parents=True)
        for directory in (self.root, self.root / _STAGING):
            directory.chmod(0o755)
        return folder

    def commit(self, repository: str, sha: str, tree: Path) -> Path:
        """Move the filled `tree` into place; if another fill won, keep theirs and drop ours."""
        final = self.path(repository, sha)
        final.parent.mkdir(parents=True, exist_ok=True)
        final.parent.chmod(0o755)
        try:
            os.rename(tree, final)
        except OSError as exc:
            if exc.errno not in (errno.EEXIST, errno.ENOTEMPTY) or not final.is_dir():
                raise
            shutil.rmtree(tree, ignore_errors=True)
        os.utime(final)
        return final

    def prune(self, now: float | None = None) -> Pruned:
        """Drop all but the newest `keep` trees not used lately, and stale staging folders."""
        now = time.time() if now is None else now
        staging = 0
        for folder in _children(self.root / _STAGING):
            if _mtime(folder) < now - self.stale:
                shutil.rmtree(folder, ignore_errors=True)
                staging += 1
        trees = [
            tree
            for repo in _children(self.root)
            if repo.name != _STAGING
            for tree in _children(repo)
        ]
        trees.sort(key=_mtime, reverse=True)
        removed = 0
        for tree in trees[self.keep :]:
            if _mtime(tree) >= now - self.in_use:
                continue
            # Renamed away first: a reader never sees a half-deleted tree under the right name.
            doomed = self.root / _STAGING / f"prune-{uuid.uuid4().hex}"
            doomed.parent.mkdir(parents=True, exist_ok=True)
            try:
                os.rename(tree, doomed)
            except OSError:
                continue  # another replica pruned it first
            shutil.rmtree(doomed, ignore_errors=True)
            removed += 1
        return Pruned(removed, staging)


def _children(folder: Path) -> list[Path]:
    try:
        return [child for child in folder.iterdir() if child.is_dir() and not child.is_symlink()]
    except OSError:
        return []


def _mtime(path: Path) -> float:
    try:
        return path.stat().st_mtime
    except OSError:
        return 0.0
