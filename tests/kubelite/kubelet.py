"""kubelite's fake kubelet: runs each pod's first container as a real process, as PID 1.

The container's ``command + args`` run under ``unshare --pid --fork --kill-child
--mount-proc``: the process is PID 1 of a new PID namespace with its own ``/proc``, so the
kernel's init rules are real (a signal the process has no handler for is dropped, except
SIGKILL), and when PID 1 dies every process it started dies with it. The image is ignored:
the command runs from the test's venv (its ``bin`` leads ``PATH``), in a fresh temp dir, with
an environment built only from the pod spec (never inherited from the test process).

Deletion is graceful as on a node: SIGTERM to PID 1, SIGKILL when the pod's grace period
runs out; the pod object goes once the process is gone and no finalizer is left.
"""

from __future__ import annotations

import base64
import contextlib
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .store import Store, now

__all__ = ["Kubelet", "PodProcess", "process_identity"]

DEFAULT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
# Bind (source, target, rw|ro) triples up to "--", then exec the rest: PID 1 stays PID 1.
_MOUNT_SH = (
    'while [ "$1" != -- ]; do mount --rbind "$1" "$2" || exit 125; '
    'if [ "$3" = ro ]; then mount -o remount,bind,ro "$2" || exit 125; fi; shift 3; done; '
    'shift; exec "$@"'
)
_UNSHARE_SIGKILL = b"unshare: sigprocmask unblock failed: Invalid argument\n"
_VAR = re.compile(r"\$\$|\$\(([A-Za-z_][A-Za-z0-9_.-]*)\)")


class ConfigError(Exception):
    """The pod cannot start yet (CreateContainerConfigError): retried every tick."""


@dataclass
class PodProcess:
    """One pod's process tree: ``unshare`` on the host and its child, the pod's PID 1."""

    name: str
    uid: str
    popen: subprocess.Popen[bytes]
    workdir: Path
    log_path: Path
    started_at: str
    pid1: int | None = None
    term_sent_at: float | None = None
    kill_sent: bool = False
    signals: list[int] = field(default_factory=list)
    _status: tuple[int, int | None] | None = None

    def resolve_pid1(self, timeout: float = 2.0) -> int:
        """The host pid of the pod's PID 1 (unshare's only child)."""
        deadline = time.monotonic() + timeout
        while self.pid1 is None:
            children = Path(f"/proc/{self.popen.pid}/task/{self.popen.pid}/children")
            with contextlib.suppress(OSError):
                pids = children.read_text().split()
                if pids:
                    self.pid1 = int(pids[0])
                    break
            if self.popen.poll() is not None or time.monotonic() > deadline:
                raise ProcessLookupError(f"pod {self.name} has no PID 1")
            time.sleep(0.002)
        return self.pid1

    def signal(self, signum: int) -> None:
        """Send a real signal to the pod's PID 1, as the container runtime does."""
        self.signals.append(signum)
        with contextlib.suppress(ProcessLookupError):
            os.kill(self.resolve_pid1(), signum)

    def alive(self) -> bool:
        return self.popen.poll() is None

    def kill_all(self) -> None:
        """SIGKILL PID 1 (the namespace dies with it), let unshare reap it, then reap unshare.

        The order matters: a process whose parent dies first is reparented to the host's
        PID 1, which here does not reliably reap, so kubelite reaps its own tree.
        """
        if self.alive():
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.resolve_pid1(timeout=0.5), signal.SIGKILL)
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.popen.wait(timeout=5)
        with contextlib.suppress(ProcessLookupError):
            self.popen.kill()
        self.popen.wait()

    def exit_status(self) -> tuple[int, int | None]:
        """(container exit code, signal) of PID 1, from unshare's own exit.

        util-linux 2.38's unshare cannot re-raise SIGKILL on itself: it prints
        ``unshare: sigprocmask unblock failed: Invalid argument`` and exits 1. That line is
        unshare's, not the container's, so it is cut from the log and read as SIGKILL.
        """
        if self._status is None:
            self._status = self._read_status()
        return self._status

    def _read_status(self) -> tuple[int, int | None]:
        code = self.popen.wait()
        if code < 0:
            return 128 - code, -code
        if code == 1:
            with contextlib.suppress(OSError), open(self.log_path, "rb+") as log:
                size = log.seek(0, os.SEEK_END)
                log.seek(max(0, size - len(_UNSHARE_SIGKILL)))
                if log.read() == _UNSHARE_SIGKILL:
                    log.truncate(size - len(_UNSHARE_SIGKILL))
                    return 128 + signal.SIGKILL, signal.SIGKILL
        return code, None


