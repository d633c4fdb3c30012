"""kubelite behaves like Kubernetes where runbot's executor depends on it, through lightkube.

Each test drives the real lightkube client against a fresh kubelite and checks one behaviour
the Kubernetes executor relies on: strict-schema refusals, 409 on a duplicate, the orphaning
default of a Job delete against Background and Foreground, deadlines, TTL cleanup, suspend,
podFailurePolicy, and the PID-1 signal rules of a real process in its own PID namespace.
"""

from __future__ import annotations

import signal
import time
from pathlib import Path
from typing import Any

import lightkube
import pytest
from lightkube.models.meta_v1 import ObjectMeta
from lightkube.operators import in_
from lightkube.resources.batch_v1 import Job
from lightkube.resources.core_v1 import Pod, Secret
from lightkube.types import CascadeType, PatchType

from tests.kubelite import KUBE_VERSION, KubeLite
from tests.kubelite import schema as kube_schema
from tests.kubelite.kubelet import process_identity

pytest_plugins = ["tests.kubelite.pytest_plugin"]

# A shell loop that exits 143 on SIGTERM: PID 1 with a handler, so the signal is delivered.
TRAPS_TERM = "trap 'echo got-term; exit 143' TERM; echo started; while :; do sleep 0.05; done"


def client(kube: KubeLite) -> lightkube.Client:
    return lightkube.Client(lightkube.KubeConfig.from_file(kube.kubeconfig_path))


def job_manifest(name: str, script: str, **spec: Any) -> dict[str, Any]:
    grace = spec.pop("grace", 1)
    env = spec.pop("env", None)
    container: dict[str, Any] = {
        "name": "main",
        "image": "runbot:test",
        "command": ["sh", "-c", script],
    }
    if env:
        container["env"] = env
    return {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": {"name": name, "labels": {"app": "runbot"}},
        "spec": {
            "backoffLimit": 0,
            "template": {
                "spec": {
                    "restartPolicy": "Never",
                    "terminationGracePeriodSeconds": grace,
                    "containers": [container],
                }
            },
            **spec,
        },
    }


def make_job(name: str, script: str, **spec: Any) -> Job:
    return Job.from_dict(job_manifest(name, script, **spec))


def condition(kube: KubeLite, name: str, kind: str) -> dict[str, Any] | None:
    job = kube.job(name) or {}
    for cond in job.get("status", {}).get("conditions", []):
        if cond["type"] == kind and cond["status"] == "True":
            return cond
    return None


def running_pod(kube: KubeLite, job: str) -> dict[str, Any]:
    def find() -> dict[str, Any] | None:
        for pod in kube.pods():
            if (
                pod["metadata"]["labels"].get("job-name") == job
                and pod["status"].get("phase") == "Running"
                and b"started" in _log(kube, pod["metadata"]["name"])
            ):
                return pod
        return None

    return kube.wait_for(find, 5)


def _log(kube: KubeLite, pod: str) -> bytes:
    try:
        return kube.pod_log(pod).encode()
    except KeyError:
        return b""


def alive(ident: tuple[int, int] | None) -> bool:
    """The process named by (pid, start time) still runs (a zombie or a reused pid does not)."""
    return ident is not None and process_identity(ident[0]) == ident


def test_schema_version_is_the_newest_strict_one_shipped() -> None:
    assert kube_schema.schema_dir(KUBE_VERSION).joinpath("job-batch-v1.json").is_file()
    newer = f"1.{int(KUBE_VERSION.split('.')[1]) + 1}"
    with pytest.raises(kube_schema.SchemaNotFound):
        kube_schema.schema_dir(newer)


