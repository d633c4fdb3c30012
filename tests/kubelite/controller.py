"""kubelite's control plane: the Job controller, the garbage collector and the TTL controller.

Modelled on kube-controller-manager at ``KUBE_VERSION`` (1.31+ terminal-condition rules):

- a Job runs ``min(parallelism, completions - succeeded)`` pods, named ``<job>-<5 chars>``,
  owned by the Job and held by the ``batch.kubernetes.io/job-tracking`` finalizer until
  counted; none while ``spec.suspend`` is true;
- a failed pod is matched against ``podFailurePolicy`` (``Ignore`` does not count it and a
  replacement is made, ``FailJob`` fails the Job, ``Count`` counts it); more failures than
  ``backoffLimit`` or a run past ``activeDeadlineSeconds`` set ``FailureTarget`` and delete the
  active pods; ``Failed`` follows once no pod is left running. Success sets
  ``SuccessCriteriaMet`` then ``Complete`` the same way;
- the garbage collector deletes a dependent once none of its ``ownerReferences`` exists any
  more (Background), or before its owner (Foreground); Orphan was handled by the delete;
- ``ttlSecondsAfterFinished`` deletes a finished Job with Foreground propagation.
"""

from __future__ import annotations

import calendar
import copy
import random
import threading
import time
from typing import Any

from . import schema
from .store import ApiError, Store, now

__all__ = ["TRACKING_FINALIZER", "Controller", "delete_object"]

TRACKING_FINALIZER = "batch.kubernetes.io/job-tracking"
FOREGROUND = "foregroundDeletion"
ORPHAN = "orphan"
_NAME_CHARS = "bcdfghjklmnpqrstvwxz2456789"


def delete_object(
    store: Store, plural: str, namespace: str, name: str, policy: str | None, grace: int | None
) -> dict[str, Any]:
    """Delete one object as the API server does; returns the object as it was (or is, if pending).

    ``policy`` None means the resource's default: Orphan for batch/v1 Jobs (their REST
    strategy keeps the v1 behaviour), Background for everything else.
    """
    with store.lock:
        obj = store.must_get(plural, namespace, name)
        meta = obj["metadata"]
        if policy is None:
            policy = "Orphan" if plural == "jobs" else "Background"
        if policy not in ("Orphan", "Background", "Foreground"):
            raise ApiError(400, "BadRequest", f"invalid propagationPolicy {policy!r}")
        if plural == "pods":
            if grace is None:
                grace = int(obj["spec"].get("terminationGracePeriodSeconds", 30))
            if meta.get("deletionTimestamp") is None:
                meta["deletionTimestamp"] = now()
                meta["deletionGracePeriodSeconds"] = grace
                store.put(plural, obj)
            elif grace < int(meta.get("deletionGracePeriodSeconds", grace)):
                meta["deletionGracePeriodSeconds"] = grace
                store.put(plural, obj)
            return obj
        if policy == "Orphan":
            for dependent in _dependents(store, namespace, meta["uid"]):
                refs = [
                    r for r in dependent["metadata"]["ownerReferences"] if r["uid"] != meta["uid"]
                ]
                dependent["metadata"]["ownerReferences"] = refs
                if not refs:
                    del dependent["metadata"]["ownerReferences"]
                store.put(_plural(dependent), dependent)
        if policy == "Foreground":
            if meta.get("deletionTimestamp") is None:
                meta["deletionTimestamp"] = now()
                meta["deletionGracePeriodSeconds"] = 0
                meta["finalizers"] = [*meta.get("finalizers", []), FOREGROUND]
                store.put(plural, obj)
            return obj
        if meta.get("finalizers"):
            meta.setdefault("deletionTimestamp", now())
            store.put(plural, obj)
            return obj
        store.remove(plural, namespace, name)
        return obj


def _plural(obj: dict[str, Any]) -> str:
    return {"Job": "jobs", "Pod": "pods", "Secret": "secrets"}[obj["kind"]]


def _dependents(store: Store, namespace: str, uid: str) -> list[dict[str, Any]]:
    out = []
    for plural in ("jobs", "pods", "secrets"):
        for obj in store.objects(plural, namespace):
            if any(r["uid"] == uid for r in obj["metadata"].get("ownerReferences", [])):
                out.append(obj)
    return out


def _condition(obj: dict[str, Any], kind: str) -> dict[str, Any] | None:
    conditions: list[dict[str, Any]] = obj.get("status", {}).get("conditions", [])
    for cond in conditions:
        if cond["type"] == kind and cond["status"] == "True":
            return cond
    return None


