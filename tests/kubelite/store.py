"""kubelite's object store: one lock, resourceVersions, selectors, patches and Status errors.

The API server, the Job controller and the kubelet all read and write through ``Store`` under
its one re-entrant lock, so every change is atomic and gets the next resourceVersion, and each
change is appended to a bounded event log that watches replay from a resourceVersion.
"""

from __future__ import annotations

import copy
import itertools
import re
import threading
import uuid
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

__all__ = [
    "RESOURCES",
    "ApiError",
    "Resource",
    "Store",
    "WatchEvent",
    "apply_patch",
    "label_selector",
    "now",
]

#: The three namespaced kinds kubelite serves (and the Events it records).
Key = tuple[str, str, str]  # (plural, namespace, name)


@dataclass(frozen=True)
class Resource:
    plural: str
    kind: str
    group: str  # "" for core
    version: str

    @property
    def api_version(self) -> str:
        return f"{self.group}/{self.version}" if self.group else self.version

    @property
    def qualified(self) -> str:
        """``jobs.batch`` / ``pods``: how Status messages name a resource."""
        return f"{self.plural}.{self.group}" if self.group else self.plural


RESOURCES: dict[str, Resource] = {
    "jobs": Resource("jobs", "Job", "batch", "v1"),
    "pods": Resource("pods", "Pod", "", "v1"),
    "secrets": Resource("secrets", "Secret", "", "v1"),
    "events": Resource("events", "Event", "", "v1"),
}


def now() -> str:
    """RFC 3339 at second precision, as the API server writes metav1.Time."""
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


class ApiError(Exception):
    """An error the API answers with a ``Status`` object."""

    def __init__(
        self,
        code: int,
        reason: str,
        message: str,
        details: dict[str, Any] | None = None,
    ) -> None:
        super().__init__(message)
        self.code, self.reason, self.message, self.details = code, reason, message, details

    def status(self) -> dict[str, Any]:
        body: dict[str, Any] = {
            "kind": "Status",
            "apiVersion": "v1",
            "metadata": {},
            "status": "Failure",
            "message": self.message,
            "reason": self.reason,
            "code": self.code,
        }
        if self.details is not None:
            body["details"] = self.details
        return body

    @classmethod
    def not_found(cls, res: Resource, name: str) -> ApiError:
        return cls(
            404,
            "NotFound",
            f'{res.qualified} "{name}" not found',
            {"name": name, "group": res.group, "kind": res.plural},
        )

    @classmethod
    def already_exists(cls, res: Resource, name: str) -> ApiError:
        return cls(
            409,
            "AlreadyExists",
            f'{res.qualified} "{name}" already exists',
            {"name": name, "group": res.group, "kind": res.plural},
        )

    @classmethod
    def invalid(cls, res: Resource, name: str, causes: list[tuple[str, str]]) -> ApiError:
        """422 Invalid; ``causes`` are (field, message) pairs."""
        text = ", ".join(f"{field}: {msg}" for field, msg in causes)
        return cls(
            422,
            "Invalid",
            f'{res.kind}.{res.group or "core"} "{name}" is invalid: {text}'.replace(".core", ""),
            {
                "name": name,
                "group": res.group,
                "kind": res.kind,
                "causes": [
                    {"reason": "FieldValueInvalid", "message": msg, "field": field}
                    for field, msg in causes
                ],
            },
        )


@dataclass(frozen=True)
class WatchEvent:
    rv: int
    type: str  # ADDED | MODIFIED | DELETED
    plural: str
    obj: dict[str, Any]


