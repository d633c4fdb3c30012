"""Reading a policy file: YAML text to a `PolicyFile`, or one `PolicyError` naming line and key.

The operator reads the error in a pod's log or in `runbot policy check`, so it says where
(`policy.yml line 7: repos."octo-org/*".max_ttl`) and what to write instead. Line numbers come
from YAML's node marks, walked once before the document is built; the same walk refuses what
`yaml.safe_load` would silently accept: a key written twice (the later one would win unseen)
and merge keys (whose values would have no line of their own).
"""

from __future__ import annotations

import difflib
import hashlib
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from app.policy.model import KEYS, PolicyDocument, PolicyFile, Problem, show
from app.settings import SettingsError

__all__ = ["MAX_POLICY_BYTES", "PolicyError", "load_policy", "parse_policy"]

MAX_POLICY_BYTES = 1024 * 1024
_MAX_NODES = 100_000
_STR_TAG = "tag:yaml.org,2002:str"
_MERGE_TAG = "tag:yaml.org,2002:merge"

Path_ = tuple[str | int, ...]


class PolicyError(SettingsError):
    """The policy file cannot be used; the message names the file, the line and the key.

    A SettingsError, so every process that refuses a bad setting at start refuses it too."""

    def __init__(self, source: str, line: int | None, key: str, problem: str) -> None:
        self.source = source
        self.line = line
        self.key = key
        self.problem = problem
        where = source if line is None else f"{source} line {line}"
        super().__init__(f"{where}: {key}: {problem}" if key else f"{where}: {problem}")


def dotted(path: Sequence[str | int]) -> str:
    """`repos."octo-org/*".max_ttl`, `default.stacks[1]`: a place in the file, as people say it."""
    text = ""
    for index, part in enumerate(path):
        if isinstance(part, int):
            text += f"[{part}]"
        elif index == 1 and path[0] in ("repos", "silos"):
            text += "." + json.dumps(part)
        else:
            text += ("." if text else "") + part
    return text


class _Marks:
    """Line numbers of every key and value, gathered from the composed YAML nodes."""

    def __init__(self, source: str) -> None:
        self.source = source
        self.keys: dict[Path_, int] = {}
        self.values: dict[Path_, int] = {}
        self.nodes = 0

    def walk(self, node: yaml.Node, path: Path_ = ()) -> None:
        self.nodes += 1
        if self.nodes > _MAX_NODES:
            raise PolicyError(self.source, None, "", f"more than {_MAX_NODES} values; simplify it")
        self.values[path] = node.start_mark.line + 1
        if isinstance(node, yaml.MappingNode):
            for key_node, value_node in node.value:
                line = key_node.start_mark.line + 1
                if key_node.tag == _MERGE_TAG:
                    raise PolicyError(
                        self.source,
                        line,
                        dotted(path),
                        "YAML merge keys (<<) are not supported; write the keys out, or put "
                        "shared ones in `default`",
                    )
                if not isinstance(key_node, yaml.ScalarNode) or key_node.tag != _STR_TAG:
                    raise PolicyError(
                        self.source,
                        line,
                        dotted(path),
                        f"the key {_key_text(key_node)} is not text; quote it",
                    )
                child = (*path, key_node.value)
                if child in self.keys:
                    raise PolicyError(
                        self.source,
                        line,
                        dotted(child),
                        f"appears twice (also on line {self.keys[child]}); keep one",
                    )
                self.keys[child] = line
                self.walk(value_node, child)
        elif isinstance(node, yaml.SequenceNode):
            for index, item in enumerate(node.value):
                self.walk(item, (*path, index))

    def line(self, path: Path_, *, key: bool) -> int | None:
        """The line of `path`, or of the nearest enclosing place that has one."""
        table = self.keys if key else self.values
        for end in range(len(path), 0, -1):
            if path[:end] in table:
                return table[path[:end]]
            table = self.values
        return None


def _key_text(node: yaml.Node) -> str:
    value = node.value if isinstance(node, yaml.ScalarNode) else "(a mapping or list)"
    return show(value)


def _known_keys(path: Path_) -> tuple[str, ...]:
    if len(path) <= 1:
        return ("default", "repos", "silos")
    return ("budget",) if path[0] == "silos" else KEYS


def _problem(error: Any) -> tuple[Path_, str, bool]:
    """(where, what is wrong, whether the line is the key's) for one pydantic error."""
    loc: Path_ = tuple(part for part in error["loc"] if part != "[key]")
    kind = error["type"]
    cause = error.get("ctx", {}).get("error")
    if isinstance(cause, Problem):
        return (*loc, *cause.subpath), str(cause), cause.about_key
    if kind == "extra_forbidden":
        key = str(loc[-1])
        known = _known_keys(loc)
        message = f"{show(key)} is not a policy key"
        close = difflib.get_close_matches(key, known, n=1, cutoff=0.6)
        if close:
            message += f'; did you mean "{close[0]}"?'
        return loc, message + " The keys here: " + ", ".join(known), True
    if kind == "value_error" and cause is not None:
        return loc, str(cause), False
    if kind in ("model_type", "dict_type", "model_attributes_type"):
        return loc, f"expected a mapping of policy keys, got {show(error.get('input'))}", False
    return loc, f"{error['msg']}, got {show(error.get('input'))}", False


def parse_policy(text: str, source: str = "policy.yml") -> PolicyFile:
    """Validate a policy file's text. An empty file is the built-in defaults."""
    data = text.encode("utf-8", "surrogatepass")
    if len(data) > MAX_POLICY_BYTES:
        raise PolicyError(
            source, None, "", f"{len(data)} bytes; the limit is {MAX_POLICY_BYTES // 1024} KB"
        )
    digest = hashlib.sha256(data).hexdigest()
    marks = _Marks(source)
    loader = yaml.SafeLoader(text)
    try:
        node = loader.get_single_node()
        if node is None:
            return PolicyFile(source=source, digest=digest)
        if not isinstance(node, yaml.MappingNode):
            raise PolicyError(
                source,
                node.start_mark.line + 1,
                "",
                "the file must be a mapping with `default:` and `repos:`",
            )
        marks.walk(node)
        document = loader.construct_document(node)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        problem = exc.problem or "invalid YAML"
        if exc.context:
            problem = f"{problem} ({exc.context})"
        line = mark.line + 1 if mark is not None else None
        raise PolicyError(source, line, "", f"YAML syntax error: {problem}") from None
    except yaml.YAMLError as exc:
        raise PolicyError(source, None, "", f"YAML error: {' '.join(str(exc).split())}") from None
    finally:
        loader.dispose()
    try:
        model = PolicyDocument.model_validate(document)
    except ValidationError as exc:
        errors = exc.errors(include_url=False)
        # A misspelt key is the usual cause of anything else reported with it.
        errors.sort(key=lambda error: error["type"] != "extra_forbidden")
        where, problem, about_key = _problem(errors[0])
        line = marks.line(where, key=about_key)
        raise PolicyError(source, line, dotted(where), problem) from None
    return PolicyFile(document=model, source=source, digest=digest, lines=dict(marks.keys))


def load_policy(path: Path | None) -> PolicyFile:
    """The policy in `path`; no path: the built-in defaults. Raises PolicyError."""
    if path is None:
        return PolicyFile()
    source = str(path)
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise PolicyError(
            source,
            None,
            "",
            f"cannot read it ({exc.strerror}); fix RUNBOT_POLICY_FILE or the file's permissions",
        ) from None
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise PolicyError(
            source, None, "", f"not UTF-8 text (byte {exc.start}); save it as UTF-8"
        ) from None
    return parse_policy(text, source)
