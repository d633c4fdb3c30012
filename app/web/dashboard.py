"""The server-rendered dashboard at `/`: Jinja2 pages over `service.Service`, no build step.

Pages render complete HTML; a few lines of plain JS (static/app.js) tail the current run's log
through the API, reload a detail page when its environment changes, and keep relative times
fresh. Actions are HTML form POSTs carrying the session's CSRF token, answered with a redirect
(post/redirect/get) and a one-shot flash message in a signed cookie.
"""

from __future__ import annotations

import hmac
import html
from collections.abc import Awaitable, Callable, Iterable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, cast
from urllib.parse import quote, urlencode

from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from itsdangerous import BadSignature
from jinja2 import Environment, FileSystemLoader, select_autoescape
from markupsafe import Markup
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import FormData

from app.commands.registry import ENV_ACTIONS
from app.cost.money import format_money
from app.db.models import utcnow
from app.lifecycle.states import BUSY
from app.links import safe_link
from app.ttl.policy import humanize_until
from app.web.auth import SESSION_COOKIE, Authenticator, AuthError, Principal, Session, signer
from app.web.service import SILO_ACTIONS, Service, ServiceError, SiloAction
from app.web.views import STATUS_FILTERS, LogOut, PageOut, RunOut, UsageOut, UsageSeries

TEMPLATES = Path(__file__).parent / "templates"
FLASH_COOKIE = "runbot_flash"
EXTEND_CHOICES = ("1h", "4h", "1d", "3d", "1w")
PALETTE = (
    "#4e79a7",
    "#f28e2b",
    "#59a14f",
    "#e15759",
    "#76b7b2",
    "#edc948",
    "#b07aa1",
    "#ff9da7",
    "#9c755f",
)


# ----- template helpers ----------------------------------------------------------------------


def _absolute(value: datetime) -> str:
    return value.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def reltime(value: datetime | None, now: datetime | None = None) -> Markup:
    """`in 3h 5m` / `2d ago`, with the absolute time on hover (and for app.js to refresh)."""
    if value is None:
        return Markup('<span class="muted">—</span>')
    text = humanize_until(value, now or utcnow())
    return Markup('<time datetime="{}" title="{}" data-rel>{}</time>').format(
        value.astimezone(UTC).isoformat(), _absolute(value), text
    )


def badge(status: str) -> Markup:
    busy = " busy" if status in {s.value for s in BUSY} else ""
    return Markup('<span class="badge s-{}{}" data-status="{}">{}</span>').format(
        status, busy, status, status
    )


def fill_bar(target: Any) -> Markup:
    """A silo's used slots as a bar: SVG geometry, not an inline style, which the pages'
    Content-Security-Policy (no 'unsafe-inline') would refuse."""
    used, capacity = int(target.used), int(target.capacity)
    percent = min(100, round(100 * used / capacity)) if capacity > 0 else 0
    return Markup(
        '<svg class="bar" viewBox="0 0 100 1" preserveAspectRatio="none" aria-hidden="true">'
        '<rect width="{}" height="1"/></svg>'
    ).format(percent)


def duration(seconds: float | None) -> str:
    if seconds is None:
        return "running"
    if seconds < 60:
        return f"{seconds:.1f}s"
    minutes, secs = divmod(int(seconds), 60)
    if minutes < 60:
        return f"{minutes}m {secs:02d}s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h {minutes:02d}m"


def short_sha(sha: str | None) -> str:
    return (sha or "")[:7]


