"""The Kubernetes objects of one run: a batch/v1 Job and the Secret holding its run token. Pure.

Why each field is what it is:
- The name is a function of (target, run id): a second create of the same run gets 409 and
  the dispatcher adopts the Job instead of starting another one.
- `backoffLimit: 0`: runbot owns retries (it records each run, with its log); the Job never
  re-runs an apply on its own.
- `podFailurePolicy`: a pod evicted or preempted (`DisruptionTarget`) is `Ignore`d, so the Job
  makes a new pod instead of failing, while an engine exit code other than 0 fails the Job at
  once (`FailJob`).
- `activeDeadlineSeconds` is the engine timeout plus the cancel ladder plus a margin: the pod's
  own timeout fires first and saves state; the deadline is the backstop.
- `terminationGracePeriodSeconds` outlasts the cancel ladder (SIGINT, `cancel_grace`, SIGTERM,
  10 s), so a deleted Job's pod can stop its engine cleanly before the kubelet's SIGKILL.
- `ttlSecondsAfterFinished`: finished Jobs (and their pods and logs) are cleaned up; runbot
  has the log and the result already, as the pod pushed them.
- The pod runs as the image's non-root user with no privilege escalation, no capabilities
  and the runtime's seccomp profile (PodSecurity `restricted`), so it can read nothing of the
  node's but what its container is given.
- One ServiceAccount per silo (`{silo}` in the template) for workload identity: the cloud
  credentials a silo's templates get come from the cluster, not from runbot. The pod gets no
  Kubernetes API token (`automountServiceAccountToken: false`); workload identity webhooks
  project their own.
- The token is in a Secret (`secretKeyRef`), never in the Job spec that anyone who can read
  Jobs sees. The Secret is created after the Job, owned by it (`ownerReferences`), so deleting
  the Job deletes it and runbot's Role needs create/get/delete on secrets, never patch.
"""

from __future__ import annotations

import base64
import hashlib
import re
from dataclasses import dataclass
from typing import Any

LABEL_RUN = "runbot.dev/run"
LABEL_TARGET = "runbot.dev/target"
LABEL_SPEC = "runbot.dev/spec"
#: The run id as it is (a label value cannot start with `-`, as unrecorded runs' ids do).
ANNOTATION_RUN = "runbot.dev/run-id"
MANAGED_BY = {"app.kubernetes.io/managed-by": "runbot"}
CONTAINER = "engine"
TOKEN_KEY = "token"
STOP_LADDER_EXTRA = 10  # seconds between the runner's SIGTERM and its SIGKILL
_NAME_MAX = 63
_LABEL_OK = re.compile(r"^[A-Za-z0-9]([A-Za-z0-9_.-]{0,61}[A-Za-z0-9])?$")


def _readable(text: str, room: int) -> str:
    cleaned = re.sub(r"[^a-z0-9-]+", "-", text.lower()).strip("-")
    return cleaned[:room].rstrip("-")


def job_name(target: str, run_id: int) -> str:
    """`rb-<run>-<readable target>-<hash>`: DNS-1123, at most 63 characters, never truncated
    to a name another (target, run) has, since the hash covers the exact pair."""
    digest = hashlib.sha256(f"{target}\0{run_id}".encode()).hexdigest()[:10]
    head = f"rb-{run_id}-" if run_id >= 0 else f"rb-u{-run_id}-"
    room = _NAME_MAX - len(head) - 1 - len(digest)
    readable = _readable(target, room)
    return f"{head}{readable}-{digest}" if readable else f"{head}{digest}"


def label_value(text: str) -> str:
    """`text` if it is a valid label value, else a readable part and a hash of all of it."""
    if _LABEL_OK.match(text):
        return text
    digest = hashlib.sha256(text.encode()).hexdigest()[:12]
    readable = re.sub(r"[^A-Za-z0-9_.-]+", "-", text)[: _NAME_MAX - 13].strip("-_.")
    return f"{readable}-{digest}" if readable else digest


def service_account(template: str, silo: str | None) -> str:
    name = template.replace("{silo}", _readable(silo or "default", 50) or "default")
    return name[:253]


@dataclass(frozen=True)
class JobParams:
    run_id: int
    target: str
    silo: str | None
    namespace: str
    image: str
    service_account: str  # a template: `{silo}` is replaced
    callback_url: str
    cpu: str
    memory: str
    timeout: float  # the engine's, seconds
    cancel_grace: float
    spec_digest: str  # what the Job runs: lets a takeover tell "the same job" apart
    ttl_after_finished: int = 3600
    image_pull_policy: str = "IfNotPresent"
    run_as_user: int = 10001  # the image's own user (deploy/Dockerfile); 0: the image's USER


