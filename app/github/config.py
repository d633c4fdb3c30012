"""``.runbot.yml``: the per-repository configuration, parsed from text (fetching lives elsewhere).

The file is written by people who will only ever see our error as a PR comment, so every
rejection becomes one ConfigError naming the field, the problem and a corrected example (the
wording lives in ``config_errors``). The text is untrusted (anyone who can push a branch can
edit it): it is size-limited, loaded with ``yaml.safe_load`` only, and walked with a node budget
before validation so alias bombs and self-referencing documents cannot stall the webhook worker.
"""

from __future__ import annotations

import math
import re
from datetime import date, timedelta
from typing import Annotated, Any, Literal

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Discriminator,
    Field,
    Tag,
    ValidationError,
    field_validator,
    model_validator,
)

from app.github.config_errors import ConfigError, _describe, _Problem, _show
from app.ttl.durations import MAX_DURATION, DurationError, format_duration, parse_duration
from app.ttl.policy import TTLPolicy

__all__ = [
    "MAX_CONFIG_BYTES",
    "GitStack",
    "LabelsConfig",
    "LocalStack",
    "RepoConfig",
    "TTLConfig",
    "parse_repo_config",
]

MAX_CONFIG_BYTES = 64 * 1024

#: Stack names become directory and state-key components, hence the tight alphabet.
STACK_NAME_RE = re.compile(r"[a-z0-9][a-z0-9_-]{0,62}")
#: Silo names use the stack alphabet; the extra length fits the derived "<stack>-default".
SILO_NAME_RE = re.compile(r"[a-z0-9][a-z0-9_-]{0,79}")
#: Terraform variable identifiers.
VAR_NAME_RE = re.compile(r"[A-Za-z_][A-Za-z0-9_-]{0,63}")
_GIT_REF_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._/-]{0,199}")
_GIT_URL_RES = (
    re.compile(r"https://[A-Za-z0-9.-]+(?::[0-9]{1,5})?/[^\s\\]+"),
    re.compile(r"ssh://[^\s\\/]+/[^\s\\]+"),
    re.compile(r"[A-Za-z0-9._-]+@[A-Za-z0-9.-]+:[^\s\\:][^\s\\]*"),
)
_DRIVE_RE = re.compile(r"[A-Za-z]:")
_SILO_SAFE_RE = re.compile(r"[^a-z0-9_-]+")

_MAX_NODES = 10_000
_MAX_DEPTH = 32
_MAX_LABEL_LEN = 50  # GitHub's own limit for label names

_STRICT = ConfigDict(extra="forbid", frozen=True)


# --- field validators ---------------------------------------------------------------------


def _check_relative_path(value: object) -> str:
    """A path inside a repository: relative, no '..', normalised to a/b/c (or '.')."""
    if not isinstance(value, str):
        raise ValueError(f"expected a path string like .runbot/stacks/web, got {_show(value)}")
    text = value.strip()
    if not text:
        raise ValueError("the path is empty; use a path like .runbot/stacks/web")
    if len(text) > 255 or not text.isprintable():
        raise ValueError(f"{_show(text)} is not a usable path (too long or control characters)")
    if text.startswith(("/", "\\", "~")) or _DRIVE_RE.match(text):
        raise ValueError(f"{_show(text)} is absolute; use a path relative to the repository root")
    segments = re.split(r"[/\\]", text)
    if ".." in segments:
        raise ValueError(f"{_show(text)} contains '..'; the stack must stay inside the repository")
    kept = [segment for segment in segments if segment not in ("", ".")]
    return "/".join(kept) or "."


class GitStack(BaseModel):
    """A stack fetched from another git repository at ``ref`` (default branch when None)."""

    model_config = _STRICT

    git: str
    ref: str | None = None
    path: str = "."

    @field_validator("git", mode="before")
    @classmethod
    def _git_url(cls, value: object) -> str:
        # Only plain https/ssh remotes: git's "ext::" and "file://" transports would let a
        # config file run commands or read the runbot host's disk, and a leading '-' would
        # be taken as an option by the git CLI.
        if not isinstance(value, str):
            raise ValueError(f"expected a git URL string, got {_show(value)}")
        url = value.strip()
        if not any(pattern.fullmatch(url) for pattern in _GIT_URL_RES):
            raise ValueError(
                f"{_show(url)} is not a supported git URL; use https://host/org/repo.git "
                "or git@host:org/repo.git"
            )
        return url

    @field_validator("ref", mode="before")
    @classmethod
    def _git_ref(cls, value: object) -> str | None:
        if value is None:
            return None
        if not isinstance(value, str):
            raise ValueError(
                f"expected a branch, tag or commit string (quote it), got {_show(value)}"
            )
        ref = value.strip()
        if (
            not _GIT_REF_RE.fullmatch(ref)
            or ".." in ref
            or "//" in ref
            or ref.endswith(("/", ".", ".lock"))
        ):
            raise ValueError(f"{_show(ref)} is not a valid branch, tag or commit")
        return ref

    @field_validator("path", mode="before")
    @classmethod
    def _path(cls, value: object) -> str:
        return _check_relative_path(value)


