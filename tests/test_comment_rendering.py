"""The PR comments runbot posts: layout per state, escaping of outside text, and size limits.

The status comment is edited in place for a PR's whole life, so one bad reason string or a
noisy engine log must never break its layout, ping people, or push it past GitHub's limit.
"""

from __future__ import annotations

import dataclasses
import re
from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from app.commands.registry import VOCABULARY
from app.github.comment import (
    CONFIG_MARKER,
    MARKER,
    MAX_COMMENT_CHARS,
    PREFIX,
    TARGET_COMMENT_CHARS,
    StatusView,
    deployment_state,
    escape_markdown_inline,
    render_config_error,
    render_expiry_warning,
    render_reply,
    render_status_comment,
)
from app.github.config import parse_repo_config
from app.github.config_errors import ConfigError

NOW = datetime(2024, 5, 1, 12, 0, tzinfo=UTC)
STATES = (
    "queued",
    "creating",
    "ready",
    "updating",
    "failed",
    "sleeping",
    "destroying",
    "destroyed",
    "waiting_ci",
    "not_deployed",
)
URL = "https://pr-12.preview.example.com/"
DEPLOYED = "a1b2c3d4e5f60718293a4b5c6d7e8f9012345678"
HEAD = "ffeeddccbbaa99887766554433221100ffeeddcc"
ZWJ = "\u200d"


def view(state: str = "ready", **changes: object) -> StatusView:
    base = StatusView(
        repository="acme/web",
        pr_number=12,
        state=state,
        now=NOW,
        environment_id="web-pr-12",
        silo="web-default",
        url=URL,
        deployed_sha=DEPLOYED,
        head_sha=DEPLOYED,
        expires_at=NOW + timedelta(hours=3, minutes=5),
        max_expires_at=NOW + timedelta(days=6),
        log_url="https://runbot.example.com/runs/7",
        app_slug="runbot-dev",
        commands_help=VOCABULARY.usage(),
    )
    return dataclasses.replace(base, **changes)


def fence_lines(text: str) -> list[str]:
    return [line for line in text.splitlines() if line.lstrip().startswith("```")]


def unescaped(text: str, char: str) -> int:
    """How many ``char`` are not preceded by an odd run of backslashes."""
    count = 0
    backslashes = 0
    for ch in text:
        if ch == char and backslashes % 2 == 0:
            count += 1
        backslashes = backslashes + 1 if ch == "\\" else 0
    return count


def assert_well_formed(text: str) -> None:
    """The invariants every status comment keeps, whatever went into it."""
    assert text.split("\n", 1)[0] == MARKER
    assert len(text) < MAX_COMMENT_CHARS
    assert len(text) <= TARGET_COMMENT_CHARS
    assert text.count("```") % 2 == 0
    assert len(fence_lines(text)) % 2 == 0
    lower = text.lower()
    assert lower.count("<details") == lower.count("</details>")
    assert lower.count("<summary") == lower.count("</summary>")
    # Exactly one marker, and no user text can add a second one.
    assert text.count("<!--") == 1
    # Table rows keep their two cells: three structural pipes, everything else escaped.
    in_fence = False
    for line in text.splitlines():
        if line.lstrip().startswith("```"):
            in_fence = not in_fence
        elif not in_fence and line.startswith("| "):
            assert unescaped(line, "|") == 3, line


# --- layout per state ---------------------------------------------------------------------


@pytest.mark.parametrize("state", STATES)
def test_every_state_starts_with_marker(state: str) -> None:
    text = render_status_comment(view(state))
    assert text.splitlines()[0] == MARKER
    assert "### " in text.splitlines()[1]
    assert_well_formed(text)


@pytest.mark.parametrize(
    ("state", "emoji"),
    [
        ("queued", "🟡"),
        ("creating", "🟡"),
        ("updating", "🟡"),
        ("waiting_ci", "🟡"),
        ("ready", "✅"),
        ("failed", "🔴"),
        ("sleeping", "💤"),
        ("destroyed", "⚪"),
        ("not_deployed", "⚪"),
    ],
)
def test_heading_emoji(state: str, emoji: str) -> None:
    assert render_status_comment(view(state)).splitlines()[1].startswith(f"### {emoji} ")


