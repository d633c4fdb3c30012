"""Static checks of deploy/: the Dockerfile, compose file, .env.example and the Helm chart.

Docker cannot run where the tests run, so nothing here builds the image; the chart is rendered
by the real helm in tests/test_helm_chart.py, and its templates' text is checked here. The
artifacts are checked against app/settings.py (the only source of setting
names) and for the properties that keep a deployment safe: verified engine binary, non-root user,
long stop grace, health probes, the PostgreSQL guard for several replicas, and no committed
secret. The one executable piece, deploy/install-tofu.sh, is run against a fake release.
"""

from __future__ import annotations

import hashlib
import io
import os
import re
import shutil
import stat
import subprocess
import sys
import tomllib
import zipfile
from pathlib import Path
from typing import Any

import pytest
import yaml

from app.policy.load import parse_policy
from app.settings import Settings

ROOT = Path(__file__).resolve().parent.parent
DEPLOY = ROOT / "deploy"
CHART = DEPLOY / "helm" / "runbot"
TEMPLATES = CHART / "templates"

SETTING_NAMES = {f"RUNBOT_{name.upper()}" for name in Settings.model_fields}
VALID_NAMES = SETTING_NAMES
# What a production deployment cannot run without (PostgreSQL is what allows several replicas).
DEFAULT_CANCEL_GRACE = Settings.model_fields["engine_cancel_grace"].default
REQUIRED = {
    "RUNBOT_GITHUB_APP_ID",
    "RUNBOT_GITHUB_PRIVATE_KEY",
    "RUNBOT_GITHUB_WEBHOOK_SECRET",
    "RUNBOT_DATABASE_URL",
    "RUNBOT_PUBLIC_URL",
}
SECRET_WORDS = re.compile(r"SECRET|KEY|TOKEN|PASSWORD", re.IGNORECASE)
# A name, not a prefix: "RUNBOT_*" and "RUNBOT_%s" in prose and templates are not names.
RUNBOT_NAME = re.compile(r"\bRUNBOT_[A-Z][A-Z0-9_]*")
# Values that are secrets whatever the key is called.
SECRET_VALUE = re.compile(
    r"-----BEGIN [A-Z ]*PRIVATE KEY-----"
    r"|\bgh[pousr]_[A-Za-z0-9]{20,}|\bgithub_pat_[A-Za-z0-9_]{20,}"
    # A URL with a literal password; ${...} substitutions and <placeholders> are not secrets.
    r"|://[^/\s:@]+:(?!<|\$\{)[^/\s@]+@"
)
DEPLOY_TEXT_FILES = [
    DEPLOY / "Dockerfile",
    DEPLOY / "install-tofu.sh",
    DEPLOY / "Dockerfile.dockerignore",
    DEPLOY / "docker-compose.yml",
    DEPLOY / ".env.example",
    DEPLOY / "README.md",
    CHART / "Chart.yaml",
    CHART / "values.yaml",
    *sorted(TEMPLATES.iterdir()),
]


def read(path: Path) -> str:
    return path.read_text(encoding="utf-8")


def names_in(text: str) -> set[str]:
    return {match.rstrip("_") for match in RUNBOT_NAME.findall(text)}


def camel_to_env(key: str) -> str:
    """values.yaml's camelCase key as the chart renders it (sprig `snakecase | upper`)."""
    return "RUNBOT_" + re.sub(r"(?<!^)(?=[A-Z])", "_", key).upper()


# ----- .env.example ------------------------------------------------------------------------------

ENV_LINE = re.compile(r"^(?P<comment>#\s*)?(?P<name>[A-Z][A-Z0-9_]*)=(?P<value>.*)$")


def env_example() -> dict[str, tuple[bool, str]]:
    """name -> (active, value); commented-out assignments count as listed but inactive."""
    entries: dict[str, tuple[bool, str]] = {}
    for line in read(DEPLOY / ".env.example").splitlines():
        match = ENV_LINE.match(line.strip())
        if match:
            name = match["name"]
            assert name not in entries, f".env.example lists {name} twice"
            entries[name] = (match["comment"] is None, match["value"])
    return entries