def test_a_job_runs_its_command_and_completes(kubelite: KubeLite) -> None:
    kube = client(kubelite)
    kube.create(make_job("hello", "echo hello from $(HOSTNAME)"))
    done = kube.wait(Job, "hello", for_conditions=["Complete"])
    assert done.status is not None and done.status.succeeded == 1
    conditions = [c.type for c in done.status.conditions or []]
    assert conditions == ["SuccessCriteriaMet", "Complete"]
    (pod,) = kube.list(Pod, labels={"job-name": "hello"})
    assert pod.metadata is not None and pod.metadata.name is not None
    assert pod.metadata.name.startswith("hello-") and len(pod.metadata.name) == len("hello-") + 5
    assert set(pod.metadata.labels or {}) >= {
        "job-name",
        "controller-uid",
        "batch.kubernetes.io/job-name",
    }
    assert pod.status is not None and pod.status.phase == "Succeeded"
    # $(HOSTNAME) is Kubernetes' own expansion of the container's env in its args.
    assert "".join(kube.log(pod.metadata.name)) == f"hello from {pod.metadata.name}\n"
    assert [j.metadata.name for j in kube.list(Job, labels={"app": "runbot"})] == ["hello"]
    assert list(kube.list(Job, labels={"app": in_(["other", "web"])})) == []
    assert len(list(kube.list(Job, labels={"app": in_(["runbot", "web"])}))) == 1
    assert kubelite.errors == []


def test_an_unknown_field_is_refused_by_the_strict_schema(kubelite: KubeLite) -> None:
    kube = client(kubelite)
    manifest = job_manifest("typo", "true")
    manifest["spec"]["activeDeadline"] = 10  # activeDeadlineSeconds, misspelt
    with pytest.raises(lightkube.ApiError) as refused:
        kube.create(Job(metadata=ObjectMeta(name="typo"), spec=manifest["spec"]))
    assert refused.value.status.code == 422
    assert refused.value.status.reason == "Invalid"
    assert "'activeDeadline' was unexpected" in (refused.value.status.message or "")
    assert len(kubelite.errors) == 1 and "activeDeadline" in kubelite.errors[0]
    assert kubelite.jobs() == []


def test_kubernetes_validation_beyond_the_schema_is_422(kubelite: KubeLite) -> None:
    kube = client(kubelite)
    manifest = job_manifest("always", "true")
    manifest["spec"]["template"]["spec"]["restartPolicy"] = "Always"
    with pytest.raises(lightkube.ApiError) as refused:
        kube.create(Job.from_dict(manifest))
    assert refused.value.status.code == 422
    assert "restartPolicy" in (refused.value.status.message or "")
    kube.create(make_job("fixed", "sleep 5", suspend=True))
    patch = {"spec": {"template": {"spec": {"containers": [{"name": "main", "image": "b"}]}}}}
    with pytest.raises(lightkube.ApiError) as immutable:
        kube.patch(Job, "fixed", patch, patch_type=PatchType.MERGE)
    assert immutable.value.status.code == 422
    assert "field is immutable" in (immutable.value.status.message or "")
    with pytest.raises(lightkube.ApiError) as missing:
        kube.get(Job, "nope")
    assert missing.value.status.code == 404 and missing.value.status.reason == "NotFound"


def test_a_duplicate_create_is_409_already_exists(kubelite: KubeLite) -> None:
    kube = client(kubelite)
    kube.create(make_job("once", "sleep 5", suspend=True))
    with pytest.raises(lightkube.ApiError) as second:
        kube.create(make_job("once", "sleep 5", suspend=True))
    assert second.value.status.code == 409
    assert second.value.status.reason == "AlreadyExists"
    assert kubelite.job_creations("once") == 2
    assert len(kubelite.jobs()) == 1 and kubelite.errors == []


def test_a_delete_without_propagation_policy_orphans_the_running_pod(kubelite: KubeLite) -> None:
    kube = client(kubelite)
    kube.create(make_job("orphaned", TRAPS_TERM))
    pod = running_pod(kubelite, "orphaned")
    name = pod["metadata"]["name"]
    pid1 = process_identity(kubelite.pod_pid1(name))
    kube.delete(Job, "orphaned")
    assert kubelite.jobs() == []
    time.sleep(0.3)
    left = kubelite.pod(name)
    assert left is not None and left["status"]["phase"] == "Running"
    assert "ownerReferences" not in left["metadata"]
    assert alive(pid1)
    (delete,) = [r for r in kubelite.requests if r.method == "DELETE"]
    assert "propagationPolicy" not in delete.query


