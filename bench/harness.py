"""What every benchmark needs: scratch space, the fake GitHub, a real `runbot serve` process,
the engine run by hand (the baseline), memory readings and small waiting helpers.

Everything listens on 127.0.0.1 only.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import random
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from app.engine.backends import backend_for
from app.engine.runner import BACKEND_FILE, VAR_FILE, EngineRunner
from app.github.comment import MARKER
from app.runtime import Runtime, build_runtime
from app.settings import Settings, load_settings
from app.stacks.catalog import Catalog
from app.stacks.mapping import instance_inputs
from tests.fakegithub.server import FakeGitHub
from tests.fakegithub.webhooks import encode, sign

ROOT = Path(__file__).resolve().parents[1]
TEMPLATES = ROOT / "infra-templates"
PYTHON = sys.executable
WEBHOOK_SECRET = "bench-webhook-secret-0123456789abcdef"
INSTALLATION = 5151
OWNER = "bench-org"
EMBEDDED = [PYTHON, "-m", "app.engine.embedded"]
# The slot's port, or (the local stack's ingress) the silo's port and the environment's id.
URL_IN_COMMENT = re.compile(r"\((http://127\.0\.0\.1:\d+/(?:[A-Za-z0-9][A-Za-z0-9._-]*/)?)\)")


@dataclass
class Context:
    quick: bool
    root: Path  # scratch directory of this run
    verbose: bool = False
    notes: list[str] = field(default_factory=list)

    def log(self, message: str) -> None:
        print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)

    def scratch(self, name: str) -> Path:
        path = self.root / name
        if path.exists():
            shutil.rmtree(path, ignore_errors=True)
        path.mkdir(parents=True)
        return path


# ----------------------------------------------------------------------------- ports, memory


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _range_free(base: int, count: int) -> bool:
    for port in range(base, base + count):
        with socket.socket() as sock:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                sock.bind(("127.0.0.1", port))
            except OSError:
                return False
    return True


def free_port_base(count: int) -> int:
    """A base port with `count` free loopback ports above it, for one local silo."""
    rng = random.Random()
    for _ in range(500):
        # Below Linux's ephemeral range (32768+), where outgoing connections take local ports.
        base = rng.randrange(10000, 32768 - count, 50)
        if _range_free(base, count):
            return base
    raise RuntimeError("no free port range on loopback")


def proc_status(pid: int) -> dict[str, int]:
    """VmRSS / VmHWM (bytes) of a process, from /proc."""
    found: dict[str, int] = {}
    with contextlib.suppress(OSError):
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            key, _, value = line.partition(":")
            if key in ("VmRSS", "VmHWM"):
                found[key] = int(value.split()[0]) * 1024
    return found


# ----------------------------------------------------------------------------- settings, runtime


def settings_for(data_dir: Path, database_url: str | None = None, **values: Any) -> Settings:
    """Settings for the bench process's own view of a data dir (never reads .env)."""
    options: dict[str, Any] = {
        "data_dir": data_dir,
        "templates_dir": TEMPLATES,
        "engine": "embedded",
        "database_url": database_url,
        "_env_file": None,
        "policy_file": roomy_policy(data_dir),
    }
    options.update(values)
    return load_settings(**options)


def roomy_policy(data_dir: Path) -> Path:
    """An operator policy for the benchmarks: their repositories ask for more environments
    and silos than the defaults allow (10 and 1), and what is measured is runbot, not the
    policy's refusals."""
    policy = data_dir.parent / f"{data_dir.name}-policy.yml"
    policy.parent.mkdir(parents=True, exist_ok=True)
    policy.write_text("default:\n  max_environments: 1000\n  max_silos: 1000\n")
    return policy


def runtime_for(data_dir: Path, database_url: str | None = None, **values: Any) -> Runtime:
    return build_runtime(settings_for(data_dir, database_url, **values))


