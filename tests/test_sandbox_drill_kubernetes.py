"""The secrets drill through the Kubernetes executor (issue 16 must 5), on PostgreSQL.

The `probe` stack's instance runs in a Job's pod (tests/kubelite: the pod's real command as
PID 1 of its own PID namespace, an emptyDir over `/tmp` as the image's own filesystem would
be). It scans `/proc`, reads runbot's key file, data dir secrets, `.env` and settings by their
real paths (handed to it in `PROBE_GUESSES`), and prints what it finds. Nothing of runbot's may
appear in the pushed run log, the API or the dashboard; the pod's spec carries no GitHub token.
"""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest
from sqlmodel import select

from app.db.models import RunLogChunk
from app.lifecycle.states import Status
from app.server import create_app
from tests.conftest import make_settings
from tests.helpers import converge_sync, silo_ready, wait_for
from tests.kubelite import KubeLite
from tests.webtools import WebServer

pytest_plugins = ["tests.kubelite.pytest_plugin"]
pytestmark = [pytest.mark.engine, pytest.mark.postgres]

PROBE = Path(__file__).parent / "fixtures" / "stacks-probe"
API_TOKEN = "api-t0ken-k8s-drill-2c9d"
SESSION_SECRET = "session-s3cret-k8s-drill-8e1f"
KEY = "-----BEGIN PRIVATE KEY-----\nk8s-drill-app-key-body-51f0\n-----END PRIVATE KEY-----\n"
ENV_FILE_SECRET = "dotenv-s3cret-k8s-drill-aa77"


def test_a_hostile_template_in_a_job_finds_no_secret_anywhere(
    tmp_path: Path, postgres_url: str, kubelite: KubeLite, port_base: int
) -> None:
    from tests.apphost import free_port

    key = tmp_path / "app.pem"
    key.write_text(KEY)
    key.chmod(0o600)
    (tmp_path / ".env").write_text(f"RUNBOT_METRICS_TOKEN={ENV_FILE_SECRET}\n")
    data = tmp_path / "data"
    guesses = [key, tmp_path / ".env", data / "session-secret", data / "webhook-secret"]
    silo_env = tmp_path / "silo-env"
    silo_env.mkdir()
    (silo_env / "probe.env").write_text(f"PROBE_GUESSES={':'.join(map(str, guesses))}\n")
    port = free_port()
    settings = make_settings(
        tmp_path,
        postgres_url,
        public_url=f"http://127.0.0.1:{port}",
        templates_dir=PROBE,
        api_token=API_TOKEN,
        session_secret=SESSION_SECRET,
        github_private_key_path=key,
        silo_env_dir=silo_env,
        executor="kubernetes",
        k8s_image="runbot:test",
        k8s_namespace=kubelite.namespace,
        k8s_kubeconfig=kubelite.kubeconfig_path,
        k8s_run_as_user=0,
    )
    app = create_app(settings, background=False)
    rt = app.state.runtime
    with WebServer(app, port) as web:
        rt.lifecycle.create_silo("probe", "probe", {})
        converge_sync(rt, silo_ready(rt, "probe"))
        env = rt.lifecycle.create_environment("probe", "octo/app", 7, "a" * 40, "feature")
        converge_sync(rt, lambda: rt.lifecycle.get_environment(env.id).status == Status.READY)
        with rt.db.session() as session:
            log = "\n".join(c.text for c in session.exec(select(RunLogChunk)))
        headers = {"Authorization": f"Bearer {API_TOKEN}"}
        shown = {"the run log": log}
        for path in ("/api/environments", f"/api/environments/{env.id}", "/"):
            shown[path] = httpx.get(web.url + path, headers=headers, timeout=30).text
        runs = httpx.get(f"{web.url}/api/environments/{env.id}/runs", headers=headers).json()
        for run in runs["items"] if isinstance(runs, dict) else runs:
            url = f"{web.url}/api/runs/{run['id']}/log"
            shown[f"run {run['id']} log API"] = httpx.get(url, headers=headers, timeout=30).text
    assert "probe: done" in log, log[-3000:]
    for guess in guesses[:2]:
        assert f"probe read {guess}:" in log  # it really tried the real paths
    secrets = {
        "the App key": "k8s-drill-app-key-body-51f0",
        "the API token": API_TOKEN,
        "the session secret": SESSION_SECRET,
        "runbot's .env": ENV_FILE_SECRET,
    }
    if (data / "webhook-secret").exists():
        secrets["the webhook secret"] = (data / "webhook-secret").read_text().strip()
    for where, text in shown.items():
        for name, secret in secrets.items():
            assert secret not in text, f"{where} shows {name}"
    visible = int(log.split("probe: processes visible=")[1].split()[0])
    assert visible <= 12, log  # the pod's own: runbot engine exec, the engine, the shells
    for job in kubelite.jobs():
        assert "ghs_" not in str(job) and API_TOKEN not in str(job)
    wait_for(lambda: not kubelite.live_pids(), timeout=30)
    assert kubelite.errors == []
