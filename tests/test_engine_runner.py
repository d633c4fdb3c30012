"""One engine run around the engine: phases, the skipped `init`, outputs read without `output`."""

from __future__ import annotations

import asyncio
import os
import shutil
from pathlib import Path

import pytest

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
    assert recorder.phases == ["init", "apply"]  # another target has its own backend scope
