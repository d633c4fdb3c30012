"""What the API server checks beyond the schema, and the defaults it writes on create.

The strict schema catches unknown fields and wrong types; Kubernetes' own validation also
refuses names, label values, restart policies and changes to immutable fields, and those
refusals are part of what a client must get right. Each check here mirrors one the real API
server makes (its message text follows the real one); none is stricter than Kubernetes.
"""

from __future__ import annotations

import base64
import binascii
import copy
import re
import uuid
from typing import Any

from .store import now

__all__ = ["default", "immutable_changes", "semantic_errors", "strip_server_fields"]

Cause = tuple[str, str]  # (field path, message)

_DNS_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
_DNS_SUBDOMAIN = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")
_LABEL_VALUE = re.compile(r"^(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?$")
_QUALIFIED = re.compile(r"^([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]$")
_SECRET_KEY = re.compile(r"^[-._a-zA-Z0-9]+$")
SERVER_FIELDS = (
    "uid",
    "resourceVersion",
    "creationTimestamp",
    "generation",
    "deletionTimestamp",
    "deletionGracePeriodSeconds",
    "managedFields",
    "selfLink",
)


def strip_server_fields(obj: dict[str, Any], plural: str) -> None:
    """Drop what a client may not set on create: server metadata, and status of workloads."""
    meta = obj.setdefault("metadata", {})
    for key in SERVER_FIELDS:
        meta.pop(key, None)
    if plural in ("jobs", "pods"):
        obj.pop("status", None)


def _name_errors(plural: str, name: str) -> list[Cause]:
    out: list[Cause] = []
    if len(name) > 253 or not _DNS_SUBDOMAIN.match(name):
        out.append(
            (
                "metadata.name",
                f'Invalid value: "{name}": a lowercase RFC 1123 subdomain must consist of lower '
                "case alphanumeric characters, '-' or '.', and must start and end with an "
                "alphanumeric character",
            )
        )
    if plural == "jobs" and len(name) > 63:
        out.append(
            ("metadata.name", f'Invalid value: "{name}": must be no more than 63 characters')
        )
    return out


def _label_errors(path: str, labels: dict[str, Any]) -> list[Cause]:
    out: list[Cause] = []
    for key, value in labels.items():
        prefix, _, name = key.rpartition("/")
        if (
            (prefix and not _DNS_SUBDOMAIN.match(prefix))
            or len(name) > 63
            or not _QUALIFIED.match(name)
        ):
            out.append(
                (
                    f"{path}",
                    f'Invalid value: "{key}": name part must consist of '
                    "alphanumeric characters, '-', '_' or '.'",
                )
            )
        if not isinstance(value, str) or len(value) > 63 or not _LABEL_VALUE.match(value):
            out.append(
                (
                    f"{path}",
                    f'Invalid value: "{value}": a valid label must be an empty '
                    "string or consist of alphanumeric characters, '-', '_' or '.', "
                    "and must start and end with an alphanumeric character",
                )
            )
    return out


def _pod_spec_errors(path: str, spec: dict[str, Any]) -> list[Cause]:
    out: list[Cause] = []
    containers = spec.get("containers") or []
    if not containers:
        out.append((f"{path}.containers", "Required value"))
    names: set[str] = set()
    for i, container in enumerate(containers):
        name = container.get("name", "")
        if not _DNS_LABEL.match(name) or len(name) > 63:
            out.append((f"{path}.containers[{i}].name", f'Invalid value: "{name}"'))
        if name in names:
            out.append((f"{path}.containers[{i}].name", f'Duplicate value: "{name}"'))
        names.add(name)
        if not container.get("image"):
            out.append((f"{path}.containers[{i}].image", "Required value"))
        volumes = {v.get("name") for v in spec.get("volumes") or []}
        for j, mount in enumerate(container.get("volumeMounts") or []):
            if mount.get("name") not in volumes:
                field = f"{path}.containers[{i}].volumeMounts[{j}].name"
                out.append((field, f'Not found: "{mount.get("name")}"'))
    policy = spec.get("restartPolicy", "Always")
    if policy not in ("Always", "OnFailure", "Never"):
        out.append((f"{path}.restartPolicy", f'Unsupported value: "{policy}"'))
    grace = spec.get("terminationGracePeriodSeconds")
    if grace is not None and grace < 0:
        out.append((f"{path}.terminationGracePeriodSeconds", "must be greater than or equal to 0"))
    return out


