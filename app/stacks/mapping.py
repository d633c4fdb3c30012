"""Decide which values a silo or instance template receives, and check them.

Pure functions with no I/O: callers write the result into a JSON var file, so
values pass through verbatim (quotes, newlines, `$()` and `;` included).
Only variables the template declares are returned, because Terraform rejects
undeclared variables in a var file; values that would come from the template's
own default are left out, so Terraform applies the default itself.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Mapping, Set
from dataclasses import dataclass
from typing import Any

from app.stacks.model import (
    RUNBOT_INSTANCE_VARIABLES,
    RUNBOT_SILO_VARIABLES,
    StackError,
    Template,
    Variable,
)

__all__ = [
    "RUNBOT_INSTANCE_VARIABLES",
    "RUNBOT_SILO_VARIABLES",
    "MappingError",
    "check_type",
    "instance_inputs",
    "refused_message",
    "refused_repo_vars",
    "silo_inputs",
    "undeclared_names",
]

# cty parses strings to numbers with Go's big.Float.Parse in base 10: an
# optional sign, decimal digits with an optional fraction, an optional decimal
# exponent, or an infinity. No hex, no underscores, no surrounding spaces.
_NUMERIC_STRING = re.compile(r"[+-]?(?:(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?|[Ii]nf)")
# cty accepts exactly these strings for bool (and nothing case-insensitive).
_BOOL_STRINGS = frozenset({"true", "false", "1", "0"})
_LIST_KINDS = frozenset({"list", "set", "tuple"})
_MAP_KINDS = frozenset({"map", "object"})
_TYPE_HEAD = re.compile(r"\s*([a-z]+)")
_RUNBOT_FIX = "runbot provides {name!r} itself: declare the variable with a type that fits"


class MappingError(StackError):
    """A template input cannot be filled or has the wrong type."""


def instance_inputs(
    template: Template,
    runbot: dict[str, Any],
    repo_vars: dict[str, Any],
    silo_outputs: dict[str, Any],
    *,
    settable: frozenset[str] | None = None,
    provided: Set[str] = frozenset(),
) -> dict[str, Any]:
    """Inputs for an instance: runbot values, then silo outputs, then repo `vars`.

    Silo outputs are the operator's facts and repository `vars` only wishes: a `vars` name
    that runbot provides, that the silo outputs (`provided` adds the names its template
    declares, sensitive ones included), or (with a stack manifest) that `settable`
    does not list is an error naming it. A declared variable with none of these and no
    default is an error that names every such variable and how to supply it.
    """
    _check_runbot_keys(runbot, RUNBOT_INSTANCE_VARIABLES, "instance")
    refused = refused_repo_vars(
        repo_vars, settable, RUNBOT_INSTANCE_VARIABLES | set(silo_outputs) | set(provided)
    )
    if refused:
        provided_all = RUNBOT_INSTANCE_VARIABLES | set(silo_outputs) | set(provided)
        raise MappingError(refused_message(refused, provided_all, settable))
    sources = (
        _Source(runbot, _RUNBOT_FIX, reveal=True),
        _Source(silo_outputs, "fix the silo output {name!r} or the variable's type", reveal=False),
        _Source(repo_vars, "fix `vars.{name}` in .runbot.yml", reveal=True),
    )
    return _resolve(
        template,
        sources,
        lambda v: (
            f"the instance template needs a value for variable {v.name!r} ({v.location}): "
            f"set it under `vars:` in .runbot.yml, or add a silo output named {v.name!r}"
        ),
    )


def refused_repo_vars(
    repo_vars: Mapping[str, Any], settable: frozenset[str] | None, provided: Set[str]
) -> list[str]:
    """The `vars` names a repository may not set, sorted."""
    return sorted(
        name
        for name in repo_vars
        if name in provided or (settable is not None and name not in settable)
    )


def refused_message(refused: list[str], provided: Set[str], settable: frozenset[str] | None) -> str:
    """Why each refused `vars` name is refused, and what to do."""
    decided = [name for name in refused if name in provided]
    unlisted = [name for name in refused if name not in provided]
    parts = []
    if decided:
        parts.append(
            ", ".join(f"`vars.{name}`" for name in decided)
            + ": runbot or the silo decides these values"
        )
    if unlisted:
        listed = ", ".join(f"`{name}`" for name in sorted(settable or ())) or "none"
        parts.append(
            ", ".join(f"`vars.{name}`" for name in unlisted)
            + f": the stack's `runbot.yml` does not list them under `repo_vars` (it lists {listed})"
        )
    return (
        "this repository may not set "
        + "; ".join(parts)
        + ". Remove them from `vars` in .runbot.yml, or the stack's owner can list them under"
        " `repo_vars`"
    )


def silo_inputs(
    template: Template,
    runbot: dict[str, Any],
    operator_vars: dict[str, Any],
    secret: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """Inputs for a silo: runbot values (`secret` ones never shown in errors), then the
    operator's vars."""
    _check_runbot_keys({**runbot, **(secret or {})}, RUNBOT_SILO_VARIABLES, "silo")
    sources = (
        _Source(runbot, _RUNBOT_FIX, reveal=True),
        _Source(dict(secret or {}), _RUNBOT_FIX, reveal=False),
        _Source(operator_vars, "fix the operator's silo var {name!r}", reveal=False),
    )
    return _resolve(
        template,
        sources,
        lambda v: (
            f"the silo template needs a value for variable {v.name!r} ({v.location}): "
            "the operator must set it in the silo's vars"
        ),
    )