class LocalStack(BaseModel):
    """A stack kept in the PR's own repository, e.g. ``.runbot/stacks/web``."""

    model_config = _STRICT

    path: str

    @field_validator("path", mode="before")
    @classmethod
    def _path(cls, value: object) -> str:
        return _check_relative_path(value)


def _check_stack_name(value: str) -> str:
    if STACK_NAME_RE.fullmatch(value):
        return value
    hint = ""
    lowered = value.strip().lower()
    if lowered != value and STACK_NAME_RE.fullmatch(lowered):
        hint = f" (did you mean {_show(lowered)}?)"
    raise ValueError(
        f"{_show(value)} is not a valid stack name: use 1-63 lowercase letters, digits, '-' "
        f"or '_', starting with a letter or digit{hint}"
    )


def _stack_kind(value: Any) -> str | None:
    if isinstance(value, str):
        return "name"
    if isinstance(value, dict):
        return "git" if "git" in value else "local"
    return None


StackSpec = Annotated[
    Annotated[str, Tag("name")]
    | Annotated[GitStack, Tag("git")]
    | Annotated[LocalStack, Tag("local")],
    Discriminator(
        _stack_kind,
        custom_error_type="stack_type",
        custom_error_message="expected a stack name like `local` or a mapping like "
        "`{path: .runbot/stacks/web}` or `{git: URL, ref: main, path: web}`",
    ),
]


def _check_duration(value: object) -> timedelta:
    if isinstance(value, timedelta):
        if value.microseconds or not timedelta(0) < value <= MAX_DURATION:
            raise ValueError(f"must be whole seconds between 1s and {MAX_DURATION.days}d")
        return value
    if isinstance(value, bool) or not isinstance(value, str):
        if isinstance(value, int | float) and not isinstance(value, bool):
            raise ValueError(f"{_show(value)} has no unit; write it like 48h, 30m or 2d")
        raise ValueError(f"expected a duration like 48h, 30m or 2d, got {_show(value)}")
    try:
        return parse_duration(value)
    except DurationError as exc:
        raise ValueError(str(exc)) from None


class TTLConfig(BaseModel):
    """Lifetimes in ``.runbot.yml``; same meaning and defaults as :class:`TTLPolicy`."""

    model_config = _STRICT

    idle: timedelta = TTLPolicy.idle
    max: timedelta = TTLPolicy.max
    warn_before: timedelta = TTLPolicy.warn_before
    #: Put the environment to sleep after this long without activity (None: never).
    sleep_after: timedelta | None = None

    @field_validator("idle", "max", "warn_before", mode="before")
    @classmethod
    def _duration(cls, value: object) -> timedelta:
        return _check_duration(value)

    @field_validator("sleep_after", mode="before")
    @classmethod
    def _sleep_duration(cls, value: object) -> timedelta | None:
        # `sleep_after: off` (YAML reads a bare off as false), or left empty: awake until it
        # expires.
        if value is None or value is False or (isinstance(value, str) and value.strip() == ""):
            return None
        if isinstance(value, str) and value.strip().lower() == "off":
            return None
        return _check_duration(value)

    @model_validator(mode="after")
    def _consistent(self) -> TTLConfig:
        if self.idle > self.max:
            raise _Problem(
                f"idle ({format_duration(self.idle)}) is longer than max "
                f"({format_duration(self.max)}); idle must be at most max",
                ["idle"],
            )
        if self.warn_before >= self.idle:
            raise _Problem(
                f"warn_before ({format_duration(self.warn_before)}) must be shorter than idle "
                f"({format_duration(self.idle)}), or the warning would go out before any activity",
                ["warn_before"],
            )
        if self.sleep_after is not None and self.sleep_after >= self.idle:
            raise _Problem(
                f"sleep_after ({format_duration(self.sleep_after)}) must be shorter than idle "
                f"({format_duration(self.idle)}), or the environment expires before it ever "
                f"sleeps; write for example `sleep_after: {_suggest_sleep(self.idle)}`, or "
                "leave sleep_after out",
                ["sleep_after"],
            )
        return self


