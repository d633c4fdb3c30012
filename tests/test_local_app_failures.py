"""A PR's app that fails, end to end: the real local stack and engine start it from a real git
repository (RUNBOT_LOCAL_REPO), and the status comment and the dashboard both carry the reason
and the app's own last lines (issue 19, bad input). tests/test_local_app.py covers each cause
at the template; this file checks that what the template says reaches the people."""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest

from app.db.models import PullRequest
from app.github.comment import render_status_comment
from app.github.notify import Notifier
from app.github.outbox import OutboxGateway
from app.lifecycle.states import Status
from app.runtime import build_runtime
from app.server import create_app
from tests.apphost import free_port
from tests.conftest import free_port_range, make_settings
from tests.helpers import converge_sync, env_settled, git, silo_ready
from tests.webtools import WebServer

pytestmark = pytest.mark.engine
REPO = "me/shop"

CRASHING_APP = """\
import sys
print("shop: loading settings", flush=True)
print("shop: DATABASE_URL is not set; refusing to start", file=sys.stderr, flush=True)
sys.exit(3)
"""
SILENT_APP = "import time\nprint('shop: warming caches', flush=True)\ntime.sleep(600)\n"


def repository(root: Path, files: dict[str, str]) -> tuple[Path, str]:
    root.mkdir()
    for name, text in files.items():
        (root / name).write_text(text)
    git(root, "init", "-q")
    git(root, "add", ".")
    git(root, "commit", "-qm", "the app")
    return root, git(root, "rev-parse", "HEAD")


@pytest.mark.parametrize(
    ("files", "cause", "app_line"),
    [
        (
            {"Procfile": "web: python3 app.py\n", "app.py": CRASHING_APP},
            "exited",
            "DATABASE_URL is not set",
        ),
        (
            {
                "Procfile": "web: python3 app.py\n",
                "app.py": SILENT_APP,
            },
            "within 3",
            "shop: warming caches",
        ),
    ],
    ids=["exits-at-once", "never-answers"],
)
def test_a_failing_app_shows_its_reason_and_last_lines_in_the_comment_and_on_the_dashboard(
    tmp_path: Path, files: dict[str, str], cause: str, app_line: str
) -> None:
    repo, sha = repository(tmp_path / "repo", files)
    settings = make_settings(tmp_path, local_repo=repo)
    rt = build_runtime(settings)
    rt.lifecycle.create_silo("s", "local", {"port_base": free_port_range(4), "capacity": 2})
    converge_sync(rt, silo_ready(rt, "s"))
    env = rt.lifecycle.create_environment("s", REPO, 7, sha, vars={"ready_timeout": 3})
    converge_sync(rt, env_settled(rt, env.id))
    env = rt.lifecycle.get_environment(env.id)
    assert env.status == Status.FAILED, env.status

    notifier = Notifier(
        rt.db,
        OutboxGateway(rt.db, None),
        public_url="http://runbot.test",
        app_slug=None,
        worker_id="test",
        commands_help="",
        host_paths=(str(settings.data_dir.absolute()),),
    )
    pull = PullRequest(id=f"{REPO}#7", repository=REPO, number=7, enabled=True, head_sha=sha)
    view = notifier.view(pull, env)
    assert view is not None
    comment = render_status_comment(view)
    assert cause in comment and app_line in comment, comment
    assert str(settings.data_dir.absolute()) not in comment  # no host path in a comment

    app = create_app(settings, background=False)
    with WebServer(app, free_port()) as server:
        client = httpx.Client(base_url=server.url, timeout=20, trust_env=False)
        page = client.get(f"/environments/{env.id}")
        assert page.status_code == 200
        log = client.get(f"/api/runs/{env.last_run_id}/log")
        assert log.status_code == 200, log.text
        assert cause in log.text and app_line in log.text
