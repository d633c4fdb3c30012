"""The ``/runbot`` PR-comment command grammar.

A comment is a command only when its whole body is one line starting with ``/runbot`` or
``@<app-slug>``. Everything else (quotes, code blocks, prose that mentions a command) is
silently ignored, because a bot that reacts to a quoted example destroys environments nobody
asked it to. Parse failures are returned as values so the handler can reply with help, and
the parser never raises: it runs on every comment anyone posts.
"""

from __future__ import annotations

import difflib
import re
import unicodedata
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Protocol

from app.github.comment import PREFIX
from app.ttl.durations import DurationError, parse_duration

__all__ = [
    "MAX_BODY_CHARS",
    "PREFIX",
    "Command",
    "CommandError",
    "Spelling",
    "Vocabulary",
]

#: GitHub caps comment bodies at 65,536 characters; anything longer is not a real command.
MAX_BODY_CHARS = 65_536

_SHOW_LIMIT = 40
_COMMIT = re.compile(r"[0-9a-f]{7,40}")
_SUGGEST_MAX_LEN = 32


class Spelling(Protocol):
    """How a command is written and explained (a `registry.CommandSpec` is one)."""

    @property
    def name(self) -> str: ...
    @property
    def syntax(self) -> str: ...
    @property
    def summary(self) -> str: ...
    @property
    def example(self) -> str: ...
    @property
    def takes_duration(self) -> bool: ...
    @property
    def takes_commit(self) -> bool: ...
    @property
    def aliases(self) -> tuple[str, ...]: ...


# Common Latin look-alikes from Cyrillic and Greek, used only to *suggest* what the person
# probably meant; such text is never accepted as a command.
_CONFUSABLES = str.maketrans(
    # Cyrillic then Greek code points ...
    "\u0430\u0432\u0441\u0501\u0435\u04bb\u0456\u0458"
    "\u043a\u04cf\u043c\u043d\u043e\u0440\u051b\u0433"
    "\u0455\u0442\u0446\u0475\u051d\u0445\u0443\u0410"
    "\u0412\u0421\u0415\u041d\u0406\u0408\u041a\u041c"
    "\u041e\u0420\u0405\u0422\u0425\u0423\u03b1\u03b5"
    "\u03b9\u03ba\u03bd\u03bf\u03c1\u03c4\u03c5\u03c7"
    "\u0391\u0392\u0395\u0397\u0399\u039a\u039c\u039d"
    "\u039f\u03a1\u03a4\u03a5\u03a7\u0396",
    # ... and the ASCII letter each one imitates, in the same order.
    "abcdehijklmhopqrstuvwxyABCEHIJKMOPSTXYaeikvoptuxABEHIKMNOPTYXZ",
)


@dataclass(frozen=True)
class Command:
    """A well-formed command; ``raw`` is the comment line it came from (for logs and replies)."""

    name: str
    argument: timedelta | None = None
    raw: str = ""
    commit: str | None = None  # a commit the command names (lowercase hex, 7 to 40 digits)


@dataclass(frozen=True)
class CommandError:
    """A comment addressed to runbot that is not a valid command: a value that renders into a reply.

    ``usage`` is help for the command the person tried (the full help if unknown);
    ``suggestion`` is what to type after ``/runbot`` instead, when there is a good guess.
    """

    message: str
    usage: str
    suggestion: str | None = None

    def markdown(self) -> str:
        """The reply comment body: the problem, the suggestion if any, then the usage."""
        parts = [self.message]
        if self.suggestion:
            parts.append(f"Did you mean `{PREFIX} {self.suggestion}`?")
        parts.append(self.usage)
        return "\n\n".join(parts)


def _code(text: str) -> str:
    """Quote user text as inline code: truncated, and unable to break out of the code span
    (which also keeps an echoed ``@someone`` from pinging them)."""
    if len(text) > _SHOW_LIMIT:
        text = text[: _SHOW_LIMIT - 1] + "…"
    return "`" + text.replace("`", "'") + "`"


def _prefixes(app_slug: str | None) -> frozenset[str]:
    prefixes = {PREFIX}
    if isinstance(app_slug, str):
        slug = app_slug.removeprefix("@")
        # A blank or odd slug must not turn a bare "@" (or similar) into our prefix.
        if slug and slug.isascii() and slug.isprintable() and not any(c.isspace() for c in slug):
            prefixes.add("@" + slug.lower())
    return frozenset(prefixes)


def _describe(ch: str) -> str:
    return f"'{ch}' (U+{ord(ch):04X} {unicodedata.name(ch, 'unnamed character')})"


def _non_ascii_error(rest: str, vocabulary: Vocabulary) -> CommandError:
    """Look-alike letters (Cyrillic or fullwidth) must never execute, but deserve a hint."""
    found: list[str] = []
    for ch in rest:
        if not ch.isascii() and ch not in found:
            found.append(ch)
            if len(found) == 3:
                break
    guess = unicodedata.normalize("NFKC", rest).translate(_CONFUSABLES)
    suggestion = None
    if guess.isascii():
        words = guess.lower().split()
        if words and vocabulary.knows(words[0]):
            suggestion = " ".join(words)
    message = (
        "Found non-ASCII characters in the command: "
        + ", ".join(_describe(ch) for ch in found)
        + ". runbot commands must be typed in plain ASCII, so look-alike letters "
        "are not treated as a command."
    )
    return CommandError(message=message, usage=vocabulary.usage(), suggestion=suggestion)