@pytest.mark.parametrize("state", STATES)
def test_url_shown_only_when_ready(state: str) -> None:
    text = render_status_comment(view(state))
    if state == "ready":
        assert f"[{URL}]({URL})" in text
    else:
        assert "pr-12.preview.example.com" not in text
        assert "| **Environment** | — |" in text


def test_ready_table_rows() -> None:
    text = render_status_comment(view("ready"))
    assert "| **Status** | Ready |" in text
    assert "| **Commit** | `a1b2c3d` |" in text
    assert "| **Environment id** | `web-pr-12` |" in text
    assert "| **Silo** | `web-default` |" in text
    assert "| **Expires** | in 3h 5m (2024-05-01 15:05 UTC)" in text
    assert "| **Logs** | [run log](https://runbot.example.com/runs/7) |" in text
    assert "Updated 2024-05-01 12:00 UTC" in text


def test_updating_shows_both_shas() -> None:
    text = render_status_comment(view("updating", head_sha=HEAD))
    assert "| **Commit** | `a1b2c3d` → updating to `ffeeddc` |" in text


def test_same_sha_shows_no_update() -> None:
    assert "updating to" not in render_status_comment(view("updating"))


def test_unsafe_urls_are_not_linked() -> None:
    for bad in ("javascript:alert(1)", "data:text/html,x", "https://x.example/a b", "ftp://x"):
        text = render_status_comment(view("ready", url=bad, log_url=bad))
        assert "javascript:" not in text and "data:text" not in text
        assert "| **Environment** | — |" in text
        assert "**Logs**" not in text


def test_url_breaking_characters_are_encoded() -> None:
    url = "https://x.example/a)b|c<d>`e"
    text = render_status_comment(view("ready", url=url))
    assert "(https://x.example/a%29b%7Cc%3Cd%3E%60e)" in text
    assert_well_formed(text)


def test_expiry_warning_line() -> None:
    text = render_status_comment(view("ready", warning=True))
    assert "⚠️" in text
    assert f"`{PREFIX} extend 4h`" in text
    assert "⚠️" not in render_status_comment(view("ready"))


def test_expiry_warning_line_suggests_what_the_max_lifetime_allows() -> None:
    expires = NOW + timedelta(minutes=30)

    def warning_line(max_expires_at: datetime) -> str:
        text = render_status_comment(
            view("ready", warning=True, expires_at=expires, max_expires_at=max_expires_at)
        )
        (line,) = [line for line in text.splitlines() if line.startswith("> ⚠️")]
        return line

    assert f"`{PREFIX} extend 2h`" in warning_line(expires + timedelta(hours=2))
    at_limit = warning_line(expires)
    assert "maximum lifetime" in at_limit and f"{PREFIX} extend" not in at_limit


def test_sleeping_points_at_wake() -> None:
    assert f"`{PREFIX} wake`" in render_status_comment(view("sleeping"))


def test_expired_destroyed_mentions_redeploy() -> None:
    text = render_status_comment(view("destroyed", reason="expired"))
    assert "expired" in text
    assert f"`{PREFIX} redeploy`" in text
    assert "**Expires**" not in text


def test_closed_destroyed_does_not_offer_redeploy_hint() -> None:
    text = render_status_comment(view("destroyed", reason="closed"))
    assert "| **Status** | Destroyed — closed |" in text
    assert "to bring it back" not in text


def test_footer_lists_commands_and_slug() -> None:
    text = render_status_comment(view("ready"))
    for name in VOCABULARY.names:
        assert f"`{PREFIX} {name}" in text
    assert "`@runbot-dev status`" in text
    assert "<details><summary>Commands</summary>" in text


def test_footer_without_slug_or_commands() -> None:
    assert "@runbot-dev" not in render_status_comment(view("ready", app_slug=None))
    off = render_status_comment(view("ready", warning=True, commands_available=False))
    assert f"{PREFIX} help" not in off
    assert f"{PREFIX} extend" not in off
    assert "not available" in off


