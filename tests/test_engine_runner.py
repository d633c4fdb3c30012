"""One engine run around the engine: phases, the skipped `init`, outputs read without `output`."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import subprocess
import time
from pathlib import Path

import pytest

from app.engine.initcache import KEEP, InitCache
from app.engine.runner import EngineJob, EngineRunner

pytestmark = pytest.mark.engine
FIXTURES = Path(__file__).parent / "fixtures" / "engine"


def child_pids() -> list[int]:
    """This process's live children, from /proc (no psutil needed)."""
    found = []
    for task in Path(f"/proc/{os.getpid()}/task").iterdir():
        with (task / "children").open() as handle:
            found += [int(pid) for pid in handle.read().split()]
    return found


class Recorder:
    """Phases as the runner reports them, and whether the engine was already running."""

    def __init__(self) -> None:
        self.phases: list[str] = []
        self.engine_running: list[bool] = []
        self.lines: list[str] = []

    def phase(self, name: str) -> None:
        self.phases.append(name)
        self.engine_running.append(bool(child_pids()))

    def run(self, runner: EngineRunner, job: EngineJob) -> dict[str, object]:
        self.phases.clear()
        self.engine_running.clear()
        result = asyncio.run(runner.execute(job, self.lines.append, self.phase))
        return {name: item["value"] for name, item in result.outputs.items()}


@pytest.fixture
def template(tmp_path: Path) -> Path:
    path = tmp_path / "template"
    shutil.copytree(FIXTURES / "slow", path)
    return path


def test_each_phase_is_recorded_once_its_engine_has_started(tmp_path: Path, template: Path) -> None:
    """The phase write happens while the engine starts up, not before it on the critical path."""
    runner = EngineRunner("embedded", tmp_path / "data")
    recorder = Recorder()
    outputs = recorder.run(
        runner, EngineJob("env-a", template, "apply", {"delay": 0, "marker": "1"})
    )
    assert outputs == {"marker": "1"}
    # runbot's own local backend: outputs come from the state file, with no `output` phase.
    assert recorder.phases == ["init", "apply"]
    assert recorder.engine_running == [True, True]
    assert not any(line.endswith("output -json -no-color") for line in recorder.lines)


def test_init_is_skipped_for_the_same_template_and_rerun_when_it_changes(
    tmp_path: Path, template: Path
) -> None:
    runner = EngineRunner("embedded", tmp_path / "data")
    recorder = Recorder()
    job = EngineJob("env-b", template, "apply", {"delay": 0, "marker": "1"})
    recorder.run(runner, job)
    assert recorder.phases == ["init", "apply"]

    job.variables = {"delay": 0, "marker": "2"}
    assert recorder.run(runner, job) == {"marker": "2"}
    assert recorder.phases == ["apply"]  # same template, backend and engine: no init

    (template / "extra.tf").write_text('output "extra" {\n  value = "x"\n}\n')
    assert recorder.run(runner, job) == {"marker": "2", "extra": "x"}
    assert recorder.phases == ["init", "apply"]  # the template changed: init again

    other = EngineJob("env-c", template, "apply", {"delay": 0, "marker": "3"})
    assert recorder.run(runner, other) == {"marker": "3", "extra": "x"}
    assert recorder.phases == ["apply"]  # a new target starts from env-b's init (next test)


def test_a_new_target_starts_from_another_targets_init_and_keeps_its_own_state(
    tmp_path: Path, template: Path, database_url: str
) -> None:
    """A new pull request's environment skips `init`; its state stays its own (SQLite: a local
    workspace per target; PostgreSQL: a schema per target)."""
    runner = EngineRunner("embedded", tmp_path / "data", database_url)
    recorder = Recorder()
    first = EngineJob("env-a", template, "apply", {"delay": 0, "marker": "a"})
    second = EngineJob("env-b", template, "apply", {"delay": 0, "marker": "b"})
    assert recorder.run(runner, first) == {"marker": "a"}
    assert recorder.phases[0] == "init"
    assert recorder.run(runner, second) == {"marker": "b"}
    assert recorder.phases[0] == "apply"
    assert "init" not in recorder.phases

    # env-b's apply did not touch env-a's state: re-applying env-a changes nothing.
    recorder.lines.clear()
    assert recorder.run(runner, first) == {"marker": "a"}
    assert any("Resources: 0 added, 0 changed, 0 destroyed" in line for line in recorder.lines)
    if not database_url.startswith("postgresql"):
        states = sorted(p.parent.name for p in (tmp_path / "data" / "state").rglob("*.tfstate"))
        assert states == ["env-a", "env-b"]

    # Destroying one target leaves the other's resources and state.
    recorder.lines.clear()
    asyncio.run(
        runner.execute(
            EngineJob("env-a", template, "destroy", first.variables), recorder.lines.append
        )
    )
    assert any("Resources: 1 destroyed" in line for line in recorder.lines)
    runner.forget("env-a")
    recorder.lines.clear()
    assert recorder.run(runner, second) == {"marker": "b"}
    assert any("Resources: 0 added, 0 changed, 0 destroyed" in line for line in recorder.lines)