def test_a_background_delete_terminates_the_pod_with_sigterm(kubelite: KubeLite) -> None:
    kube = client(kubelite)
    kube.create(make_job("cancelled", TRAPS_TERM))
    name = running_pod(kubelite, "cancelled")["metadata"]["name"]
    pid1 = process_identity(kubelite.pod_pid1(name))
    process = kubelite.kubelet.by_name(name)
    kube.delete(Job, "cancelled", cascade=CascadeType.BACKGROUND)
    assert kubelite.jobs() == []  # the Job goes first, its pod after
    kubelite.wait_for(lambda: kubelite.pod(name) is None, 5)
    assert not alive(pid1)
    assert process.signals == [signal.SIGTERM]
    assert process.log_path.exists() is False  # the pod's log went with the pod
    (delete,) = [r for r in kubelite.requests if r.method == "DELETE"]
    assert delete.query["propagationPolicy"] == "Background"


def test_a_foreground_delete_removes_the_job_after_its_pod(kubelite: KubeLite) -> None:
    kube = client(kubelite)
    kube.create(make_job("fg", TRAPS_TERM))
    name = running_pod(kubelite, "fg")["metadata"]["name"]
    kube.delete(Job, "fg", cascade=CascadeType.FOREGROUND)
    job = kubelite.job("fg")
    assert job is not None and job["metadata"].get("deletionTimestamp")
    assert "foregroundDeletion" in job["metadata"]["finalizers"]
    kubelite.wait_for(lambda: kubelite.job("fg") is None, 5)
    assert kubelite.pod(name) is None


def test_pid_1_of_the_pod_is_the_command_in_its_own_namespace(kubelite: KubeLite) -> None:
    kube = client(kubelite)
    # $$ in a container's args is Kubernetes' escape for "$": $$$$ reaches sh as $$.
    kube.create(make_job("pid", "echo $$$$; ls /proc | grep -c '^[0-9]'"))
    kube.wait(Job, "pid", for_conditions=["Complete"])
    (pod,) = kubelite.pods()
    pid, visible = kubelite.pod_log(pod["metadata"]["name"]).split()
    assert pid == "1"
    assert int(visible) <= 3  # sh, ls and grep: the host's processes are out of sight


def test_pid_1_without_a_sigterm_handler_is_sigkilled_after_grace(kubelite: KubeLite) -> None:
    kube = client(kubelite)
    pod = Pod.from_dict(
        {
            "metadata": {"name": "stubborn"},
            "spec": {
                "restartPolicy": "Never",
                "terminationGracePeriodSeconds": 1,
                "containers": [
                    {"name": "main", "image": "x", "command": ["sleep", "30"]},
                ],
            },
        }
    )
    kube.create(pod)
    kubelite.wait_for(
        lambda: (kubelite.pod("stubborn") or {}).get("status", {}).get("phase") == "Running", 5
    )
    pid1 = process_identity(kubelite.pod_pid1("stubborn"))
    process = kubelite.kubelet.by_name("stubborn")
    started = time.monotonic()
    kube.delete(Pod, "stubborn")
    time.sleep(0.5)
    assert alive(pid1), "sleep as PID 1 has no SIGTERM handler: the kernel drops the signal"
    kubelite.wait_for(lambda: not alive(pid1), 5)
    assert 0.9 < time.monotonic() - started < 5
    assert process.signals == [signal.SIGTERM, signal.SIGKILL]
    kubelite.wait_for(lambda: kubelite.pod("stubborn") is None, 2)
    assert process.exit_status() == (137, signal.SIGKILL)


def test_an_active_deadline_fails_the_job_deadline_exceeded(kubelite: KubeLite) -> None:
    kube = client(kubelite)
    kube.create(make_job("slow", TRAPS_TERM, activeDeadlineSeconds=1))
    name = running_pod(kubelite, "slow")["metadata"]["name"]
    kubelite.wait_for(lambda: condition(kubelite, "slow", "Failed"), 5)
    failed = condition(kubelite, "slow", "Failed")
    target = condition(kubelite, "slow", "FailureTarget")
    assert failed is not None and failed["reason"] == "DeadlineExceeded"
    assert target is not None and target["reason"] == "DeadlineExceeded"
    job = kubelite.job("slow")
    assert job is not None and job["status"].get("active", 0) == 0
    assert "completionTime" not in job["status"]
    kubelite.wait_for(lambda: kubelite.pod(name) is None, 3)


