"""The `kubernetes` executor: each engine run is one batch/v1 Job running runbot's own image.

The client is lightkube, not the official `kubernetes` package: its client is async (the
dispatcher waits on Jobs in runbot's event loop, with no thread per run), its models are typed
(strict mypy checks what we read), and it is small (httpx plus generated models, no
code-generated API classes of tens of MB). `kubernetes_asyncio` is async too but untyped.

What a run does, and why:
- The ticket first (`tickets.create`): the pod can fetch its spec as soon as it starts.
- Then the Job, under a name from (target, run id): a second create of the same run gets 409,
  and the dispatcher ADOPTS that Job (never a second one). A replica that took over a lease
  with a new run id finds the target's running Job by label: the same job (same spec digest)
  is adopted, its ticket followed; another job is waited for, so two engines never share a
  state.
- Then the Secret with the run token, owned by the Job. A dispatcher killed between the two
  leaves a Job whose pod cannot start (no Secret); the adopter mints a new token, which is
  safe because no pod holds the old one.
- Then it waits for what the pod pushes into the database (lines in seq order, the phase, the
  result) and watches the Job: failed or past its deadline with no result is EngineFailed; gone
  with no result is an error. runbot never reads pod logs.
- Cancel deletes the Job with `propagationPolicy: Background`: the pod gets SIGTERM, its PID 1
  (`runbot engine exec`) runs the SIGINT, SIGTERM, SIGKILL ladder on the engine, and pushes
  the cancelled result. Without Background, Kubernetes orphans the pod, which keeps running.
- A worker shutting down (asyncio cancellation) leaves the Job running: the replica that takes
  over the lease adopts it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
from collections.abc import Awaitable, Callable
from dataclasses import asdict, dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, TypeVar

import httpx2
from lightkube import ApiError, AsyncClient, ConfigError, KubeConfig
from lightkube.codecs import from_dict
from lightkube.resources.batch_v1 import Job
from lightkube.resources.core_v1 import Pod, Secret
from lightkube.types import CascadeType

from app.db.session import Database
from app.engine import pgrole
from app.engine.backends import Backend, backend_for
from app.engine.credentials import silo_credentials
from app.engine.runner import (
    EngineCancelled,
    EngineError,
    EngineFailed,
    EngineJob,
    EngineResult,
    LineSink,
    PhaseSink,
)
from app.executor import spec as specs
from app.executor import tickets
from app.executor.manifest import (
    ANNOTATION_RUN,
    LABEL_RUN,
    LABEL_SPEC,
    LABEL_TARGET,
    JobParams,
    job_manifest,
    job_name,
    job_outcome,
    label_value,
    run_label,
    secret_manifest,
    termination_grace,
)

log = logging.getLogger("runbot.executor")
T = TypeVar("T")

#: A finished Job's result may land a moment after its status says so.
RESULT_GRACE = 10.0
#: How long a dispatcher may take between creating a Job and its Secret.
SECRET_PATIENCE = 30.0
#: How long a token outlives the Job's deadline: the last pushes, a slow pod start.
TOKEN_MARGIN = 600


@dataclass(frozen=True)
class KubernetesConfig:
    namespace: str
    image: str
    service_account: str
    callback_url: str
    kubeconfig: Path | None  # None: in-cluster
    cpu: str = "250m"
    memory: str = "512Mi"
    ttl_after_finished: int = 3600
    run_as_user: int = 10001
    poll_interval: float = 0.25
    job_check_interval: float = 1.0


def spec_digest(job: EngineJob, template_digest: str) -> str:
    """What identifies the job a Job runs, across run ids: a takeover adopts only this one."""
    return specs.digest(
        specs.canonical(
            {
                "target": job.target,
                "operation": job.operation,
                "variables": job.variables,
                "declared_backend": job.declared_backend,
                "template": template_digest,
            }
        )
    )


class KubernetesExecutor:
    def __init__(
        self,
        db: Database,
        config: KubernetesConfig,
        engine: str,
        data_dir: Path,
        database_url: str | None,
        timeout: float = 3600.0,
        cancel_grace: float = 60.0,
        silo_env_dir: Path | None = None,
    ) -> None:
        self.silo_env_dir = silo_env_dir
        self.db = db
        self.config = config
        self.engine = engine
        self.data_dir = data_dir.absolute()
        self.database_url = database_url
        self.timeout = timeout
        self.cancel_grace = cancel_grace
        self._kubeconfig: KubeConfig | None = None

    def argv_prefix(self) -> list[str]:
        """The pod's command: the engine itself lives in the image, not beside runbot."""
        return ["runbot", "engine", "exec"]

    def forget(self, target: str) -> None:
        """The target's own database role and state schema; nothing of it is on this disk."""
        if self.database_url and self.database_url.startswith("postgresql"):
            pgrole.drop(self.database_url, target)

    def _client(self) -> AsyncClient:
        # One client per run: an httpx client belongs to the event loop it was made in.
        if self._kubeconfig is None:
            path = self.config.kubeconfig
            try:
                self._kubeconfig = (
                    KubeConfig.from_file(path) if path else KubeConfig.from_service_account()
                )
            except (ConfigError, OSError, ValueError) as exc:
                where = f"RUNBOT_K8S_KUBECONFIG={path}" if path else "in-cluster (no kubeconfig)"
                raise EngineError(
                    f"cannot load the Kubernetes configuration, {where}: {exc}. Set"
                    " RUNBOT_K8S_KUBECONFIG, or run runbot in the cluster with a ServiceAccount"
                ) from exc
        return AsyncClient(
            self._kubeconfig, namespace=self.config.namespace, timeout=httpx2.Timeout(30.0)
        )

    def _params(self, job: EngineJob, run_id: int, digest: str) -> JobParams:
        c = self.config
        return JobParams(
            run_id=run_id,
            target=job.target,
            silo=job.silo,
            namespace=c.namespace,
            image=c.image,
            service_account=c.service_account,
            callback_url=c.callback_url,
            cpu=c.cpu,
            memory=c.memory,
            timeout=self.timeout,
            cancel_grace=self.cancel_grace,
            spec_digest=digest,
            ttl_after_finished=c.ttl_after_finished,
            run_as_user=c.run_as_user,
        )

    def _token_expiry(self) -> datetime:
        seconds = self.timeout + self.cancel_grace + TOKEN_MARGIN
        return datetime.now(UTC) + timedelta(seconds=seconds)

    def _backend(self, job: EngineJob) -> Backend:
        backend = backend_for(job.target, job.declared_backend, self.data_dir, self.database_url)
        if backend.kind == "local":
            raise EngineError(
                "the kubernetes executor keeps engine state in PostgreSQL: set"
                " RUNBOT_DATABASE_URL to a PostgreSQL database, or declare a remote backend in"
                " the template (a pod's local state is gone when the pod is)"
            )
        return backend

    def _spec(self, job: EngineJob, run_id: int, template_digest: str) -> dict[str, Any]:
        """The run's spec, with a backend the pod can use: the target's own role on
        PostgreSQL (a fresh password), or the template's own backend. Runs in a thread."""
        backend = self._backend(job)
        if backend.kind == "pg" and not job.declared_backend and self.database_url:
            backend = pgrole.provision(self.database_url, job.target, backend)
        seen = asdict(backend)
        seen["config_args"], seen["redact"] = list(backend.config_args), list(backend.redact)
        return {
            "v": specs.SPEC_VERSION,
            "run_id": run_id,
            "target": job.target,
            "operation": job.operation,
            "variables": job.variables,
            "declared_backend": job.declared_backend,
            "backend": seen,
            # The silo's provider credentials (RUNBOT_SILO_ENV_DIR), as `local` gives them.
            "secret_env": {**silo_credentials(self.silo_env_dir, job.silo), **job.secret_env},
            "redact": [str(item) for item in job.redact],
            "engine": self.engine,
            "timeout": self.timeout,
            "cancel_grace": self.cancel_grace,
            "template_sha256": template_digest,
            "exp": int(self._token_expiry().timestamp()),
        }

    async def mint(self, job: EngineJob, run_id: int, template: bytes, rotate: bool) -> str | None:
        """A token and the spec signed with it: in a new ticket, or (rotate) replacing the
        token of one no pod holds yet. None: another dispatcher wrote this run's ticket first.

        The ticket is claimed before the spec is built, as building it sets a new password on
        the target's database role: only the dispatcher that will start the pod may do that.
        """
        token = specs.new_token()
        expiry = self._token_expiry()
        if not rotate:
            claimed = await asyncio.to_thread(
                tickets.create, self.db, run_id, job.target, token, "", template, expiry
            )
            if not claimed:
                return None
        spec = await asyncio.to_thread(self._spec, job, run_id, specs.digest(template))
        envelope = specs.sign(spec, token)
        await asyncio.to_thread(tickets.rotate, self.db, run_id, token, envelope, template, expiry)
        return token

    async def execute(
        self,
        job: EngineJob,
        on_line: LineSink,
        on_phase: PhaseSink | None = None,
        cancel: asyncio.Event | None = None,
    ) -> EngineResult:
        # A job with no Run row (the orphan sweep's destroys) gets a negative ticket id, which
        # no Run row has.
        run_id = job.run_id if job.run_id is not None else -(secrets.randbelow(2**31 - 2) + 1)
        if job.sources:
            # The run spec carries the template, not the PR's source: a pod could not read it.
            raise EngineError(
                "the kubernetes executor cannot give a pod the PR's source yet: a stack that"
                " declares runbot_source_dir needs RUNBOT_EXECUTOR=local for now"
            )
        self._backend(job)  # refused before anything is made
        template = await asyncio.to_thread(specs.pack, Path(job.template_dir))
        digest = spec_digest(job, specs.digest(template))
        params = self._params(job, run_id, digest)
        name = job_name(job.target, run_id)
        client = self._client()
        try:
            follow = await self._dispatch(client, job, params, name, template, on_line, cancel)
            return await self._follow(client, follow, on_line, on_phase, cancel)
        finally:
            with contextlib.suppress(Exception):
                await asyncio.shield(client.close())

    async def _dispatch(
        self,
        client: AsyncClient,
        job: EngineJob,
        params: JobParams,
        name: str,
        template: bytes,
        on_line: LineSink,
        cancel: asyncio.Event | None = None,
    ) -> tuple[str, int]:
        """Start the run's Job, or find the one to adopt: (Job name, run id whose ticket to
        follow)."""
        run_id = params.run_id
        if await self._get_job(client, name) is not None:
            on_line(f"runbot: adopting Job {name}, already running this run")
            await self._ensure_secret(client, job, params, name, template)
            return name, run_id
        other = await self._active_job_of_target(client, job.target, exclude=name)
        while other is not None:
            labels = other.metadata.labels if other.metadata and other.metadata.labels else {}
            other_name = other.metadata.name if other.metadata else None
            assert other_name is not None
            notes = other.metadata.annotations if other.metadata else None
            other_run = (notes or {}).get(ANNOTATION_RUN, "")
            if labels.get(LABEL_SPEC) == params.spec_digest[:40] and _is_int(other_run):
                on_line(f"runbot: adopting Job {other_name}, already running this same job")
                return other_name, int(other_run)
            on_line(f"runbot: waiting for Job {other_name}, an earlier run of this target")
            while (found := await self._get_job(client, other_name)) is not None:
                if job_outcome(_status(found)) is not None:
                    break
                if cancel is not None and cancel.is_set():
                    raise EngineCancelled(
                        "cancelled while an earlier run of this target was still going",
                        phase="init",
                        exit_code=None,
                    )
                await asyncio.sleep(self.config.job_check_interval)
            other = await self._active_job_of_target(client, job.target, exclude=name)
        progress = await asyncio.to_thread(tickets.progress, self.db, run_id)
        if progress is not None and progress.result is not None:
            return name, run_id  # finished already (its Job cleaned up): the result stands
        # A ticket minted moments ago with no Job yet: its dispatcher is between the two
        # (rotating its token now would leave its pod with a token that no longer works).
        busy = progress is not None and _recent(progress.minted_at)
        token = None if busy else await self.mint(job, run_id, template, progress is not None)
        if token is None:
            # Another dispatcher of this run claimed the ticket a moment ago: its Job follows.
            if await self._wait_for(lambda: self._get_job(client, name)) is not None:
                on_line(f"runbot: adopting Job {name}, started by another dispatcher")
                await self._ensure_secret(client, job, params, name, template)
                return name, run_id
            token = await self.mint(job, run_id, template, rotate=True)
            assert token is not None
        try:
            created = await client.create(from_dict(job_manifest(params)))
        except ApiError as exc:
            if exc.status.code != 409:
                message = exc.status.message
                raise EngineError(f"Kubernetes refused the run's Job: {message}") from exc
            on_line(f"runbot: Job {name} exists already; adopting it")
            await self._ensure_secret(client, job, params, name, template)
            return name, run_id
        uid = created.metadata.uid if created.metadata else None
        await self._create_secret(client, params, token, name, uid or "")
        on_line(f"runbot: started Job {name} in namespace {self.config.namespace}")
        return name, run_id

    async def _create_secret(
        self, client: AsyncClient, params: JobParams, token: str, name: str, uid: str
    ) -> None:
        with contextlib.suppress(ApiError):
            # 409: it exists (another dispatcher made it); the pod uses that one.
            await client.create(from_dict(secret_manifest(params, token, uid, name)))

    async def _ensure_secret(
        self, client: AsyncClient, job: EngineJob, params: JobParams, name: str, template: bytes
    ) -> None:
        """An adopted Job's Secret. Its dispatcher makes it right after the Job; still missing
        after SECRET_PATIENCE, that dispatcher died, the pod never started (it cannot without
        its token), so a new token is safe."""
        if await self._wait_for(lambda: self._get_secret(client, name)) is not None:
            return
        found = await self._get_job(client, name)
        progress = await asyncio.to_thread(tickets.progress, self.db, params.run_id)
        if found is None or (progress is not None and progress.result is not None):
            return
        token = await self.mint(job, params.run_id, template, rotate=progress is not None)
        if token is None:
            return
        uid = found.metadata.uid if found.metadata else None
        await self._create_secret(client, params, token, name, uid or "")

    async def _get_secret(self, client: AsyncClient, name: str) -> Secret | None:
        try:
            return await client.get(Secret, name, namespace=self.config.namespace)
        except ApiError as exc:
            if exc.status.code == 404:
                return None
            raise EngineError(f"cannot read the run's Secret: {exc.status.message}") from exc

    async def _wait_for(self, read: Callable[[], Awaitable[T | None]]) -> T | None:
        """`read()` until it finds something, for up to SECRET_PATIENCE seconds."""
        deadline = asyncio.get_running_loop().time() + SECRET_PATIENCE
        while (found := await read()) is None:
            if asyncio.get_running_loop().time() > deadline:
                return None
            await asyncio.sleep(0.5)
        return found

    async def _get_job(self, client: AsyncClient, name: str) -> Job | None:
        try:
            return await client.get(Job, name, namespace=self.config.namespace)
        except ApiError as exc:
            if exc.status.code == 404:
                return None
            raise EngineError(f"cannot read the run's Job: {exc.status.message}") from exc

    async def _active_job_of_target(
        self, client: AsyncClient, target: str, exclude: str
    ) -> Job | None:
        labels: dict[str, Any] = {LABEL_TARGET: label_value(target)}
        async for found in client.list(Job, namespace=self.config.namespace, labels=labels):
            found_name = found.metadata.name if found.metadata else None
            if found_name != exclude and job_outcome(_status(found)) is None:
                return found
        return None

    async def _pods_left(self, client: AsyncClient, run_id: int) -> bool:
        labels: dict[str, Any] = {LABEL_RUN: run_label(run_id)}
        async for pod in client.list(Pod, namespace=self.config.namespace, labels=labels):
            phase = pod.status.phase if pod.status else None
            if phase not in ("Succeeded", "Failed"):
                return True
        return False

    async def _follow(
        self,
        client: AsyncClient,
        follow: tuple[str, int],
        on_line: LineSink,
        on_phase: PhaseSink | None,
        cancel: asyncio.Event | None,
    ) -> EngineResult:
        """Stream the pushed lines in order until the result, the Job's end or the cancel."""
        name, run_id = follow
        seq, phase = 0, None
        seen_phases: list[str] = []
        loop = asyncio.get_running_loop()
        next_check = 0.0
        finished_at: float | None = None  # when the Job was seen done with no result yet
        deleted_at: float | None = None
        grace = termination_grace(self.cancel_grace) + 30

        async def drain() -> None:
            nonlocal seq
            while batch := await asyncio.to_thread(tickets.lines_after, self.db, run_id, seq):
                for number, text in batch:
                    on_line(text)
                    seq = number

        while True:
            await drain()
            progress = await asyncio.to_thread(tickets.progress, self.db, run_id)
            if progress is None:
                raise EngineError(f"the ticket of run {run_id} is gone")
            for phase in progress.phases[len(seen_phases) :]:
                seen_phases.append(phase)
                if on_phase:
                    on_phase(phase)
            if progress.result is not None:
                await drain()
                return _outcome(progress.result)
            now = loop.time()
            if cancel is not None and cancel.is_set() and deleted_at is None:
                on_line(f"runbot: cancelling; deleting Job {name} (propagationPolicy Background)")
                await self._delete(client, name)
                deleted_at = now
            if deleted_at is not None:
                if now - deleted_at > grace or (
                    now >= next_check and not await self._pods_left(client, run_id)
                ):
                    await drain()
                    last = await asyncio.to_thread(tickets.progress, self.db, run_id)
                    if last is not None and last.result is not None:
                        return _outcome(last.result)
                    raise EngineCancelled(
                        "cancelled; the pod stopped without reporting",
                        phase=phase or "init",
                        exit_code=None,
                    )
                if now >= next_check:
                    next_check = now + self.config.job_check_interval
            elif now >= next_check:
                next_check = now + self.config.job_check_interval
                found = await self._get_job(client, name)
                outcome = job_outcome(_status(found)) if found is not None else ("gone", "")
                if outcome is not None:
                    finished_at = finished_at if finished_at is not None else now
                    if now - finished_at > RESULT_GRACE:
                        raise _ended_without_result(name, outcome, phase)
            await asyncio.sleep(self.config.poll_interval)

    async def _delete(self, client: AsyncClient, name: str) -> None:
        try:
            await client.delete(
                Job, name, namespace=self.config.namespace, cascade=CascadeType.BACKGROUND
            )
        except ApiError as exc:
            if exc.status.code != 404:
                raise EngineError(f"cannot delete the run's Job: {exc.status.message}") from exc