def _set_condition(job: dict[str, Any], kind: str, status: str, reason: str, message: str) -> None:
    conditions = job.setdefault("status", {}).setdefault("conditions", [])
    stamp = now()
    for cond in conditions:
        if cond["type"] == kind:
            if cond["status"] != status:
                cond["lastTransitionTime"] = stamp
            cond.update(status=status, reason=reason, message=message, lastProbeTime=stamp)
            return
    conditions.append(
        {
            "type": kind,
            "status": status,
            "reason": reason,
            "message": message,
            "lastProbeTime": stamp,
            "lastTransitionTime": stamp,
        }
    )


class Controller:
    """One thread running the Job controller, the garbage collector and TTL, each tick."""

    TICK = 0.02

    def __init__(self, store: Store, namespace: str, backoff_seconds: float = 10.0) -> None:
        self.store, self.namespace = store, namespace
        #: Base of the pod-recreation backoff (10 s in Kubernetes, doubling per failure).
        self.backoff_seconds = backoff_seconds
        self.events: list[dict[str, str]] = []
        #: Controller-written objects that broke the strict schema: kubelite's own bugs.
        self.errors: list[str] = []
        self._finished_at: dict[str, float] = {}  # job uid -> monotonic time it finished
        self._last_failure: dict[str, float] = {}
        self._started_at: dict[str, float] = {}  # job uid -> monotonic start (or resume)
        self._uncounted: set[str] = set()  # pods deleted by a suspend: not failures
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="kubelite-controller", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)

    def _run(self) -> None:
        while not self._stop.wait(self.TICK):
            try:
                with self.store.lock:
                    self.tick()
            except Exception as exc:
                self.errors.append(f"controller crashed a tick: {exc!r}")

    def tick(self) -> None:
        self._collect_garbage()
        self._release_orphans()
        for job in list(self.store.objects("jobs", self.namespace)):
            if self.store.get("jobs", self.namespace, job["metadata"]["name"]) is job:
                self._sync(job)

    def _event(self, obj: dict[str, Any], reason: str, message: str, kind: str = "Normal") -> None:
        self.events.append(
            {
                "involvedObject": f"{obj['kind']}/{obj['metadata']['name']}",
                "type": kind,
                "reason": reason,
                "message": message,
                "time": now(),
            }
        )

    # --------------------------------------------------------------------------------- GC

    def _collect_garbage(self) -> None:
        store = self.store
        for plural in ("pods", "secrets", "jobs"):
            for obj in list(store.objects(plural, self.namespace)):
                meta = obj["metadata"]
                refs = meta.get("ownerReferences") or []
                if not refs or meta.get("deletionTimestamp") is not None:
                    continue
                owners = [store.by_uid(r["uid"]) for r in refs]
                foreground = [
                    o
                    for o, r in zip(owners, refs, strict=True)
                    if o is not None and FOREGROUND in o["metadata"].get("finalizers", [])
                ]
                if all(o is None for o in owners) or foreground:
                    delete_object(store, plural, self.namespace, meta["name"], "Background", None)
        for owner in list(store.objects("jobs", self.namespace)):
            meta = owner["metadata"]
            if FOREGROUND not in meta.get("finalizers", []):
                continue
            blocking = [
                d
                for d in _dependents(store, self.namespace, meta["uid"])
                if any(
                    r["uid"] == meta["uid"] and r.get("blockOwnerDeletion")
                    for r in d["metadata"]["ownerReferences"]
                )
            ]
            if not blocking:
                meta["finalizers"] = [f for f in meta["finalizers"] if f != FOREGROUND]
                if not meta["finalizers"]:
                    store.remove("jobs", self.namespace, meta["name"])
                else:
                    store.put("jobs", owner)

    # --------------------------------------------------------------------------- the Job

    def _pods(self, job: dict[str, Any]) -> list[dict[str, Any]]:
        uid = job["metadata"]["uid"]
        return [
            p
            for p in self.store.objects("pods", self.namespace)
            if any(
                r["uid"] == uid and r.get("controller")
                for r in p["metadata"].get("ownerReferences", [])
            )
        ]

    def _release_orphans(self) -> None:
        for pod in list(self.store.objects("pods", self.namespace)):
            meta = pod["metadata"]
            if TRACKING_FINALIZER in meta.get("finalizers", []) and not any(
                self.store.by_uid(r["uid"]) for r in meta.get("ownerReferences", [])
            ):
                self._unfinalize(pod)

    def _unfinalize(self, pod: dict[str, Any]) -> None:
        meta = pod["metadata"]
        meta["finalizers"] = [f for f in meta.get("finalizers", []) if f != TRACKING_FINALIZER]
        if not meta["finalizers"]:
            del meta["finalizers"]
        self.store.put("pods", pod)

    def _sync(self, job: dict[str, Any]) -> None:
        meta, spec = job["metadata"], job["spec"]
        before = copy.deepcopy(job.get("status", {}))
        status = job.setdefault("status", {})
        pods = self._pods(job)
        # Count every terminal pod once, then let it go (the job-tracking finalizer).
        fail_job: str | None = None
        for pod in pods:
            phase = pod.get("status", {}).get("phase")
            if phase not in ("Succeeded", "Failed") or TRACKING_FINALIZER not in pod[
                "metadata"
            ].get("finalizers", []):
                continue
            if pod["metadata"]["uid"] in self._uncounted:
                pass
            elif phase == "Succeeded":
                status["succeeded"] = status.get("succeeded", 0) + 1
            else:
                action, why = _pod_failure_action(spec.get("podFailurePolicy"), pod)
                if action == "FailJob":
                    fail_job = why
                if action != "Ignore":
                    status["failed"] = status.get("failed", 0) + 1
                    self._last_failure[meta["uid"]] = time.monotonic()
            self._unfinalize(pod)
        finished = _condition(job, "Complete") or _condition(job, "Failed")
        active = [
            p
            for p in pods
            if p.get("status", {}).get("phase") not in ("Succeeded", "Failed")
            and p["metadata"].get("deletionTimestamp") is None
        ]
        terminating = [
            p
            for p in pods
            if p.get("status", {}).get("phase") not in ("Succeeded", "Failed")
            and p["metadata"].get("deletionTimestamp") is not None
        ]
        if meta.get("deletionTimestamp") is not None:
            pass
        elif finished:
            self._expire(job)
        elif spec.get("suspend"):
            for pod in active:
                self._uncounted.add(pod["metadata"]["uid"])
                self._delete_pod(job, pod)
            active = []
            if not _condition(job, "Suspended"):
                _set_condition(job, "Suspended", "True", "JobSuspended", "Job suspended")
                status.pop("startTime", None)
                self._event(job, "Suspended", "Job suspended")
        else:
            if _condition(job, "Suspended"):
                _set_condition(job, "Suspended", "False", "JobResumed", "Job resumed")
                self._event(job, "Resumed", "Job resumed")
            if "startTime" not in status:
                status["startTime"] = now()
                self._started_at[meta["uid"]] = time.monotonic()
            active = self._progress(job, active, terminating, fail_job)
        status["active"] = len(active)
        status["ready"] = sum(1 for p in active if p["status"].get("phase") == "Running")
        status["terminating"] = len(terminating)
        status.setdefault("failed", 0)
        status.setdefault("succeeded", 0)
        status["uncountedTerminatedPods"] = {}
        for key in ("active", "failed", "succeeded", "terminating", "ready"):
            if status[key] == 0 and key not in before:
                status.pop(key)
        if status != before:
            self._check(job)
            self.store.put("jobs", job)

    def _progress(
        self,
        job: dict[str, Any],
        active: list[dict[str, Any]],
        terminating: list[dict[str, Any]],
        fail_job: str | None,
    ) -> list[dict[str, Any]]:
        spec, status = job["spec"], job["status"]
        target = _condition(job, "FailureTarget") or _condition(job, "SuccessCriteriaMet")
        if target is None:
            deadline = spec.get("activeDeadlineSeconds")
            started = self._started_at.get(job["metadata"]["uid"])
            if started is None:
                started = time.monotonic() - (time.time() - _parse_time(status["startTime"]))
            if fail_job is not None:
                target = self._target(job, "FailureTarget", "PodFailurePolicy", fail_job)
            elif status.get("failed", 0) > spec.get("backoffLimit", 6):
                target = self._target(
                    job,
                    "FailureTarget",
                    "BackoffLimitExceeded",
                    "Job has reached the specified backoff limit",
                )
            elif deadline is not None and time.monotonic() - started >= deadline:
                target = self._target(
                    job,
                    "FailureTarget",
                    "DeadlineExceeded",
                    "Job was active longer than specified deadline",
                )
            elif status.get("succeeded", 0) >= spec.get("completions", 1):
                target = self._target(
                    job,
                    "SuccessCriteriaMet",
                    "CompletionsReached",
                    "Reached expected number of succeeded pods",
                )
        if target is not None:
            for pod in active:
                self._delete_pod(job, pod)
            if not active and not terminating:
                if target["type"] == "FailureTarget":
                    _set_condition(job, "Failed", "True", target["reason"], target["message"])
                    self._event(job, target["reason"], target["message"], "Warning")
                else:
                    _set_condition(job, "Complete", "True", target["reason"], target["message"])
                    status["completionTime"] = now()
                    self._event(job, "Completed", "Job completed")
                self._finished_at[job["metadata"]["uid"]] = time.monotonic()
            return []
        wanted = min(
            spec.get("parallelism", 1), spec.get("completions", 1) - status.get("succeeded", 0)
        )
        if terminating and spec.get("podReplacementPolicy") == "Failed":
            return active
        failed = status.get("failed", 0)
        last = self._last_failure.get(job["metadata"]["uid"])
        if failed and last is not None:
            delay = min(self.backoff_seconds * 2 ** (failed - 1), 360.0)
            if time.monotonic() - last < delay:
                return active
        while len(active) < wanted:
            active.append(self._create_pod(job))
        return active

    def _target(self, job: dict[str, Any], kind: str, reason: str, message: str) -> dict[str, Any]:
        _set_condition(job, kind, "True", reason, message)
        cond = _condition(job, kind)
        assert cond is not None
        return cond

    def _create_pod(self, job: dict[str, Any]) -> dict[str, Any]:
        meta, template = job["metadata"], job["spec"]["template"]
        suffix = "".join(random.choice(_NAME_CHARS) for _ in range(5))
        labels = dict(template.get("metadata", {}).get("labels", {}))
        labels.update(
            {
                "batch.kubernetes.io/controller-uid": meta["uid"],
                "batch.kubernetes.io/job-name": meta["name"],
                "controller-uid": meta["uid"],
                "job-name": meta["name"],
            }
        )
        pod_spec = copy.deepcopy(template["spec"])
        pod_spec.setdefault("terminationGracePeriodSeconds", 30)
        pod_spec.setdefault("serviceAccountName", "default")
        pod_spec["nodeName"] = "kubelite"
        pod = {
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {
                "name": f"{meta['name']}-{suffix}",
                "generateName": f"{meta['name']}-",
                "namespace": self.namespace,
                "labels": labels,
                "annotations": {
                    **template.get("metadata", {}).get("annotations", {}),
                    "batch.kubernetes.io/job-tracking": "",
                },
                "finalizers": [TRACKING_FINALIZER],
                "ownerReferences": [
                    {
                        "apiVersion": "batch/v1",
                        "kind": "Job",
                        "name": meta["name"],
                        "uid": meta["uid"],
                        "controller": True,
                        "blockOwnerDeletion": True,
                    }
                ],
            },
            "spec": pod_spec,
            "status": {"phase": "Pending", "qosClass": "BestEffort"},
        }
        self._check(pod)
        created = self.store.create("pods", pod)
        self._event(job, "SuccessfulCreate", f"Created pod: {pod['metadata']['name']}")
        return created

    def _delete_pod(self, job: dict[str, Any], pod: dict[str, Any]) -> None:
        delete_object(self.store, "pods", self.namespace, pod["metadata"]["name"], None, None)
        self._event(job, "SuccessfulDelete", f"Deleted pod: {pod['metadata']['name']}")

    def _expire(self, job: dict[str, Any]) -> None:
        ttl = job["spec"].get("ttlSecondsAfterFinished")
        finished = self._finished_at.setdefault(job["metadata"]["uid"], time.monotonic())
        if ttl is not None and time.monotonic() - finished >= ttl:
            delete_object(
                self.store, "jobs", self.namespace, job["metadata"]["name"], "Foreground", None
            )

    def _check(self, obj: dict[str, Any]) -> None:
        for error in schema.errors(obj):
            self.errors.append(f"{obj['kind']}/{obj['metadata']['name']}: {error}")


