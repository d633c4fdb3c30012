"""Environment-hours per repository per UTC day, and the server-rendered chart."""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta
from pathlib import Path

from app.db.models import Environment, Silo
from app.runtime import build_runtime
from app.web.auth import Authenticator, Principal
from app.web.dashboard import usage_svg
from app.web.service import Service
from tests.conftest import make_settings

NOW = datetime(2026, 3, 10, 12, 0, tzinfo=UTC)


def env(env_id: str, repo: str, created: datetime, destroyed: datetime | None) -> Environment:
    return Environment(
        id=env_id,
        silo_name="s",
        stack="local",
        repository=repo,
        pr_number=ord(env_id[0]),  # one live environment per PR, as the schema requires
        status="destroyed" if destroyed else "ready",
        created_at=created,
        destroyed_at=destroyed,
    )


def test_hours_are_split_at_utc_midnight_and_limited_to_30_days(
    tmp_path: Path, database_url: str
) -> None:
    settings = make_settings(tmp_path, database_url)
    rt = build_runtime(settings)

    with rt.db.session() as session:
        session.add(Silo(name="s", stack="local", status="ready"))
        session.commit()
        session.add_all(
            [
                env("a", "o/web", NOW - timedelta(hours=14), NOW - timedelta(hours=10)),
                env("b", "o/web", datetime(2026, 1, 1, tzinfo=UTC), None),
                env(
                    "c", "o/web", datetime(2026, 1, 1, tzinfo=UTC), datetime(2026, 2, 1, tzinfo=UTC)
                ),
                env("d", "o/api", NOW - timedelta(minutes=30), None),
                env("e", "o/api", NOW + timedelta(hours=1), None),  # not yet: clock skew
            ]
        )
        session.commit()
    service = Service(rt, Authenticator(settings, lambda: None), lambda: None)
    usage = service.usage(Principal("token"), now=NOW)

    assert usage.days[0] == date(2026, 2, 9) and usage.days[-1] == date(2026, 3, 10)
    assert len(usage.days) == 30
    web, api = usage.series  # the busiest repository first
    assert web.repository == "o/web" and api.repository == "o/api"
    assert web.hours[:-2] == [24.0] * 28  # b, all day long
    assert web.hours[-2] == 24.0 + 2.0  # b, and a from 22:00
    assert web.hours[-1] == 12.0 + 2.0  # b until noon, and a until 02:00
    assert api.hours == [0.0] * 29 + [0.5]
    assert web.total == 28 * 24 + 26 + 14
    assert usage.counts == {"ready": 3}
    assert usage.live == 3

    reader = Principal("user", login="r", readable=frozenset({"o/api"}))
    mine = service.usage(reader, now=NOW)
    assert [s.repository for s in mine.series] == ["o/api"] and mine.live == 2
    assert service.usage(Principal("anonymous"), now=NOW).series == []

    chart = str(usage_svg(usage))
    assert chart.startswith("<svg") and chart.count("<rect") == 30 + 1
    assert "<title>o/web: 26.0 h on 2026-03-09</title>" in chart
    assert "o/api" in chart and "Mar 10" in chart
    rt.db.dispose()
