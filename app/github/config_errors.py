"""How a rejected ``.runbot.yml`` is worded: the field, the problem, a corrected example."""

from __future__ import annotations

import difflib
import re
from collections.abc import Callable, Sequence
from typing import Any

__all__ = ["CONFIG_FILENAME", "ConfigError"]

CONFIG_FILENAME = ".runbot.yml"

_SHOW_LIMIT = 60
_MAX_OTHERS_SHOWN = 5

#: The `stack` union's discriminator tags (config.StackSpec): never something the user wrote.
_STACK_TAGS = frozenset({"name", "git", "local"})

# A corrected example per top-level field, shown in the PR comment next to the problem.
_EXAMPLES: dict[str, str] = {
    "stack": (
        "stack: local\n"
        "# or a stack kept in this repository:\n"
        "# stack: {path: .runbot/stacks/web}\n"
        "# or one from another git repository:\n"
        "# stack: {git: https://github.com/acme/stacks.git, ref: main, path: web}"
    ),
    "silo": "stack: local\nsilo: local-default",
    "vars": "stack: local\nvars:\n  greeting: hi\n  replicas: 2\n  features: [search, billing]",
    "ttl": "stack: local\nttl:\n  idle: 48h        # destroy after 48h without pushes\n"
    "  max: 7d          # never keep an environment longer than 7d\n"
    "  warn_before: 1h  # comment 1h before it expires\n"
    "  sleep_after: 2h  # sleep after 2h without pushes, commands or traffic",
    "drafts": "stack: local\ndrafts: false",
    "forks": "stack: local\nforks: off  # or: approve",
    "labels": "stack: local\nlabels:\n  require: [preview]",
    "max_environments": "stack: local\nmax_environments: 10  # between 1 and 1000",
    "wait_for_ci": "stack: local\nwait_for_ci: false",
    "comments": "stack: local\ncomments: quiet  # or: all (the default)",
    "deployments": "stack: local\ndeployments: keep  # or: delete (the default)",
}
_DOCUMENT_EXAMPLE = "stack: local\nttl:\n  idle: 48h\n  max: 7d\nmax_environments: 10"


def _show(value: object) -> str:
    """Echo a bad value as inline code: bounded length, no way out of the code span (so an
    echoed ``@someone`` cannot ping anyone)."""
    text = value if isinstance(value, str) else repr(value)
    text = " ".join(text.split())
    if len(text) > _SHOW_LIMIT:
        text = text[: _SHOW_LIMIT - 1] + "…"
    return "`" + text.replace("`", "'") + "`"


class _Problem(ValueError):
    """A validator failure deeper than pydantic's location (e.g. inside ``vars``)."""

    def __init__(self, message: str, subpath: Sequence[str | int] = ()) -> None:
        super().__init__(message)
        self.subpath = tuple(subpath)


class ConfigError(ValueError):
    """``.runbot.yml`` was rejected; ``markdown()`` is ready to post as a PR comment.

    ``field`` is a dotted path (``ttl.idle``, ``vars.greeting``), or "" when the problem is
    the document itself (YAML syntax, size); ``line`` is set for YAML syntax errors.
    """

    def __init__(
        self,
        field: str,
        problem: str,
        *,
        line: int | None = None,
        example: str | None = None,
        others: Sequence[tuple[str, str]] = (),
    ) -> None:
        self.field = field
        self.problem = problem
        self.line = line
        self.example = example if example is not None else _example_for(field)
        self.others = tuple(others)
        self.commit: str | None = None  # the default-branch commit the file was read at
        where = field or "document"
        if line is not None:
            where += f" (line {line})"
        super().__init__(f"{CONFIG_FILENAME}: {where}: {problem}")

    def markdown(self) -> str:
        """A PR comment: which field, what is wrong, and a corrected example."""
        if self.field:
            where = _show(self.field)
        elif self.line is not None:
            where = f"line {self.line}"
        else:
            where = "the whole file"
        lines = [
            f"### runbot could not use `{CONFIG_FILENAME}`",
            "",
            f"**Where:** {where}",
            f"**Problem:** {self.problem}",
            "",
            "A valid example:",
            "",
            "```yaml",
            self.example,
            "```",
        ]
        if self.others:
            lines += ["", "Also found:"]
            lines += [
                f"- {_show(field)}: {problem}" if field else f"- {problem}"
                for field, problem in self.others[:_MAX_OTHERS_SHOWN]
            ]
            if len(self.others) > _MAX_OTHERS_SHOWN:
                lines.append(f"- …and {len(self.others) - _MAX_OTHERS_SHOWN} more")
        return "\n".join(lines)


def _example_for(field: str) -> str:
    top = re.split(r"[.\[]", field, maxsplit=1)[0] if field else ""
    return _EXAMPLES.get(top, _DOCUMENT_EXAMPLE)


def _field_path(loc: Sequence[Any]) -> str:
    path = ""
    parts = list(loc)
    if len(parts) > 1 and parts[0] == "stack" and parts[1] in _STACK_TAGS:
        del parts[1]  # discriminator tag, not something the user wrote
    for part in parts:
        if isinstance(part, int) and path:
            path += f"[{part}]"
        else:
            path += ("." if path else "") + str(part)
    return path


def _describe(error: Any, known_keys: Callable[[str], list[str]]) -> tuple[str, str, str | None]:
    """(field, problem, example override) for one pydantic error.

    `known_keys(parent)` names the settings a mapping accepts; the schema owns that answer.
    """
    loc = list(error["loc"])
    kind = error["type"]
    cause = error.get("ctx", {}).get("error")
    if isinstance(cause, _Problem):
        loc += list(cause.subpath)
    field = _field_path(loc)
    if kind == "missing":
        return field, "is required", None
    if kind in ("extra_forbidden", "invalid_key"):
        key = str(loc[-1]) if loc else ""
        parent = _field_path(loc[:-1])
        suggestion = difflib.get_close_matches(key, known_keys(parent), n=1, cutoff=0.6)
        problem = f"{_show(key)} is not a known setting."
        example = None
        if suggestion:
            problem += f" Did you mean `{suggestion[0]}`?"
            if not parent:
                example = _EXAMPLES.get(suggestion[0])
        known = known_keys(parent)
        if known:
            problem += " Known settings here: " + ", ".join(f"`{k}`" for k in known) + "."
        return field, problem, example
    message = str(error["msg"])
    if kind == "value_error":
        message = str(cause) if cause is not None else message.removeprefix("Value error, ")
        return field, message, None
    value = error.get("input")
    return field, f"{message}, got {_show(value)} ({_yaml_kind(value)})", None


def _yaml_kind(value: object) -> str:
    """Name a value's type the way a YAML author thinks of it."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int | float):
        return "number"
    if isinstance(value, str):
        return "text"
    if isinstance(value, list):
        return "list"
    if isinstance(value, dict):
        return "mapping"
    return type(value).__name__
