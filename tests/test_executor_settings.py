"""RUNBOT_EXECUTOR and the RUNBOT_K8S_* settings: what they pick, and what they refuse."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from app.doctor.executor import check_executor
from app.doctor.report import State
from app.engine.runner import EngineError, EngineJob, EngineRunner
from app.executor.kubernetes import KubernetesExecutor
from app.runtime import build_runtime
from app.settings import SettingsError
from app.web.surface import allowed_hosts
from tests.conftest import make_settings


def test_local_is_the_default_executor(tmp_path: Path) -> None:
    rt = build_runtime(make_settings(tmp_path))
    assert type(rt.runner) is EngineRunner


def test_kubernetes_is_picked_with_its_settings(tmp_path: Path) -> None:
    settings = make_settings(
        tmp_path,
        executor="kubernetes",
        k8s_image="ghcr.io/example/runbot:1",
        k8s_namespace="ci",
        k8s_callback_url="http://runbot.ci.svc:8000/",
        k8s_cpu="1",
        k8s_memory="2Gi",
    )
    rt = build_runtime(settings)
    assert isinstance(rt.runner, KubernetesExecutor)
    config = rt.runner.config
    assert (config.namespace, config.image, config.cpu, config.memory) == (
        "ci",
        "ghcr.io/example/runbot:1",
        "1",
        "2Gi",
    )
    assert config.callback_url == "http://runbot.ci.svc:8000"
    assert config.service_account == "runbot-engine-{silo}"
    assert config.kubeconfig is None  # in-cluster
    # the pods call runbot by the callback's name: the Host allow-list lets them in
    assert "runbot.ci.svc" in allowed_hosts(settings)


def test_the_callback_defaults_to_the_public_url(tmp_path: Path) -> None:
    settings = make_settings(
        tmp_path, executor="kubernetes", k8s_image="runbot:1", public_url="https://bot.example"
    )
    assert settings.k8s_callback == "https://bot.example"


def test_kubernetes_without_an_image_or_with_a_bad_callback_is_refused(tmp_path: Path) -> None:
    with pytest.raises(SettingsError, match="RUNBOT_K8S_IMAGE"):
        make_settings(tmp_path, executor="kubernetes")
    with pytest.raises(SettingsError, match="RUNBOT_K8S_CALLBACK_URL"):
        make_settings(tmp_path, executor="kubernetes", k8s_image="x", k8s_callback_url="runbot")
    with pytest.raises(SettingsError, match="RUNBOT_EXECUTOR"):
        make_settings(tmp_path, executor="docker")


def test_the_kubernetes_executor_refuses_local_state(tmp_path: Path) -> None:
    """A pod's local state dies with it: SQLite runbot without a remote backend is refused."""
    rt = build_runtime(make_settings(tmp_path, executor="kubernetes", k8s_image="runbot:1"))
    job = EngineJob("env-x", tmp_path, "apply", {}, run_id=1)
    with pytest.raises(EngineError, match="keeps engine state in PostgreSQL"):
        asyncio.run(rt.runner.execute(job, lambda _: None))


def test_a_missing_kubernetes_configuration_is_one_sentence(
    tmp_path: Path, postgres_url: str
) -> None:
    settings = make_settings(
        tmp_path,
        postgres_url,
        executor="kubernetes",
        k8s_image="runbot:1",
        k8s_kubeconfig=tmp_path / "missing.yaml",
    )
    rt = build_runtime(settings)
    job = EngineJob("env-x", tmp_path, "apply", {}, run_id=1)
    with pytest.raises(EngineError, match="cannot load the Kubernetes configuration"):
        asyncio.run(rt.runner.execute(job, lambda _: None))


def test_doctor_says_what_the_kubernetes_executor_still_needs(
    tmp_path: Path, postgres_url: str
) -> None:
    assert check_executor(make_settings(tmp_path)).state is State.OK
    kube = {"executor": "kubernetes", "k8s_image": "runbot:1"}
    missing = check_executor(make_settings(tmp_path, **kube), tmp_path / "no-token")
    assert missing.state is State.FAIL and "not a pod" in missing.detail
    config = tmp_path / "kubeconfig"
    config.write_text("apiVersion: v1\n")
    sqlite = check_executor(make_settings(tmp_path, k8s_kubeconfig=config, **kube))
    assert sqlite.state is State.WARN and "SQLite" in sqlite.detail
    loopback = check_executor(make_settings(tmp_path, postgres_url, k8s_kubeconfig=config, **kube))
    assert loopback.state is State.WARN and "loopback" in loopback.detail
    good = check_executor(
        make_settings(
            tmp_path,
            postgres_url,
            k8s_kubeconfig=config,
            k8s_callback_url="http://runbot.ci.svc:8000",
            **kube,
        )
    )
    assert good.state is State.OK and "runbot.ci.svc" in good.detail
    gone = check_executor(make_settings(tmp_path, k8s_kubeconfig=tmp_path / "nope", **kube))
    assert gone.state is State.FAIL and "is not a file" in gone.detail
