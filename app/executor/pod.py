"""`runbot engine exec --run <id>`: the pod's PID 1, running one job with the local runner.

It holds only RUNBOT_RUN_CALLBACK (runbot's API, as pods reach it) and RUNBOT_RUN_TOKEN (the
run's short-lived token, from the Job's Secret). With them it fetches the signed run spec and
the pinned template, runs the job with `EngineRunner` (the same argv contract as `local`),
pushes the log in numbered batches and finally the result. The engine's environment is built
by the runner, which drops every RUNBOT_* variable, so the token never reaches templates.

Signals: as PID 1 of its PID namespace, the kernel ignores every signal it has no handler for,
so without the SIGTERM handler here a deleted Job's pod would wait out its grace period and
be SIGKILLed with the engine mid-write. The handler sets the cancel event instead: the runner
sends SIGINT (the engine saves state and releases its lock), then SIGTERM, then SIGKILL, and
the cancelled result is pushed before exiting.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import signal
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, TypeVar

import httpx

from app.engine.backends import Backend
from app.engine.runner import EngineCancelled, EngineError, EngineFailed, EngineJob, EngineRunner
from app.executor.spec import SpecError, unpack, verify

T = TypeVar("T")
FLUSH_INTERVAL = 0.3
BATCH_LINES = 500
FETCH_PATIENCE = 300.0  # runbot's API may be restarting, or behind a rolling update
AUTH_PATIENCE = 60.0  # how long a refused token is retried, for the first fetch only


class Refused(Exception):
    """runbot's API refused for good (401/403/410/4xx): retrying cannot help."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(f"{status}: {message}")
        self.status = status


def _say(text: str) -> None:
    print(f"runbot engine exec: {text}", file=sys.stderr, flush=True)


class Api:
    """runbot's run-token API, with retries on what may pass (network, 5xx, 401 early on)."""

    def __init__(self, callback: str, token: str, run_id: int) -> None:
        self.base = callback.rstrip("/") + f"/api/runs/{run_id}"
        self.http = httpx.AsyncClient(
            headers={"Authorization": f"Bearer {token}"}, timeout=httpx.Timeout(30.0)
        )

    async def aclose(self) -> None:
        await self.http.aclose()

    async def _retry(
        self,
        call: Callable[[], Awaitable[httpx.Response]],
        patience: float,
        auth_patience: float = 0.0,
    ) -> httpx.Response:
        """`call()` until it succeeds; network errors, 5xx and 429 are retried for `patience`
        seconds, 401/403 for `auth_patience` (the ticket may not be visible to this replica's
        database yet), anything else is final."""
        started = time.monotonic()
        deadline = started + patience
        delay = 0.2
        while True:
            try:
                response = await call()
                if response.status_code < 400:
                    return response
                retriable = response.status_code >= 500 or response.status_code == 429
                if response.status_code in (401, 403):
                    retriable = time.monotonic() - started < auth_patience
                if not retriable:
                    raise Refused(response.status_code, _message(response))
                problem = f"{response.status_code}: {_message(response)}"
            except httpx.HTTPError as exc:
                problem = f"{type(exc).__name__}: {exc}"
            if time.monotonic() + delay > deadline:
                raise Refused(503, f"runbot's API did not answer in {patience:.0f}s ({problem})")
            await asyncio.sleep(delay)
            delay = min(delay * 2, 5.0)

    async def spec(self) -> dict[str, Any]:
        response = await self._retry(
            lambda: self.http.get(f"{self.base}/spec"), FETCH_PATIENCE, AUTH_PATIENCE
        )
        data: dict[str, Any] = response.json()
        return data

    async def template(self) -> bytes:
        response = await self._retry(lambda: self.http.get(f"{self.base}/template"), FETCH_PATIENCE)
        return response.content

    async def lines(self, batch: list[tuple[int, str]], phase: str | None, patience: float) -> None:
        body = {"lines": [{"seq": s, "text": t} for s, t in batch], "phase": phase}
        await self._retry(lambda: self.http.post(f"{self.base}/lines", json=body), patience)

    async def result(self, result: dict[str, Any], patience: float) -> None:
        await self._retry(lambda: self.http.post(f"{self.base}/result", json=result), patience)


def _message(response: httpx.Response) -> str:
    with contextlib.suppress(ValueError):
        detail = response.json().get("detail")
        if isinstance(detail, str):
            return detail
    return response.text[:200]