# ----- Dockerfile --------------------------------------------------------------------------------


def dockerfile_stages() -> list[list[tuple[str, str]]]:
    """Instructions per build stage, continuation lines joined and comments dropped."""
    stages: list[list[tuple[str, str]]] = []
    logical = ""
    for raw in read(DEPLOY / "Dockerfile").splitlines():
        line = raw.strip()
        if not logical and (not line or line.startswith("#")):
            continue
        if line.startswith("#"):  # a comment inside a continued instruction
            continue
        if line.endswith("\\"):
            logical += line[:-1] + " "
            continue
        logical += line
        keyword, _, rest = logical.partition(" ")
        keyword = keyword.upper()
        if keyword == "FROM":
            stages.append([])
        assert stages, f"instruction before FROM: {logical}"
        stages[-1].append((keyword, rest.strip()))
        logical = ""
    return stages


def instructions(stage: list[tuple[str, str]], keyword: str) -> list[str]:
    return [rest for key, rest in stage if key == keyword]


# ----- Helm --------------------------------------------------------------------------------------


def values() -> dict[str, Any]:
    return yaml.safe_load(read(CHART / "values.yaml"))


def template_text() -> str:
    return "\n".join(read(path) for path in sorted(TEMPLATES.iterdir()))


SECRET_ENV_ITEM = re.compile(r'\(list "(RUNBOT_[A-Z_]+)" "(\w+)" (true|false)\)')


def chart_secret_env() -> dict[str, tuple[str, bool]]:
    """RUNBOT_ name -> (secretKeys entry, optional) from deployment.yaml's secretKeyRef table."""
    found = SECRET_ENV_ITEM.findall(read(TEMPLATES / "deployment.yaml"))
    return {name: (key, optional == "true") for name, key, optional in found}


def define_block(text: str, name: str) -> str:
    match = re.search(r'\{\{-? define "' + re.escape(name) + r'" -?\}\}', text)
    assert match, f"no define {name!r}"
    depth, position = 1, match.end()
    for action in re.finditer(r"\{\{-?\s*(/\*.*?\*/|[^}]*?)\s*-?\}\}", text[position:], re.S):
        word = action.group(1).split(" ", 1)[0]
        if word in ("if", "range", "with", "define", "block"):
            depth += 1
        elif word == "end":
            depth -= 1
            if depth == 0:
                return text[position : position + action.start()]
    raise AssertionError(f"define {name!r} is never closed")


# ===== every RUNBOT_ name is a real setting ======================================================


def test_settings_are_the_source_of_names() -> None:
    # Guards the test itself: if Settings stopped using the RUNBOT_ prefix, every name below
    # would be checked against the wrong set.
    assert Settings.model_config["env_prefix"] == "RUNBOT_"
    assert REQUIRED <= SETTING_NAMES


@pytest.mark.parametrize("path", DEPLOY_TEXT_FILES, ids=lambda p: str(p.relative_to(DEPLOY)))
def test_every_runbot_name_is_a_setting(path: Path) -> None:
    unknown = names_in(read(path)) - VALID_NAMES
    assert not unknown, f"{path.relative_to(ROOT)} names settings runbot does not have: {unknown}"


def test_chart_config_keys_are_settings() -> None:
    config = values()["config"]
    rendered = {camel_to_env(key) for key in config}
    assert not rendered - VALID_NAMES, f"values.yaml config keys: {rendered - VALID_NAMES}"
    secret_keys = {camel_to_env(key) for key in values()["secretKeys"]}
    assert not secret_keys - VALID_NAMES, f"values.yaml secretKeys: {secret_keys - VALID_NAMES}"


def test_chart_secret_env_matches_secret_keys() -> None:
    table = chart_secret_env()
    assert table, "deployment.yaml has no secretKeyRef table"
    secret_keys = values()["secretKeys"]
    for name, (key, _optional) in table.items():
        assert key in secret_keys, f"{name} reads secretKeys.{key}, which values.yaml lacks"
        assert camel_to_env(key) == name, f"secretKeys.{key} is wired to {name}"
    assert set(secret_keys) == {key for key, _ in table.values()}, "unwired secretKeys entries"


