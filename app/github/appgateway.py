"""The GitHub App's endpoints: one ``Gateway`` method per REST call, sent by the transport.

The reads of repository content (files, trees, branches, tarballs) are in ``contents``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Unpack
from urllib.parse import quote

from githubkit.utils import UNSET

from app.access.roles import Role, role_from_permission
from app.github.contents import ContentReads
from app.github.gateway import (
    CHECK_NAME,
    REACTIONS,
    CheckRunFields,
    GitHubError,
    NotFoundOnGitHub,
    RetryLater,
    check_run_body,
    fit_comment,
    fit_status_description,
    is_deployment_state,
    is_reaction,
)
from app.github.payloads import PullFacts, at, pull_facts
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
    from app.settings import Settings

__all__ = ["GitHubAppGateway"]

_OK_CONCLUSIONS = frozenset({"success", "neutral", "skipped"})


# ---------------------------------------------------------------------------- the App gateway


class GitHubAppGateway(ContentReads):
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