class Store:
    """Objects by (plural, namespace, name); every write bumps one global resourceVersion."""

    HISTORY = 2000

    def __init__(self) -> None:
        self.lock = threading.RLock()
        self._objects: dict[Key, dict[str, Any]] = {}
        self._rv = itertools.count(1000)
        self.rv = 999
        self.history: list[WatchEvent] = []
        #: Called (under the lock) after every write: the controller's wake-up.
        self.on_change: list[Callable[[], None]] = []

    def _bump(self, kind: str, plural: str, obj: dict[str, Any]) -> None:
        self.rv = next(self._rv)
        obj["metadata"]["resourceVersion"] = str(self.rv)
        self.history.append(WatchEvent(self.rv, kind, plural, copy.deepcopy(obj)))
        del self.history[: -self.HISTORY]
        for hook in self.on_change:
            hook()

    def get(self, plural: str, namespace: str, name: str) -> dict[str, Any] | None:
        """The live object (mutate only under ``lock`` and then call ``put``)."""
        with self.lock:
            return self._objects.get((plural, namespace, name))

    def must_get(self, plural: str, namespace: str, name: str) -> dict[str, Any]:
        obj = self.get(plural, namespace, name)
        if obj is None:
            raise ApiError.not_found(RESOURCES[plural], name)
        return obj

    def objects(self, plural: str, namespace: str | None = None) -> list[dict[str, Any]]:
        with self.lock:
            return [
                obj
                for (p, ns, _), obj in self._objects.items()
                if p == plural and (namespace is None or ns == namespace)
            ]

    def by_uid(self, uid: str) -> dict[str, Any] | None:
        with self.lock:
            for obj in self._objects.values():
                if obj["metadata"].get("uid") == uid:
                    return obj
            return None

    def create(self, plural: str, obj: dict[str, Any]) -> dict[str, Any]:
        """Insert a new object, filling the server-owned metadata; 409 if the name is taken."""
        meta = obj["metadata"]
        key = (plural, meta["namespace"], meta["name"])
        with self.lock:
            if key in self._objects:
                raise ApiError.already_exists(RESOURCES[plural], meta["name"])
            meta["uid"] = str(uuid.uuid4())
            meta["creationTimestamp"] = now()
            meta.setdefault("generation", 1) if plural == "jobs" else None
            self._objects[key] = obj
            self._bump("ADDED", plural, obj)
            return obj

    def put(self, plural: str, obj: dict[str, Any]) -> dict[str, Any]:
        """Record a change to a stored object (the same dict or a replacement)."""
        meta = obj["metadata"]
        with self.lock:
            self._objects[(plural, meta["namespace"], meta["name"])] = obj
            self._bump("MODIFIED", plural, obj)
            return obj

    def remove(self, plural: str, namespace: str, name: str) -> dict[str, Any] | None:
        with self.lock:
            obj = self._objects.pop((plural, namespace, name), None)
            if obj is not None:
                self._bump("DELETED", plural, obj)
            return obj

    def events_since(self, rv: int, plural: str, namespace: str) -> list[WatchEvent]:
        with self.lock:
            return [
                e
                for e in self.history
                if e.rv > rv
                and e.plural == plural
                and e.obj["metadata"].get("namespace") == namespace
            ]

    def oldest_rv(self) -> int:
        with self.lock:
            return self.history[0].rv - 1 if self.history else self.rv


# ---------------------------------------------------------------------------------- selectors

_REQ = re.compile(
    r"^\s*(?P<neg>!)?\s*(?P<key>[A-Za-z0-9_./-]+)\s*"
    r"(?:(?P<op>==|!=|=|\s+in\s+|\s+notin\s+)\s*(?P<val>\([^)]*\)|[A-Za-z0-9_.-]*))?\s*$"
)


def _split(selector: str) -> list[str]:
    parts, depth, cur = [], 0, ""
    for ch in selector:
        if ch == "(":
            depth += 1
        elif ch == ")":
            depth -= 1
        if ch == "," and depth == 0:
            parts.append(cur)
            cur = ""
        else:
            cur += ch
    if cur.strip():
        parts.append(cur)
    return parts


def _requirements(selector: str) -> list[tuple[str, str, set[str]]]:
    """``labelSelector`` as (key, operator, values); operators: exists, !exists, in, notin."""
    out: list[tuple[str, str, set[str]]] = []
    for part in _split(selector):
        m = _REQ.match(part)
        if m is None:
            raise ApiError(400, "BadRequest", f"unable to parse requirement: {part!r}")
        key, op, val = m["key"], (m["op"] or "").strip(), m["val"] or ""
        if m["neg"]:
            out.append((key, "!exists", set()))
        elif not op:
            out.append((key, "exists", set()))
        elif op in ("=", "=="):
            out.append((key, "in", {val}))
        elif op == "!=":
            out.append((key, "notin", {val}))
        else:
            out.append((key, op, {v.strip() for v in val.strip("()").split(",") if v.strip()}))
    return out


def label_selector(selector: str | None) -> Callable[[dict[str, str]], bool]:
    """A predicate over a label map for a ``labelSelector`` (equality- and set-based)."""
    requirements = _requirements(selector or "")

    def matches(labels: dict[str, str]) -> bool:
        for key, op, values in requirements:
            if op == "exists" and key not in labels:
                return False
            if op == "!exists" and key in labels:
                return False
            if op == "in" and labels.get(key) not in values:
                return False
            if op == "notin" and labels.get(key) in values:
                return False
        return True

    return matches


_FIELDS = ("metadata.name", "metadata.namespace", "status.phase")