def run_label(run_id: int) -> str:
    return label_value(str(run_id))


def labels(params: JobParams) -> dict[str, str]:
    return {
        **MANAGED_BY,
        LABEL_RUN: run_label(params.run_id),
        LABEL_TARGET: label_value(params.target),
        LABEL_SPEC: params.spec_digest[:40],
    }


def active_deadline(timeout: float, cancel_grace: float) -> int:
    """The engine timeout, the stop ladder, and two minutes to fetch, start and push."""
    return int(timeout + cancel_grace + STOP_LADDER_EXTRA + 120)


def termination_grace(cancel_grace: float) -> int:
    return int(cancel_grace + STOP_LADDER_EXTRA + 30)


def pod_security(run_as_user: int) -> dict[str, Any]:
    """PodSecurity `restricted`: not root, the runtime's seccomp profile. With 0, the image's
    own USER applies (the kubelet then refuses a root one only if told runAsNonRoot)."""
    context: dict[str, Any] = {"seccompProfile": {"type": "RuntimeDefault"}}
    if run_as_user:
        context.update(runAsNonRoot=True, runAsUser=run_as_user, runAsGroup=run_as_user)
    return context


def job_manifest(params: JobParams) -> dict[str, Any]:
    name = job_name(params.target, params.run_id)
    run_labels = labels(params)
    return {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": {
            "name": name,
            "namespace": params.namespace,
            "labels": run_labels,
            "annotations": {ANNOTATION_RUN: str(params.run_id)},
        },
        "spec": {
            "backoffLimit": 0,
            "activeDeadlineSeconds": active_deadline(params.timeout, params.cancel_grace),
            "ttlSecondsAfterFinished": params.ttl_after_finished,
            "podFailurePolicy": {
                "rules": [
                    {"action": "Ignore", "onPodConditions": [{"type": "DisruptionTarget"}]},
                    {
                        "action": "FailJob",
                        "onExitCodes": {
                            "containerName": CONTAINER,
                            "operator": "NotIn",
                            "values": [0],
                        },
                    },
                ]
            },
            "template": {
                "metadata": {"labels": run_labels},
                "spec": {
                    "restartPolicy": "Never",
                    "terminationGracePeriodSeconds": termination_grace(params.cancel_grace),
                    "serviceAccountName": service_account(params.service_account, params.silo),
                    "automountServiceAccountToken": False,
                    "securityContext": pod_security(params.run_as_user),
                    "containers": [
                        {
                            "name": CONTAINER,
                            "image": params.image,
                            "imagePullPolicy": params.image_pull_policy,
                            "command": ["runbot", "engine", "exec", "--run", str(params.run_id)],
                            "env": [
                                {"name": "RUNBOT_RUN_CALLBACK", "value": params.callback_url},
                                {
                                    "name": "RUNBOT_RUN_TOKEN",
                                    "valueFrom": {"secretKeyRef": {"name": name, "key": TOKEN_KEY}},
                                },
                            ],
                            "resources": {"requests": {"cpu": params.cpu, "memory": params.memory}},
                            "securityContext": {
                                "allowPrivilegeEscalation": False,
                                "capabilities": {"drop": ["ALL"]},
                            },
                            "volumeMounts": [{"name": "work", "mountPath": "/tmp"}],
                        }
                    ],
                    "volumes": [{"name": "work", "emptyDir": {}}],
                },
            },
        },
    }


def secret_manifest(
    params: JobParams, token: str, job_uid: str, job_name_: str | None = None
) -> dict[str, Any]:
    """The run token's Secret, owned by the Job (deleted with it by the garbage collector)."""
    name = job_name_ or job_name(params.target, params.run_id)
    return {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": {
            "name": name,
            "namespace": params.namespace,
            "labels": labels(params),
            "ownerReferences": [
                {"apiVersion": "batch/v1", "kind": "Job", "name": name, "uid": job_uid}
            ],
        },
        "type": "Opaque",
        "data": {TOKEN_KEY: base64.b64encode(token.encode()).decode()},
    }


# What a Job's status says, read from its conditions (the API's, not a pod's log).
def job_outcome(status: dict[str, Any] | None) -> tuple[str, str] | None:
    """("failed", reason) or ("complete", "") once the Job has finished; None while it runs."""
    for condition in (status or {}).get("conditions") or []:
        if condition.get("status") != "True":
            continue
        if condition.get("type") == "Failed":
            return "failed", str(condition.get("reason") or "Failed")
        if condition.get("type") == "Complete":
            return "complete", ""
    return None