def test_env_example_lists_every_setting() -> None:
    listed = {name for name in env_example() if name.startswith("RUNBOT_")}
    assert listed == VALID_NAMES, (
        f"missing from .env.example: {sorted(VALID_NAMES - listed)};"
        f" not settings: {sorted(listed - VALID_NAMES)}"
    )


def test_env_example_defaults_match_runbot_or_image() -> None:
    image_env = {}
    for rest in instructions(dockerfile_stages()[-1], "ENV"):
        image_env.update(dict(re.findall(r'(\w+)="?([^"\s]*)"?', rest)))
    for name, (active, value) in env_example().items():
        if active or not value or not name.startswith("RUNBOT_"):
            continue
        field = name.removeprefix("RUNBOT_").lower()
        default = Settings.model_fields[field].default
        parsed = getattr(Settings.model_validate({field: value}), field)
        assert parsed == default or image_env.get(name) == value, (
            f".env.example shows {name}={value}, but runbot's default is {default!r}"
            f" and the image sets {image_env.get(name)!r}"
        )


# ===== required settings are present and wired ===================================================


def test_required_settings_in_env_example() -> None:
    entries = env_example()
    for name in REQUIRED:
        assert name in entries, f".env.example lacks {name}"
    # Compose supplies the database URL (the bundled postgres); the others must be filled in.
    for name in REQUIRED - {"RUNBOT_DATABASE_URL"}:
        assert entries[name][0], f"{name} is commented out in .env.example but required"


def test_required_settings_wired_in_chart() -> None:
    config_names = {camel_to_env(key) for key in values()["config"]}
    secret_env = chart_secret_env()
    for name in REQUIRED:
        assert name in config_names or name in secret_env, f"the chart never sets {name}"
    for name in (
        "RUNBOT_GITHUB_PRIVATE_KEY",
        "RUNBOT_GITHUB_WEBHOOK_SECRET",
        "RUNBOT_DATABASE_URL",
    ):
        assert name in secret_env, f"{name} must come from existingSecret"
        assert secret_env[name][1] is False, f"{name}'s secret key must not be optional"
    validate = define_block(read(TEMPLATES / "_helpers.tpl"), "runbot.validate")
    for key in ("githubAppId", "publicUrl"):
        assert re.search(r"if not \.Values\.config\." + key + r"\b", validate), (
            f"the chart does not require config.{key}"
        )


def test_private_key_env_file_form_is_understood() -> None:
    # .env.example tells people to write the PEM on one line with \n; runbot must undo that.
    settings = Settings(github_private_key="-----BEGIN X-----\\nabc\\n-----END X-----")
    assert settings.private_key == "-----BEGIN X-----\nabc\n-----END X-----"


# ===== no secret values committed ================================================================


def test_env_example_secrets_are_empty() -> None:
    for name, (_active, value) in env_example().items():
        if SECRET_WORDS.search(name):
            assert value == "", f".env.example commits a value for {name}"


def _leaves(node: Any, path: str = "") -> list[tuple[str, Any]]:
    if isinstance(node, dict):
        return [leaf for key, child in node.items() for leaf in _leaves(child, f"{path}.{key}")]
    if isinstance(node, list):
        return [leaf for i, child in enumerate(node) for leaf in _leaves(child, f"{path}[{i}]")]
    return [(path, node)]


def test_values_yaml_holds_no_secret() -> None:
    config = values()["config"]
    for key, value in config.items():
        if SECRET_WORDS.search(key) and not key.endswith("Path"):
            assert value in (None, ""), f"values.yaml config.{key} commits a secret"
    assert values()["existingSecret"] == "", "existingSecret names a cluster object; no default"
    for path, value in _leaves(values()):
        if isinstance(value, str):
            assert not SECRET_VALUE.search(value), f"values.yaml{path} looks like a secret"


@pytest.mark.parametrize("path", DEPLOY_TEXT_FILES, ids=lambda p: str(p.relative_to(DEPLOY)))
def test_no_secret_value_in_deploy_files(path: Path) -> None:
    text = read(path)
    match = SECRET_VALUE.search(text)
    assert not match, f"{path.relative_to(ROOT)} contains what looks like a secret: {match[0]!r}"