def undeclared_names(template: Template, values: Mapping[str, Any]) -> list[str]:
    """Names in `values` the template does not declare (ignored by the mapping).

    Useful for warning a repository owner that a `vars:` entry has no effect.
    """
    return sorted(name for name in values if name not in template.variables)


def check_type(variable: Variable, value: Any, *, reveal: bool = True) -> None:
    """Raise MappingError unless Terraform could convert `value` to the declared type.

    Primitives follow cty's conversion rules (number and bool convert to string;
    numeric strings to number; "true"/"false"/"1"/"0" to bool). Collections are
    checked one level deep: list/set/tuple need a list, map/object need a dict.
    null is valid for every type, as in Terraform. The message shows the value
    unless the variable is sensitive or `reveal` is False (messages can end up
    in pull request comments).
    """
    if value is None:
        return
    head = _TYPE_HEAD.match(variable.type)
    kind = head.group(1) if head else "any"
    if kind == "any" or _converts(kind, value):
        return
    raise MappingError(
        f"variable {variable.name!r} ({variable.location}) expects {variable.type}, "
        f"got {_describe(value, reveal and not variable.sensitive)}"
    )


@dataclass(frozen=True)
class _Source:
    """One place values come from, how to fix a bad one, and whether to echo it."""

    values: Mapping[str, Any]
    fix: str
    reveal: bool


def _resolve(
    template: Template,
    sources: tuple[_Source, ...],
    missing_message: Callable[[Variable], str],
) -> dict[str, Any]:
    result: dict[str, Any] = {}
    missing: list[str] = []
    for name, variable in sorted(template.variables.items()):
        for source in sources:
            if name in source.values:
                value = source.values[name]
                try:
                    check_type(variable, value, reveal=source.reveal)
                except MappingError as exc:
                    raise MappingError(f"{exc}: {source.fix.format(name=name)}") from None
                result[name] = value
                break
        else:
            if variable.required:
                missing.append(missing_message(variable))
    if missing:
        raise MappingError("; ".join(missing))
    return result


def _check_runbot_keys(runbot: Mapping[str, Any], allowed: frozenset[str], kind: str) -> None:
    """Unknown runbot keys are a programming error, not a user error."""
    unknown = sorted(set(runbot) - allowed)
    if unknown:
        raise ValueError(f"not runbot {kind} variables: {', '.join(unknown)}")


def _converts(kind: str, value: Any) -> bool:
    is_bool = isinstance(value, bool)
    is_number = isinstance(value, int | float) and not is_bool
    if kind == "string":
        return isinstance(value, str) or is_bool or (is_number and _finite(value))
    if kind == "number":
        if is_number:
            return not (isinstance(value, float) and math.isnan(value))
        return isinstance(value, str) and _NUMERIC_STRING.fullmatch(value) is not None
    if kind == "bool":
        return is_bool or (isinstance(value, str) and value in _BOOL_STRINGS)
    if kind in _LIST_KINDS:
        return isinstance(value, list | tuple)
    if kind in _MAP_KINDS:
        return isinstance(value, dict)
    return False


def _finite(value: int | float) -> bool:
    return not isinstance(value, float) or math.isfinite(value)


def _describe(value: Any, reveal: bool) -> str:
    if not reveal:
        return f"a {_kind(value)} (value hidden)"
    if isinstance(value, bool):
        return f"bool {'true' if value else 'false'}"
    if isinstance(value, int | float):
        return f"number {value!r}"
    if isinstance(value, str):
        return f"string {_short(repr(value))}"
    if isinstance(value, list | tuple):
        return f"list {_short(repr(list(value)))}"
    if isinstance(value, dict):
        return f"map {_short(repr(value))}"
    return f"{type(value).__name__} {_short(repr(value))}"


def _kind(value: Any) -> str:
    if isinstance(value, bool):
        return "bool"
    if isinstance(value, int | float):
        return "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, list | tuple):
        return "list"
    if isinstance(value, dict):
        return "map"
    return type(value).__name__


def _short(text: str, limit: int = 60) -> str:
    return text if len(text) <= limit else text[: limit - 3] + "..."
