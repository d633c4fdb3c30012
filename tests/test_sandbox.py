"""The engine sandbox (issue 16 must 2), with the real embedded engine and real namespaces.

Each test runs a template whose `local-exec` looks around and reports, then checks what it
could and could not see or do. The processes, mounts and signals are all real.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from app.engine.credentials import silo_credentials
from app.engine.runner import EngineCancelled, EngineJob, EngineMissing, EngineRunner
from app.engine.sandbox import Sandbox, make_plan, wrap
from tests.helpers import wait_for

pytestmark = [
    pytest.mark.engine,
    pytest.mark.skipif(sys.platform != "linux", reason="namespaces are Linux only"),
]


def _provisioner(command: str) -> str:
    """A template with one `local-exec` running `command`, `$MARKER` set from a variable."""
    return (
        'variable "marker" {\n  type = string\n}\n\n'
        'resource "terraform_data" "run" {\n  provisioner "local-exec" {\n'
        f"    command     = {json.dumps(command)}\n"
        "    environment = { MARKER = var.marker }\n  }\n}\n"
    )


LOOK = _provisioner("sh ./look.sh")
# `sleep` takes the marker as its duration, so the real process is found by its argv.
SLEEPER = _provisioner("echo sleeping; exec sleep $MARKER")
DAEMON = _provisioner("setsid sleep $MARKER </dev/null >/dev/null 2>&1 & echo started")


def _template(root: Path, text: str, script: str = "") -> Path:
    root.mkdir(parents=True, exist_ok=True)
    (root / "main.tf").write_text(text)
    if script:
        (root / "look.sh").write_text(script)
    return root


def _apply(runner: EngineRunner, target: str, template: Path, **variables: object) -> list[str]:
    lines: list[str] = []
    job = EngineJob(target, template, "apply", {"marker": "m", **variables}, silo="drill")
    asyncio.run(runner.execute(job, lines.append))
    return lines


def _host_pids(marker: str) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                argv = (entry / "cmdline").read_bytes().split(b"\0")
            except OSError:
                continue
            if marker.encode() in argv:
                found.append(int(entry.name))
    return found


def test_the_engine_sees_its_run_and_nothing_of_runbot(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    data = tmp_path / "data"
    (data / "state" / "env-other").mkdir(parents=True)
    (data / "state" / "env-other" / "terraform.tfstate").write_text("other-target-state-91ab")
    data.joinpath("webhook-secret").write_text("webhook-secret-4e5f")
    key = tmp_path / "key.pem"
    key.write_text("app-private-key-77c3")
    key.chmod(0o600)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "inherited-cloud-secret-0d0d")
    # A process of runbot's with a secret in its environment, as `runbot serve` would be.
    holder = subprocess.Popen(
        ["sleep", "60"], env={**os.environ, "RUNBOT_API_TOKEN": "runbot-env-secret-51c2"}
    )
    script = f"""