def _parse_words(words: list[str], raw: str, vocabulary: Vocabulary) -> Command | CommandError:
    word = words[0].lower()
    args = words[1:]
    name = vocabulary.aliases.get(word, word)
    if name not in vocabulary.names:
        suggestion = None
        if len(word) <= _SUGGEST_MAX_LEN:
            known = (*vocabulary.names, *vocabulary.aliases)
            close = difflib.get_close_matches(word, known, n=1, cutoff=0.6)
            suggestion = close[0] if close else None
        return CommandError(
            message=f"Unknown command {_code(words[0])}.",
            usage=vocabulary.usage(),
            suggestion=suggestion,
        )
    line = vocabulary.usage_line(name)
    if vocabulary.spelling(name).takes_commit:
        return _commit_argument(name, args, raw, line)
    if not vocabulary.spelling(name).takes_duration:
        if args:
            return CommandError(
                message=f"`{name}` takes no arguments, but got {_code(' '.join(args))}.",
                usage=line,
                suggestion=name,
            )
        return Command(name=name, raw=raw)
    if not args:
        return CommandError(
            message=f"`{name}` needs a duration, e.g. `{PREFIX} {name} 4h`.", usage=line
        )
    if len(args) > 1:
        suggestion = None
        try:
            joined = "".join(args)
            parse_duration(joined)
            suggestion = f"{name} {joined.lower()}"
        except DurationError:
            pass
        return CommandError(
            message=f"`{name}` takes exactly one duration, but got {_code(' '.join(args))}.",
            usage=line,
            suggestion=suggestion,
        )
    try:
        duration = parse_duration(args[0])
    except DurationError as exc:
        return CommandError(message=f"Can't {name} by {_code(args[0])}: {exc}.", usage=line)
    return Command(name=name, argument=duration, raw=raw)


def _commit_argument(name: str, args: list[str], raw: str, line: str) -> Command | CommandError:
    """An optional commit: none, or one SHA prefix of 7 to 40 hexadecimal digits."""
    if not args:
        return Command(name=name, raw=raw)
    if len(args) > 1:
        return CommandError(
            message=f"`{name}` takes at most one commit, but got {_code(' '.join(args))}.",
            usage=line,
            suggestion=name,
        )
    commit = args[0].lower()
    if not _COMMIT.fullmatch(commit):
        return CommandError(
            message=f"{_code(args[0])} is not a commit: give 7 to 40 hexadecimal digits of its"
            " SHA, as GitHub shows it.",
            usage=line,
        )
    return Command(name=name, commit=commit, raw=raw)


@dataclass(frozen=True)
class Vocabulary:
    """The commands runbot answers to, in the order help lists them; made from the registry."""

    words: Sequence[Spelling]
    _by_name: dict[str, Spelling] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "_by_name", {word.name: word for word in self.words})

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(self._by_name)

    @property
    def aliases(self) -> dict[str, str]:
        """Accepted spellings that map onto a canonical command name (`stop` → `destroy`)."""
        return {alias: word.name for word in self.words for alias in word.aliases}

    def spelling(self, name: str) -> Spelling:
        return self._by_name[name]

    def knows(self, word: str) -> bool:
        return word in self._by_name or word in self.aliases

    def usage_line(self, name: str) -> str:
        word = self._by_name[name]
        return f"- `{PREFIX} {word.syntax}` — {word.summary}. Example: `{PREFIX} {word.example}`"

    def usage(self) -> str:
        """Markdown help listing every command with a one-line explanation and an example."""
        lines = [
            "**runbot commands** — post a comment containing just one of these lines "
            "(or start it with `@` and the app's name instead of `/runbot`):",
            "",
            *(self.usage_line(name) for name in self.names),
        ]
        return "\n".join(lines)

    def parse(self, body: object, app_slug: str | None = None) -> Command | CommandError | None:
        """Read a PR comment: a Command, a CommandError to reply with, or None to ignore it.

        ``app_slug`` (e.g. ``runbot-dev``) additionally accepts ``@runbot-dev`` as the prefix.
        """
        if not isinstance(body, str) or len(body) > MAX_BODY_CHARS:
            return None
        line = body.strip()
        if not line or len(line.splitlines()) != 1:
            # Empty, or several lines: commands must stand alone, which also rules out fenced
            # code blocks; a "> /runbot ..." quote fails the prefix check below.
            return None
        first = line.split(maxsplit=1)[0]
        # isascii() first: str.lower() maps some non-ASCII letters onto ASCII (Kelvin sign).
        if not first.isascii() or first.lower() not in _prefixes(app_slug):
            return None
        rest = line[len(first) :]
        if not rest.isascii():
            return _non_ascii_error(rest, self)
        words = rest.split()
        if not words:
            return CommandError(message="No command given after the prefix.", usage=self.usage())
        return _parse_words(words, line, self)
