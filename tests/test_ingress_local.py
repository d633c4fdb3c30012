"""The local stack's ingress for real: engine applies, the ingress process, runbot's silo API.

runbot serves on loopback (uvicorn), the embedded engine applies the local stack, and every
request goes through the silo's ingress: it proxies, reports traffic to runbot, answers the
waking page for a sleeping environment and makes runbot wake it.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path

import httpx
import pytest
from sqlmodel import col, select

from app.db.models import Run, TargetRecord, utcnow
from app.engine.logs import read_log
from app.lifecycle.outputs import wakes_on_request
from app.lifecycle.states import Desired, Status
from app.runtime import Runtime
from app.server import create_app
from tests.apphost import free_port
from tests.conftest import make_settings
from tests.helpers import (
    converge_sync,
    env_settled,
    processes_matching,
    refuses,
    silo_ready,
    wait_for,
)
from tests.webtools import WebServer

pytestmark = pytest.mark.engine

SILO = "local-default"


@dataclass
class Site:
    url: str
    rt: Runtime


@pytest.fixture
def site(tmp_path: Path, database_url: str) -> Iterator[Site]:
    port = free_port()
    settings = make_settings(tmp_path, database_url, public_url=f"http://127.0.0.1:{port}")
    app = create_app(settings, background=False)
    with WebServer(app, port) as server:
        yield Site(server.url, app.state.runtime)


def get(url: str, **kwargs: object) -> httpx.Response:
    return httpx.get(url, timeout=10, trust_env=False, **kwargs)  # type: ignore[arg-type]


def all_logs(rt: Runtime) -> str:
    with rt.db.session() as session:
        ids = list(session.exec(select(Run.id).order_by(col(Run.id))))
    return "\n".join(read_log(rt.db, run_id)[0] for run_id in ids if run_id is not None)


def test_ingress_proxies_reports_traffic_and_wakes_a_sleeping_environment(
    site: Site, port_base: int
) -> None:
    rt = site.rt
    rt.lifecycle.create_silo(SILO, "local", {"port_base": port_base, "report_interval": 0.3})
    converge_sync(rt, silo_ready(rt, SILO))
    silo = rt.lifecycle.get_silo(SILO)
    assert silo.status == Status.READY, silo.reason
    ingress_url = f"http://127.0.0.1:{port_base - 1}/"
    assert silo.outputs["ingress_url"]["value"] == ingress_url
    assert len(processes_matching(f"ingress.py serve --silo {SILO}")) == 1

    env = rt.lifecycle.create_environment(SILO, "octo/app", 7, "a1b2c3d", "feature/x", "alice")
    converge_sync(rt, env_settled(rt, env.id))
    env = rt.lifecycle.get_environment(env.id)
    assert env.status == Status.READY, env.reason
    assert env.url == f"{ingress_url}{env.id}/"
    # Its URL wakes it, so a sleeping environment's comment keeps the link and says to open it.
    assert wakes_on_request(env.outputs)
    page = get(env.url)
    assert page.status_code == 200 and "a1b2c3d" in page.text and env.id in page.text
    # By Host too, and an unknown id or a dot segment is refused.
    by_host = get(ingress_url, headers={"Host": f"{env.id}.preview.example"})
    assert by_host.status_code == 200 and env.id in by_host.text
    assert get(f"{ingress_url}pr-0-nothing/").status_code == 404
    assert get(f"{ingress_url}{env.id}/%2e%2e/").status_code == 404

    # Traffic reaches runbot: last_activity_at moves within a few report intervals.
    before = rt.lifecycle.get_environment(env.id).last_activity_at
    get(env.url)
    wait_for(lambda: rt.lifecycle.get_environment(env.id).last_activity_at > before, timeout=15)

    # The silo token never reaches a log or the target records.
    token = rt.silo_tokens.token(SILO, silo.token_version)
    assert token not in all_logs(rt)
    with rt.db.session() as session:
        records = json.dumps([r.variables for r in session.exec(select(TargetRecord))])
    assert token not in records and "runbot_silo_token" in records
    for line in processes_matching(f"ingress.py serve --silo {SILO}"):
        pid = line.split()[0]
        for name in ("cmdline", "environ"):
            assert token not in Path(f"/proc/{pid}/{name}").read_bytes().decode(errors="replace")

    # Sleep for real: the app stops, the ingress answers the waking page and asks runbot.
    rt.lifecycle.set_suspended(env.id, True)
    converge_sync(rt, env_settled(rt, env.id))
    assert rt.lifecycle.get_environment(env.id).status == Status.SLEEPING
    route = json.loads(
        (Path(silo.outputs["shared_dir"]["value"]) / env.id / "route.json").read_text()
    )
    assert route["suspended"] is True
    asleep_since = rt.lifecycle.get_environment(env.id).last_activity_at
    waking = get(env.url)
    assert waking.status_code == 503
    assert waking.headers["retry-after"] == "2"
    assert '<meta http-equiv="refresh" content="2">' in waking.text and "Waking up" in waking.text
    wait_for(lambda: rt.lifecycle.get_environment(env.id).desired == Desired.PRESENT, timeout=15)
    woken = rt.lifecycle.get_environment(env.id)
    assert woken.trigger == "traffic" and woken.last_activity_at > asleep_since
    converge_sync(rt, env_settled(rt, env.id))
    assert rt.lifecycle.get_environment(env.id).status == Status.READY
    again = get(env.url)
    assert again.status_code == 200 and "a1b2c3d" in again.text

    # Rotation: the silo is re-applied, its ingress gets the new token and still reports.
    rt.lifecycle.rotate_silo_token(SILO)
    converge_sync(rt, silo_ready(rt, SILO))
    assert rt.lifecycle.get_silo(SILO).token_version == 2
    assert len(processes_matching(f"ingress.py serve --silo {SILO}")) == 1
    moved = rt.lifecycle.get_environment(env.id).last_activity_at
    get(env.url)
    wait_for(lambda: rt.lifecycle.get_environment(env.id).last_activity_at > moved, timeout=15)
    assert utcnow() - rt.lifecycle.get_environment(env.id).last_activity_at < timedelta(minutes=1)

    rt.lifecycle.destroy_environment(env.id)
    converge_sync(rt, env_settled(rt, env.id))
    assert get(f"{ingress_url}{env.id}/").status_code == 404  # its route went with it
    rt.lifecycle.destroy_silo(SILO)
    converge_sync(rt, silo_ready(rt, SILO))
    assert refuses(ingress_url)
    assert processes_matching(f"ingress.py serve --silo {SILO}") == []