def test_chart_refuses_secrets_in_config() -> None:
    validate = define_block(read(TEMPLATES / "_helpers.tpl"), "runbot.validate")
    for key in ("githubPrivateKey", "githubWebhookSecret", "githubClientSecret", "apiToken"):
        assert f'"{key}"' in validate, f"config.{key} is not refused by runbot.validate"


# ===== Dockerfile ================================================================================


def test_dockerfile_is_multi_stage_on_python_311_slim() -> None:
    stages = dockerfile_stages()
    assert len(stages) >= 2
    for stage in stages:
        image = instructions(stage, "FROM")[0].split()[0]
        assert image == "python:3.11-slim", f"stage based on {image}"


def test_dockerfile_runs_as_non_root_user_10001() -> None:
    final = dockerfile_stages()[-1]
    users = instructions(final, "USER")
    assert users, "the runtime stage has no USER: it would run as root"
    user = users[-1].split(":")[0]
    assert user not in ("root", "0"), f"runs as {users[-1]}"
    assert user == "10001", "numeric uid lets Kubernetes verify runAsNonRoot"
    run = " ".join(instructions(final, "RUN"))
    assert "--uid 10001" in run and "runbot" in run, "no runbot user with uid 10001"


def test_dockerfile_healthcheck_probes_healthz_with_python() -> None:
    final = dockerfile_stages()[-1]
    checks = instructions(final, "HEALTHCHECK")
    assert len(checks) == 1
    assert "http://127.0.0.1:8000/healthz" in checks[0]
    assert '"python"' in checks[0] and "curl" not in checks[0]


def test_dockerfile_pins_and_verifies_opentofu() -> None:
    text = read(DEPLOY / "Dockerfile")
    version = re.search(r"^ARG TOFU_VERSION=(\S+)$", text, re.M)
    assert version and re.fullmatch(r"1\.\d+\.\d+", version[1]), "TOFU_VERSION is not pinned"
    for arch in ("AMD64", "ARM64"):
        checksum = re.search(rf"^ARG TOFU_SHA256_{arch}=(\S*)$", text, re.M)
        assert checksum, f"no TOFU_SHA256_{arch} build argument"
        assert re.fullmatch(r"[0-9a-f]{64}", checksum[1]), f"TOFU_SHA256_{arch} is not a SHA256"
    runs = " ".join(instructions(dockerfile_stages()[0], "RUN"))
    assert "install-tofu.sh" in runs
    for arg in ("TOFU_VERSION", "TOFU_SHA256_AMD64", "TOFU_SHA256_ARM64", "TARGETARCH"):
        assert "${" + arg in runs, f"install-tofu.sh is not given {arg}"
    script = read(DEPLOY / "install-tofu.sh")
    assert "sha256sum -c" in script
    assert "--insecure" not in script and "-k " not in script


def test_dockerfile_runtime_settings_and_process() -> None:
    final = dockerfile_stages()[-1]
    env = " ".join(instructions(final, "ENV"))
    for setting in (
        "RUNBOT_DATA_DIR=/data",
        "RUNBOT_ENGINE=tofu",
        "RUNBOT_TEMPLATES_DIR=/app/infra-templates",
    ):
        assert setting in env, f"image does not set {setting}"
    assert instructions(final, "VOLUME") == ['["/data"]']
    assert any("infra-templates" in copy for copy in instructions(final, "COPY"))
    assert "git" in " ".join(instructions(final, "RUN")).split()
    assert instructions(final, "STOPSIGNAL") == ["SIGTERM"]
    assert instructions(final, "ENTRYPOINT") == ['["runbot"]']
    assert instructions(final, "CMD") == ['["serve", "--host", "0.0.0.0", "--port", "8000"]']
    stop_comment = read(DEPLOY / "Dockerfile")
    assert "docker stop -t 600" in stop_comment and "stop_grace_period" in stop_comment


