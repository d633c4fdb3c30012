"""Reading a repository's content through the App: files, trees of files, branches, tarballs.

Mixed into `GitHubAppGateway`, apart from its endpoints about pull requests, comments,
deployments and check runs to keep each file small: a repository's config and a stack stored
in a repository are read through these (unpaced reads, a few files at a time).
"""

from __future__ import annotations

import asyncio
import base64
import binascii
from collections.abc import Callable
from typing import TYPE_CHECKING, Any
from urllib.parse import quote

from githubkit import GitHub

from app.github.gateway import GitHubError, NotFoundOnGitHub, check_tree_limits
from app.github.payloads import at
from app.github.tarball import stream_tarball
from app.github.transport import GitHubTransport, _payload, split_repo

if TYPE_CHECKING:
    from githubkit.response import Response

__all__ = ["ContentReads"]

#: Concurrent file downloads in ``list_tree``; reads are not paced but should stay polite.
TREE_FETCH_CONCURRENCY = 8


def _decode_file(repo: str, path: str, item: Any) -> str:
    encoding = at(item, "encoding", default="")
    content = at(item, "content", default="")
    if encoding == "none" or (encoding != "base64" and not content):
        raise GitHubError(f"{repo}:{path} is too large to fetch through the contents API.")
    try:
        raw = base64.b64decode(content) if encoding == "base64" else str(content).encode()
        return raw.decode("utf-8")
    except (binascii.Error, UnicodeDecodeError):
        raise GitHubError(f"{repo}:{path} is not a UTF-8 text file.") from None


class ContentReads:
    """The repository-content endpoints of `GitHubAppGateway`."""

    _transport: GitHubTransport

    async def _contents(self, installation_id: int | None, repo: str, path: str, ref: str) -> Any:
        owner, name = split_repo(repo)
        clean = path.strip("/")
        what = f"read {repo}:{clean or '/'} at {ref}"

        async def send(gh: GitHub[Any]) -> Response[Any]:
            if not clean:  # the root listing has no trailing path segment
                return await gh.arequest(
                    "GET", f"/repos/{owner}/{name}/contents", params={"ref": ref}
                )
            return await gh.rest.repos.async_get_content(
                owner, name, quote(clean, safe="/"), ref=ref
            )

        return _payload(await self._transport.call(installation_id, repo, what, "GET", send))

    async def read_file(
        self, installation_id: int | None, repo: str, path: str, ref: str
    ) -> str | None:
        try:
            item = await self._contents(installation_id, repo, path, ref)
        except NotFoundOnGitHub:
            return None
        clean = path.strip("/")
        if isinstance(item, list) or at(item, "type") != "file":
            kind = "directory" if isinstance(item, list) else at(item, "type", default="?")
            raise GitHubError(f"{repo}:{clean} at {ref} is a {kind}, not a file.")
        return _decode_file(repo, clean, item)

    async def branch_sha(self, installation_id: int | None, repo: str, branch: str) -> str | None:
        owner, name = split_repo(repo)
        try:
            response = await self._transport.call(
                installation_id,
                repo,
                f"resolve the branch {branch} of {repo}",
                "GET",
                lambda gh: gh.arequest(
                    "GET", f"/repos/{owner}/{name}/git/ref/heads/{quote(branch, safe='/')}"
                ),
            )
        except NotFoundOnGitHub:
            return None
        sha = at(_payload(response), "object", "sha")
        return sha if isinstance(sha, str) and sha else None

    async def download_tarball(
        self, installation_id: int | None, repo: str, sha: str, write: Callable[[bytes], None]
    ) -> None:
        await stream_tarball(self._transport, installation_id, repo, sha, write)

    async def list_tree(
        self, installation_id: int | None, repo: str, path: str, ref: str
    ) -> dict[str, str]:
        root = path.strip("/")
        files: list[str] = []
        total = 0
        pending = [root]
        while pending:
            directory = pending.pop()
            try:
                listing = await self._contents(installation_id, repo, directory, ref)
            except NotFoundOnGitHub:
                raise NotFoundOnGitHub(
                    f"{repo} has no directory {root or '/'} at {ref} for the stack."
                ) from None
            if not isinstance(listing, list):
                raise GitHubError(f"{repo}:{directory} at {ref} is a file, not a directory.")
            for entry in listing:
                kind, entry_path = at(entry, "type"), str(at(entry, "path", default=""))
                if kind == "dir":
                    pending.append(entry_path)
                elif kind == "file":
                    files.append(entry_path)
                    total += int(at(entry, "size", default=0))
                else:
                    raise GitHubError(
                        f"{repo}:{entry_path} is a {kind}; a stack stored in a repository"
                        " may only contain regular files and directories."
                    )
            check_tree_limits(repo, root, len(files), total)

        gate = asyncio.Semaphore(TREE_FETCH_CONCURRENCY)

        async def fetch(file_path: str) -> tuple[str, str]:
            async with gate:
                text = await self.read_file(installation_id, repo, file_path, ref)
            if text is None:
                raise GitHubError(f"{repo}:{file_path} vanished while runbot was reading {ref}.")
            relative = file_path[len(root) + 1 :] if root else file_path
            return relative, text

        results = await asyncio.gather(*(fetch(f) for f in files))
        check_tree_limits(repo, root, len(results), sum(len(t.encode()) for _, t in results))
        return dict(sorted(results))
