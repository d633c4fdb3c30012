"""At most one live environment per PR, guaranteed by the database on SQLite and PostgreSQL."""

from __future__ import annotations

from pathlib import Path

import pytest
from sqlalchemy.exc import IntegrityError

from app.db.models import Environment
from app.runtime import build_runtime
from tests.conftest import make_settings


def test_second_create_for_a_live_pr_returns_the_first(tmp_path: Path, database_url: str) -> None:
    rt = build_runtime(make_settings(tmp_path, database_url))
    rt.lifecycle.create_silo("s", "local", {"port_base": 47900})
    first = rt.lifecycle.create_environment("s", "octo/app", 5, "abc1234")
    again = rt.lifecycle.create_environment("s", "octo/app", 5, "def5678")
    assert again.id == first.id
    assert [e.id for e in rt.lifecycle.list_environments()] == [first.id]
    # A racing writer that bypasses the service is stopped by the index itself.
    with pytest.raises(IntegrityError), rt.db.session() as session:
        session.add(
            Environment(
                id="pr-5-zzzzz", silo_name="s", stack="local", repository="octo/app", pr_number=5
            )
        )
        session.commit()
    # Once the first is on its way out, a fresh one (redeploy, reopen) is allowed.
    rt.lifecycle.destroy_environment(first.id)
    fresh = rt.lifecycle.create_environment("s", "octo/app", 5, "def5678")
    assert fresh.id != first.id
