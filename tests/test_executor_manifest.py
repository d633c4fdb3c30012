"""The Kubernetes executor's Job and Secret, built by a pure function: each field and why."""

from __future__ import annotations

import base64
import re

from app.executor.manifest import (
    LABEL_RUN,
    LABEL_TARGET,
    JobParams,
    job_manifest,
    job_name,
    job_outcome,
    label_value,
    secret_manifest,
)

DNS_1123 = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")


def params(**overrides: object) -> JobParams:
    values: dict[str, object] = {
        "run_id": 42,
        "target": "env-pr-42-k3x9q",
        "silo": "aws-default",
        "namespace": "runbot",
        "image": "ghcr.io/example/runbot:1.2.3",
        "service_account": "runbot-engine-{silo}",
        "callback_url": "http://runbot.runbot.svc:8000",
        "cpu": "500m",
        "memory": "1Gi",
        "timeout": 3600.0,
        "cancel_grace": 60.0,
        "spec_digest": "ab" * 32,
    }
    values.update(overrides)
    return JobParams(**values)  # type: ignore[arg-type]


def test_the_name_is_deterministic_dns_1123_and_distinct_per_target_and_run() -> None:
    long_target = "silo-" + "a-very-long-silo-name-" * 5
    names = {
        job_name("env-pr-42-k3x9q", 42),
        job_name("env-pr-42-k3x9q", 43),
        job_name("env_PR_42_k3x9q", 42),  # reads like the first, hashes differently
        job_name(long_target, 42),
        job_name(long_target + "x", 42),
    }
    assert len(names) == 5
    assert job_name("env-pr-42-k3x9q", 42) == job_name("env-pr-42-k3x9q", 42)
    for name in names:
        assert len(name) <= 63 and DNS_1123.match(name), name


def test_the_job_is_built_for_runbot_to_own_retries_cancel_and_adoption() -> None:
    manifest = job_manifest(params())
    spec = manifest["spec"]
    pod = spec["template"]["spec"]
    container = pod["containers"][0]
    assert manifest["metadata"]["name"] == job_name("env-pr-42-k3x9q", 42)
    assert manifest["metadata"]["labels"][LABEL_RUN] == "42"
    assert manifest["metadata"]["labels"][LABEL_TARGET] == "env-pr-42-k3x9q"
    assert spec["template"]["metadata"]["labels"][LABEL_RUN] == "42"  # pods found by run
    assert spec["backoffLimit"] == 0
    assert spec["activeDeadlineSeconds"] > 3600 + 60  # the timeout and the ladder fit inside
    assert spec["ttlSecondsAfterFinished"] == 3600
    assert pod["restartPolicy"] == "Never"
    assert pod["terminationGracePeriodSeconds"] > 60 + 10  # outlasts SIGINT grace + SIGTERM
    rules = spec["podFailurePolicy"]["rules"]
    assert {"action": "Ignore", "onPodConditions": [{"type": "DisruptionTarget"}]} in rules
    assert any(
        rule["action"] == "FailJob" and rule["onExitCodes"]["containerName"] == container["name"]
        for rule in rules
    )
    assert pod["serviceAccountName"] == "runbot-engine-aws-default"
    assert pod["securityContext"] == {
        "runAsNonRoot": True,
        "runAsUser": 10001,
        "runAsGroup": 10001,
        "seccompProfile": {"type": "RuntimeDefault"},
    }
    assert container["securityContext"]["allowPrivilegeEscalation"] is False
    image_user = job_manifest(params(run_as_user=0))["spec"]["template"]["spec"]
    assert "runAsUser" not in image_user["securityContext"]
    assert container["command"] == ["runbot", "engine", "exec", "--run", "42"]
    assert container["resources"] == {"requests": {"cpu": "500m", "memory": "1Gi"}}
    env = {item["name"]: item for item in container["env"]}
    assert env["RUNBOT_RUN_CALLBACK"]["value"] == "http://runbot.runbot.svc:8000"
    ref = env["RUNBOT_RUN_TOKEN"]["valueFrom"]["secretKeyRef"]
    assert ref["name"] == manifest["metadata"]["name"]
    assert "value" not in env["RUNBOT_RUN_TOKEN"]  # the token is never in the Job itself


def test_deadline_and_grace_follow_the_engine_settings() -> None:
    short = job_manifest(params(timeout=60.0, cancel_grace=5.0))["spec"]
    long = job_manifest(params(timeout=7200.0, cancel_grace=120.0))["spec"]
    assert short["activeDeadlineSeconds"] < long["activeDeadlineSeconds"]
    assert short["activeDeadlineSeconds"] > 60 + 5 + 10
    grace = long["template"]["spec"]["terminationGracePeriodSeconds"]
    assert grace > 120 + 10


def test_the_secret_holds_only_the_token_and_is_owned_by_the_job() -> None:
    secret = secret_manifest(params(), "rbr_token-value", "uid-123")
    assert secret["metadata"]["name"] == job_name("env-pr-42-k3x9q", 42)
    assert list(secret["data"]) == ["token"]
    assert base64.b64decode(secret["data"]["token"]) == b"rbr_token-value"
    (owner,) = secret["metadata"]["ownerReferences"]
    assert owner == {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "name": secret["metadata"]["name"],
        "uid": "uid-123",
    }


def test_label_values_stay_valid_for_any_target_name() -> None:
    assert label_value("env-pr-42-k3x9q") == "env-pr-42-k3x9q"
    long = "silo-" + "x" * 70
    value = label_value(long)
    assert len(value) <= 63 and value != label_value(long + "y")
    assert re.match(r"^[A-Za-z0-9]([A-Za-z0-9_.-]*[A-Za-z0-9])?$", label_value("-odd name!"))


def test_a_silo_without_a_name_gets_the_default_service_account() -> None:
    pod = job_manifest(params(silo=None))["spec"]["template"]["spec"]
    assert pod["serviceAccountName"] == "runbot-engine-default"
    fixed = job_manifest(params(service_account="engine"))["spec"]["template"]["spec"]
    assert fixed["serviceAccountName"] == "engine"


def test_the_job_outcome_is_read_from_conditions() -> None:
    assert job_outcome(None) is None
    assert job_outcome({"active": 1}) is None
    failed = {"conditions": [{"type": "Failed", "status": "True", "reason": "DeadlineExceeded"}]}
    assert job_outcome(failed) == ("failed", "DeadlineExceeded")
    assert job_outcome({"conditions": [{"type": "Complete", "status": "True"}]}) == (
        "complete",
        "",
    )
    assert job_outcome({"conditions": [{"type": "Failed", "status": "False"}]}) is None


def test_an_unrecorded_run_s_negative_id_still_makes_valid_names_and_labels() -> None:
    manifest = job_manifest(params(run_id=-12345))
    name = manifest["metadata"]["name"]
    assert DNS_1123.match(name) and name.startswith("rb-u12345-")
    label = manifest["metadata"]["labels"][LABEL_RUN]
    assert re.match(r"^[A-Za-z0-9]([A-Za-z0-9_.-]*[A-Za-z0-9])?$", label)
    assert manifest["metadata"]["annotations"]["runbot.dev/run-id"] == "-12345"
    container = manifest["spec"]["template"]["spec"]["containers"][0]
    assert container["command"][-1] == "-12345"