def test_dockerfile_bakes_in_no_secret_and_copies_no_whole_context() -> None:
    for stage in dockerfile_stages():
        for keyword in ("ENV", "ARG"):
            for rest in instructions(stage, keyword):
                for name in re.findall(r"(\w+)=", rest) or [rest.split("=")[0]]:
                    assert not SECRET_WORDS.search(name), f"{keyword} {name} in the Dockerfile"
        for source in instructions(stage, "COPY"):
            parts = [p for p in source.split() if not p.startswith("--")]
            assert "." not in parts[:-1] and "./" not in parts[:-1], (
                "COPY of the whole context could carry .env into the image"
            )


def test_dockerignore_keeps_secrets_out_of_the_context() -> None:
    patterns = [
        line.strip()
        for line in read(DEPLOY / "Dockerfile.dockerignore").splitlines()
        if line.strip() and not line.startswith("#")
    ]
    assert patterns[0] == "**", "the ignore file should allow-list, not deny-list"
    assert "**/.env" in patterns and "**/*.pem" in patterns


# ===== install-tofu.sh, run for real against a fake release ======================================


@pytest.fixture
def fake_release(tmp_path: Path) -> tuple[dict[str, str], str]:
    for tool in ("sh", "sha256sum", "install"):
        if shutil.which(tool) is None:
            pytest.skip(f"{tool} is not available")
    version = "1.99.0"
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        archive.writestr("tofu", "#!/bin/sh\necho fake tofu\n")
        archive.writestr("LICENSE", "MPL-2.0\n")
    release = tmp_path / "releases" / f"v{version}"
    release.mkdir(parents=True)
    (release / f"tofu_{version}_linux_amd64.zip").write_bytes(buffer.getvalue())
    env = {
        # python3 must be the running interpreter's, which the image's python:3.11 mirrors.
        "PATH": os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")]),
        "TOFU_VERSION": version,
        "TOFU_RELEASES_URL": (tmp_path / "releases").as_uri(),
        "TOFU_SHA256_AMD64": "",
        "TOFU_SHA256_ARM64": "",
    }
    return env, hashlib.sha256(buffer.getvalue()).hexdigest()