def _recent(moment: datetime | None) -> bool:
    return moment is not None and datetime.now(UTC) - moment < timedelta(seconds=SECRET_PATIENCE)


def _is_int(text: str) -> bool:
    return text.lstrip("-").isdigit()


def _status(job: Job) -> dict[str, Any] | None:
    return job.status.to_dict() if job.status is not None else None


def _ended_without_result(name: str, outcome: tuple[str, str], phase: str | None) -> EngineError:
    kind, reason = outcome
    if kind == "gone":
        return EngineError(f"the run's Job {name} vanished before its pod reported a result")
    if kind == "failed":
        return EngineFailed(
            f"the Job {name} failed ({reason}) before its pod reported a result",
            phase=phase or "init",
            exit_code=None,
        )
    return EngineFailed(
        f"the Job {name} completed without its pod reporting a result",
        phase=phase or "init",
        exit_code=None,
    )


def _outcome(result: dict[str, Any]) -> EngineResult:
    """The pod's result as the local runner would have returned or raised it."""
    status = result.get("status")
    outputs = result.get("outputs") or {}
    if status == "succeeded":
        return EngineResult(outputs=outputs)
    error = str(result.get("error") or "the engine failed")
    phase = str(result.get("phase") or "init")
    exit_code = result.get("exit_code")
    code = exit_code if isinstance(exit_code, int) else None
    exc: EngineFailed
    if status == "cancelled":
        exc = EngineCancelled(error, phase=phase, exit_code=code)
    else:
        exc = EngineFailed(error, phase=phase, exit_code=code)
    exc.outputs = outputs
    if result.get("kind") == "error":
        raise EngineError(error)
    raise exc
