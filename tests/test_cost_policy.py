"""Budgets as the operator writes them, as decisions read them, and standings from a ledger."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from app import clock
from app.clock import ManualClock
from app.cost.budget import REACHED_MESSAGE, Level, Standing, budget_line, level_of
from app.cost.money import EnvironmentCost, cost_line, format_money, format_rate
from app.db.budgets import levels, standing_of
from app.db.models import Environment, Silo
from app.db.session import Database
from app.github.comment import StatusView, render_status_comment
from app.github.config import parse_repo_config
from app.intent.decide import Create, Hold, HoldKind, Keep, Live, PullState, decide_pull
from app.policy.explain import explain, render
from app.policy.load import PolicyError, parse_policy
from app.settings import SettingsError
from tests.conftest import make_settings

POLICY = """\
default:
  budget: {monthly: 100}
repos:
  "octo/*":
    budget: {monthly: 10}
silos:
  shared:
    budget: {monthly: 20}
"""


@pytest.mark.parametrize(
    ("text", "says"),
    [
        ("default: {budget: 200}", "default.budget: expected a mapping like {monthly: 200}"),
        ("default: {budget: {monthly: 0}}", "more than 0"),
        ("default: {budget: {monthly: -5}}", "more than 0"),
        ("default: {budget: {monthly: .inf}}", "more than 0"),
        ("default: {budget: {monthly: '200'}}", "an amount of money like 200"),
        ("default: {budget: {monthly: true}}", "an amount of money like 200"),
        ("default: {budget: {weekly: 5}}", "'weekly' is not a budget key"),
        ('repos: {"o/*": {budget: {monthly: 1, daily: 1}}}', "'daily' is not a budget key"),
        ("silos: {s: {budgit: {monthly: 1}}}", 'silos."s".budgit: "budgit" is not a policy key'),
        ("silos: {s: {stacks: [x]}}", "The keys here: budget"),
        ("silos: {s: 5}", "expected a mapping"),
        ("silos:", "is empty"),
    ],
)
def test_bad_budgets_are_refused_saying_what_to_write(text: str, says: str) -> None:
    with pytest.raises(PolicyError) as raised:
        parse_policy(text)
    assert says in str(raised.value) and "line 1" in str(raised.value)


def test_budgets_merge_like_any_key_and_explain_says_where() -> None:
    policy = parse_policy(POLICY)
    shown = render(explain(policy, "octo/app"))
    assert 'budget            {"monthly": 10.0}  repos."octo/*" (line 5)' in shown
    assert 'budget            {"monthly": 100.0}  default (line 2)' in render(
        explain(policy, "other/app")
    )
    assert policy.document.silos["shared"].budget is not None
    assert policy.document.silos["shared"].budget.monthly == 20


def test_levels_and_sentences() -> None:
    assert [level_of(s, 10) for s in (0, 7.99, 8, 9.99, 10, 50)] == [
        Level.OK,
        Level.OK,
        Level.WARN,
        Level.WARN,
        Level.REACHED,
        Level.REACHED,
    ]
    assert budget_line(None) is None
    assert budget_line(Standing("repository o/a", 10, 7)) is None
    warn = budget_line(Standing("repository o/a", 10, 8.5), "EUR")
    assert warn == (
        "80% of the monthly budget of repository o/a (€10.00) is spent: at 100% new"
        " environments wait and idle ones sleep until the 1st."
    )
    # The same level, more money: the same sentence (the comment is not edited as money accrues).
    assert budget_line(Standing("repository o/a", 10, 9.9), "EUR") == warn
    assert "is spent: new environments wait" in (budget_line(Standing("silo s", 10, 11)) or "")
    assert format_money(1234.5, "usd") == "$1,234.50" and format_money(1.2, "CHF") == "1.20 CHF"
    assert format_money(0.05, "GBP") == "£0.05"
    assert format_rate(0.004) == "$0.0040/h" and format_rate(0) == "$0.00/h"
    assert cost_line(EnvironmentCost(1.2, 0.05)) == "≈ $1.20 so far · $0.05/h"


def test_the_comment_shows_cost_and_warning_escaped() -> None:
    now = datetime(2026, 4, 2, tzinfo=UTC)
    view = StatusView(
        repository="o/a",
        pr_number=1,
        state="ready",
        now=now,
        environment_id="pr-1-abcde",
        silo="s",
        url="http://127.0.0.1:1/",
        cost="≈ $1.20 so far · $0.05/h",
        budget_warning="The monthly budget of repository o/a ($10.00) is spent: <b>x</b>",
    )
    body = render_status_comment(view)
    assert "| **Cost** | ≈ \\$1.20 so far · \\$0.05/h |" in body
    assert "> ⚠️ **The monthly budget of repository o/a (\\$10.00) is spent" in body
    assert "<b>" not in body
    plain = render_status_comment(StatusView(repository="o/a", pr_number=1, state="ready", now=now))
    assert "**Cost**" not in plain and "budget" not in plain


def test_a_spent_budget_holds_only_a_pr_without_an_environment() -> None:
    head = "a" * 40
    pull = PullState(state="open", head_sha=head)
    config = parse_repo_config("stack: local\n")
    held = decide_pull(pull, config, None, budget_reached=True)
    assert held == Hold(HoldKind.BUDGET, REACHED_MESSAGE)
    assert not held.teardown
    assert decide_pull(pull, config, None) == Create(head)
    live = Live(head_sha=head, head_ref="")
    assert decide_pull(pull, config, live, budget_reached=True) == Keep()
    # Other rules come first: a closed PR is closed, whatever the budget.
    closed = decide_pull(
        PullState(state="closed", head_sha=head), config, None, budget_reached=True
    )
    assert isinstance(closed, Hold) and closed.kind == HoldKind.CLOSED


def test_currency_setting(tmp_path: Path) -> None:
    assert make_settings(tmp_path).currency == "USD"
    assert make_settings(tmp_path, currency=" eur ").currency == "EUR"
    for bad in ("dollars", "€", "12", ""):
        with pytest.raises(SettingsError, match="3-letter currency code"):
            make_settings(tmp_path, currency=bad)


def test_standings_per_repository_and_silo(tmp_path: Path, database_url: str) -> None:
    db = Database(database_url)
    db.migrate()
    policy = parse_policy(POLICY)
    start = datetime(2026, 4, 30, 12, tzinfo=UTC)
    with clock.using(ManualClock(start)) as manual:
        assert isinstance(manual, ManualClock)
        with db.session() as session:
            session.add(Silo(name="shared", stack="local", status="ready"))
            session.commit()
            for number, repo in ((1, "octo/app"), (2, "else/web")):
                session.add(
                    Environment(
                        id=f"pr-{number}-aaaaa",
                        silo_name="shared",
                        stack="local",
                        repository=repo,
                        pr_number=number,
                        status="ready",
                        outputs={"runbot_hourly_cost": {"value": 1.0, "sensitive": False}},
                    )
                )
            session.commit()
        manual.advance(timedelta(hours=9))  # 9 each: octo/app at 90%, the silo (18/20) too
        with db.session() as session:
            now = clock.now()
            assert standing_of(session, policy, "octo/app", "shared", now) == Standing(
                "repository octo/app", 10, pytest.approx(9.0)
            )
            assert standing_of(session, policy, "else/web", "shared", now) == Standing(
                "silo shared", 20, pytest.approx(18.0)
            )
            assert standing_of(session, parse_policy(""), "octo/app", "shared", now) is None
            found = levels(session, policy, now)
            assert found.by_scope == {
                ("repository", "octo/app"): Level.WARN,
                ("repository", "else/web"): Level.OK,
                ("silo", "shared"): Level.WARN,
            }
            # Past midnight UTC it is May: April's spend counts for nothing.
            may = levels(session, policy, datetime(2026, 5, 1, 0, 30, tzinfo=UTC))
            assert may.by_scope[("silo", "shared")] == Level.OK
        manual.advance(timedelta(hours=2))  # silo 22/20: both repositories are covered by it
        with db.session() as session:
            found = levels(session, policy, clock.now())
        assert found.covers("else/web", "shared") and found.covers("octo/app", "other")
        assert not found.covers("else/web", "other")
        assert found.reached("silo") == {"shared"}
    db.dispose()