def test_ttl_after_finished_removes_the_job_its_pod_and_its_log(kubelite: KubeLite) -> None:
    kube = client(kubelite)
    kube.create(make_job("brief", "echo bye", ttlSecondsAfterFinished=1))
    kube.wait(Job, "brief", for_conditions=["Complete"])
    (pod,) = kubelite.pods()
    name = pod["metadata"]["name"]
    assert kubelite.pod_log(name) == "bye\n"
    kubelite.wait_for(lambda: not kubelite.jobs() and not kubelite.pods(), 5)
    with pytest.raises(KeyError):
        kubelite.pod_log(name)
    with pytest.raises(lightkube.ApiError) as gone:
        list(kube.log(name))
    assert gone.value.status.code == 404


def test_a_suspended_job_runs_nothing_until_resumed(kubelite: KubeLite) -> None:
    kube = client(kubelite)
    kube.create(make_job("later", "echo ran", suspend=True))
    kubelite.wait_for(lambda: condition(kubelite, "later", "Suspended"), 3)
    time.sleep(0.3)
    assert kubelite.pods() == [] and kubelite.live_pids() == []
    kube.patch(Job, "later", {"spec": {"suspend": False}}, patch_type=PatchType.MERGE)
    kube.wait(Job, "later", for_conditions=["Complete"])
    assert condition(kubelite, "later", "Suspended") is None


def test_backoff_limit_zero_fails_the_job_on_the_first_failed_pod(kubelite: KubeLite) -> None:
    kube = client(kubelite)
    kube.create(make_job("crash", "exit 3"))
    kubelite.wait_for(lambda: condition(kubelite, "crash", "Failed"), 5)
    failed = condition(kubelite, "crash", "Failed")
    assert failed is not None and failed["reason"] == "BackoffLimitExceeded"
    (pod,) = kubelite.pods()
    terminated = pod["status"]["containerStatuses"][0]["state"]["terminated"]
    assert terminated["exitCode"] == 3 and pod["status"]["phase"] == "Failed"
    time.sleep(0.2)
    assert len(kubelite.pods()) == 1, "backoffLimit 0: no retry"


def test_a_sigkilled_pod_fails_the_job(kubelite: KubeLite) -> None:
    kube = client(kubelite)
    kube.create(make_job("killed", TRAPS_TERM))
    name = running_pod(kubelite, "killed")["metadata"]["name"]
    kubelite.kill_pod(name, signal.SIGKILL)
    kubelite.wait_for(lambda: condition(kubelite, "killed", "Failed"), 5)
    pod = kubelite.pod(name)
    assert pod is not None
    assert pod["status"]["containerStatuses"][0]["state"]["terminated"]["exitCode"] == 137
    assert "got-term" not in kubelite.pod_log(name)
    assert kubelite.signals(name) == [signal.SIGKILL]


def test_a_disruption_is_ignored_by_pod_failure_policy_and_replaced(kubelite: KubeLite) -> None:
    kube = client(kubelite)
    policy = {
        "rules": [
            {
                "action": "Ignore",
                "onPodConditions": [{"type": "DisruptionTarget", "status": "True"}],
            },
        ]
    }
    kube.create(make_job("disrupted", "echo started; sleep 1", podFailurePolicy=policy))
    first = running_pod(kubelite, "disrupted")["metadata"]["name"]
    kubelite.node_kill(first)

    def replacement() -> bool:
        return any(p["metadata"]["name"] != first for p in kubelite.pods())

    kubelite.wait_for(replacement, 5)
    kube.wait(Job, "disrupted", for_conditions=["Complete"])
    job = kubelite.job("disrupted")
    assert job is not None and job["status"].get("failed", 0) == 0
    assert kubelite.pod(first) is None