def usage_svg(
    usage: UsageOut, width: int = 960, height: int = 260, *, money: bool = False
) -> Markup:
    """Stacked daily bars of environment-hours (``money``: of money); the top repositories get
    their own colour."""
    left, bottom, top, right = 44, 26, 10, 8
    plot_w, plot_h = width - left - right, height - top - bottom
    days = len(usage.days)
    shown = usage.series[: len(PALETTE) - 1]
    rest = usage.series[len(PALETTE) - 1 :]

    def values(series: UsageSeries) -> list[float]:
        return (series.money or [0.0] * days) if money else series.hours

    def amount(value: float) -> str:
        return format_money(value, usage.currency) if money else f"{value:.1f} h"

    layers = [(s.repository, values(s)) for s in shown]
    if rest:
        other = [sum(values(s)[i] for s in rest) for i in range(days)]
        layers.append((f"{len(rest)} other repositories", other))
    totals = [sum(layer[1][i] for layer in layers) for i in range(days)]
    peak = max(totals, default=0.0)
    scale_top = _nice_ceiling(peak)
    step = plot_w / max(days, 1)
    bar_w = max(step * 0.72, 1.0)
    out = [
        f'<svg class="chart" viewBox="0 0 {width} {height}" role="img" '
        f'aria-label="{"money" if money else "environment-hours"} per day">'
    ]
    for tick in range(5):
        value = scale_top * tick / 4
        y = top + plot_h - plot_h * tick / 4
        out.append(
            f'<line x1="{left}" x2="{width - right}" y1="{y:.1f}" y2="{y:.1f}" class="grid"/>'
            f'<text x="{left - 6}" y="{y + 4:.1f}" class="axis" text-anchor="end">'
            f"{value:g}</text>"
        )
    for i, day in enumerate(usage.days):
        x = left + i * step + (step - bar_w) / 2
        y = top + plot_h
        for index, (repo, hours) in enumerate(layers):
            h = hours[i]
            if h <= 0 or scale_top <= 0:
                continue
            bar_h = plot_h * h / scale_top
            y -= bar_h
            label = html.escape(f"{repo}: {amount(h)} on {day.isoformat()}")
            out.append(
                f'<rect x="{x:.1f}" y="{y:.1f}" width="{bar_w:.1f}" height="{bar_h:.1f}" '
                f'fill="{PALETTE[index % len(PALETTE)]}"><title>{label}</title></rect>'
            )
        if i % 5 == 0 or i == days - 1:
            out.append(
                f'<text x="{left + i * step + step / 2:.1f}" y="{height - 8}" class="axis" '
                f'text-anchor="middle">{day.strftime("%b %d")}</text>'
            )
    out.append("</svg>")
    legend = "".join(
        f'<li><svg class="swatch" viewBox="0 0 1 1" aria-hidden="true">'
        f'<path d="M0 0h1v1H0z" fill="{PALETTE[i % len(PALETTE)]}"/></svg>'
        f"{html.escape(name)}</li>"
        for i, (name, _) in enumerate(layers)
    )
    return Markup("".join(out) + f'<ul class="legend">{legend}</ul>')


def _nice_ceiling(value: float) -> float:
    if value <= 0:
        return 4.0
    for nice in (1, 2, 4, 5, 8, 10, 12, 20, 24, 40, 48, 50, 100, 200, 400, 500, 1000):
        if value <= nice:
            return float(nice)
    magnitude = 10 ** len(str(int(value)))
    return float(magnitude)


def query_string(base: dict[str, Any], **changes: Any) -> str:
    values = {k: v for k, v in {**base, **changes}.items() if v not in (None, "")}
    return "?" + urlencode(values) if values else ""


def make_templates() -> Environment:
    env = Environment(
        loader=FileSystemLoader(TEMPLATES),
        autoescape=select_autoescape(["html"]),
        trim_blocks=True,
        lstrip_blocks=True,
    )
    env.filters.update(
        reltime=reltime,
        badge=badge,
        duration=duration,
        short_sha=short_sha,
        link=safe_link,
        fill_bar=fill_bar,
        money=format_money,
    )
    env.globals.update(query_string=query_string, urlquote=quote)
    return env


# ----- routes --------------------------------------------------------------------------------


#: A page body: given the signed-in principal, their session, and whether that session is new.
Page = Callable[[Principal, Session, bool], Awaitable[Response]]


