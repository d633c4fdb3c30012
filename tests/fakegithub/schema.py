"""Validate REST bodies and webhook payloads against GitHub's own API description.

The fake GitHub is only trustworthy if what it accepts and returns is what
GitHub accepts and returns, so every request and response it handles goes
through here.  The vendored extracts (see ``vendor/extract.py``) are OpenAPI
3.0 (REST, ``nullable: true``) and 3.1 (webhooks, ``type: [..., "null"]``);
both are converted to plain JSON Schema once, at load time.
"""

from __future__ import annotations

import copy
import json
import threading
from collections.abc import Mapping
from functools import cache
from pathlib import Path
from typing import Any

from jsonschema import Draft4Validator, Draft202012Validator
from jsonschema.exceptions import ValidationError, best_match
from jsonschema.protocols import Validator
from referencing import Registry, Resource
from referencing.jsonschema import DRAFT4, DRAFT202012

VENDOR_DIR = Path(__file__).resolve().parent / "vendor"
REST_EXTRACT = VENDOR_DIR / "rest-openapi-extract.json"
WEBHOOKS_EXTRACT = VENDOR_DIR / "webhooks-schema-extract.json"

_REST_URI = "urn:runbot:github-rest"
_HOOKS_URI = "urn:runbot:github-webhooks"
#: What GitHub serves when a request has no ``X-GitHub-Api-Version`` header.
DEFAULT_API_VERSION = "2022-11-28"

_SCHEMA_MAPS = {"properties", "patternProperties", "$defs", "definitions"}
_SCHEMA_LISTS = {"allOf", "anyOf", "oneOf", "prefixItems"}
_SCHEMA_SINGLE = {"items", "additionalProperties", "not", "contains", "propertyNames"}
_COMBINATORS = ("allOf", "anyOf", "oneOf", "$ref")


class SchemaViolation(ValueError):
    """A body does not match GitHub's description; ``str()`` says where and why."""

    def __init__(self, where: str, message: str) -> None:
        super().__init__(f"{where}: {message}")
        self.where = where
        self.detail = message


def to_json_schema(node: Any, base_uri: str) -> Any:
    """Convert an OpenAPI schema node to JSON Schema.

    ``nullable: true`` becomes a ``"null"`` type (or an ``anyOf`` with null when
    the node is a combinator/``$ref``, whose subschemas would reject null), and
    local ``$ref``s become absolute so inline operation schemas resolve them.
    """
    if isinstance(node, list):
        return [to_json_schema(n, base_uri) for n in node]
    if not isinstance(node, dict):
        return node
    out: dict[str, Any] = {}
    for key, value in node.items():
        if key == "$ref" and isinstance(value, str) and value.startswith("#"):
            out[key] = base_uri + value
        elif key in _SCHEMA_MAPS and isinstance(value, dict):
            out[key] = {name: to_json_schema(sub, base_uri) for name, sub in value.items()}
        elif key in _SCHEMA_LISTS and isinstance(value, list):
            out[key] = [to_json_schema(sub, base_uri) for sub in value]
        elif key in _SCHEMA_SINGLE and isinstance(value, dict):
            out[key] = to_json_schema(value, base_uri)
        else:
            out[key] = value
    if out.pop("nullable", False) is True:
        if "type" in out and not any(c in out for c in _COMBINATORS):
            types = out["type"] if isinstance(out["type"], list) else [out["type"]]
            out["type"] = [*types, "null"] if "null" not in types else types
            if "enum" in out and None not in out["enum"]:
                out["enum"] = [*out["enum"], None]
        elif "enum" in out and not any(c in out for c in _COMBINATORS):
            out["enum"] = [*out["enum"], None]
        else:
            out = {"anyOf": [{"type": "null"}, out]}
    return out


def merge_patch(target: Any, patch: Any) -> Any:
    """Apply an RFC 7386 JSON merge patch (how GitHub encodes per-version changes)."""
    if not isinstance(patch, dict):
        return copy.deepcopy(patch)
    result = dict(target) if isinstance(target, dict) else {}
    for key, value in patch.items():
        if value is None:
            result.pop(key, None)
        else:
            result[key] = merge_patch(result.get(key), value)
    return result


