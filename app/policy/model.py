"""What an operator policy file says, and the policy in force for one repository.

`PolicyDocument` is the file as validated: a `default` entry and `repos` entries keyed by
owner/name globs, each an `Entry` whose unset keys are None (so merging can tell "not said"
from "said false"). `Policy` is the result for one repository, every key filled in. The
validators write for the operator: each message names the value and what to write instead.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import timedelta
from enum import StrEnum
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, field_validator

from app.cost.budget import Budget, parse_budget
from app.ttl.durations import MAX_DURATION, DurationError, format_duration, parse_duration

__all__ = [
    "KEYS",
    "NO_POLICY",
    "Entry",
    "Forks",
    "Policy",
    "PolicyDocument",
    "PolicyFile",
    "Problem",
    "SiloEntry",
    "git_host",
    "plain_url",
]

MAX_ENVIRONMENTS_CEILING = 1000  # what `.runbot.yml` itself accepts at most
MAX_SILOS_CEILING = 1000
MAX_POOL_CEILING = 50
#: The largest PR source tarball (unpacked) and file count an operator may allow.
SOURCE_MAX_BYTES_CEILING = 10 << 30
SOURCE_MAX_FILES_CEILING = 1_000_000
_HOST_RE = re.compile(r"[a-z0-9](?:[a-z0-9.-]{0,251}[a-z0-9])?")
_GIT_PREFIX_RES = (
    re.compile(r"https://(?P<host>[A-Za-z0-9.-]+)(?::[0-9]{1,5})?(?:/[^\s\\]*)?"),
    re.compile(r"ssh://(?:[^\s\\/@]+@)?(?P<host>[A-Za-z0-9.-]+)(?::[0-9]{1,5})?(?:/[^\s\\]*)?"),
    re.compile(r"[A-Za-z0-9._-]+@(?P<host>[A-Za-z0-9.-]+)(?::[^\s\\]*)?"),
)
_DURATION_EXAMPLES = "use 90s, 30m, 4h, 2d, 1w"
_SHOW_LIMIT = 60


class Forks(StrEnum):
    """How far a repository may go with pull requests from forks (ordered: off < approve)."""

    OFF = "off"
    APPROVE = "approve"


class Problem(ValueError):
    """A validator's complaint about a place inside the value (`subpath`), or about a key."""

    def __init__(self, message: str, subpath: tuple[str | int, ...] = (), *, key: bool = False):
        super().__init__(message)
        self.subpath = subpath
        self.about_key = key


def show(value: object) -> str:
    """A value as the operator wrote it, quoted and bounded."""
    if value is None:
        return "nothing"
    text = value if isinstance(value, str) else repr(value)
    if len(text) > _SHOW_LIMIT:
        text = text[: _SHOW_LIMIT - 1] + "…"
    return '"' + text.replace('"', '\\"') + '"' if isinstance(value, str) else text


def plain_url(url: str) -> bool:
    """No dot segments or %-escapes: what git resolves could otherwise leave a prefix."""
    return "%" not in url and not any(part in (".", "..") for part in url.split("/"))


def git_host(url: str) -> str | None:
    """The host a git URL or URL prefix points at (lowercase), or None if it has none."""
    for pattern in _GIT_PREFIX_RES:
        match = pattern.fullmatch(url)
        if match:
            return match["host"].lower()
    return None


def _string_list(value: object, example: str) -> list[str]:
    if isinstance(value, str):
        raise ValueError(f"expected a list; write it as [{show(value)}]")
    if not isinstance(value, list):
        raise ValueError(f"expected a list like {example}, got {show(value)}")
    for index, item in enumerate(value):
        if not isinstance(item, str) or not item.strip():
            raise Problem(f"expected a non-empty text, got {show(item)}", (index,))
    return [item.strip() for item in value]


def _strict_bool(value: object) -> bool:
    if isinstance(value, bool):
        return value
    raise ValueError(f"expected true or false, got {show(value)}")


