"""The `/runbot` comment grammar: what counts as a command, and what each mistake replies."""

from __future__ import annotations

import time
from datetime import timedelta

import pytest
from hypothesis import assume, given
from hypothesis import strategies as st

from app.commands.grammar import Command, CommandError
from app.commands.registry import VOCABULARY
from app.ttl.durations import MAX_DURATION, format_duration

SLUG = "runbot-dev"
COMMANDS = VOCABULARY.names
ALIASES = VOCABULARY.aliases
parse_comment = VOCABULARY.parse
usage = VOCABULARY.usage


def _error(body: str, slug: str | None = SLUG) -> CommandError:
    result = parse_comment(body, slug)
    assert isinstance(result, CommandError), result
    return result


# --- commands that parse ------------------------------------------------------------------


@pytest.mark.parametrize("name", [c for c in COMMANDS if c != "extend"])
def test_each_plain_command(name: str) -> None:
    assert parse_comment(f"/runbot {name}") == Command(name=name, raw=f"/runbot {name}")


def test_extend_with_duration() -> None:
    assert parse_comment("/runbot extend 1h30m") == Command(
        name="extend", argument=timedelta(hours=1, minutes=30), raw="/runbot extend 1h30m"
    )


def test_mixed_case_runbot_extend_4h() -> None:
    assert parse_comment("/RunBot Extend 4H") == Command(
        name="extend", argument=timedelta(hours=4), raw="/RunBot Extend 4H"
    )


def test_stop_alias_means_destroy() -> None:
    assert parse_comment("/runbot stop") == Command(name="destroy", raw="/runbot stop")


def test_at_slug_prefix() -> None:
    assert parse_comment("@runbot-dev status", SLUG) == Command(
        name="status", raw="@runbot-dev status"
    )


def test_at_slug_prefix_is_case_insensitive() -> None:
    assert parse_comment("@RunBot-Dev wake", SLUG) == Command(name="wake", raw="@RunBot-Dev wake")


def test_at_slug_given_with_leading_at() -> None:
    assert parse_comment("@runbot-dev wake", "@runbot-dev") == Command(
        name="wake", raw="@runbot-dev wake"
    )


def test_surrounding_whitespace_and_tabs_are_ignored() -> None:
    body = "\n\n  /runbot \t extend\t2d  \r\n"
    assert parse_comment(body) == Command(
        name="extend", argument=timedelta(days=2), raw="/runbot \t extend\t2d"
    )


def test_slash_prefix_works_with_a_slug_too() -> None:
    assert parse_comment("/runbot help", SLUG) == Command(name="help", raw="/runbot help")


# --- not addressed to us: None --------------------------------------------------------------


@pytest.mark.parametrize(
    "body",
    [
        "",
        "   \n\t",
        "LGTM!",
        "/runbotextend 4h",  # no space after the prefix: someone else's prefix
        "/runbot-dev status",
        "runbot extend 4h",
        "please /runbot destroy",
        "`/runbot destroy`",
        "**/runbot destroy**",
    ],
)
def test_not_a_command(body: str) -> None:
    assert parse_comment(body, SLUG) is None


def test_runbotextend_without_space_is_not_our_prefix() -> None:
    assert parse_comment("/runbotextend") is None


def test_command_in_a_fenced_block_is_ignored() -> None:
    assert parse_comment("```\n/runbot destroy\n```") is None
    assert parse_comment("~~~\n/runbot destroy\n~~~") is None


def test_command_on_the_second_line_is_ignored() -> None:
    assert parse_comment("Thanks for the preview!\n/runbot destroy") is None


def test_command_followed_by_more_lines_is_ignored() -> None:
    assert parse_comment("/runbot destroy\nbecause it is broken") is None


@pytest.mark.parametrize("separator", ["\r", "\u2028", "\x85"])
def test_other_line_breaks_also_make_it_multiline(separator: str) -> None:
    assert parse_comment(f"hello{separator}/runbot destroy") is None


def test_quoted_command_is_ignored() -> None:
    assert parse_comment("> /runbot destroy") is None
    assert parse_comment("> /runbot destroy\n\nWhy did you do that?") is None


def test_other_slug_is_ignored() -> None:
    assert parse_comment("@runbot-dev2 status", SLUG) is None
    assert parse_comment("@runbot status", SLUG) is None


def test_at_prefix_without_slug_is_ignored() -> None:
    assert parse_comment("@runbot-dev status") is None


