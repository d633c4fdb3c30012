"""Finding things in the fake's state, and who may see them.

Shared by the seeding API, the readers and the handlers; these raise KeyError
(a test's mistake) or 404 (the client's), as GitHub would.
"""

from __future__ import annotations

import re

from .ids import _ids
from .state import _SHA_RE, _Auth, _Branch, _GitHubError, _Installation, _Pull, _Repo, _User


class Lookups:
    """FakeGitHub's state lookups (a mixin; ``server.py`` makes the state)."""

    def repo_id(self, full_name: str) -> int:
        """The numeric id of a seeded repository."""
        with self._lock:
            return self._repo(full_name).id

    def installation_for(self, repo: str) -> int | None:
        """The id of the installation that covers *repo*, if any."""
        with self._lock:
            return self._installation_for(self._repo(repo).full_name)

    def _user(self, login: str, type: str = "User") -> _User:
        key = login.lower()
        if key not in self._users:
            self._users[key] = _User(login, next(_ids), type)
        return self._users[key]

    def _repo(self, full_name: str) -> _Repo:
        try:
            return self._repos[full_name.lower()]
        except KeyError:
            raise KeyError(f"unknown repository {full_name!r}; add_repo() it first") from None

    def _pull(self, repo: _Repo, number: int) -> _Pull:
        try:
            return self._pulls[repo.full_name.lower()][number]
        except KeyError:
            raise KeyError(f"unknown pull request {repo.full_name}#{number}") from None

    def _issue_exists(self, repo: _Repo, number: int) -> None:
        key = repo.full_name.lower()
        if number not in self._pulls[key] and number not in self._issues[key]:
            raise _GitHubError(404, "Not Found")

    def _installation_for(self, full_name: str) -> int | None:
        for inst in self._installations.values():
            if full_name.lower() in (n.lower() for n in inst.repos):
                return inst.id
        return None

    def _permission(self, repo: _Repo, login: str) -> str:
        explicit = repo.permissions.get(login.lower())
        if explicit is not None:
            return explicit
        if login.lower() == repo.owner.lower():
            return "admin"
        return "none" if repo.private else "read"

    def _association(self, repo: _Repo, login: str) -> str:
        if login.lower() == repo.owner.lower():
            return "OWNER"
        if repo.permissions.get(login.lower(), "none") != "none":
            return "COLLABORATOR"
        return "NONE"

    def _resolve_ref(self, repo: _Repo, ref: str) -> tuple[str, _Branch | None] | None:
        """Resolve a branch / ``refs/pull/N/head`` / sha to ``(sha, branch or None)``."""
        name = ref.removeprefix("refs/heads/").removeprefix("heads/")
        if name in repo.branches:
            return repo.branches[name].sha, repo.branches[name]
        pulls = self._pulls.get(repo.full_name.lower(), {})
        match = re.fullmatch(r"(?:refs/)?pull/(\d+)/head", ref)
        if match and int(match.group(1)) in pulls:
            pull = pulls[int(match.group(1))]
            head = self._repos[pull.head_repo.lower()].branches.get(pull.head_ref)
            return pull.head_sha, head
        if _SHA_RE.fullmatch(ref):
            for branch in repo.branches.values():
                if branch.sha == ref:
                    return ref, branch
            for pull in pulls.values():
                if pull.head_sha == ref:
                    head = self._repos[pull.head_repo.lower()].branches.get(pull.head_ref)
                    if head is not None and head.sha == ref:
                        return ref, head
            return ref, None
        return None

    def _accessible(self, auth: _Auth, repo: _Repo) -> bool:
        if auth.kind == "installation":
            inst = self._installations.get(auth.installation_id or -1)
            if inst is None or repo.full_name not in inst.repos:
                return False
            return auth.repos is None or repo.full_name.lower() in auth.repos
        if auth.kind == "user" and auth.login:
            return not repo.private or self._permission(repo, auth.login) != "none"
        return auth.kind == "none" and not repo.private

    def _visible_installations(self, login: str) -> list[_Installation]:
        out = []
        for inst in sorted(self._installations.values(), key=lambda i: i.id):
            if inst.account.lower() == login.lower() or self._visible_repos(login, inst):
                out.append(inst)
        return out

    def _visible_repos(self, login: str, inst: _Installation) -> list[_Repo]:
        """Repos of *inst* the user has *explicit* access to (as GitHub documents)."""
        repos = [self._repos[n.lower()] for n in inst.repos]
        return [
            r
            for r in repos
            if r.owner.lower() == login.lower()
            or r.permissions.get(login.lower(), "none") != "none"
        ]