echo "uid=$(id -u) pid=$$"
echo "visible=$(ls -d /proc/[0-9]* | wc -l)"
for p in /proc/[0-9]*; do tr '\\0' ' ' < $p/cmdline; echo; done | sed 's/^/argv: /'
cat /proc/{holder.pid}/environ 2>&1 | tr '\\0' ' '; echo
cat {key} 2>&1
cat {data}/webhook-secret 2>&1
cat {data}/state/env-other/terraform.tfstate 2>&1
echo "states=$(ls {data}/state 2>&1 | tr '\\n' ',')"
env | grep -c AWS_SECRET
echo "home=$HOME"
touch "$TF_PLUGIN_CACHE_DIR/written" 2>&1 || echo "plugin cache read-only"
touch ./written-here && echo "workdir writable"
grep CapEff /proc/self/status
echo done-looking
"""
    template = _template(tmp_path / "t", LOOK, script)
    sandbox = Sandbox(secrets=(key,))
    runner = EngineRunner("embedded", data, sandbox=sandbox)
    try:
        log = "\n".join(_apply(runner, "env-mine", template))
    finally:
        holder.kill()
        holder.wait()
    assert "done-looking" in log, log
    for secret in (
        "runbot-env-secret-51c2",
        "app-private-key-77c3",
        "webhook-secret-4e5f",
        "other-target-state-91ab",
        "inherited-cloud-secret-0d0d",
    ):
        assert secret not in log
    if os.geteuid() == 0:
        assert "uid=65534" in log
    # Only the run's own processes (init, engine, provider, shells): none of runbot's.
    argvs = [line.split("argv: ", 1)[1] for line in log.splitlines() if "argv: " in line]
    assert 3 <= len(argvs) <= 12, argvs
    assert not [a for a in argvs if "bin/pytest" in a or "sleep 60" in a], argvs
    assert "states=env-mine," in log  # its own state directory only, not env-other's
    assert f"home={data / 'tfdata' / 'env-mine'}" in log
    assert "plugin cache read-only" in log and "workdir writable" in log
    assert "CapEff:\t0000000000000000" in log


def test_a_cancel_reaches_the_engine_through_the_sandbox_and_nothing_is_left(
    tmp_path: Path,
) -> None:
    marker = f"300.{os.getpid()}{time.monotonic_ns() % 10**9}"  # `sleep` takes it; unique
    runner = EngineRunner("embedded", tmp_path / "data", sandbox=Sandbox(), cancel_grace=10)
    template = _template(tmp_path / "t", SLEEPER)
    lines: list[str] = []

    async def go() -> None:
        cancel = asyncio.Event()
        job = EngineJob("env-c", template, "apply", {"marker": marker})
        task = asyncio.create_task(runner.execute(job, lines.append, cancel=cancel))
        while not _host_pids(marker):
            await asyncio.sleep(0.1)
        started = time.monotonic()
        cancel.set()
        with pytest.raises(EngineCancelled):
            await task
        assert time.monotonic() - started < 10, "SIGINT did not reach the engine"

    asyncio.run(go())
    wait_for(lambda: not _host_pids(marker), timeout=15)
    state = tmp_path / "data" / "state" / "env-c"
    assert not list(state.glob("*.lock.info")), "the state lock was left behind"
    assert any("Interrupt received" in line or "interrupt" in line.lower() for line in lines), lines


def test_a_daemon_outlives_its_apply_and_its_init_goes_with_it(tmp_path: Path) -> None:
    """The local stack's servers are started by a provisioner and must outlive the run."""
    marker = f"4.{os.getpid()}{time.monotonic_ns() % 10**9}"  # a 4 s `sleep`, unique
    runner = EngineRunner("embedded", tmp_path / "data", sandbox=Sandbox())
    _apply(runner, "env-d", _template(tmp_path / "t", DAEMON), marker=marker)
    [daemon] = _host_pids(marker)
    stat = Path(f"/proc/{daemon}/stat").read_text()
    init = int(stat.rsplit(")", 1)[1].split()[1])  # its parent: the sandbox's PID 1
    argv = Path(f"/proc/{init}/cmdline").read_bytes().split(b"\0")
    assert argv[-2].endswith(b"jail.py") and marker.encode() not in b" ".join(argv)
    wait_for(lambda: not Path(f"/proc/{daemon}").exists(), timeout=15)
    wait_for(lambda: not Path(f"/proc/{init}").exists(), timeout=10)


