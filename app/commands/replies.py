"""What runbot replies to a command: outcomes, and the wording of refusals and failures."""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import datetime, timedelta

from app.access.roles import Role
from app.access.rules import Refusal, Verdict
from app.github.comment import PREFIX, render_reply
from app.ttl.durations import format_duration
from app.ttl.policy import ExtendResult, humanize_until

_LOGIN = re.compile(r"[A-Za-z0-9](?:[A-Za-z0-9-]{0,38})")


@dataclass(frozen=True)
class Outcome:
    """What a command came to: ``kind`` ok (👍), refused or failed (😕); ``reply`` is posted
    when not None."""

    kind: str = "ok"
    reply: str | None = None


def failed(title: str, text: str) -> Outcome:
    return Outcome("failed", render_reply(title, text))


def mention(login: str) -> str:
    return f"@{login}" if _LOGIN.fullmatch(login) else "You"


def refusal_text(command: str, verdict: Verdict, role: Role, *, author_may: bool) -> str:
    """Why a comment command was refused, as a sentence ending in a full stop."""
    have = role.label
    needed = verdict.needed.label if verdict.needed is not None else ""
    if verdict.refusal == Refusal.CLOSED:
        return (
            f"This pull request is closed, so runbot only answers `{PREFIX} status` and "
            f"`{PREFIX} help` here."
        )
    if verdict.refusal == Refusal.FORK_AUTHOR:
        return (
            f"`{PREFIX} {command}` approves running this pull request's code, so someone with "
            f"**{needed}** permission on the repository has to comment it; the author of a "
            "pull request from a fork cannot approve it."
        )
    if author_may:
        return (
            f"`{PREFIX} {command}` needs **{needed}** permission on this repository, or being "
            f"this pull request's author; your permission here is **{have}**."
        )
    return (
        f"`{PREFIX} {command}` needs **{needed}** permission on this repository; your "
        f"permission here is **{have}**."
    )


def _utc(moment: datetime) -> str:
    return moment.strftime("%Y-%m-%d %H:%M:%S UTC")


def render_extend_refused(
    by: timedelta,
    result: ExtendResult,
    current_expiry: datetime,
    max_lifetime: timedelta,
    now: datetime,
) -> str:
    """Why an extend was refused: the cap, when it falls, and the most that still fits."""
    room = result.cap - max(current_expiry, now)
    lines = [
        f"Extending by {format_duration(by)} would pass this environment's maximum lifetime of "
        f"{format_duration(max_lifetime)} from its creation (`ttl.max` in `.runbot.yml`): it "
        f"can live until {_utc(result.cap)} ({humanize_until(result.cap, now)}) at most, so "
        "nothing was changed.",
    ]
    seconds = int(room.total_seconds())
    if seconds >= 3600:  # "3h59m" reads better than "3h59m58s", and stays within the cap
        seconds -= seconds % 60
    whole = timedelta(seconds=seconds)
    if whole >= timedelta(seconds=1):
        most = format_duration(whole)
        lines.append(f"The most it can still be extended by is {most}: `{PREFIX} extend {most}`.")
    else:
        lines.append("It already expires at that cap.")
    lines.append(
        f"To keep working after that, `{PREFIX} redeploy` starts a fresh environment with a new "
        "lifetime."
    )
    return "\n\n".join(lines)