def _suggest_sleep(idle: timedelta) -> str:
    """A sleep_after that would fire under this idle TTL: 2h, or half of a shorter idle."""
    half = timedelta(seconds=max(1, int(idle.total_seconds()) // 2))
    return format_duration(min(timedelta(hours=2), half))


class LabelsConfig(BaseModel):
    """Labels a PR must carry before it gets an environment (all of them)."""

    model_config = _STRICT

    require: list[str] = Field(default_factory=list)

    @field_validator("require", mode="before")
    @classmethod
    def _labels(cls, value: object) -> list[str]:
        if not isinstance(value, list):
            raise ValueError(f"expected a list of label names like [preview], got {_show(value)}")
        labels: list[str] = []
        for index, label in enumerate(value):
            if not isinstance(label, str) or not label.strip():
                raise _Problem(f"expected a label name, got {_show(label)}", [index])
            if len(label) > _MAX_LABEL_LEN:
                raise _Problem(f"label names are at most {_MAX_LABEL_LEN} characters", [index])
            labels.append(label.strip())
        return labels


def _check_var_value(value: object, path: list[str | int], depth: int) -> object:
    """Values must be expressible as Terraform variables: JSON-like, finite, not too deep."""
    if depth > _MAX_DEPTH:
        raise _Problem(f"nested deeper than {_MAX_DEPTH} levels", path)
    if value is None or isinstance(value, bool | int | str):
        return value
    if isinstance(value, float):
        if not math.isfinite(value):
            raise _Problem(f"{_show(value)} is not a finite number", path)
        return value
    if isinstance(value, list):
        return [_check_var_value(item, [*path, i], depth + 1) for i, item in enumerate(value)]
    if isinstance(value, dict):
        checked: dict[str, object] = {}
        for key, item in value.items():
            if not isinstance(key, str):
                raise _Problem(f"map keys must be strings; quote {_show(key)}", path)
            checked[key] = _check_var_value(item, [*path, key], depth + 1)
        return checked
    if isinstance(value, date):
        raise _Problem(f"YAML reads {_show(value.isoformat())} as a date; quote it", path)
    raise _Problem(
        f"{_show(value)} ({type(value).__name__}) is not supported; quote it to pass it as text",
        path,
    )


class RepoConfig(BaseModel):
    """The validated ``.runbot.yml``. ``silo`` is always filled in (derived if not given)."""

    model_config = _STRICT

    stack: StackSpec
    silo: str = ""
    vars: dict[str, Any] = Field(default_factory=dict)
    ttl: TTLConfig = Field(default_factory=TTLConfig)
    drafts: Annotated[bool, Field(strict=True)] = False
    forks: Literal["off", "approve"] = "off"
    labels: LabelsConfig = Field(default_factory=LabelsConfig)
    max_environments: Annotated[int, Field(strict=True, ge=1, le=1000)] = 10
    wait_for_ci: Annotated[bool, Field(strict=True)] = False
    #: `quiet`: no status comment, only replies to commands and failures (the check run and
    #: the deployment carry the status).
    comments: Literal["all", "quiet"] = "all"
    #: `keep`: leave a closed PR's inactive deployments on GitHub instead of deleting them.
    deployments: Literal["delete", "keep"] = "delete"

    @field_validator("stack", mode="before")
    @classmethod
    def _stack_name(cls, value: object) -> object:
        return _check_stack_name(value) if isinstance(value, str) else value

    @field_validator("silo", mode="before")
    @classmethod
    def _silo(cls, value: object) -> str:
        # Only runs for an explicit value; the default "" is filled in by _derive_silo.
        if not isinstance(value, str) or not SILO_NAME_RE.fullmatch(value):
            raise ValueError(
                f"{_show(value)} is not a valid silo name: use 1-80 lowercase letters, digits, "
                "'-' or '_', starting with a letter or digit"
            )
        return value

    @field_validator("vars", mode="before")
    @classmethod
    def _vars(cls, value: object) -> dict[str, object]:
        if not isinstance(value, dict):
            raise ValueError(f"expected a mapping of variable names to values, got {_show(value)}")
        checked: dict[str, object] = {}
        for key, item in value.items():
            if not isinstance(key, str) or not VAR_NAME_RE.fullmatch(key):
                raise ValueError(
                    f"{_show(key)} is not a valid variable name: start with a letter or '_', "
                    "then letters, digits, '_' or '-'"
                )
            checked[key] = _check_var_value(item, [key], 1)
        return checked

    @field_validator("forks", mode="before")
    @classmethod
    def _forks(cls, value: object) -> str:
        # YAML 1.1 reads a bare `off` (and `no`, `false`) as False: that is what people mean.
        if value is False:
            return "off"
        if value is True:
            raise ValueError(
                "must be `off` or `approve`; `on`, `yes` and `true` are ambiguous here"
            )
        if isinstance(value, str) and value.strip().lower() in ("off", "approve"):
            return value.strip().lower()
        raise ValueError(f"must be `off` or `approve`, got {_show(value)}")

    @model_validator(mode="after")
    def _derive_silo(self) -> RepoConfig:
        if self.silo:
            return self
        return self.model_copy(update={"silo": default_silo(self.stack)})

    def ttl_policy(self) -> TTLPolicy:
        """The TTL arithmetic's view of ``ttl``."""
        return TTLPolicy(
            idle=self.ttl.idle,
            max=self.ttl.max,
            warn_before=self.ttl.warn_before,
            sleep_after=self.ttl.sleep_after,
        )


def default_silo(stack: str | GitStack | LocalStack) -> str:
    """``<stack>-default``; for mapping stacks the last path segment stands in for the name."""
    if isinstance(stack, str):
        return f"{stack}-default"
    segment = stack.path.rsplit("/", 1)[-1] if stack.path != "." else ""
    if not segment and isinstance(stack, GitStack):
        segment = re.split(r"[/:]", stack.git.rstrip("/"))[-1].removesuffix(".git")
    name = _SILO_SAFE_RE.sub("-", segment.lower()).strip("-_")[:63] or "stack"
    return f"{name}-default"


# --- parsing ------------------------------------------------------------------------------


def _walk_budget(document: object) -> None:
    """Refuse documents that are huge once aliases are expanded, cyclic, or absurdly deep."""
    stack: list[tuple[object, int]] = [(document, 0)]
    seen = 0
    while stack:
        node, depth = stack.pop()
        seen += 1
        if seen > _MAX_NODES:
            raise ConfigError(
                "",
                f"the document has more than {_MAX_NODES} values once YAML "
                "aliases are expanded; simplify it",
            )
        if depth > _MAX_DEPTH:
            raise ConfigError("", f"values are nested deeper than {_MAX_DEPTH} levels")
        if isinstance(node, dict):
            stack.extend((item, depth + 1) for item in node.values())
        elif isinstance(node, list | tuple | set | frozenset):
            stack.extend((item, depth + 1) for item in node)


def _known_keys(parent: str) -> list[str]:
    """The settings a mapping accepts, for "did you mean"; it reads the models, so it lives here."""
    models: dict[str, type[BaseModel]] = {
        "": RepoConfig,
        "ttl": TTLConfig,
        "labels": LabelsConfig,
    }
    if parent == "stack":
        return sorted({*GitStack.model_fields, *LocalStack.model_fields})
    model = models.get(parent)
    return list(model.model_fields) if model else []


def _load(text: str) -> object:
    try:
        return yaml.safe_load(text)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark
        line = mark.line + 1 if mark is not None else None
        problem = exc.problem or "invalid YAML"
        if exc.context:
            problem = f"{problem} ({exc.context})"
        where = f" on line {line}, column {mark.column + 1}" if mark is not None else ""
        raise ConfigError("", f"YAML syntax error{where}: {problem}", line=line) from None
    except yaml.YAMLError as exc:
        raise ConfigError("", f"YAML error: {' '.join(str(exc).split())[:200]}") from None
    except RecursionError:
        raise ConfigError("", f"values are nested deeper than {_MAX_DEPTH} levels") from None
    except Exception as exc:  # e.g. ValueError from an impossible date like 2024-13-45
        detail = " ".join(str(exc).split())[:200]
        raise ConfigError("", f"the YAML could not be read: {detail}") from None


def parse_repo_config(text: str) -> RepoConfig:
    """Validate the text of ``.runbot.yml``; raises ConfigError (and nothing else) if unusable."""
    if not isinstance(text, str):
        raise ConfigError("", f"expected the file's text, got {type(text).__name__}")
    size = len(text.encode("utf-8", "surrogatepass"))
    if size > MAX_CONFIG_BYTES:
        raise ConfigError(
            "", f"the file is {size} bytes; the limit is {MAX_CONFIG_BYTES // 1024} KB"
        )
    document = _load(text)
    if document is None:
        raise ConfigError("stack", "is required: the file is empty, so runbot has no stack")
    if not isinstance(document, dict):
        raise ConfigError(
            "",
            f"the file must be a mapping of settings (like `stack: local`), "
            f"not a {type(document).__name__}",
        )
    _walk_budget(document)
    try:
        return RepoConfig.model_validate(document)
    except ValidationError as exc:
        errors = exc.errors(include_url=False)
        # An unknown key is usually the cause of a "missing" one (`stak:` for `stack:`).
        errors.sort(key=lambda error: error["type"] not in ("extra_forbidden", "invalid_key"))
        described = [_describe(error, _known_keys) for error in errors]
        field, problem, example = described[0]
        others = [(f, p) for f, p, _ in described[1:]]
        raise ConfigError(field, problem, example=example, others=others) from None
    except RecursionError:
        raise ConfigError("", f"values are nested deeper than {_MAX_DEPTH} levels") from None