def test_secrets_feed_env_and_are_collected_with_their_job(kubelite: KubeLite) -> None:
    kube = client(kubelite)
    env = [{"name": "TOKEN", "valueFrom": {"secretKeyRef": {"name": "run-token", "key": "token"}}}]
    created = kube.create(make_job("withsecret", "echo token=$TOKEN", env=env))
    assert created.metadata is not None and created.metadata.uid
    time.sleep(0.2)
    pending = kubelite.pods()
    assert pending and pending[0]["status"]["phase"] == "Pending"  # secret not there yet
    waiting = pending[0]["status"]["containerStatuses"][0]["state"]["waiting"]
    assert waiting["reason"] == "CreateContainerConfigError"
    owner = {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "name": "withsecret",
        "uid": created.metadata.uid,
    }
    kube.create(
        Secret.from_dict(
            {
                "metadata": {"name": "run-token", "ownerReferences": [owner]},
                "stringData": {"token": "s3cret"},
            }
        )
    )
    kube.wait(Job, "withsecret", for_conditions=["Complete"])
    assert kubelite.pod_log(pending[0]["metadata"]["name"]) == "token=s3cret\n"
    stored = kube.get(Secret, "run-token")
    assert stored.data == {"token": "czNjcmV0"} and stored.stringData is None
    kube.delete(Job, "withsecret", cascade=CascadeType.BACKGROUND)
    kubelite.wait_for(lambda: kubelite.secrets() == [], 3)


def test_an_orphaning_delete_keeps_owned_secrets(kubelite: KubeLite) -> None:
    kube = client(kubelite)
    created = kube.create(make_job("keeper", "true", suspend=True))
    assert created.metadata is not None
    owner = {"apiVersion": "batch/v1", "kind": "Job", "name": "keeper", "uid": created.metadata.uid}
    kube.create(
        Secret.from_dict(
            {"metadata": {"name": "kept", "ownerReferences": [owner]}, "stringData": {"a": "b"}}
        )
    )
    kube.delete(Job, "keeper")
    time.sleep(0.2)
    (secret,) = kubelite.secrets()
    assert "ownerReferences" not in secret["metadata"]
    kube.patch(Secret, "kept", {"stringData": {"c": "d"}}, patch_type=PatchType.MERGE)
    assert set(kube.get(Secret, "kept").data or {}) == {"a", "c"}
    kube.delete(Secret, "kept")
    assert kubelite.secrets() == []


def test_stopping_kills_every_pod_process() -> None:
    with KubeLite() as kubelite:
        kube = client(kubelite)
        kube.create(make_job("left", "sleep 30 & sleep 30"))
        kubelite.wait_for(lambda: len(kubelite.live_pids()) >= 3, 5)
        started = [process_identity(pid) for pid in kubelite.live_pids()]
    assert not [ident for ident in started if alive(ident)]


def test_run_as_user_runs_the_command_as_that_uid_still_pid_1(kubelite: KubeLite) -> None:
    kube = client(kubelite)
    manifest = job_manifest("nobody", "echo $$$$ $(id -u):$(id -g); cat /proc/1/status >/dev/null")
    manifest["spec"]["template"]["spec"]["securityContext"] = {
        "runAsUser": 65534,
        "runAsGroup": 65534,
        "runAsNonRoot": True,
    }
    manifest["spec"]["template"]["spec"]["containers"][0]["securityContext"] = {
        "allowPrivilegeEscalation": False
    }
    kube.create(Job.from_dict(manifest))
    kube.wait(Job, "nobody", for_conditions=["Complete"])
    (pod,) = kubelite.pods()
    assert kubelite.pod_log(pod["metadata"]["name"]) == "1 65534:65534\n"


def test_run_as_non_root_without_a_user_does_not_start(kubelite: KubeLite) -> None:
    kube = client(kubelite)
    manifest = job_manifest("rootimage", "true")
    manifest["spec"]["template"]["spec"]["securityContext"] = {"runAsNonRoot": True}
    kube.create(Job.from_dict(manifest))
    kubelite.wait_for(lambda: kubelite.kubelet_errors, 3)
    (pod,) = kubelite.pods()
    waiting = pod["status"]["containerStatuses"][0]["state"]["waiting"]
    assert waiting["reason"] == "CreateContainerConfigError"
    assert "runAsNonRoot" in waiting["message"]
    assert kubelite.live_pids() == []


