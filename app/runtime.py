"""The composition root: builds the database, catalog, engine runner and lifecycle from settings."""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import cached_property
from typing import Any

from app.db.session import Database
from app.engine.runner import EngineRunner
from app.lifecycle.reconcile import Reconciler
from app.lifecycle.service import Lifecycle
from app.lifecycle.sweep import OrphanSweep
from app.policy.merge import git_hosts_anywhere
from app.policy.store import PolicyStore
from app.settings import Settings
from app.stacks.catalog import Catalog
from app.stacks.gitrun import GitLimits


@dataclass
class Runtime:
    settings: Settings
    db: Database
    catalog: Catalog
    runner: EngineRunner
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
        }
        options.update(overrides)
        return Reconciler(self.db, self.catalog, self.runner, self.settings.data_dir, **options)

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


def build_runtime(settings: Settings, migrate: bool = True) -> Runtime:
    policy = PolicyStore.open(settings.policy_file)  # a bad file stops here, before any work
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    db = Database(settings.resolved_database_url)
    if migrate:
        db.migrate()
    catalog = Catalog(settings.templates_dir)
    runner = EngineRunner(
        settings.engine_name,
        settings.data_dir,
        settings.resolved_database_url if settings.is_postgres else None,
        timeout=settings.engine_timeout,
        cancel_grace=settings.engine_cancel_grace,
    )
    lifecycle = Lifecycle(db, catalog, settings.default_capacity)
    return Runtime(
        settings=settings,
        db=db,
        catalog=catalog,
        runner=runner,
        lifecycle=lifecycle,
        policy=policy,
    )
