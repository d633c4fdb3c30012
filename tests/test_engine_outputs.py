"""Reading an apply's outputs straight from runbot's own local state file: the file is
written by an engine run of a repository's stack, so it is untrusted. Anything but a version-4
state with well-formed outputs is left to the engine's `output -json` (None), never a crash.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from app.engine.backends import Backend, local_state_file
from app.engine.outputs import local_state_outputs

LOCAL = Backend(kind="local", override_file=None)


def write_state(data_dir: Path, content: str) -> None:
    path = local_state_file(data_dir, "env-pr-1-abc")
    path.parent.mkdir(parents=True)
    path.write_text(content)


def test_a_version_4_state_gives_its_outputs(tmp_path: Path) -> None:
    state = {"version": 4, "outputs": {"url": {"value": "http://x", "type": "string"}}}
    write_state(tmp_path, json.dumps(state))
    assert local_state_outputs(tmp_path, "env-pr-1-abc", None, LOCAL) == {
        "url": {"value": "http://x", "sensitive": False, "type": "string"}
    }


@pytest.mark.parametrize(
    "content",
    [
        "[1, 2]",  # valid JSON that is not an object
        '"a string"',
        "null",
        "not json",
        '{"version": 3, "outputs": {}}',
        '{"version": 4, "outputs": []}',
        '{"version": 4, "outputs": {"url": "http://x"}}',
        '{"version": 4, "outputs": {"url": {"type": "string"}}}',
    ],
)
def test_an_unexpected_state_file_is_left_to_the_engine(tmp_path: Path, content: str) -> None:
    write_state(tmp_path, content)
    assert local_state_outputs(tmp_path, "env-pr-1-abc", None, LOCAL) is None


def test_no_state_file_or_another_backend_asks_the_engine(tmp_path: Path) -> None:
    assert local_state_outputs(tmp_path, "env-pr-1-abc", None, LOCAL) is None
    write_state(tmp_path, '{"version": 4, "outputs": {}}')
    assert local_state_outputs(tmp_path, "env-pr-1-abc", "s3", LOCAL) is None
    pg = Backend(kind="pg", override_file=None)
    assert local_state_outputs(tmp_path, "env-pr-1-abc", None, pg) is None
