"""The GitHub App's endpoints: one ``Gateway`` method per REST call, sent by the transport."""

from __future__ import annotations

import asyncio
import base64
import binascii
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Unpack
from urllib.parse import quote

from githubkit import GitHub
from githubkit.utils import UNSET

from app.access.roles import Role, role_from_permission
from app.github.gateway import (
    CHECK_NAME,
    REACTIONS,
    CheckRunFields,
    GitHubError,
    NotFoundOnGitHub,
    RetryLater,
    check_run_body,
    check_tree_limits,
    fit_comment,
    fit_status_description,
    is_deployment_state,
    is_reaction,
)
from app.github.payloads import PullFacts, at, pull_facts
from app.github.tarball import stream_tarball
from app.github.transport import (
    MAX_PAGES,
    PER_PAGE,
    GitHubTransport,
    Send,
    TransportOptions,
    _payload,
    github_message,
    has_next_page,
    split_repo,
)

if TYPE_CHECKING:
    from githubkit.response import Response

    from app.settings import Settings

__all__ = ["GitHubAppGateway"]

#: Concurrent file downloads in ``list_tree``; reads are not paced but should stay polite.
TREE_FETCH_CONCURRENCY = 8
_OK_CONCLUSIONS = frozenset({"success", "neutral", "skipped"})


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


# ---------------------------------------------------------------------------- the App gateway


