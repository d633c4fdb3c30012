"""The local stack runs the pull request's own app (issue 19 B), through the real engine in
runbot's real sandbox.

Each test gives the instance a `runbot_source_dir` it prepared (what the source fetcher will
hand over) and checks the app it starts: served at the slot's URL, replaced on a new commit,
stopped by suspend and destroy (each in a PID namespace other than the apply's), failing with
its cause and its log, and unable to read what runbot keeps secret.
"""

from __future__ import annotations

import asyncio
import os
import secrets
import shutil
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from app.engine.backends import local_state_file
from app.engine.runner import EngineFailed, EngineJob, EngineRunner
from app.engine.sandbox import Sandbox
from tests.conftest import TEMPLATES
from tests.helpers import fetch, refuses, wait_for

pytestmark = [
    pytest.mark.engine,
    pytest.mark.skipif(sys.platform != "linux", reason="the sandbox is Linux only"),
    pytest.mark.skipif(shutil.which("python3") is None, reason="the local stack runs python3"),
]

HELLO = Path(__file__).resolve().parents[1] / "examples" / "hello-app"
SECRET = "runbot-app-key-5d1e"


def host_pids(marker: str) -> list[int]:
    """Processes anywhere on the host whose argv holds `marker`."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                argv = (entry / "cmdline").read_bytes()
            except OSError:
                continue
            if marker.encode() in argv:
                found.append(int(entry.name))
    return found


@dataclass
class Stack:
    """One sandboxed runner, one local silo and the instances a test makes in it."""

    root: Path
    runner: EngineRunner
    port_base: int
    outputs: dict[str, Any] = field(default_factory=dict)
    markers: list[str] = field(default_factory=list)

    @property
    def workspace(self) -> Path:
        return self.root / "workspace"

    @property
    def shared(self) -> Path:
        return Path(self.outputs["shared_dir"]["value"])

    def run(self, target: str, template: str, op: str, variables: dict, *sources: Path) -> dict:
        job = EngineJob(
            target,
            TEMPLATES / "local" / template,
            "apply" if op == "apply" else "destroy",
            variables,
            workspaces=(self.workspace,),
            sources=sources,
            silo="local",
        )
        lines: list[str] = []
        try:
            result = asyncio.run(self.runner.execute(job, lines.append))
        except EngineFailed as exc:
            exc.args = (exc.args[0] + "\n" + "\n".join(lines),)
            raise
        return {k: v["value"] for k, v in result.outputs.items()}

    def silo_vars(self) -> dict:
        return {
            "runbot_silo_name": "local",
            "runbot_workspace_dir": str(self.workspace),
            "port_base": self.port_base,
            "capacity": 3,
        }

    def source(self, message: str, procfile: str | None = None, **files: str) -> tuple[Path, str]:
        """A source directory like the fetcher's: hello-app, its message, a marked Procfile.

        The marker is in the app's argv, so the test finds the real process on the host."""
        marker = f"app-{secrets.token_hex(4)}"
        self.markers.append(marker)
        src = self.root / "sources" / marker
        shutil.copytree(HELLO, src)
        (src / "message.txt").write_text(message + "\n")
        (src / "Procfile").write_text(procfile or f"web: exec python3 app.py {marker}\n")
        for name, text in files.items():
            (src / name).write_text(text)
        return src, marker

    def instance_vars(self, instance_id: str, source: Path | None, **extra: object) -> dict:
        return {
            "runbot_instance_id": instance_id,
            "runbot_slot": 1,
            "runbot_pr_number": 7,
            "runbot_head_sha": secrets.token_hex(20),
            "runbot_head_ref": "feature/app",
            "runbot_repository": "octo/hello",
            "runbot_source_dir": str(source) if source else "",
            "port_base": self.outputs["port_base"]["value"],
            "shared_dir": self.outputs["shared_dir"]["value"],
            "bind_host": self.outputs["bind_host"]["value"],
            **extra,
        }

    def apply(self, variables: dict, *sources: Path) -> dict:
        return self.run(
            f"env-{variables['runbot_instance_id']}", "instance", "apply", variables, *sources
        )

    def destroy(self, variables: dict) -> None:
        """As runbot destroys: without a source (nothing is fetched for a destroy)."""
        gone = {**variables, "runbot_source_dir": ""}
        self.run(f"env-{variables['runbot_instance_id']}", "instance", "destroy", gone)


