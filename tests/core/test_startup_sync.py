"""A first start's sync, made cheaper (issue 18), stores what it stored before.

``data/startup_sample.json`` was written by the code before that work (cron walks in UTC
through croniter's time-zone steps, every expected interval computed inside the sync, one
INSERT a row on PostgreSQL): a sample of the benchmark's 10,000-task file (every 80th task)
plus DST, seconds, day-of-month-or-weekday, leap-day, ``start`` and ``every`` tasks, with
each task's digest, expected interval and first fire time after five moments (a Berlin
spring-forward night; New York's fall-back hour just before and after its first 01:30;
Berlin's after its first 02:30, where ``30 2 * * *`` must not fire again; an ordinary
one). The tests hold today's parse, walks and store to those values.
"""

from __future__ import annotations

import json
import subprocess
import sys
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

from scheduler_core.config import parse_task_document
from scheduler_core.db import create_db_engine
from scheduler_core.models import schedules
from scheduler_core.store import Store
from scheduler_core.store import sync as sync_module
from scheduler_core.store.sync import LATER_INTERVALS_FROM, insert_tasks
from scheduler_core.tasks import TaskDefinition
from tests.core.conftest import T0, tasks

SAMPLE = json.loads((Path(__file__).parent / "data" / "startup_sample.json").read_text())
#: The sample's ordinary moment: its stored rows are checked against it.
SYNC_AT = "2026-12-03T13:07:11.250000+00:00"


def sample_definitions() -> list[TaskDefinition]:
    return parse_task_document(SAMPLE["document"], source="golden.yaml", check_callables=False)


def stored(engine: sa.Engine) -> dict[str, Any]:
    """Each task's (next_run_at, definition_hash, expected_interval_seconds) as stored."""
    columns = (
        schedules.c.name,
        schedules.c.next_run_at,
        schedules.c.definition_hash,
        schedules.c.expected_interval_seconds,
    )
    with engine.connect() as conn:
        return {row.name: row for row in conn.execute(sa.select(*columns))}


def fire(value: str | None) -> datetime | None:
    return None if value is None else datetime.fromisoformat(value)


def test_sample_digests_fire_times_and_intervals_are_unchanged() -> None:
    definitions = sample_definitions()
    assert len(definitions) == len(SAMPLE["digests"]) > 100
    assert {d.name: d.digest() for d in definitions} == SAMPLE["digests"]
    assert {d.name: d.schedule.expected_interval for d in definitions} == SAMPLE[
        "expected_intervals"
    ]
    for moment, expected in SAMPLE["first_fires"].items():
        at = datetime.fromisoformat(moment)
        assert {d.name: d.first_fire_after(at) for d in definitions} == {
            name: fire(value) for name, value in expected.items()
        }, moment