def test_watch_streams_changes_and_an_old_resource_version_is_gone(kubelite: KubeLite) -> None:
    kube = client(kubelite)
    other = job_manifest("unrelated", "echo hi")
    other["metadata"]["labels"] = {"app": "other"}
    kube.create(Job.from_dict(other))
    kube.create(make_job("watched", "echo hi"))
    seen = []
    for op, job in kube.watch(Job, labels={"app": "runbot"}, server_timeout=5):
        assert job.status is not None and job.metadata is not None
        assert job.metadata.name == "watched"
        seen.append((op, [c.type for c in job.status.conditions or []]))
        if "Complete" in seen[-1][1]:
            break
    assert seen[0][0] == "ADDED" and seen[-1][0] == "MODIFIED"
    kubelite.store.history.clear()
    with pytest.raises(lightkube.ApiError) as gone:
        next(iter(kube.watch(Job, resource_version="1", server_timeout=1)))
    assert gone.value.status.code == 410


def test_a_followed_log_streams_until_the_pod_ends(kubelite: KubeLite) -> None:
    kube = client(kubelite)
    kube.create(make_job("chatty", "echo started; sleep 0.3; echo one; sleep 0.3; echo two"))
    name = running_pod(kubelite, "chatty")["metadata"]["name"]
    lines = list(kube.log(name, follow=True))
    assert lines == ["started\n", "one\n", "two\n"]
    assert list(kube.log(name, tail_lines=1)) == ["two\n"]
    kubelite.lose_logs()
    with pytest.raises(lightkube.ApiError) as lost:
        list(kube.log(name))
    assert lost.value.status.code == 500


def test_a_wrong_token_is_401_and_another_namespace_404(kubelite: KubeLite) -> None:
    config = kubelite.kubeconfig
    config["users"][0]["user"]["token"] = "wrong"
    with pytest.raises(lightkube.ApiError) as denied:
        lightkube.Client(lightkube.KubeConfig.from_dict(config)).list(Job).__iter__().__next__()
    assert denied.value.status.code == 401
    with pytest.raises(lightkube.ApiError) as missing:
        client(kubelite).create(make_job("elsewhere", "true"), namespace="prod")
    assert missing.value.status.code == 404 and kubelite.jobs() == []


async def test_the_async_client_and_server_side_apply(kubelite: KubeLite) -> None:
    kube = lightkube.AsyncClient(
        lightkube.KubeConfig.from_dict(kubelite.kubeconfig), field_manager="runbot"
    )
    await kube.apply(make_job("applied", "echo applied", suspend=True))
    await kube.apply(make_job("applied", "echo applied", suspend=False))
    done = await kube.wait(Job, "applied", for_conditions=["Complete"])
    assert done.status is not None and done.status.succeeded == 1
    await kube.close()
    patches = [r for r in kubelite.requests if r.method == "PATCH"]
    assert [r.query.get("fieldManager") for r in patches] == ["runbot", "runbot"]
    assert kubelite.errors == []


def test_pod_failure_policy_fail_job_on_an_exit_code_skips_retries(kubelite: KubeLite) -> None:
    kube = client(kubelite)
    policy = {
        "rules": [
            {"action": "FailJob", "onExitCodes": {"operator": "In", "values": [42]}},
        ]
    }
    kube.create(make_job("fatal", "exit 42", backoffLimit=3, podFailurePolicy=policy))
    kubelite.wait_for(lambda: condition(kubelite, "fatal", "Failed"), 5)
    failed = condition(kubelite, "fatal", "Failed")
    assert failed is not None and failed["reason"] == "PodFailurePolicy"
    assert "exit code 42" in failed["message"]
    assert len(kubelite.pods()) == 1


def test_a_failed_pod_is_retried_up_to_the_backoff_limit(kubelite: KubeLite) -> None:
    kubelite.controller.backoff_seconds = 0.1  # Kubernetes waits 10 s, doubling
    kube = client(kubelite)
    kube.create(make_job("flaky", "exit 1", backoffLimit=1))
    kubelite.wait_for(lambda: condition(kubelite, "flaky", "Failed"), 5)
    failed = condition(kubelite, "flaky", "Failed")
    assert failed is not None and failed["reason"] == "BackoffLimitExceeded"
    job = kubelite.job("flaky")
    assert job is not None and job["status"]["failed"] == 2
    assert len(kubelite.pods()) == 2


