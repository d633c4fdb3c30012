"""Markdown for everything runbot posts on a pull request, as pure functions of plain values.

The status comment is the one place people look, and it is edited in place for the life of
the PR, so it must never break: anything that came from outside (reasons, ids, URLs, engine
output) is escaped or fenced, every piece is length-capped, and the whole body stays well
under GitHub's comment limit whatever it is fed. No I/O here, so every shape is unit-testable.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import datetime, timedelta

from app.github.config_errors import CONFIG_FILENAME
from app.github.markdown import (
    FIELD_CHARS,
    clip,
    defuse_markers,
    escape_markdown_inline,
    fit_tail,
    inline_code,
    markdown_link,
    one_line,
    short_sha,
    tail_lines,
    utc,
)
from app.github.origin import PoolOrigin, pool_origin_line
from app.github.sleeping import sleep_note
from app.links import safe_link
from app.ttl.durations import format_duration
from app.ttl.policy import SUGGESTED_EXTENSION, humanize_until, suggested_extension

__all__ = [
    "CONFIG_MARKER",
    "MARKER",
    "MAX_COMMENT_CHARS",
    "PREFIX",
    "TARGET_COMMENT_CHARS",
    "RunSummary",
    "StatusView",
    "deployment_state",
    "escape_markdown_inline",
    "render_config_error",
    "render_expiry_warning",
    "render_reply",
    "render_status_comment",
    "render_status_reply",
]

#: What starts a comment addressed to runbot (the grammar also accepts `@<app-slug>`).
PREFIX = "/runbot"
MARKER = "<!-- runbot:status -->"
CONFIG_MARKER = "<!-- runbot:config-error -->"
#: GitHub rejects comment bodies longer than this.
MAX_COMMENT_CHARS = 65_536
#: What we actually aim for: the margin absorbs GitHub counting differently than len() does.
TARGET_COMMENT_CHARS = 60_000

#: Longest deployment status description GitHub accepts.
DEPLOYMENT_DESCRIPTION_CHARS = 140

_REASON_CHARS = 1_000
_BODY_CHARS = 50_000

# state -> (emoji, heading, label for the Status row)
_STATES: dict[str, tuple[str, str, str]] = {
    "queued": ("🟡", "Preview environment queued", "Queued"),
    "creating": ("🟡", "Creating preview environment", "Creating"),
    "updating": ("🟡", "Updating preview environment", "Updating"),
    "waiting_ci": ("🟡", "Waiting for CI before deploying", "Waiting for CI"),
    "ready": ("✅", "Preview environment ready", "Ready"),
    "failed": ("🔴", "Preview environment failed", "Failed"),
    "sleeping": ("💤", "Preview environment sleeping", "Sleeping"),
    "destroying": ("🟡", "Destroying preview environment", "Destroying"),
    "destroy_failed": ("🔴", "Preview environment could not be destroyed", "Destroy failed"),
    "destroyed": ("⚪", "Preview environment destroyed", "Destroyed"),
    "not_deployed": ("⚪", "Preview environment not deployed", "Not deployed"),
}
# States in which a head commit different from the deployed one is being rolled out.
_ROLLING_OUT = frozenset({"queued", "creating", "updating", "waiting_ci"})
# States with nothing left to expire.
_NO_EXPIRY = frozenset({"destroying", "destroy_failed", "destroyed", "not_deployed"})
# States whose comment quotes the failed run's last log lines.
_FAILED = frozenset({"failed", "destroy_failed"})

# GitHub deployment status states; see deployment_state() for the reasoning.
_DEPLOYMENT_STATES: dict[str, str] = {
    "queued": "queued",
    "waiting_ci": "in_progress",
    "creating": "in_progress",
    "updating": "in_progress",
    "destroying": "in_progress",
    "destroy_failed": "in_progress",
    "ready": "success",
    "failed": "failure",
    "sleeping": "inactive",
    "destroyed": "inactive",
    "not_deployed": "inactive",
}

_GITHUB_LOGIN = re.compile(r"[A-Za-z0-9](?:[A-Za-z0-9-]{0,38})(?:\[bot\])?")
_APP_SLUG = re.compile(r"[A-Za-z0-9](?:[A-Za-z0-9_-]{0,99})")
_HEADING_LINE = re.compile(r"#{1,6}(\s|$)")


@dataclass(frozen=True)
class StatusView:
    """Everything the status comment shows, already looked up: rendering decides nothing else."""

    repository: str
    pr_number: int
    state: str
    now: datetime
    reason: str | None = None
    environment_id: str | None = None
    silo: str | None = None
    url: str | None = None
    deployed_sha: str | None = None
    head_sha: str | None = None
    expires_at: datetime | None = None
    max_expires_at: datetime | None = None
    warning: bool = False
    log_url: str | None = None
    log_tail: tuple[str, ...] = ()
    #: False on a public repository (unless the policy's `quote_logs`): link, do not quote.
    quote_log: bool = True
    app_slug: str | None = None
    commands_available: bool = True
    #: The commands' help, shown folded under the comment (the commands room renders it).
    commands_help: str = ""
    #: destroy_failed: when runbot tries the destroy again by itself.
    retry_at: datetime | None = None
    #: "≈ $1.20 so far · $0.05/h" as of ``now`` (None: the stack outputs no cost).
    cost: str | None = None
    #: The budget warning at 80% or 100% of a monthly budget (`app.cost.budget.budget_line`).
    budget_warning: str | None = None
    #: Asked to sleep since when, and why (`idle`, `command`, `budget`); None while awake.
    slept_at: datetime | None = None
    sleep_reason: str | None = None
    #: The environment's `ttl.sleep_after`, to say how long it was idle.
    sleep_after: timedelta | None = None
    #: Its URL answers while asleep and wakes it (the stack says so): say "open its URL".
    wakes_on_request: bool = False
    #: ready: the seconds the run that made it ready spent in each phase, in order.
    ready_phases: tuple[tuple[str, float], ...] = ()
    #: Whether the environment was taken from the warm pool (or made after a failed claim).
    pool_origin: PoolOrigin = PoolOrigin.NONE


# --- the status comment -------------------------------------------------------------------


def _slug(app_slug: str | None) -> str | None:
    slug = (app_slug or "").strip().removeprefix("@")
    return slug if _APP_SLUG.fullmatch(slug) else None


def _status_cell(view: StatusView, label: str) -> str:
    reason = clip(one_line(view.reason or "").strip(), _REASON_CHARS)
    return f"{label} — {escape_markdown_inline(reason)}" if reason else label


def _commit_cell(view: StatusView) -> str:
    deployed, head = view.deployed_sha, view.head_sha
    if not deployed and not head:
        return "—"
    if not deployed:
        return short_sha(head)
    if not head or head.strip().lower() == deployed.strip().lower():
        return short_sha(deployed)
    if view.state in _ROLLING_OUT:
        return f"{short_sha(deployed)} → updating to {short_sha(head)}"
    return f"{short_sha(deployed)} (latest commit {short_sha(head)} is not deployed)"


def _when(expires_at: datetime, now: datetime) -> str:
    """``in 3h 5m (2024-05-01 14:00 UTC)``, or ``expired 5m ago (...)`` once it has passed."""
    relative = humanize_until(expires_at, now)
    if expires_at <= now:
        relative = f"expired {relative}" if relative != "now" else "expiring now"
    return f"{relative} ({utc(expires_at)})"


def _expires_cell(view: StatusView) -> str | None:
    if view.expires_at is None or view.state in _NO_EXPIRY:
        return None
    cell = _when(view.expires_at, view.now)
    if view.max_expires_at is not None:
        cell += f"; can be extended until {utc(view.max_expires_at)}"
    return cell


def _environment_cell(view: StatusView) -> str:
    if view.state == "ready" or (view.state == "sleeping" and view.wakes_on_request):
        safe = safe_link(view.url)
        if safe is not None:
            return f"[{escape_markdown_inline(clip(safe, FIELD_CHARS))}]({safe})"
    return "—"


def _seconds(value: float) -> str:
    if value < 60:
        return f"{value:.1f} s"
    minutes, secs = divmod(round(value), 60)
    return f"{minutes} min {secs:02d} s"


def _ready_cell(view: StatusView) -> str | None:
    """How long the environment took to be ready, and where the time went."""
    if view.state != "ready" or not view.ready_phases:
        return None
    total = sum(seconds for _, seconds in view.ready_phases)
    parts = " · ".join(
        f"{escape_markdown_inline(clip(name, 20))} {_seconds(seconds)}"
        for name, seconds in view.ready_phases
    )
    return f"{_seconds(total)} ({parts})"


def _table(view: StatusView, label: str) -> list[str]:
    rows = [
        ("Status", _status_cell(view, label)),
        ("Commit", _commit_cell(view)),
        ("Environment id", inline_code(view.environment_id)),
        ("Silo", inline_code(view.silo)),
    ]
    expires = _expires_cell(view)
    if expires is not None:
        rows.append(("Expires", expires))
    origin = pool_origin_line(view.pool_origin, view.silo)
    if origin is not None:
        rows.append(("Warm pool", origin))
    rows += _cost_rows(view)
    took = _ready_cell(view)
    if took is not None:
        rows.append(("Ready in", took))
    logs = markdown_link("run log", view.log_url)
    if logs is not None:
        rows.append(("Logs", logs))
    lines = [f"| **Environment** | {_environment_cell(view)} |", "| --- | --- |"]
    lines += [f"| **{name}** | {value} |" for name, value in rows]
    return lines


def _cost_rows(view: StatusView) -> list[tuple[str, str]]:
    """The environment's money so far and per hour, when its stack outputs a cost."""
    if view.cost is None:
        return []
    return [("Cost", escape_markdown_inline(clip(view.cost, FIELD_CHARS)))]