def field_selector(selector: str | None) -> Callable[[dict[str, Any]], bool]:
    """``metadata.name``, ``metadata.namespace`` and ``status.phase`` equality, like the API."""
    requirements: list[tuple[str, str, bool, str]] = []
    for part in _split(selector or ""):
        m = re.match(r"^\s*([a-zA-Z.]+)\s*(==|!=|=)\s*(.*?)\s*$", part)
        if m is None or m[1] not in _FIELDS:
            raise ApiError(400, "BadRequest", f"field label not supported: {part!r}")
        section, name = m[1].split(".")
        requirements.append((section, name, m[2] != "!=", m[3]))

    def matches(obj: dict[str, Any]) -> bool:
        return all(
            ((obj.get(section) or {}).get(name) == value) == equal
            for section, name, equal, value in requirements
        )

    return matches


# ------------------------------------------------------------------------------------ patches


def merge_patch(target: Any, patch: Any) -> Any:
    """RFC 7386 JSON merge patch."""
    if not isinstance(patch, dict):
        return copy.deepcopy(patch)
    out = dict(target) if isinstance(target, dict) else {}
    for key, value in patch.items():
        if value is None:
            out.pop(key, None)
        else:
            out[key] = merge_patch(out.get(key), value)
    return out


def _pointer(path: str) -> list[str]:
    if not path.startswith("/"):
        raise ApiError(422, "Invalid", f"invalid JSON pointer {path!r}")
    return [p.replace("~1", "/").replace("~0", "~") for p in path[1:].split("/")]


def json_patch(target: Any, ops: Iterable[dict[str, Any]]) -> Any:
    """RFC 6902 add/remove/replace/test (what Kubernetes clients send)."""
    doc = copy.deepcopy(target)
    for op in ops:
        parts = _pointer(op["path"])
        parent: Any = doc
        for part in parts[:-1]:
            parent = parent[int(part)] if isinstance(parent, list) else parent[part]
        last = parts[-1]
        kind = op["op"]
        try:
            if kind == "test":
                here = parent[int(last)] if isinstance(parent, list) else parent[last]
                if here != op["value"]:
                    raise ApiError(422, "Invalid", f"test failed at {op['path']}")
            elif kind == "remove":
                del parent[int(last) if isinstance(parent, list) else last]
            elif kind in ("add", "replace"):
                if isinstance(parent, list):
                    idx = len(parent) if last == "-" else int(last)
                    if kind == "add":
                        parent.insert(idx, op["value"])
                    else:
                        parent[idx] = op["value"]
                else:
                    if kind == "replace" and last not in parent:
                        raise KeyError(last)
                    parent[last] = op["value"]
            else:
                raise ApiError(422, "Invalid", f"unsupported JSON patch op {kind!r}")
        except (KeyError, IndexError, ValueError, TypeError) as exc:
            raise ApiError(422, "Invalid", f"JSON patch {kind} {op['path']}: {exc}") from exc
    return doc


def strategic_merge_patch(target: Any, patch: Any) -> Any:
    """Strategic merge for the lists kubelite's kinds key by ``name`` (containers, env, ...).

    Maps merge as in RFC 7386; a list whose items all carry ``name`` merges by name (the patch
    strategy of containers, env, volumes, volumeMounts, ports); other lists are replaced.
    ``$patch`` directives are refused rather than guessed.
    """
    if isinstance(patch, dict):
        if any(k.startswith("$") for k in patch):
            raise ApiError(415, "UnsupportedMediaType", "kubelite does not implement $ directives")
        out = dict(target) if isinstance(target, dict) else {}
        for key, value in patch.items():
            if value is None:
                out.pop(key, None)
            else:
                out[key] = strategic_merge_patch(out.get(key), value)
        return out
    if (
        isinstance(patch, list)
        and isinstance(target, list)
        and all(isinstance(i, dict) and "name" in i for i in [*patch, *target])
    ):
        merged = {i["name"]: i for i in target}
        for item in patch:
            merged[item["name"]] = strategic_merge_patch(merged.get(item["name"]), item)
        return list(merged.values())
    return copy.deepcopy(patch)


def apply_patch(content_type: str, target: dict[str, Any], patch: Any) -> dict[str, Any]:
    """The patched copy of ``target`` for one of the four PATCH content types."""
    ctype = content_type.split(";")[0].strip()
    if ctype == "application/merge-patch+json":
        result = merge_patch(target, patch)
    elif ctype == "application/strategic-merge-patch+json":
        result = strategic_merge_patch(target, patch)
    elif ctype == "application/json-patch+json":
        result = json_patch(target, patch)
    elif ctype == "application/apply-patch+yaml":
        # Server-side apply, approximated: the applied config merged over the live object.
        result = strategic_merge_patch(target, patch)
    else:
        raise ApiError(
            415,
            "UnsupportedMediaType",
            "the body of the request was in an unknown format - accepted media types include: "
            "application/json-patch+json, application/merge-patch+json, "
            f"application/strategic-merge-patch+json, application/apply-patch+yaml (got {ctype})",
        )
    if not isinstance(result, dict):
        raise ApiError(422, "Invalid", "the patch did not produce an object")
    return result
