"""The doctor's look at RUNBOT_EXECUTOR: what a Kubernetes executor needs before its first run.

Only what can be told without calling the cluster (which a doctor run must not depend on): a
kubeconfig or an in-cluster ServiceAccount, state that outlives a pod, a callback URL pods can
use.
"""

from __future__ import annotations

from pathlib import Path
from urllib.parse import urlsplit

from app.doctor.report import Row, fail, ok, warn
from app.settings import Settings

IN_CLUSTER_TOKEN = Path("/var/run/secrets/kubernetes.io/serviceaccount/token")
_LOOPBACK = ("127.0.0.1", "localhost", "::1")


def check_executor(settings: Settings, in_cluster_token: Path = IN_CLUSTER_TOKEN) -> Row:
    if settings.executor == "local":
        return ok("executor", "local: engine runs are child processes of runbot")
    kubeconfig = settings.k8s_kubeconfig
    if kubeconfig is not None and not kubeconfig.is_file():
        return fail(
            "executor",
            f"RUNBOT_K8S_KUBECONFIG={kubeconfig} is not a file",
            "point RUNBOT_K8S_KUBECONFIG at a kubeconfig, or unset it inside the cluster",
        )
    if kubeconfig is None and not in_cluster_token.is_file():
        return fail(
            "executor",
            "RUNBOT_EXECUTOR=kubernetes with no kubeconfig, and this is not a pod with a"
            " ServiceAccount token",
            "set RUNBOT_K8S_KUBECONFIG, or run runbot in the cluster",
        )
    if not settings.is_postgres:
        return warn(
            "executor",
            "kubernetes with SQLite: a pod's local state is gone with the pod, so only"
            " templates that declare a remote backend can run",
            "set RUNBOT_DATABASE_URL to PostgreSQL (state then goes to the pg backend)",
        )
    callback = settings.k8s_callback
    if (urlsplit(callback).hostname or "") in _LOOPBACK:
        return warn(
            "executor",
            f"pods call runbot back at {callback}, a loopback address they cannot reach",
            "set RUNBOT_K8S_CALLBACK_URL to runbot's Service address, e.g."
            " http://runbot.<namespace>.svc:8000",
        )
    where = f"kubeconfig {kubeconfig}" if kubeconfig else "in-cluster"
    return ok(
        "executor",
        f"kubernetes ({where}): Jobs in namespace {settings.k8s_namespace}, image"
        f" {settings.k8s_image}, pods call back at {callback}",
    )