def _budget_notes(view: StatusView) -> list[str]:
    if view.budget_warning is None:
        return []
    return [f"> ⚠️ **{escape_markdown_inline(clip(view.budget_warning, 400))}**"]


def _notes(view: StatusView) -> list[str]:
    """Sentences under the table: the things someone should act on."""
    notes: list[str] = _budget_notes(view)
    if view.warning and view.state not in _NO_EXPIRY:
        when = "soon" if view.expires_at is None else _when(view.expires_at, view.now)
        by = (
            SUGGESTED_EXTENSION
            if view.expires_at is None
            else suggested_extension(view.expires_at, view.max_expires_at)
        )
        if by is None:
            hint = " It has reached its maximum lifetime (`ttl.max`) and cannot be extended."
        elif view.commands_available:
            hint = f" Comment `{PREFIX} extend {format_duration(by)}` to keep it longer."
        else:
            hint = ""
        notes.append(f"> ⚠️ **This environment expires soon: {when}.**{hint}")
    if view.state == "destroyed" and (view.reason or "").strip().lower() == "expired":
        hint = f" Comment `{PREFIX} redeploy` to bring it back." if view.commands_available else ""
        notes.append(f"This environment expired and was destroyed.{hint}")
    if view.state == "destroy_failed":
        when = f" next at {utc(view.retry_at)}" if view.retry_at is not None else ""
        hint = (
            f" Once the cause is fixed, comment `{PREFIX} destroy` to retry now."
            if view.commands_available
            else ""
        )
        notes.append(
            "> ⚠️ **The destroy failed; runbot retries it by itself, less and less often"
            f"{when}.** The environment keeps its slot until a destroy succeeds.{hint}"
        )
    sleeping = sleep_note(
        view.state,
        view.slept_at,
        view.sleep_reason,
        view.sleep_after,
        url_wakes=view.wakes_on_request and safe_link(view.url) is not None,
        commands=view.commands_available,
    )
    if sleeping is not None:
        notes.append(sleeping)
    return notes