def _pod_failure_action(policy: dict[str, Any] | None, pod: dict[str, Any]) -> tuple[str, str]:
    """The action of the first ``podFailurePolicy`` rule a failed pod matches (else Count)."""
    status = pod.get("status", {})
    for index, rule in enumerate((policy or {}).get("rules", [])):
        codes = rule.get("onExitCodes")
        if codes is not None:
            values = set(codes["values"])
            for cs in status.get("containerStatuses", []):
                if codes.get("containerName") not in (None, cs["name"]):
                    continue
                code = cs.get("state", {}).get("terminated", {}).get("exitCode")
                if code is None or code == 0:
                    continue
                hit = code in values if codes["operator"] == "In" else code not in values
                if hit:
                    return rule["action"], (
                        f"Container {cs['name']} for pod {pod['metadata']['namespace']}/"
                        f"{pod['metadata']['name']} failed with exit code {code} matching "
                        f"{rule['action']} rule at index {index}"
                    )
        for want in rule.get("onPodConditions") or []:
            for cond in status.get("conditions", []):
                if cond["type"] == want["type"] and cond["status"] == want.get("status", "True"):
                    return rule["action"], (
                        f"Pod {pod['metadata']['namespace']}/{pod['metadata']['name']} has "
                        f"condition {cond['type']} matching {rule['action']} rule at index {index}"
                    )
    return "Count", ""


def _parse_time(stamp: str) -> float:
    return float(calendar.timegm(time.strptime(stamp, "%Y-%m-%dT%H:%M:%SZ")))