def apply_silo(rt: Runtime, name: str, stack: str, variables: dict[str, Any]) -> None:
    """Create and apply a silo in this process, before `runbot serve` starts."""
    from tests.helpers import converge_sync, silo_ready

    rt.lifecycle.create_silo(name, stack, variables)
    converge_sync(rt, silo_ready(rt, name), timeout=600)
    silo = rt.lifecycle.get_silo(name)
    if silo.status != "ready":
        raise RuntimeError(f"silo {name} did not apply: {silo.status} {silo.reason}")


def destroy_everything(rt: Runtime, timeout: float = 600) -> None:
    """Tear down what a benchmark left (environments first, then silos), in this process."""
    from tests.helpers import converge_sync

    for env in rt.lifecycle.list_environments():
        rt.lifecycle.destroy_environment(env.id)
    converge_sync(rt, lambda: not rt.lifecycle.list_environments(), timeout=timeout)
    for silo in rt.lifecycle.list_silos():
        with contextlib.suppress(Exception):
            rt.lifecycle.destroy_silo(silo.name, force=True)
    converge_sync(
        rt,
        lambda: all(s.status == "destroyed" for s in rt.lifecycle.list_silos()),
        timeout=timeout,
    )


# ----------------------------------------------------------------------------- fake GitHub


@contextlib.contextmanager
def fake_github() -> Iterator[FakeGitHub]:
    fake = FakeGitHub()
    fake.start()
    try:
        yield fake
    finally:
        fake.stop()


def seed_repo(fake: FakeGitHub, repo: str, config: str | None) -> None:
    files = {".runbot.yml": config} if config is not None else {"README.md": "bench"}
    fake.add_repo(repo, files={"main": files})


def install(fake: FakeGitHub, repos: list[str], installation: int = INSTALLATION) -> None:
    fake.add_installation(installation, OWNER, repos)


def pr_event(fake: FakeGitHub, action: str, repo: str, number: int) -> dict[str, Any]:
    payload = fake.pull_request_event(action, repo, number)
    payload["installation"] = {"id": fake.installation_for(repo), "node_id": "MDIz"}
    return payload


_CLIENTS = threading.local()


def _client() -> httpx.Client:
    """One keep-alive client per thread: like GitHub's sender, not a new client per delivery
    (`httpx.post` builds a client and an SSL context each time: ~15 ms on the timed path)."""
    client = getattr(_CLIENTS, "client", None)
    if client is None:
        client = _CLIENTS.client = httpx.Client(timeout=30)
    return client


def post_event(url: str, payload: dict[str, Any], event: str = "pull_request") -> int:
    body = encode(payload)
    headers = {
        "Content-Type": "application/json",
        "X-GitHub-Event": event,
        "X-GitHub-Delivery": os.urandom(16).hex(),
        "X-Hub-Signature-256": sign(body, WEBHOOK_SECRET),
        "User-Agent": "GitHub-Hookshot/bench",
    }
    response = _client().post(url, content=body, headers=headers)
    if response.status_code not in (200, 202):
        raise RuntimeError(f"webhook refused: {response.status_code} {response.text}")
    return response.status_code


def github_idle(fake: FakeGitHub, rt: Runtime, timeout: float = 120) -> None:
    """Wait until runbot owes GitHub nothing and wrote nothing for over a write interval.

    GitHub writes are paced (about one a second per installation): a step timed while the
    previous step's deployment statuses are still being written would wait for their slots.
    """
    from sqlmodel import func, select

    from app.db.models import PullRequest

    def idle() -> bool:
        writes = [r.time for r in fake.requests if r.method in ("POST", "PATCH", "PUT", "DELETE")]
        if writes and time.monotonic() - max(writes) < 1.1:
            return False
        with rt.db.session() as session:
            owed = session.exec(
                select(func.count())
                .select_from(PullRequest)
                .where(PullRequest.sync_version != PullRequest.synced_version)
            ).one()
        return owed == 0

    wait_until(idle, timeout, 0.05, "runbot's GitHub writes to settle")


def status_comment(fake: FakeGitHub, repo: str, number: int) -> str | None:
    for comment in reversed(fake.comments(repo, number)):
        if comment["body"].startswith(MARKER):
            return str(comment["body"])
    return None