@pytest.mark.parametrize("slug", ["", "@", " ", "two words"])
def test_blank_or_odd_slug_does_not_create_a_prefix(slug: str) -> None:
    assert parse_comment("@ status", slug) is None
    assert parse_comment("@ two words", slug) is None


def test_lookalike_prefix_is_ignored() -> None:
    assert parse_comment("/runb\u043et extend 4h") is None  # Cyrillic o in the prefix
    assert parse_comment("\uff0frunbot extend 4h") is None  # fullwidth solidus


def test_lookalike_that_lowercases_to_ascii_is_ignored() -> None:
    # KELVIN SIGN lowercases to ASCII "k": a case-insensitive compare alone would accept it.
    assert "\u212a".lower() == "k"
    assert parse_comment("@\u212aube-bot status", "kube-bot") is None
    assert parse_comment("@kube-bot status", "kube-bot") == Command(
        "status", None, "@kube-bot status"
    )


def test_non_string_body_is_ignored() -> None:
    assert parse_comment(None) is None  # type: ignore[arg-type]


# --- addressed to us but wrong: CommandError -----------------------------------------------


def test_runbot_alone_replies_with_usage() -> None:
    error = _error("/runbot")
    assert error.usage == usage()
    assert error.suggestion is None


def test_at_slug_alone_replies_with_usage() -> None:
    assert _error("@runbot-dev").usage == usage()


def test_unknown_word_suggests_closest_command() -> None:
    error = _error("/runbot destory")
    assert "destory" in error.message
    assert error.suggestion == "destroy"
    assert error.usage == usage()


def test_unknown_word_without_a_close_match_has_no_suggestion() -> None:
    assert _error("/runbot xyzzy").suggestion is None


def test_extend_minus_4h_is_rejected_as_negative() -> None:
    error = _error("/runbot extend -4h")
    assert "negative" in error.message
    assert "extend <duration>" in error.usage


def test_extend_0s_is_rejected_as_zero() -> None:
    assert "must be greater than zero" in _error("/runbot extend 0s").message


def test_extend_99999999w_is_rejected_by_the_ceiling() -> None:
    assert "longer than the 365d ceiling" in _error("/runbot extend 99999999w").message


def test_extend_4x_names_the_valid_units() -> None:
    message = _error("/runbot extend 4x").message
    assert "unknown unit 'x'" in message
    assert "h (hours)" in message


def test_extend_without_duration() -> None:
    assert "needs a duration" in _error("/runbot extend").message


def test_extend_with_split_duration_suggests_joined_form() -> None:
    error = _error("/runbot extend 1h 30m")
    assert "exactly one duration" in error.message
    assert error.suggestion == "extend 1h30m"


def test_extend_with_two_unrelated_words_has_no_suggestion() -> None:
    assert _error("/runbot extend 4h please").suggestion is None


@pytest.mark.parametrize("name", ["status", "destroy", "stop", "help"])
def test_extra_words_after_argumentless_command(name: str) -> None:
    error = _error(f"/runbot {name} now please")
    assert "takes no arguments" in error.message
    assert error.suggestion == ALIASES.get(name, name)


def test_unicode_lookalike_letters_in_command_are_not_executed() -> None:
    error = _error("/runbot \u0435xtend 4h")  # Cyrillic small ie instead of e
    assert "non-ASCII" in error.message
    assert "U+0435" in error.message
    assert error.suggestion == "extend 4h"


def test_fullwidth_command_is_not_executed() -> None:
    error = _error("/runbot \uff44\uff45\uff53\uff54\uff52\uff4f\uff59")  # fullwidth "destroy"
    assert "non-ASCII" in error.message
    assert error.suggestion == "destroy"


def test_non_breaking_space_separator_is_not_accepted() -> None:
    assert "non-ASCII" in _error("/runbot\u00a0destroy").message


def test_echoed_word_cannot_break_out_of_code_span() -> None:
    error = _error("/runbot `@everyone`")
    assert "`'@everyone'`" in error.message


def test_markdown_reply_contains_problem_suggestion_and_usage() -> None:
    reply = _error("/runbot destory").markdown()
    assert "Unknown command `destory`." in reply
    assert "Did you mean `/runbot destroy`?" in reply
    assert reply.endswith(usage())


# --- size limits and speed ------------------------------------------------------------------