def semantic_errors(plural: str, obj: dict[str, Any]) -> list[Cause]:
    """The API server's validation of one (defaulted) object, as (field, message) causes."""
    meta = obj.get("metadata", {})
    out = _name_errors(plural, meta.get("name", ""))
    out += _label_errors("metadata.labels", meta.get("labels") or {})
    controllers = [r for r in meta.get("ownerReferences") or [] if r.get("controller")]
    if len(controllers) > 1:
        out.append(
            ("metadata.ownerReferences", "Only one reference can have Controller set to true")
        )
    for i, ref in enumerate(meta.get("ownerReferences") or []):
        if not ref.get("uid"):
            out.append(
                (f"metadata.ownerReferences[{i}].uid", 'Invalid value: "": uid must not be empty')
            )
    spec = obj.get("spec") or {}
    if plural == "pods":
        out += _pod_spec_errors("spec", spec)
    elif plural == "jobs":
        template = spec.get("template") or {}
        tspec = template.get("spec") or {}
        out += _pod_spec_errors("spec.template.spec", tspec)
        out += _label_errors(
            "spec.template.metadata.labels", (template.get("metadata") or {}).get("labels") or {}
        )
        policy = tspec.get("restartPolicy", "Always")
        if policy not in ("OnFailure", "Never"):
            out.append(
                (
                    "spec.template.spec.restartPolicy",
                    f'Unsupported value: "{policy}": supported values: "OnFailure", "Never"',
                )
            )
        if spec.get("podFailurePolicy") is not None and policy != "Never":
            out.append(
                (
                    "spec.template.spec.restartPolicy",
                    'Invalid value: only "Never" is supported when podFailurePolicy is specified',
                )
            )
        for key in ("backoffLimit", "completions", "parallelism", "ttlSecondsAfterFinished"):
            if spec.get(key) is not None and spec[key] < 0:
                out.append(
                    (
                        f"spec.{key}",
                        f"Invalid value: {spec[key]}: must be greater than or equal to 0",
                    )
                )
        if spec.get("activeDeadlineSeconds") is not None and spec["activeDeadlineSeconds"] <= 0:
            out.append(("spec.activeDeadlineSeconds", "Invalid value: must be greater than 0"))
        for i, rule in enumerate((spec.get("podFailurePolicy") or {}).get("rules", [])):
            if ("onExitCodes" in rule) == ("onPodConditions" in rule):
                out.append(
                    (
                        f"spec.podFailurePolicy.rules[{i}]",
                        "Invalid value: specifying one of onExitCodes and onPodConditions is "
                        "required",
                    )
                )
            if rule.get("action") not in ("FailJob", "Ignore", "Count", "FailIndex"):
                out.append(
                    (
                        f"spec.podFailurePolicy.rules[{i}].action",
                        f'Unsupported value: "{rule.get("action")}"',
                    )
                )
            out += _exit_code_errors(f"spec.podFailurePolicy.rules[{i}].onExitCodes", rule, tspec)
    elif plural == "secrets":
        total = 0
        for key, value in (obj.get("data") or {}).items():
            if not _SECRET_KEY.match(key):
                out.append(
                    (
                        f"data[{key}]",
                        f'Invalid value: "{key}": a valid config key must consist of '
                        "alphanumeric characters, '-', '_' or '.'",
                    )
                )
            try:
                total += len(base64.b64decode(value, validate=True))
            except (binascii.Error, TypeError):
                out.append((f"data[{key}]", "Invalid value: illegal base64 data"))
        if total > 1024 * 1024:
            out.append(("data", "Too long: must have at most 1048576 bytes"))
    return out


def _exit_code_errors(path: str, rule: dict[str, Any], pod_spec: dict[str, Any]) -> list[Cause]:
    """The API server's rules for ``onExitCodes``: values sorted, unique, no 0 with In."""
    codes = rule.get("onExitCodes")
    if codes is None:
        return []
    out: list[Cause] = []
    values = codes.get("values") or []
    if not values or len(values) > 255:
        out.append((f"{path}.values", "Invalid value: between 1 and 255 values are required"))
    if values != sorted(set(values)):
        out.append((f"{path}.values", "Invalid value: must be ordered and unique"))
    if codes.get("operator") == "In" and 0 in values:
        out.append((f"{path}.values", "Invalid value: 0: must not be 0 for the In operator"))
    if codes.get("operator") not in ("In", "NotIn"):
        out.append((f"{path}.operator", f'Unsupported value: "{codes.get("operator")}"'))
    names = {c.get("name") for c in pod_spec.get("containers") or []}
    if codes.get("containerName") not in (None, *names):
        out.append(
            (
                f"{path}.containerName",
                f'Invalid value: "{codes["containerName"]}": '
                "must be one of the container or initContainer names in the pod template",
            )
        )
    return out


