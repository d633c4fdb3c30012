"""Pull requests, issue comments and reactions: bodies, handlers and readers.

GitHub models a pull request as an issue, so comments on either live here.
"""

from __future__ import annotations

from typing import Any

from .ids import _fake_sha, _ids, _node_id, _now
from .state import _Comment, _Ctx, _GitHubError, _Pull, _Reaction, _Repo, _Resp


class Issues:
    """FakeGitHub's pulls, comments and reactions (a mixin; ``server.py`` makes the state)."""

    def comments(self, repo: str, number: int) -> list[dict[str, Any]]:
        """Comments on an issue/PR, oldest first, as ``GET .../comments`` returns them."""
        with self._lock:
            r = self._repo(repo)
            return [
                self._comment_obj(c)
                for c in sorted(self._comments.values(), key=lambda c: c.id)
                if c.repo == r.full_name and c.issue_number == number
            ]

    def reactions(self, comment_id: int) -> list[dict[str, Any]]:
        """Reactions on an issue comment, oldest first."""
        with self._lock:
            return [self._reaction_obj(x) for x in self._reactions.get(comment_id, [])]

    def pull(self, repo: str, number: int) -> dict[str, Any]:
        """A pull request as ``GET .../pulls/{n}`` returns it."""
        with self._lock:
            r = self._repo(repo)
            return self._pull_obj(r, self._pull(r, number), full=True)

    def _label_obj(self, repo: _Repo, name: str) -> dict[str, Any]:
        ident = int(_fake_sha(repo.full_name, "label", name)[:8], 16)
        return {
            "id": ident,
            "node_id": _node_id("Label", ident),
            "url": f"{self.url}/repos/{repo.full_name}/labels/{name}",
            "name": name,
            "description": "",  # pull-request-simple does not allow null here
            "color": _fake_sha(name)[:6],
            "default": False,
            # Newer descriptions (githubkit's models) require these two.
            "archived_at": None,
            "archived_by": None,
        }

    def _pull_obj(self, repo: _Repo, pull: _Pull, *, full: bool) -> dict[str, Any]:
        api, web = f"{self.url}/repos/{repo.full_name}", f"{self.web_url}/{repo.full_name}"
        n = pull.number
        head_repo = self._repos[pull.head_repo.lower()]
        base_branch = repo.branches.get(pull.base_ref) or repo.branches[repo.default_branch]
        body = self._tpl("pull")
        links = {
            "self": f"{api}/pulls/{n}",
            "html": f"{web}/pull/{n}",
            "issue": f"{api}/issues/{n}",
            "comments": f"{api}/issues/{n}/comments",
            "review_comments": f"{api}/pulls/{n}/comments",
            "review_comment": f"{api}/pulls/comments{{/number}}",
            "commits": f"{api}/pulls/{n}/commits",
            "statuses": f"{api}/statuses/{pull.head_sha}",
        }
        merged_at = pull.closed_at if pull.merged else None
        body.update(
            url=links["self"],
            id=pull.id,
            node_id=_node_id("PullRequest", pull.id),
            html_url=links["html"],
            diff_url=f"{web}/pull/{n}.diff",
            patch_url=f"{web}/pull/{n}.patch",
            issue_url=links["issue"],
            commits_url=links["commits"],
            review_comments_url=links["review_comments"],
            review_comment_url=links["review_comment"],
            comments_url=links["comments"],
            statuses_url=links["statuses"],
            number=n,
            state=pull.state,
            locked=False,
            title=pull.title,
            user=self._user_obj(pull.author),
            body=pull.body,
            labels=[self._label_obj(repo, name) for name in pull.labels],
            milestone=None,
            active_lock_reason=None,
            created_at=pull.created_at,
            updated_at=pull.updated_at,
            closed_at=pull.closed_at,
            merged_at=merged_at,
            merge_commit_sha=_fake_sha("merge", pull.head_sha) if pull.merged else None,
            assignee=None,
            assignees=[],
            requested_reviewers=[],
            requested_teams=[],
            head={
                "label": f"{head_repo.owner}:{pull.head_ref}",
                "ref": pull.head_ref,
                "sha": pull.head_sha,
                "user": self._user_obj(head_repo.owner),
                "repo": self._repo_obj(head_repo),
            },
            base={
                "label": f"{repo.owner}:{pull.base_ref}",
                "ref": pull.base_ref,
                "sha": base_branch.sha,
                "user": self._user_obj(repo.owner),
                "repo": self._repo_obj(repo),
            },
            _links={k: {"href": v} for k, v in links.items()},
            author_association=self._association(repo, pull.author),
            auto_merge=None,
            draft=pull.draft,
        )
        full_only = {
            "merged": pull.merged,
            "mergeable": None if pull.state != "open" else True,
            "rebaseable": None if pull.state != "open" else True,
            "mergeable_state": "draft" if pull.draft else "clean",
            "merged_by": self._user_obj(pull.author) if pull.merged else None,
            "comments": sum(
                c.repo == repo.full_name and c.issue_number == n for c in self._comments.values()
            ),
            "review_comments": 0,
            "maintainer_can_modify": head_repo is not repo,
            "commits": 1,
            "additions": 1,
            "deletions": 0,
            "changed_files": 1,
        }
        for key, value in full_only.items():
            if full:
                body[key] = value
            else:
                body.pop(key, None)
        return self._prune(body, "pull-request" if full else "pull-request-simple")

    def _reaction_rollup(self, url: str, reactions: list[_Reaction]) -> dict[str, Any]:
        rollup: dict[str, Any] = {"url": url, "total_count": len(reactions)}
        for content in ("+1", "-1", "laugh", "confused", "heart", "hooray", "eyes", "rocket"):
            rollup[content] = sum(r.content == content for r in reactions)
        return rollup

    def _comment_obj(self, comment: _Comment) -> dict[str, Any]:
        repo = self._repo(comment.repo)
        api, web = f"{self.url}/repos/{repo.full_name}", f"{self.web_url}/{repo.full_name}"
        kind = "pull" if comment.issue_number in self._pulls[repo.full_name.lower()] else "issues"
        body = self._tpl("comment")
        body.update(
            id=comment.id,
            node_id=_node_id("IssueComment", comment.id),
            url=f"{api}/issues/comments/{comment.id}",
            html_url=f"{web}/{kind}/{comment.issue_number}#issuecomment-{comment.id}",
            body=comment.body,
            user=self._user_obj(comment.user),
            created_at=comment.created_at,
            updated_at=comment.updated_at,
            issue_url=f"{api}/issues/{comment.issue_number}",
            author_association="NONE" if comment.via_app else self._association(repo, comment.user),
            performed_via_github_app=self._app_obj() if comment.via_app else None,
            reactions=self._reaction_rollup(
                f"{api}/issues/comments/{comment.id}/reactions",
                self._reactions.get(comment.id, []),
            ),
        )
        return body

    def _reaction_obj(self, reaction: _Reaction) -> dict[str, Any]:
        body = self._tpl("reaction")
        body.update(
            id=reaction.id,
            node_id=_node_id("Reaction", reaction.id),
            user=self._user_obj(reaction.user),
            content=reaction.content,
            created_at=reaction.created_at,
        )
        return body

    def _h_list_pulls(self, ctx: _Ctx) -> _Resp:
        repo = self._ctx_repo(ctx)
        state = ctx.query.get("state", "open")
        pulls = list(self._pulls[repo.full_name.lower()].values())
        if state != "all":
            pulls = [p for p in pulls if p.state == state]
        if "head" in ctx.query:
            owner, _, ref = ctx.query["head"].rpartition(":")
            pulls = [
                p
                for p in pulls
                if p.head_ref == ref
                and (not owner or self._repos[p.head_repo.lower()].owner.lower() == owner.lower())
            ]
        if "base" in ctx.query:
            pulls = [p for p in pulls if p.base_ref == ctx.query["base"]]
        sort = ctx.query.get("sort", "created")
        key_attr = {"created": "created_at", "updated": "updated_at"}.get(sort, "created_at")
        descending = ctx.query.get("direction", "desc") == "desc"
        pulls.sort(key=lambda p: (getattr(p, key_attr), p.number), reverse=descending)
        page, headers = self._paginate(ctx, pulls)
        return _Resp(200, [self._pull_obj(repo, p, full=False) for p in page], headers)

    def _h_get_pull(self, ctx: _Ctx) -> _Resp:
        repo = self._ctx_repo(ctx)
        pull = self._pulls[repo.full_name.lower()].get(self._int_param(ctx, "pull_number"))
        if pull is None:
            raise _GitHubError(404, "Not Found")
        return _Resp(200, self._pull_obj(repo, pull, full=True))

    def _h_list_comments(self, ctx: _Ctx) -> _Resp:
        repo = self._ctx_repo(ctx)
        number = self._int_param(ctx, "issue_number")
        self._issue_exists(repo, number)
        comments = [
            c
            for c in sorted(self._comments.values(), key=lambda c: c.id)
            if c.repo == repo.full_name and c.issue_number == number
        ]
        if "since" in ctx.query:
            comments = [c for c in comments if c.updated_at >= ctx.query["since"]]
        page, headers = self._paginate(ctx, comments)
        return _Resp(200, [self._comment_obj(c) for c in page], headers)

    def _h_create_comment(self, ctx: _Ctx) -> _Resp:
        repo = self._ctx_repo(ctx)
        number = self._int_param(ctx, "issue_number")
        self._issue_exists(repo, number)
        user, via_app = self._actor(ctx.auth)
        now = _now()
        comment = _Comment(
            next(_ids), repo.full_name, number, ctx.body["body"], user, via_app, now, now
        )
        self._comments[comment.id] = comment
        body = self._comment_obj(comment)
        return _Resp(201, body, {"location": body["url"]})

    def _comment_in(self, ctx: _Ctx) -> _Comment:
        repo = self._ctx_repo(ctx)
        comment = self._comments.get(self._int_param(ctx, "comment_id"))
        if comment is None or comment.repo != repo.full_name:
            raise _GitHubError(404, "Not Found")
        return comment

    def _h_update_comment(self, ctx: _Ctx) -> _Resp:
        comment = self._comment_in(ctx)
        comment.body = ctx.body["body"]
        comment.updated_at = _now()
        return _Resp(200, self._comment_obj(comment))

    def _add_reaction(self, bucket: list[_Reaction], ctx: _Ctx) -> _Resp:
        user, _ = self._actor(ctx.auth)
        content = ctx.body["content"]
        for existing in bucket:
            if existing.user == user and existing.content == content:
                return _Resp(200, self._reaction_obj(existing))
        reaction = _Reaction(next(_ids), user, content, _now())
        bucket.append(reaction)
        return _Resp(201, self._reaction_obj(reaction))

    def _h_comment_reaction(self, ctx: _Ctx) -> _Resp:
        comment = self._comment_in(ctx)
        return self._add_reaction(self._reactions.setdefault(comment.id, []), ctx)

    def _h_issue_reaction(self, ctx: _Ctx) -> _Resp:
        repo = self._ctx_repo(ctx)
        number = self._int_param(ctx, "issue_number")
        self._issue_exists(repo, number)
        return self._add_reaction(
            self._issue_reactions.setdefault((repo.full_name, number), []), ctx
        )
