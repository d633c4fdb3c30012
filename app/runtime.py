"""The composition root: builds the database, catalog, engine runner and lifecycle from settings."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any

from app.db.session import Database
from app.engine.executor import Executor
from app.engine.runner import EngineRunner
from app.engine.sandbox import Sandbox, SandboxUnavailable
from app.lifecycle.reconcile import Reconciler
from app.lifecycle.service import Lifecycle
from app.lifecycle.silotoken import SiloTokens, load_key
from app.lifecycle.sweep import OrphanSweep
from app.policy.merge import git_hosts_anywhere
from app.policy.store import PolicyStore
from app.settings import Settings, SettingsError
from app.source.cache import SourceCache
from app.source.fetch import Download, SourceLimits, SourceProvider, Sources
from app.source.localgit import git_archive_download
from app.stacks.catalog import Catalog
from app.stacks.gitrun import GitLimits

log = logging.getLogger("runbot.runtime")


@dataclass
class Runtime:
    settings: Settings
    db: Database
    catalog: Catalog
    runner: Executor
    lifecycle: Lifecycle
    policy: PolicyStore = field(default_factory=PolicyStore)

    def reconciler(self, **overrides: Any) -> Reconciler:
        options: dict[str, Any] = {
            "max_concurrent_runs": self.settings.max_concurrent_runs,
            "worker_concurrency": self.settings.worker_concurrency,
            "lease_seconds": self.settings.lease_seconds,
            "default_capacity": self.settings.default_capacity,
            "git_limits": self.git_limits,
            "destroy_retry_base": self.settings.destroy_retry_base,
            "destroy_retry_max": self.settings.destroy_retry_max,
            "source": self.sources(),
            "silo_tokens": self.silo_tokens,
        }
        options.update(overrides)
        return Reconciler(self.db, self.catalog, self.runner, self.settings.data_dir, **options)

    @cached_property
    def silo_tokens(self) -> SiloTokens:
        """Silo tokens; with several replicas RUNBOT_SILO_TOKEN_SECRET must be the same on all
        (each data dir's random key differs)."""
        settings = self.settings
        key = load_key(settings.silo_token_secret, settings.data_dir)
        return SiloTokens(key, settings.silo_api)

    @cached_property
    def orphans(self) -> OrphanSweep:
        """The orphan sweep; one per runtime, so its latest report is what the tick found."""
        return OrphanSweep(
            self.db,
            self.catalog,
            self.runner,
            self.lifecycle,
            self.settings.data_dir,
            self.git_limits,
        )

    def sources(self, download: Download | None = None) -> SourceProvider | None:
        """Where PR sources come from: `git archive` of RUNBOT_LOCAL_REPO when it is set,
        else `download` (GitHub's tarballs, given by the workers); None: no source at all."""
        settings = self.settings
        if settings.local_repo is not None:
            download = git_archive_download(settings.local_repo.absolute())
        if download is None:
            return None
        cache = SourceCache(
            settings.data_dir.absolute() / "sources",
            keep=settings.source_cache_keep,
            in_use=max(3600.0, settings.engine_timeout * 2),
        )
        return Sources(cache, download, self.source_limits)

    def source_limits(self, repository: str) -> SourceLimits:
        """The policy's `source_max_bytes` and `source_max_files` for the repository now."""
        policy = self.policy.policy_for(repository)
        return SourceLimits(policy.source_max_bytes, policy.source_max_files)

    def git_limits(self) -> GitLimits:
        """The RUNBOT_GIT_* settings, with the hosts of the policy in force right now."""
        settings = self.settings
        return GitLimits(
            max_bytes=settings.git_max_bytes,
            low_speed_limit=settings.git_low_speed_limit,
            low_speed_time=settings.git_low_speed_time,
            timeout=settings.git_timeout,
            ca_file=str(settings.git_ca_file.absolute()) if settings.git_ca_file else None,
            ssh_command=settings.git_ssh_command,
            allowed_hosts=git_hosts_anywhere(self.policy.current),
        )


def engine_sandbox(settings: Settings) -> Sandbox | None:
    """The sandbox for engine runs, hiding runbot's own secret files; None when it is off."""
    if settings.sandbox == "off":
        return None
    secrets = [p for p in (settings.github_private_key_path, settings.silo_env_dir) if p]
    url = settings.resolved_database_url
    if url.startswith("sqlite:///"):
        database = url.removeprefix("sqlite:///")
        secrets += [Path(database + suffix) for suffix in ("", "-wal", "-shm", "-journal")]
    return Sandbox(settings.sandbox_uid, tuple(p.absolute() for p in secrets))


def require_sandbox(rt: Runtime) -> None:
    """Refuse to run engines unsandboxed unless the operator said so (RUNBOT_SANDBOX=off).

    Probes now, so `runbot serve` and `runbot worker` fail at start, not at the first run."""
    sandbox = getattr(rt.runner, "sandbox", None)
    if isinstance(sandbox, Sandbox):
        try:
            sandbox.mode  # noqa: B018 - the probe, which raises when no sandbox can start
        except SandboxUnavailable as exc:
            raise SettingsError(f"refusing to start: {exc}") from exc
    elif rt.settings.sandbox == "off":
        log.warning(
            "the engine sandbox is off (RUNBOT_SANDBOX=off): templates can read runbot's"
            " secrets and database; see docs/security.md"
        )


def build_executor(settings: Settings, db: Database) -> Executor:
    """RUNBOT_EXECUTOR: the engine as runbot's child, or as one Kubernetes Job per run."""
    database_url = settings.resolved_database_url if settings.is_postgres else None
    if settings.executor == "kubernetes":
        # Imported here: lightkube is the `kubernetes` extra, not needed for `local`.
        from app.executor.kubernetes import KubernetesConfig, KubernetesExecutor

        config = KubernetesConfig(
            namespace=settings.k8s_namespace,
            image=settings.k8s_image or "",
            service_account=settings.k8s_service_account,
            callback_url=settings.k8s_callback,
            kubeconfig=settings.k8s_kubeconfig,
            cpu=settings.k8s_cpu,
            memory=settings.k8s_memory,
            ttl_after_finished=settings.k8s_ttl_after_finished,
            run_as_user=settings.k8s_run_as_user,
        )
        return KubernetesExecutor(
            db,
            config,
            settings.engine_name,
            settings.data_dir,
            database_url,
            timeout=settings.engine_timeout,
            cancel_grace=settings.engine_cancel_grace,
            silo_env_dir=settings.silo_env_dir,
        )
    return EngineRunner(
        settings.engine_name,
        settings.data_dir,
        database_url,
        timeout=settings.engine_timeout,
        cancel_grace=settings.engine_cancel_grace,
        sandbox=engine_sandbox(settings),
        silo_env_dir=settings.silo_env_dir,
    )


def build_runtime(settings: Settings, migrate: bool = True) -> Runtime:
    policy = PolicyStore.open(settings.policy_file)  # a bad file stops here, before any work
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    db = Database(settings.resolved_database_url)
    if migrate:
        db.migrate()
    catalog = Catalog(settings.templates_dir)
    runner = build_executor(settings, db)
    lifecycle = Lifecycle(db, catalog, settings.default_capacity)
    return Runtime(
        settings=settings,
        db=db,
        catalog=catalog,
        runner=runner,
        lifecycle=lifecycle,
        policy=policy,
    )