def _bounded_int(value: object, least: int, most: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError(f"expected a whole number from {least} to {most}, got {show(value)}")
    if not least <= value <= most:
        raise ValueError(f"{value} is out of range; use a whole number from {least} to {most}")
    return value


class Entry(BaseModel):
    """One entry of the file (`default`, or one `repos` glob). None: this entry does not say."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    stacks: list[str] | None = None
    repo_stacks: bool | None = None
    git_stacks: list[str] | None = None
    git_hosts: list[str] | None = None
    base_branches: list[str] | None = None
    forks: Forks | None = None
    max_environments: int | None = None
    max_pool: int | None = None
    max_ttl: timedelta | None = None
    max_silos: int | None = None
    quote_logs: bool | None = None
    source_max_bytes: int | None = None
    source_max_files: int | None = None
    #: Money per calendar month for each repository this entry covers (`app.cost.budget`).
    budget: Budget | None = None

    @field_validator("budget", mode="before")
    @classmethod
    def _budget(cls, value: object) -> Budget:
        return parse_budget(value)

    @field_validator("stacks", mode="before")
    @classmethod
    def _stacks(cls, value: object) -> list[str]:
        return _string_list(value, '["local", "kubernetes"] or ["*"]')

    @field_validator("base_branches", mode="before")
    @classmethod
    def _branches(cls, value: object) -> list[str]:
        branches = _string_list(value, '[default, "release/*"]')
        if not branches:
            raise ValueError("is empty; write [default] to allow only the default branch")
        return branches

    @field_validator("git_stacks", mode="before")
    @classmethod
    def _git_stacks(cls, value: object) -> list[str]:
        prefixes = _string_list(value, '["https://github.com/octo-org/"]')
        for index, prefix in enumerate(prefixes):
            if git_host(prefix) is None:
                raise Problem(
                    f"{show(prefix)} is not a git URL prefix; write one like "
                    '"https://github.com/octo-org/" or "git@github.com:octo-org/"',
                    (index,),
                )
            if not plain_url(prefix):
                raise Problem(
                    f"{show(prefix)} has '.', '..' or %-escapes; write the prefix plainly",
                    (index,),
                )
        return prefixes

    @field_validator("git_hosts", mode="before")
    @classmethod
    def _git_hosts(cls, value: object) -> list[str]:
        hosts = _string_list(value, '["github.com"]')
        for index, host in enumerate(hosts):
            if not _HOST_RE.fullmatch(host.lower()):
                raise Problem(
                    f"{show(host)} is not a host name; write one like github.com (no scheme, "
                    "path or port)",
                    (index,),
                )
        return [host.lower() for host in hosts]

    @field_validator("repo_stacks", "quote_logs", mode="before")
    @classmethod
    def _bool(cls, value: object) -> bool:
        return _strict_bool(value)

    @field_validator("forks", mode="before")
    @classmethod
    def _forks(cls, value: object) -> Forks:
        # YAML 1.1 reads a bare `off` as False: that is what the operator meant.
        if value is False:
            return Forks.OFF
        if isinstance(value, str) and value.strip().lower() in set(Forks):
            return Forks(value.strip().lower())
        raise ValueError(f"expected off or approve, got {show(value)}")

    @field_validator("max_environments", mode="before")
    @classmethod
    def _max_environments(cls, value: object) -> int:
        return _bounded_int(value, 1, MAX_ENVIRONMENTS_CEILING)

    @field_validator("max_pool", mode="before")
    @classmethod
    def _max_pool(cls, value: object) -> int:
        return _bounded_int(value, 0, MAX_POOL_CEILING)

    @field_validator("max_silos", mode="before")
    @classmethod
    def _max_silos(cls, value: object) -> int:
        return _bounded_int(value, 0, MAX_SILOS_CEILING)

    @field_validator("source_max_bytes", mode="before")
    @classmethod
    def _source_max_bytes(cls, value: object) -> int:
        return _bounded_int(value, 1, SOURCE_MAX_BYTES_CEILING)

    @field_validator("source_max_files", mode="before")
    @classmethod
    def _source_max_files(cls, value: object) -> int:
        return _bounded_int(value, 1, SOURCE_MAX_FILES_CEILING)

    @field_validator("max_ttl", mode="before")
    @classmethod
    def _max_ttl(cls, value: object) -> timedelta:
        if isinstance(value, bool) or not isinstance(value, str | int | float):
            raise ValueError(f"expected a duration like 7d, got {show(value)}")
        if not isinstance(value, str):
            raise ValueError(f"{show(value)} has no unit; {_DURATION_EXAMPLES}")
        try:
            return parse_duration(value)
        except DurationError as exc:
            if "ceiling" in str(exc):
                raise ValueError(
                    f"{show(value)} is longer than {format_duration(MAX_DURATION)}, the longest "
                    "lifetime runbot allows"
                ) from None
            raise ValueError(f"{show(value)} is not a duration; {_DURATION_EXAMPLES}") from None


KEYS: tuple[str, ...] = tuple(Entry.model_fields)


class SiloEntry(BaseModel):
    """One `silos:` entry, by exact silo name: what all its environments may spend."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    budget: Budget | None = None

    @field_validator("budget", mode="before")
    @classmethod
    def _budget(cls, value: object) -> Budget:
        return parse_budget(value)


def _glob_keys(value: object) -> object:
    if not isinstance(value, dict):
        return value
    for glob in value:
        if not isinstance(glob, str) or not glob.strip():
            raise Problem(f"{show(glob)} is not an owner/name glob", (str(glob),), key=True)
        if "/" not in glob and set(glob) != {"*"}:
            raise Problem(
                f"{show(glob)} matches no repository: globs are matched against owner/name; "
                f'write "{glob}/*" for every repository of {glob}',
                (glob,),
                key=True,
            )
    for glob, entry in value.items():
        if entry is None:
            raise Problem(
                "is empty; give it keys such as `repo_stacks: true`, or remove it", (glob,)
            )
    return value


class PolicyDocument(BaseModel):
    """The whole file: `default` for every repository, `repos` merged over it in file order."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    default: Entry = Field(default_factory=Entry)
    repos: dict[str, Entry] = Field(default_factory=dict)
    #: Budgets per silo name (a silo's environments may come from many repositories).
    silos: dict[str, SiloEntry] = Field(default_factory=dict)

    @field_validator("default", "repos", "silos", mode="before")
    @classmethod
    def _not_empty(cls, value: object) -> object:
        if value is None:
            raise ValueError("is empty; give it keys such as `max_ttl: 7d`, or remove it")
        return value

    @field_validator("repos", mode="before")
    @classmethod
    def _globs(cls, value: object) -> object:
        return _glob_keys(value)


@dataclass(frozen=True)
class Policy:
    """The policy in force for one repository: every key filled in (built-in defaults first)."""

    stacks: tuple[str, ...] = ("*",)
    repo_stacks: bool = False
    git_stacks: tuple[str, ...] = ()
    #: None in the defaults: the hosts of `git_stacks`. Always filled in by `merge`.
    git_hosts: tuple[str, ...] | None = None
    base_branches: tuple[str, ...] = ("default",)
    forks: Forks = Forks.APPROVE
    max_environments: int = 10
    #: Warm-pool instances a repository may have kept in a silo (0: no pool).
    max_pool: int = 4
    max_ttl: timedelta = timedelta(days=7)
    max_silos: int = 1
    quote_logs: bool = False
    #: The PR's source tarball, for stacks that declare `runbot_source_dir`: its unpacked
    #: bytes and its entries (files, folders, links) at most.
    source_max_bytes: int = 200_000_000
    source_max_files: int = 20_000
    #: None: no budget for the repository.
    budget: Budget | None = None

    def allowed_git_hosts(self) -> tuple[str, ...]:
        """`git_hosts`, or when unset the hosts of the `git_stacks` prefixes."""
        if self.git_hosts is not None:
            return self.git_hosts
        hosts = (git_host(prefix) for prefix in self.git_stacks)
        return tuple(dict.fromkeys(host for host in hosts if host))

    def value_of(self, key: str) -> Any:
        """A key's value as the file writes it (durations as text, lists as lists)."""
        value = self.allowed_git_hosts() if key == "git_hosts" else getattr(self, key)
        if isinstance(value, timedelta):
            return format_duration(value)
        if isinstance(value, tuple):
            return list(value)
        if isinstance(value, Forks):
            return value.value
        if isinstance(value, Budget):
            return {"monthly": value.monthly}
        return value


#: Where each value of a file sits: ("default", "max_ttl") or ("repos", glob, "max_ttl") -> line.
Lines = Mapping[tuple[str | int, ...], int]


@dataclass(frozen=True)
class PolicyFile:
    """A loaded policy: the document, where it came from, its digest and its line numbers.

    `source` None means no file: the built-in defaults."""

    document: PolicyDocument = field(default_factory=PolicyDocument)
    source: str | None = None
    digest: str | None = None
    lines: Lines = field(default_factory=dict)

    def describe(self) -> str:
        """One line for doctor, explain and the logs."""
        if self.source is None:
            return "defaults (no RUNBOT_POLICY_FILE)"
        return f"{self.source} (sha256 {(self.digest or '')[:12]})"


NO_POLICY = PolicyFile()
