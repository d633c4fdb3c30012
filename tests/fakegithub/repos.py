"""Repository reads: metadata, collaborator roles, refs, contents and tarballs.

Tarballs are real ``git archive`` output of real commits (``gitbacking``), served
via a codeload redirect as GitHub does.
"""

from __future__ import annotations

import secrets
import time
from urllib.parse import urlencode

from .ids import _blob_sha, _fake_sha
from .state import _b64_wrapped, _Ctx, _GitHubError, _level_at_least, _Repo, _Resp


class Repos:
    """FakeGitHub's repository endpoints (a mixin; ``server.py`` makes the state)."""

    def _h_get_repo(self, ctx: _Ctx) -> _Resp:
        return _Resp(200, self._repo_obj(self._ctx_repo(ctx), ctx.auth.login))

    def _h_contents(self, ctx: _Ctx) -> _Resp:
        repo = self._ctx_repo(ctx)
        path = ctx.params.get("path", "").strip("/")
        ref = ctx.query.get("ref") or repo.default_branch
        resolved = self._resolve_ref(repo, ref)
        if resolved is None or resolved[1] is None:
            raise _GitHubError(404, f"No commit found for the ref {ref}")
        branch = resolved[1]
        api, web = f"{self.url}/repos/{repo.full_name}", f"{self.web_url}/{repo.full_name}"
        accept = ctx.request.headers.get("accept", "")
        if path in branch.files:
            content = branch.files[path]
            if "application/vnd.github.raw" in accept:
                return _Resp(200, raw=content, media_type="application/vnd.github.raw")
            sha = _blob_sha(content)
            body = self._tpl("file")
            links = {
                "self": f"{api}/contents/{path}?ref={ref}",
                "git": f"{api}/git/blobs/{sha}",
                "html": f"{web}/blob/{ref}/{path}",
            }
            body.update(
                type="file",
                encoding="base64",
                size=len(content),
                name=path.rsplit("/", 1)[-1],
                path=path,
                content=_b64_wrapped(content),
                sha=sha,
                url=links["self"],
                git_url=links["git"],
                html_url=links["html"],
                download_url=f"{self.web_url}/raw/{repo.full_name}/{ref}/{path}",
                _links=links,
            )
            return _Resp(200, body)
        prefix = f"{path}/" if path else ""
        children: dict[str, bool] = {}  # name -> is_dir
        for file_path in branch.files:
            if file_path.startswith(prefix):
                rest = file_path[len(prefix) :]
                name, _, deeper = rest.partition("/")
                children[name] = children.get(name, False) or bool(deeper)
        if not children:
            raise _GitHubError(404, "Not Found")
        entries = []
        for name, is_dir in sorted(children.items()):
            child = f"{prefix}{name}"
            content = b"" if is_dir else branch.files[child]
            sha = _fake_sha(repo.full_name, ref, child) if is_dir else _blob_sha(content)
            kind = "trees" if is_dir else "blobs"
            links = {
                "self": f"{api}/contents/{child}?ref={ref}",
                "git": f"{api}/git/{kind}/{sha}",
                "html": f"{web}/{'tree' if is_dir else 'blob'}/{ref}/{child}",
            }
            entry = self._tpl("dir_entry")
            entry.update(
                type="dir" if is_dir else "file",
                size=0 if is_dir else len(content),
                name=name,
                path=child,
                sha=sha,
                url=links["self"],
                git_url=links["git"],
                html_url=links["html"],
                download_url=None
                if is_dir
                else f"{self.web_url}/raw/{repo.full_name}/{ref}/{child}",
                _links=links,
            )
            entries.append(entry)
        return _Resp(200, entries)

    def _real_commit(self, repo: _Repo, ref: str) -> tuple[str, str] | None:
        """(the SHA GitHub names, the real commit behind it), made from the fake's files the
        first time; None for a ref the fake does not know (GitHub: 404)."""
        key = repo.full_name.lower()
        if (key, ref) in self._git.real:
            return ref, self._git.real[(key, ref)]
        resolved = self._resolve_ref(repo, ref)
        if resolved is None or resolved[1] is None:
            return None
        sha, branch = resolved
        if (key, sha) not in self._git.real:
            self._git.real[(key, sha)] = self._git.commit(branch.files, f"fake {sha}")
        return sha, self._git.real[(key, sha)]

    def _h_tarball(self, ctx: _Ctx) -> _Resp:
        """302 to codeload, as GitHub answers; the token makes the link work without auth."""
        repo = self._ctx_repo(ctx)
        ref = ctx.params["ref"]
        if self._real_commit(repo, ref) is None:
            raise _GitHubError(404, "Not Found")
        token = secrets.token_urlsafe(16)
        self._codeload_tokens[token] = (repo.full_name.lower(), ref, time.time() + 300)
        location = f"{self.url}/_codeload/{repo.owner}/{repo.name}/legacy.tar.gz/{ref}"
        return _Resp(302, None, {"location": f"{location}?{urlencode({'token': token})}"})

    def _h_codeload(self, ctx: _Ctx) -> _Resp:
        token = ctx.query.get("token", "")
        found = self._codeload_tokens.pop(token, None)
        repo = self._repos.get(f"{ctx.params['owner']}/{ctx.params['repo']}".lower())
        ref = ctx.params["ref"]
        if found is None or repo is None or found[:2] != (repo.full_name.lower(), ref):
            return _Resp(404, raw=b"404: Not Found", media_type="text/plain; charset=utf-8")
        if found[2] < time.time():
            return _Resp(404, raw=b"404: Not Found", media_type="text/plain; charset=utf-8")
        real = self._real_commit(repo, ref)
        assert real is not None
        top = f"{repo.owner}-{repo.name}-{real[0][:7]}"
        return _Resp(
            200,
            raw=self._git.archive(real[1], top),
            headers={"content-disposition": f"attachment; filename={top}.tar.gz"},
            media_type="application/x-gzip",
        )

    def _h_permission(self, ctx: _Ctx) -> _Resp:
        repo = self._ctx_repo(ctx)
        login = ctx.params["username"]
        if login.lower() not in self._users:
            raise _GitHubError(404, "Not Found")
        role = self._permission(repo, login)
        permission = {"maintain": "write", "triage": "read"}.get(role, role)
        user = self._user_obj(login)
        user["permissions"] = {
            "admin": _level_at_least(role, "admin"),
            "maintain": _level_at_least(role, "maintain"),
            "push": _level_at_least(role, "write"),
            "triage": _level_at_least(role, "triage"),
            "pull": _level_at_least(role, "read"),
        }
        user["role_name"] = role
        return _Resp(200, {"permission": permission, "role_name": role, "user": user})

    def _h_git_ref(self, ctx: _Ctx) -> _Resp:
        """``GET .../git/ref/heads/<branch>``: the commit a branch points at."""
        repo = self._ctx_repo(ctx)
        ref = ctx.params["ref"]
        branch = repo.branches.get(ref.removeprefix("heads/")) if ref.startswith("heads/") else None
        if branch is None:
            raise _GitHubError(404, "Not Found")
        api = f"{self.url}/repos/{repo.full_name}"
        return _Resp(
            200,
            {
                "ref": f"refs/{ref}",
                "node_id": "MDM6UmVmcmVmcy9oZWFkcy9tYWlu",
                "url": f"{api}/git/refs/{ref}",
                "object": {
                    "type": "commit",
                    "sha": branch.sha,
                    "url": f"{api}/git/commits/{branch.sha}",
                },
            },
        )
