"""The seeding API: what a test sets up before the code under test runs.

Every method takes the lock, so a test may seed while requests are in flight.
"""

from __future__ import annotations

import secrets
import time
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from .ids import _fake_sha, _ids, _now
from .state import (
    _PERMISSION_LEVELS,
    _Branch,
    _Comment,
    _Installation,
    _Issue,
    _Pull,
    _Repo,
    _Token,
)


class Seeding:
    """FakeGitHub's seeding API (a mixin; ``server.py`` makes the state)."""

    def add_user(
        self, login: str, *, type: str = "User", name: str | None = None, email: str | None = None
    ) -> None:
        """Register (or update) a user or organization account."""
        with self._lock:
            user = self._user(login, type)
            user.type, user.name, user.email = type, name, email

    def add_installation(
        self,
        installation_id: int,
        account: str,
        repos: Iterable[str],
        *,
        permissions: Mapping[str, str] | None = None,
        events: Sequence[str] | None = None,
        repository_selection: str = "selected",
    ) -> None:
        """Install the App on *account* for *repos* (created if unknown)."""
        with self._lock:
            self._user(account, "Organization")
            names = []
            for full_name in repos:
                if full_name.lower() not in self._repos:
                    self.add_repo(full_name)
                names.append(self._repos[full_name.lower()].full_name)
            self._installations[installation_id] = _Installation(
                installation_id,
                account,
                names,
                dict(permissions or self.app_permissions),
                list(events or self.app_events),
                repository_selection,
                _now(),
            )

    def remove_installation(self, installation_id: int) -> None:
        """Uninstall: the installation and its tokens stop working."""
        with self._lock:
            self._installations.pop(installation_id, None)
            for token, info in list(self._tokens.items()):
                if info.installation_id == installation_id:
                    del self._tokens[token]

    def suspend_installation(self, installation_id: int, suspended: bool = True) -> None:
        """Suspend (or unsuspend) an installation: while suspended its tokens stop working and
        GitHub refuses it new ones (403)."""
        with self._lock:
            inst = self._installations[installation_id]
            inst.suspended_at = _now() if suspended else None
            for token, info in list(self._tokens.items()):
                if suspended and info.installation_id == installation_id:
                    del self._tokens[token]

    def set_installation_repos(self, installation_id: int, repos: Iterable[str]) -> None:
        """Change which repositories an installation can access."""
        with self._lock:
            inst = self._installations[installation_id]
            inst.repos = []
            for full_name in repos:
                if full_name.lower() not in self._repos:
                    self.add_repo(full_name)
                inst.repos.append(self._repos[full_name.lower()].full_name)

    def add_repo(
        self,
        full_name: str,
        default_branch: str = "main",
        files: Mapping[str, Mapping[str, str | bytes]] | None = None,
        private: bool = False,
    ) -> None:
        """Create a repository; *files* is ``{branch: {path: content}}``."""
        owner, name = full_name.split("/", 1)
        with self._lock:
            self._user(owner)
            branches = {default_branch: _Branch(_fake_sha(full_name, default_branch), {})}
            for branch, tree in (files or {}).items():
                branches.setdefault(branch, _Branch(_fake_sha(full_name, branch), {}))
                for path, content in tree.items():
                    branches[branch].files[path.strip("/")] = (
                        content.encode() if isinstance(content, str) else content
                    )
            self._repos[full_name.lower()] = _Repo(
                full_name, next(_ids), owner, name, private, default_branch, branches, _now()
            )
            self._pulls.setdefault(full_name.lower(), {})
            self._issues.setdefault(full_name.lower(), {})

    def set_file(self, repo: str, branch: str, path: str, content: str | bytes | None) -> None:
        """Create/replace (or with ``None`` delete) a file; a new branch forks the default one."""
        with self._lock:
            r = self._repo(repo)
            if branch not in r.branches:
                base = r.branches[r.default_branch]
                r.branches[branch] = _Branch(_fake_sha(r.full_name, branch), dict(base.files))
            files = r.branches[branch].files
            if content is None:
                files.pop(path.strip("/"), None)
            else:
                files[path.strip("/")] = content.encode() if isinstance(content, str) else content

    def branch_sha(self, repo: str, branch: str) -> str:
        """The commit *branch* points at."""
        with self._lock:
            return self._repo(repo).branches[branch].sha

    def set_branch(self, repo: str, branch: str, sha: str) -> None:
        """Point *branch* at *sha* (creating it from the default branch if needed)."""
        with self._lock:
            r = self._repo(repo)
            if branch not in r.branches:
                r.branches[branch] = _Branch(sha, dict(r.branches[r.default_branch].files))
            r.branches[branch].sha = sha

    def push_commit(
        self,
        repo: str,
        files: Mapping[str, str | bytes],
        *,
        branch: str | None = None,
        message: str = "a commit",
    ) -> str:
        """Make a real commit of exactly *files* in *repo*; its SHA, which the tarball
        endpoint serves. With *branch*, the branch points at it and holds those files."""
        tree = {
            path.strip("/"): content.encode() if isinstance(content, str) else content
            for path, content in files.items()
        }
        with self._lock:
            r = self._repo(repo)
            sha = self._git.commit(tree, message)
            self._git.real[(r.full_name.lower(), sha)] = sha
            if branch is not None:
                r.branches[branch] = _Branch(sha, dict(tree))
            return sha

    def set_permission(self, repo: str, login: str, permission: str) -> None:
        """Set *login*'s role on *repo*: admin, maintain, write, triage, read or none."""
        if permission not in _PERMISSION_LEVELS:
            raise ValueError(f"unknown permission {permission!r}")
        with self._lock:
            self._user(login)
            self._repo(repo).permissions[login.lower()] = permission

    def add_pull(
        self,
        repo: str,
        number: int,
        head_sha: str,
        head_ref: str,
        base_ref: str = "main",
        author: str = "octocat",
        state: str = "open",
        draft: bool = False,
        fork: bool = False,
        labels: Iterable[str] = (),
        *,
        title: str | None = None,
        body: str | None = None,
    ) -> None:
        """Open a pull request (or replace it).  A fork PR's head lives in ``author/<name>``."""
        with self._lock:
            r = self._repo(repo)
            self._user(author)
            if fork:
                head_full = f"{author}/{r.name}"
                if head_full.lower() not in self._repos:
                    self.add_repo(head_full, default_branch=r.default_branch)
                    self._repos[head_full.lower()].fork = True
                head_repo = self._repos[head_full.lower()]
            else:
                head_repo = r
            base = r.branches.get(base_ref) or r.branches[r.default_branch]
            if head_ref not in head_repo.branches:
                head_repo.branches[head_ref] = _Branch(head_sha, dict(base.files))
            head_repo.branches[head_ref].sha = head_sha
            now = _now()
            old = self._pulls[r.full_name.lower()].get(number)
            self._pulls[r.full_name.lower()][number] = _Pull(
                number=number,
                id=old.id if old else next(_ids),
                head_sha=head_sha,
                head_ref=head_ref,
                head_repo=head_repo.full_name,
                base_ref=base_ref,
                author=author,
                state=state,
                draft=draft,
                labels=list(labels),
                title=title or f"Pull request #{number}",
                body=body,
                created_at=old.created_at if old else now,
                updated_at=now,
                closed_at=None if state == "open" else now,
            )

    def update_pull(
        self,
        repo: str,
        number: int,
        *,
        head_sha: str | None = None,
        state: str | None = None,
        draft: bool | None = None,
        labels: Iterable[str] | None = None,
        merged: bool | None = None,
        title: str | None = None,
    ) -> None:
        """Change a pull request (push, close/merge, draft toggle, labels)."""
        with self._lock:
            r = self._repo(repo)
            pull = self._pull(r, number)
            if head_sha is not None:
                pull.head_sha = head_sha
                head_repo = self._repos[pull.head_repo.lower()]
                head_repo.branches[pull.head_ref].sha = head_sha
            if state is not None:
                pull.state = state
                pull.closed_at = None if state == "open" else _now()
            if draft is not None:
                pull.draft = draft
            if labels is not None:
                pull.labels = list(labels)
            if merged is not None:
                pull.merged = merged
                if merged:
                    pull.state, pull.closed_at = "closed", _now()
            if title is not None:
                pull.title = title
            pull.updated_at = _now()

    def add_issue(
        self, repo: str, number: int, *, title: str = "An issue", author: str = "octocat"
    ) -> None:
        """Open a plain issue (comments on it must not trigger PR environments)."""
        with self._lock:
            r = self._repo(repo)
            self._user(author)
            self._issues[r.full_name.lower()][number] = _Issue(
                number, next(_ids), title, author, "open", _now()
            )

    def add_comment(
        self, repo: str, number: int, body: str, author: str = "octocat"
    ) -> dict[str, Any]:
        """Seed a comment by a user (as if typed in the UI); returns its REST body."""
        with self._lock:
            r = self._repo(repo)
            self._issue_exists(r, number)
            self._user(author)
            now = _now()
            comment = _Comment(next(_ids), r.full_name, number, body, author, False, now, now)
            self._comments[comment.id] = comment
            return self._comment_obj(comment)

    def set_check_suites(
        self, repo: str, sha: str, suites: Iterable[tuple[str, str | None]]
    ) -> None:
        """Set the check suites of a commit: ``[(status, conclusion), ...]``."""
        with self._lock:
            self._repo(repo).check_suites[sha] = list(suites)

    def set_combined_status(
        self, repo: str, sha: str, state: str, contexts: Mapping[str, str] | None = None
    ) -> None:
        """Set a commit's combined status.

        *contexts* maps context -> state; by default a single ``ci`` context in *state*.
        """
        with self._lock:
            self._repo(repo).statuses[sha] = (state, dict(contexts or {"ci": state}))

    def add_manifest_code(self, code: str) -> None:
        """Make *code* redeemable once at ``POST /app-manifests/{code}/conversions``."""
        with self._lock:
            self._manifest_codes[code] = None

    def issue_installation_token(self, installation_id: int, ttl: float = 3600) -> str:
        """Mint an installation token without the JWT dance."""
        with self._lock:
            inst = self._installations[installation_id]
            token = "ghs_" + secrets.token_urlsafe(27)[:36]
            self._tokens[token] = _Token(
                "installation",
                time.time() + ttl,
                installation_id,
                permissions=dict(inst.permissions),
            )
            return token

    def issue_user_token(self, login: str, ttl: float | None = None) -> str:
        """Mint a user-to-server (OAuth) token for *login* without the web flow."""
        with self._lock:
            self._user(login)
            token = "ghu_" + secrets.token_urlsafe(27)[:36]
            self._tokens[token] = _Token(
                "user", None if ttl is None else time.time() + ttl, login=login
            )
            return token

    def expire_tokens(self) -> None:
        """Expire every installation and user token (as if an hour passed)."""
        with self._lock:
            for info in self._tokens.values():
                info.expires_at = time.time() - 1