class _Specs:
    """Both extracts, converted, with one REST variant per API version."""

    def __init__(self) -> None:
        self.rest = json.loads(REST_EXTRACT.read_text(encoding="utf-8"))
        self.hooks = json.loads(WEBHOOKS_EXTRACT.read_text(encoding="utf-8"))
        breaking = self.rest.get("breakingChanges", {"operations": {}, "schemas": {}})
        self.breaking: dict[str, dict[str, list[dict[str, Any]]]] = breaking
        found = {
            change["version"]
            for group in breaking.values()
            for changes in group.values()
            for change in changes
        }
        self.versions: list[str] = sorted({DEFAULT_API_VERSION, *found})
        self.operations: dict[str, dict[str, Any]] = {}
        resources = [
            (
                _HOOKS_URI,
                Resource.from_contents(
                    {"components": _convert_components(self.hooks, _HOOKS_URI)},
                    default_specification=DRAFT202012,
                ),
            )
        ]
        for version in self.versions:
            uri = rest_uri(version)
            rest = {
                "components": {
                    "schemas": {
                        name: self._patched(sub, breaking["schemas"].get(name, []), version)
                        for name, sub in self.rest["components"]["schemas"].items()
                    }
                }
            }
            self.operations[version] = {
                key: self._patched(op, breaking["operations"].get(key, []), version)
                for key, op in self.rest["operations"].items()
            }
            resources.append(
                (
                    uri,
                    Resource.from_contents(
                        {"components": _convert_components(rest, uri)},
                        default_specification=DRAFT4,
                    ),
                )
            )
        self.registry: Registry = Registry().with_resources(resources)

    @staticmethod
    def _patched(node: Any, changes: list[dict[str, Any]], version: str) -> Any:
        for change in changes:
            if change["version"] <= version:
                node = merge_patch(node, change["patch"])
        return node


def _convert_components(doc: Mapping[str, Any], uri: str) -> dict[str, Any]:
    return {
        "schemas": {
            name: to_json_schema(sub, uri) for name, sub in doc["components"]["schemas"].items()
        }
    }


def rest_uri(api_version: str) -> str:
    """The registry URI of the REST components for one API version."""
    return f"{_REST_URI}:{api_version}"


_lock = threading.Lock()
_specs: _Specs | None = None


def _get() -> _Specs:
    global _specs
    with _lock:
        if _specs is None:
            _specs = _Specs()
        return _specs


def reload() -> None:
    """Forget the loaded extracts (used by ``vendor/extract.py`` after rewriting them)."""
    global _specs
    with _lock:
        _specs = None
    _rest_validator.cache_clear()
    _webhook_validator.cache_clear()


def api_versions() -> list[str]:
    """REST API versions the extract describes (``X-GitHub-Api-Version`` values)."""
    return list(_get().versions)


def _check_version(api_version: str) -> None:
    if api_version not in _get().versions:
        raise KeyError(f"API version {api_version!r} is not described; have {_get().versions}")


def operation(
    method: str, path_template: str, api_version: str = DEFAULT_API_VERSION
) -> dict[str, Any]:
    """The extracted operation, e.g. ``operation("GET", "/repos/{owner}/{repo}")``."""
    _check_version(api_version)
    key = f"{method.upper()} {path_template}"
    try:
        return _get().operations[api_version][key]
    except KeyError:
        raise KeyError(
            f"{key} is not in the vendored REST extract (see vendor/extract.py)"
        ) from None


def removed_properties(schema_name: str, api_version: str) -> frozenset[str]:
    """Properties of a component schema that *api_version* removed (e.g. ``has_downloads``)."""
    _check_version(api_version)
    removed: set[str] = set()
    for change in _get().breaking["schemas"].get(schema_name, []):
        if change["version"] <= api_version:
            props = change["patch"].get("properties", {})
            removed |= {name for name, value in props.items() if value is None}
    return frozenset(removed)


def operations() -> list[str]:
    """All ``"METHOD /template"`` keys in the extract."""
    return list(_get().rest["operations"])


def example(method: str, path_template: str, status: str = "200", name: str | None = None) -> Any:
    """A deep copy of a vendored response example (the fake builds bodies from them)."""
    examples = operation(method, path_template)["responses"][status]["examples"]
    return copy.deepcopy(examples[name] if name is not None else next(iter(examples.values())))