def test_user_namespace_mode_has_no_capabilities_and_the_same_view(tmp_path: Path) -> None:
    """The mode for a runbot that is not root; tried here as root, where its user namespace
    maps root to root, so what protects the secret is the view alone."""
    secret = tmp_path / "hidden" / "secret"
    secret.parent.mkdir()
    secret.write_text("userns-secret-aa01")
    work = tmp_path / "work"
    work.mkdir()
    plan = make_plan(
        "userns",
        0,
        0,
        cwd=work,
        writable=[work],
        readable=[Path(sys.base_prefix)],
        hide=[tmp_path / "hidden", Path("/tmp")],
        mask=[],
    )
    script = f"grep CapEff /proc/self/status; cat {secret} 2>&1; touch ok && echo wrote; echo $$"
    argv, env = wrap(plan, ["sh", "-c", script])
    done = subprocess.run(argv, env=env, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert "CapEff:\t0000000000000000" in done.stdout
    assert "userns-secret-aa01" not in done.stdout and "wrote" in done.stdout
    assert done.stdout.split()[-1] == "2"  # the init is 1
    assert (work / "ok").exists()


def test_silo_credentials_reach_only_that_silos_runs(tmp_path: Path) -> None:
    creds = tmp_path / "silo-env"
    creds.mkdir()
    (creds / "drill.env").write_text("# provider\nexport DRILL_TOKEN='silo-token-3c3c'\n")
    (creds / "other.env").write_text("OTHER_TOKEN=other-token-4d4d\n")
    script = f"""
[ "$DRILL_TOKEN" = silo-token-3c3c ] && echo "got the silo's token"
[ -z "$OTHER_TOKEN" ] && echo "no other silo's token"
echo "count=$(ls {creds} 2>/dev/null | grep -c '[.]env$')"
echo done-looking
"""
    runner = EngineRunner(
        "embedded", tmp_path / "data", sandbox=Sandbox(secrets=(creds,)), silo_env_dir=creds
    )
    log = "\n".join(_apply(runner, "env-s", _template(tmp_path / "t", LOOK, script)))
    assert "got the silo's token" in log and "no other silo's token" in log
    assert "silo-token-3c3c" not in log  # the value is redacted wherever it is echoed
    assert "count=0" in log  # the directory is hidden


def test_a_bad_credentials_line_is_an_error_naming_the_file_and_line(tmp_path: Path) -> None:
    (tmp_path / "s.env").write_text("GOOD=1\nthis is not an assignment\n")
    with pytest.raises(EngineMissing, match=r"s\.env line 2 is not KEY=VALUE"):
        silo_credentials(tmp_path, "s")
    (tmp_path / "t.env").write_text("RUNBOT_GITHUB_PRIVATE_KEY=x\n")
    with pytest.raises(EngineMissing, match="RUNBOT_"):
        silo_credentials(tmp_path, "t")
    assert silo_credentials(tmp_path, "absent") == {}


def test_a_closed_directory_on_the_way_is_hidden_and_the_bound_path_comes_back() -> None:
    closed = {"/root"}
    plan = make_plan(
        "uid",
        65534,
        65534,
        cwd=Path("/srv/data/work/x"),
        writable=[Path("/srv/data/work/x")],
        readable=[Path("/root/.pyenv/versions/3.11")],
        hide=[Path("/srv/data"), Path("/tmp"), Path("/tmp/inside")],
        mask=[Path("/srv/data/key.pem"), Path("/etc/runbot/key.pem")],
        traversable=lambda path: path not in closed,
    )
    assert plan.hide == (
        "/root",
        "/tmp",
        "/srv/data",
    )  # shallowest first, then by name  # /tmp/inside is inside /tmp already
    assert [b.path for b in plan.binds] == ["/root/.pyenv/versions/3.11", "/srv/data/work/x"]
    assert [b.writable for b in plan.binds] == [False, True]
    assert plan.mask == ("/etc/runbot/key.pem",)  # the other is in a hidden directory


def test_serve_refuses_without_a_sandbox_unless_it_is_turned_off(tmp_path: Path) -> None:
    """Root without CAP_SYS_ADMIN (a container's default) cannot make namespaces."""
    if os.geteuid() != 0:
        pytest.skip("needs root, to drop to root without capabilities")
    runbot = str(Path(sys.executable).with_name("runbot"))
    capless = ["setpriv", "--bounding-set=-all", "--inh-caps=-all", "--", runbot]
    env = {
        "PATH": os.environ["PATH"],
        "HOME": str(tmp_path),
        "RUNBOT_DATA_DIR": str(tmp_path / "data"),
        "RUNBOT_ENGINE": "embedded",
    }
    done = subprocess.run(
        [*capless, "serve", "--port", "1"], env=env, capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 1
    assert "refusing to start: the engine sandbox cannot start here" in done.stderr
    assert "RUNBOT_SANDBOX=off" in done.stderr
    doctor = subprocess.run(
        [*capless, "doctor"], env=env, capture_output=True, text=True, timeout=120
    )
    assert "sandbox" in doctor.stdout and "refuses to start" in doctor.stdout
    port = str(_free_port())
    server = subprocess.Popen(
        [*capless, "serve", "--port", port],
        env={**env, "RUNBOT_SANDBOX": "off"},
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    try:
        import httpx

        def up() -> bool:
            try:
                return httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=1).status_code == 200
            except httpx.HTTPError:
                return False

        wait_for(up, timeout=60)
    finally:
        server.send_signal(signal.SIGTERM)
        out = server.communicate(timeout=60)[0].decode()
    assert "sandbox is off" in out


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_the_jail_imports_only_the_standard_library() -> None:
    """It runs with `python -I -S`, in images and views where site-packages may be absent."""
    import ast

    from app.engine import jail

    tree = ast.parse(Path(jail.__file__).read_text())
    imported = {
        (node.module if isinstance(node, ast.ImportFrom) else alias.name).split(".")[0]
        for node in ast.walk(tree)
        if isinstance(node, ast.Import | ast.ImportFrom)
        for alias in node.names
        if not (isinstance(node, ast.ImportFrom) and node.module == "__future__")
    }
    assert imported and imported <= set(sys.stdlib_module_names), imported