class LinePusher:
    """Collects the runner's lines and pushes them in order, each batch until it lands.

    A push carries lines of one phase only, and a phase change is pushed even with no lines:
    an apply quicker than the flush interval still shows its `apply` phase, in its place.
    """

    def __init__(self, api: Api, first_seq: int, patience: float) -> None:
        self.api = api
        self.next_seq = first_seq
        self.patience = patience
        self.pending: list[tuple[int, str]] = []
        #: Phases not pushed yet, each with the sequence number of its first line.
        self.marks: list[tuple[int, str]] = []
        self._phase_sent: str | None = None
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    def line(self, text: str) -> None:
        self.pending.append((self.next_seq, text))
        self.next_seq += 1
        if len(self.pending) >= BATCH_LINES:
            self._wake.set()

    def set_phase(self, phase: str) -> None:
        self.marks.append((self.next_seq, phase))
        self._wake.set()

    def start(self) -> None:
        self._task = asyncio.create_task(self._loop())

    async def _loop(self) -> None:
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), FLUSH_INTERVAL)
            self._wake.clear()
            await self.flush()

    async def flush(self) -> None:
        while self.pending or self.marks:
            phase, opens = self._phase_sent, False
            if self.marks and (not self.pending or self.pending[0][0] >= self.marks[0][0]):
                phase, opens = self.marks[0][1], True
            ends = [seq for seq, _ in self.marks[1 if opens else 0 :]]
            end = ends[0] if ends else self.next_seq
            batch = [line for line in self.pending[:BATCH_LINES] if line[0] < end]
            await self.api.lines(batch, phase, self.patience)
            del self.pending[: len(batch)]
            if opens:
                del self.marks[0]
            self._phase_sent = phase

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        await self.flush()


def job_from_spec(spec: dict[str, Any], template_dir: Path) -> EngineJob:
    backend = dict(spec["backend"])
    backend["config_args"] = list(backend.get("config_args") or [])
    backend["redact"] = tuple(backend.get("redact") or ())
    return EngineJob(
        target=str(spec["target"]),
        template_dir=template_dir,
        operation="destroy" if spec["operation"] == "destroy" else "apply",
        variables=dict(spec["variables"]),
        declared_backend=spec.get("declared_backend"),
        secret_env={str(k): str(v) for k, v in (spec.get("secret_env") or {}).items()},
        redact=[str(item) for item in spec.get("redact") or []],
        run_id=int(spec["run_id"]),
        backend=Backend(**backend),
    )


def _result_of(exc: BaseException) -> dict[str, Any]:
    if isinstance(exc, EngineFailed):
        return {
            "status": "cancelled" if isinstance(exc, EngineCancelled) else "failed",
            "error": str(exc),
            "phase": exc.phase,
            "exit_code": exc.exit_code,
            "outputs": exc.outputs,
        }
    return {"status": "failed", "kind": "error", "error": str(exc), "phase": "init"}


async def run(run_id: int, callback: str, token: str, install_handlers: bool = True) -> int:
    """Run the run's job; the process's exit code (0: the engine succeeded)."""
    cancel = asyncio.Event()
    loop = asyncio.get_running_loop()
    if install_handlers:
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, cancel.set)
    api = Api(callback, token, run_id)
    work = Path(tempfile.mkdtemp(prefix=f"runbot-run-{run_id}-"))
    try:
        try:
            fetched = await api.spec()
            spec = verify(fetched["envelope"], token, time.time(), run_id)
            template_dir = work / "template"
            template_dir.mkdir()
            unpack(await api.template(), template_dir, str(spec["template_sha256"]))
        except Refused as exc:
            if exc.status == 410:
                _say(f"nothing to do ({exc})")
                return 0
            _say(f"cannot fetch the run spec: {exc}")
            return 2
        except (SpecError, KeyError, ValueError) as exc:
            _say(f"refusing the run spec: {exc}")
            with contextlib.suppress(Refused):
                await api.result(_result_of(EngineError(f"the pod refused its spec: {exc}")), 30)
            return 2
        patience = max(60.0, float(spec["exp"]) - time.time())
        pusher = LinePusher(api, int(fetched.get("next_seq") or 1), patience)
        pusher.start()
        runner = EngineRunner(
            str(os.environ.get("RUNBOT_ENGINE") or spec["engine"]),
            work / "data",
            None,
            timeout=float(spec["timeout"]),
            cancel_grace=float(spec["cancel_grace"]),
        )
        result: dict[str, Any]
        try:
            outcome = await runner.execute(
                job_from_spec(spec, template_dir), pusher.line, pusher.set_phase, cancel
            )
            result = {"status": "succeeded", "outputs": outcome.outputs}
        except (EngineError, OSError) as exc:
            result = _result_of(exc)
        await pusher.close()
        await api.result(result, patience)
        return 0 if result["status"] == "succeeded" else 1
    finally:
        await api.aclose()
        shutil.rmtree(work, ignore_errors=True)


def main(run_id: int) -> int:
    callback = os.environ.get("RUNBOT_RUN_CALLBACK", "")
    token = os.environ.get("RUNBOT_RUN_TOKEN", "")
    if not callback or not token:
        _say("RUNBOT_RUN_CALLBACK and RUNBOT_RUN_TOKEN must be set (the Job sets both)")
        return 2
    for name in ("RUNBOT_RUN_TOKEN",):
        os.environ.pop(name, None)  # the engine's environment never gets it, even by mistake
    return asyncio.run(run(run_id, callback, token))
