"""``KubeLite``: the API server, the controllers and the kubelet, started and stopped as one.

Typical use (or the ``kubelite`` fixture of ``tests.kubelite.pytest_plugin``)::

    with KubeLite() as kube:
        client = lightkube.Client(lightkube.KubeConfig.from_file(kube.kubeconfig_path))
        client.create(job)
        kube.wait_for(lambda: kube.jobs()[0]["status"].get("succeeded") == 1)

Build lightkube clients from the kubeconfig (``KubeConfig.from_file(kube.kubeconfig_path)`` or
``KubeConfig.from_dict(kube.kubeconfig)``): it carries the server, the namespace and the
bearer token kubelite requires. ``KubeConfig.from_server`` reads an in-cluster token file
that does not exist here.

What a test can look at or do (all copies, safe from any thread):

- ``url``, ``namespace`` (``runbot``), ``kubeconfig`` (dict), ``kubeconfig_path`` (YAML file);
- ``jobs()``, ``pods()``, ``secrets()``, ``job(name)``, ``pod(name)``: stored objects;
- ``events``: what the controller did; ``requests``: every (method, path, query, body);
- ``job_creations(name)``: Job creates tried under that name, 409s and 422s included;
- ``errors``: refusals (400 apiVersion/kind, 422 schema or validation) sent to clients;
  ``kubelet_errors``: pods that could not start; ``internal_errors``: kubelite's own faults;
- ``pod_pid1(pod)``, ``signals(pod)``, ``live_pids()``, ``kill_pod(pod, signum)``,
  ``node_kill(pod)`` (KeyError for a pod with no process yet, except node_kill),
  ``pod_log(pod)`` (KeyError once the pod is gone), ``lose_logs()``, ``wait_for(pred, timeout)``.
"""

from __future__ import annotations

import contextlib
import copy
import secrets
import shutil
import signal
import socket
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from types import TracebackType
from typing import Any, Self

import uvicorn
import yaml

from .api import API, RecordedRequest
from .controller import Controller
from .kubelet import Kubelet
from .store import Store, now

__all__ = ["KubeLite"]


