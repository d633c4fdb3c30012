"""Webhook payloads consistent with the fake's state (and the state changes behind them).

``webhooks`` builds payloads from GitHub's fixtures; these fill them in from
what the fake holds, so a test's webhook and the REST API agree.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from . import webhooks
from .ids import _now


class Events:
    """FakeGitHub's webhook events (a mixin; ``server.py`` makes the state)."""

    def pull_request_event(
        self, action: str, repo: str, number: int, **overrides: Any
    ) -> dict[str, Any]:
        """A ``pull_request`` payload consistent with the fake's state for that PR."""
        with self._lock:
            r = self._repo(repo)
            pull = self._pull(r, number)
            kwargs: dict[str, Any] = {
                "repo": r.full_name,
                "number": number,
                "head_sha": pull.head_sha,
                "head_ref": pull.head_ref,
                "author": pull.author,
                "fork": pull.head_repo != r.full_name,
                "draft": pull.draft,
                "labels": tuple(pull.labels),
                "installation_id": self._installation_for(r.full_name) or 1,
                "base_ref": pull.base_ref,
                "title": pull.title,
                "merged": pull.merged,
                "repo_id": r.id,
                "pull_id": pull.id,
                "private": r.private,
                "api_url": self.url,
                "web_url": self.web_url,
            }
        kwargs.update(overrides)
        return webhooks.make_pull_request_event(action, **kwargs)

    def installation_event(
        self, event: str, action: str, installation_id: int, repos: Iterable[str] = ()
    ) -> dict[str, Any]:
        """An admin acts on the App's installation: change the fake's state the way GitHub
        does and return the webhook GitHub sends for it.

        ``installation``: ``deleted`` uninstalls, ``suspend``/``unsuspend``; ``created``
        installs it on ``repos``. ``installation_repositories``: ``added``/``removed`` ``repos``.
        """
        with self._lock:
            inst = self._installations.get(installation_id)
            account = inst.account if inst is not None else ""
            current = list(inst.repos) if inst is not None else []
        if event == "installation_repositories":
            wanted = {name.lower() for name in repos}
            kept = [name for name in current if name.lower() not in wanted]
            self.set_installation_repos(
                installation_id, [*kept, *repos] if action == "added" else kept
            )
            listed = list(repos)
        elif action == "created":
            account = account or next(iter(repos)).split("/", 1)[0]
            self.add_installation(installation_id, account, repos)
            listed = list(repos)
        else:
            listed = current
            if action == "deleted":
                self.remove_installation(installation_id)
            elif action in ("suspend", "unsuspend"):
                self.suspend_installation(installation_id, action == "suspend")
        with self._lock:
            described = [
                (self._repo(name).full_name, self._repo(name).id, self._repo(name).private)
                for name in listed
            ]
        return webhooks.make_installation_event(
            event,
            action,
            installation_id,
            account,
            described,
            api_url=self.url,
            web_url=self.web_url,
        )

    def issue_comment_event(
        self,
        repo: str,
        number: int,
        body: str,
        author: str = "octocat",
        *,
        action: str = "created",
        comment_id: int | None = None,
        author_association: str | None = None,
    ) -> dict[str, Any]:
        """Post a comment into the fake (or edit *comment_id*) and return its webhook payload."""
        with self._lock:
            r = self._repo(repo)
            previous = None
            if action == "created":
                comment_obj = self.add_comment(repo, number, body, author)
                comment_id = comment_obj["id"]
            elif comment_id is not None:
                comment = self._comments[comment_id]
                previous, comment.body, comment.updated_at = comment.body, body, _now()
                author = comment.user
            else:
                raise ValueError("comment_id is required unless action is 'created'")
            pull = self._pulls[r.full_name.lower()].get(number)
            issue = self._issues[r.full_name.lower()].get(number)
            association = author_association or self._association(r, author)
            kwargs: dict[str, Any] = {
                # The issue's (PR's) author, as GitHub sends it; not the commenter.
                "issue_author": pull.author if pull else (issue.author if issue else author),
                "repo": r.full_name,
                "number": number,
                "body": body,
                "author": author,
                "on_pull_request": pull is not None,
                "comment_id": comment_id,
                "installation_id": self._installation_for(r.full_name) or 1,
                "author_association": association,
                "repo_id": r.id,
                "private": r.private,
                "api_url": self.url,
                "web_url": self.web_url,
            }
            if previous is not None:
                kwargs["previous_body"] = previous
            state = pull.state if pull else (issue.state if issue else "open")
        payload = webhooks.make_issue_comment_event(action, **kwargs)
        payload["issue"]["state"] = state
        return payload