def test_a_sync_with_intervals_later_stores_the_sample_as_before(
    store: Store, db_engine: sa.Engine, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Rows written (by COPY on PostgreSQL: more than 100) with the intervals left NULL and
    listed; once stored, every column checked equals the sample's."""
    monkeypatch.setattr(sync_module, "LATER_INTERVALS_FROM", 10)
    definitions = sample_definitions()
    later: list[TaskDefinition] = []
    result = store.sync_tasks(
        definitions, now=datetime.fromisoformat(SYNC_AT), intervals_later=later
    )
    assert len(result.created) == len(definitions)
    cron = {d.name for d in definitions if d.schedule.kind == "cron"}
    assert {d.name for d in later} == cron and len(later) == len(cron)
    rows = stored(db_engine)
    fires = SAMPLE["first_fires"][SYNC_AT]
    assert {n: r.next_run_at for n, r in rows.items()} == {n: fire(v) for n, v in fires.items()}
    assert {n: r.definition_hash for n, r in rows.items()} == SAMPLE["digests"]
    assert {n for n, r in rows.items() if r.expected_interval_seconds is None} == cron

    assert store.store_expected_intervals(later) == len(cron)
    rows = stored(db_engine)
    assert {n: r.expected_interval_seconds for n, r in rows.items()} == SAMPLE["expected_intervals"]


def test_a_plain_sync_stores_every_interval_at_once(store: Store, db_engine: sa.Engine) -> None:
    definitions = sample_definitions()
    store.sync_tasks(definitions, now=datetime.fromisoformat(SYNC_AT))
    rows = stored(db_engine)
    assert {n: r.expected_interval_seconds for n, r in rows.items()} == SAMPLE["expected_intervals"]


def test_few_new_cron_tasks_get_their_intervals_in_the_sync(
    store: Store, db_engine: sa.Engine
) -> None:
    assert LATER_INTERVALS_FROM > 3
    later: list[TaskDefinition] = []
    store.sync_tasks(
        tasks(*({"name": f"c{i}", "command": ["true"], "cron": f"{i} * * * *"} for i in range(3))),
        now=T0,
        intervals_later=later,
    )
    assert later == []
    assert all(r.expected_interval_seconds == 3600.0 for r in stored(db_engine).values())


def test_a_restart_lists_the_intervals_a_start_left_unstored(
    store: Store, db_engine: sa.Engine, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A start that stopped before storing them: the next sync (every task unchanged, and
    fewer than the threshold) lists them again; one with another definition since is left."""
    monkeypatch.setattr(sync_module, "LATER_INTERVALS_FROM", 2)
    mappings = [{"name": f"c{i}", "command": ["true"], "cron": f"{i} */2 * * *"} for i in range(4)]
    store.sync_tasks(tasks(*mappings), now=T0, intervals_later=[])
    monkeypatch.setattr(sync_module, "LATER_INTERVALS_FROM", 100)
    later: list[TaskDefinition] = []
    added = {"name": "new", "command": ["true"], "cron": "0 0 * * 1"}  # a few new: at once
    result = store.sync_tasks(tasks(*mappings, added), now=T0, intervals_later=later)
    assert result.unchanged == ["c0", "c1", "c2", "c3"] and [d.name for d in later] == [
        "c0", "c1", "c2", "c3"
    ]  # fmt: skip
    assert result.created == ["new"]
    assert stored(db_engine)["new"].expected_interval_seconds == 7 * 86400.0
    changed = tasks({"name": "c0", "command": ["true"], "cron": "5 * * * *"})
    assert store.store_expected_intervals([*changed, *later[1:]]) == 4
    rows = stored(db_engine)
    assert rows["c0"].expected_interval_seconds is None  # its row holds another definition
    assert [rows[f"c{i}"].expected_interval_seconds for i in (1, 2, 3)] == [7200.0] * 3


def test_a_sync_insert_skips_a_name_taken_meanwhile(store: Store, db_engine: sa.Engine) -> None:
    """Another writer took one of 150 names between the sync's read and its insert: COPY
    (PostgreSQL) cannot skip it, so the INSERT that can writes the others."""
    store.add_tasks(tasks({"name": "t042", "command": ["true"], "every": "1h"}), now=T0, by="me")
    new = tasks(*({"name": f"t{i:03d}", "command": ["false"], "every": "5m"} for i in range(150)))
    with db_engine.begin() as conn:
        insert_tasks(conn, new, now=T0, source="file", skip_existing=True)
    with db_engine.connect() as conn:
        rows = {r.name: r for r in conn.execute(sa.select(schedules))}
    assert len(rows) == 150
    assert rows["t042"].source == "api" and rows["t042"].schedule_expr == "every 1h"
    assert rows["t041"].source == "file" and rows["t041"].schedule_expr == "every 5m"
    assert rows["t041"].fire_count == 0 and rows["t041"].paused is False


def test_the_scheduler_stores_the_intervals_it_left_for_after_start(
    db_url: str, tmp_path: Path
) -> None:
    """``schedctl scheduler`` with more new cron tasks than the threshold: once it runs,
    every one of them has its expected interval stored."""
    n = LATER_INTERVALS_FROM + 10
    document = {
        "tasks": [
            {"name": f"job-{i}", "command": ["true"], "cron": f"{i % 60} {i % 24} * * *"}
            for i in range(n)
        ]
    }
    config = tmp_path / "tasks.yaml"
    config.write_text(json.dumps(document))  # JSON is YAML
    proc = subprocess.run(
        [sys.executable, "-m", "scheduler_core.cli", "scheduler", "--config", str(config),
         "--database-url", db_url, "--duration", "4", "--health-listen", "off", "--no-cleanup"],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert f"expected intervals of {n} task(s) stored" in proc.stderr
    engine = create_db_engine(db_url)
    try:
        with engine.connect() as conn:
            intervals = conn.execute(sa.select(schedules.c.expected_interval_seconds)).scalars()
            assert set(intervals) == {86400.0}
    finally:
        engine.dispose()