def test_a_broken_shared_init_is_noticed_by_the_engine_and_redone(
    tmp_path: Path, template: Path
) -> None:
    runner = EngineRunner("embedded", tmp_path / "data")
    recorder = Recorder()
    recorder.run(runner, EngineJob("env-a", template, "apply", {"delay": 0, "marker": "a"}))
    (copy,) = runner.init_cache.root.iterdir()
    (copy / "terraform.tfstate").unlink()  # the backend's settings, written by init

    outputs = recorder.run(
        runner, EngineJob("env-b", template, "apply", {"delay": 0, "marker": "b"})
    )
    assert outputs == {"marker": "b"}
    assert recorder.phases == ["apply", "init", "apply"]
    assert "runbot: the engine asks for init; running it and retrying" in recorder.lines


def test_a_template_with_its_own_backend_inits_each_target(tmp_path: Path, template: Path) -> None:
    """A declared backend is scoped by a per-target backend setting, so `init` cannot be shared."""
    (template / "backend.tf").write_text('terraform {\n  backend "local" {}\n}\n')
    runner = EngineRunner("embedded", tmp_path / "data")
    recorder = Recorder()
    for target in ("env-d", "env-e"):
        job = EngineJob(target, template, "apply", {"delay": 0, "marker": target}, "local")
        assert recorder.run(runner, job) == {"marker": target}
        assert recorder.phases == ["init", "apply", "output"]
    assert not runner.init_cache.root.exists()

    # The declared local backend's state is kept between runs (it once went to the working copy,
    # which each run throws away, so every apply created the resources again).
    recorder.lines.clear()
    job = EngineJob("env-d", template, "apply", {"delay": 0, "marker": "env-d"}, "local")
    assert recorder.run(runner, job) == {"marker": "env-d"}
    assert any("Resources: 0 added, 0 changed, 0 destroyed" in line for line in recorder.lines)
    assert (tmp_path / "data" / "state" / "env-d" / "terraform.tfstate").is_file()


def test_state_in_the_layout_before_workspaces_is_moved_and_destroyed(
    tmp_path: Path, template: Path
) -> None:
    """An environment created before the per-target workspaces still has its state found."""
    data = tmp_path / "data"
    runner = EngineRunner("embedded", data)
    recorder = Recorder()
    job = EngineJob("env-old", template, "apply", {"delay": 0, "marker": "old"})
    recorder.run(runner, job)
    workspace = data / "state" / "env-old"
    (workspace / "terraform.tfstate").rename(data / "state" / "env-old.tfstate")
    workspace.rmdir()
    shutil.rmtree(data / "tfdata" / "env-old")  # initialised with the old settings

    recorder.lines.clear()
    job.operation = "destroy"
    asyncio.run(runner.execute(job, recorder.lines.append))
    assert any("Resources: 1 destroyed" in line for line in recorder.lines), recorder.lines
    assert not (data / "state" / "env-old.tfstate").exists()
    runner.forget("env-old")
    assert list((data / "state").iterdir()) == []


def test_init_cache_keeps_the_most_recently_used_copies(tmp_path: Path) -> None:
    cache = InitCache(tmp_path / "cache")
    cache.root.mkdir()
    now = time.time()
    for age in range(KEEP + 2):
        entry = cache.root / f"fingerprint-{age:02d}"
        entry.mkdir()
        os.utime(entry, (now - age * 60, now - age * 60))
    abandoned, fresh = cache.root / ".staging-old", cache.root / ".staging-new"
    abandoned.mkdir()
    fresh.mkdir()
    os.utime(abandoned, (now - 7200, now - 7200))
    cache.prune()
    left = sorted(entry.name for entry in cache.root.iterdir())
    assert left == [".staging-new", *(f"fingerprint-{age:02d}" for age in range(KEEP))]