def _commands_footer(view: StatusView) -> list[str]:
    if not view.commands_available:
        return ["_runbot commands are not available on this pull request._"]
    lines = ["<details><summary>Commands</summary>", "", view.commands_help]
    slug = _slug(view.app_slug)
    if slug is not None:
        lines += ["", f"`@{slug} status` works the same as `{PREFIX} status`, and so on."]
    lines += ["", "</details>"]
    return lines


def _failure_details(
    lines: list[str], budget: int, log_url: str | None, *, quote: bool = True
) -> list[str]:
    """The last log lines in a collapsed, fenced block, trimmed from the top to ``budget``;
    without ``quote`` (a public repository), only the link to the run log."""
    link = markdown_link("full run log", log_url)
    more = f"See the {link}." if link else ""
    if not quote:
        where = f"the {markdown_link('run log', log_url)}" if log_url else "runbot's dashboard"
        return [
            f"This repository is public, so the engine's output is not quoted here: it is in "
            f"{where}, for people who may see it."
        ]
    if not lines:
        body = ["No engine output was captured."]
        if more:
            body.append(more)
        return ["<details><summary>Last log lines</summary>", "", *body, "", "</details>"]
    # Room for the wrapper and the "N earlier lines omitted" note, whatever N is.
    kept, dropped = fit_tail(lines, max(budget - 400 - len(more), 0))
    out = ["<details><summary>Last log lines</summary>", ""]
    if dropped:
        out += [f"_{dropped} earlier line(s) omitted._ {more}".rstrip(), ""]
    elif more:
        out += [more, ""]
    out += ["```text", *kept, "```", "", "</details>"]
    return out


