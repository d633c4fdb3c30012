"""RUNBOT_* settings, read from the environment and `.env`.

A bad value must stop the process at start with a sentence naming the setting, not a traceback
deep inside a worker an hour later.
"""

from __future__ import annotations

import re
import shutil
from functools import cached_property
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, ValidationError, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict


class SettingsError(Exception):
    """A setting has a bad value; the message names it and says what is expected."""


class Settings(BaseSettings):
    model_config = SettingsConfigDict(
        env_prefix="RUNBOT_",
        env_file=".env",
        env_file_encoding="utf-8",
        extra="ignore",
        env_ignore_empty=True,  # an empty RUNBOT_X= means "unset", not "empty path"
    )

    # GitHub App
    github_app_id: int | None = None
    github_private_key: str | None = None
    github_private_key_path: Path | None = None
    github_webhook_secret: str | None = None
    github_api_url: str = "https://api.github.com"
    github_url: str = "https://github.com"
    github_api_version: str = "2022-11-28"
    github_app_slug: str | None = None
    github_client_id: str | None = None
    github_client_secret: str | None = None
    #: Opt-in: delete a closed PR's GitHub environment too (needs `administration: write`).
    github_delete_environments: bool = False

    # Storage and templates
    database_url: str | None = None
    data_dir: Path = Path(".runbot")
    templates_dir: Path = Path("infra-templates")
    local_config: Path | None = None  # local mode: the .runbot.yml every PR uses
    # A git repository on this host holding the PRs' commits: their source comes from
    # `git archive` of it rather than from GitHub (local mode's `runbot_source_dir`).
    local_repo: Path | None = None
    # Unpacked PR sources kept in data_dir/sources (the newest; older ones are pruned).
    source_cache_keep: int = Field(default=20, ge=1, le=10_000)
    policy_file: Path | None = None  # the operator policy (docs/policy.md); none: the defaults

    # Engine
    engine: str | None = None
    engine_timeout: float = Field(default=3600.0, gt=0)
    engine_cancel_grace: float = Field(default=60.0, ge=0)
    # The engine's sandbox (docs/security.md): `off` only on purpose, where namespaces cannot
    # work; `runbot serve` refuses to start without it otherwise.
    sandbox: Literal["on", "off"] = "on"
    sandbox_uid: int = Field(default=65534, ge=1, le=2**31 - 1)  # who the engine runs as (root)
    # Provider credentials per silo: `<dir>/<silo>.env`, KEY=VALUE lines, given to that silo's
    # and its environments' engine runs only; the engine itself never sees the directory.
    silo_env_dir: Path | None = None

    # Executor: where engine runs happen. `local`: a child of runbot; `kubernetes`: one Job per
    # run in RUNBOT_K8S_NAMESPACE, running RUNBOT_K8S_IMAGE (runbot's own image).
    executor: Literal["local", "kubernetes"] = "local"
    k8s_namespace: str = "default"
    k8s_image: str | None = None
    # Per silo, for workload identity: `{silo}` is replaced by the silo's name.
    k8s_service_account: str = "runbot-engine-{silo}"
    k8s_callback_url: str | None = None  # runbot's API as pods reach it; unset: RUNBOT_PUBLIC_URL
    k8s_kubeconfig: Path | None = None  # unset: in-cluster (the pod's ServiceAccount)
    k8s_cpu: str = "250m"
    k8s_memory: str = "512Mi"
    k8s_ttl_after_finished: int = Field(default=3600, ge=0, le=7 * 86400)
    # The pods' uid: the image's user (deploy/Dockerfile); 0: whatever USER the image sets.
    k8s_run_as_user: int = Field(default=10001, ge=0)

    # Runtime
    public_url: str = "http://127.0.0.1:8000"
    # Silos' ingresses call runbot's silo API here (`runbot_api_url`); unset: RUNBOT_PUBLIC_URL.
    silo_api_url: str | None = None
    # Derives each silo's `runbot_silo_token`; unset: a random key kept in the data dir.
    silo_token_secret: str | None = None
    max_concurrent_runs: int = Field(default=4, ge=1, le=256)  # across all replicas
    worker_concurrency: int | None = Field(default=None, ge=1, le=256)  # per process
    scheduler_interval: float = Field(default=30.0, gt=0, le=86400)
    # How often the orphan sweep compares state and local-stack processes with the targets.
    orphan_sweep_interval: float = Field(default=300.0, ge=5, le=86400)
    # Handled deliveries are kept this long, then deleted: their ids are what recognises a
    # redelivery, and GitHub lets people redeliver the past 3 days' deliveries.
    delivery_retention_days: float = Field(default=14.0, ge=3, le=3650)
    # Finished runs (with their logs), the local outbox and the command ledger are deleted after
    # this, except each target's newest `run_retention_keep` runs (docs/operating.md).
    run_retention_days: float = Field(default=30.0, ge=1, le=3650)
    run_retention_keep: int = Field(default=5, ge=1, le=1000)
    default_capacity: int = Field(default=20, ge=1, le=100000)
    # The currency of stacks' `runbot_hourly_cost` outputs and of budgets (a 3-letter code).
    currency: str = "USD"

    # Git stacks (docs/security.md, "Git stacks"): what one fetch may cost, and how git reaches
    # a private server. The hosts come from the operator policy (`git_stacks`/`git_hosts`).
    git_max_bytes: int = Field(default=100_000_000, ge=1_000_000)
    git_low_speed_limit: int = Field(default=1000, ge=1)  # bytes/s ...
    git_low_speed_time: int = Field(default=30, ge=1, le=3600)  # ... for this many seconds
    git_timeout: float = Field(default=600.0, gt=0, le=86400)
    git_ca_file: Path | None = None  # a CA bundle for a git server with an internal CA
    git_ssh_command: str = "ssh -o BatchMode=yes -o ConnectTimeout=30 -o ServerAliveInterval=15"
    git_cache_days: float = Field(default=14.0, ge=1, le=3650)
    lease_seconds: float = Field(default=30.0, gt=1)
    # A failed destroy is retried until it succeeds: the delay doubles from the base up to the
    # max (seconds), with jitter (docs/reliability.md, "Failed destroys").
    destroy_retry_base: float = Field(default=10.0, gt=0, le=86400)
    destroy_retry_max: float = Field(default=1800.0, gt=0, le=86400)
    worker_poll_interval: float = Field(default=1.0, gt=0)
    # The least repository role that may run `/runbot` commands other than help and status
    # (a PR's author may also extend, destroy, sleep and wake its own environment).
    command_permission: Literal["admin", "maintain", "write", "triage", "read"] = "write"
    # What runbot writes in answer to commenters below triage (not the PR's author): one reply
    # per PR per interval (later ones edit it) and a write budget per person across PRs.
    command_reply_interval: float = Field(default=600.0, ge=0)
    command_write_budget: int = Field(default=10, ge=0, le=10000)
    command_budget_window: float = Field(default=3600.0, gt=0)
    api_token: str | None = None
    # One secret, or several separated by commas or spaces, newest first: the newest signs new
    # sessions, the others still verify theirs (rotation); a secret removed revokes its cookies.
    session_secret: str | None = None
    metrics_token: str | None = None  # bearer token for /metrics; unset: /metrics is open
    # Host names the dashboard and API answer to besides RUNBOT_PUBLIC_URL's and loopback's.
    allowed_hosts: str = ""
    # Webhook bodies: the most bytes read, and the seconds the whole body may take to arrive.
    webhook_max_body_bytes: int = Field(default=5 * 1024 * 1024, ge=64 * 1024, le=25 * 1024 * 1024)
    webhook_read_timeout: float = Field(default=10.0, gt=0, le=60)
    admins: str = ""  # GitHub logins, comma-separated: may act on silos and every environment
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"

    @field_validator("github_api_url", "github_url", "public_url")
    @classmethod
    def _http_url(cls, value: str) -> str:
        if not value.startswith(("http://", "https://")):
            raise ValueError("must start with http:// or https://")
        return value.rstrip("/")

    @field_validator("currency")
    @classmethod
    def _currency(cls, value: str) -> str:
        code = value.strip().upper()
        if not (len(code) == 3 and code.isascii() and code.isalpha()):
            raise ValueError("must be a 3-letter currency code such as USD, EUR, GBP or CHF")
        return code

    @field_validator("k8s_callback_url", "silo_api_url")
    @classmethod
    def _callback_url(cls, value: str | None) -> str | None:
        if value and not value.startswith(("http://", "https://")):
            raise ValueError("must start with http:// or https://")
        return value.rstrip("/") if value else value

    @field_validator("git_ca_file")
    @classmethod
    def _readable_file(cls, value: Path | None) -> Path | None:
        if value is not None and not value.is_file():
            raise ValueError("must be a PEM file of CA certificates that exists")
        return value

    @field_validator("local_repo")
    @classmethod
    def _git_repository(cls, value: Path | None) -> Path | None:
        if value is not None and not (value / ".git").exists() and not (value / "HEAD").is_file():
            raise ValueError(
                "must be a git repository (a folder with .git, or a bare one) holding the PRs'"
                " commits"
            )
        return value

    @field_validator("database_url")
    @classmethod
    def _known_database(cls, value: str | None) -> str | None:
        if value and not value.startswith(("sqlite", "postgresql")):
            raise ValueError("must be a sqlite:/// or postgresql+psycopg:// URL")
        return value

    @model_validator(mode="after")
    def _key_source(self) -> Settings:
        if self.github_private_key and self.github_private_key_path:
            raise ValueError(
                "set RUNBOT_GITHUB_PRIVATE_KEY or RUNBOT_GITHUB_PRIVATE_KEY_PATH, not both"
            )
        if self.executor == "kubernetes" and not self.k8s_image:
            raise ValueError(
                "RUNBOT_EXECUTOR=kubernetes needs RUNBOT_K8S_IMAGE, runbot's image for the pods"
            )
        return self

    @property
    def k8s_callback(self) -> str:
        """How the Kubernetes executor's pods reach runbot's API."""
        return self.k8s_callback_url or self.public_url

    @property
    def silo_api(self) -> str:
        """How a silo's ingress reaches runbot's silo API."""
        return self.silo_api_url or self.public_url

    @property
    def resolved_database_url(self) -> str:
        if self.database_url:
            return self.database_url
        return f"sqlite:///{(self.data_dir / 'runbot.db').absolute()}"

    @property
    def is_postgres(self) -> bool:
        return self.resolved_database_url.startswith("postgresql")

    @cached_property
    def private_key(self) -> str | None:
        if self.github_private_key:
            return self.github_private_key.replace("\\n", "\n")
        if self.github_private_key_path:
            try:
                return self.github_private_key_path.read_text()
            except OSError as exc:
                raise SettingsError(
                    f"RUNBOT_GITHUB_PRIVATE_KEY_PATH: cannot read {self.github_private_key_path}:"
                    f" {exc.strerror}"
                ) from exc
        return None

    @property
    def admin_logins(self) -> frozenset[str]:
        return frozenset(name.lower() for name in _listed(self.admins))

    @property
    def session_secrets(self) -> tuple[str, ...]:
        """RUNBOT_SESSION_SECRET split into its secrets, newest first; () when unset."""
        return _listed(self.session_secret or "")

    @property
    def host_names(self) -> frozenset[str]:
        """RUNBOT_ALLOWED_HOSTS, lower-case."""
        return frozenset(name.lower().rstrip(".") for name in _listed(self.allowed_hosts))

    @property
    def local_mode(self) -> bool:
        """No App credentials: GitHub writes go to the local outbox instead of GitHub."""
        return not (
            self.github_app_id and (self.github_private_key or self.github_private_key_path)
        )

    @property
    def engine_name(self) -> str:
        """The configured engine, or the first one available: tofu, terraform, embedded."""
        if self.engine:
            return self.engine
        for candidate in ("tofu", "terraform"):
            if shutil.which(candidate):
                return candidate
        return "embedded"


def _listed(value: str) -> tuple[str, ...]:
    """A setting that lists values, separated by commas and/or spaces."""
    return tuple(part for part in re.split(r"[,\s]+", value) if part)


_SECRET_WORDS = re.compile(r"secret|key|token|password", re.IGNORECASE)


def load_settings(**overrides: Any) -> Settings:
    """Build settings, turning pydantic's report into one plain sentence per bad setting.

    The overrides are raw values for pydantic to validate (hence `Any`, as in its own `__init__`),
    plus its source options such as `_env_file`."""
    try:
        return Settings(**overrides)
    except ValidationError as exc:
        problems = []
        for error in exc.errors():
            field = ".".join(str(part) for part in error["loc"]) or "settings"
            name = f"RUNBOT_{field.upper()}" if error["loc"] else "settings"
            shown = "<hidden>" if _SECRET_WORDS.search(field) else repr(error.get("input"))
            problems.append(f"{name}: {error['msg']} (got {shown})")
        raise SettingsError("invalid setting: " + "; ".join(problems)) from None
