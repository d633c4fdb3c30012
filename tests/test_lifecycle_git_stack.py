"""A stack from a git repository (served over loopback HTTPS): every run records the commit,
later runs reuse it."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from sqlmodel import col, select

from app.db.models import Run
from app.lifecycle.states import Status
from app.runtime import build_runtime
from app.stacks.catalog import StackSource
from tests.conftest import TEMPLATES, make_settings
from tests.gitserver import GitServer
from tests.helpers import converge_sync, env_settled, fetch, git, silo_ready

pytestmark = pytest.mark.engine


def set_greeting(repo: Path, greeting: str) -> str:
    variables = repo / "stacks" / "web" / "instance" / "variables.tf"
    text = variables.read_text()
    start = text.index('variable "greeting"')
    end = text.index("}\n", text.index("default", start)) + 2
    block = text[start:end]
    new_block = block.replace(
        block[block.index("default") : block.index("\n", block.index("default"))],
        f'default     = "{greeting}"',
    )
    variables.write_text(text.replace(block, new_block))
    git(repo, "add", "-A")
    git(repo, "commit", "-qm", greeting)
    return git(repo, "rev-parse", "HEAD")


def test_git_stack_is_pinned_to_the_commit_that_created_it(tmp_path: Path, port_base: int) -> None:
    repo = tmp_path / "stacks-repo"
    shutil.copytree(TEMPLATES / "local", repo / "stacks" / "web")
    git(repo, "init", "-q", "-b", "main")
    first = set_greeting(repo, "Greetings from v1")

    with GitServer(tmp_path, tmp_path / "tls") as server:
        policy = tmp_path / "policy.yml"
        policy.write_text(f'default:\n  git_stacks: ["{server.url("")}"]\n')
        settings = make_settings(tmp_path, policy_file=policy, git_ca_file=server.ca_file)
        rt = build_runtime(settings)
        source = StackSource(kind="git", url=server.url(repo.name), ref="main", path="stacks/web")
        rt.lifecycle.create_silo("web", "web", {"port_base": port_base}, source)
        converge_sync(rt, silo_ready(rt, "web"))
    # The server is gone: everything below runs from the exported tree of the pinned commit.
    silo = rt.lifecycle.get_silo("web")
    assert silo.status == Status.READY, silo.reason
    assert silo.stack_source["commit"] == first

    env = rt.lifecycle.create_environment("web", "octo/app", 1, "abc1234")
    converge_sync(rt, env_settled(rt, env.id))
    env = rt.lifecycle.get_environment(env.id)
    assert "Greetings from v1" in fetch(env.url or "").text

    set_greeting(repo, "Greetings from v2")  # the branch moves on
    rt.lifecycle.update_environment(env.id, head_sha="def5678")
    converge_sync(rt, env_settled(rt, env.id))
    env = rt.lifecycle.get_environment(env.id)
    page = fetch(env.url or "").text
    assert "def5678" in page and "Greetings from v1" in page  # same code as at creation

    with rt.db.session() as session:
        commits = {
            r.stack_commit for r in session.exec(select(Run).where(col(Run.target_id) == env.id))
        }
    assert commits == {first}

    rt.lifecycle.destroy_silo("web", force=True)
    converge_sync(rt, silo_ready(rt, "web"))
    assert rt.lifecycle.get_silo("web").status == Status.DESTROYED
