"""Fetching a commit's source once, unpacked safely, for the runs that read it.

`Sources.checkout(repository, sha)` answers the cached tree or downloads the commit's tarball
(from GitHub, or `git archive` of `RUNBOT_LOCAL_REPO`: a `Download`), unpacks it under the
operator policy's limits for that repository, and puts it in the cache. Failures are typed:
`SourceRefused` (the tarball is too big or holds something runbot will not write: the
environment fails with the reason) and `SourceUnavailable` (the network or GitHub: tried
again later).
"""

from __future__ import annotations

import asyncio
import shutil
import tarfile
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from app.source.archive import ArchiveLimits, ArchiveRefused, Refusal, Unpacked, extract
from app.source.cache import SHA_RE, SourceCache


class SourceError(Exception):
    """The source of a commit could not be had; the message says why and what to do."""


class SourceRefused(SourceError):
    """Not now, not later: the tarball breaks a limit or holds a member runbot will not write."""


class SourceUnavailable(SourceError):
    """The download failed for a reason that may pass (network, GitHub 5xx, a rate limit)."""

    def __init__(self, message: str, retry_after: float = 30.0) -> None:
        super().__init__(message)
        self.retry_after = retry_after


@dataclass(frozen=True)
class SourceLimits:
    """The operator policy's `source_max_bytes` and `source_max_files` for one repository."""

    max_bytes: int = 200_000_000
    max_files: int = 20_000

    @property
    def download_bytes(self) -> int:
        """The most compressed bytes worth downloading: the files plus tar's headers."""
        return self.max_bytes + 2048 * self.max_files + (1 << 20)


#: Writes the gzipped tarball of `sha` (one top folder) to the file; the `int` is the most
#: bytes to write before raising SourceRefused. Raises SourceError subclasses only.
Download = Callable[[str, str, Path, int], Awaitable[None]]


class SourceProvider(Protocol):
    """What the lifecycle asks for a commit's files (a read-only folder)."""

    async def checkout(self, repository: str, sha: str) -> Path: ...


class CappedFile:
    """A file that refuses to grow past `limit` bytes (the download's cap)."""

    def __init__(self, path: Path, limit: int, what: str) -> None:
        self.handle = path.open("xb")
        self.limit = limit
        self.what = what
        self.written = 0

    def write(self, chunk: bytes) -> None:
        self.written += len(chunk)
        if self.written > self.limit:
            raise SourceRefused(
                f"{self.what} is larger than {self.limit} bytes compressed: an operator can"
                " raise `source_max_bytes` in the policy for this repository"
            )
        self.handle.write(chunk)

    def close(self) -> None:
        self.handle.close()


_ADVICE = {
    Refusal.TOO_BIG: "an operator can raise `source_max_bytes` in the policy for this repository",
    Refusal.TOO_MANY: "an operator can raise `source_max_files` in the policy for this repository",
}
_FIX = "remove or fix that entry in the commit and push again"


def unpack_source(archive: Path, tree: Path, limits: SourceLimits, what: str) -> Unpacked:
    """Unpack a GitHub-shaped tarball (one top folder, stripped) into the empty `tree`."""
    try:
        with tarfile.open(archive, mode="r:gz") as tar:
            return extract(
                tar,
                tree,
                ArchiveLimits(limits.max_bytes, limits.max_files),
                noun=what,
                strip_top=True,
                links=True,
            )
    except ArchiveRefused as exc:
        raise SourceRefused(f"{exc}: {_ADVICE.get(exc.kind, _FIX)}") from exc
    except (tarfile.TarError, EOFError, OSError) as exc:
        raise SourceRefused(f"{what} is not a gzipped tarball ({exc}); push again") from exc


class Sources:
    """The SourceProvider: cache first, else download, unpack and cache."""

    def __init__(
        self,
        cache: SourceCache,
        download: Download,
        limits_for: Callable[[str], SourceLimits] = lambda _repository: SourceLimits(),
    ) -> None:
        self.cache = cache
        self.download = download
        self.limits_for = limits_for  # read per fetch: the policy follows its reloads

    async def checkout(self, repository: str, sha: str) -> Path:
        if not SHA_RE.fullmatch(sha):
            raise SourceRefused(
                f"{sha!r} is not a commit id (40 hex digits); runbot fetches sources by commit"
            )
        found = self.cache.lookup(repository, sha)
        if found is not None:
            return found
        limits = self.limits_for(repository)
        what = f"the source of {repository} at {sha[:7]}"
        staging = await asyncio.to_thread(self.cache.staging)
        try:
            archive = staging / "source.tar.gz"
            await self.download(repository, sha, archive, limits.download_bytes)
            tree = staging / "tree"
            tree.mkdir()
            tree.chmod(0o755)
            await asyncio.to_thread(unpack_source, archive, tree, limits, what)
            path = await asyncio.to_thread(self.cache.commit, repository, sha, tree)
        finally:
            await asyncio.to_thread(shutil.rmtree, staging, True)
        await asyncio.to_thread(self.cache.prune)
        return path