class Redirect(Exception):
    def __init__(self, response: Response) -> None:
        self.response = response


class Dashboard:
    def __init__(self, service: Service, auth: Authenticator) -> None:
        self.service = service
        self.auth = auth
        self.settings = service.settings
        self.templates = make_templates()
        self._flash = signer(self.settings, "runbot-flash")

    # ----- rendering ---------------------------------------------------------------------------

    def render(
        self,
        request: Request,
        name: str,
        principal: Principal | None,
        session: Session,
        new_session: bool,
        status: int = 200,
        **context: Any,
    ) -> HTMLResponse:
        flash = None
        raw = request.cookies.get(FLASH_COOKIE)
        if raw:
            try:
                flash = self._flash.loads(raw, max_age=120)
            except BadSignature:
                flash = None
        page = self.templates.get_template(name).render(
            request=request,
            principal=principal,
            csrf=session.csrf,
            flash=flash,
            settings=self.settings,
            local_mode=self.settings.local_mode,
            open_local=self.auth.open_local,
            oauth=self.auth.oauth_enabled,
            path=request.url.path,
            **context,
        )
        response = HTMLResponse(page, status_code=status)
        if new_session:
            self.auth.write_session(response, session)
        if raw:
            response.delete_cookie(FLASH_COOKIE)
        return response

    def login_page(self, request: Request, message: str | None, next_path: str) -> Response:
        session, new = self.auth.session_for(request)
        return self.render(
            request,
            "login.html",
            None,
            session,
            new,
            status=200 if message is None else 400,
            message=message,
            next_path=next_path,
        )

    def error_page(
        self, request: Request, session: Session, new: bool, status: int, message: str
    ) -> HTMLResponse:
        return self.render(
            request, "error.html", None, session, new, status=status, message=message, code=status
        )

    def redirect(self, target: str, flash: tuple[str, str] | None = None) -> RedirectResponse:
        response = RedirectResponse(target, status_code=303)
        if flash:
            response.set_cookie(
                FLASH_COOKIE,
                self._flash.dumps(list(flash)),
                max_age=120,
                httponly=True,
                samesite="lax",
                secure=self.auth.secure_cookies,
            )
        return response

    async def who(self, request: Request) -> tuple[Principal, Session, bool]:
        """The signed-in principal, or a Redirect/error response to send instead."""
        session, new = self.auth.session_for(request)
        try:
            principal = await self.auth.principal(request, session)
        except AuthError as exc:
            if exc.status == 401:
                raise Redirect(self._to_login(request)) from None
            raise Redirect(
                self.error_page(request, session, new, exc.status, exc.message)
            ) from None
        if principal.kind == "anonymous":
            raise Redirect(self._to_login(request))
        return principal, principal.session or session, new

    async def action_form(
        self,
        request: Request,
        principal: Principal,
        session: Session,
        new: bool,
        action: str,
        actions: Iterable[str],
    ) -> FormData:
        """The posted form of an action button, once its CSRF token and action are checked;
        otherwise the error page to show instead (as a Redirect, like `who`)."""
        form = await request.form()
        try:
            self.auth.check_csrf(request, principal, str(form.get("csrf_token", "")))
        except AuthError as exc:
            raise Redirect(
                self.error_page(request, session, new, exc.status, exc.message)
            ) from None
        if action not in actions:
            raise Redirect(self.error_page(request, session, new, 404, f"no action '{action}'"))
        return form

    async def latest_run_log(
        self, principal: Principal, runs: PageOut[RunOut]
    ) -> tuple[RunOut | None, LogOut | None]:
        """The newest of a page of runs, and the start of its log, for a detail page."""
        current = runs.items[0] if runs.items else None
        if current is None:
            return None, None
        log = await run_in_threadpool(self.service.run_log, principal, current.id, 0, 400)
        return current, log

    @staticmethod
    def _to_login(request: Request) -> RedirectResponse:
        target = request.url.path + (f"?{request.url.query}" if request.url.query else "")
        response = RedirectResponse(f"/login?{urlencode({'next': target})}", status_code=303)
        response.delete_cookie(SESSION_COOKIE)  # whatever it held no longer works
        return response

    # ----- the router --------------------------------------------------------------------------

    def router(self) -> APIRouter:
        router = APIRouter(include_in_schema=False)
        service = self.service

        async def guarded(request: Request, page: Page) -> Response:
            try:
                principal, session, new = await self.who(request)
                return await page(principal, session, new)
            except Redirect as redirect:
                return redirect.response
            except ServiceError as exc:
                session, new = self.auth.session_for(request)
                return self.error_page(request, session, new, exc.status, exc.message)

        @router.get("/login", response_class=HTMLResponse)
        async def login(request: Request, next: str = "/") -> Response:
            if self.auth.open_local:
                return RedirectResponse("/", status_code=303)
            return self.login_page(request, None, next)

        @router.post("/logout")
        async def logout(request: Request) -> Response:
            form = await request.form()
            session = self.auth.read_session(request)
            provided = str(form.get("csrf_token", ""))
            if session is None or not hmac.compare_digest(provided, session.csrf):
                return RedirectResponse("/", status_code=303)
            await self.auth.revoke(session)
            response = RedirectResponse("/login", status_code=303)
            response.delete_cookie(SESSION_COOKIE)
            return response

        @router.get("/", response_class=HTMLResponse)
        async def environments(
            request: Request,
            repo: str | None = None,
            status: str | None = None,
            author: str | None = None,
            silo: str | None = None,
            page: int = 1,
            per_page: int = 50,
        ) -> Response:
            async def show(principal: Principal, session: Session, new: bool) -> Response:
                result = await run_in_threadpool(
                    service.list_environments,
                    principal,
                    repo,
                    status,
                    author,
                    silo,
                    page,
                    per_page,
                )
                repos = await run_in_threadpool(service.repositories, principal)
                filters = {
                    "repo": repo,
                    "status": status,
                    "author": author,
                    "silo": silo,
                    "per_page": per_page if per_page != 50 else None,
                }
                return self.render(
                    request,
                    "environments.html",
                    principal,
                    session,
                    new,
                    result=result,
                    filters=filters,
                    repos=repos,
                    statuses=STATUS_FILTERS,
                    now=utcnow(),
                )

            return await guarded(request, show)

        @router.get("/environments/{env_id}", response_class=HTMLResponse)
        async def environment(request: Request, env_id: str) -> Response:
            async def show(principal: Principal, session: Session, new: bool) -> Response:
                env = await run_in_threadpool(service.get_environment, principal, env_id)
                runs = await run_in_threadpool(
                    service.runs_of, principal, "environment", env_id, 1, 50
                )
                allowed = await service.allowed_actions(principal, env_id)
                current, log = await self.latest_run_log(principal, runs)
                return self.render(
                    request,
                    "environment.html",
                    principal,
                    session,
                    new,
                    env=env,
                    runs=runs,
                    current=current,
                    log=log,
                    allowed=allowed,
                    extend_choices=EXTEND_CHOICES,
                    now=utcnow(),
                )

            return await guarded(request, show)

        @router.post("/environments/{env_id}/{action}")
        async def environment_action(request: Request, env_id: str, action: str) -> Response:
            async def act(principal: Principal, session: Session, new: bool) -> Response:
                form = await self.action_form(request, principal, session, new, action, ENV_ACTIONS)
                back = f"/environments/{quote(env_id)}"
                by = str(form.get("by", "")) or None
                try:
                    result = await service.act_on_environment(
                        principal,
                        env_id,
                        action,
                        "dashboard",
                        by,
                    )
                except ServiceError as exc:
                    if exc.status == 404:
                        raise
                    return self.redirect(back, ("error", exc.message))
                except AuthError as exc:
                    return self.redirect(back, ("error", exc.message))
                target = back
                if action == "redeploy" and result.environment:
                    target = f"/environments/{quote(result.environment.id)}"
                return self.redirect(target, ("notice", f"{action}: {result.message}"))

            return await guarded(request, act)

        @router.get("/silos", response_class=HTMLResponse)
        async def silos(request: Request, page: int = 1) -> Response:
            async def show(principal: Principal, session: Session, new: bool) -> Response:
                result = await run_in_threadpool(service.list_silos, principal, None, page, 50)
                pools = await run_in_threadpool(service.pools, principal)
                return self.render(
                    request, "silos.html", principal, session, new, result=result, pools=pools
                )

            return await guarded(request, show)

        @router.get("/orphans", response_class=HTMLResponse)
        async def orphans(request: Request) -> Response:
            async def show(principal: Principal, session: Session, new: bool) -> Response:
                if not principal.operator:
                    return self.error_page(
                        request, session, new, 403, "orphans are for operators (RUNBOT_ADMINS)"
                    )
                report = service.rt.orphans.latest
                return self.render(
                    request, "orphans.html", principal, session, new, report=report, now=utcnow()
                )

            return await guarded(request, show)

        @router.get("/silos/{name}", response_class=HTMLResponse)
        async def silo(request: Request, name: str) -> Response:
            async def show(principal: Principal, session: Session, new: bool) -> Response:
                item = await run_in_threadpool(service.get_silo, principal, name)
                runs = await run_in_threadpool(service.runs_of, principal, "silo", name, 1, 20)
                envs = await run_in_threadpool(
                    service.list_environments, principal, None, "live", None, name, 1, 200
                )
                current, log = await self.latest_run_log(principal, runs)
                return self.render(
                    request,
                    "silo.html",
                    principal,
                    session,
                    new,
                    silo=item,
                    runs=runs,
                    envs=envs,
                    current=current,
                    log=log,
                    now=utcnow(),
                )

            return await guarded(request, show)

        @router.post("/silos/{name}/{action}")
        async def silo_action(request: Request, name: str, action: str) -> Response:
            async def act(principal: Principal, session: Session, new: bool) -> Response:
                form = await self.action_form(
                    request, principal, session, new, action, SILO_ACTIONS
                )
                back = f"/silos/{quote(name)}"
                try:
                    result = await service.act_on_silo(
                        principal,
                        name,
                        cast(SiloAction, action),  # action_form refused any not in SILO_ACTIONS
                        form.get("force") == "on",
                    )
                except ServiceError as exc:
                    if exc.status == 404:
                        raise
                    return self.redirect(back, ("error", exc.message))
                return self.redirect(back, ("notice", result.message))

            return await guarded(request, act)

        @router.get("/usage", response_class=HTMLResponse)
        async def usage(request: Request) -> Response:
            async def show(principal: Principal, session: Session, new: bool) -> Response:
                data = await run_in_threadpool(service.usage, principal)
                return self.render(
                    request,
                    "usage.html",
                    principal,
                    session,
                    new,
                    usage=data,
                    chart=usage_svg(data),
                    money_chart=usage_svg(data, money=True),
                    total_money=format_money(
                        sum(s.money_total for s in data.series), data.currency
                    ),
                    any_money=any(s.money_total > 0 for s in data.series),
                    total_hours=round(sum(s.total for s in data.series), 1),
                    pool_hours=round(sum(s.total for s in data.pool), 1),
                    pool_money=format_money(sum(s.money_total for s in data.pool), data.currency),
                )

            return await guarded(request, show)

        @router.get("/outbox", response_class=HTMLResponse)
        async def outbox(request: Request, page: int = 1) -> Response:
            async def show(principal: Principal, session: Session, new: bool) -> Response:
                result = await run_in_threadpool(service.outbox, principal, page, 50)
                return self.render(
                    request, "outbox.html", principal, session, new, result=result, now=utcnow()
                )

            return await guarded(request, show)

        return router