class GitHubAppGateway:
    """The real thing: a GitHub App talking REST through githubkit.

    One gateway per process and event loop (its connection pool belongs to the loop).
    """

    local = False

    def __init__(self, settings: Settings, **options: Unpack[TransportOptions]) -> None:
        self._transport = GitHubTransport(settings, **options)
        self._slug = settings.github_app_slug
        #: runbot's own App: its check suite is never something `wait_for_ci` waits for.
        self._app_id = settings.github_app_id

    @property
    def min_write_interval(self) -> float:
        """The least gap between two writes of one installation (the notifier paces by it)."""
        return self._transport.min_write_interval

    @property
    def max_inline_wait(self) -> float:
        """The longest rate-limit wait served inline; longer ones become ``RetryLater``."""
        return self._transport.max_inline_wait

    # ------------------------------------------------------------------ repository content

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

    # ------------------------------------------------------------------ comments & reactions

    async def _bot_login(self) -> str:
        if self._slug is None:
            app = await self.get_app()
            slug = app.get("slug")
            if not slug:
                raise GitHubError("GitHub did not say the App's slug (GET /app has no 'slug').")
            self._slug = str(slug)
        return f"{self._slug}[bot]"

    async def find_comment(
        self, installation_id: int | None, repo: str, number: int, marker: str
    ) -> int | None:
        """The App's own comment carrying ``marker``; a person quoting the marker is ignored."""
        owner, name = split_repo(repo)
        bot = (await self._bot_login()).lower()
        pages = self._transport.pages(
            installation_id,
            repo,
            f"list the comments of {repo}#{number}",
            lambda gh, page: gh.rest.issues.async_list_comments(
                owner, name, number, per_page=PER_PAGE, page=page
            ),
        )
        async for response in pages:
            for comment in _payload(response):
                login = str(at(comment, "user", "login", default="")).lower()
                if login == bot and marker in str(at(comment, "body", default="")):
                    return int(at(comment, "id"))
        return None

    async def create_comment(
        self, installation_id: int | None, repo: str, number: int, body: str
    ) -> int:
        owner, name = split_repo(repo)
        text = fit_comment(body)
        response = await self._transport.call(
            installation_id,
            repo,
            f"comment on {repo}#{number}",
            "POST",
            lambda gh: gh.rest.issues.async_create_comment(owner, name, number, body=text),
        )
        return int(at(_payload(response), "id"))

    async def update_comment(
        self, installation_id: int | None, repo: str, comment_id: int, body: str
    ) -> None:
        owner, name = split_repo(repo)
        text = fit_comment(body)
        try:
            await self._transport.call(
                installation_id,
                repo,
                f"update comment {comment_id} in {repo}",
                "PATCH",
                lambda gh: gh.rest.issues.async_update_comment(owner, name, comment_id, body=text),
            )
        except NotFoundOnGitHub:
            raise NotFoundOnGitHub(
                f"comment {comment_id} in {repo} no longer exists (deleted on GitHub)."
            ) from None

    async def add_reaction(
        self, installation_id: int | None, repo: str, comment_id: int, content: str
    ) -> None:
        if not is_reaction(content):
            raise ValueError(f"unknown reaction {content!r}; GitHub accepts {sorted(REACTIONS)}")
        owner, name = split_repo(repo)
        await self._transport.call(
            installation_id,
            repo,
            f"react {content} to comment {comment_id} in {repo}",
            "POST",
            lambda gh: gh.rest.reactions.async_create_for_issue_comment(
                owner, name, comment_id, content=content
            ),
        )

    # ------------------------------------------------------------------ deployments

    async def create_deployment(
        self, installation_id: int | None, repo: str, ref: str, environment: str, description: str
    ) -> int:
        """A transient, non-production deployment that never merges and never waits on CI.

        runbot decides itself whether CI must pass first; ``required_contexts=[]`` stops
        GitHub from refusing (409) a deployment of a commit with a failing status.
        """
        owner, name = split_repo(repo)
        response = await self._transport.call(
            installation_id,
            repo,
            f"create deployment {environment} of {repo}@{ref}",
            "POST",
            lambda gh: gh.rest.repos.async_create_deployment(
                owner,
                name,
                ref=ref,
                environment=environment,
                description=description,
                transient_environment=True,
                production_environment=False,
                auto_merge=False,
                required_contexts=[],
            ),
        )
        deployment_id = at(_payload(response), "id")
        if not isinstance(deployment_id, int):  # 202: GitHub merged instead of deploying
            raise GitHubError(
                f"GitHub did not create deployment {environment} of {repo}@{ref}:"
                f" {github_message(response)}."
            )
        return deployment_id

    async def create_deployment_status(
        self,
        installation_id: int | None,
        repo: str,
        deployment_id: int,
        state: str,
        environment_url: str | None,
        log_url: str | None,
        description: str,
    ) -> None:
        """Report progress; ``auto_inactive=False`` because runbot marks old ones itself."""
        if not is_deployment_state(state):
            raise ValueError(f"unknown deployment state {state!r}")
        owner, name = split_repo(repo)
        short = fit_status_description(description)
        await self._transport.call(
            installation_id,
            repo,
            f"set deployment {deployment_id} of {repo} to {state}",
            "POST",
            lambda gh: gh.rest.repos.async_create_deployment_status(
                owner,
                name,
                deployment_id,
                state=state,
                description=short,
                auto_inactive=False,
                # Left out, not null, when there is none (as GitHub's own clients do).
                environment_url=UNSET if environment_url is None else environment_url,
                log_url=UNSET if log_url is None else log_url,
            ),
        )

    async def list_deployments(
        self, installation_id: int | None, repo: str, environment: str
    ) -> list[int]:
        owner, name = split_repo(repo)
        bot = (await self._bot_login()).lower()
        found: list[int] = []
        pages = self._transport.pages(
            installation_id,
            repo,
            f"list the deployments of {repo} to {environment}",
            lambda gh, page: gh.rest.repos.async_list_deployments(
                owner, name, environment=environment, per_page=PER_PAGE, page=page
            ),
        )
        async for response in pages:
            for item in _payload(response):
                if str(at(item, "creator", "login", default="")).lower() == bot:
                    found.append(int(at(item, "id")))
        return found

    async def delete_deployment(
        self, installation_id: int | None, repo: str, deployment_id: int
    ) -> None:
        owner, name = split_repo(repo)

        async def delete() -> None:
            await self._transport.call(
                installation_id,
                repo,
                f"delete deployment {deployment_id} of {repo}",
                "DELETE",
                lambda gh: gh.arequest(
                    "DELETE", f"/repos/{owner}/{name}/deployments/{deployment_id}"
                ),
            )

        try:
            await delete()
        except NotFoundOnGitHub:
            return  # already gone
        except GitHubError as exc:
            if isinstance(exc, RetryLater):
                raise
            # 422: GitHub only deletes inactive deployments. Make it inactive, then retry.
            await self.create_deployment_status(
                installation_id, repo, deployment_id, "inactive", None, None, "PR closed"
            )
            await delete()

    async def delete_environment(
        self, installation_id: int | None, repo: str, environment: str
    ) -> None:
        owner, name = split_repo(repo)
        try:
            await self._transport.call(
                installation_id,
                repo,
                f"delete the environment {environment} of {repo} (needs administration: write)",
                "DELETE",
                lambda gh: gh.arequest(
                    "DELETE", f"/repos/{owner}/{name}/environments/{quote(environment, safe='')}"
                ),
            )
        except NotFoundOnGitHub:
            return

    # ------------------------------------------------------------------ check runs

    async def create_check_run(
        self, installation_id: int | None, repo: str, sha: str, fields: CheckRunFields
    ) -> int:
        owner, name = split_repo(repo)
        body = {"name": CHECK_NAME, "head_sha": sha, **check_run_body(fields)}
        response = await self._transport.call(
            installation_id,
            repo,
            f"create the runbot check run on {repo}@{sha[:12]} (needs checks: write)",
            "POST",
            lambda gh: gh.arequest("POST", f"/repos/{owner}/{name}/check-runs", json=body),
        )
        return int(at(_payload(response), "id"))

    async def update_check_run(
        self, installation_id: int | None, repo: str, check_run_id: int, fields: CheckRunFields
    ) -> None:
        owner, name = split_repo(repo)
        body = check_run_body(fields)
        await self._transport.call(
            installation_id,
            repo,
            f"update check run {check_run_id} of {repo}",
            "PATCH",
            lambda gh: gh.arequest(
                "PATCH", f"/repos/{owner}/{name}/check-runs/{check_run_id}", json=body
            ),
        )

    async def find_check_run(self, installation_id: int | None, repo: str, sha: str) -> int | None:
        owner, name = split_repo(repo)
        slug = (await self._bot_login()).lower().removesuffix("[bot]")
        response = await self._transport.call(
            installation_id,
            repo,
            f"look for the runbot check run on {repo}@{sha[:12]}",
            "GET",
            lambda gh: gh.arequest(
                "GET",
                f"/repos/{owner}/{name}/commits/{sha}/check-runs",
                params={"check_name": CHECK_NAME, "filter": "all", "per_page": PER_PAGE},
            ),
        )
        for run in at(_payload(response), "check_runs", default=[]) or []:
            mine = str(at(run, "app", "slug", default="")).lower() == slug
            if mine and at(run, "status", default="") != "completed":
                return int(at(run, "id"))
        return None

    # ------------------------------------------------------------------ people, pulls, CI

    async def permission(self, installation_id: int | None, repo: str, username: str) -> Role:
        """The user's role on the repository (see `role_from_permission`)."""
        owner, name = split_repo(repo)
        try:
            response = await self._transport.call(
                installation_id,
                repo,
                f"check {username}'s permission on {repo}",
                "GET",
                lambda gh: gh.rest.repos.async_get_collaborator_permission_level(
                    owner, name, username
                ),
            )
        except NotFoundOnGitHub:
            return Role.NONE  # no such user
        data = _payload(response)
        return role_from_permission(at(data, "role_name"), at(data, "permission"))

    async def get_pull(
        self, installation_id: int | None, repo: str, number: int
    ) -> PullFacts | None:
        """The PR as it is now: webhooks say *that* something changed, this says *what*."""
        owner, name = split_repo(repo)
        try:
            response = await self._transport.call(
                installation_id,
                repo,
                f"read pull request #{number} of {repo}",
                "GET",
                lambda gh: gh.rest.pulls.async_get(owner, name, number),
            )
        except NotFoundOnGitHub:
            return None
        return pull_facts(_payload(response))

    async def list_open_pulls(self, installation_id: int | None, repo: str) -> list[PullFacts]:
        owner, name = split_repo(repo)
        pulls: list[PullFacts] = []
        pages = self._transport.pages(
            installation_id,
            repo,
            f"list the open pull requests of {repo}",
            lambda gh, page: gh.rest.pulls.async_list(
                owner, name, state="open", per_page=PER_PAGE, page=page
            ),
        )
        async for response in pages:
            found = (pull_facts(item) for item in _payload(response))
            pulls.extend(facts for facts in found if facts is not None)
        return pulls

    async def installation_repos(self, installation_id: int) -> list[str]:
        repos: list[str] = []
        for page in range(1, MAX_PAGES + 1):
            response = await self._transport.attempt(
                f"list the repositories of installation {installation_id}",
                "GET",
                _repos_page(page),
                installation_id,
            )
            data = _payload(response)
            repos.extend(str(at(r, "full_name")) for r in at(data, "repositories") or [])
            if not has_next_page(response):
                return repos
        raise GitHubError(
            f"installation {installation_id} lists more than {MAX_PAGES * PER_PAGE} repositories."
        )

    async def ci_state(self, installation_id: int | None, repo: str, sha: str) -> str:
        """``success``, ``pending`` or ``failure`` over check suites and commit statuses.

        runbot's own suite (its `runbot` check run) is left out. A failure anywhere wins
        over pending (no point waiting for the rest). Suites that
        are queued with no runs belong to apps that never run on this repository; GitHub
        leaves them queued forever, so they are ignored. A combined status of ``pending``
        with zero statuses means no status was ever set, so it counts as success.
        """
        owner, name = split_repo(repo)
        states: list[str] = []
        pages = self._transport.pages(
            installation_id,
            repo,
            f"read the check suites of {repo}@{sha[:12]}",
            lambda gh, page: gh.rest.checks.async_list_suites_for_ref(
                owner, name, sha, per_page=PER_PAGE, page=page
            ),
        )
        async for response in pages:
            for suite in at(_payload(response), "check_suites") or []:
                if self._own_suite(suite):
                    continue  # runbot's own check run: waiting for it would wait forever
                status = at(suite, "status")
                conclusion = at(suite, "conclusion")
                if status == "completed":
                    states.append("success" if conclusion in _OK_CONCLUSIONS else "failure")
                elif status == "queued" and not at(suite, "latest_check_runs_count"):
                    continue
                else:
                    states.append("pending")
        response = await self._transport.call(
            installation_id,
            repo,
            f"read the commit status of {repo}@{sha[:12]}",
            "GET",
            lambda gh: gh.rest.repos.async_get_combined_status_for_ref(
                owner, name, sha, per_page=1
            ),
        )
        combined = _payload(response)
        state = at(combined, "state", default="pending")
        if int(at(combined, "total_count", default=0)) > 0:
            states.append(
                "success" if state == "success" else "pending" if state == "pending" else "failure"
            )
        if "failure" in states:
            return "failure"
        return "pending" if "pending" in states else "success"

    def _own_suite(self, suite: Any) -> bool:
        app_id, slug = at(suite, "app", "id"), at(suite, "app", "slug")
        if self._app_id is not None and app_id is not None:
            return str(app_id) == str(self._app_id)
        return bool(self._slug) and slug == self._slug

    # ------------------------------------------------------------------ the App itself

    async def get_app(self) -> dict[str, Any]:
        response = await self._transport.as_app(
            "read the App's own description",
            "GET",
            lambda gh: gh.rest.apps.async_get_authenticated(),
        )
        try:
            data = response.json()
        except ValueError:
            raise GitHubError("GitHub answered GET /app with a body that is not JSON.") from None
        if not isinstance(data, dict):
            raise GitHubError("GitHub answered GET /app with something other than an object.")
        if self._slug is None and data.get("slug"):
            self._slug = str(data["slug"])
        return data

    async def installation_token(self, installation_id: int) -> str:
        """A token for git over HTTPS; the transport caches and renews it."""
        return await self._transport.installation_token(installation_id)

    async def aclose(self) -> None:
        await self._transport.aclose()


def _repos_page(page: int) -> Send:
    """One page of the installation's repositories (bound here: a lambda in a loop would see
    the last page number)."""
    return lambda gh: gh.rest.apps.async_list_repos_accessible_to_installation(
        per_page=PER_PAGE, page=page
    )
