"""Strict Kubernetes JSON schemas from the ``kubernetes-validate`` wheel, offline.

One constant, ``KUBE_VERSION``, names the Kubernetes version that kubelite serves and that
the Helm chart's rendered manifests are checked against, so the two can never drift apart.
It is the newest version the installed wheel ships *strict* schemas for (``-local-strict``:
``additionalProperties: false`` everywhere, so an unknown or misspelt field is an error).

``errors(manifest)`` returns every schema error as ``"<path>: <message>"`` strings (empty when
the manifest is valid); validators are built once per kind, since the definitions file is
large (≈2 MB) and loading it per request would dominate a test.
"""

from __future__ import annotations

import functools
import json
import re
from importlib import resources
from typing import Any

import jsonschema
import referencing
import referencing.jsonschema

__all__ = ["KUBE_VERSION", "SchemaNotFound", "errors", "schema_dir"]

#: The Kubernetes minor version kubelite serves; the chart is rendered against the same one.
KUBE_VERSION = "1.37"


class SchemaNotFound(LookupError):
    """The wheel has no strict schema for this apiVersion/kind at KUBE_VERSION."""


def schema_dir(version: str = KUBE_VERSION) -> Any:
    """The wheel's strict schema folder for a ``major.minor`` version."""
    root = resources.files("kubernetes_validate").joinpath("kubernetes-json-schema")
    folder = root.joinpath(f"v{version}.0-local-strict")
    if not folder.is_dir():
        raise SchemaNotFound(f"kubernetes-validate ships no strict schemas for {version}")
    return folder


@functools.cache
def _registry(version: str) -> referencing.Registry[Any]:
    definitions = json.loads(schema_dir(version).joinpath("_definitions.json").read_text())
    resource = referencing.Resource.from_contents(
        definitions, default_specification=referencing.jsonschema.DRAFT202012
    )
    # The per-kind files refer to "/api/_definitions.json"; the file's own $id is absolute.
    return referencing.Registry().with_resources(
        [("/api/_definitions.json", resource), (definitions["$id"], resource)]
    )


@functools.cache
def _validator(version: str, api_version: str, kind: str) -> jsonschema.protocols.Validator:
    # "rbac.authorization.k8s.io/v1" -> "rbac-v1", "batch/v1" -> "batch-v1", "v1" -> "v1".
    group_version = re.sub(r"^([^./]*)(?:\.[^/]*)?/", r"\1-", api_version)
    path = schema_dir(version).joinpath(f"{kind.lower()}-{group_version}.json")
    if not path.is_file():
        raise SchemaNotFound(f"no strict schema for {api_version} {kind} at Kubernetes {version}")
    schema = json.loads(path.read_text())
    cls = jsonschema.validators.Draft202012Validator
    return cls(schema, registry=_registry(version))


def errors(manifest: dict[str, Any], version: str = KUBE_VERSION) -> list[str]:
    """Every strict-schema error of one manifest, as ``"<json path>: <message>"``."""
    api_version, kind = manifest.get("apiVersion"), manifest.get("kind")
    if not isinstance(api_version, str) or not isinstance(kind, str):
        return ["$: apiVersion and kind must be strings"]
    validator = _validator(version, api_version, kind)
    found = sorted(validator.iter_errors(manifest), key=lambda e: list(map(str, e.path)))
    return [f"{_path(e.absolute_path)}: {e.message}" for e in found]


def _path(parts: Any) -> str:
    out = ""
    for part in parts:
        out += f"[{part}]" if isinstance(part, int) else f".{part}"
    return out.lstrip(".") or "$"
