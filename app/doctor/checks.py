"""Every doctor check, in the order an operator would fix things."""

from __future__ import annotations

from app.doctor.executor import check_executor
from app.doctor.github import check_github_app, check_public_url, check_webhook_secret
from app.doctor.local import (
    check_data_dir,
    check_database,
    check_engine,
    check_processes,
    check_sandbox,
    check_stacks,
)
from app.doctor.policy import check_policy
from app.doctor.report import Row, fail, ok
from app.doctor.stuck import check_stuck_destroys
from app.settings import Settings


def run_checks(
    settings: Settings | None, *, settings_error: str | None = None, replicas: int = 1
) -> list[Row]:
    """Every check, in the order an operator would fix things."""
    if settings is None:
        return [
            fail(
                "settings",
                settings_error or "the settings could not be read",
                "correct the named RUNBOT_* setting in the environment or the env file",
            )
        ]
    mode = "local mode (no GitHub App)" if settings.local_mode else "GitHub App mode"
    rows = [ok("settings", f"{mode}; data dir {settings.data_dir.absolute()}")]
    rows.append(check_data_dir(settings))
    rows.append(check_engine(settings))
    rows.append(check_executor(settings))
    rows.append(check_sandbox(settings))
    rows.extend(check_database(settings))
    rows.append(check_processes(settings, replicas))
    rows.append(check_stuck_destroys(settings))
    rows.extend(check_stacks(settings))
    rows.append(check_policy(settings))
    rows.extend(check_github_app(settings))
    rows.append(check_webhook_secret(settings))
    rows.append(check_public_url(settings))
    return rows