def _install(env: dict[str, str], arch: str, dest: Path) -> subprocess.CompletedProcess[str]:
    if not (Path(sys.executable).parent / "python3").exists() and not shutil.which("python3"):
        pytest.skip("python3 is not available")
    return subprocess.run(
        ["sh", str(DEPLOY / "install-tofu.sh"), arch, str(dest)],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_install_tofu_refuses_an_empty_checksum(fake_release, tmp_path: Path) -> None:
    env, _ = fake_release
    result = _install(env, "amd64", tmp_path / "bin")
    assert result.returncode != 0
    assert "no SHA256" in result.stderr
    assert not (tmp_path / "bin" / "tofu").exists()


def test_install_tofu_refuses_a_wrong_checksum(fake_release, tmp_path: Path) -> None:
    env, good = fake_release
    env["TOFU_SHA256_AMD64"] = hashlib.sha256(b"something else").hexdigest()
    assert env["TOFU_SHA256_AMD64"] != good
    result = _install(env, "amd64", tmp_path / "bin")
    assert result.returncode != 0, result.stdout
    assert "FAILED" in result.stdout + result.stderr
    assert not (tmp_path / "bin" / "tofu").exists()


def test_install_tofu_refuses_an_unknown_architecture(fake_release, tmp_path: Path) -> None:
    env, good = fake_release
    env["TOFU_SHA256_AMD64"] = good
    result = _install(env, "s390x", tmp_path / "bin")
    assert result.returncode != 0
    assert "unsupported architecture" in result.stderr


def test_install_tofu_installs_a_verified_binary(fake_release, tmp_path: Path) -> None:
    env, good = fake_release
    env["TOFU_SHA256_AMD64"] = good
    result = _install(env, "amd64", tmp_path / "bin")
    assert result.returncode == 0, result.stderr
    binary = tmp_path / "bin" / "tofu"
    assert binary.stat().st_mode & stat.S_IXUSR, "tofu was installed without the exec bit"
    assert subprocess.run([str(binary)], capture_output=True, text=True).stdout == "fake tofu\n"


# ===== docker-compose.yml ========================================================================


def compose() -> dict[str, Any]:
    return yaml.safe_load(read(DEPLOY / "docker-compose.yml"))


def _seconds(duration: str) -> float:
    units = {"h": 3600, "m": 60, "s": 1, "ms": 0.001}
    parts = re.findall(r"(\d+(?:\.\d+)?)(ms|h|m|s)", duration)
    assert parts and "".join(n + u for n, u in parts) == duration, f"bad duration {duration!r}"
    return sum(float(number) * units[unit] for number, unit in parts)


def test_compose_postgres_has_a_volume_and_healthcheck() -> None:
    spec = compose()
    postgres = spec["services"]["postgres"]
    assert postgres["image"] == "postgres:16"
    data = [v for v in postgres["volumes"] if v.endswith(":/var/lib/postgresql/data")]
    assert data, "postgres data is not on a volume"
    assert data[0].split(":")[0] in spec["volumes"], "postgres volume is not a named volume"
    assert "pg_isready" in " ".join(postgres["healthcheck"]["test"])
    assert postgres["environment"]["POSTGRES_PASSWORD"].startswith("${POSTGRES_PASSWORD")


def test_compose_runbot_service() -> None:
    spec = compose()
    runbot = spec["services"]["runbot"]
    build = runbot["build"]
    assert (DEPLOY / build["context"] / build["dockerfile"]).resolve() == DEPLOY / "Dockerfile"
    assert runbot["env_file"] in (".env", [".env"]), "secrets must come from deploy/.env"
    url = runbot["environment"]["RUNBOT_DATABASE_URL"]
    assert "postgresql+psycopg://" in url and "@postgres:5432/" in url
    assert runbot["depends_on"]["postgres"]["condition"] == "service_healthy"
    assert any(str(port).split(":")[-1] == "8000" for port in runbot["ports"])
    # HTTP drain (cancel grace + 15 s), the engine's SIGINT wait and its SIGTERM wait, see
    # `runbot serve` and EngineRunner._stop; 300 s also covers a doubled cancel grace.
    assert _seconds(runbot["stop_grace_period"]) >= max(300, 2 * DEFAULT_CANCEL_GRACE + 30)
    cache = [v for v in runbot["volumes"] if v.endswith(":/data/plugin-cache")]
    assert cache and cache[0].split(":")[0] in spec["volumes"]
    assert runbot.get("init") is True


def test_compose_gives_the_local_sandbox_what_it_needs() -> None:
    """unshare() as uid 10001 needs seccomp to allow it, AppArmor to allow mount and an unmasked
    /proc; RUNBOT_SANDBOX is set explicitly, on unless deploy/.env says otherwise."""
    runbot = compose()["services"]["runbot"]
    assert runbot["environment"]["RUNBOT_SANDBOX"] == "${RUNBOT_SANDBOX:-on}"
    options = set(runbot["security_opt"])
    needed = {"seccomp=unconfined", "apparmor=unconfined", "systempaths=unconfined"}
    assert needed <= options, f"the sandbox's unshare would fail: missing {needed - options}"
    assert "no-new-privileges:true" in options
    assert "privileged" not in runbot and "cap_add" not in runbot, "the sandbox needs no privilege"
    text = read(DEPLOY / "docker-compose.yml")
    assert "trade-off" in text and "unprivileged user namespaces" in text


def test_compose_sets_no_literal_secret() -> None:
    for name, service in compose()["services"].items():
        for key, value in (service.get("environment") or {}).items():
            if SECRET_WORDS.search(key):
                assert str(value).startswith("${"), f"{name}.{key} is set in docker-compose.yml"


# ===== Helm chart ================================================================================


def test_chart_metadata_matches_the_package() -> None:
    chart = yaml.safe_load(read(CHART / "Chart.yaml"))
    assert chart["apiVersion"] == "v2" and chart["name"] == "runbot"
    project = tomllib.loads(read(ROOT / "pyproject.toml"))["project"]
    assert chart["appVersion"] == project["version"]


def test_chart_has_the_expected_templates() -> None:
    present = {path.name for path in TEMPLATES.iterdir()}
    expected = {"_helpers.tpl", "deployment.yaml", "service.yaml", "ingress.yaml"}
    expected |= {"servicemonitor.yaml", "configmap.yaml", "policy.yaml", "NOTES.txt"}
    expected |= {"serviceaccount.yaml", "role.yaml"}
    assert expected <= present, f"missing templates: {expected - present}"


@pytest.mark.parametrize("path", sorted(TEMPLATES.iterdir()), ids=lambda p: p.name)
def test_template_blocks_are_balanced(path: Path) -> None:
    depth = 0
    for action in re.finditer(r"\{\{-?\s*(/\*.*?\*/|.*?)\s*-?\}\}", read(path), re.S):
        word = action.group(1).split(None, 1)[0] if action.group(1).strip() else ""
        if word in ("if", "range", "with", "define", "block"):
            depth += 1
        elif word == "end":
            depth -= 1
            assert depth >= 0, f"{path.name}: unmatched end at offset {action.start()}"
    assert depth == 0, f"{path.name}: {depth} block(s) never closed"


def test_optional_templates_are_gated() -> None:
    assert read(TEMPLATES / "ingress.yaml").lstrip().startswith("{{- if .Values.ingress.enabled }}")
    monitor = read(TEMPLATES / "servicemonitor.yaml").lstrip()
    assert monitor.startswith("{{- if .Values.serviceMonitor.enabled }}")
    assert "path: /metrics" in monitor
    assert (
        values()["ingress"]["enabled"] is False and values()["serviceMonitor"]["enabled"] is False
    )


def test_chart_probes_and_shutdown() -> None:
    deployment = read(TEMPLATES / "deployment.yaml")
    spec = values()
    assert spec["livenessProbe"]["httpGet"]["path"] == "/healthz"
    assert spec["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert "livenessProbe:\n            {{- toYaml .Values.livenessProbe" in deployment
    assert "readinessProbe:\n            {{- toYaml .Values.readinessProbe" in deployment
    needed = spec["preStopSleepSeconds"] + 2 * DEFAULT_CANCEL_GRACE + 60
    assert spec["terminationGracePeriodSeconds"] >= max(600, needed)
    assert (
        "terminationGracePeriodSeconds: {{ .Values.terminationGracePeriodSeconds }}" in deployment
    )
    assert re.search(r"preStop:\s+exec:\s+# .*\n(\s+#.*\n)*\s+command: \[\"sleep\"", deployment)
    assert 0 < spec["preStopSleepSeconds"] < 60


def test_chart_guards_replicas_without_postgres() -> None:
    helpers = read(TEMPLATES / "_helpers.tpl")
    validate = define_block(helpers, "runbot.validate")
    guard = re.search(
        r"if and \(gt \(int \.Values\.replicaCount\) 1\) \(not \$postgres\) -?\}\}\s*"
        r"\{\{-? fail ",
        validate,
    )
    assert guard, "runbot.validate does not fail for replicaCount > 1 without PostgreSQL"
    uses_postgres = define_block(helpers, "runbot.usesPostgres")
    assert 'hasPrefix "postgresql"' in uses_postgres
    assert ".Values.secretKeys.databaseUrl" in uses_postgres
    assert read(TEMPLATES / "deployment.yaml").startswith('{{- include "runbot.validate" . -}}')
    assert values()["replicaCount"] == 2


def test_chart_env_sources() -> None:
    deployment = read(TEMPLATES / "deployment.yaml")
    assert re.search(
        r"envFrom:\s+- configMapRef:\s+name: \{\{ include \"runbot.fullname\"", deployment
    )
    assert "name: {{ $.Values.existingSecret | quote }}" in deployment
    configmap = read(TEMPLATES / "configmap.yaml")
    assert "range $key, $value := .Values.config" in configmap
    assert 'printf "RUNBOT_%s" ($key | snakecase | upper)' in configmap
    # An empty variable overrides runbot's default, so unset values must be skipped.
    assert 'kindIs "invalid" $value' in configmap


def test_chart_volumes_and_security() -> None:
    deployment = read(TEMPLATES / "deployment.yaml")
    spec = values()
    assert 'printf "%s/plugin-cache" $dataDir' in deployment
    assert re.search(r"- name: plugin-cache\s+emptyDir:", deployment)
    assert re.search(r"emptyDir:\s+sizeLimit: \{\{ \.Values\.dataDirSizeLimit", deployment)
    assert "value: {{ $dataDir | quote }}" in deployment, "RUNBOT_DATA_DIR not tied to the mount"
    assert spec["dataDir"] == "/data"
    assert spec["podSecurityContext"]["runAsNonRoot"] is True
    assert spec["podSecurityContext"]["runAsUser"] == 10001
    assert spec["securityContext"]["readOnlyRootFilesystem"] is True
    assert spec["securityContext"]["allowPrivilegeEscalation"] is False
    assert "preferredDuringSchedulingIgnoredDuringExecution" in deployment
    assert "podAntiAffinity" in deployment
    assert spec["resources"]["limits"]["memory"]


POLICY_MOUNT = "/etc/runbot/policy"


def test_chart_policy_is_a_configmap_mounted_as_a_directory() -> None:
    """values.policy becomes its own ConfigMap, mounted read-only where RUNBOT_POLICY_FILE
    points, as a directory: the kubelet never updates a subPath mount, so runbot would not see
    a changed policy until the pod restarts."""
    assert values()["policy"] == "", "no policy by default: the built-in defaults apply"
    template = read(TEMPLATES / "policy.yaml")
    body = template[template.index("*/ -}}") :]
    assert body.split("\n")[1] == "{{- if .Values.policy }}"
    assert 'name: {{ include "runbot.fullname" . }}-policy' in body
    # Copied exactly (a JSON string survives any text), so error line numbers match the values.
    assert "policy.yml: {{ .Values.policy | toJson }}" in body
    deployment = read(TEMPLATES / "deployment.yaml")
    assert re.search(
        r"\{\{- if \.Values\.policy \}\}\s+# .*\n\s+- name: RUNBOT_POLICY_FILE\s+"
        rf"value: {POLICY_MOUNT}/policy\.yml\s+\{{\{{- end \}}\}}",
        deployment,
    ), "RUNBOT_POLICY_FILE is not set (only) with a policy"
    mount = re.search(
        r"\{\{- if \.Values\.policy \}\}\s+# .*\n\s+- name: policy\n(?P<body>(?:\s+\w+: .*\n)+)"
        r"\s+\{\{- end \}\}",
        deployment,
    )
    assert mount, "no policy volumeMount gated on values.policy"
    assert f"mountPath: {POLICY_MOUNT}\n" in mount["body"]
    assert "readOnly: true" in mount["body"] and "subPath" not in mount["body"]
    assert re.search(
        r"- name: policy\s+configMap:\s+name: \{\{ include \"runbot.fullname\" \. \}\}-policy",
        deployment,
    ), "no policy volume from the policy ConfigMap"
    # Editing the policy must not roll the pods: runbot rereads the file in place.
    assert "policy.yaml" not in deployment


def test_chart_refuses_a_policy_it_cannot_mount_as_written() -> None:
    validate = define_block(read(TEMPLATES / "_helpers.tpl"), "runbot.validate")
    assert 'if not (kindIs "string" .Values.policy)' in validate
    assert "if .Values.config.policyFile" in validate
    assert 'hasKey (fromYaml .Values.policy) "Error"' in validate


def test_values_policy_example_is_a_valid_policy() -> None:
    text = read(CHART / "values.yaml")
    start = text.index("# policy: |\n")
    example = []
    for line in text[start:].splitlines()[1:]:
        if not line.startswith("#   "):
            break
        example.append(line[4:])
    assert len(example) > 3
    loaded = parse_policy("\n".join(example) + "\n", "values.yaml policy")
    assert loaded.document.repos["octo-org/*"].repo_stacks is True


def test_readme_secret_command_uses_the_chart_key_names() -> None:
    readme = read(DEPLOY / "README.md")
    command = re.search(r"kubectl create secret generic runbot-secrets.*?```", readme, re.S)
    assert command, "README has no kubectl create secret example"
    for key in values()["secretKeys"].values():
        assert f"--from-file={key}=" in command[0], f"README's secret lacks the {key} key"
    assert "helm install runbot deploy/helm/runbot" in readme
    assert "--set existingSecret=runbot-secrets" in readme