# ----------------------------------------------------------------------------- runbot serve


def process_env(
    data_dir: Path,
    fake: FakeGitHub | None,
    database_url: str | None = None,
    templates: Path = TEMPLATES,
    **settings: str,
) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("RUNBOT_")}
    env.update(
        PYTHONPATH=str(ROOT),  # the runbot next to this bench, whatever is installed
        RUNBOT_DATA_DIR=str(data_dir),
        RUNBOT_TEMPLATES_DIR=str(templates),
        RUNBOT_ENGINE="embedded",
        RUNBOT_GITHUB_WEBHOOK_SECRET=WEBHOOK_SECRET,
    )
    if fake is not None:
        env.update(
            RUNBOT_GITHUB_APP_ID=str(fake.app_id),
            RUNBOT_GITHUB_PRIVATE_KEY=fake.private_key_pem,
            RUNBOT_GITHUB_API_URL=fake.url,
        )
    if database_url:
        env["RUNBOT_DATABASE_URL"] = database_url
    env["RUNBOT_POLICY_FILE"] = str(roomy_policy(data_dir))
    env.update({f"RUNBOT_{key.upper()}": value for key, value in settings.items()})
    return env


class Serve:
    """A real `runbot serve` process (the thing users run), on a free loopback port."""

    def __init__(self, env: dict[str, str], log: Path, cwd: Path | None = None) -> None:
        self.env = env
        self.log = log
        self.cwd = cwd or log.parent
        self.port = free_port()
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def webhook_url(self) -> str:
        return f"{self.url}/webhooks/github"

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def start(self, timeout: float = 60) -> Serve:
        with self.log.open("ab") as out:
            self.proc = subprocess.Popen(
                [PYTHON, "-m", "app.cli", "serve", "--port", str(self.port)],
                env=self.env,
                cwd=self.cwd,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError("runbot serve exited:\n" + self.log.read_text()[-3000:])
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(f"{self.url}/healthz", timeout=1).status_code == 200:
                    return self
            time.sleep(0.05)
        raise RuntimeError("runbot serve never became healthy:\n" + self.log.read_text()[-3000:])

    def memory(self) -> dict[str, int]:
        return proc_status(self.pid)

    @contextlib.contextmanager
    def paused(self) -> Iterator[None]:
        """Freeze the process (SIGSTOP), e.g. while a baseline is measured on the same cores."""
        os.kill(self.pid, signal.SIGSTOP)
        try:
            yield
        finally:
            os.kill(self.pid, signal.SIGCONT)

    def stop(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout=90)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()

    def __enter__(self) -> Serve:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


# ----------------------------------------------------------------------------- the baseline


class DirectEngine:
    """The engine run by hand on a copy of the local instance template: the baseline.

    Same engine (the embedded shim), same argv, same variables (filled from the same silo's
    outputs), same kind of state backend and engine environment as runbot gives it.
    """

    def __init__(self, root: Path, silo_outputs: dict[str, Any], stack: str = "local") -> None:
        self.root = root
        self.root.mkdir(parents=True, exist_ok=True)
        self.runner = EngineRunner("embedded", root / "data")
        self.stack = Catalog(TEMPLATES).get(stack)
        self.silo_outputs = {name: item.get("value") for name, item in silo_outputs.items()}

    def _inputs(self, instance_id: str, slot: int, sha: str) -> dict[str, Any]:
        runbot = {
            "runbot_instance_id": instance_id,
            "runbot_slot": slot,
            "runbot_pr_number": 1,
            "runbot_head_sha": sha,
            "runbot_head_ref": "bench/direct",
            "runbot_repository": f"{OWNER}/direct",
            "runbot_suspended": False,
            "runbot_workspace_dir": str(self.root / "workspace" / instance_id),
        }
        return instance_inputs(self.stack.instance, runbot, {}, self.silo_outputs)

    def _run(self, workdir: Path, target: str, args: list[str]) -> float:
        backend = backend_for(target, None, self.runner.data_dir, None)
        env = self.runner.child_env(target, dict(backend.env))
        Path(env["TF_DATA_DIR"]).mkdir(parents=True, exist_ok=True)
        started = time.perf_counter()
        done = subprocess.run(
            [*EMBEDDED, f"-chdir={workdir}", *args],
            env=env,
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
        )
        elapsed = time.perf_counter() - started
        if done.returncode != 0:
            raise RuntimeError(f"direct engine {args[0]} failed:\n{done.stdout}\n{done.stderr}")
        return elapsed

    def prepare(self, instance_id: str, slot: int, sha: str) -> Path:
        target = f"env-{instance_id}"
        workdir = self.root / "work" / instance_id
        shutil.rmtree(workdir, ignore_errors=True)
        shutil.copytree(self.stack.instance.path, workdir)
        backend = backend_for(target, None, self.runner.data_dir, None)
        if backend.override_file:
            (workdir / BACKEND_FILE).write_text(backend.override_file)
        self.write_vars(workdir, instance_id, slot, sha)
        return workdir

    def write_vars(self, workdir: Path, instance_id: str, slot: int, sha: str) -> None:
        (workdir / VAR_FILE).write_text(json.dumps(self._inputs(instance_id, slot, sha)))

    def init(self, workdir: Path, instance_id: str) -> float:
        target = f"env-{instance_id}"
        backend = backend_for(target, None, self.runner.data_dir, None)
        return self._run(
            workdir,
            target,
            ["init", "-reconfigure", "-input=false", "-no-color", *backend.config_args],
        )

    def apply(self, workdir: Path, instance_id: str, operation: str = "apply") -> float:
        return self._run(
            workdir,
            f"env-{instance_id}",
            [
                operation,
                "-auto-approve",
                "-input=false",
                "-no-color",
                "-lock-timeout=120s",
                f"-var-file={workdir / VAR_FILE}",
            ],
        )

    def url(self, slot: int) -> str:
        return (
            f"http://{self.silo_outputs['bind_host']}:{int(self.silo_outputs['port_base']) + slot}/"
        )


# ----------------------------------------------------------------------------- waiting


def wait_until(
    check: Callable[[], Any], timeout: float, interval: float = 0.005, what: str = "condition"
) -> float:
    """Poll `check` until truthy; returns time.perf_counter() at the first success."""
    deadline = time.monotonic() + timeout
    while True:
        if check():
            return time.perf_counter()
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout:.0f}s waiting for {what}")
        time.sleep(interval)