@pytest.fixture
def stack(tmp_path: Path, port_base: int) -> Iterator[Stack]:
    key = tmp_path / "app-key.pem"
    key.write_text(SECRET)
    key.chmod(0o600)
    runner = EngineRunner("embedded", tmp_path / "data", sandbox=Sandbox(secrets=(key,)))
    made = Stack(tmp_path, runner, port_base)
    made.workspace.mkdir()  # runbot makes it before the silo's first run
    made.outputs = {
        k: {"value": v}
        for k, v in made.run("silo-local", "silo", "apply", made.silo_vars()).items()
    }
    yield made
    try:
        made.run("silo-local", "silo", "destroy", made.silo_vars())  # stop-all: apps too
    finally:
        for marker in made.markers:  # last resort, only for processes this test started
            for pid in host_pids(marker):
                os.kill(pid, 9)


def new_id() -> str:
    return f"pr-7-{secrets.token_hex(3)}"


def test_the_app_is_served_replaced_suspended_and_destroyed(stack: Stack) -> None:
    first, marker1 = stack.source("Hello from PR seven")
    instance_id = new_id()
    variables = stack.instance_vars(instance_id, first)
    outputs = stack.apply(variables, first)
    url = outputs["url"]
    assert url == f"http://127.0.0.1:{stack.port_base + 1}/"
    answer = fetch(url)
    assert answer.status_code == 200 and "Hello from PR seven" in answer.text
    assert "runbot" not in answer.text.lower()  # the app's page, not runbot's
    [app_pid] = host_pids(marker1)
    instance_dir = stack.shared / instance_id
    log = Path(outputs["runbot_app_log"])
    assert log == instance_dir / "app.log"
    assert "hello-app: serving" in log.read_text()
    assert (instance_dir / "app" / "message.txt").read_text() == "Hello from PR seven\n"

    # A new commit: the old app goes, the new one answers at the same URL.
    second, marker2 = stack.source("Second push")
    variables.update(runbot_source_dir=str(second), runbot_head_sha=secrets.token_hex(20))
    assert stack.apply(variables, second)["url"] == url
    assert "Second push" in fetch(url).text
    assert host_pids(marker1) == [] and not Path(f"/proc/{app_pid}").exists()
    assert len(host_pids(marker2)) == 1

    variables["runbot_suspended"] = True
    stack.apply(variables, second)
    assert refuses(url) and host_pids(marker2) == []
    assert (instance_dir / "app" / "message.txt").read_text() == "Second push\n"

    variables["runbot_suspended"] = False
    stack.apply(variables, second)
    assert "Second push" in fetch(url).text and len(host_pids(marker2)) == 1

    stack.destroy(variables)
    assert refuses(url)
    assert host_pids(marker2) == [] and host_pids(instance_id) == []
    assert not instance_dir.exists()
    assert second.is_dir() and (second / "message.txt").is_file()  # the shared source stays


def test_the_start_var_wins_over_the_procfile_and_gets_port_and_host(stack: Stack) -> None:
    src, marker = stack.source("unused", procfile="web: exit 9\n")
    start = f"exec python3 app.py {marker}"
    variables = stack.instance_vars(new_id(), src, start=start)
    url = stack.apply(variables, src)["url"]
    assert "unused" in fetch(url).text and len(host_pids(marker)) == 1
    stack.destroy(variables)
    assert host_pids(marker) == []