def default(plural: str, obj: dict[str, Any], namespace: str) -> dict[str, Any]:
    """The object as the API server stores it on create: defaults, uid, status."""
    obj = copy.deepcopy(obj)
    meta = obj["metadata"]
    meta["namespace"] = namespace
    meta["uid"] = str(uuid.uuid4())
    if plural == "secrets":
        data = dict(obj.get("data") or {})
        for key, value in (obj.pop("stringData", None) or {}).items():
            data[key] = base64.b64encode(str(value).encode()).decode()
        if data:
            obj["data"] = data
        obj.setdefault("type", "Opaque")
    elif plural == "jobs":
        spec = obj.setdefault("spec", {})
        uid = meta["uid"]
        selector = {"batch.kubernetes.io/controller-uid": uid}
        if not spec.get("manualSelector"):
            spec["selector"] = {"matchLabels": selector}
        template_meta = spec.setdefault("template", {}).setdefault("metadata", {})
        template_meta["labels"] = {
            **(template_meta.get("labels") or {}),
            "batch.kubernetes.io/controller-uid": uid,
            "batch.kubernetes.io/job-name": meta["name"],
            "controller-uid": uid,
            "job-name": meta["name"],
        }
        if not meta.get("labels"):  # batch/v1 defaulting: empty Job labels <- template's
            meta["labels"] = dict(template_meta["labels"])
        spec.setdefault("backoffLimit", 6)
        spec.setdefault("completions", 1)
        spec.setdefault("parallelism", 1)
        spec.setdefault("completionMode", "NonIndexed")
        spec.setdefault("suspend", False)
        spec.setdefault(
            "podReplacementPolicy",
            "Failed" if spec.get("podFailurePolicy") else "TerminatingOrFailed",
        )
        tspec = spec["template"].setdefault("spec", {})
        tspec.setdefault("terminationGracePeriodSeconds", 30)
        tspec.setdefault("dnsPolicy", "ClusterFirst")
        tspec.setdefault("schedulerName", "default-scheduler")
        obj["status"] = {}
    elif plural == "pods":
        spec = obj.setdefault("spec", {})
        spec.setdefault("terminationGracePeriodSeconds", 30)
        spec.setdefault("restartPolicy", "Always")
        spec.setdefault("serviceAccountName", "default")
        spec["nodeName"] = spec.get("nodeName") or "kubelite"
        obj["status"] = {"phase": "Pending", "qosClass": "BestEffort", "startTime": now()}
    return obj


_JOB_IMMUTABLE = (
    "selector",
    "template",
    "completions",
    "completionMode",
    "podFailurePolicy",
    "manualSelector",
    "podReplacementPolicy",
    "backoffLimitPerIndex",
)


def immutable_changes(plural: str, old: dict[str, Any], new: dict[str, Any]) -> list[Cause]:
    """Updates the API server refuses as ``field is immutable``."""
    out: list[Cause] = []
    if plural == "jobs":
        for key in _JOB_IMMUTABLE:
            if old["spec"].get(key) != new.get("spec", {}).get(key):
                out.append((f"spec.{key}", "Invalid value: field is immutable"))
    elif plural == "pods":
        a, b = copy.deepcopy(old["spec"]), copy.deepcopy(new.get("spec", {}))
        for spec in (a, b):
            spec.pop("activeDeadlineSeconds", None)
            for c in spec.get("containers", []):
                c.pop("image", None)
        if a != b:
            out.append(
                (
                    "spec",
                    "Forbidden: pod updates may not change fields other than "
                    "`spec.containers[*].image`, `spec.activeDeadlineSeconds` and a few more",
                )
            )
    elif plural == "secrets":
        if old.get("type") != new.get("type"):
            out.append(("type", "Invalid value: field is immutable"))
        if old.get("immutable") and (
            old.get("data") != new.get("data") or not new.get("immutable")
        ):
            out.append(("data", "Forbidden: field is immutable when `immutable` is set"))
    return out
