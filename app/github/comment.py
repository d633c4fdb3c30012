"""Markdown for everything runbot posts on a pull request, as pure functions of plain values.

The status comment is the one place people look, and it is edited in place for the life of
the PR, so it must never break: anything that came from outside (reasons, ids, URLs, engine
output) is escaped or fenced, every piece is length-capped, and the whole body stays well
under GitHub's comment limit whatever it is fed. No I/O here, so every shape is unit-testable.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from app.github.config_errors import CONFIG_FILENAME
from app.github.sleeping import sleep_note
from app.links import invisible_control, safe_link
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
_FIELD_CHARS = 200
_BODY_CHARS = 50_000
_TAIL_LINE_CHARS = 2_000
_SHORT_SHA = 7

_ZWJ = "\u200d"
_ZWSP = "\u200b"

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

# Markdown punctuation that can start emphasis, code, links, table cells, strikethrough or
# math anywhere in a line; each gets a backslash. ``(``/``)``/``!`` only matter next to ``[``/``]``.
_INLINE_SPECIAL = frozenset("\\`*_[]|~$")
_HTML_ENTITIES = {"&": "&amp;", "<": "&lt;", ">": "&gt;"}
# Text that would turn into a block construct (heading, list, quote...) at the start of a line.
_LEADING_BLOCK = re.compile(r"^([-+=]|\d+[.)])")
# Everything str.splitlines() breaks on, so no stray line break survives into a table row.
_LINE_BREAKS = re.compile(r"\r\n|[\n\r\v\f\x1c\x1d\x1e\x85\u2028\u2029]+")
# Safe inside a code span within a table cell, and what ids, SHAs and silo names look like.
_CODE_SAFE = re.compile(r"[A-Za-z0-9._:/@+=,#%~-]+")
_HEX_SHA = re.compile(r"[0-9a-fA-F]{7,64}")
_GITHUB_LOGIN = re.compile(r"[A-Za-z0-9](?:[A-Za-z0-9-]{0,38})(?:\[bot\])?")
_APP_SLUG = re.compile(r"[A-Za-z0-9](?:[A-Za-z0-9_-]{0,99})")
_FENCE_RUN = re.compile(r"`{3,}|~{3,}")
_DETAILS_TAG = re.compile(r"<(/?)(details|summary)", re.IGNORECASE)
_OUR_MARKERS = re.compile(r"<!--(\s*runbot:)", re.IGNORECASE)
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
    #: Asked to sleep since when, and why (`idle`, `command`, `budget`); None while awake.
    slept_at: datetime | None = None
    sleep_reason: str | None = None
    #: The environment's `ttl.sleep_after`, to say how long it was idle.
    sleep_after: timedelta | None = None
    #: Its URL answers while asleep and wakes it (the stack says so): say "open its URL".
    wakes_on_request: bool = False


# --- escaping -----------------------------------------------------------------------------


def _one_line(text: str) -> str:
    """Collapse line breaks to spaces and drop controls, so the text stays in its table cell."""
    text = _LINE_BREAKS.sub(" ", text).replace("\t", " ")
    return "".join(ch for ch in text if not invisible_control(ch))


def _clip(text: str, limit: int) -> str:
    """Cut before escaping, so an escape sequence is never split in half."""
    return text if len(text) <= limit else text[: limit - 1] + "…"


def escape_markdown_inline(text: str) -> str:
    """Make arbitrary text render literally inside a markdown line (or table cell).

    Strips line breaks, invisible controls and surrounding blanks (leading spaces could
    make an indented code block), backslash-escapes markdown punctuation (so no
    code spans, emphasis, links or table cells can be opened), turns ``<``/``>``/``&`` into
    entities (so no HTML such as ``</details>`` or ``<script>``), and puts a zero-width joiner
    after ``@`` and ``#`` so ``@everyone`` pings nobody and ``#1`` links no issue.
    """
    text = _one_line(text).strip()
    out: list[str] = []
    for ch in text:
        if ch in _HTML_ENTITIES:
            out.append(_HTML_ENTITIES[ch])
        elif ch in _INLINE_SPECIAL:
            out.append("\\" + ch)
        elif ch in "@#":
            out.append(("\\#" if ch == "#" else ch) + _ZWJ)
        else:
            out.append(ch)
    escaped = "".join(out)
    # "- x", "1. x", "=" or "+" at the very start would become a list or heading.
    return _LEADING_BLOCK.sub(lambda m: _escape_block_start(m.group(1)), escaped)


def _escape_block_start(token: str) -> str:
    if token[-1] in ".)":
        return token[:-1] + "\\" + token[-1]
    return "\\" + token


def _code(text: str | None, limit: int = _FIELD_CHARS) -> str:
    """An id as inline code (copy-pastable), or escaped text when it holds odd characters."""
    if not text:
        return "—"
    text = _clip(_one_line(text).strip(), limit)
    if not text:
        return "—"
    if _CODE_SAFE.fullmatch(text):
        return f"`{text}`"
    return escape_markdown_inline(text)


def _link(label: str, url: str | None) -> str | None:
    safe = safe_link(url)
    return None if safe is None else f"[{escape_markdown_inline(label)}]({safe})"


def _utc(moment: datetime) -> str:
    """Absolute time for people in any timezone; naive datetimes are rejected upstream."""
    return moment.astimezone(UTC).strftime("%Y-%m-%d %H:%M UTC")


def _short_sha(sha: str | None) -> str:
    if sha and _HEX_SHA.fullmatch(sha.strip()):
        return f"`{sha.strip()[:_SHORT_SHA].lower()}`"
    return _code(sha, limit=12)


def _defuse_markers(text: str) -> str:
    """Our HTML-comment markers inside other text must not make a comment look like ours."""
    return _OUR_MARKERS.sub(lambda m: f"<!{_ZWSP}--{m.group(1)}", text)


def _neutralise_block(text: str) -> str:
    """Keep engine output from ending our code fence or ``<details>`` block.

    A zero-width space splits every run of three or more backticks (or tildes) and every
    ``<details>``/``<summary>`` tag: invisible when read, inert when parsed.
    """
    text = _FENCE_RUN.sub(lambda m: _ZWSP.join(m.group()), text)
    text = _DETAILS_TAG.sub(lambda m: f"<{_ZWSP}{m.group(1)}{m.group(2)}", text)
    return _defuse_markers(text)


def _tail_lines(log_tail: tuple[str, ...]) -> list[str]:
    """One entry per physical line, each capped and cleaned for display in a code block."""
    lines: list[str] = []
    for entry in log_tail:
        for raw in str(entry).splitlines() or [""]:
            line = "".join(ch for ch in raw if not invisible_control(ch))
            if len(line) > _TAIL_LINE_CHARS:
                line = line[: _TAIL_LINE_CHARS - 1] + "…"
            lines.append(_neutralise_block(line))
    return lines


def _fit_tail(lines: list[str], budget: int) -> tuple[list[str], int]:
    """Keep the last lines that fit in ``budget`` chars; the end of a log is where errors are."""
    kept: list[str] = []
    used = 0
    for line in reversed(lines):
        if used + len(line) + 1 > budget:
            break
        kept.append(line)
        used += len(line) + 1
    kept.reverse()
    return kept, len(lines) - len(kept)


# --- the status comment -------------------------------------------------------------------


def _slug(app_slug: str | None) -> str | None:
    slug = (app_slug or "").strip().removeprefix("@")
    return slug if _APP_SLUG.fullmatch(slug) else None


def _status_cell(view: StatusView, label: str) -> str:
    reason = _clip(_one_line(view.reason or "").strip(), _REASON_CHARS)
    return f"{label} — {escape_markdown_inline(reason)}" if reason else label


def _commit_cell(view: StatusView) -> str:
    deployed, head = view.deployed_sha, view.head_sha
    if not deployed and not head:
        return "—"
    if not deployed:
        return _short_sha(head)
    if not head or head.strip().lower() == deployed.strip().lower():
        return _short_sha(deployed)
    if view.state in _ROLLING_OUT:
        return f"{_short_sha(deployed)} → updating to {_short_sha(head)}"
    return f"{_short_sha(deployed)} (latest commit {_short_sha(head)} is not deployed)"


def _when(expires_at: datetime, now: datetime) -> str:
    """``in 3h 5m (2024-05-01 14:00 UTC)``, or ``expired 5m ago (...)`` once it has passed."""
    relative = humanize_until(expires_at, now)
    if expires_at <= now:
        relative = f"expired {relative}" if relative != "now" else "expiring now"
    return f"{relative} ({_utc(expires_at)})"


def _expires_cell(view: StatusView) -> str | None:
    if view.expires_at is None or view.state in _NO_EXPIRY:
        return None
    cell = _when(view.expires_at, view.now)
    if view.max_expires_at is not None:
        cell += f"; can be extended until {_utc(view.max_expires_at)}"
    return cell


def _environment_cell(view: StatusView) -> str:
    if view.state == "ready" or (view.state == "sleeping" and view.wakes_on_request):
        safe = safe_link(view.url)
        if safe is not None:
            return f"[{escape_markdown_inline(_clip(safe, _FIELD_CHARS))}]({safe})"
    return "—"


def _table(view: StatusView, label: str) -> list[str]:
    rows = [
        ("Status", _status_cell(view, label)),
        ("Commit", _commit_cell(view)),
        ("Environment id", _code(view.environment_id)),
        ("Silo", _code(view.silo)),
    ]
    expires = _expires_cell(view)
    if expires is not None:
        rows.append(("Expires", expires))
    logs = _link("run log", view.log_url)
    if logs is not None:
        rows.append(("Logs", logs))
    lines = [f"| **Environment** | {_environment_cell(view)} |", "| --- | --- |"]
    lines += [f"| **{name}** | {value} |" for name, value in rows]
    return lines


def _notes(view: StatusView) -> list[str]:
    """Sentences under the table: the things someone should act on."""
    notes: list[str] = []
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
        when = f" next at {_utc(view.retry_at)}" if view.retry_at is not None else ""
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
    link = _link("full run log", log_url)
    more = f"See the {link}." if link else ""
    if not quote:
        where = f"the {_link('run log', log_url)}" if log_url else "runbot's dashboard"
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
    kept, dropped = _fit_tail(lines, max(budget - 400 - len(more), 0))
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
        ("⚪", "Preview environment", escape_markdown_inline(_clip(str(view.state), 40))),
    )
    head = [MARKER, f"### {emoji} {heading}", "", *_table(view, label)]
    notes = _notes(view)
    if notes:
        head += ["", "\n\n".join(notes)]
    foot = ["", *_commands_footer(view), "", f"<sub>Updated {_utc(view.now)}</sub>", ""]
    if view.state in _FAILED:
        fixed = len("\n".join(head)) + len("\n".join(foot)) + 2
        details = _failure_details(
            _tail_lines(view.log_tail),
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
    problem = _cap_markdown(_defuse_markers(_strip_heading(problem_markdown)), _BODY_CHARS)
    lines = [
        CONFIG_MARKER,
        f"### ⚠️ runbot could not use `{CONFIG_FILENAME}`",
        "",
        problem,
        "",
        f"No environment is deployed for this pull request until `{CONFIG_FILENAME}` is "
        "fixed: correct it on this branch and push.",
    ]
    link = _link(f"{CONFIG_FILENAME} reference", docs_url)
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
        f"⚠️ {who}, the preview environment {_code(env_id)} expires "
        f"{humanize_until(expires_at, now)} ({_utc(expires_at)}) and will then be destroyed.\n\n"
        + action
    )


def render_reply(title: str, body_markdown: str) -> str:
    """A reply to a command: an escaped one-line title, then our (trusted, capped) markdown."""
    heading = escape_markdown_inline(_clip(_one_line(title).strip(), _FIELD_CHARS)) or "runbot"
    body = _cap_markdown(_defuse_markers(body_markdown.strip("\n")), _BODY_CHARS)
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
        ("⚪", "Preview environment", escape_markdown_inline(_clip(str(view.state), 40))),
    )
    lines = _table(view, label)
    run = "—"
    if last_run is not None:
        moment = last_run.finished_at or last_run.started_at
        verb = "finished" if last_run.finished_at else "started"
        run = (
            f"run `{last_run.id}`: {_code(last_run.operation, 40)}, "
            f"{escape_markdown_inline(_clip(last_run.status, 40))}, "
            f"{verb} {humanize_until(moment, view.now)} ({_utc(moment)})"
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
    reason = " ".join(_one_line(view.reason or "").split())
    text = f"{label}: {reason}" if reason else label
    return state, _clip(text, DEPLOYMENT_DESCRIPTION_CHARS)