@pytest.fixture
def module_template(tmp_path: Path) -> Path:
    """A template whose module the engine downloads at init (from a git repository on disk)."""
    if shutil.which("git") is None:
        pytest.fail("git is needed for a module source the engine downloads (apt-get install git)")
    module = tmp_path / "module-repo"
    module.mkdir()
    (module / "main.tf").write_text('output "greeting" {\n  value = "from the module"\n}\n')
    git = ["git", "-c", "user.email=t@example.com", "-c", "user.name=t", "-C", str(module)]
    for args in (["init", "-q"], ["add", "."], ["commit", "-qm", "module"]):
        subprocess.run([*git, *args], check=True)
    template = tmp_path / "template-with-module"
    template.mkdir()
    (template / "main.tf").write_text(
        f'module "remote" {{\n  source = "git::file://{module}"\n}}\n'
        'output "greeting" {\n  value = module.remote.greeting\n}\n'
    )
    return template


def test_a_shared_init_with_a_downloaded_module_outlives_the_target_that_ran_it(
    tmp_path: Path, module_template: Path
) -> None:
    """The engine records downloaded modules by absolute path under the TF_DATA_DIR that ran
    `init`; a copy must use its own, or it breaks once that first target is destroyed."""
    runner = EngineRunner("embedded", tmp_path / "data")
    recorder = Recorder()
    greeting = {"greeting": "from the module"}
    assert recorder.run(runner, EngineJob("env-a", module_template, "apply", {})) == greeting
    assert recorder.run(runner, EngineJob("env-b", module_template, "apply", {})) == greeting
    assert recorder.phases == ["apply"]

    runner.forget("env-a")  # env-a destroyed: its TF_DATA_DIR, and its module copy, are gone
    assert recorder.run(runner, EngineJob("env-b", module_template, "apply", {})) == greeting
    assert recorder.phases == ["apply"]  # no "engine asks for init" retry
    env_b = tmp_path / "data" / "tfdata" / "env-b"
    manifest = json.loads((env_b / "modules" / "modules.json").read_text())
    places = {item["Key"]: item["Dir"] for item in manifest["Modules"]}
    assert places["remote"] == str(env_b / "modules" / "remote")


def test_a_stale_module_manifest_in_a_shared_init_is_redone_from_scratch(
    tmp_path: Path, module_template: Path
) -> None:
    """`init` itself fails on a manifest naming a module directory that is gone, so the retry
    starts from an empty TF_DATA_DIR."""
    runner = EngineRunner("embedded", tmp_path / "data")
    recorder = Recorder()
    recorder.run(runner, EngineJob("env-a", module_template, "apply", {}))
    (copy,) = runner.init_cache.root.iterdir()
    manifest = copy / "modules" / "modules.json"
    content = json.loads(manifest.read_text())
    for item in content["Modules"]:
        if item["Key"] == "remote":
            item["Dir"] = str(tmp_path / "gone" / "remote")
    manifest.write_text(json.dumps(content))

    outputs = recorder.run(runner, EngineJob("env-b", module_template, "apply", {}))
    assert outputs == {"greeting": "from the module"}
    assert recorder.phases == ["apply", "init", "apply"]


def test_engine_output_with_a_nul_byte_becomes_a_line_a_database_can_store(
    tmp_path: Path,
) -> None:
    """Engine output is untrusted: a provisioner that prints a NUL (reading /proc/*/environ,
    say) must not make PostgreSQL refuse the run's log."""
    root = tmp_path / "nul"
    root.mkdir()
    (root / "main.tf").write_text(
        'resource "terraform_data" "nul" {\n  provisioner "local-exec" {\n'
        "    command = \"printf 'before\\\\000after\\\\n'\"\n  }\n}\n"
    )
    lines: list[str] = []
    asyncio.run(
        EngineRunner("embedded", tmp_path / "data").execute(
            EngineJob("env-nul", root, "apply", {}), lines.append
        )
    )
    assert any("before\ufffdafter" in line for line in lines), lines
    assert not any("\x00" in line for line in lines)