class KubeLite:
    """A one-namespace Kubernetes API on 127.0.0.1 with a Job controller and a local kubelet."""

    def __init__(self, namespace: str = "runbot", backoff_seconds: float = 10.0) -> None:
        self.namespace = namespace
        self.token = secrets.token_urlsafe(24)
        self.store = Store()
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        sock.bind(("127.0.0.1", 0))
        self._sock = sock
        self.port: int = sock.getsockname()[1]
        self.kubelet = Kubelet(self.store, namespace, self.port)
        self.controller = Controller(self.store, namespace, backoff_seconds)
        self.api = API(self.store, self.kubelet, namespace, self.token, self.controller.events)
        self._dir = Path(tempfile.mkdtemp(prefix="kubelite-"))
        self.kubeconfig_path = self._dir / "kubeconfig.yaml"
        self.kubeconfig_path.write_text(yaml.safe_dump(self.kubeconfig, sort_keys=False))
        self._server: uvicorn.Server | None = None
        self._thread: threading.Thread | None = None

    # --------------------------------------------------------------------------- lifecycle

    def start(self) -> Self:
        config = uvicorn.Config(
            self.api.app,
            log_level="warning",
            access_log=False,
            lifespan="off",
            loop="asyncio",
            http="h11",
            ws="none",
            timeout_graceful_shutdown=1,
        )
        server = uvicorn.Server(config)
        thread = threading.Thread(
            target=server.run, kwargs={"sockets": [self._sock]}, name="kubelite-api", daemon=True
        )
        thread.start()
        deadline = time.monotonic() + 10
        while not server.started:
            if not thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError("kubelite did not start")
            time.sleep(0.005)
        self._server, self._thread = server, thread
        self.controller.start()
        self.kubelet.start()
        return self

    def stop(self) -> None:
        """Stop everything and kill every process any pod ever started (idempotent)."""
        self.api.stopping = True
        self.controller.stop()
        self.kubelet.stop()
        if self._server is not None and self._thread is not None:
            self._server.should_exit = True
            self._thread.join(timeout=5)
            if self._thread.is_alive():
                self._server.force_exit = True
                self._thread.join(timeout=5)
        self._server = self._thread = None
        self._sock.close()
        shutil.rmtree(self._dir, ignore_errors=True)

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    # ------------------------------------------------------------------------ how to reach

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def kubeconfig(self) -> dict[str, Any]:
        """A kubeconfig with one context: this server, the namespace and the bearer token."""
        return {
            "apiVersion": "v1",
            "kind": "Config",
            "clusters": [{"name": "kubelite", "cluster": {"server": self.url}}],
            "users": [{"name": "runbot", "user": {"token": self.token}}],
            "contexts": [
                {
                    "name": "kubelite",
                    "context": {
                        "cluster": "kubelite",
                        "user": "runbot",
                        "namespace": self.namespace,
                    },
                }
            ],
            "current-context": "kubelite",
        }

    # ------------------------------------------------------------------------ what it holds

    def _objects(self, plural: str) -> list[dict[str, Any]]:
        with self.store.lock:
            return [copy.deepcopy(o) for o in self.store.objects(plural, self.namespace)]

    def jobs(self) -> list[dict[str, Any]]:
        return self._objects("jobs")

    def pods(self) -> list[dict[str, Any]]:
        return self._objects("pods")

    def secrets(self) -> list[dict[str, Any]]:
        return self._objects("secrets")

    def job(self, name: str) -> dict[str, Any] | None:
        with self.store.lock:
            obj = self.store.get("jobs", self.namespace, name)
            return copy.deepcopy(obj) if obj else None

    def pod(self, name: str) -> dict[str, Any] | None:
        with self.store.lock:
            obj = self.store.get("pods", self.namespace, name)
            return copy.deepcopy(obj) if obj else None

    @property
    def events(self) -> list[dict[str, str]]:
        """What the controller did, as Kubernetes Events would say it (reason, message)."""
        return list(self.controller.events)

    @property
    def requests(self) -> list[RecordedRequest]:
        """Every request seen, as (method, path, query dict, parsed body)."""
        return list(self.api.requests)

    @property
    def errors(self) -> list[str]:
        """Every schema or validation refusal sent to a client."""
        return list(self.api.errors)

    @property
    def internal_errors(self) -> list[str]:
        """kubelite's own faults: invalid objects it wrote, crashed ticks or handlers."""
        return [*self.controller.errors, *self.kubelet.crashes, *self.api.crashes]

    @property
    def kubelet_errors(self) -> list[str]:
        """Pods that could not start (CreateContainerConfigError), as the kubelet saw it."""
        return list(self.kubelet.errors)

    def job_creations(self, name: str) -> int:
        """How many times a client POSTed a Job of this name (409s and 422s included)."""
        return self.api.job_creations.get(name, 0)

    # ------------------------------------------------------------------------- processes

    def pod_pid1(self, pod_name: str) -> int:
        """The host pid of the pod's PID 1 (the container's process inside ``unshare``)."""
        return self.kubelet.by_name(pod_name).resolve_pid1()

    def live_pids(self) -> list[int]:
        """Host pids of every live process a pod started (``unshare`` and its tree)."""
        return self.kubelet.live_pids()

    def kill_pod(self, pod_name: str, signum: int = signal.SIGKILL) -> None:
        """Send a real signal to the pod's PID 1, as an OOM kill or ``kill -9`` would."""
        self.kubelet.by_name(pod_name).signal(signum)

    def node_kill(self, pod_name: str) -> None:
        """The node is lost under the pod: ``DisruptionTarget`` is set, then PID 1 is SIGKILLed."""
        with self.store.lock:
            pod = self.store.get("pods", self.namespace, pod_name)
            if pod is None:
                raise KeyError(pod_name)
            stamp = now()
            pod.setdefault("status", {}).setdefault("conditions", []).append(
                {
                    "type": "DisruptionTarget",
                    "status": "True",
                    "reason": "DeletionByTaintManager",
                    "message": "Taint manager: deleting due to NoExecute taint",
                    "lastTransitionTime": stamp,
                }
            )
            pod["metadata"]["deletionTimestamp"] = stamp
            pod["metadata"]["deletionGracePeriodSeconds"] = 0
            self.store.put("pods", pod)
            with contextlib.suppress(KeyError):  # not started: it simply never will
                self.kubelet.by_name(pod_name).signal(signal.SIGKILL)

    def signals(self, pod_name: str) -> list[int]:
        """The signals sent to the pod's PID 1 so far (by deletes, deadlines, kill_pod)."""
        return list(self.kubelet.by_name(pod_name).signals)

    def pod_log(self, pod_name: str) -> str:
        """The pod's captured stdout and stderr; KeyError once the pod (and its log) is gone."""
        path = self.kubelet.by_name(pod_name).log_path
        if not path.exists():
            raise KeyError(f"pod {pod_name} has no log")
        return path.read_text(errors="replace")

    def lose_logs(self, lost: bool = True) -> None:
        """Make the pod log endpoint fail (500), as when the API server cannot reach a kubelet."""
        self.api.logs_unavailable = lost

    def wait_for(self, predicate: Callable[[], Any], timeout: float = 10.0) -> Any:
        """Poll ``predicate`` until it returns something truthy; AssertionError on timeout."""
        deadline = time.monotonic() + timeout
        while True:
            value = predicate()
            if value:
                return value
            if time.monotonic() > deadline:
                raise AssertionError(f"kubelite: condition not met within {timeout}s")
            time.sleep(0.02)