def wait_for_github(
    fake: FakeGitHub, check: Callable[[], Any], timeout: float, what: str = "condition"
) -> float:
    """Like `wait_until`, but re-checks the moment the fake GitHub has handled a request.

    What the bot shows people lands on GitHub, so a timed step ends at a GitHub write: waking
    on each one sees it at once, where polling every 5 ms saw it 2.5 ms late on average and
    kept waking this process while the bot's engine ran (the direct runs had no such load).
    Conditions that do not follow a write (a URL answering) are still re-checked every 50 ms.
    """
    deadline = time.monotonic() + timeout
    while True:
        seen = fake.handled_count
        if check():
            return time.perf_counter()
        left = deadline - time.monotonic()
        if left <= 0:
            raise TimeoutError(f"timed out after {timeout:.0f}s waiting for {what}")
        fake.wait_for_handled(seen, min(left, 0.05))


def answers(url: str, expect: str | None = None, timeout: float = 2.0) -> bool:
    try:
        response = _client().get(url, timeout=timeout, headers={"Connection": "close"})
    except httpx.HTTPError:
        return False
    return response.status_code == 200 and (expect is None or expect in response.text)


def refuses(url: str) -> bool:
    """Nothing answers for it: the port is closed, or the local stack's ingress knows no such
    environment (404)."""
    try:
        response = _client().get(url, timeout=2.0, headers={"Connection": "close"})
    except httpx.ConnectError:
        return True
    except httpx.HTTPError:
        return False
    ingress = response.headers.get("server", "").startswith("runbot-ingress/")
    return ingress and response.status_code == 404


def run_async(coro: Any) -> Any:
    return asyncio.run(coro)