def render_status_comment(view: StatusView) -> str:
    """The single status comment for a PR; first line is MARKER so the bot can find it again.

    Raises only for naive datetimes (like the TTL policy does); any text in the view renders.
    """
    emoji, heading, label = _STATES.get(
        view.state,
        ("⚪", "Preview environment", escape_markdown_inline(clip(str(view.state), 40))),
    )
    head = [MARKER, f"### {emoji} {heading}", "", *_table(view, label)]
    notes = _notes(view)
    if notes:
        head += ["", "\n\n".join(notes)]
    foot = ["", *_commands_footer(view), "", f"<sub>Updated {utc(view.now)}</sub>", ""]
    if view.state in _FAILED:
        fixed = len("\n".join(head)) + len("\n".join(foot)) + 2
        details = _failure_details(
            tail_lines(view.log_tail),
            TARGET_COMMENT_CHARS - fixed,
            view.log_url,
            quote=view.quote_log,
        )
        head += ["", *details]
    return "\n".join(head + foot)


# --- other comments -----------------------------------------------------------------------


def _cap_markdown(text: str, limit: int) -> str:
    """Trim markdown we were handed to ``limit``, closing a fence the cut left open."""
    if len(text) <= limit:
        return text
    text = text[:limit].rsplit("\n", 1)[0]
    fences = sum(1 for line in text.splitlines() if line.lstrip().startswith("```"))
    if fences % 2:
        text += "\n```"
    return text + "\n\n_…(truncated)_"


def _strip_heading(markdown: str) -> str:
    """Drop a leading heading: ConfigError.markdown() brings its own, and ours says the same."""
    lines = markdown.strip("\n").split("\n")
    if lines and _HEADING_LINE.match(lines[0]):
        lines = lines[1:]
    return "\n".join(lines).strip("\n")


def render_config_error(problem_markdown: str, docs_url: str | None = None) -> str:
    """The comment shown instead of an environment when ``.runbot.yml`` is unusable.

    ``problem_markdown`` is trusted markdown (e.g. ``ConfigError.markdown()``, fences and
    all); it is only length-capped and kept from carrying our markers.
    """
    problem = _cap_markdown(defuse_markers(_strip_heading(problem_markdown)), _BODY_CHARS)
    lines = [
        CONFIG_MARKER,
        f"### ⚠️ runbot could not use `{CONFIG_FILENAME}`",
        "",
        problem,
        "",
        f"No environment is deployed for this pull request until `{CONFIG_FILENAME}` is "
        "fixed: correct it on this branch and push.",
    ]
    link = markdown_link(f"{CONFIG_FILENAME} reference", docs_url)
    if link is not None:
        lines += ["", f"Every field is described, with examples, in the {link}."]
    return "\n".join(lines) + "\n"