def test_without_a_command_or_a_source_the_page_is_served_as_before(stack: Stack) -> None:
    src, _ = stack.source("no procfile here")
    (src / "Procfile").write_text("worker: python3 app.py\n")  # no web: line
    instance_id = new_id()
    variables = stack.instance_vars(instance_id, src)
    outputs = stack.apply(variables, src)
    page = fetch(outputs["url"]).text
    assert "Hello from runbot" in page and variables["runbot_head_sha"] in page
    assert (
        "no `start` var and no Procfile `web:` line" in Path(outputs["runbot_app_log"]).read_text()
    )
    stack.destroy(variables)

    variables = stack.instance_vars(new_id(), None, start="exit 1")
    outputs = stack.apply(variables)
    assert "Hello from runbot" in fetch(outputs["url"]).text
    assert outputs["runbot_app_log"] == ""
    stack.destroy(variables)
    assert refuses(outputs["url"])


def _failed(stack: Stack, variables: dict, src: Path) -> str:
    with pytest.raises(EngineFailed) as caught:
        stack.apply(variables, src)
    return str(caught.value)


def test_an_app_that_exits_at_once_fails_the_apply_with_its_log(stack: Stack) -> None:
    src, marker = stack.source("x")
    (src / "Procfile").write_text(
        f"web: echo starting {marker}; echo oops-db-missing >&2; exit 3\n"
    )
    variables = stack.instance_vars(new_id(), src)
    said = _failed(stack, variables, src)
    assert "exited with code 3" in said and "the Procfile's web: line" in said
    assert "oops-db-missing" in said and f"starting {marker}" in said
    stack.destroy(variables)
    assert not (stack.shared / variables["runbot_instance_id"]).exists()


def test_an_app_that_never_answers_fails_within_ready_timeout(stack: Stack) -> None:
    src, _ = stack.source("x")
    sleeper = f"echo waiting-forever; exec sleep 600.{int.from_bytes(os.urandom(2), 'big')}"
    variables = stack.instance_vars(new_id(), src, start=sleeper, ready_timeout=2)
    said = _failed(stack, variables, src)
    assert "did not answer GET" in said and "within 2s" in said
    assert "does not listen on any TCP port" in said and "waiting-forever" in said
    assert host_pids(sleeper.split()[-1]) == []  # stopped before the apply failed
    stack.destroy(variables)


def test_an_app_on_the_wrong_port_is_told_which_port_it_listens_on(stack: Stack) -> None:
    src, marker = stack.source("x")
    wrong = stack.port_base + 2
    variables = stack.instance_vars(
        new_id(), src, start=f"PORT={wrong} exec python3 app.py {marker}", ready_timeout=3
    )
    said = _failed(stack, variables, src)
    assert f"it listens on {wrong}, expected {stack.port_base + 1}" in said, said
    assert f"hello-app: serving http://127.0.0.1:{wrong}/" in said
    assert host_pids(marker) == []
    stack.destroy(variables)


BOOM = """
import os
from http.server import BaseHTTPRequestHandler, HTTPServer

class H(BaseHTTPRequestHandler):
    def do_GET(self):
        print("boom: the database is not configured", flush=True)
        self.send_response(500)
        self.end_headers()

HTTPServer((os.environ["HOST"], int(os.environ["PORT"])), H).serve_forever()
"""


def test_an_app_answering_500_is_named(stack: Stack) -> None:
    src, marker = stack.source("x", **{"boom.py": BOOM})
    variables = stack.instance_vars(
        new_id(), src, start=f"exec python3 boom.py {marker}", ready_timeout=2
    )
    said = _failed(stack, variables, src)
    assert "GET / answered 500" in said and "boom: the database is not configured" in said
    assert host_pids(marker) == []
    stack.destroy(variables)


