"""Real commits behind the fake GitHub's SHAs, so its tarballs are real `git archive` output.

The fake hands out made-up SHAs (`add_pull(head_sha="a" * 40)`); the first time a tarball of
one is asked for, the files the fake holds for it become a real commit here, and the fake SHA
is mapped to it. `commit` makes a commit from given files directly and returns its real SHA,
which the fake then knows as itself. Archives are made by `git archive`, as GitHub makes them:
gzip, one top folder `<owner>-<repo>-<sha7>/`.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from collections.abc import Mapping
from pathlib import Path

_ENV = {
    "GIT_AUTHOR_NAME": "fake",
    "GIT_AUTHOR_EMAIL": "fake@example.invalid",
    "GIT_COMMITTER_NAME": "fake",
    "GIT_COMMITTER_EMAIL": "fake@example.invalid",
    "GIT_AUTHOR_DATE": "2024-01-01T00:00:00Z",
    "GIT_COMMITTER_DATE": "2024-01-01T00:00:00Z",
    "GIT_CONFIG_NOSYSTEM": "1",
}


class BackingGit:
    """One bare repository in a temporary folder; thread-safety is the caller's (its lock)."""

    def __init__(self) -> None:
        self._dir: Path | None = None
        self.real: dict[tuple[str, str], str] = {}  # (repo lower-case, fake sha) -> commit

    def _git(self, *args: str, input: bytes | None = None, index: Path | None = None) -> bytes:
        if self._dir is None:
            self._dir = Path(tempfile.mkdtemp(prefix="fakegithub-git-"))
            subprocess.run(["git", "init", "-q", "--bare", str(self._dir)], check=True)
        env = {**os.environ, **_ENV, "GIT_DIR": str(self._dir)}
        env.pop("GIT_INDEX_FILE", None)
        if index is not None:
            env["GIT_INDEX_FILE"] = str(index)
        return subprocess.run(
            ["git", *args], input=input, env=env, capture_output=True, check=True
        ).stdout

    def commit(self, files: Mapping[str, bytes], message: str = "fake commit") -> str:
        """A real commit holding exactly `files` (path -> content); its SHA."""
        self._git("rev-parse", "--git-dir")  # makes the repository on first use
        assert self._dir is not None
        index = self._dir / f"index-{os.getpid()}-{id(files)}"
        try:
            for path, content in sorted(files.items()):
                blob = self._git("hash-object", "-w", "--stdin", input=content).decode().strip()
                mode = "100755" if path.endswith(".sh") else "100644"
                self._git(
                    "update-index", "--add", "--cacheinfo", f"{mode},{blob},{path}", index=index
                )
            if not files:
                self._git("read-tree", "--empty", index=index)
            tree = self._git("write-tree", index=index).decode().strip()
        finally:
            index.unlink(missing_ok=True)
        return self._git("commit-tree", tree, "-m", message).decode().strip()

    def archive(self, commit: str, prefix: str) -> bytes:
        """`git archive --format=tar.gz --prefix=<prefix>/ <commit>`."""
        return self._git("archive", "--format=tar.gz", f"--prefix={prefix}/", commit)

    def close(self) -> None:
        if self._dir is not None:
            shutil.rmtree(self._dir, ignore_errors=True)
            self._dir = None
