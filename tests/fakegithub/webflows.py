"""The github.com flows in a browser: OAuth sign-in and the App manifest.

These are not REST endpoints (no schema validation); they redirect the way
github.com does, so setup and sign-in run end to end.
"""

from __future__ import annotations

import json
import secrets
import time
from collections.abc import Mapping
from typing import Any
from urllib.parse import urlencode

from .state import _Ctx, _GitHubError, _Resp, _Token


class WebFlows:
    """FakeGitHub's browser flows (a mixin; ``server.py`` makes the state)."""

    def _h_manifest_conversion(self, ctx: _Ctx) -> _Resp:
        code = ctx.params["code"]
        if code not in self._manifest_codes:
            raise _GitHubError(404, "Not Found")
        manifest = self._manifest_codes.pop(code) or {}
        if manifest.get("name"):
            self.name = manifest["name"]
        if manifest.get("default_permissions"):
            self.app_permissions = dict(manifest["default_permissions"])
        if manifest.get("default_events"):
            self.app_events = list(manifest["default_events"])
        body = self._tpl("manifest")
        body.update(self._app_obj())
        if manifest.get("url"):
            body["external_url"] = manifest["url"]
        if manifest.get("description") is not None:
            body["description"] = manifest["description"]
        body.update(
            client_id=self.client_id,
            client_secret=self.client_secret,
            webhook_secret=self.webhook_secret,
            pem=self.private_key_pem,
        )
        return _Resp(201, body)

    def _h_oauth_authorize(self, ctx: _Ctx) -> _Resp:
        query = ctx.query
        if query.get("client_id") != self.client_id:
            return _Resp(404, raw=b"Not Found", media_type="text/plain")
        redirect_uri = query.get("redirect_uri") or self.oauth_callback_url
        if not redirect_uri:
            return _Resp(400, raw=b"redirect_uri is required", media_type="text/plain")
        params: dict[str, str] = {}
        if self.oauth_deny:
            params.update(
                error="access_denied",
                error_description="The user has denied your application access.",
                error_uri="https://docs.github.com/apps/troubleshooting-authorization-request-errors/#access-denied",
            )
        else:
            code = secrets.token_hex(10)
            self._user(self.oauth_login)
            self._oauth_codes[code] = (
                self.oauth_login,
                query.get("redirect_uri"),
                time.time() + 600,
            )
            params["code"] = code
        if "state" in query:
            params["state"] = query["state"]
        sep = "&" if "?" in redirect_uri else "?"
        return _Resp(302, headers={"location": f"{redirect_uri}{sep}{urlencode(params)}"})

    def _h_oauth_token(self, ctx: _Ctx) -> _Resp:
        fields: dict[str, str] = dict(ctx.query)
        if isinstance(ctx.body, dict):
            fields.update({k: str(v) for k, v in ctx.body.items() if v is not None})
        accept_json = "json" in ctx.request.headers.get("accept", "")

        def answer(data: Mapping[str, Any]) -> _Resp:
            if accept_json:
                return _Resp(200, dict(data))
            return _Resp(
                200,
                raw=urlencode({k: str(v) for k, v in data.items()}).encode(),
                media_type="application/x-www-form-urlencoded; charset=utf-8",
            )

        def oauth_error(code: str, description: str) -> _Resp:
            return answer(
                {
                    "error": code,
                    "error_description": description,
                    "error_uri": "https://docs.github.com/apps/managing-oauth-apps/"
                    "troubleshooting-oauth-app-access-token-request-errors",
                }
            )

        if fields.get("client_id") != self.client_id or (
            fields.get("client_secret") != self.client_secret
        ):
            return oauth_error(
                "incorrect_client_credentials",
                "The client_id and/or client_secret passed are incorrect.",
            )
        if fields.get("grant_type") == "refresh_token":
            login = self._refresh_tokens.pop(fields.get("refresh_token", ""), None)
            if login is None:
                return oauth_error(
                    "bad_refresh_token", "The refresh token passed is incorrect or expired."
                )
        else:
            entry = self._oauth_codes.pop(fields.get("code", ""), None)
            if entry is None or entry[2] < time.time():
                return oauth_error(
                    "bad_verification_code", "The code passed is incorrect or expired."
                )
            login, redirect_uri, _ = entry
            if (
                redirect_uri
                and fields.get("redirect_uri")
                and fields["redirect_uri"] != redirect_uri
            ):
                return oauth_error(
                    "redirect_uri_mismatch",
                    "The redirect_uri MUST match the registered callback URL for this application.",
                )
        token = "ghu_" + secrets.token_urlsafe(27)[:36]
        data: dict[str, Any] = {"access_token": token, "token_type": "bearer", "scope": ""}
        if self.oauth_token_expiry is None:
            self._tokens[token] = _Token("user", None, login=login)
        else:
            self._tokens[token] = _Token("user", time.time() + self.oauth_token_expiry, login=login)
            refresh = "ghr_" + secrets.token_urlsafe(57)[:76]
            self._refresh_tokens[refresh] = login
            data.update(
                expires_in=self.oauth_token_expiry,
                refresh_token=refresh,
                refresh_token_expires_in=15_811_200,
            )
        return answer(data)

    def _h_manifest_new(self, ctx: _Ctx) -> _Resp:
        fields = dict(ctx.body) if isinstance(ctx.body, dict) else {}
        try:
            manifest = json.loads(fields.get("manifest", ""))
        except ValueError:
            return _Resp(422, raw=b"Invalid manifest", media_type="text/plain")
        if not isinstance(manifest, dict) or not manifest.get("url"):
            return _Resp(422, raw=b"Manifest is missing the required url", media_type="text/plain")
        state = ctx.query.get("state") or fields.get("state")
        self.manifests.append({"manifest": manifest, "state": state, "org": ctx.params.get("org")})
        code = secrets.token_hex(10)
        self._manifest_codes[code] = manifest
        redirect = manifest.get("redirect_url")
        if not redirect:
            return _Resp(200, raw=f"App created; code={code}".encode(), media_type="text/plain")
        params = {"code": code, **({"state": state} if state else {})}
        sep = "&" if "?" in redirect else "?"
        return _Resp(302, headers={"location": f"{redirect}{sep}{urlencode(params)}"})
