"""Webhook acknowledgement: how fast `runbot serve` answers a flood of signed deliveries.

2,000 signed `pull_request.synchronize` deliveries per trial (18 kB each, built from GitHub's
example payload), 5 trials (300 and 2 with `--quick`), are posted over 16 concurrent keep-alive
connections by a separate load process (`bench/loadgen.py`) to a real `runbot serve`. Target:
p50 at most 1.3x the baseline's.

The baseline is `bench/bare_server.py`, a FastAPI endpoint on uvicorn that only checks the HMAC
and parses the JSON (with `json`, through FastAPI's routing), run the way `runbot serve` runs
uvicorn. runbot's own endpoint skips FastAPI's routing and parses with `orjson`: the baseline
stays the plain FastAPI endpoint. Trials alternate which side goes first.

The deliveries are for a repository where the App is installed but which has no `.runbot.yml`
(the common case of an organisation-wide install), so the background intent work a delivery
causes (record the PR's facts, read the base branch's config from the fake GitHub) runs in the
same process while the load lasts, as it would in production, but no engine run competes.

That background work outlasts each runbot trial (the intent backlog drains for a while), so
`runbot serve` is frozen (SIGSTOP) while the baseline is measured: otherwise it would slow the
baseline down on the same two cores and flatter the ratio.

Also reported: p99 and throughput, that every acknowledged delivery is already recorded, and
`serve`'s peak RSS under the load. Under 16 always-busy connections the p50 is mostly queueing,
so it follows the CPU each delivery costs on the event loop; the p99 are the deliveries that
wait for a group commit, or for the intent processor's turn on the loop.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import time
from pathlib import Path

import httpx
from sqlmodel import func, select

from app.db.models import Delivery
from bench.harness import (
    INSTALLATION,
    OWNER,
    PYTHON,
    WEBHOOK_SECRET,
    Context,
    Serve,
    fake_github,
    free_port,
    install,
    process_env,
    runtime_for,
    seed_repo,
    wait_until,
)
from bench.stats import Row, check, fmt_seconds, median, percentile, ratio
from tests.fakegithub.server import FakeGitHub
from tests.fakegithub.webhooks import encode, sign

NAME = "webhook"
CONCURRENCY = 16
PULLS = 50
SIZES: list[int] = []


def _requests(fake: FakeGitHub, repo: str, count: int, path: Path, tag: str) -> list[str]:
    ids = []
    with path.open("w", encoding="utf-8") as out:
        for index in range(count):
            number = 1 + index % PULLS
            payload = fake.pull_request_event("synchronize", repo, number)
            payload["installation"] = {"id": INSTALLATION, "node_id": "MDIz"}
            payload["pull_request"]["head"]["sha"] = f"{index:040x}"
            payload["after"] = f"{index:040x}"
            body = encode(payload)
            SIZES.append(len(body))
            delivery = f"{tag}-{index}-{os.urandom(4).hex()}"
            ids.append(delivery)
            headers = {
                "Content-Type": "application/json",
                "User-Agent": "GitHub-Hookshot/bench",
                "X-GitHub-Event": "pull_request",
                "X-GitHub-Delivery": delivery,
                "X-GitHub-Hook-ID": "1",
                "X-Hub-Signature-256": sign(body, WEBHOOK_SECRET),
            }
            out.write(json.dumps({"body": body.decode("latin-1"), "headers": headers}) + "\n")
    return ids


def _load(port: int, path: Path, out: Path) -> dict:  # type: ignore[type-arg]
    subprocess.run(
        [
            PYTHON,
            "-m",
            "bench.loadgen",
            "127.0.0.1",
            str(port),
            str(path),
            str(CONCURRENCY),
            str(out),
        ],
        check=True,
        cwd=Path(__file__).resolve().parents[1],
    )
    result = json.loads(out.read_text())
    return dict(result)


class Bare:
    def __init__(self, log: Path) -> None:
        self.port = free_port()
        self.log = log
        self.proc: subprocess.Popen[bytes] | None = None

    def __enter__(self) -> Bare:
        env = {**os.environ, "BENCH_WEBHOOK_SECRET": WEBHOOK_SECRET}
        with self.log.open("ab") as out:
            self.proc = subprocess.Popen(
                [PYTHON, "-m", "bench.bare_server", str(self.port)],
                env=env,
                stdout=out,
                stderr=subprocess.STDOUT,
                cwd=Path(__file__).resolve().parents[1],
                start_new_session=True,
            )

        def up() -> bool:
            try:
                return httpx.get(f"http://127.0.0.1:{self.port}/healthz", timeout=1).is_success
            except httpx.HTTPError:
                return False

        wait_until(up, 30, 0.05, "the bare server")
        return self

    def __exit__(self, *exc: object) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGTERM)
        self.proc.wait(timeout=30)


def run(ctx: Context) -> list[Row]:
    trials = 2 if ctx.quick else 5
    count = 300 if ctx.quick else 2000
    warmup = 50
    root = ctx.scratch(NAME)
    repo = f"{OWNER}/webhooks"
    figures: dict[str, dict[str, list[float]]] = {
        side: {"p50": [], "p99": [], "rps": []} for side in ("runbot", "bare")
    }
    sent: list[str] = []
    with fake_github() as fake:
        seed_repo(fake, repo, None)  # installed, but no .runbot.yml
        install(fake, [repo])
        for number in range(1, PULLS + 1):
            fake.add_pull(repo, number, f"{number:040x}", f"feature/{number}")
        data = root / "data"
        env = process_env(data, fake)
        with Serve(env, root / "serve.log") as serve, Bare(root / "bare.log") as bare:
            for side, port in (("runbot", serve.port), ("bare", bare.port)):
                path = root / f"warmup-{side}.jsonl"
                ids = _requests(fake, repo, warmup, path, f"warm-{side}")
                _load(port, path, root / "warmup.json")
                if side == "runbot":
                    sent += ids
            for trial in range(trials):
                # Alternate which side goes first, so slow drifts of the machine cancel out.
                order = [("runbot", serve.port), ("bare", bare.port)]
                if trial % 2:
                    order.reverse()
                for side, port in order:
                    path = root / f"trial-{trial}-{side}.jsonl"
                    ids = _requests(fake, repo, count, path, f"t{trial}-{side}")
                    quiet = serve.paused() if side == "bare" else contextlib.nullcontext()
                    with quiet:
                        result = _load(port, path, root / f"trial-{trial}-{side}.json")
                    bad = {k: v for k, v in result["statuses"].items() if k not in ("202", "200")}
                    if bad:
                        raise RuntimeError(f"{side} refused deliveries: {bad}")
                    latencies = result["latencies"]
                    figures[side]["p50"].append(percentile(latencies, 50))
                    figures[side]["p99"].append(percentile(latencies, 99))
                    figures[side]["rps"].append(len(latencies) / result["elapsed"])
                    if side == "runbot":
                        sent += ids
                    ctx.log(
                        f"webhook trial {trial + 1}/{trials} {side}: p50"
                        f" {fmt_seconds(figures[side]['p50'][-1])}, p99"
                        f" {fmt_seconds(figures[side]['p99'][-1])},"
                        f" {figures[side]['rps'][-1]:.0f}/s"
                    )
            rss = serve.memory().get("VmHWM", 0)
            rt = runtime_for(data)

            def recorded() -> int:
                with rt.db.session() as session:
                    return int(session.exec(select(func.count()).select_from(Delivery)).one())

            time.sleep(0.5)
            stored = recorded()
            # Once acknowledged a delivery must already be stored: no waiting here on purpose.
            with rt.db.session() as session:
                pending = int(
                    session.exec(
                        select(func.count())
                        .select_from(Delivery)
                        .where(Delivery.status == "pending")
                    ).one()
                )
            rt.db.dispose()

    size = int(median(SIZES))
    med = {side: {k: median(v) for k, v in values.items()} for side, values in figures.items()}
    conditions = (
        f"{count} signed pull_request.synchronize deliveries x {trials} trials,"
        f" {CONCURRENCY} concurrent keep-alive connections, ~{size // 1024} KB payloads"
    )
    p50 = ratio(med["runbot"]["p50"], med["bare"]["p50"])
    p99 = ratio(med["runbot"]["p99"], med["bare"]["p99"])
    rps = ratio(med["runbot"]["rps"], med["bare"]["rps"])
    return [
        Row(
            NAME,
            "ack latency p50",
            fmt_seconds(med["runbot"]["p50"]),
            fmt_seconds(med["bare"]["p50"]),
            p50,
            "<= 1.3",
            check(p50, 1.3),
            details={"conditions": conditions, "trials": figures},
        ),
        Row(
            NAME,
            "ack latency p99",
            fmt_seconds(med["runbot"]["p99"]),
            fmt_seconds(med["bare"]["p99"]),
            p99,
            "-",
            None,
        ),
        Row(
            NAME,
            "throughput",
            f"{med['runbot']['rps']:.0f}/s",
            f"{med['bare']['rps']:.0f}/s",
            rps,
            "-",
            None,
        ),
        Row(
            NAME,
            "deliveries recorded = sent",
            f"{stored}/{len(sent)}",
            f"{pending} still pending (intent backlog)",
            float(stored == len(sent)),
            "all",
            stored == len(sent),
            unit="count",
        ),
        Row(
            NAME,
            "serve peak RSS under load",
            f"{rss / 2**20:.0f} MB",
            "-",
            None,
            "-",
            None,
            unit="MB",
        ),
    ]
