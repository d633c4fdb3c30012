"""Issue 18: two replicas claiming from one pool never hand one instance to two PRs, on SQLite
and PostgreSQL. Two real processes race `Lifecycle.claim_warm` on one database; the pure
pool plan is checked on its own.
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from sqlmodel import select

from app.db.models import Environment, Silo, WarmPool
from app.db.session import Database
from app.pool.plan import Member, Retire, Want, plan_pool, pool_key, pool_size

REPO = "octo-org/hello"
WARM = 8
ROOT = Path(__file__).resolve().parents[1]

CLAIMER = textwrap.dedent(
    """
    import json, sys, time
    from pathlib import Path
    from app.db.session import Database
    from app.lifecycle.pool import PullValues
    from app.lifecycle.service import Lifecycle
    from app.stacks.catalog import Catalog
    from app.ttl.policy import TTLPolicy

    url, start, out, numbers = sys.argv[1], float(sys.argv[2]), sys.argv[3], sys.argv[4]
    lifecycle = Lifecycle(Database(url), Catalog(Path("infra-templates")))
    while time.time() < start:
        time.sleep(0.001)
    got = {}
    for number in [int(n) for n in numbers.split(",")]:
        claim = PullValues(
            "octo-org/hello", number, f"{number:040x}", f"b{number}", "wendy", {},
            installation_id=1, ttl=TTLPolicy(), config_sha="c" * 40,
        )
        env = lifecycle.claim_warm("pool", claim)
        got[number] = env.id if env is not None else None
    Path(out).write_text(json.dumps(got))
    """
)


def seed_pool(db: Database) -> None:
    now = datetime.now(UTC)
    with db.session() as session:
        session.add(Silo(name="pool", stack="local", status="ready", observed_generation=1))
        session.commit()
        session.add(WarmPool(silo_name="pool", repository=REPO, config_sha="c" * 40, size=WARM))
        for index in range(WARM):
            session.add(
                Environment(
                    id=f"warm-{index:08d}",
                    silo_name="pool",
                    stack="local",
                    repository=REPO,
                    pr_number=0,
                    head_sha="c" * 40,
                    status="ready",
                    observed_generation=1,
                    trigger="pool",
                    pool_state="warm",
                    pool_key="k",
                    slot=index,
                    created_at=now - timedelta(seconds=WARM - index),
                )
            )
        session.commit()


def race(tmp_path: Path, url: str, *numbers: list[int]) -> list[dict[str, str | None]]:
    start = time.time() + 2.0  # both processes are up and connected by then
    outs = [tmp_path / f"claims-{i}.json" for i in range(len(numbers))]
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", CLAIMER, url, str(start), str(out), ",".join(map(str, nums))],
            cwd=ROOT,
        )
        for out, nums in zip(outs, numbers, strict=True)
    ]
    for proc in procs:
        assert proc.wait(timeout=60) == 0
    return [{k: v for k, v in json.loads(out.read_text()).items()} for out in outs]


def test_two_processes_never_claim_one_instance_for_two_prs(
    tmp_path: Path, database_url: str
) -> None:
    db = Database(database_url)
    db.migrate()
    seed_pool(db)
    results = race(tmp_path, database_url, list(range(1, 11)), list(range(11, 21)))
    claimed = [env_id for result in results for env_id in result.values() if env_id]
    assert len(claimed) == WARM, results  # every warm one taken, by exactly one PR
    assert len(set(claimed)) == WARM, results
    with db.session() as session:
        rows = {env.id: env for env in session.exec(select(Environment))}
    for result in results:
        for number, env_id in result.items():
            if env_id:
                assert rows[env_id].pr_number == int(number)
                assert rows[env_id].pool_state == "claiming"
    db.dispose()


def test_two_processes_claiming_for_one_pr_give_it_one_instance(
    tmp_path: Path, database_url: str
) -> None:
    """The same PR's webhook handled by two replicas at once: one claim wins, and the other
    instance stays warm for the next PR (the one-live-per-PR index refuses a second)."""
    db = Database(database_url)
    db.migrate()
    seed_pool(db)
    results = race(tmp_path, database_url, [7], [7])
    won = [result["7"] for result in results if result["7"]]
    assert len(won) == 1, results
    with db.session() as session:
        envs = list(session.exec(select(Environment)))
    assert [env.id for env in envs if env.pr_number == 7] == won
    assert sum(env.pool_state == "warm" for env in envs) == WARM - 1
    db.dispose()


NOW = datetime(2026, 12, 1, 12, tzinfo=UTC)


def test_the_plan_retires_what_changed_or_aged_and_makes_what_is_missing() -> None:
    want = Want(size=3, key="new", max_age=timedelta(hours=1), free_slots=10)
    members = [
        Member("a", "old", NOW - timedelta(minutes=5)),
        Member("b", "new", NOW - timedelta(hours=2)),
        Member("c", "new", NOW - timedelta(minutes=1)),
        Member("d", "new", NOW, failed=True),
    ]
    plan = plan_pool(want, members, NOW)
    assert dict(plan.retire) == {"a": Retire.CHANGED, "b": Retire.TOO_OLD, "d": Retire.FAILED}
    assert plan.create == 2  # c stays; two more make three


def test_the_plan_never_takes_more_slots_than_free_and_waits_when_paused() -> None:
    members = [Member(str(i), "k", NOW - timedelta(minutes=i)) for i in range(4)]
    shrink = plan_pool(Want(2, "k", timedelta(days=1), free_slots=5), members, NOW)
    assert shrink.create == 0 and [why for _, why in shrink.retire] == [Retire.SURPLUS] * 2
    assert {env_id for env_id, _ in shrink.retire} == {"0", "1"}  # the newest go
    assert plan_pool(Want(6, "k", timedelta(days=1), free_slots=1), members, NOW).create == 1
    assert plan_pool(Want(6, "k", timedelta(days=1), 5, paused=True), members, NOW).create == 0
    spent = plan_pool(Want(6, "k", timedelta(days=1), 5, over_budget=True), members, NOW)
    assert spent.create == 0 and sorted(spent.retire) == [(str(i), Retire.BUDGET) for i in range(4)]


def test_pool_size_takes_the_silo_output_over_the_manifest_and_obeys_the_cap() -> None:
    assert pool_size(2, None, cap=4) == 2
    assert pool_size(2, 3, cap=4) == 3
    assert pool_size(None, 9, cap=4) == 4
    assert pool_size(5, 2, cap=0) == 0
    assert pool_size(2, True, cap=4) == 2  # a boolean output is not a size
    assert pool_size(2, "3", cap=4) == 2  # nor is a string
    assert pool_key("t", "c", {"a": 1}) == pool_key("t", "c", {"a": 1})
    assert pool_key("t", "c", {"a": 1}) != pool_key("t", "d", {"a": 1})


@pytest.mark.parametrize("text", ["pool: -1", "pool: {size: 2, when: now}", "pool: {size: x}"])
def test_a_broken_pool_in_a_manifest_is_refused_with_the_fix(tmp_path: Path, text: str) -> None:
    from app.stacks.catalog import StackError, load_pool_spec

    manifest = tmp_path / "runbot.yml"
    manifest.write_text(text + "\n")
    with pytest.raises(StackError, match="pool"):
        load_pool_spec("s", manifest)


def test_the_pool_key_follows_template_contents_not_file_times(tmp_path: Path) -> None:
    """A fresh checkout of the same templates keeps the pool; an edit remakes it."""
    import os
    import shutil

    from app.stacks.catalog import Catalog

    shutil.copytree(ROOT / "tests" / "fixtures" / "stacks-pool", tmp_path / "stacks")
    catalog = Catalog(tmp_path / "stacks")
    _, before = catalog.get_with_digest("pooled")
    main = tmp_path / "stacks" / "pooled" / "instance" / "main.tf"
    os.utime(main, ns=(1, 1))  # what a checkout that rewrites the file does to its times
    assert catalog.get_with_digest("pooled")[1] == before
    main.write_text(main.read_text() + "\n# an edit\n")
    after = catalog.get_with_digest("pooled")[1]
    assert after != before
    assert catalog.get_with_digest("pooled") == (catalog.get("pooled"), after)


def test_a_warm_instance_is_not_redeployed_extended_or_slept_by_hand(database_url: str) -> None:
    from app.lifecycle.service import Conflict, Lifecycle
    from app.stacks.catalog import Catalog

    db = Database(database_url)
    db.migrate()
    seed_pool(db)
    lifecycle = Lifecycle(db, Catalog(ROOT / "infra-templates"))
    with pytest.raises(Conflict, match=r"warm pool instance.*runbot_pool_size"):
        lifecycle.redeploy("warm-00000000", trigger="api")
    with pytest.raises(Conflict, match="cannot be extended"):
        lifecycle.extend("warm-00000000", timedelta(hours=4))
    with pytest.raises(Conflict, match="cannot be put to sleep"):
        lifecycle.set_suspended("warm-00000000", True)
    # Automatic sleep (idle, budget) asks by a conditional UPDATE: it never matches one.
    assert not lifecycle.put_to_sleep("warm-00000000", "budget", datetime.now(UTC))
    kept = lifecycle.get_environment("warm-00000000")
    assert (kept.pool_state, kept.desired, kept.generation) == ("warm", "present", 1)
    assert (kept.expires_at, kept.slept_at) == (None, None)
    assert len(lifecycle.list_environments()) == WARM