class Kubelet:
    """Polls the store's pods and drives their processes and phases (one thread)."""

    TICK = 0.02

    def __init__(self, store: Store, namespace: str, api_port: int) -> None:
        self.store, self.namespace, self.api_port = store, namespace, api_port
        #: What stands in for the image: the venv, the Python it runs on, this checkout.
        checkout = Path(__file__).resolve().parents[2]
        paths = {sys.prefix, os.path.realpath(sys.prefix), sys.base_prefix, str(checkout)}
        self.image_paths = sorted(paths, key=len)
        # Not under /tmp: a pod that mounts an emptyDir over /tmp still finds its HOME.
        self.root = Path(tempfile.mkdtemp(prefix="kubelite-kubelet-", dir="/var/tmp"))
        self.root.chmod(0o711)  # a pod running as another uid reaches its own workdir only
        self.procs: dict[str, PodProcess] = {}  # by pod uid
        #: Pods that could not start, as "<pod>: <reason>: <message>".
        self.errors: list[str] = []
        #: Ticks that raised: kubelite's own bugs, asserted empty by the fixture.
        self.crashes: list[str] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="kubelite-kubelet", daemon=True)
        self.unshare = shutil.which("unshare") or "/usr/bin/unshare"
        self.setpriv = shutil.which("setpriv") or "/usr/bin/setpriv"

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        """Stop the loop and kill every process this kubelet ever started."""
        self._stop.set()
        self._thread.join(timeout=5)
        for proc in list(self.procs.values()):
            proc.kill_all()
        shutil.rmtree(self.root, ignore_errors=True)

    def live_pids(self) -> list[int]:
        """Host pids of every process still alive in any pod's namespace (and unshare)."""
        pids: list[int] = []
        for proc in self.procs.values():
            if proc.alive():
                pids.append(proc.popen.pid)
                pids.extend(_descendants(proc.popen.pid))
        return pids

    def by_name(self, name: str) -> PodProcess:
        with self.store.lock:
            pod = self.store.get("pods", self.namespace, name)
            uid = pod["metadata"]["uid"] if pod else None
            for proc in self.procs.values():
                if proc.uid == uid or (uid is None and proc.name == name):
                    return proc
        raise KeyError(f"pod {name} has no process")

    # ----------------------------------------------------------------------------- loop

    def _run(self) -> None:
        while not self._stop.wait(self.TICK):
            try:
                self.tick()
            except Exception as exc:  # keep the node alive; surface the bug to the tests
                self.crashes.append(f"kubelet crashed a tick: {exc!r}")

    def tick(self) -> None:
        with self.store.lock:
            pods = list(self.store.objects("pods", self.namespace))
        for pod in pods:
            with self.store.lock:
                meta = pod["metadata"]
                live = self.store.get("pods", self.namespace, meta["name"])
                if live is None or live["metadata"]["uid"] != meta["uid"]:
                    continue
                self._sync(live)

    def _sync(self, pod: dict[str, Any]) -> None:
        meta, status = pod["metadata"], pod.setdefault("status", {})
        proc = self.procs.get(meta["uid"])
        deleting = meta.get("deletionTimestamp") is not None
        if proc is None and status.get("phase") == "Pending" and not deleting:
            self._start(pod)
            return
        if proc is not None and proc.alive():
            if deleting:
                self._terminate(pod, proc)
            return
        if proc is not None and status.get("phase") in ("Pending", "Running"):
            self._finished(pod, proc)
        elif proc is None and deleting and status.get("phase") in ("Pending", "Running"):
            status["phase"] = "Failed"
            self.store.put("pods", pod)
        if deleting and not meta.get("finalizers"):
            self.store.remove("pods", self.namespace, meta["name"])
            self.forget(meta["uid"])

    def forget(self, uid: str) -> None:
        """Drop a removed pod's process record, working dir and log."""
        proc = self.procs.pop(uid, None)
        if proc is not None:
            proc.kill_all()
            shutil.rmtree(proc.workdir, ignore_errors=True)
            proc.log_path.unlink(missing_ok=True)

    def _terminate(self, pod: dict[str, Any], proc: PodProcess) -> None:
        grace = pod["metadata"].get("deletionGracePeriodSeconds")
        if grace is None:
            grace = pod["spec"].get("terminationGracePeriodSeconds", 30)
        if proc.term_sent_at is None:
            proc.term_sent_at = time.monotonic()
            proc.signal(signal.SIGKILL if grace <= 0 else signal.SIGTERM)
        elif not proc.kill_sent and time.monotonic() - proc.term_sent_at >= grace:
            proc.kill_sent = True
            proc.signal(signal.SIGKILL)

    # ---------------------------------------------------------------------------- start

    def _start(self, pod: dict[str, Any]) -> None:
        meta, spec, status = pod["metadata"], pod["spec"], pod["status"]
        container = spec["containers"][0]
        try:
            env = self._environment(pod, container)
            argv = [*container.get("command", []), *container.get("args", [])]
            if not container.get("command"):
                raise ConfigError(
                    "kubelite cannot run an image's entrypoint: set the container's command"
                )
            argv = [_expand(a, env) for a in argv]
            identity = _identity(pod, container)
            poddir = Path(tempfile.mkdtemp(prefix=f"{meta['name']}-", dir=self.root))
            try:
                binds = self._volumes(pod, container, poddir)
            except ConfigError:
                shutil.rmtree(poddir, ignore_errors=True)
                raise
        except ConfigError as exc:
            waiting = {"reason": "CreateContainerConfigError", "message": str(exc)}
            cs = _container_status(container, {"waiting": waiting}, ready=False)
            if status.get("containerStatuses") != [cs]:
                status["containerStatuses"] = [cs]
                self.errors.append(f"{meta['name']}: CreateContainerConfigError: {exc}")
                self.store.put("pods", pod)
            return
        workdir = poddir / "work"
        workdir.mkdir()
        env.setdefault("HOME", str(workdir))
        log_path = self.root / f"{meta['name']}-{meta['uid']}.log"
        # pdeathsig: if the test process dies, unshare dies, and --kill-child takes PID 1.
        prefix = [self.setpriv, "--pdeathsig=SIGKILL", "--", self.unshare]
        prefix += ["--pid", "--fork", "--kill-child", "--mount-proc", "--"]
        if binds:  # inside the new mount namespace, before the command; exec keeps PID 1
            prefix += ["sh", "-c", _MOUNT_SH, "kubelite-mount", *binds, "--"]
        if identity:
            uid, gid, no_new_privs = identity
            os.chown(workdir, uid, gid)
            prefix += [self.setpriv, f"--reuid={uid}", f"--regid={gid}", "--clear-groups"]
            prefix += ["--no-new-privs", "--"] if no_new_privs else ["--"]
        with open(log_path, "wb") as log:
            popen = subprocess.Popen(
                [*prefix, *argv],
                cwd=workdir,
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        started = now()
        proc = PodProcess(meta["name"], meta["uid"], popen, poddir, log_path, started)
        self.procs[meta["uid"]] = proc
        with contextlib.suppress(ProcessLookupError):
            proc.resolve_pid1()
        status.update(
            {
                "phase": "Running",
                "hostIP": "127.0.0.1",
                "hostIPs": [{"ip": "127.0.0.1"}],
                "podIP": "127.0.0.1",
                "podIPs": [{"ip": "127.0.0.1"}],
                "startTime": started,
                "conditions": _conditions(ready=True),
                "containerStatuses": [
                    _container_status(
                        container,
                        {"running": {"startedAt": started}},
                        ready=True,
                        container_id=f"kubelite://{proc.pid1 or popen.pid}",
                    )
                ],
            }
        )
        self.store.put("pods", pod)

    def _environment(self, pod: dict[str, Any], container: dict[str, Any]) -> dict[str, str]:
        venv_bin = os.path.dirname(sys.executable)
        env: dict[str, str] = {
            "PATH": f"{venv_bin}:{DEFAULT_PATH}",
            "HOSTNAME": pod["metadata"]["name"],
            "KUBERNETES_SERVICE_HOST": "127.0.0.1",
            "KUBERNETES_SERVICE_PORT": str(self.api_port),
        }
        for source in container.get("envFrom", []):
            ref = source.get("secretRef")
            if ref is None:
                raise ConfigError("kubelite supports envFrom secretRef only")
            secret = self._secret(ref["name"], ref.get("optional", False))
            for key, value in (secret or {}).get("data", {}).items():
                env[source.get("prefix", "") + key] = base64.b64decode(value).decode()
        for var in container.get("env", []):
            if "valueFrom" not in var:
                env[var["name"]] = _expand(var.get("value", ""), env)
                continue
            source = var["valueFrom"]
            if "secretKeyRef" in source:
                ref = source["secretKeyRef"]
                secret = self._secret(ref["name"], ref.get("optional", False))
                data = (secret or {}).get("data", {})
                if ref["key"] in data:
                    env[var["name"]] = base64.b64decode(data[ref["key"]]).decode()
                elif secret is not None and not ref.get("optional", False):
                    raise ConfigError(
                        f"couldn't find key {ref['key']} in Secret {self.namespace}/{ref['name']}"
                    )
            elif "fieldRef" in source:
                env[var["name"]] = _field(pod, source["fieldRef"]["fieldPath"])
            else:
                raise ConfigError(f"kubelite does not support valueFrom {sorted(source)}")
        return env

    def _volumes(self, pod: dict[str, Any], container: dict[str, Any], poddir: Path) -> list[str]:
        """(source, mountPath, rw|ro) triples for the container's volumeMounts.

        emptyDir is a fresh directory; a Secret volume is a directory of its keys, read-only.
        They are bind-mounted inside the pod's own mount namespace, so the host never sees
        them, and a mount over ``/tmp`` hides the host's ``/tmp`` from the pod as a real
        container's filesystem would. A mountPath must already be a directory on the host.
        """
        volumes = {v["name"]: v for v in pod["spec"].get("volumes") or []}
        binds: list[tuple[str, str, str]] = []
        for mount in container.get("volumeMounts") or []:
            volume, path = volumes[mount["name"]], mount["mountPath"]
            if mount.get("subPath") or mount.get("subPathExpr"):
                raise ConfigError("kubelite does not support subPath mounts")
            if not os.path.isdir(path):
                raise ConfigError(f"kubelite mounts over existing directories only: {path}")
            source = poddir / "volumes" / volume["name"]
            source.mkdir(parents=True, exist_ok=True)
            if "emptyDir" in volume:
                source.chmod(0o777)
            elif "secret" in volume:
                self._secret_files(volume["secret"], source)
            else:
                kinds = sorted(set(volume) - {"name"})
                raise ConfigError(f"kubelite does not support {kinds} volumes")
            ro = mount.get("readOnly") or "secret" in volume
            binds.append((str(source), path, "ro" if ro else "rw"))
        binds.sort(key=lambda b: len(b[1]))  # /tmp before /tmp/x
        # The "image" (the venv, the checkout) stays visible under a volume that covers it:
        # bound read-only into the volume's source first, carried along by the rbind.
        image: list[tuple[str, str, str]] = []
        for keep in self.image_paths:
            for source, target, _ in binds:
                if keep.startswith(target.rstrip("/") + "/"):
                    inside = Path(source) / os.path.relpath(keep, target)
                    inside.mkdir(parents=True, exist_ok=True)
                    image.append((keep, str(inside), "ro"))
        return [part for bind in [*image, *binds] for part in bind]

    def _secret_files(self, ref: dict[str, Any], target: Path) -> None:
        secret = self._secret(ref["secretName"], ref.get("optional", False))
        data = (secret or {}).get("data") or {}
        items = ref.get("items") or [{"key": key, "path": key} for key in data]
        for item in items:
            if item["key"] not in data:
                if secret is None or ref.get("optional", False):
                    continue
                name = f"{self.namespace}/{ref['secretName']}"
                raise ConfigError(f"couldn't find key {item['key']} in Secret {name}")
            path = target / item["path"]
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(base64.b64decode(data[item["key"]]))
            path.chmod(item.get("mode", ref.get("defaultMode", 0o644)))

    def _secret(self, name: str, optional: bool) -> dict[str, Any] | None:
        secret = self.store.get("secrets", self.namespace, name)
        if secret is None and not optional:
            raise ConfigError(f'secret "{name}" not found')
        return secret

    # --------------------------------------------------------------------------- finish

    def _finished(self, pod: dict[str, Any], proc: PodProcess) -> None:
        exit_code, signum = proc.exit_status()
        terminated: dict[str, Any] = {
            "exitCode": exit_code,
            "reason": "Completed" if exit_code == 0 else "Error",
            "startedAt": proc.started_at,
            "finishedAt": now(),
            "containerID": f"kubelite://{proc.pid1 or proc.popen.pid}",
        }
        if signum is not None:
            terminated["signal"] = signum
        container = pod["spec"]["containers"][0]
        status = pod["status"]
        status["phase"] = "Succeeded" if exit_code == 0 else "Failed"
        kept = [c for c in status.get("conditions", []) if c["type"] == "DisruptionTarget"]
        status["conditions"] = _conditions(ready=False) + kept
        status["containerStatuses"] = [
            _container_status(
                container,
                {"terminated": terminated},
                ready=False,
                container_id=terminated["containerID"],
            )
        ]
        self.store.put("pods", pod)


def _expand(text: str, env: dict[str, str]) -> str:
    """Kubernetes' ``$(VAR)`` expansion in env values, command and args (``$$`` escapes)."""

    def sub(m: re.Match[str]) -> str:
        if m.group(0) == "$$":
            return "$"
        return env.get(m.group(1), m.group(0))

    return _VAR.sub(sub, text)


def _identity(pod: dict[str, Any], container: dict[str, Any]) -> tuple[int, int, bool] | None:
    """(uid, gid, no_new_privs) from the securityContext; None: the image's user (root here).

    ``setpriv`` execs the command, so the command stays PID 1. Without ``runAsUser`` the
    image's own USER would apply, which kubelite cannot know: it runs as root, and
    ``runAsNonRoot`` without ``runAsUser`` is refused as the kubelet refuses a root image.
    """
    pod_ctx = pod["spec"].get("securityContext") or {}
    ctx = {**pod_ctx, **(container.get("securityContext") or {})}
    uid, gid = ctx.get("runAsUser"), ctx.get("runAsGroup")
    if ctx.get("runAsNonRoot") and not uid:
        raise ConfigError(
            "container has runAsNonRoot and image will run as root "
            f'(pod: "{pod["metadata"]["name"]}_{pod["metadata"]["namespace"]}", '
            f"container: {container['name']})"
        )
    no_new_privs = ctx.get("allowPrivilegeEscalation") is False
    if uid is None and gid is None and not no_new_privs:
        return None
    return int(uid or 0), int(gid or 0), no_new_privs


def _field(pod: dict[str, Any], path: str) -> str:
    meta = pod["metadata"]
    if path in ("metadata.name", "metadata.namespace", "metadata.uid"):
        return str(meta[path.split(".")[1]])
    m = re.fullmatch(r"metadata\.(labels|annotations)\['([^']+)'\]", path)
    if m:
        return str(meta.get(m.group(1), {}).get(m.group(2), ""))
    if path in ("status.podIP", "status.hostIP"):
        return "127.0.0.1"
    if path == "spec.nodeName":
        return str(pod["spec"].get("nodeName", "kubelite"))
    if path == "spec.serviceAccountName":
        return str(pod["spec"].get("serviceAccountName", "default"))
    raise ConfigError(f"kubelite does not support fieldRef {path}")


def _conditions(ready: bool) -> list[dict[str, Any]]:
    stamp = now()
    flag = "True" if ready else "False"
    return [
        {"type": "PodReadyToStartContainers", "status": flag, "lastTransitionTime": stamp},
        {"type": "Initialized", "status": "True", "lastTransitionTime": stamp},
        {"type": "Ready", "status": flag, "lastTransitionTime": stamp},
        {"type": "ContainersReady", "status": flag, "lastTransitionTime": stamp},
        {"type": "PodScheduled", "status": "True", "lastTransitionTime": stamp},
    ]


def _container_status(
    container: dict[str, Any], state: dict[str, Any], ready: bool, container_id: str | None = None
) -> dict[str, Any]:
    out: dict[str, Any] = {
        "name": container["name"],
        "image": container.get("image", ""),
        "imageID": "",
        "ready": ready,
        "restartCount": 0,
        "started": "running" in state,
        "state": state,
    }
    if container_id:
        out["containerID"] = container_id
    return out


def process_identity(pid: int) -> tuple[int, int] | None:
    """(pid, start time in ticks) of a live, non-zombie process; None when it is gone.

    Host pids wrap quickly on a busy machine, so a pid alone does not name a process.
    """
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = stat.rsplit(")", 1)[1].split()
    if fields[0] in ("Z", "X"):
        return None
    return pid, int(fields[19])


def _descendants(pid: int) -> list[int]:
    out: list[int] = []
    stack = [pid]
    while stack:
        parent = stack.pop()
        with contextlib.suppress(OSError):
            for task in os.listdir(f"/proc/{parent}/task"):
                text = Path(f"/proc/{parent}/task/{task}/children").read_text()
                for child in map(int, text.split()):
                    out.append(child)
                    stack.append(child)
    return out