def test_hostile_start_and_branch_are_data_for_runbot(stack: Stack) -> None:
    src, marker = stack.source("quoted")
    canary = stack.root / "pwned"
    start = f'exec python3 app.py {marker} "$(echo a)" \'";touch {canary};\''
    variables = stack.instance_vars(
        new_id(), src, start=start, runbot_head_ref=f'x";touch {canary};"$(touch {canary})'
    )
    url = stack.apply(variables, src)["url"]
    assert "quoted" in fetch(url).text
    stack.destroy(variables)
    assert not canary.exists()


def test_the_app_cannot_read_runbots_secrets(stack: Stack, tmp_path: Path) -> None:
    holder = subprocess.Popen(
        ["sleep", "60"], env={**os.environ, "RUNBOT_API_TOKEN": "runbot-env-secret-0a1b"}
    )
    key = tmp_path / "app-key.pem"
    data = tmp_path / "data"
    (data / "webhook-secret").write_text("webhook-secret-9c9c")
    probe = (
        f"(id -u; cat {key}; cat leak; cat /proc/{holder.pid}/environ; cat {data}/webhook-secret;"
        " env; ls /proc | grep -c '^[0-9]') > probe.txt 2>&1"
    )
    src, marker = stack.source("probing")
    (src / "leak").symlink_to(key)  # copied as a link, never followed by runbot
    variables = stack.instance_vars(new_id(), src, start=f"{probe}; exec python3 app.py {marker}")
    try:
        stack.apply(variables, src)
        seen = (stack.shared / variables["runbot_instance_id"] / "app" / "probe.txt").read_text()
    finally:
        holder.kill()
        holder.wait()
    assert "runbot-env-secret-0a1b" not in seen and SECRET not in seen, seen
    assert "webhook-secret-9c9c" not in seen and "TF_" not in seen and "RUNBOT_" not in seen, seen
    if os.geteuid() == 0:
        assert seen.splitlines()[0] == "65534"
    stack.destroy(variables)
    wait_for(lambda: host_pids(marker) == [], timeout=10)


def test_a_procfile_that_is_a_symlink_is_refused(stack: Stack) -> None:
    src, _ = stack.source("x")
    (src / "Procfile").unlink()
    (src / "Procfile").symlink_to(stack.root / "app-key.pem")
    variables = stack.instance_vars(new_id(), src)
    said = _failed(stack, variables, src)
    assert "Procfile is a symlink; make it a regular file" in said
    assert SECRET not in said
    stack.destroy(variables)


def test_a_lost_apply_record_never_leaves_two_apps_and_the_silo_stops_all(stack: Stack) -> None:
    """runbot died after the app started but before the state was saved: the retried create
    runs `start` again, in a new PID namespace, and must replace the app, not add one."""
    src, marker = stack.source("first start")
    variables = stack.instance_vars(new_id(), src)
    url = stack.apply(variables, src)["url"]
    [first] = host_pids(marker)
    local_state_file(stack.root / "data", f"env-{variables['runbot_instance_id']}").unlink()
    stack.apply(variables, src)
    [second] = host_pids(marker)
    assert second != first and not Path(f"/proc/{first}").exists()
    assert "first start" in fetch(url).text

    # Destroying the silo stops every app still running in it (here: a forgotten instance).
    stack.run("silo-local", "silo", "destroy", stack.silo_vars())
    assert host_pids(marker) == [] and refuses(url)
    assert host_pids(variables["runbot_instance_id"]) == []
    assert not stack.shared.exists()


@pytest.mark.skipif(os.geteuid() != 0, reason="uid mode: the engine runs as 65534")
def test_a_source_the_engine_cannot_read_fails_saying_so(stack: Stack) -> None:
    src, _ = stack.source("x")
    (src / "private.key").write_text("unreadable")
    (src / "private.key").chmod(0)
    variables = stack.instance_vars(new_id(), src)
    said = _failed(stack, variables, src)
    assert f"could not copy the source {src}" in said and "private.key" in said
    assert "may read every file" in said
    stack.destroy(variables)
    assert not (stack.shared / variables["runbot_instance_id"]).exists()