def test_naive_datetime_is_rejected() -> None:
    with pytest.raises(ValueError, match="timezone-aware"):
        render_status_comment(view("ready", now=datetime(2024, 5, 1, 12, 0)))


# --- failures and their log tail ----------------------------------------------------------


def test_failed_includes_tail_in_details() -> None:
    tail = ("Planning...", "Error: creating bucket: AccessDenied", "exit status 1")
    text = render_status_comment(view("failed", reason="apply failed", log_tail=tail))
    details = text[text.index("<details><summary>Last log lines</summary>") :]
    block = details[: details.index("</details>")]
    assert "```text\nPlanning...\nError: creating bucket: AccessDenied\nexit status 1\n```" in block
    assert "| **Status** | Failed — apply failed |" in text
    assert_well_formed(text)


def test_failed_without_tail_says_so() -> None:
    text = render_status_comment(view("failed"))
    assert "No engine output was captured." in text
    assert_well_formed(text)


def test_tail_only_for_failed() -> None:
    text = render_status_comment(view("ready", log_tail=("secret-ish noise",)))
    assert "secret-ish noise" not in text


def test_megabyte_tail_keeps_last_lines_under_limit() -> None:
    tail = tuple(f"line {i:06d} " + "x" * 40 for i in range(20_000))  # ~1 MB
    text = render_status_comment(view("failed", log_tail=tail))
    assert len(text) < MAX_COMMENT_CHARS
    assert tail[-1] in text
    assert tail[-2] in text
    assert tail[0] not in text
    assert "earlier line(s) omitted" in text
    # What is kept is a contiguous run ending at the last line.
    kept = [line for line in text.splitlines() if line.startswith("line ")]
    first = int(kept[0].split()[1])
    assert kept == list(tail[first:])
    assert_well_formed(text)


def test_single_megabyte_line_and_huge_reason() -> None:
    text = render_status_comment(
        view(
            "failed", reason="r" * 200_000, log_tail=("y" * 1_000_000,), environment_id="e" * 10**5
        )
    )
    assert len(text) < MAX_COMMENT_CHARS
    assert_well_formed(text)


def test_huge_reason_under_limit() -> None:
    for state in STATES:
        text = render_status_comment(view(state, reason="<a>@x`|" * 30_000))  # 210 KB
        assert len(text) < MAX_COMMENT_CHARS
        assert_well_formed(text)


def test_backtick_fences_in_tail_are_neutralised() -> None:
    tail = ("before", "```", "```python", "  ````", "~~~", "inline ``` run", "after")
    text = render_status_comment(view("failed", log_tail=tail))
    assert text.count("```") == 2
    assert fence_lines(text) == ["```text", "```"]
    assert "before" in text and "after" in text
    assert_well_formed(text)


def test_details_tags_in_tail_cannot_close_ours() -> None:
    tail = ("</details>", "<details><summary>fake</summary>", "<!-- runbot:status -->")
    text = render_status_comment(view("failed", log_tail=tail))
    assert_well_formed(text)


# --- escaping -----------------------------------------------------------------------------


def test_mention_in_reason_is_not_live() -> None:
    text = render_status_comment(view("failed", reason="ping @someone and @everyone"))
    assert "@someone" not in text
    assert "@everyone" not in text
    assert f"@{ZWJ}someone" in text


def test_hostile_reason_cannot_break_layout() -> None:
    reason = "</details><script>alert(1)</script>\n\n# heading\n| a | b |\n```\n[x](javascript:1)"
    text = render_status_comment(view("failed", reason=reason, log_tail=("x",)))
    assert "<script>" not in text
    assert "&lt;script&gt;" in text
    assert "[x](javascript" not in text
    assert "\\[x\\](javascript:1)" in text
    assert "\n# heading" not in text
    assert_well_formed(text)


