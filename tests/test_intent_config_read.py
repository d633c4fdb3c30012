"""`.runbot.yml` is read while the PR is being read, yet always from the PR's real base branch."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from tests.apphost import INSTALLATION, REPO
from tests.commandhost import SHA, CommandHost
from tests.fakegithub.server import FakeGitHub

pytest_plugins = ["tests.fakegithub.pytest_plugin"]


@pytest.fixture
async def host(tmp_path: Path, fake_github: FakeGitHub) -> AsyncIterator[CommandHost]:
    host = CommandHost(tmp_path, fake_github, None)
    yield host
    await host.close()


def config_reads(host: CommandHost) -> int:
    return len(host.fake.requests_for("GET", f"/repos/{REPO}/contents/.runbot.yml"))


async def test_an_opened_pr_costs_one_config_read(host: CommandHost) -> None:
    await host.open_pull()
    assert config_reads(host) == 1
    assert host.live() is not None


async def test_a_stale_payload_base_is_corrected_by_the_pr_as_read(host: CommandHost) -> None:
    # The PR was retargeted to `release`, which has no .runbot.yml, after the delivery left.
    host.fake.set_file(REPO, "release", ".runbot.yml", None)
    host.fake.add_pull(REPO, 1, SHA, "feature/1", base_ref="release")
    payload = host.fake.pull_request_event("opened", REPO, 1)
    payload["installation"] = {"id": INSTALLATION, "node_id": "MDIz"}
    payload["pull_request"]["base"]["ref"] = "main"  # what the delivery still says
    assert await host.workers.intent.handle("pull_request", payload)
    # main's read, started early, may or may not have gone out before it was called off.
    assert config_reads(host) in (1, 2)
    assert host.live() is None  # release's config (none) decided, not main's
    assert host.pull().base_ref == "release"


async def test_a_closed_pr_reads_no_config(host: CommandHost) -> None:
    await host.open_pull()
    host.fake.update_pull(REPO, 1, state="closed")
    payload = host.fake.pull_request_event("closed", REPO, 1)
    payload["installation"] = {"id": INSTALLATION, "node_id": "MDIz"}
    assert await host.workers.intent.handle("pull_request", payload)
    assert config_reads(host) == 1
