"""kubelite: a small Kubernetes API server for runbot's Kubernetes executor tests.

No real cluster can run here, so this is the one stand-in for Kubernetes (issue 16). The real
client (lightkube) talks to it over HTTP on 127.0.0.1 with a bearer token from a kubeconfig.

What it fakes, and how faithfully:

- **The API server** (``api``): discovery, ``batch/v1`` Jobs and core ``v1`` Pods and Secrets
  in one namespace: create, get, list (labelSelector, fieldSelector, limit/continue), watch,
  replace, patch (merge, JSON, strategic by ``name``, apply approximated as strategic), delete
  (propagationPolicy, gracePeriodSeconds), pod logs (follow, tailLines). Every body is checked
  against the **strict** JSON schemas of the ``kubernetes-validate`` wheel for
  ``schema.KUBE_VERSION`` (the version the Helm chart is rendered against), then against the
  API server's own rules (names, labels, restart policy, immutable fields); refusals are
  ``Status`` objects (400, 404, 409 AlreadyExists/Conflict, 422 Invalid) and kept in
  ``KubeLite.errors``.
- **The controllers** (``controller``): the Job controller (pods ``<job>-<5 chars>``,
  backoffLimit with the 10 s doubling backoff, activeDeadlineSeconds, suspend,
  podFailurePolicy, FailureTarget/SuccessCriteriaMet before Failed/Complete), the garbage
  collector (ownerReferences; Background, Foreground, Orphan) and the TTL-after-finished
  controller.
- **The kubelet** (``kubelet``): the first container's ``command + args`` run as a real
  process that is PID 1 of its own PID namespace (``unshare --pid --fork --kill-child
  --mount-proc``), so PID-1 signal rules are the kernel's; env from values, Secrets
  (``secretKeyRef``, ``envFrom``) and ``fieldRef``, ``$(VAR)`` expansion as Kubernetes does it
  (so ``$$`` in args reaches the command as ``$``); ``securityContext.runAsUser``/``runAsGroup``
  via ``setpriv`` (the command stays PID 1), ``runAsNonRoot`` without a user refused; a
  missing Secret leaves the pod Pending in ``CreateContainerConfigError`` until it appears;
  ``emptyDir`` and ``secret`` volumes are bind-mounted inside the pod's own mount namespace
  (so an emptyDir on ``/tmp`` hides the host's ``/tmp``, as a container's filesystem would);
  deletion is SIGTERM, then SIGKILL after the grace period. stdout and stderr are the log.

Fixture and helpers: ``pytest_plugin`` (``kubelite``), ``server.KubeLite`` (its docstring
has the whole interface). The pod-recreation backoff is Kubernetes' 10 s doubling; set
``kubelite.controller.backoff_seconds`` to shorten it in a test.

The unfriendly defaults are kept: deleting a Job without ``propagationPolicy`` orphans its pod,
which keeps running; a duplicate create is 409; a deadline fails the Job ``DeadlineExceeded``;
TTL cleanup removes the pod and its log; ``suspend: true`` runs nothing.

What a real cluster must still confirm (kubelite cannot): RBAC and admission (the token here
may do anything; no PodSecurity, no quotas), scheduling and resource requests, image pulls and
the image's own entrypoint and USER (kubelite runs ``command`` from the test venv, as root
unless ``runAsUser`` is set), filesystem and network isolation of a real container (outside
its volumes the pod sees the host's filesystem, and it shares the host's loopback; PID, mounts
and /proc are namespaced), other volume types and subPath (refused at start), capabilities,
ServiceAccounts (not required to exist) and workload identity, in-place restarts of
``restartPolicy: OnFailure`` (not modelled), node loss beyond ``KubeLite.node_kill``, the
default ``fieldValidation`` (a real server *drops* unknown fields with a warning unless the
client asks for Strict; kubelite refuses them), and watch bookmarks and resourceVersion
semantics under load.
"""

from .api import RecordedRequest
from .schema import KUBE_VERSION
from .server import KubeLite

__all__ = ["KUBE_VERSION", "KubeLite", "RecordedRequest"]