def test_odd_ids_fall_back_to_escaped_text() -> None:
    text = render_status_comment(view("ready", environment_id="a`b|c\n@d", silo="<s>"))
    assert "| **Environment id** | a\\`b\\|c @" + ZWJ + "d |" in text
    assert "| **Silo** | &lt;s&gt; |" in text


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("feature/login", "feature/login"),
        ("fix_*bold*", "fix\\_\\*bold\\*"),
        ("a\nb\r\nc", "a b c"),
        ("`code`", "\\`code\\`"),
        ("[x](y)", "\\[x\\](y)"),
        ("<b>&", "&lt;b&gt;&amp;"),
        ("- item", "\\- item"),
        ("1. item", "1\\. item"),
        ("#12", f"\\#{ZWJ}12"),
        ("@team", f"@{ZWJ}team"),
        ("a|b", "a\\|b"),
        ("\u202eevil", "evil"),
    ],
)
def test_escape_markdown_inline(raw: str, expected: str) -> None:
    assert escape_markdown_inline(raw) == expected


# --- other comments -----------------------------------------------------------------------


def test_config_error_comment() -> None:
    with pytest.raises(ConfigError) as caught:
        parse_repo_config("stack: local\nttl: {idle: 4x}\n")
    problem = caught.value.markdown()
    text = render_config_error(problem, docs_url="https://runbot.example.com/docs/config")
    assert text.splitlines()[0] == CONFIG_MARKER
    assert sum(line.startswith("#") for line in text.splitlines()) == 1
    assert "ttl.idle" in text
    assert "```yaml" in text and text.count("```") % 2 == 0
    assert "](https://runbot.example.com/docs/config)" in text
    assert MARKER not in text


def test_config_error_without_or_with_bad_docs_url() -> None:
    for docs in (None, "javascript:alert(1)"):
        text = render_config_error("**Problem:** broken", docs_url=docs)
        assert text.startswith(CONFIG_MARKER + "\n")
        assert "javascript" not in text
        assert ".runbot.yml" in text


def test_config_error_is_capped() -> None:
    text = render_config_error("```yaml\n" + "k: v\n" * 100_000)
    assert len(text) < MAX_COMMENT_CHARS
    assert len(fence_lines(text)) % 2 == 0


def test_expiry_warning_comment() -> None:
    text = render_expiry_warning("octocat", "web-pr-12", NOW + timedelta(minutes=45), NOW)
    assert "@octocat" in text
    assert "in 45m" in text
    assert "2024-05-01 12:45 UTC" in text
    assert f"{PREFIX} extend 4h" in text
    assert "`web-pr-12`" in text
    assert not text.startswith(MARKER)


def test_expiry_warning_comment_near_the_max_lifetime() -> None:
    expires = NOW + timedelta(minutes=45)
    short = render_expiry_warning(
        "octocat", "web-pr-12", expires, NOW, max_expires_at=expires + timedelta(minutes=90)
    )
    assert f"{PREFIX} extend 1h\n" in short
    over = render_expiry_warning("octocat", "web-pr-12", expires, NOW, max_expires_at=expires)
    assert f"{PREFIX} extend" not in over
    assert "maximum lifetime" in over and f"`{PREFIX} redeploy`" in over


def test_expiry_warning_with_odd_author_pings_nobody() -> None:
    text = render_expiry_warning("x @everyone", "e", NOW + timedelta(minutes=5), NOW)
    assert "@everyone" not in text


def test_reply() -> None:
    text = render_reply("Extended `web-pr-12`", "Now expires **in 4h**.")
    assert text.startswith("### Extended \\`web-pr-12\\`\n")
    assert "Now expires **in 4h**." in text
    hijack = render_reply("t", MARKER + "\nlooks like the status comment")
    assert MARKER not in hijack
    assert len(render_reply("t" * 10**6, "b" * 10**6)) < MAX_COMMENT_CHARS


# --- deployment status --------------------------------------------------------------------


@pytest.mark.parametrize(
    ("state", "expected"),
    [
        ("queued", "queued"),
        ("waiting_ci", "in_progress"),
        ("creating", "in_progress"),
        ("updating", "in_progress"),
        ("destroying", "in_progress"),
        ("ready", "success"),
        ("failed", "failure"),
        ("sleeping", "inactive"),
        ("destroyed", "inactive"),
        ("not_deployed", "inactive"),
    ],
)
def test_deployment_state_mapping(state: str, expected: str) -> None:
    result, description = deployment_state(view(state, reason="x\n" * 500))
    assert result == expected
    assert 0 < len(description) <= 140
    assert "\n" not in description


