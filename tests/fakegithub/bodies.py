"""Response bodies shared across domains: App, user, repository, installation.

Built from the OpenAPI description's own examples overlaid with the fake's state,
so they carry every field GitHub documents.
"""

from __future__ import annotations

import copy
from typing import Any

from . import schema
from .ids import _node_id
from .state import _Auth, _Installation, _level_at_least, _rebase, _Repo


class Bodies:
    """FakeGitHub's shared response bodies (a mixin; ``server.py`` makes the state)."""

    def _load_templates(self) -> dict[str, Any]:
        ex = schema.example
        contents = "/repos/{owner}/{repo}/contents/{path}"
        return {
            "app": ex("GET", "/app"),
            "token": ex("POST", "/app/installations/{installation_id}/access_tokens", "201"),
            "installation": ex("GET", "/repos/{owner}/{repo}/installation"),
            "repo": ex("GET", "/repos/{owner}/{repo}"),
            "file": ex("GET", contents, "200", "response-if-content-is-a-file"),
            "dir_entry": ex("GET", contents, "200", "response-if-content-is-a-directory")[0],
            "pull": ex("GET", "/repos/{owner}/{repo}/pulls/{pull_number}"),
            "comment": ex("POST", "/repos/{owner}/{repo}/issues/{issue_number}/comments", "201"),
            "reaction": ex(
                "POST", "/repos/{owner}/{repo}/issues/comments/{comment_id}/reactions", "201"
            ),
            "deployment": ex("POST", "/repos/{owner}/{repo}/deployments", "201"),
            "deployment_status": ex(
                "POST", "/repos/{owner}/{repo}/deployments/{deployment_id}/statuses", "201"
            ),
            "check_suite": ex("GET", "/repos/{owner}/{repo}/commits/{ref}/check-suites")[
                "check_suites"
            ][0],
            "combined": ex("GET", "/repos/{owner}/{repo}/commits/{ref}/status"),
            "check_run": ex("POST", "/repos/{owner}/{repo}/check-runs", "201"),
            "private_user": ex(
                "GET", "/user", "200", "response-with-public-and-private-profile-information"
            ),
            "manifest": ex("POST", "/app-manifests/{code}/conversions", "201"),
        }

    def _tpl(self, name: str) -> Any:
        return copy.deepcopy(self._templates[name])

    def _user_obj(self, login: str) -> dict[str, Any]:
        user = self._user(login)
        api, web = self.url, self.web_url
        path_login = login.replace("[", "%5B").replace("]", "%5D")
        is_bot = user.type == "Bot"
        return {
            "name": user.name,
            "email": user.email,
            "login": user.login,
            "id": user.id,
            "node_id": _node_id("Bot" if is_bot else "User", user.id),
            "avatar_url": f"https://avatars.githubusercontent.com/u/{user.id}?v=4",
            "gravatar_id": "",
            "url": f"{api}/users/{path_login}",
            "html_url": f"{web}/apps/{self.slug}" if is_bot else f"{web}/{login}",
            "followers_url": f"{api}/users/{path_login}/followers",
            "following_url": f"{api}/users/{path_login}/following{{/other_user}}",
            "gists_url": f"{api}/users/{path_login}/gists{{/gist_id}}",
            "starred_url": f"{api}/users/{path_login}/starred{{/owner}}{{/repo}}",
            "subscriptions_url": f"{api}/users/{path_login}/subscriptions",
            "organizations_url": f"{api}/users/{path_login}/orgs",
            "repos_url": f"{api}/users/{path_login}/repos",
            "events_url": f"{api}/users/{path_login}/events{{/privacy}}",
            "received_events_url": f"{api}/users/{path_login}/received_events",
            "type": user.type,
            "site_admin": False,
            "user_view_type": "public",
        }

    @property
    def bot_login(self) -> str:
        """The login the App acts as (``<slug>[bot]``), e.g. as comment author."""
        return f"{self.slug}[bot]"

    def _bot(self) -> str:
        user = self._user(self.bot_login, "Bot")
        user.type = "Bot"
        return user.login

    def _actor(self, auth: _Auth) -> tuple[str, bool]:
        """(login, via_app) of whoever is making a write."""
        if auth.kind == "installation":
            return self._bot(), True
        return auth.login or "ghost", False

    def _app_obj(self) -> dict[str, Any]:
        self._user(self.owner, "Organization")
        body = self._tpl("app")
        body.update(
            id=self.app_id,
            slug=self.slug,
            client_id=self.client_id,
            node_id=_node_id("Integration", self.app_id),
            owner=self._user_obj(self.owner),
            name=self.name,
            description="",
            external_url=f"{self.web_url}/apps/{self.slug}",
            html_url=f"{self.web_url}/apps/{self.slug}",
            created_at=self._app_created_at,
            updated_at=self._app_created_at,
            permissions=dict(self.app_permissions),
            events=list(self.app_events),
            installations_count=len(self._installations),
        )
        return body

    def _repo_obj(self, repo: _Repo, login: str | None = None) -> dict[str, Any]:
        api, web = f"{self.url}/repos/{repo.full_name}", f"{self.web_url}/{repo.full_name}"
        host = self.web_url.split("://", 1)[1]
        body = _rebase(
            self._tpl("repo"),
            [
                ("https://api.github.com/repos/octocat/Hello-World", api),
                ("https://github.com/octocat/Hello-World", web),
            ],
        )
        for key in ("template_repository", "organization", "parent", "source", "temp_clone_token"):
            body.pop(key, None)
        perm = self._permission(repo, login) if login else "read"
        owner = self._user(repo.owner)
        open_pulls = sum(p.state == "open" for p in self._pulls[repo.full_name.lower()].values())
        body.update(
            id=repo.id,
            node_id=_node_id("Repository", repo.id),
            name=repo.name,
            full_name=repo.full_name,
            owner=self._user_obj(repo.owner),
            private=repo.private,
            visibility="private" if repo.private else "public",
            html_url=web,
            description=None,
            fork=repo.fork,
            url=api,
            git_url=f"git://{host}/{repo.full_name}.git",
            ssh_url=f"git@{host}:{repo.full_name}.git",
            clone_url=f"{web}.git",
            svn_url=web,
            mirror_url=None,
            homepage=None,
            language=None,
            forks_count=0,
            forks=0,
            stargazers_count=0,
            watchers_count=0,
            watchers=0,
            size=1,
            default_branch=repo.default_branch,
            open_issues_count=open_pulls,
            open_issues=open_pulls,
            topics=[],
            pushed_at=repo.created_at,
            created_at=repo.created_at,
            updated_at=repo.created_at,
            license=None,
            subscribers_count=1,
            network_count=0,
            permissions={
                "admin": _level_at_least(perm, "admin"),
                "maintain": _level_at_least(perm, "maintain"),
                "push": _level_at_least(perm, "write"),
                "triage": _level_at_least(perm, "triage"),
                "pull": _level_at_least(perm, "read"),
            },
        )
        if owner.type == "Organization":
            body["organization"] = self._user_obj(repo.owner)
        return self._prune(body, "full-repository", "repository", "minimal-repository")

    def _prune(self, body: dict[str, Any], *schema_names: str) -> dict[str, Any]:
        """Drop fields the requested API version removed (e.g. 2026-03-10's ``has_downloads``)."""
        for name in schema_names:
            for prop in schema.removed_properties(name, self._api_version):
                body.pop(prop, None)
        return body

    def _installation_obj(self, inst: _Installation) -> dict[str, Any]:
        account = self._user(inst.account)
        body = self._tpl("installation")
        org = account.type == "Organization"
        body.update(
            id=inst.id,
            account=self._user_obj(inst.account),
            repository_selection=inst.repository_selection,
            access_tokens_url=f"{self.url}/app/installations/{inst.id}/access_tokens",
            repositories_url=f"{self.url}/installation/repositories",
            html_url=(
                f"{self.web_url}/organizations/{inst.account}/settings/installations/{inst.id}"
                if org
                else f"{self.web_url}/settings/installations/{inst.id}"
            ),
            app_id=self.app_id,
            client_id=self.client_id,
            app_slug=self.slug,
            target_id=account.id,
            target_type=account.type,
            permissions=dict(inst.permissions),
            events=list(inst.events),
            created_at=inst.created_at,
            updated_at=inst.created_at,
            single_file_name=None,
            has_multiple_single_files=False,
            single_file_paths=[],
            suspended_at=inst.suspended_at,
            suspended_by=self._user_obj(inst.account) if inst.suspended_at else None,
        )
        return body