@pytest.mark.parametrize(
    "body",
    [
        "/runbot extend " + "1" * 60_000 + "h",
        "/runbot " + "a" * 60_000,
        "/runbot " + "a " * 30_000,
        "/runbot " + "\u0435" * 60_000,
        "x" * 60_000,
        ("/runbot destroy\n" * 4_000)[:60_000],
        "/runbot extend " + "1h" * 30_000,
    ],
    ids=["number", "word", "words", "lookalikes", "prose", "lines", "units"],
)
def test_60kb_comment_is_handled_in_milliseconds(body: str) -> None:
    assert 59_000 < len(body) <= 65_536
    started = time.perf_counter()
    result = parse_comment(body, SLUG)
    elapsed = time.perf_counter() - started
    assert not isinstance(result, Command)
    assert elapsed < 0.05, f"{elapsed:.3f}s"


def test_body_over_65536_chars_is_ignored() -> None:
    assert parse_comment("/runbot status" + " " * 65_536) is None


# --- usage ------------------------------------------------------------------------------------


def test_usage_lists_every_command_with_an_example() -> None:
    text = usage()
    for name in COMMANDS:
        assert f"`/runbot {name}" in text
    for alias in ALIASES:
        assert f"`{alias}`" in text
    assert "`/runbot extend 4h`" in text


def test_usage_examples_parse() -> None:
    for line in usage().splitlines():
        if "Example: `" in line:
            example = line.split("Example: `", 1)[1].rstrip("`")
            assert isinstance(parse_comment(example), Command), example


# --- properties -----------------------------------------------------------------------------

_slugs = st.one_of(st.none(), st.text(max_size=20), st.just(SLUG))


@given(st.text(), _slugs)
def test_never_raises_for_arbitrary_text(body: str, slug: str | None) -> None:
    result = parse_comment(body, slug)
    assert result is None or isinstance(result, Command | CommandError)


@given(st.sampled_from(["/runbot", "/RUNBOT", "@runbot-dev"]), st.text(), _slugs)
def test_never_raises_for_arbitrary_text_after_the_prefix(
    prefix: str, tail: str, slug: str | None
) -> None:
    result = parse_comment(prefix + tail, slug)
    assert result is None or isinstance(result, Command | CommandError)
    if isinstance(result, Command):
        assert result.name in COMMANDS
        assert (result.argument is not None) == (result.name == "extend")
        again = f"/runbot {result.name}"
        if result.argument is not None:
            again += " " + format_duration(result.argument)
        assert parse_comment(again) == Command(result.name, result.argument, again)


def _random_case(draw: st.DrawFn, text: str) -> str:
    flips = draw(st.lists(st.booleans(), min_size=len(text), max_size=len(text)))
    return "".join(ch.upper() if flip else ch for ch, flip in zip(text, flips, strict=True))


@st.composite
def _valid_commands(draw: st.DrawFn) -> tuple[str, Command]:
    """A comment built from the grammar, and the Command it must parse to."""
    gap = st.text(alphabet=" \t", min_size=1, max_size=3)
    edge = st.text(alphabet=" \t\r\n", max_size=3)
    prefix = _random_case(draw, draw(st.sampled_from(["/runbot", "@" + SLUG])))
    word = draw(st.sampled_from([*COMMANDS, *ALIASES]))
    name = ALIASES.get(word, word)
    line = prefix + draw(gap) + _random_case(draw, word)
    argument = None
    if name == "extend":
        seconds = draw(st.integers(1, int(MAX_DURATION.total_seconds())))
        argument = timedelta(seconds=seconds)
        line += draw(gap) + _random_case(draw, format_duration(argument))
    body = draw(edge) + line + draw(edge)
    return body, Command(name=name, argument=argument, raw=body.strip())


@given(_valid_commands())
def test_generated_valid_commands_parse_to_expected(case: tuple[str, Command]) -> None:
    body, expected = case
    assert parse_comment(body, SLUG) == expected


@given(st.text(), _slugs)
def test_text_without_prefix_is_always_ignored(body: str, slug: str | None) -> None:
    first = body.strip().lower()
    assume(not first.startswith("/runbot"))
    assume(not (slug and first.startswith("@" + slug.removeprefix("@").lower())))
    assert parse_comment(body, slug) is None


@given(st.text(), st.sampled_from(["/runbot destroy", "/runbot extend 4h", "@runbot-dev stop"]))
def test_command_after_a_first_line_is_always_ignored(first: str, command: str) -> None:
    assume(first.strip())
    assert parse_comment(f"{first}\n{command}", SLUG) is None