def test_deletecollection_and_a_zero_grace_pod_delete(kubelite: KubeLite) -> None:
    kube = client(kubelite)
    for run in ("1", "2"):
        kube.create(
            Secret.from_dict(
                {"metadata": {"name": f"run-{run}", "labels": {"run": run}}, "data": {}}
            )
        )
    kube.deletecollection(Secret)
    assert kubelite.secrets() == []
    kube.create(make_job("now", TRAPS_TERM, grace=30))
    name = running_pod(kubelite, "now")["metadata"]["name"]
    process = kubelite.kubelet.by_name(name)
    kube.delete(Pod, name, grace_period=0)
    kubelite.wait_for(lambda: kubelite.pod(name) is None, 3)
    assert process.signals == [signal.SIGKILL]


def test_empty_dir_and_secret_volumes_are_the_pods_own(kubelite: KubeLite) -> None:
    kube = client(kubelite)
    kube.create(Secret.from_dict({"metadata": {"name": "files"}, "stringData": {"key": "k3y"}}))
    script = (
        "echo scratch > /tmp/mine; ls -A /tmp; cat /srv/key; echo;"
        " touch /srv/other 2>/dev/null || echo read-only"
    )
    manifest = job_manifest("volumes", script)
    spec = manifest["spec"]["template"]["spec"]
    spec["volumes"] = [
        {"name": "work", "emptyDir": {}},
        {"name": "files", "secret": {"secretName": "files"}},
    ]
    spec["containers"][0]["volumeMounts"] = [
        {"name": "work", "mountPath": "/tmp"},
        {"name": "files", "mountPath": "/srv"},
    ]
    kube.create(Job.from_dict(manifest))
    kube.wait(Job, "volumes", for_conditions=["Complete"])
    (pod,) = kubelite.pods()
    # The host's /tmp (pytest's tmp_path, other tests' files) is out of the pod's sight; only a
    # checkout that itself lies under /tmp stays, standing in for the image.
    checkout = Path(__file__).resolve().parents[1]
    image = {checkout.relative_to("/tmp").parts[0]} if checkout.is_relative_to("/tmp") else set()
    listed = kubelite.pod_log(pod["metadata"]["name"]).splitlines()
    assert [line for line in listed if line not in image] == ["mine", "k3y", "read-only"]
    assert not Path("/tmp/mine").exists() and not Path("/srv/key").exists()
    manifest = job_manifest("dangling", "true")
    manifest["spec"]["template"]["spec"]["containers"][0]["volumeMounts"] = [
        {"name": "nope", "mountPath": "/tmp"}
    ]
    with pytest.raises(lightkube.ApiError) as refused:
        kube.create(Job.from_dict(manifest))
    assert refused.value.status.code == 422 and "volumeMounts[0].name" in str(
        refused.value.status.message
    )


def test_a_volume_over_the_checkout_keeps_the_image_in_sight(kubelite: KubeLite) -> None:
    """The venv and the checkout stand in for the image: a volume over them leaves them in."""
    kube = client(kubelite)
    checkout = Path(__file__).resolve().parents[1]
    script = f"ls -A {checkout.parent}; test -f {checkout}/pyproject.toml && python -c 'print(1)'"
    manifest = job_manifest("image", script)
    spec = manifest["spec"]["template"]["spec"]
    spec["volumes"] = [{"name": "scratch", "emptyDir": {}}]
    spec["containers"][0]["volumeMounts"] = [{"name": "scratch", "mountPath": str(checkout.parent)}]
    kube.create(Job.from_dict(manifest))
    kube.wait(Job, "image", for_conditions=["Complete"])
    (pod,) = kubelite.pods()
    assert kubelite.pod_log(pod["metadata"]["name"]) == f"{checkout.name}\n1\n"


def test_pod_failure_policy_exit_codes_follow_the_api_rules(kubelite: KubeLite) -> None:
    kube = client(kubelite)
    for codes, fault in (
        ({"operator": "In", "values": [0, 1]}, "must not be 0"),
        ({"operator": "NotIn", "values": [2, 1]}, "ordered and unique"),
        ({"operator": "NotIn", "values": [0], "containerName": "other"}, "containerName"),
    ):
        policy = {"rules": [{"action": "FailJob", "onExitCodes": codes}]}
        with pytest.raises(lightkube.ApiError) as refused:
            kube.create(make_job("policy", "true", podFailurePolicy=policy))
        assert refused.value.status.code == 422
        assert fault in (refused.value.status.message or "")
    assert kubelite.jobs() == []
