"""A commit's source from GitHub: the tarball endpoint, streamed, and its `Download` adapter.

`GET /repos/{owner}/{repo}/tarball/{sha}` answers 302 to codeload, which serves the gzipped
tarball (one top folder `owner-repo-sha7/`). githubkit reads whole bodies, so this streams with
httpx itself, with the installation's token, following the redirect; GitHub's failures become
the gateway's contract (`RetryLater`, `NotFoundOnGitHub`, `GitHubError`), and those become the
source's (`SourceUnavailable`, `SourceRefused`) in `github_download`.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

import httpx

from app.github.gateway import GitHubError, NotFoundOnGitHub, RetryLater
from app.github.transport import OUTAGE_BACKOFF, split_repo
from app.source.fetch import CappedFile, Download, SourceError, SourceRefused, SourceUnavailable

if TYPE_CHECKING:
    from app.github.gateway import Gateway
    from app.github.transport import GitHubTransport

#: Bodies GitHub sends for an archive; an HTML or JSON body is an error page, not a tarball.
_ARCHIVE_TYPES = ("application/x-gzip", "application/gzip", "application/octet-stream")
_TIMEOUT = httpx.Timeout(60.0, connect=10.0)


async def stream_tarball(
    transport: GitHubTransport,
    installation_id: int | None,
    repo: str,
    sha: str,
    write: Callable[[bytes], None],
) -> None:
    """The body of the tarball endpoint, after its redirect, chunk by chunk into `write`."""
    owner, name = split_repo(repo)
    what = f"download the source of {repo} at {sha[:7]}"
    for attempt in (1, 2):
        iid = await transport.installation_for(installation_id, repo)
        token = await transport.installation_token(iid)
        if await _stream(transport, token, f"{owner}/{name}", sha, what, write, attempt == 1):
            return
        transport.forget_installation(repo, iid)  # a revoked token, or a new installation


async def _stream(
    transport: GitHubTransport,
    token: str,
    repo: str,
    sha: str,
    what: str,
    write: Callable[[bytes], None],
    may_retry: bool,
) -> bool:
    """One download; False when a 401 should be retried with a fresh token (nothing written)."""
    headers = {
        "Authorization": f"Bearer {token}",
        "Accept": "application/vnd.github+json",
        "X-GitHub-Api-Version": transport.api_version,
        "User-Agent": "runbot",
    }
    url = f"{transport.api_url}/repos/{repo}/tarball/{sha}"
    try:
        async with (
            httpx.AsyncClient(follow_redirects=True, timeout=_TIMEOUT) as client,
            client.stream("GET", url, headers=headers) as response,
        ):
            if response.status_code == 401 and may_retry:
                return False
            _check(response, what)
            async for chunk in response.aiter_bytes(1 << 20):
                write(chunk)
            return True
    except httpx.HTTPError as exc:
        raise RetryLater(
            OUTAGE_BACKOFF, f"GitHub could not be reached to {what} ({exc!r})"
        ) from None


def _check(response: httpx.Response, what: str) -> None:
    status = response.status_code
    if status == 404:
        raise NotFoundOnGitHub(f"GitHub has no commit to {what} (404)")
    limited = status == 429 or (
        status == 403 and response.headers.get("x-ratelimit-remaining") == "0"
    )
    if status >= 500 or limited:
        wait = float(response.headers.get("retry-after", "") or OUTAGE_BACKOFF)
        raise RetryLater(wait, f"GitHub answered {status} when runbot tried to {what}")
    if status != 200:
        raise GitHubError(f"GitHub refused to let runbot {what}: {status}")
    kind = response.headers.get("content-type", "").split(";")[0].strip().lower()
    if kind not in _ARCHIVE_TYPES:
        raise GitHubError(
            f"GitHub answered {kind or 'no content type'} when runbot tried to {what}"
        )


def github_download(gateway: Gateway) -> Download:
    """The `Download` of GitHub mode: the gateway's tarball, capped, errors as the source's."""

    async def download(repository: str, sha: str, dest: Path, limit: int) -> None:
        what = f"the source of {repository} at {sha[:7]}"
        out = CappedFile(dest, limit, what)
        try:
            await gateway.download_tarball(None, repository, sha, out.write)
        except SourceError:
            raise
        except RetryLater as exc:
            raise SourceUnavailable(f"{exc}; runbot tries again", exc.retry_after) from exc
        except NotFoundOnGitHub as exc:
            raise SourceRefused(
                f"{exc}: was the commit force-pushed away? push again to deploy the new head"
            ) from exc
        except GitHubError as exc:
            raise SourceRefused(str(exc)) from exc
        finally:
            out.close()

    return download