def render_expiry_warning(
    author: str,
    env_id: str,
    expires_at: datetime,
    now: datetime,
    max_expires_at: datetime | None = None,
) -> str:
    """A separate, short comment so the PR author gets a notification before the teardown.

    It suggests an extension the max lifetime allows in full, or says none is left.
    """
    login = (author or "").strip().removeprefix("@")
    who = f"@{login}" if _GITHUB_LOGIN.fullmatch(login) else escape_markdown_inline(login)
    by = suggested_extension(expires_at, max_expires_at)
    action = (
        "It has reached its maximum lifetime (`ttl.max` in `.runbot.yml`) and cannot be"
        f" extended; once it is gone, comment `{PREFIX} redeploy` for a new one.\n"
        if by is None
        else f"To keep it, comment:\n\n```\n{PREFIX} extend {format_duration(by)}\n```\n"
    )
    return (
        f"⚠️ {who}, the preview environment {inline_code(env_id)} expires "
        f"{humanize_until(expires_at, now)} ({utc(expires_at)}) and will then be destroyed.\n\n"
        + action
    )


def render_reply(title: str, body_markdown: str) -> str:
    """A reply to a command: an escaped one-line title, then our (trusted, capped) markdown."""
    heading = escape_markdown_inline(clip(one_line(title).strip(), FIELD_CHARS)) or "runbot"
    body = _cap_markdown(defuse_markers(body_markdown.strip("\n")), _BODY_CHARS)
    return f"### {heading}\n\n{body}\n" if body else f"### {heading}\n"


@dataclass(frozen=True)
class RunSummary:
    """An environment's last engine run, as the ``/runbot status`` reply shows it."""

    id: int
    operation: str
    status: str
    started_at: datetime
    finished_at: datetime | None = None


def render_status_reply(view: StatusView, last_run: RunSummary | None) -> str:
    """The answer to ``/runbot status``: the status comment's table and notes plus the last run.

    It carries no MARKER, so a reply is never mistaken for (and edited as) the status comment.
    """
    emoji, heading, label = _STATES.get(
        view.state,
        ("⚪", "Preview environment", escape_markdown_inline(clip(str(view.state), 40))),
    )
    lines = _table(view, label)
    run = "—"
    if last_run is not None:
        moment = last_run.finished_at or last_run.started_at
        verb = "finished" if last_run.finished_at else "started"
        run = (
            f"run `{last_run.id}`: {inline_code(last_run.operation, 40)}, "
            f"{escape_markdown_inline(clip(last_run.status, 40))}, "
            f"{verb} {humanize_until(moment, view.now)} ({utc(moment)})"
        )
    lines.append(f"| **Last run** | {run} |")
    notes = _notes(view)
    body = "\n".join(lines)
    if notes:
        body += "\n\n" + "\n\n".join(notes)
    return render_reply(f"{emoji} {heading}", body)


# --- GitHub deployment status -------------------------------------------------------------


def deployment_state(view: StatusView) -> tuple[str, str]:
    """The GitHub deployment status ``state`` and a plain-text description (<= 140 chars).

    ``queued`` is GitHub's own "queued"; everything that is running or waiting to run
    (waiting_ci, creating, updating, destroying) is ``in_progress``, and so is
    ``destroy_failed``: the deployment itself did not fail, its teardown is retried until it
    succeeds, and only then is it ``inactive``. ``sleeping`` maps to
    ``inactive``, not ``success``: a sleeping environment has no live URL, and GitHub shows
    the URL of a successful deployment as "View deployment"; waking it posts a new
    ``in_progress`` then ``success``. Unknown states raise: a guessed state would mislead.
    """
    try:
        state = _DEPLOYMENT_STATES[view.state]
    except KeyError:
        raise ValueError(f"no deployment status for runbot state {view.state!r}") from None
    label = _STATES[view.state][2]
    reason = " ".join(one_line(view.reason or "").split())
    text = f"{label}: {reason}" if reason else label
    return state, clip(text, DEPLOYMENT_DESCRIPTION_CHARS)