@cache
def _rest_validator(
    method: str, path_template: str, part: str, api_version: str
) -> Validator | None:
    op = operation(method, path_template, api_version)
    if part == "request":
        raw = op["requestBody"]["schema"] if op["requestBody"] else None
    else:
        response = op["responses"].get(part)
        if response is None:
            if not part.startswith(("4", "5")):
                raise KeyError(f"{method} {path_template}: status {part} is not documented")
            # GitHub answers 401/403/404/5xx on every endpoint, documented or not.
            raw = {"$ref": "#/components/schemas/basic-error"}
        else:
            raw = response["schema"]
    if raw is None:
        return None
    schema = to_json_schema(raw, rest_uri(api_version))
    return Draft4Validator(schema, registry=_get().registry)


def webhook_validator(key: str) -> Validator:
    """The JSON Schema validator for a webhook ``event[.action]`` key."""
    return _webhook_validator(key)


@cache
def _webhook_validator(key: str) -> Validator:
    hooks = _get().hooks["webhooks"]
    if key not in hooks:
        raise KeyError(f"webhook {key!r} is not in the vendored extract (see vendor/extract.py)")
    schema = to_json_schema(hooks[key], _HOOKS_URI)
    return Draft202012Validator(schema, registry=_get().registry)


def _raise_first(validator: Validator, instance: Any, where: str) -> None:
    errors = list(validator.iter_errors(instance))
    if not errors:
        return
    err: ValidationError = best_match(errors)
    # For oneOf/anyOf failures the deepest context error is the useful one.
    while err.context:
        branches = [e for e in err.context if e.validator_value != "null"]
        if not branches:
            break
        err = best_match(branches)
    more = f" (+{len(errors) - 1} more)" if len(errors) > 1 else ""
    raise SchemaViolation(where, f"at {err.json_path}: {err.message}{more}")


def _coerce_query(value: str, schema: Mapping[str, Any]) -> Any:
    kind = schema.get("type")
    if kind == "integer":
        return int(value) if value.lstrip("-").isdigit() else value
    if kind == "boolean":
        return {"true": True, "false": False}.get(value, value)
    if kind == "array":
        return value.split(",")
    return value


def validate_request(
    method: str,
    path_template: str,
    body: Any,
    query: Mapping[str, str] | None = None,
    api_version: str = DEFAULT_API_VERSION,
) -> None:
    """Raise :class:`SchemaViolation` if a request body (or known query parameter) is invalid."""
    where = f"{method.upper()} {path_template} request"
    op = operation(method, path_template, api_version)
    for param in op["parameters"]:
        if param["in"] != "query" or query is None or param["name"] not in query:
            continue
        value = _coerce_query(query[param["name"]], param["schema"])
        validator = Draft4Validator(
            to_json_schema(param["schema"], rest_uri(api_version)), registry=_get().registry
        )
        _raise_first(validator, value, f"{where} query parameter {param['name']!r}")
    request_body = op["requestBody"]
    if request_body is None:
        return
    if body is None:
        if request_body["required"]:
            raise SchemaViolation(where, "a JSON request body is required")
        return
    validator = _rest_validator(method.upper(), path_template, "request", api_version)
    if validator is not None:
        _raise_first(validator, body, f"{where} body")


def validate_response(
    method: str,
    path_template: str,
    status: int | str,
    body: Any,
    api_version: str = DEFAULT_API_VERSION,
) -> None:
    """Raise :class:`SchemaViolation` if a response body is not what GitHub documents."""
    validator = _rest_validator(method.upper(), path_template, str(status), api_version)
    if validator is not None:
        _raise_first(
            validator, body, f"{method.upper()} {path_template} {status} response ({api_version})"
        )


def validate_webhook(key: str, payload: Any) -> None:
    """Validate a webhook payload; *key* is ``"event.action"`` or ``"event"`` (ping, status)."""
    _raise_first(_webhook_validator(key), payload, f"webhook {key}")


def webhook_keys() -> list[str]:
    """The ``event[.action]`` keys that have a vendored payload schema."""
    return list(_get().hooks["webhooks"])
