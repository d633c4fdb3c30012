"""Authentication, App and installation tokens, and the user's installations.

The fake checks credentials the way GitHub does (App JWTs, ``ghs_``/``ghu_`` tokens),
so the code under test cannot get by with credentials GitHub would refuse.
"""

from __future__ import annotations

import secrets
import time

import jwt
from fastapi import Request

from .ids import _iso
from .state import _Auth, _Ctx, _GitHubError, _level_at_least, _Repo, _Resp, _Token


class AppAuth:
    """FakeGitHub's authentication and App endpoints (a mixin; ``server.py`` makes the state)."""

    def _authenticate(self, request: Request) -> _Auth:
        header = request.headers.get("authorization")
        if not header:
            return _Auth("none", key=f"ip:{request.client.host if request.client else '?'}")
        scheme, _, cred = header.partition(" ")
        cred = cred.strip()
        if scheme.lower() not in ("bearer", "token") or not cred:
            return _Auth("invalid", error="Bad credentials")
        if cred.count(".") == 2:
            return self._authenticate_jwt(cred)
        with self._lock:
            info = self._tokens.get(cred)
            if info is None or (info.expires_at is not None and info.expires_at < time.time()):
                return _Auth("invalid", error="Bad credentials")
            if info.kind == "installation":
                if info.installation_id not in self._installations:
                    return _Auth("invalid", error="Bad credentials")
                return _Auth(
                    "installation",
                    key=f"installation:{info.installation_id}",
                    installation_id=info.installation_id,
                    repos=info.repos,
                    permissions=info.permissions,
                )
            return _Auth("user", key=f"user:{info.login}", login=info.login)

    def _authenticate_jwt(self, token: str) -> _Auth:
        try:
            claims = jwt.decode(
                token,
                self._public_key,
                algorithms=["RS256"],
                options={"require": ["exp", "iat", "iss"], "verify_iss": False},
                leeway=60,
            )
        except jwt.ExpiredSignatureError:
            return _Auth(
                "invalid",
                error="'Expiration time' claim ('exp') must be a numeric value representing "
                "the future time at which the assertion expires",
            )
        except jwt.PyJWTError:
            return _Auth("invalid", error="A JSON web token could not be decoded")
        if str(claims["iss"]) not in (str(self.app_id), self.client_id):
            return _Auth("invalid", error="A JSON web token could not be decoded")
        if float(claims["exp"]) > time.time() + 600 + 60:
            return _Auth(
                "invalid", error="'Expiration time' claim ('exp') is too far in the future"
            )
        return _Auth("app", key=f"app:{self.app_id}")

    def _h_get_app(self, ctx: _Ctx) -> _Resp:
        return _Resp(200, self._app_obj())

    def _h_create_token(self, ctx: _Ctx) -> _Resp:
        inst = self._installations.get(self._int_param(ctx, "installation_id"))
        if inst is None:
            raise _GitHubError(404, "Not Found")
        if inst.suspended_at is not None:
            raise _GitHubError(403, "This installation has been suspended")
        body = ctx.body or {}
        repos: list[_Repo] | None = None
        if body.get("repositories") or body.get("repository_ids"):
            names = {
                f"{inst.account}/{n}".lower() if "/" not in n else n.lower()
                for n in body.get("repositories", [])
            }
            ids = set(body.get("repository_ids", []))
            repos = [
                self._repos[n.lower()]
                for n in inst.repos
                if n.lower() in names or self._repos[n.lower()].id in ids
            ]
            if len(repos) != len(names) + len(ids):
                raise _GitHubError(
                    422,
                    "There is at least one repository that does not exist or is not "
                    "accessible to the parent installation.",
                )
        permissions = dict(inst.permissions)
        if body.get("permissions"):
            for scope, level in body["permissions"].items():
                have = inst.permissions.get(scope, "none")
                if have == "none" or not _level_at_least(have, level):
                    raise _GitHubError(
                        422, "The permissions requested are not granted to this installation."
                    )
            permissions = dict(body["permissions"])
        token = "ghs_" + secrets.token_urlsafe(27)[:36]
        expires = time.time() + 3600
        self._tokens[token] = _Token(
            "installation",
            expires,
            inst.id,
            repos=frozenset(r.full_name.lower() for r in repos) if repos is not None else None,
            permissions=permissions,
        )
        out = self._tpl("token")
        out.update(
            token=token,
            expires_at=_iso(expires),
            permissions=permissions,
            repository_selection="selected" if repos is not None else inst.repository_selection,
        )
        if repos is not None:
            out["repositories"] = [self._repo_obj(r) for r in repos]
        else:
            out.pop("repositories", None)
        return _Resp(201, out)

    def _h_repo_installation(self, ctx: _Ctx) -> _Resp:
        repo = self._repos.get(f"{ctx.params['owner']}/{ctx.params['repo']}".lower())
        inst_id = self._installation_for(repo.full_name) if repo else None
        if inst_id is None:
            raise _GitHubError(404, "Not Found")
        return _Resp(200, self._installation_obj(self._installations[inst_id]))

    def _h_installation_repos(self, ctx: _Ctx) -> _Resp:
        inst = self._installations[ctx.auth.installation_id or -1]
        repos = [
            self._repos[n.lower()]
            for n in inst.repos
            if ctx.auth.repos is None or n.lower() in ctx.auth.repos
        ]
        page, headers = self._paginate(ctx, repos)
        body = {
            "total_count": len(repos),
            "repositories": [self._repo_obj(r) for r in page],
            "repository_selection": inst.repository_selection,
        }
        return _Resp(200, body, headers)

    def _h_get_user(self, ctx: _Ctx) -> _Resp:
        login = ctx.auth.login or ""
        user = self._user(login)
        body = self._tpl("private_user")
        body.update(self._user_obj(login))
        body.update(
            name=user.name,
            email=user.email,
            company=None,
            blog="",
            location=None,
            hireable=None,
            bio=None,
            twitter_username=None,
            created_at=self._app_created_at,
            updated_at=self._app_created_at,
            user_view_type="private",
        )
        return _Resp(200, body)

    def _h_user_installations(self, ctx: _Ctx) -> _Resp:
        installs = self._visible_installations(ctx.auth.login or "")
        page, headers = self._paginate(ctx, installs)
        return _Resp(
            200,
            {
                "total_count": len(installs),
                "installations": [self._installation_obj(i) for i in page],
            },
            headers,
        )

    def _h_user_installation_repos(self, ctx: _Ctx) -> _Resp:
        login = ctx.auth.login or ""
        inst = self._installations.get(self._int_param(ctx, "installation_id"))
        if inst is None or inst not in self._visible_installations(login):
            raise _GitHubError(404, "Not Found")
        repos = self._visible_repos(login, inst)
        page, headers = self._paginate(ctx, repos)
        return _Resp(
            200,
            {
                "total_count": len(repos),
                "repository_selection": inst.repository_selection,
                "repositories": [self._repo_obj(r, login) for r in page],
            },
            headers,
        )