def test_deployment_state_description_carries_reason() -> None:
    assert deployment_state(view("failed", reason="apply failed")) == (
        "failure",
        "Failed: apply failed",
    )
    assert deployment_state(view("ready")) == ("success", "Ready")


def test_deployment_state_unknown_raises() -> None:
    with pytest.raises(ValueError, match="bogus"):
        deployment_state(view("bogus"))


# --- properties ---------------------------------------------------------------------------

NASTY = st.sampled_from(
    [
        "</details>",
        "<details><summary>x</summary>",
        "<script>alert(1)</script>",
        "@everyone",
        "```",
        "````",
        "~~~",
        "| a | b |",
        "\\|",
        "\\",
        "<!-- runbot:status -->",
        "\u202e\u200b\x00\r\n",
        "[x](javascript:alert(1))",
        "# h\n- l\n> q",
        "$x$",
    ]
)
TEXT = st.one_of(st.text(max_size=300), NASTY, st.lists(NASTY, max_size=8).map("".join))
OPTIONAL = st.none() | TEXT


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    state=st.sampled_from((*STATES, "bogus")),
    reason=OPTIONAL,
    log_tail=st.lists(TEXT, max_size=20).map(tuple),
    environment_id=OPTIONAL,
    silo=OPTIONAL,
    url=OPTIONAL,
    deployed_sha=OPTIONAL,
    head_sha=OPTIONAL,
    log_url=OPTIONAL,
    app_slug=OPTIONAL,
    repository=TEXT,
    warning=st.booleans(),
    commands_available=st.booleans(),
)
def test_render_never_breaks(**fields: object) -> None:
    text = render_status_comment(view(**fields))  # type: ignore[arg-type]
    assert_well_formed(text)


@settings(max_examples=50, deadline=None)
@given(
    reason=st.text(min_size=1, max_size=40).map(lambda s: s * 5_000),
    tail=st.text(min_size=1, max_size=40).map(lambda s: s * 200),
    url=st.text(min_size=1, max_size=20).map(lambda s: "https://x.example/" + s * 200),
)
def test_render_large_inputs_stay_under_limit(reason: str, tail: str, url: str) -> None:
    """Worst cases: every escaped character grows (``&lt;``, percent-encoding) at full length."""
    big = view("failed", reason=reason, log_tail=(tail,) * 300, url=url, log_url=url)
    assert_well_formed(render_status_comment(big))
    assert_well_formed(render_status_comment(dataclasses.replace(big, state="ready")))


@given(TEXT)
def test_escape_is_inert(raw: str) -> None:
    out = escape_markdown_inline(raw)
    assert not re.search(r"[\n\r\x0b\x0c\x1c-\x1e\x85\u2028\u2029]", out)
    assert "<" not in out and ">" not in out
    assert unescaped(out, "`") == 0
    assert unescaped(out, "|") == 0
    assert unescaped(out, "[") == 0
    assert all(out[i + 1 : i + 2] == ZWJ for i, ch in enumerate(out) if ch == "@")


def test_ready_says_how_long_it_took_and_where_the_time_went() -> None:
    shown = render_status_comment(
        view(ready_phases=(("queue", 0.4), ("init", 1.25), ("apply", 75.0), ("output", 0.2)))
    )
    assert (
        "| **Ready in** | 1 min 17 s (queue 0.4 s · init 1.2 s · apply 1 min 15 s · output" in shown
    )
    # Only a ready environment says it; a name a pod made up is escaped, not rendered.
    assert "Ready in" not in render_status_comment(view("updating", ready_phases=(("a", 1.0),)))
    odd = render_status_comment(view(ready_phases=(("<b>x</b>", 1.0),)))
    assert "<b>" not in odd and "&lt;b&gt;x&lt;/b&gt; 1.0 s" in odd
