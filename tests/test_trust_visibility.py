"""Visibility (issue 15, finding 8): silo outputs, runs and logs only for those the silo serves.

runbot under uvicorn with its workers, two silos of the local stack applied by the embedded
engine, one environment in each for a different repository, and people signed in through the
fake GitHub's OAuth flow. Each reader sees their own silo, its runs and logs, and nothing of
the other one: not in lists, not by name, not by run id. Operators see everything.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import closing
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
from sqlmodel import col, select

from app.db.models import Run
from app.lifecycle.states import Status
from tests.apphost import INSTALLATION, AppServer, free_port, sign_in_settings
from tests.fakegithub.server import FakeGitHub
from tests.helpers import wait_for
from tests.webtools import sign_in

pytest_plugins = ["tests.fakegithub.pytest_plugin"]
pytestmark = pytest.mark.engine

ALPHA, BETA, GAMMA = "octo-org/alpha", "octo-org/beta", "octo-org/gamma"
API_TOKEN = "test-api-token-visibility-0123456789"
ADMIN = "olga"
#: who reads which repository, and the silo that repository's environment is in
READERS = {"ana": (ALPHA, "team-alpha"), "bo": (BETA, "team-beta")}


@dataclass
class Site:
    server: AppServer
    fake: FakeGitHub
    silo_runs: dict[str, int]  # silo -> its apply run
    envs: dict[str, str]  # silo -> the environment in it
    env_runs: dict[str, int]  # silo -> its environment's apply run
    shared_dirs: dict[str, str]  # silo -> its `shared_dir` output, to look for leaks

    def person(self, login: str) -> httpx.Client:
        self.fake.oauth_login = login
        return sign_in(self.server.url)

    def token(self) -> httpx.Client:
        return httpx.Client(
            base_url=self.server.url,
            timeout=20,
            trust_env=False,
            headers={"Authorization": f"Bearer {API_TOKEN}"},
        )


def _latest_run(server: AppServer, kind: str, target: str) -> int:
    with server.runtime.db.session() as session:
        run = session.exec(
            select(Run)
            .where(Run.target_kind == kind, Run.target_id == target)
            .order_by(col(Run.id).desc())
        ).first()
    assert run is not None and run.id is not None and run.status == "succeeded"
    return run.id


@pytest.fixture
def site(
    tmp_path: Path, fake_github: FakeGitHub, database_url: str, port_base: int
) -> Iterator[Site]:
    fake = fake_github
    for repo, silo in READERS.values():
        fake.add_repo(repo, files={"main": {".runbot.yml": f"stack: local\nsilo: {silo}\n"}})
    fake.add_repo(GAMMA, files={"main": {".runbot.yml": "stack: local\n"}})
    fake.add_installation(INSTALLATION, "octo-org", [ALPHA, BETA, GAMMA])
    for login, (repo, _) in READERS.items():
        fake.set_permission(repo, login, "read")
    fake.set_permission(GAMMA, "cy", "read")  # reads a repository with no environment
    fake.set_permission(ALPHA, ADMIN, "read")
    port = free_port()
    settings = sign_in_settings(
        tmp_path, fake, database_url, port, api_token=API_TOKEN, admins=ADMIN
    )
    with AppServer(settings, port) as server:
        lifecycle = server.runtime.lifecycle
        silos = [silo for _, silo in READERS.values()]
        for offset, silo in enumerate(silos):
            lifecycle.create_silo(silo, "local", {"port_base": port_base + 10 * offset})
        envs = {}
        for number, (repo, silo) in enumerate(READERS.values(), start=1):
            wait_for(lambda s=silo: lifecycle.get_silo(s).status == Status.READY, timeout=90)
            # A real commit of the fake's: the local stack downloads the PR's source.
            sha = fake.push_commit(repo, {"README.md": f"{repo}\n"})
            env = lifecycle.create_environment(silo, repo, number, sha, "feature", "dev")
            envs[silo] = env.id
        try:
            for env_id in envs.values():
                wait_for(
                    lambda e=env_id: lifecycle.get_environment(e).status == Status.READY,
                    timeout=90,
                )
            yield Site(
                server,
                fake,
                silo_runs={s: _latest_run(server, "silo", s) for s in silos},
                envs=envs,
                env_runs={s: _latest_run(server, "environment", e) for s, e in envs.items()},
                shared_dirs={
                    s: str(lifecycle.get_silo(s).outputs["shared_dir"]["value"]) for s in silos
                },
            )
        finally:
            for env_id in envs.values():
                lifecycle.destroy_environment(env_id)
            wait_for(lambda: not lifecycle.list_environments(), timeout=90)
            for silo in silos:
                lifecycle.destroy_silo(silo, force=True)
            wait_for(
                lambda: all(lifecycle.get_silo(s).status == Status.DESTROYED for s in silos),
                timeout=90,
            )


def _silo_names(client: httpx.Client) -> set[str]:
    response = client.get("/api/silos")
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["total"] == len(body["items"])
    return {item["name"] for item in body["items"]}


def test_finding_8_silo_outputs_runs_and_logs_only_for_their_readers_and_operators(
    site: Site,
) -> None:
    """One set-up (four engine applies) for the three kinds of people."""
    each_reader_sees_only_the_silo_of_their_repository(site)
    a_reader_of_a_repository_without_environments_sees_no_silo(site)
    operators_see_every_silo_its_runs_and_logs(site)


def each_reader_sees_only_the_silo_of_their_repository(site: Site) -> None:
    for login, (repo, mine) in READERS.items():
        (theirs,) = {silo for _, silo in READERS.values()} - {mine}
        with closing(site.person(login)) as client:
            assert _silo_names(client) == {mine}
            assert client.get("/api/usage").json()["silos"] == 1

            own = client.get(f"/api/silos/{mine}")
            assert own.status_code == 200
            assert own.json()["outputs"]["shared_dir"] == site.shared_dirs[mine]
            runs = client.get(f"/api/silos/{mine}/runs").json()["items"]
            assert site.silo_runs[mine] in [run["id"] for run in runs]
            log = client.get(f"/api/runs/{site.silo_runs[mine]}/log")
            assert log.status_code == 200 and "Apply complete" in log.json()["text"]

            # The other silo is absent, in the words of a silo that does not exist.
            for path in (
                f"/api/silos/{theirs}",
                f"/api/silos/{theirs}/runs",
                f"/api/runs/{site.silo_runs[theirs]}",
                f"/api/runs/{site.silo_runs[theirs]}/log",
                f"/api/environments/{site.envs[theirs]}",
                f"/api/environments/{site.envs[theirs]}/runs",
                f"/api/runs/{site.env_runs[theirs]}/log",
            ):
                response = client.get(path)
                assert response.status_code == 404, (login, path, response.text)
                assert site.shared_dirs[theirs] not in response.text
                if theirs not in path:  # a run id or environment id never names its silo
                    assert theirs not in response.text
            assert client.get("/api/silos/no-such-silo").json() == {
                "detail": "no silo 'no-such-silo' that you can see"
            }
            assert client.get(f"/api/silos/{theirs}").json() == {
                "detail": f"no silo '{theirs}' that you can see"
            }
            envs = client.get("/api/environments", params={"status": "all"}).json()["items"]
            assert {env["repository"] for env in envs} == {repo}

            # The dashboard shows the same: its own silo, and a 404 page for the other.
            page = client.get("/silos")
            assert page.status_code == 200 and f"/silos/{mine}" in page.text
            assert theirs not in page.text
            detail = client.get(f"/silos/{mine}")
            assert detail.status_code == 200 and site.shared_dirs[mine] in detail.text
            hidden = client.get(f"/silos/{theirs}")
            assert hidden.status_code == 404 and site.shared_dirs[theirs] not in hidden.text
            overview = client.get("/", params={"status": "all"})
            assert overview.status_code == 200 and theirs not in overview.text


def a_reader_of_a_repository_without_environments_sees_no_silo(site: Site) -> None:
    with closing(site.person("cy")) as client:
        assert _silo_names(client) == set()
        assert client.get("/api/usage").json()["silos"] == 0
        for silo, run_id in site.silo_runs.items():
            assert client.get(f"/api/silos/{silo}").status_code == 404
            assert client.get(f"/api/runs/{run_id}/log").status_code == 404
            assert client.get(f"/silos/{silo}").status_code == 404


def operators_see_every_silo_its_runs_and_logs(site: Site) -> None:
    every = set(site.silo_runs)
    with site.token() as token, closing(site.person(ADMIN)) as admin:
        for client in (token, admin):
            assert _silo_names(client) == every
            assert client.get("/api/usage").json()["silos"] == len(every)
            for silo, run_id in site.silo_runs.items():
                assert client.get(f"/api/silos/{silo}").status_code == 200
                runs = client.get(f"/api/silos/{silo}/runs").json()["items"]
                assert run_id in [run["id"] for run in runs]
                assert "Apply complete" in client.get(f"/api/runs/{run_id}/log").json()["text"]
            for run_id in site.env_runs.values():
                assert client.get(f"/api/runs/{run_id}/log").status_code == 200
        page = admin.get("/silos").text
        assert all(f"/silos/{silo}" in page for silo in every)
